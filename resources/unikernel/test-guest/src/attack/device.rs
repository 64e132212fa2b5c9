//! Raw virtio-mmio registers: any value, any width, any offset, and the plain
//! initialization sequence the attacks start from (or deliberately leave).

use core::arch::asm;
use core::ptr::{read_volatile, write_volatile};

use rt::cmdline::virtio_mmio_devices;
use rt::irq;

use super::Error;
use super::ring::RawQueue;

pub const MAGIC: usize = 0x000;
pub const VERSION: usize = 0x004;
pub const DEVICE_ID: usize = 0x008;
pub const DEVICE_FEATURES: usize = 0x010;
pub const DRIVER_FEATURES: usize = 0x020;
pub const DRIVER_FEATURES_SEL: usize = 0x024;
pub const QUEUE_SEL: usize = 0x030;
pub const QUEUE_NUM_MAX: usize = 0x034;
pub const QUEUE_NUM: usize = 0x038;
pub const QUEUE_READY: usize = 0x044;
pub const QUEUE_NOTIFY: usize = 0x050;
pub const INTERRUPT_STATUS: usize = 0x060;
pub const INTERRUPT_ACK: usize = 0x064;
pub const STATUS: usize = 0x070;
pub const QUEUE_DESC_LOW: usize = 0x080;
pub const QUEUE_DRIVER_LOW: usize = 0x090;
pub const QUEUE_DEVICE_LOW: usize = 0x0a0;
pub const CONFIG: usize = 0x100;
/// End of the config space the attacks touch (the window is 4 KiB).
pub const CONFIG_END: usize = 0x200;

const DEVICE_FEATURES_SEL: usize = 0x014;
const CONFIG_GENERATION: usize = 0x0fc;
const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

pub const ACKNOWLEDGE: u32 = 1;
pub const DRIVER: u32 = 2;
pub const DRIVER_OK: u32 = 4;
pub const FEATURES_OK: u32 = 8;
pub const NEEDS_RESET: u32 = 0x40;
pub const FAILED: u32 = 0x80;

/// VIRTIO_F_VERSION_1 (bit 32), in the high feature word.
const VERSION_1_HIGH: u32 = 1;

/// Device IDs.
pub const NET: u32 = 1;
pub const BLOCK: u32 = 2;
pub const RNG: u32 = 4;
pub const VSOCK: u32 = 19;

/// Width of a raw register access.
#[derive(Clone, Copy)]
pub enum Width {
    U8,
    U16,
    U32,
    U64,
}

/// The register window of one announced virtio-mmio device.
pub struct Device {
    base: usize,
    irq: u32,
}

/// Every announced device inside the identity map (below 4 GiB), in command-line
/// order; malformed announcements are skipped.
pub fn all(cmdline: &[u8]) -> impl Iterator<Item = Device> {
    virtio_mmio_devices(cmdline).flatten().filter_map(|device| {
        Some(Device {
            base: device.mapped_base()?,
            irq: device.irq,
        })
    })
}

/// The first device with ID `id`, with its interrupt routed to this CPU.
pub fn find(cmdline: &[u8], id: u32) -> Result<Device, Error> {
    let device = all(cmdline)
        .find(|device| device.id() == Some(id))
        .ok_or(match id {
            BLOCK => "no virtio-blk device",
            NET => "no virtio-net device",
            _ => "no virtio-vsock device",
        })?;
    irq::enable(device.irq).map_err(|_| "device IRQ not routable")?;
    Ok(device)
}

impl Device {
    /// The device ID, if the window holds a modern (version 2) virtio-mmio device.
    pub fn id(&self) -> Option<u32> {
        (self.read(MAGIC) == MAGIC_VALUE && self.read(VERSION) == 2).then(|| self.read(DEVICE_ID))
    }

