//! x86_64: memory layout, boot protocols, CPU state, CPUID and MP table.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
