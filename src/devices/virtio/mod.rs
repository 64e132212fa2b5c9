//! virtio devices and their transports, virtio-mmio and virtio-pci.
//!
//! A device is a small state machine over its queues; the transport owns the
//! registers, feature negotiation, queues and interrupt, and calls the device
//! when a queue is notified.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod pci;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod transport;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::devices::pci::msix::MsixVectors;
use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit every modern (virtio 1.x) device offers.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// What one call into a device did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Buffers were used: the guest may need an interrupt.
    pub used: bool,
    /// The call stopped at its work budget with work left: the transport
    /// signals this queue again, so the event loop comes back to the device
    /// after serving everything else that is ready.
    pub rerun: Option<usize>,
}

/// What the transport needs from a device. No call may do unbounded work: a
/// guest decides how full its queues are, so each call stops at a budget and
/// asks to be run again through [`Activity::rerun`].
pub trait VirtioDevice: Send {
    /// The virtio device id (2 for block, ...).
    fn device_type(&self) -> u32;
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the device-specific configuration space, which is
    /// read-only for most devices.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        log::debug!(
            "virtio: the config space of device type {} is read-only",
            self.device_type()
        );
    }
    /// Handles a notification of queue `index`.
    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Activity;
    /// The fds the device's host side wants watched: vsock's sockets, a
    /// TAP, rate limiters' timers.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Whether backend fd `index` is worth watching now: a device that
    /// cannot take more from its host side holds it off, so level-triggered
    /// epoll does not spin on it.
    fn wants_backend(&self, _index: usize) -> bool {
        true
    }
    /// Handles activity on backend fd `index`; `queues` is `None` until the
    /// driver is ready.
    fn process_backend(
        &mut self,
        _index: usize,
        _queues: Option<&mut [Queue]>,
        _mem: &GuestMemoryMmap,
    ) -> Activity {
        Activity::default()
    }
    /// The driver set DRIVER_OK (or a snapshot restored a running device)
    /// having accepted `acked_features`.
    fn activate(&mut self, _acked_features: u64) {}
    /// The driver reset the device: forget everything it set up.
    fn reset(&mut self) {}
    /// Whether the device changed its configuration space on its own since
    /// last asked (the transport then raises a configuration interrupt).
    fn take_config_change(&mut self) -> bool {
        false
    }
    /// What a snapshot keeps of the device beyond its transport and its
    /// configuration, in the device's own encoding.
    fn save_device(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Takes back what [`VirtioDevice::save_device`] returned; says what is
    /// wrong with a state it cannot take.
    fn restore_device(&mut self, _state: &[u8]) -> Result<(), &'static str> {
        Ok(())
    }
    /// Runs once after the device was restored from a snapshot, with the
    /// driver ready; true if any buffer was used.
    fn restored(&mut self, _queues: &mut [Queue], _mem: &GuestMemoryMmap) -> bool {
        false
    }
}

/// Copies the part of a device's configuration space `config` that a guest
/// read at `offset` asks for; bytes past its end read as zero.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = usize::try_from(offset)
            .ok()
            .and_then(|o| config.get(o.checked_add(i)?))
            .copied()
            .unwrap_or(0);
    }
}

/// How a device interrupts the guest: the interrupt status register (virtio-mmio's
/// InterruptStatus, virtio-pci's ISR) and what carries the interrupt.
pub struct Interrupt {
    status: AtomicU32,
    delivery: Delivery,
}

enum Delivery {
    /// One IRQ line for everything (virtio-mmio): an irqfd.
    Pin(EventFd),
    /// MSI-X (virtio-pci): the vector the driver chose for each queue and for
    /// configuration changes.
    Msix(Arc<MsixVectors>),
}

/// Bits of the interrupt status register.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    /// Interrupts through the irqfd of one IRQ line.
    pub fn pin(irq: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            delivery: Delivery::Pin(irq),
        }
    }

    /// Interrupts through MSI-X vectors.
    pub fn msix(vectors: Arc<MsixVectors>) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            delivery: Delivery::Msix(vectors),
        }
    }

    /// The device changed its configuration space.
    pub fn raise_config(&self) {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        match &self.delivery {
            Delivery::Pin(irq) => trigger(irq),
            Delivery::Msix(vectors) => vectors.signal(vectors.config_vector()),
        }
    }

    /// The device used buffers of the `queues` whose driver wants to know.
    pub fn raise_queues(&self, mut queues: impl Iterator<Item = usize>) {
        match &self.delivery {
            Delivery::Pin(irq) => {
                if queues.next().is_some() {
                    self.status.fetch_or(INT_VRING, Ordering::SeqCst);
                    trigger(irq);
                }
            }
            Delivery::Msix(vectors) => {
                let mut last = None;
                for queue in queues {
                    self.status.fetch_or(INT_VRING, Ordering::SeqCst);
                    let vector = vectors.queue_vector(queue);
                    // Queues sharing a vector share one interrupt.
                    if last != Some(vector) {
                        vectors.signal(vector);
                        last = Some(vector);
                    }
                }
            }
        }
    }

    /// Puts back a saved status, and interrupts if anything is pending,
    /// since the guest may have been interrupted before it looked.
    fn restore(&self, status: u32) {
        self.status.store(status, Ordering::SeqCst);
        if status == 0 {
            return;
        }
        match &self.delivery {
            Delivery::Pin(irq) => trigger(irq),
            Delivery::Msix(vectors) => vectors.signal_all(),
        }
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Reads and clears the status, as virtio-pci's ISR register does.
    fn take_status(&self) -> u32 {
        self.status.swap(0, Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

fn trigger(irq: &EventFd) {
    if let Err(e) = irq.write(1) {
        log::warn!("virtio: cannot raise interrupt: {e}");
    }
}

/// Narrowing of constants to the width of the field they fill, for `const`
/// items and `const { }` blocks only: evaluated there, a value that does not
/// fit stops the build instead of being truncated. (The virtio bindings give
/// every constant as a `u32`, whatever the width of its field.)
pub mod narrow {
    /// `value` as a `u8`.
    pub const fn to_u8(value: u32) -> u8 {
        match value.to_le_bytes() {
            [byte, 0, 0, 0] => byte,
            _ => panic!("constant does not fit in a u8"),
        }
    }

    /// `value` as a `u16`.
    pub const fn to_u16(value: u32) -> u16 {
        match value.to_le_bytes() {
            [low, high, 0, 0] => u16::from_le_bytes([low, high]),
            _ => panic!("constant does not fit in a u16"),
        }
    }
}
