//! What both virtio transports share (virtio 1.2 §2-3): the device, its
//! queues and their notification eventfds, feature negotiation, the status
//! state machine, activation, and running the device. virtio-mmio
//! ([`super::mmio`]) and virtio-pci ([`super::pci`]) only map their registers
//! onto a [`Transport`].

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activity, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::EventSubscriber;
use crate::vstate::memory::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// virtio-queue refused the queue size.
    #[error("cannot create a virtio queue: {0}")]
    Queue(virtio_queue::Error),
    /// The eventfd KVM signals for queue notifications.
    #[error("cannot create a queue eventfd: {0}")]
    Event(std::io::Error),
    /// A thread panicked while holding the transport.
    #[error("a virtio transport's lock is poisoned")]
    Poisoned,
    /// A snapshot whose device has a different number of queues than the device type.
    #[error(
        "the saved device has {saved} queues where a device of type {device_type} has {expected}"
    )]
    QueueCount {
        device_type: u32,
        saved: usize,
        expected: usize,
    },
    /// Device state in a snapshot that its device cannot take.
    #[error("the saved state of a device of type {device_type} is invalid: {what}")]
    DeviceState {
        device_type: u32,
        what: &'static str,
    },
}

/// The transport's registers and queues, as a snapshot stores them.
#[derive(Serialize, Deserialize)]
pub struct TransportState {
    device_type: u32,
    status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    activated: bool,
    interrupt_status: u32,
    #[serde(with = "queue_states")]
    queues: Vec<QueueState>,
    /// What the device itself keeps, in its own encoding.
    device: Vec<u8>,
}

/// serde for virtio-queue's `QueueState`, whose fields are all public.
mod queue_states {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use virtio_queue::QueueState;

    type Fields = (u16, u16, u16, bool, u16, bool, u64, u64, u64);

    pub fn serialize<S: Serializer>(queues: &[QueueState], s: S) -> Result<S::Ok, S::Error> {
        let fields: Vec<Fields> = queues
            .iter()
            .map(|q| {
                (
                    q.max_size,
                    q.next_avail,
                    q.next_used,
                    q.event_idx_enabled,
                    q.size,
                    q.ready,
                    q.desc_table,
                    q.avail_ring,
                    q.used_ring,
                )
            })
            .collect();
        fields.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<QueueState>, D::Error> {
        let fields = Vec::<Fields>::deserialize(d)?;
        Ok(fields
            .into_iter()
            .map(|f| QueueState {
                max_size: f.0,
                next_avail: f.1,
                next_used: f.2,
                event_idx_enabled: f.3,
                size: f.4,
                ready: f.5,
                desc_table: f.6,
                avail_ring: f.7,
                used_ring: f.8,
            })
            .collect())
    }
}

/// A device and the transport-independent state around it.
pub struct Transport {
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) mem: GuestMemoryMmap,
    pub(super) interrupt: Arc<Interrupt>,
    pub(super) queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    pub(super) status: u32,
    pub(super) features_select: u32,
    pub(super) driver_features_select: u32,
    driver_features: u64,
    pub(super) queue_select: u32,
    activated: bool,
}

