//! Attacks on virtio-pci's PCI side (ember's `--enable-pci`): configuration space
//! writes of every width at every offset of every slot (BAR sizing and moves,
//! COMMAND, the MSI-X control, the configuration access window, functions and
//! slots that do not exist), each function's BAR 0 filled with garbage (common
//! configuration, notifications, device configuration, the MSI-X table with
//! addresses no local APIC takes and masks flipping, the read-only pending
//! bits), a flood of the common configuration writes KVM holds back for ember
//! (far more than its ring takes), then a notification storm. The VMM must
//! absorb it all with its API
//! answering, and the calm phase's driver must still bring the vsock up.

use core::ptr::{read_volatile, write_volatile};

use rt::{acpi, println};

use super::Error;

/// Slots of bus 0, and the bytes of configuration space of one function.
const SLOTS: usize = 32;
const FUNCTION_SPACE: usize = 4096;
/// Rounds over every slot's configuration header.
const CONFIG_ROUNDS: u32 = 2;
/// BAR 0's size in ember's layout, and where the MSI-X table starts in it.
const BAR_SIZE: usize = 0x8000;
const MSIX_TABLE: usize = 0x4000;
/// Rounds of MSI-X table games per function.
const MSIX_ROUNDS: u32 = 500;
/// Notifications per function in the storm, and where they go.
const NOTIFICATIONS: usize = 200_000;
const NOTIFY: usize = 0x3000;
/// Writes per function to `queue_select`, whose writes KVM holds back.
const HELD_WRITES: usize = 20_000;
const QUEUE_SELECT: usize = 0x16;

/// Widths of the raw accesses.
#[derive(Clone, Copy)]
enum Width {
    U8,
    U16,
    U32,
    U64,
}

const WIDTHS: [Width; 4] = [Width::U8, Width::U16, Width::U32, Width::U64];

/// A raw write of `value`, truncated to `width`, at `address`.
///
/// # Safety
/// `address` must be identity-mapped device memory (ECAM or a BAR).
unsafe fn poke(address: usize, width: Width, value: u64) {
    let [a, b, c, d, ..] = value.to_le_bytes();
    // SAFETY: the caller's contract; device memory takes any value.
    unsafe {
        match width {
            Width::U8 => write_volatile(address as *mut u8, a),
            Width::U16 => write_volatile(address as *mut u16, u16::from_le_bytes([a, b])),
            Width::U32 => write_volatile(address as *mut u32, u32::from_le_bytes([a, b, c, d])),
            Width::U64 => write_volatile(address as *mut u64, value),
        }
    }
}

/// A raw read of `width` at `address`; see [`poke`].
unsafe fn peek(address: usize, width: Width) -> u64 {
    // SAFETY: the caller's contract.
    unsafe {
        match width {
            Width::U8 => u64::from(read_volatile(address as *const u8)),
            Width::U16 => u64::from(read_volatile(address as *const u16)),
            Width::U32 => u64::from(read_volatile(address as *const u32)),
            Width::U64 => read_volatile(address as *const u64),
        }
    }
}

/// A value that depends on the round and the place.
fn mix(round: u32, salt: usize) -> u64 {
    let x = u64::from(round).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt as u64;
    x.wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31)
}

/// `pci-garbage`: see the module.
pub fn garbage() -> Result<(), Error> {
    let ecam = acpi::ecam_base(acpi::identity_read)
        .and_then(|e| usize::try_from(e).ok())
        .ok_or("no PCI configuration space")?;
    // BAR 0 of each slot, read before the garbage leaves any in sizing state.
    let mut bars = [0usize; SLOTS];
    let mut functions = 0;
    for (slot, bar) in bars.iter_mut().enumerate().skip(1) {
        let config = ecam + slot * 8 * FUNCTION_SPACE;
        // SAFETY: slot `slot`'s configuration space in ECAM.
        let ids = unsafe { peek(config, Width::U32) };
        if ids & 0xffff == 0xffff {
            break;
        }
        // SAFETY: as above; BAR 0 and 1 as one 64-bit read.
        *bar = usize::try_from(unsafe { peek(config + 0x10, Width::U64) } & !0xf).unwrap_or(0);
        functions += 1;
    }
    println!("attack: pci-garbage start functions={functions}");

    for round in 0..CONFIG_ROUNDS {
        for slot in 0..SLOTS {
            // Function 0 of each slot and, now and then, another function.
            let function = if slot % 8 == 0 { round as usize % 8 } else { 0 };
            let config = ecam + (slot * 8 + function) * FUNCTION_SPACE;
            for offset in 0..0x100 {
                let width = WIDTHS[(offset + round as usize) % WIDTHS.len()];
                // Misaligned, straddling and past-the-header accesses alike.
                // SAFETY: inside this function's 4 KiB of ECAM (the widest
                // access ends 8 bytes past 0xff).
                unsafe {
                    poke(config + offset, width, mix(round, slot << 12 | offset));
                    peek(config + offset, width);
                }
            }
            for offset in (0x100..FUNCTION_SPACE - 8).step_by(0x1f8) {
                // SAFETY: as above, in the extended configuration space.
                unsafe { poke(config + offset, Width::U64, u64::MAX) };
            }
        }
    }

    for &bar in bars.iter().filter(|&&b| b != 0) {
        for round in 0..MSIX_ROUNDS {
            let entry = bar + MSIX_TABLE + (round as usize % 4) * 16;
            let address = [0, 0xdead_beef, 0xfee0_0000, u64::MAX][round as usize % 4];
            // SAFETY: MSI-X table entries in this function's BAR 0 (ember's
            // functions have at least two vectors; a write past the last one
            // lands in the table's unused space).
            unsafe {
                poke(entry, Width::U64, address);
                poke(
                    entry + 8,
                    Width::U64,
                    mix(round, entry) & !(u64::from(round & 1) << 32),
                );
            }
        }
        for offset in (0..BAR_SIZE).step_by(4) {
            let width = WIDTHS[(offset / 4) % WIDTHS.len()];
            // SAFETY: inside this function's BAR 0 (the widest access ends at its
            // last byte).
            unsafe {
                poke(bar + offset, width, mix(7, offset));
                peek(bar + offset, width);
            }
        }
    }

    for &bar in bars.iter().filter(|&&b| b != 0) {
        for i in 0..HELD_WRITES {
            // SAFETY: the common configuration's queue_select in this
            // function's BAR 0.
            unsafe { poke(bar + QUEUE_SELECT, Width::U16, i as u64) };
        }
    }

    for &bar in bars.iter().filter(|&&b| b != 0) {
        for i in 0..NOTIFICATIONS {
            // Real queues, and slots past them.
            let slot = (i % 8) * 4;
            // SAFETY: the notification area of this function's BAR 0.
            unsafe { poke(bar + NOTIFY + slot, Width::U16, (i % 8) as u64) };
        }
    }
    println!("attack: pci-garbage done functions={functions}");
    Ok(())
}
