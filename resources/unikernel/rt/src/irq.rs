//! Device interrupts, set up from ring 3, and waiting for them.
//!
//! Ring 3 runs with interrupts off, so an interrupt stays pending in the local APIC
//! until the wait gate: a `ud2` whose #UD handler runs `sti; hlt; cli` and returns
//! past it (a handful of emulated ring-0 instructions, about 10 µs under kvm_pvm).
//! An interrupt that arrived after the driver last looked at its queues ends the
//! `hlt` at once, so no wakeup is lost. The handler for vectors 32-63 only signals
//! end-of-interrupt.
//!
//! Timed waits use the local APIC's TSC-deadline timer: a second gate arms it
//! (`wrmsr` to IA32_TSC_DEADLINE, operands loaded in ring 3) before the same
//! `sti; hlt; cli`, so the vCPU sleeps until the deadline or an interrupt, whichever
//! comes first. A deadline already past fires at once. A timer that a device
//! interrupt beat stays armed, and only ends one later sleep early.

use core::ptr::write_volatile;

use crate::io::outb;

const IOAPIC_BASE: usize = 0xfec0_0000;
const IOAPIC_IOREGSEL: usize = IOAPIC_BASE;
const IOAPIC_IOWIN: usize = IOAPIC_BASE + 0x10;
/// Redirection entries of the IOAPIC (24 pins).
const IOAPIC_PINS: u32 = 24;

const LAPIC_BASE: usize = 0xfee0_0000;
const LAPIC_TPR: usize = LAPIC_BASE + 0x80;
const LAPIC_SVR: usize = LAPIC_BASE + 0xf0;
const LAPIC_SVR_ENABLE: u32 = 1 << 8;

/// Pin `irq` raises vector `VECTOR_BASE + irq`.
const VECTOR_BASE: u32 = 32;
/// The vector MSI-X messages send (virtio-pci devices), past the IOAPIC's.
pub const MSI_VECTOR: u32 = VECTOR_BASE + IOAPIC_PINS;
/// The local APIC timer's vector.
const TIMER_VECTOR: u32 = 62;
/// Spurious-interrupt vector (its low four bits must be set on old APICs).
const SPURIOUS_VECTOR: u32 = 63;
// The IDT routes vectors 32-63 to the end-of-interrupt handler.
const _: () = assert!(MSI_VECTOR < TIMER_VECTOR && TIMER_VECTOR < SPURIOUS_VECTOR);

/// 8259 PIC data ports: writing them outside initialization sets the mask.
const PIC_MASTER_DATA: u16 = 0x21;
const PIC_SLAVE_DATA: u16 = 0xa1;

/// An IRQ the IOAPIC cannot route (it has 24 pins).
#[derive(Debug, PartialEq, Eq)]
pub struct BadIrq(pub u32);

/// Enables the local APIC and masks the legacy PIC. The PIC shares the IRQ lines
/// and the local APIC's LINT0 takes its output, so it would otherwise deliver the
/// same interrupts on vectors 0-15 (the CPU exceptions).
pub fn init() {
    // SAFETY: masking the PIC only stops it from raising interrupts.
    unsafe {
        outb(PIC_MASTER_DATA, 0xff);
        outb(PIC_SLAVE_DATA, 0xff);
    }
    // SAFETY: the identity map covers the local APIC's registers; enabling it and
    // accepting every priority only lets interrupts reach the (static) IDT.
    unsafe {
        write_volatile(LAPIC_SVR as *mut u32, LAPIC_SVR_ENABLE | SPURIOUS_VECTOR);
        write_volatile(LAPIC_TPR as *mut u32, 0);
    }
}

/// Routes IOAPIC pin `irq` to this CPU: edge-triggered, active high, unmasked.
pub fn enable(irq: u32) -> Result<(), BadIrq> {
    if irq >= IOAPIC_PINS {
        return Err(BadIrq(irq));
    }
    let (low, high) = redirection_entry(irq);
    ioapic_write(0x10 + 2 * irq + 1, high);
    ioapic_write(0x10 + 2 * irq, low);
    Ok(())
}