impl Transport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&size| Queue::new(size).map_err(Error::Queue))
            .collect::<Result<Vec<_>, _>>()?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::Event))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Transport {
            device,
            mem,
            interrupt,
            queues,
            queue_events,
            status: 0,
            features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            activated: false,
        })
    }

    pub fn save_state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            features_select: self.features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            activated: self.activated,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(Queue::state).collect(),
            device: self.device.save_device(),
        }
    }

    /// A transport for `device` in a saved state. The queues are checked as
    /// when the driver set them up: a snapshot is input like any other. The
    /// device is not running yet: the caller finishes with [`Transport::resume`]
    /// once the interrupt it delivers through is restored too.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        state: &TransportState,
    ) -> Result<Self, Error> {
        let expected = device.queue_max_sizes().len();
        if state.device_type != device.device_type() || state.queues.len() != expected {
            return Err(Error::QueueCount {
                device_type: device.device_type(),
                saved: state.queues.len(),
                expected,
            });
        }
        let mut transport = Self::new(device, mem, interrupt)?;
        transport
            .device
            .restore_device(&state.device)
            .map_err(|what| Error::DeviceState {
                device_type: state.device_type,
                what,
            })?;
        transport.queues = state
            .queues
            .iter()
            .zip(transport.device.queue_max_sizes())
            .map(|(&saved, &max_size)| {
                Queue::try_from(QueueState { max_size, ..saved }).map_err(Error::Queue)
            })
            .collect::<Result<_, _>>()?;
        transport.status = state.status;
        transport.features_select = state.features_select;
        transport.driver_features_select = state.driver_features_select;
        transport.driver_features = state.driver_features;
        transport.queue_select = state.queue_select;
        transport.activated = state.activated
            && transport
                .queues
                .iter()
                .all(|q| !q.ready() || q.is_valid(&transport.mem));
        transport.interrupt.restore(state.interrupt_status);
        Ok(transport)
    }

    /// Starts a restored device again.
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.activated {
            self.device.activate(self.driver_features);
            // A notification the guest sent just before the snapshot may not
            // have been served: look at every queue once.
            for evt in &self.queue_events {
                evt.write(1).map_err(Error::Event)?;
            }
            let used = self.device.restored(&mut self.queues, &self.mem);
            self.notify(used);
        }
        Ok(())
    }

    /// One eventfd per queue, signalled when the guest notifies that queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The guest notified queue `index` through a register (not through the
    /// ioeventfd KVM would have signalled).
    pub(super) fn notify_queue(&self, index: usize) {
        if let Some(evt) = self.queue_events.get(index) {
            // A failed write means the counter is already non-zero: it fires anyway.
            let _ = evt.write(1);
        }
    }

    /// Runs the device over queue `index` after a notification.
    pub fn process_queue(&mut self, index: usize) {
        if !self.activated || index >= self.queues.len() {
            return;
        }
        let activity = self
            .device
            .process_queue(index, &mut self.queues, &self.mem);
        self.after(activity);
    }

    /// Runs the device's host side after activity on its fd `index`.
    pub fn process_backend(&mut self, index: usize) {
        let queues = self.activated.then_some(self.queues.as_mut_slice());
        let activity = self.device.process_backend(index, queues, &self.mem);
        self.after(activity);
    }

    /// Interrupts the guest for used buffers, and brings the event loop back
    /// for work a device left at its budget.
    fn after(&mut self, activity: Activity) {
        self.notify(activity.used);
        if self.device.take_config_change() {
            self.interrupt.raise_config();
        }
        if let Some(q) = activity.rerun {
            self.notify_queue(q);
        }
    }

    /// Interrupts the guest for used buffers, on each queue that wants it.
    fn notify(&mut self, used: bool) {
        if !used {
            return;
        }
        let mem = &self.mem;
        let wanting =
            self.queues.iter_mut().enumerate().filter_map(|(index, q)| {
                q.needs_notification(mem).unwrap_or(true).then_some(index)
            });
        self.interrupt.raise_queues(wanting);
    }

    pub(super) fn has_status(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    /// Whether the driver may set queues up now: between FEATURES_OK and
    /// DRIVER_OK.
    pub(super) fn configuring_queues(&self) -> bool {
        self.has_status(
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED,
        )
    }

    pub(super) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    /// The selected queue, if the driver may change it now.
    pub(super) fn configurable_queue(&mut self) -> Option<&mut Queue> {
        if !self.configuring_queues() {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    /// The 32 feature bits `features_select` picks.
    pub(super) fn device_features_word(&self) -> u32 {
        let features = self.device.features();
        match self.features_select {
            0 => (features & 0xffff_ffff) as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        }
    }

    /// The 32 accepted feature bits `driver_features_select` picks.
    pub(super) fn driver_features_word(&self) -> u32 {
        match self.driver_features_select {
            0 => (self.driver_features & 0xffff_ffff) as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver accepts the 32 feature bits `driver_features_select` picks;
    /// only before FEATURES_OK.
    pub(super) fn set_driver_features_word(&mut self, value: u32) {
        if !self.has_status(0, VIRTIO_CONFIG_S_FEATURES_OK) {
            return;
        }
        match self.driver_features_select {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            _ => {}
        }
    }

    /// Back to the state at power-on, the device's host side included.
    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        self.activated = false;
        self.interrupt.clear();
        self.queues.iter_mut().for_each(Queue::reset);
        self.device.reset();
    }

    /// Applies a write of the status register. Only the steps of the driver's
    /// initialization (virtio 1.2 §3.1.1) are taken, one bit at a time and in
    /// order, plus FAILED at any time and 0 (reset): anything else, such as
    /// taking DRIVER_OK back to reprogram queues of a live device, is ignored.
    pub(super) fn set_status(&mut self, value: u32) {
        const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
        const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
        const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
        let added = value & !self.status;
        let keeps_bits = value & self.status == self.status;
        match (self.status, added) {
            _ if value == 0 => self.reset(),
            (current, bit) if keeps_bits && bit == VIRTIO_CONFIG_S_FAILED => {
                self.status = current | bit;
            }
            (0, ACK) if value == ACK => self.status = ACK,
            (ACK, DRIVER) if keeps_bits => self.status = value,
            (s, FEATURES_OK) if s == ACK | DRIVER && keeps_bits => {
                let offered = self.device.features();
                let valid = self.driver_features & !offered == 0
                    && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
                if valid {
                    self.status = value;
                }
            }
            (s, VIRTIO_CONFIG_S_DRIVER_OK) if s == ACK | DRIVER | FEATURES_OK && keeps_bits => {
                let queues_valid = self
                    .queues
                    .iter()
                    .all(|q| !q.ready() || q.is_valid(&self.mem));
                if queues_valid {
                    self.status = value;
                    self.activated = true;
                    self.device.activate(self.driver_features);
                    // Have the event loop look at the live device once, so it
                    // watches the device's host side from now on (a net
                    // device's TAP) even before the driver notifies a queue.
                    for index in 0..self.queue_events.len() {
                        self.notify_queue(index);
                    }
                } else {
                    log::warn!("virtio: driver set DRIVER_OK with invalid queues");
                    self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                }
            }
            (current, _) => {
                log::debug!("virtio: ignored status change from {current:#x} to {value:#x}")
            }
        }
    }
}

/// A virtio transport whose device the event loop runs.
pub trait VirtioTransport: Send {
    fn transport(&mut self) -> &mut Transport;
}

/// A transport's events: its queue notifications, then its backend's fds.
pub struct TransportEvents {
    transport: Arc<Mutex<dyn VirtioTransport>>,
    queue_events: Vec<EventFd>,
    backend_fds: Vec<RawFd>,
}

impl TransportEvents {
    pub fn new(transport: Arc<Mutex<dyn VirtioTransport>>) -> Result<Self, Error> {
        let (queue_events, backend_fds) = {
            let mut locked = transport.lock().map_err(|_| Error::Poisoned)?;
            let t = locked.transport();
            let events = t
                .queue_events
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<_, _>>()
                .map_err(Error::Event)?;
            (events, t.device.backend_fds())
        };
        Ok(TransportEvents {
            transport,
            queue_events,
            backend_fds,
        })
    }
}

impl EventSubscriber for TransportEvents {
    fn fds(&self) -> Vec<RawFd> {
        self.queue_events
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(self.backend_fds.iter().copied())
            .collect()
    }

    fn on_ready(&mut self, index: usize) {
        // Reset the counter first, so level-triggered epoll stops reporting
        // it whatever happens next.
        let queue = self.queue_events.get(index).map(|evt| {
            let _ = evt.read();
        });
        let Ok(mut locked) = self.transport.lock() else {
            return;
        };
        let transport = locked.transport();
        match queue {
            Some(()) => transport.process_queue(index),
            None => transport.process_backend(index - self.queue_events.len()),
        }
    }

    fn wants(&self, index: usize) -> bool {
        index
            .checked_sub(self.queue_events.len())
            .is_none_or(|backend| {
                self.transport
                    .lock()
                    .is_ok_and(|mut t| t.transport().device.wants_backend(backend))
            })
    }
}
