//! KVM state of one microVM: guest memory, the VM and its vCPUs.

pub mod coalesced;
pub mod memory;
pub mod vcpu;
pub mod vm;
