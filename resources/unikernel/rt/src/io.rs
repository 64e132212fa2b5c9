//! Port I/O from ring 3 (allowed by the TSS I/O bitmap), the 8250 serial console,
//! machine reset and the boot-timer signal.

use core::arch::asm;
use core::fmt;

const COM1: u16 = 0x3f8;
/// Line status register: bit 0 = a received byte is ready.
const COM1_LSR: u16 = COM1 + 5;
const LSR_DATA_READY: u8 = 1;
/// i8042 command port; command 0xfe pulses the CPU reset line.
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
/// Firecracker's boot-timer device: writing 123 there marks "guest booted".
const BOOT_TIMER_ADDR: usize = 0xd000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;

/// Writes `value` to an I/O port.
///
/// # Safety
/// The write must not make a device corrupt guest memory (e.g. by starting DMA).
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no Rust-visible memory; the device effect is the
    // caller's responsibility.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

/// Reads an I/O port.
///
/// # Safety
/// The read's side effects on the device must be acceptable to the caller.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O touches no Rust-visible memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    value
}

/// The serial console (COM1). Output does not wait for THR-empty: the VMM's
/// emulated UART accepts every write, and each poll would cost a VM exit.
pub struct Serial;

impl Serial {
    pub fn write_bytes(bytes: &[u8]) {
        for &b in bytes {
            // SAFETY: writing the UART data register only transmits the byte.
            unsafe { outb(COM1, b) }
        }
    }

    /// Busy-waits for the next received byte.
    pub fn read_byte() -> u8 {
        loop {
            // SAFETY: reading the line status register has no side effect, and reading
            // the data register only consumes the byte it reported ready.
            unsafe {
                if inb(COM1_LSR) & LSR_DATA_READY != 0 {
                    return inb(COM1);
                }
            }
            core::hint::spin_loop();
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        Serial::write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Backs [`print!`](crate::print) and [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    // Serial output cannot fail.
    let _ = fmt::Write::write_fmt(&mut Serial, args);
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::io::_print(format_args!($($arg)*)) };
}

/// Prints a `\n`-terminated line to the serial console.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::io::_print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// The time-stamp counter (ring 3 may read it: CR4.TSD is clear).
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe {
        asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    }
    u64::from(high) << 32 | u64::from(low)
}

/// Resets the machine through the i8042, which ends the VM.
pub fn reset() -> ! {
    // SAFETY: the reset command touches no memory; the VMM ends the VM.
    unsafe { outb(I8042_COMMAND, I8042_RESET) }
    // A VMM that ignores the reset leaves us here; ring 3 cannot `hlt`.
    loop {
        core::hint::spin_loop();
    }
}

/// Tells a Firecracker-style boot timer that the guest is up (harmless without one).
pub fn signal_boot_timer() {
    // SAFETY: the address is in the identity-mapped MMIO window, not RAM; without a
    // device there the VMM drops the write.
    unsafe { core::ptr::write_volatile(BOOT_TIMER_ADDR as *mut u8, BOOT_TIMER_MAGIC) }
}
