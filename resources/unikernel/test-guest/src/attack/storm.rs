//! Attacks that need no working queue: a serial flood, garbage in every virtio
//! register, and a storm of queue notifications. Each is a pile of VM exits that
//! the VMM must absorb without stalling its API or other devices.

use rt::io::Serial;
use rt::println;

use super::Error;
use super::device::{
    self, ACKNOWLEDGE, BLOCK, CONFIG, CONFIG_END, DRIVER, DRIVER_FEATURES, DRIVER_FEATURES_SEL,
    DRIVER_OK, Device, FAILED, FEATURES_OK, INTERRUPT_ACK, NEEDS_RESET, QUEUE_DESC_LOW,
    QUEUE_DRIVER_LOW, QUEUE_NOTIFY, QUEUE_NUM, QUEUE_READY, QUEUE_SEL, RNG, STATUS, VSOCK, Width,
};
use super::ring::{RawQueue, Shared, addr};

/// Lines (of 63 'x' and '\n') in the serial flood: 256 KiB.
const FLOOD_LINES: usize = 4096;
/// Rounds of register garbage per device.
const GARBAGE_ROUNDS: u32 = 2000;
/// Queue notifications per device.
const NOTIFICATIONS: usize = 1_000_000;
/// Queues the attacks select: those devices have, one beyond, and u32::MAX.
const QUEUE_SELECTORS: [u32; 5] = [0, 1, 2, 3, u32::MAX];
/// Queue sizes: empty, not a power of two, beyond any maximum, the largest.
const QUEUE_SIZES: [u32; 4] = [0, 3, 1000, 65535];
/// Notified queue indices: real ones, one no device has, and 0xffff.
const NOTIFY_VALUES: [u32; 5] = [0, 1, 2, 7, 0xffff];

/// Zeroed pages that misaligned rings inside guest RAM point into: a device
/// that takes them anyway finds an empty avail ring there (index 0), so it never
/// uses a buffer, and nothing the guest uses lies under them.
#[repr(C, align(4096))]
struct Sandbox([u8; 3 * 4096]);
static SANDBOX: Shared<Sandbox> = Shared::new(Sandbox([0; 3 * 4096]));

/// `serial-flood`: 4096 lines of 63 'x' to COM1 as fast as the UART takes them.
pub fn serial_flood() -> Result<(), Error> {
    println!("attack: serial-flood start");
    let mut line = [b'x'; 64];
    line[63] = b'\n';
    for _ in 0..FLOOD_LINES {
        Serial::write_bytes(&line);
    }
    println!("attack: serial-flood done");
    Ok(())
}

/// `register-garbage`: 2000 rounds of [`garbage_round`] on every device.
pub fn register_garbage(cmdline: &[u8]) -> Result<(), Error> {
    if device::all(cmdline).next().is_none() {
        return Err("no virtio-mmio device");
    }
    println!("attack: register-garbage start");
    let mut devices = 0;
    for device in device::all(cmdline) {
        for round in 0..GARBAGE_ROUNDS {
            garbage_round(&device, round);
        }
        devices += 1;
    }
    println!("attack: register-garbage done devices={devices}");
    Ok(())
}