    pub fn read(&self, offset: usize) -> u32 {
        // SAFETY: `all` only makes devices of announced, identity-mapped windows;
        // `offset` stays inside the 4 KiB window (callers use register offsets).
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    pub fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`; the device is the only thing a register write
        // changes (what it then does to guest memory is what the attacks probe,
        // and they point it only at memory nothing else uses).
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Writes the low `width` bytes of `value` at `offset`, aligned or not.
    pub fn poke(&self, offset: usize, width: Width, value: u64) {
        let at = self.base + offset;
        // SAFETY: as in `write`; one `mov` of the given width, which may be
        // misaligned (that is the point), inside the device's window.
        unsafe {
            match width {
                Width::U8 => {
                    asm!(
                        "mov byte ptr [{at}], {v}",
                        at = in(reg) at,
                        v = in(reg_byte) (value & 0xff) as u8,
                        options(nostack, preserves_flags),
                    )
                }
                Width::U16 => {
                    asm!(
                        "mov word ptr [{at}], {v:x}",
                        at = in(reg) at,
                        v = in(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
                Width::U32 => {
                    asm!(
                        "mov dword ptr [{at}], {v:e}",
                        at = in(reg) at,
                        v = in(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
                Width::U64 => {
                    asm!(
                        "mov qword ptr [{at}], {v}",
                        at = in(reg) at,
                        v = in(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
            }
        }
    }

    /// Reads `width` bytes at `offset`, aligned or not.
    pub fn peek(&self, offset: usize, width: Width) -> u64 {
        let at = self.base + offset;
        let value: u64;
        // SAFETY: as in `read`; one `mov` (zero-extending) of the given width.
        unsafe {
            match width {
                Width::U8 => {
                    asm!(
                        "movzx {v:e}, byte ptr [{at}]",
                        at = in(reg) at,
                        v = out(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
                Width::U16 => {
                    asm!(
                        "movzx {v:e}, word ptr [{at}]",
                        at = in(reg) at,
                        v = out(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
                Width::U32 => {
                    asm!(
                        "mov {v:e}, dword ptr [{at}]",
                        at = in(reg) at,
                        v = out(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
                Width::U64 => {
                    asm!(
                        "mov {v}, qword ptr [{at}]",
                        at = in(reg) at,
                        v = out(reg) value,
                        options(nostack, preserves_flags),
                    )
                }
            }
        }
        value
    }

    pub fn status(&self) -> u32 {
        self.read(STATUS)
    }

    /// Writes STATUS = 0: the device forgets its queues and features.
    pub fn reset(&self) {
        self.write(STATUS, 0);
    }

    pub fn notify(&self, queue: u32) {
        self.write(QUEUE_NOTIFY, queue);
    }

    /// Resets the device and drives it like a well-behaved driver: VERSION_1
    /// only, then `queues` as queues 0, 1, ..., then DRIVER_OK.
    pub fn init<'a>(&self, queues: impl IntoIterator<Item = &'a RawQueue>) -> Result<(), Error> {
        self.reset();
        if self.status() != 0 {
            return Err("device did not reset");
        }
        self.write(STATUS, ACKNOWLEDGE);
        self.write(STATUS, ACKNOWLEDGE | DRIVER);
        self.write(DEVICE_FEATURES_SEL, 1);
        if self.read(DEVICE_FEATURES) & VERSION_1_HIGH == 0 {
            return Err("device lacks VERSION_1");
        }
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, 0);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, VERSION_1_HIGH);
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.status() & FEATURES_OK == 0 {
            return Err("device rejected VERSION_1");
        }
        for (index, queue) in (0..).zip(queues) {
            self.write(QUEUE_SEL, index);
            if self.read(QUEUE_NUM_MAX) < u32::from(queue.size()) {
                return Err("queue too small");
            }
            self.set_queue(index, u32::from(queue.size()), queue.addresses());
        }
        self.write(STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        Ok(())
    }

    /// Programs queue `index` with `size` and the (desc, driver, device) ring
    /// addresses, valid or not, and sets it ready.
    pub fn set_queue(&self, index: u32, size: u32, (desc, driver, device): (u64, u64, u64)) {
        self.write(QUEUE_SEL, index);
        self.write(QUEUE_NUM, size);
        for (low, value) in [
            (QUEUE_DESC_LOW, desc),
            (QUEUE_DRIVER_LOW, driver),
            (QUEUE_DEVICE_LOW, device),
        ] {
            self.write(low, (value & 0xffff_ffff) as u32);
            self.write(low + 4, (value >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
    }

    /// A 64-bit config field, retried until the config generation is stable.
    pub fn config_u64(&self, offset: usize) -> u64 {
        loop {
            let generation = self.read(CONFIG_GENERATION);
            let low = self.read(CONFIG + offset);
            let high = self.read(CONFIG + offset + 4);
            if self.read(CONFIG_GENERATION) == generation {
                return u64::from(high) << 32 | u64::from(low);
            }
        }
    }

    /// Sleeps until the next interrupt. The device's interrupt status is
    /// acknowledged first; an interrupt raised since the caller last looked at its
    /// rings is still pending in the local APIC and ends the wait at once.
    pub fn sleep(&self) {
        let pending = self.read(INTERRUPT_STATUS);
        if pending != 0 {
            self.write(INTERRUPT_ACK, pending);
        }
        irq::wait();
    }
}
