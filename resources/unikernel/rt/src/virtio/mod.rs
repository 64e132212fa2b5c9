//! virtio, driven from ring 3: the [`Transport`] the drivers talk to, its modern
//! virtio-mmio (version 2) and virtio-pci implementations, finding the devices the
//! VMM gives ([`discover`]), the split [`Queue`] and the drivers.

pub mod balloon;
pub mod blk;
#[cfg(not(any(test, feature = "hosted")))]
pub mod discover;
#[cfg(test)]
pub(crate) mod fake;
mod mmio;
pub mod net;
mod pci;
pub mod queue;
pub mod rng;
pub mod vsock;

use alloc::alloc::Layout;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

pub use mmio::MmioTransport;
pub use pci::{PciFunction, PciTransport, functions as pci_functions};
pub use queue::{Buffer, Queue};

/// Interrupt status bit: the device changed its configuration space.
pub const INTERRUPT_CONFIG: u32 = 2;

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
    /// The queue allows fewer descriptors than one request of the driver takes.
    QueueTooSmall(u32),
    /// The runtime's static pool of ring pages is used up.
    OutOfQueues,
    /// A virtio-pci function ember's driver cannot use, and why.
    Pci(&'static str),
    /// A virtio-mmio device's IRQ, which the IOAPIC cannot route.
    Irq(u32),
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
            Error::QueueTooSmall(q) => write!(f, "queue {q} too small"),
            Error::OutOfQueues => f.write_str("out of queue memory"),
            Error::Pci(why) => write!(f, "virtio-pci: {why}"),
            Error::Irq(line) => write!(f, "IRQ {line} not routable"),
        }
    }
}

/// The register operations of a virtio transport (virtio 1.2 §4), which the
/// drivers are generic over: [`MmioTransport`] in a guest, a fake in unit tests.
/// Each call is one register access or a fixed few, which matters where every
/// access is a VM exit. The driver side of device initialization is built on them
/// once, in the provided methods.
pub trait Transport {
    fn status(&self) -> u32;
    fn set_status(&self, status: u32);
    /// All 64 feature bits the device offers.
    fn device_features(&self) -> u64;
    /// The feature bits the driver accepts.
    fn set_driver_features(&self, features: u64);
    /// Selects the queue that the `queue_*` and [`Transport::activate_queue`]
    /// calls address.
    fn select_queue(&self, index: u32);
    /// The selected queue's largest size; 0 if it does not exist.
    fn queue_max_size(&self) -> u32;
    /// Whether the selected queue is live.
    fn queue_ready(&self) -> bool;
    /// Gives the selected queue `size` descriptors and the guest-physical
    /// addresses of its descriptor table, driver (avail) and device (used) rings,
    /// then makes it live.
    fn activate_queue(&self, size: u16, desc: u64, driver: u64, device: u64);
    /// Tells the device that queue `index` has new buffers.
    fn notify(&self, index: u32);
    /// Acknowledges whatever interrupt the device raised and returns its bits
    /// (used buffers, configuration change); polling drivers call this so a
    /// level-triggered line does not stay asserted. A second register access when
    /// there was one.
    fn take_interrupt(&self) -> u32;
    /// Acknowledges an interrupt, if the transport needs that; returns the VM
    /// exits it took ([`Transport::take_interrupt`]: one, two if there was one).
    fn ack_interrupt(&self) -> u64 {
        1 + u64::from(self.take_interrupt() != 0)
    }
    /// Has configuration changes interrupt before the driver is up (the
    /// runtime's idle balloon): nothing to do where interrupts need no setup.
    fn enable_config_interrupt(&self) {}
    /// Changes whenever the device config space changes.
    fn config_generation(&self) -> u32;
    /// The 32-bit field at `offset` in the device config space.
    fn config_u32(&self, offset: usize) -> u32;
    /// Writes the 32-bit field at `offset` in the device config space.
    fn set_config_u32(&self, offset: usize, value: u32);

