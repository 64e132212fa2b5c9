//! What ember's host side and the guest runtime in `resources/unikernel/rt`
//! must agree on, written once: the virtio-vsock packet header with its
//! operations and flags, stream credit, ember's invocation framing with its
//! status codes, and the guest memory regions a userfaultfd handler is told
//! about. `no_std` and dependency-free, so the guest builds it for bare metal.

#![no_std]

pub mod credit;
pub mod invocation;
pub mod uffd;
pub mod vsock;
