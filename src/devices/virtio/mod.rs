//! virtio devices and their MMIO transport.
//!
//! A device is a small state machine over its queues; the transport owns the
//! registers, feature negotiation, queues and interrupt, and calls the device
//! when a queue is notified.

pub mod balloon;
pub mod block;
pub mod mmio;
pub mod net;
pub mod rng;
#[cfg(test)]
pub mod test_utils;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use std::os::fd::RawFd;

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

/// The interrupt status register and the irqfd behind it.
pub struct Interrupt {
    status: AtomicU32,
    irq: EventFd,
}

/// Bits of the interrupt status register.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    pub fn new(irq: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            irq,
        }
    }

    /// Sets `bits` in the status register and raises the guest IRQ.
    pub fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// Puts back a saved status, and raises the IRQ if anything is pending,
    /// since the guest may have been interrupted before it read the status.
    fn restore(&self, status: u32) {
        self.status.store(status, Ordering::SeqCst);
        if status != 0 {
            if let Err(e) = self.irq.write(1) {
                log::warn!("virtio: cannot raise interrupt: {e}");
            }
        }
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
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
