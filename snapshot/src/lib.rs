//! ember's snapshot files, independent of KVM.
//!
//! - [`aside`]: files written aside, under a random name only this process
//!   can own, and renamed into place once complete.
//! - [`format`]: the state file: a versioned, architecture-tagged,
//!   checksummed container for any serde-serializable state.
//! - [`memory`]: guest memory files, full and sparse diff, and merging a
//!   diff onto its base.
//! - [`uffd`]: the page-fault handler that serves restored VMs' memory from
//!   a memory file, on demand or prefetching a recorded working set.
//!
//! What goes into the state file (vCPU, VM and device state) is the VMM's
//! business; this crate knows nothing of KVM.

pub mod aside;
pub mod format;
pub mod memory;
pub mod uffd;
