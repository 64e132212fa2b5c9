//! ember's snapshot files, independent of KVM.
//!
//! - [`format`]: the state file: a versioned, architecture-tagged,
//!   checksummed container for any serde-serializable state.
//! - [`memory`]: guest memory files, full and sparse diff, and merging a
//!   diff onto its base.
//!
//! The VM, vCPU and device state types that go into the state file, the
//! userfaultfd handshake and the page-fault handler that serves a memory
//! file lazily come later.

pub mod format;
pub mod memory;