/// The redirection entry (low and high dword) that sends `irq` as a fixed,
/// edge-triggered, active-high interrupt to APIC id 0.
fn redirection_entry(irq: u32) -> (u32, u32) {
    (VECTOR_BASE + irq, 0)
}

fn ioapic_write(index: u32, value: u32) {
    // SAFETY: the identity map covers the IOAPIC's registers; selecting a register
    // and writing a redirection entry only changes interrupt routing.
    unsafe {
        write_volatile(IOAPIC_IOREGSEL as *mut u32, index);
        write_volatile(IOAPIC_IOWIN as *mut u32, value);
    }
}

/// Sleeps until an interrupt arrives (at once if one is pending).
#[cfg(not(any(test, feature = "hosted")))]
pub fn wait() {
    unsafe extern "C" {
        /// The wait gate in boot.rs: a `ud2` that the #UD handler turns into a wait.
        fn ember_wait_for_interrupt();
    }
    // SAFETY: the gate returns normally and clobbers nothing beyond the C ABI.
    unsafe { ember_wait_for_interrupt() }
}

#[cfg(not(any(test, feature = "hosted")))]
pub use self::timer::wait_until;

#[cfg(not(any(test, feature = "hosted")))]
mod timer {
    use core::ptr::write_volatile;
    use core::sync::atomic::{AtomicU8, Ordering};

    use super::{LAPIC_BASE, TIMER_VECTOR};

    const LAPIC_LVT_TIMER: usize = LAPIC_BASE + 0x320;
    /// LVT timer mode (bits 17-18) TSC-deadline, unmasked.
    const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
    /// CPUID.1:ECX bit of the TSC-deadline timer (ember's CPUID sets it; KVM
    /// emulates it).
    const ECX_TSC_DEADLINE: u32 = 1 << 24;

    /// Whether the timer is set up: not yet, yes, or unsupported.
    static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
    const UNKNOWN: u8 = 0;
    const READY: u8 = 1;
    const MISSING: u8 = 2;

    /// Sleeps until an interrupt arrives or the TSC reaches `deadline` (at once if
    /// an interrupt is pending or the deadline has passed). Without a TSC-deadline
    /// timer it returns at once, and the caller's loop polls until the deadline.
    /// The timer is set up at the first call (a CPUID and an APIC write, both VM
    /// exits), so guests that never wait for a time pay nothing.
    pub fn wait_until(deadline: u64) {
        unsafe extern "C" {
            /// The timed wait gate in boot.rs: arms IA32_TSC_DEADLINE, then waits.
            fn ember_wait_until(deadline: u64);
        }
        if STATE.load(Ordering::Relaxed) == UNKNOWN {
            STATE.store(setup(), Ordering::Relaxed);
        }
        if STATE.load(Ordering::Relaxed) == READY {
            // SAFETY: the gate returns normally and clobbers nothing beyond the C
            // ABI; the LVT is in TSC-deadline mode, so the MSR it writes exists.
            unsafe { ember_wait_until(deadline) }
        }
    }

    /// Puts the local APIC timer in TSC-deadline mode on [`TIMER_VECTOR`], if the
    /// CPU has that mode.
    fn setup() -> u8 {
        if core::arch::x86_64::__cpuid(1).ecx & ECX_TSC_DEADLINE == 0 {
            return MISSING;
        }
        // SAFETY: the identity map covers the local APIC's registers; the timer
        // only raises a vector whose handler signals end-of-interrupt.
        unsafe { write_volatile(LAPIC_LVT_TIMER as *mut u32, LVT_TSC_DEADLINE | TIMER_VECTOR) };
        READY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_pins_to_vectors_from_32() {
        assert_eq!(redirection_entry(5), (37, 0));
        assert_eq!(redirection_entry(23), (55, 0));
        assert_eq!(enable(24), Err(BadIrq(24)));
    }
}
