//! The virtio-mmio transport (virtio 1.2 §4.2, version 2 register layout).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::vstate::memory::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Activity, Interrupt, VirtioDevice, INT_CONFIG, INT_VRING, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::devices::EventSubscriber;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

/// Offset of the queue-notify register, which KVM turns into an eventfd.
pub const NOTIFY_REG_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_events: Vec<EventFd>,
    status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    activated: bool,
}

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

impl MmioTransport {
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
        Ok(MmioTransport {
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
    /// when the driver set them up: a snapshot is input like any other.
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
        if transport.activated {
            transport.device.activate(transport.driver_features);
            // A notification the guest sent just before the snapshot may not
            // have been served: look at every queue once.
            for evt in &transport.queue_events {
                evt.write(1).map_err(Error::Event)?;
            }
            let used = transport
                .device
                .restored(&mut transport.queues, &transport.mem);
            transport.notify(used);
        }
        Ok(transport)
    }

    /// One eventfd per queue, signalled when the guest notifies that queue.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
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
            self.interrupt.raise(INT_CONFIG);
        }
        if let Some(evt) = activity.rerun.and_then(|q| self.queue_events.get(q)) {
            // A failed write means the counter is already non-zero: it fires anyway.
            let _ = evt.write(1);
        }
    }

    /// Interrupts the guest for used buffers, unless it asked not to be.
    fn notify(&mut self, used: bool) {
        let mem = &self.mem;
        if used
            && self
                .queues
                .iter_mut()
                .any(|q| q.needs_notification(mem).unwrap_or(true))
        {
            self.interrupt.raise(INT_VRING);
        }
    }

    fn has_status(&self, set: u32, clear: u32) -> bool {
        self.status & set == set && self.status & clear == 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
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
    fn set_status(&mut self, value: u32) {
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
                    for evt in &self.queue_events {
                        // A failed write means the counter is non-zero already.
                        let _ = evt.write(1);
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

    fn read_register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.features_select {
                0 => (self.device.features() & 0xffff_ffff) as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let configuring_queues = self.has_status(
            VIRTIO_CONFIG_S_FEATURES_OK,
            VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_FAILED,
        );
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES if !self.has_status(0, VIRTIO_CONFIG_S_FEATURES_OK) => {}
            VIRTIO_MMIO_DRIVER_FEATURES => match self.driver_features_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value)
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                }
                _ => {}
            },
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_events.get(value as usize) {
                    let _ = evt.write(1);
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.set_status(value),
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH
                if configuring_queues =>
            {
                if let Some(queue) = self.selected_queue() {
                    match offset {
                        VIRTIO_MMIO_QUEUE_NUM => match u16::try_from(value) {
                            Ok(size) => queue.set_size(size),
                            Err(_) => log::debug!("virtio: ignored queue size {value}"),
                        },
                        VIRTIO_MMIO_QUEUE_READY => queue.set_ready(value == 1),
                        VIRTIO_MMIO_QUEUE_DESC_LOW => {
                            queue.set_desc_table_address(Some(value), None)
                        }
                        VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                            queue.set_desc_table_address(None, Some(value))
                        }
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW => {
                            queue.set_avail_ring_address(Some(value), None)
                        }
                        VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                            queue.set_avail_ring_address(None, Some(value))
                        }
                        VIRTIO_MMIO_QUEUE_USED_LOW => {
                            queue.set_used_ring_address(Some(value), None)
                        }
                        _ => queue.set_used_ring_address(None, Some(value)),
                    }
                }
            }
            _ => log::debug!("virtio-mmio: ignored write of {value:#x} at {offset:#x}"),
        }
    }
}

/// A transport's events: its queue notifications, then its backend's fds.
pub struct TransportEvents {
    transport: Arc<Mutex<MmioTransport>>,
    queue_events: Vec<EventFd>,
    backend_fds: Vec<RawFd>,
}