    /// Resets the device and negotiates features: takes `required` (failing without
    /// them) plus whatever of `optional` the device offers. Returns the features.
    fn negotiate(&self, required: u64, optional: u64) -> Result<u64, Error> {
        self.set_status(0);
        if self.status() != 0 {
            return Err(Error::ResetFailed);
        }
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let offered = self.device_features();
        if offered & required != required {
            return Err(Error::MissingFeatures(required & !offered));
        }
        let features = required | (offered & optional);
        self.set_driver_features(features);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            return Err(Error::FeaturesRejected);
        }
        Ok(features)
    }

    /// Gives queue `index` the rings of `queue`, sized to what the device allows.
    fn setup_queue(&self, index: u32, queue: &mut Queue) -> Result<(), Error> {
        self.select_queue(index);
        let max = self.queue_max_size();
        if max == 0 || self.queue_ready() {
            return Err(Error::QueueUnavailable(index));
        }
        queue.limit_size(u16::try_from(max).unwrap_or(u16::MAX));
        let (desc, driver, device) = queue.addresses();
        self.activate_queue(queue.size(), desc, driver, device);
        Ok(())
    }

    /// Marks the driver ready: the device may now process queues.
    fn driver_ok(&self) {
        self.set_status(self.status() | STATUS_DRIVER_OK);
    }

    /// A 64-bit field of the device config space, read as two 32-bit halves and
    /// retried until the config generation shows a consistent pair.
    fn config_u64(&self, offset: usize) -> u64 {
        loop {
            let generation = self.config_generation();
            let low = self.config_u32(offset);
            let high = self.config_u32(offset + 4);
            if self.config_generation() == generation {
                return u64::from(high) << 32 | u64::from(low);
            }
        }
    }
}

/// The transport of a device the VMM gave: virtio-mmio or virtio-pci.
pub enum DeviceTransport {
    Mmio(MmioTransport),
    Pci(PciTransport),
}

/// Forwards each [`Transport`] call to the transport in `$self`.
macro_rules! forward {
    ($self:ident, $t:ident => $call:expr) => {
        match $self {
            DeviceTransport::Mmio($t) => $call,
            DeviceTransport::Pci($t) => $call,
        }
    };
}

impl Transport for DeviceTransport {
    fn status(&self) -> u32 {
        forward!(self, t => t.status())
    }
    fn set_status(&self, status: u32) {
        forward!(self, t => t.set_status(status))
    }
    fn device_features(&self) -> u64 {
        forward!(self, t => t.device_features())
    }
    fn set_driver_features(&self, features: u64) {
        forward!(self, t => t.set_driver_features(features))
    }
    fn select_queue(&self, index: u32) {
        forward!(self, t => t.select_queue(index))
    }
    fn queue_max_size(&self) -> u32 {
        forward!(self, t => t.queue_max_size())
    }
    fn queue_ready(&self) -> bool {
        forward!(self, t => t.queue_ready())
    }
    fn activate_queue(&self, size: u16, desc: u64, driver: u64, device: u64) {
        forward!(self, t => t.activate_queue(size, desc, driver, device))
    }
    fn notify(&self, index: u32) {
        forward!(self, t => t.notify(index))
    }
    fn take_interrupt(&self) -> u32 {
        forward!(self, t => t.take_interrupt())
    }
    fn ack_interrupt(&self) -> u64 {
        forward!(self, t => t.ack_interrupt())
    }
    fn enable_config_interrupt(&self) {
        forward!(self, t => t.enable_config_interrupt())
    }
    fn driver_ok(&self) {
        forward!(self, t => t.driver_ok())
    }
    fn config_generation(&self) -> u32 {
        forward!(self, t => t.config_generation())
    }
    fn config_u32(&self, offset: usize) -> u32 {
        forward!(self, t => t.config_u32(offset))
    }
    fn set_config_u32(&self, offset: usize, value: u32) {
        forward!(self, t => t.set_config_u32(offset, value))
    }
}

