//! ember: a jailed, single-process microVM monitor on KVM, driven over a
//! Firecracker-compatible API.
//!
//! Data flows one way: `api` -> `controller` -> `builder`/`persist`/`vmm` -> `vstate`
//! and `devices`. Nothing below reaches back up; devices report through
//! interrupts, return values and the `exit` signal.

pub mod api;
pub mod arch;
pub mod builder;
pub mod cli;
pub mod config;
pub mod controller;
pub mod devices;
pub mod event_loop;
pub mod exit;
pub mod logger;
pub mod metrics;
pub mod mmds;
pub mod persist;
pub mod random;
pub mod resources;
pub mod seccomp;
pub mod signals;
pub mod stdio;
pub mod vmm;
pub mod vstate;
