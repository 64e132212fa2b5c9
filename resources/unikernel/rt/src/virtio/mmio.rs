//! The modern (version 2) virtio-mmio [`Transport`]: a register window.

use core::ptr::{read_volatile, write_volatile};

use super::{Error, Transport};

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_STATUS: usize = 0x060;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC_LOW: usize = 0x080;
const QUEUE_DESC_HIGH: usize = 0x084;
const QUEUE_DRIVER_LOW: usize = 0x090;
const QUEUE_DRIVER_HIGH: usize = 0x094;
const QUEUE_DEVICE_LOW: usize = 0x0a0;
const QUEUE_DEVICE_HIGH: usize = 0x0a4;
const CONFIG_GENERATION: usize = 0x0fc;
const CONFIG: usize = 0x100;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"

/// The register window of one virtio-mmio device.
pub struct MmioTransport {
    base: usize,
}

impl MmioTransport {
    /// # Safety
    /// `base` must be the identity-mapped register window of a virtio-mmio device
    /// (or unbacked MMIO), and no other `MmioTransport` may drive the same device.
    pub unsafe fn new(base: usize) -> MmioTransport {
        MmioTransport { base }
    }

    /// The device ID (2 = block, 0 = no device behind this window) after checking
    /// that this is a modern virtio-mmio device.
    pub fn probe(&self) -> Result<u32, Error> {
        match (self.read(MAGIC), self.read(VERSION)) {
            (MAGIC_VALUE, 2) => Ok(self.read(DEVICE_ID)),
            (MAGIC_VALUE, version) => Err(Error::BadVersion(version)),
            (magic, _) => Err(Error::BadMagic(magic)),
        }
    }

    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract makes `base + offset` a register of our device.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`; register writes only affect our device.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Writes a 64-bit value to a register pair.
    fn write_pair(&self, low: usize, high: usize, value: u64) {
        self.write(low, (value & 0xffff_ffff) as u32);
        self.write(high, (value >> 32) as u32);
    }
}

impl Transport for MmioTransport {
    fn status(&self) -> u32 {
        self.read(STATUS)
    }

    fn set_status(&self, status: u32) {
        self.write(STATUS, status);
    }

    fn device_features(&self) -> u64 {
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        u64::from(self.read(DEVICE_FEATURES)) << 32 | u64::from(low)
    }

    fn set_driver_features(&self, features: u64) {
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, (features & 0xffff_ffff) as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
    }

    fn select_queue(&self, index: u32) {
        self.write(QUEUE_SEL, index);
    }

    fn queue_max_size(&self) -> u32 {
        self.read(QUEUE_NUM_MAX)
    }

    fn queue_ready(&self) -> bool {
        self.read(QUEUE_READY) != 0
    }

    fn activate_queue(&self, size: u16, desc: u64, driver: u64, device: u64) {
        self.write(QUEUE_NUM, u32::from(size));
        self.write_pair(QUEUE_DESC_LOW, QUEUE_DESC_HIGH, desc);
        self.write_pair(QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, driver);
        self.write_pair(QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, device);
        self.write(QUEUE_READY, 1);
    }

    fn notify(&self, index: u32) {
        self.write(QUEUE_NOTIFY, index);
    }

    fn take_interrupt(&self) -> u32 {
        let pending = self.read(INTERRUPT_STATUS);
        if pending != 0 {
            self.write(INTERRUPT_ACK, pending);
        }
        pending
    }

    fn config_generation(&self) -> u32 {
        self.read(CONFIG_GENERATION)
    }

    fn config_u32(&self, offset: usize) -> u32 {
        self.read(CONFIG + offset)
    }

    fn set_config_u32(&self, offset: usize, value: u32) {
        self.write(CONFIG + offset, value);
    }
}