/// `len` (non-zero) bytes for the device to write before the driver reads them, for
/// the rest of the run. Not zeroed: under kvm_pvm each page costs a fault when first
/// touched, and zeroing receive buffers would fault all of them in at boot (about
/// 1 ms for vsock's); this way only the pages packets reach are.
fn device_memory(len: usize) -> NonNull<u8> {
    let layout = Layout::from_size_align(len, 64).expect("device memory fits a layout");
    // SAFETY: the layout's size is not zero.
    let memory = unsafe { alloc::alloc::alloc(layout) };
    NonNull::new(memory).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout))
}

/// Gives `memory` to the device for the rest of the run.
fn leak<T>(memory: Vec<T>) -> NonNull<T> {
    NonNull::from(memory.leak()).cast()
}

#[cfg(test)]
mod tests {
    use super::fake::FakeTransport;
    use super::*;

    const F_OTHER: u64 = 1 << 7;
    const F_WANTED: u64 = 1 << 5;
    const F_UNOFFERED: u64 = 1 << 9;

    #[test]
    fn negotiates_required_and_offered_optional_features() {
        let fake = FakeTransport::new(F_VERSION_1 | F_WANTED | F_OTHER, &[], &[]);
        let features = fake.negotiate(F_VERSION_1, F_WANTED | F_UNOFFERED);
        assert_eq!(features, Ok(F_VERSION_1 | F_WANTED));
        assert_eq!(fake.accepted(), F_VERSION_1 | F_WANTED);
        let negotiated = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        assert_eq!(fake.status(), negotiated);
        fake.driver_ok();
        assert_eq!(fake.status(), negotiated | STATUS_DRIVER_OK);
    }

    #[test]
    fn fails_negotiation_the_device_does_not_complete() {
        let fake = FakeTransport::new(F_WANTED, &[], &[]);
        assert_eq!(
            fake.negotiate(F_VERSION_1 | F_WANTED, 0),
            Err(Error::MissingFeatures(F_VERSION_1))
        );

        let fake = FakeTransport::new(F_VERSION_1, &[], &[]);
        fake.refuse_features();
        assert_eq!(fake.negotiate(F_VERSION_1, 0), Err(Error::FeaturesRejected));

        let fake = FakeTransport::new(F_VERSION_1, &[], &[]);
        fake.set_status(STATUS_ACKNOWLEDGE);
        fake.break_reset();
        assert_eq!(fake.negotiate(F_VERSION_1, 0), Err(Error::ResetFailed));
    }

    #[test]
    fn sets_up_queues_within_the_devices_limits() {
        let fake = FakeTransport::new(0, &[256, 48, 0], &[]);
        let mut queue = Queue::new().unwrap();
        fake.setup_queue(0, &mut queue).unwrap();
        let regs = fake.queue(0);
        assert_eq!((queue.size(), regs.size, regs.ready), (64, 64, true));
        assert_eq!((regs.desc, regs.driver, regs.device), queue.addresses());
        // A second setup of a live queue is refused.
        let mut again = Queue::new().unwrap();
        assert_eq!(
            fake.setup_queue(0, &mut again),
            Err(Error::QueueUnavailable(0))
        );

        // A power of two no larger than the device allows.
        let mut queue = Queue::new().unwrap();
        fake.setup_queue(1, &mut queue).unwrap();
        assert_eq!((queue.size(), fake.queue(1).size), (32, 32));

        for missing in [2, 3] {
            assert_eq!(
                fake.setup_queue(missing, &mut Queue::new().unwrap()),
                Err(Error::QueueUnavailable(missing))
            );
        }
    }

    #[test]
    fn rereads_a_config_field_that_changed_while_read() {
        let mut config = [0; 8];
        config[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let fake = FakeTransport::new(0, &[], &config);
        assert_eq!(fake.config_u64(0), u64::from(u32::MAX));
        // The low half is read before, the high half after the change: a torn pair.
        fake.set_config_after_next_read(0, &(1u64 << 32).to_le_bytes());
        assert_eq!(fake.config_u64(0), 1 << 32);
    }
}
