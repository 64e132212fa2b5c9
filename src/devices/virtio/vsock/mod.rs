//! virtio-vsock (device id 19) with Firecracker's hybrid Unix-socket backend.

pub mod connection;
pub mod muxer;
pub mod packet;

use std::os::fd::RawFd;
use std::path::Path;

use virtio_queue::{Queue, QueueT};
use vm_memory::Bytes;

use self::muxer::{Muxer, WORK_BUDGET};
use super::{read_config_space, Activity, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::metrics::METRICS;
use crate::vstate::memory::GuestMemoryMmap;

pub const VIRTIO_ID_VSOCK: u32 = 19;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `virtio_vsock_event.id` telling the driver every connection is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZE: u16 = 256;

pub use muxer::Error;

pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    queue_sizes: [u16; 3],
}

impl Vsock {
    /// A vsock device for `guest_cid`, listening for host connections at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        Ok(Vsock {
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path)?,
            queue_sizes: [QUEUE_SIZE; 3],
        })
    }

    /// Takes packets from the tx queue while the muxer can hold their
    /// answers, at most a budget's worth. Returns whether buffers were used
    /// and whether it stopped with packets possibly left.
    fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> (bool, bool) {
        let Some(tx) = queues.get_mut(TX) else {
            return (false, false);
        };
        let mut used = false;
        for _ in 0..WORK_BUDGET {
            if !self.muxer.accepts_tx() {
                return (used, true);
            }
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                return (used, false);
            };
            let head = chain.head_index();
            match packet::parse_tx(mem, chain) {
                Ok(packet) => {
                    METRICS.vsock.tx_packets_count.inc();
                    self.muxer.handle_tx(mem, &packet);
                }
                Err(e) => {
                    METRICS.vsock.tx_malformed_packets.inc();
                    log::debug!("vsock: malformed tx packet: {e}");
                }
            }
            used |= tx.add_used(mem, head, 0).is_ok();
        }
        (used, true)
    }

    /// One bounded round over the queues: the guest's packets, then its rx
    /// buffers (answers first, then host data). Asks to be run again if a
    /// budget ran out, or if answers drained and tx packets were left waiting.
    fn run(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Activity {
        let (tx_used, tx_left) = self.process_tx(queues, mem);
        let (rx_used, rx_left) = match queues.get_mut(RX) {
            Some(rx) if rx.ready() => self.muxer.fill_rx(rx, mem),
            _ => (false, false),
        };
        let again = rx_left || (tx_left && self.muxer.accepts_tx());
        Activity {
            used: tx_used || rx_used,
            rerun: again.then_some(TX),
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
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Activity {
        let metrics = &METRICS.vsock;
        match index {
            RX => metrics.rx_queue_event_count.inc(),
            TX => metrics.tx_queue_event_count.inc(),
            _ => metrics.ev_queue_event_count.inc(),
        }
        self.run(queues, mem)
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn process_backend(
        &mut self,
        _index: usize,
        queues: Option<&mut [Queue]>,
        mem: &GuestMemoryMmap,
    ) -> Activity {
        METRICS.vsock.muxer_event_count.inc();
        self.muxer.process_host_events();
        // Host sockets that drained may let waiting tx packets through, and
        // host data may wait for rx buffers.
        queues.map_or_else(Activity::default, |q| self.run(q, mem))
    }

    fn reset(&mut self) {
        self.muxer.reset_all();
    }

    /// The host ends of the guest's connections did not survive the snapshot:
    /// tell the driver, as Firecracker does, so the guest drops them and listens anew.
    fn restored(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        self.muxer.reset_all();
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