impl TransportEvents {
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Result<Self, Error> {
        let (queue_events, backend_fds) = {
            let t = transport.lock().map_err(|_| Error::Poisoned)?;
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
        let Ok(mut transport) = self.transport.lock() else {
            return;
        };
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
                    .is_ok_and(|t| t.device.wants_backend(backend))
            })
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.device.read_config(offset - config, data);
        } else if let (Ok(bytes), Ok(offset)) =
            (<&mut [u8; 4]>::try_from(&mut *data), u32::try_from(offset))
        {
            *bytes = self.read_register(offset).to_le_bytes();
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(config_offset) = offset.checked_sub(u64::from(VIRTIO_MMIO_CONFIG)) {
            self.device.write_config(config_offset, data);
        } else if let (Ok(bytes), Ok(offset)) = (<[u8; 4]>::try_from(data), u32::try_from(offset)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER};

    use super::*;

    struct Dummy {
        processed: usize,
        resets: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            1 << VIRTIO_F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(u8::try_from(offset).expect("small test offsets") + 1);
        }
        fn reset(&mut self) {
            self.resets
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        fn process_queue(&mut self, _: usize, _: &mut [Queue], _: &GuestMemoryMmap) -> Activity {
            self.processed += 1;
            Activity {
                used: true,
                rerun: None,
            }
        }
    }

    fn transport() -> (MmioTransport, EventFd) {
        let (t, irq, _) = counting_transport();
        (t, irq)
    }

    /// A transport over a device that counts its resets.
    fn counting_transport() -> (MmioTransport, EventFd, Arc<std::sync::atomic::AtomicUsize>) {
        let mem = crate::devices::virtio::test_utils::guest_memory(0x10000);
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
        let resets = Arc::<std::sync::atomic::AtomicUsize>::default();
        let dummy = Dummy {
            processed: 0,
            resets: resets.clone(),
        };
        let t = MmioTransport::new(Box::new(dummy), mem, interrupt).unwrap();
        (t, irq, resets)
    }

    fn read(t: &mut MmioTransport, offset: u32) -> u32 {
        let mut b = [0; 4];
        t.read(u64::from(offset), &mut b);
        u32::from_le_bytes(b)
    }

    fn write(t: &mut MmioTransport, offset: u32, value: u32) {
        t.write(u64::from(offset), &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, high_features: u32) {
        write(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(
            t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        write(t, VIRTIO_MMIO_DRIVER_FEATURES, high_features);
        write(t, VIRTIO_MMIO_STATUS, 0xb);
    }

    #[test]
    fn identifies_as_a_modern_virtio_mmio_device() {
        let (mut t, _) = transport();
        assert_eq!(read(&mut t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(read(&mut t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_ID), 42);
        write(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_DEVICE_FEATURES), 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 16);
        write(&mut t, VIRTIO_MMIO_QUEUE_SEL, 1);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX),
            0,
            "no second queue"
        );
        assert_eq!(read(&mut t, VIRTIO_MMIO_CONFIG + 2), 0x03030303);
    }

    #[test]
    fn features_the_device_lacks_fail_negotiation() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1 | 2);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        negotiate(&mut t, 1);
        assert_ne!(
            read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK,
            0
        );
    }

    #[test]
    fn driver_ok_with_a_broken_queue_needs_reset_and_processes_nothing() {
        let (mut t, irq) = transport();
        negotiate(&mut t, 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xffff_0000);
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert_ne!(
            read(&mut t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET,
            0
        );
        t.process_queue(0);
        assert!(irq.read().is_err(), "no interrupt from an inactive device");
    }

    #[test]
    fn notified_queue_is_processed_and_interrupts() {
        let (mut t, irq) = transport();
        negotiate(&mut t, 1);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        write(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0xf);
        assert_eq!(
            t.queue_events()[0].read().unwrap(),
            1,
            "DRIVER_OK has the event loop look at the live device once"
        );
        write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_events()[0].read().unwrap(), 1);
        t.process_queue(0);
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), INT_VRING);
        write(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, INT_VRING);
        assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    fn activate(t: &mut MmioTransport) {
        negotiate(t, 1);
        write(t, VIRTIO_MMIO_QUEUE_NUM, 16);
        write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1000);
        write(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, 0x2000);
        write(t, VIRTIO_MMIO_QUEUE_USED_LOW, 0x3000);
        write(t, VIRTIO_MMIO_QUEUE_READY, 1);
        write(t, VIRTIO_MMIO_STATUS, 0xf);
    }

    #[test]
    fn a_live_device_cannot_be_taken_back_and_reprogrammed() {
        let (mut t, _) = transport();
        activate(&mut t);
        // Drop DRIVER_OK, point the queue outside memory, set DRIVER_OK again.
        write(&mut t, VIRTIO_MMIO_STATUS, 0xb);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_LOW, 0xffff_f000);
        write(&mut t, VIRTIO_MMIO_QUEUE_DESC_HIGH, 0xffff_ffff);
        write(&mut t, VIRTIO_MMIO_QUEUE_NUM, 4);
        write(&mut t, VIRTIO_MMIO_STATUS, 0xf);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0xf);
        let queue = t.queues[0].state();
        assert_eq!((queue.desc_table, queue.size), (0x1000, 16));
        assert!(t.queues[0].is_valid(&t.mem));
    }

    #[test]
    fn status_bits_come_one_at_a_time_in_order() {
        let (mut t, _) = transport();
        for skipped in [VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_DRIVER, 0xf] {
            write(&mut t, VIRTIO_MMIO_STATUS, skipped);
            assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0, "{skipped:#x} accepted");
        }
        write(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        write(&mut t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            1,
            "ACKNOWLEDGE cannot be cleared"
        );
        write(
            &mut t,
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED,
        );
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_FAILED
        );
    }

    #[test]
    fn a_reset_returns_the_device_to_power_on() {
        let (mut t, irq, resets) = counting_transport();
        activate(&mut t);
        t.process_queue(0);
        assert_eq!(irq.read().unwrap(), 1);
        write(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_STATUS), 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        assert_eq!(read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
        assert_eq!(resets.load(std::sync::atomic::Ordering::SeqCst), 1);
        t.process_queue(0);
        assert!(irq.read().is_err(), "a reset device processes nothing");
        activate(&mut t);
        assert_eq!(
            read(&mut t, VIRTIO_MMIO_STATUS),
            0xf,
            "it initializes again"
        );
    }
}