/// One round against one device: garbage in every register, feature and status
/// games, impossible queues with misaligned rings made ready and notified,
/// accesses of every width at unaligned offsets, config-space writes, and reads
/// of every register. Values depend on the round.
fn garbage_round(device: &Device, round: u32) {
    // Truncating is meant: the salt's low 32 bits are salt enough.
    #[allow(clippy::cast_possible_truncation)]
    let g = |salt: usize| mix(round, salt as u32);
    let turn = round as usize;

    for offset in (0..CONFIG).step_by(4) {
        device.write(offset, g(offset));
    }

    // FEATURES_OK with every feature bit set, then DRIVER_OK on top.
    device.reset();
    device.write(STATUS, ACKNOWLEDGE | DRIVER);
    for select in 0..2 {
        device.write(DRIVER_FEATURES_SEL, select);
        device.write(DRIVER_FEATURES, u32::MAX);
    }
    device.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    device.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);

    // Status values out of order: DRIVER_OK without FEATURES_OK, error bits, 0.
    let statuses = [
        DRIVER_OK,
        ACKNOWLEDGE | DRIVER | DRIVER_OK,
        NEEDS_RESET,
        FAILED,
        ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET | FAILED,
        u32::MAX,
        0,
    ];
    for i in 0..statuses.len() {
        device.write(STATUS, statuses[(turn + i) % statuses.len()]);
    }

    // A legal negotiation, so the device takes queue settings; then impossible
    // queues with odd ring addresses, made ready, DRIVER_OK, and notified.
    device.reset();
    device.write(STATUS, ACKNOWLEDGE | DRIVER);
    device.write(DRIVER_FEATURES_SEL, 1);
    device.write(DRIVER_FEATURES, 1);
    device.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    let rings = misaligned_rings(round);
    for (i, &selector) in QUEUE_SELECTORS.iter().enumerate() {
        device.set_queue(selector, QUEUE_SIZES[(turn + i) % QUEUE_SIZES.len()], rings);
    }
    device.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    for queue in 0..4 {
        device.notify(queue);
    }

    // Other widths, and offsets that straddle registers or the config boundary.
    let pokes = [
        (STATUS, Width::U8),
        (STATUS + 1, Width::U8),
        (QUEUE_SEL, Width::U16),
        (QUEUE_NUM + 1, Width::U16),
        (QUEUE_NOTIFY, Width::U8),
        (QUEUE_NOTIFY, Width::U64),
        (QUEUE_READY + 1, Width::U32),
        (INTERRUPT_ACK + 3, Width::U32),
        (QUEUE_DESC_LOW, Width::U64),
        (QUEUE_DRIVER_LOW + 2, Width::U64),
        (CONFIG - 4, Width::U64),
        (CONFIG + 1 + turn % 0xf0, Width::U32),
        (CONFIG_END - 8, Width::U64),
        (CONFIG_END - 1, Width::U8),
    ];
    for (i, &(offset, width)) in pokes.iter().enumerate() {
        device.poke(offset, width, u64::from(g(i)) << 32 | u64::from(g(!i)));
    }

    // Config-space writes, eight per round, covering 0x100..0x1ff every 8 rounds.
    for i in 0..8 {
        let offset = CONFIG + (turn * 8 + i) % 64 * 4;
        device.write(offset, g(offset));
    }

    for offset in (0..CONFIG).step_by(4) {
        device.read(offset);
    }
    device.peek(STATUS + 1, Width::U8);
    device.peek(CONFIG - 2, Width::U32);
    device.peek(CONFIG + turn % 0xf8, Width::U64);
    device.peek(CONFIG_END - 2, Width::U16);
}

/// Odd (desc, driver, device) ring addresses, by round: inside the zeroed
/// sandbox, beyond guest RAM (256 GiB), or just below the top of the address
/// space.
fn misaligned_rings(round: u32) -> (u64, u64, u64) {
    let base = match round % 3 {
        0 => addr(SANDBOX.get()) + 1 + 2 * u64::from(round % 64),
        1 => 0x40_0000_0001,
        _ => return (u64::MAX - 14, u64::MAX - 12, u64::MAX - 10),
    };
    (base, base + 0x1000, base + 0x2000)
}

/// A well-mixed 32-bit value from the round and a salt (a murmur3-style finalizer).
fn mix(round: u32, salt: u32) -> u32 {
    let mut x = round.wrapping_mul(0x9e37_79b9) ^ salt.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x
}

/// `notify-storm`: every device gets valid empty rings (one queue for a block
/// or entropy device, three for vsock) and DRIVER_OK, then 1,000,000 unpaced QueueNotify
/// writes each, cycling queue indices 0, 1, 2, 7 and 0xffff.
pub fn notify_storm(cmdline: &[u8]) -> Result<(), Error> {
    if device::all(cmdline).next().is_none() {
        return Err("no virtio-mmio device");
    }
    for device in device::all(cmdline) {
        let count = match device.id() {
            Some(BLOCK) | Some(RNG) => 1,
            Some(VSOCK) => 3,
            _ => 0,
        };
        // Pages last for all queues of a few devices; any beyond go without rings.
        let queues: [Option<RawQueue>; 3] =
            core::array::from_fn(|i| (i < count).then(|| RawQueue::new(16)).flatten());
        device.init(queues.iter().flatten())?;
    }
    println!("attack: notify-storm start");
    let mut devices = 0;
    for device in device::all(cmdline) {
        for i in 0..NOTIFICATIONS {
            device.notify(NOTIFY_VALUES[i % NOTIFY_VALUES.len()]);
        }
        devices += 1;
    }
    println!("attack: notify-storm done devices={devices}");
    Ok(())
}
