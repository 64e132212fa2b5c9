//! Modern (version 2) virtio-mmio transport, driven from ring 3.

pub mod blk;
pub mod queue;
pub mod vsock;

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

pub use queue::{Buffer, Queue};

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
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;

/// Device-independent feature: the device follows virtio 1.x (no legacy layout).
pub const F_VERSION_1: u64 = 1 << 32;

/// Why a device could not be driven.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    BadMagic(u32),
    /// Only modern virtio-mmio (version 2) is supported.
    BadVersion(u32),
    ResetFailed,
    /// The device lacks features the driver requires (the missing bits).
    MissingFeatures(u64),
    /// The device cleared FEATURES_OK: it refuses the negotiated set.
    FeaturesRejected,
    /// The queue does not exist (QueueNumMax 0) or is already live.
    QueueUnavailable(u32),
    /// The runtime's static pool of ring pages is used up.
    OutOfQueues,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadMagic(v) => write!(f, "bad magic {v:#x}"),
            Error::BadVersion(v) => write!(f, "virtio-mmio version {v}, want 2"),
            Error::ResetFailed => f.write_str("device did not reset"),
            Error::MissingFeatures(bits) => write!(f, "missing features {bits:#x}"),
            Error::FeaturesRejected => f.write_str("device rejected features"),
            Error::QueueUnavailable(q) => write!(f, "queue {q} unavailable"),
            Error::OutOfQueues => f.write_str("out of queue memory"),
        }
    }
}

/// The register window of one virtio-mmio device.
pub struct Transport {
    base: usize,
}

impl Transport {
    /// # Safety
    /// `base` must be the identity-mapped register window of a virtio-mmio device
    /// (or unbacked MMIO), and no other `Transport` may drive the same device.
    pub unsafe fn new(base: u64) -> Transport {
        Transport {
            base: base as usize,
        }
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

    /// Resets the device and negotiates features: takes `required` (failing without
    /// them) plus whatever of `optional` the device offers. Returns the features.
    pub fn negotiate(&self, required: u64, optional: u64) -> Result<u64, Error> {
        self.write(STATUS, 0);
        if self.read(STATUS) != 0 {
            return Err(Error::ResetFailed);
        }
        self.write(STATUS, STATUS_ACKNOWLEDGE);
        self.write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write(DEVICE_FEATURES_SEL, 0);
        let low = self.read(DEVICE_FEATURES);
        self.write(DEVICE_FEATURES_SEL, 1);
        let offered = u64::from(self.read(DEVICE_FEATURES)) << 32 | u64::from(low);
        if offered & required != required {
            return Err(Error::MissingFeatures(required & !offered));
        }
        let features = required | (offered & optional);
        self.write(DRIVER_FEATURES_SEL, 0);
        self.write(DRIVER_FEATURES, features as u32);
        self.write(DRIVER_FEATURES_SEL, 1);
        self.write(DRIVER_FEATURES, (features >> 32) as u32);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write(STATUS, status);
        if self.read(STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(Error::FeaturesRejected);
        }
        Ok(features)
    }

    /// Gives queue `index` the rings of `queue`, sized to what the device allows.
    pub fn setup_queue(&self, index: u32, queue: &mut Queue) -> Result<(), Error> {
        self.write(QUEUE_SEL, index);
        let max = self.read(QUEUE_NUM_MAX);
        if max == 0 || self.read(QUEUE_READY) != 0 {
            return Err(Error::QueueUnavailable(index));
        }
        queue.limit_size(u16::try_from(max).unwrap_or(u16::MAX));
        self.write(QUEUE_NUM, u32::from(queue.size()));
        let (desc, driver, device) = queue.addresses();
        for (low, high, value) in [
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, desc),
            (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, driver),
            (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, device),
        ] {
            self.write(low, value as u32);
            self.write(high, (value >> 32) as u32);
        }
        self.write(QUEUE_READY, 1);
        Ok(())
    }

    /// Marks the driver ready: the device may now process queues.
    pub fn driver_ok(&self) {
        let status = self.read(STATUS);
        self.write(STATUS, status | STATUS_DRIVER_OK);
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u32) {
        self.write(QUEUE_NOTIFY, index);
    }

    /// Acknowledges whatever interrupt the device raised; polling drivers call this
    /// so a level-triggered line does not stay asserted. Returns whether there was
    /// one (then it took two register accesses, else one).
    pub fn ack_interrupt(&self) -> bool {
        let pending = self.read(INTERRUPT_STATUS);
        if pending != 0 {
            self.write(INTERRUPT_ACK, pending);
        }
        pending != 0
    }

    /// A 64-bit field of the device config space, read as two 32-bit halves and
    /// retried until the config generation shows a consistent pair.
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

    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `new`'s contract makes `base + offset` a register of our device.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`; register writes only affect our device.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }
}
