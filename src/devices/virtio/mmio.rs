//! The virtio-mmio transport (virtio 1.2 §4.2, version 2 register layout).

use std::sync::Arc;

use virtio_bindings::virtio_mmio::*;
use virtio_queue::QueueT;

use super::transport::{Error, Transport, TransportState, VirtioTransport};
use super::{Interrupt, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::GuestMemoryMmap;

const MAGIC: u32 = 0x7472_6976;
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

/// Offset of the queue-notify register, which KVM turns into an eventfd.
pub const NOTIFY_REG_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// A device behind a virtio-mmio register window.
pub struct MmioTransport {
    transport: Transport,
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, Error> {
        Ok(MmioTransport {
            transport: Transport::new(device, mem, interrupt)?,
        })
    }

    pub fn save_state(&self) -> TransportState {
        self.transport.save_state()
    }

    /// A transport for `device` in a saved state, running again.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        state: &TransportState,
    ) -> Result<Self, Error> {
        let mut transport = Transport::restore(device, mem, interrupt, state)?;
        transport.resume()?;
        Ok(MmioTransport { transport })
    }

    /// One eventfd per queue, signalled when the guest notifies that queue.
    pub fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd] {
        self.transport.queue_events()
    }

    /// Runs the device over queue `index` after a notification.
    pub fn process_queue(&mut self, index: usize) {
        self.transport.process_queue(index);
    }

    /// Runs the device's host side after activity on its fd `index`.
    pub fn process_backend(&mut self, index: usize) {
        self.transport.process_backend(index);
    }

    fn read_register(&self, offset: u32) -> u32 {
        let t = &self.transport;
        let queue = t.selected_queue();
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => t.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => t.device_features_word(),
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => t.interrupt.status(),
            VIRTIO_MMIO_STATUS => t.status,
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let t = &mut self.transport;
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => t.features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => t.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => t.set_driver_features_word(value),
            VIRTIO_MMIO_QUEUE_SEL => t.queue_select = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => t.notify_queue(value as usize),
            VIRTIO_MMIO_INTERRUPT_ACK => t.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => t.set_status(value),
            VIRTIO_MMIO_QUEUE_NUM
            | VIRTIO_MMIO_QUEUE_READY
            | VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if let Some(queue) = t.configurable_queue() {
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

impl VirtioTransport for MmioTransport {
    fn transport(&mut self) -> &mut Transport {
        &mut self.transport
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            self.transport.device.read_config(offset - config, data);
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
            self.transport.device.write_config(config_offset, data);
        } else if let (Ok(bytes), Ok(offset)) = (<[u8; 4]>::try_from(data), u32::try_from(offset)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    };
    use virtio_queue::Queue;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::*;
    use crate::devices::virtio::{Activity, INT_VRING, VIRTIO_F_VERSION_1};

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
        let interrupt = Arc::new(Interrupt::pin(irq.try_clone().unwrap()));
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
        let queue = t.transport.queues[0].state();
        assert_eq!((queue.desc_table, queue.size), (0x1000, 16));
        assert!(t.transport.queues[0].is_valid(&t.transport.mem));
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
