//! Device interrupts, set up from ring 3, and waiting for them.
//!
//! Ring 3 runs with interrupts off, so an interrupt stays pending in the local APIC
//! until the wait gate: a `ud2` whose #UD handler runs `sti; hlt; cli` and returns
//! past it (a handful of emulated ring-0 instructions, about 10 µs under kvm_pvm).
//! An interrupt that arrived after the driver last looked at its queues ends the
//! `hlt` at once, so no wakeup is lost. The handler for vectors 32-63 only signals
//! end-of-interrupt.

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
/// Spurious-interrupt vector (its low four bits must be set on old APICs).
const SPURIOUS_VECTOR: u32 = 63;
// The IDT routes vectors 32-63 to the end-of-interrupt handler.
const _: () = assert!(VECTOR_BASE + IOAPIC_PINS <= SPURIOUS_VECTOR);

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
