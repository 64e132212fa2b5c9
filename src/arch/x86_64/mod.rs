//! x86_64: memory layout, boot protocols, CPU state, CPUID, MP table and ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
