//! virtio-vsock (device id 19) with Firecracker's hybrid Unix-socket backend.

pub mod hybrid;
pub mod packet;

use std::os::fd::RawFd;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use self::hybrid::HybridBackend;
use super::{read_config_space, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::vstate::memory::GuestMemoryMmap;

pub const VIRTIO_ID_VSOCK: u32 = 19;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `virtio_vsock_event.id` telling the driver every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZE: u16 = 256;

pub use hybrid::Error;

pub struct Vsock {
    guest_cid: u64,
    backend: HybridBackend,
    queue_sizes: [u16; 3],
}

impl Vsock {
    /// A vsock device for `guest_cid`, listening for host connections at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        Ok(Vsock {
            guest_cid,
            backend: HybridBackend::new(guest_cid, uds_path)?,
            queue_sizes: [QUEUE_SIZE; 3],
        })
    }

    fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(tx) = queues.get_mut(TX) else {
            return false;
        };
        let mut used = false;
        while self.backend.accepts_tx() {
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            match packet::parse_tx(mem, chain) {
                Ok(packet) => self.backend.handle_tx(mem, &packet),
                Err(e) => log::debug!("vsock: malformed tx packet: {e}"),
            }
            used |= tx.add_used(mem, head, 0).is_ok();
        }
        used
    }

    fn fill_rx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        match queues.get_mut(RX) {
            Some(rx) if rx.ready() => self.backend.fill_rx(rx, mem),
            _ => false,
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The configuration space is the guest's CID (a 64-bit field).
        read_config_space(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> bool {
        // Whatever the guest sent may need answers; new rx buffers may unblock
        // data and, once answers drain, tx packets left waiting.
        let mut used = self.process_tx(queues, mem);
        used |= self.fill_rx(queues, mem);
        if self.backend.accepts_tx() {
            used |= self.process_tx(queues, mem);
            used |= self.fill_rx(queues, mem);
        }
        used
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.backend.epoll_fd())
    }

    fn process_backend(&mut self, queues: Option<&mut [Queue]>, mem: &GuestMemoryMmap) -> bool {
        self.backend.process_host_events();
        queues.is_some_and(|q| self.fill_rx(q, mem))
    }

    /// The host ends of the guest's connections did not survive the snapshot:
    /// tell the driver, as Firecracker does, so the guest drops them and listens anew.
    fn restored(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        self.backend.reset_all();
        let Some(events) = queues.get_mut(EVENT) else {
            return false;
        };
        let Some(chain) = events.pop_descriptor_chain(mem) else {
            log::warn!("vsock: no event buffer for the transport reset after restore");
            return false;
        };
        let head = chain.head_index();
        let written = chain
            .writable()
            .next()
            .filter(|d| d.len() >= 4)
            .and_then(|d| mem.write_obj(EVENT_TRANSPORT_RESET.to_le(), d.addr()).ok())
            .map_or(0, |()| 4);
        events.add_used(mem, head, written).is_ok()
    }
}
