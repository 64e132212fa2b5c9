//! virtio-net (device id 1) on a host TAP, with Firecracker's offloads and
//! its MMDS detour: frames the guest sends to the metadata service's address
//! go to ember's own endpoint ([`crate::mmds::stack`]) and never reach the TAP.
//!
//! The TAP and the guest share the virtio-net header, so frames pass through
//! as they are: the offloads the driver accepts are the ones the TAP may use.

pub mod tap;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use std::os::fd::RawFd;
use std::sync::Arc;

use self::tap::{Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use super::{read_config_space, Activity, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::rate_limiter::SharedRateLimiter;
use crate::metrics::{NetMetrics, METRICS};
use crate::mmds::stack::MmdsStack;
use crate::vstate::memory::GuestMemoryMmap;

pub const VIRTIO_ID_NET: u32 = 1;
/// `virtio_net_hdr_v1`: what leads every frame, in both directions.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame with its header: a 64 KiB TSO/UFO segment plus Ethernet's
/// header and a VLAN tag, as Firecracker allows.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_550;
/// Where `num_buffers` sits in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// Frames moved per direction per wake-up: a guest that keeps its tx ring
/// full, or a host that floods the TAP, still lets everything else run.
const WORK_BUDGET: usize = 64;
/// Descriptors one frame may span, over all its chains (Firecracker's limit
/// for a chain): an indirect table can make a chain 65535 descriptors long,
/// and walking it is the guest's to pay for, not ember's.
const MAX_FRAME_DESCRIPTORS: usize = 1024;

pub struct Net {
    tap: Tap,
    mac: Option<[u8; 6]>,
    mtu: Option<u16>,
    features: u64,
    /// What the driver accepted, once it is running.
    acked: Option<u64>,
    rx_frame: Vec<u8>,
    /// The length of a frame in `rx_frame`, taken from the TAP (or MMDS),
    /// that waits for guest buffers.
    pending: Option<usize>,
    /// The pending frame has passed the rx rate limiter.
    pending_paid: bool,
    /// The TAP failed a read (it was deleted, say): it is not watched again.
    tap_failed: bool,
    tx_frame: Vec<u8>,
    mmds: Option<MmdsStack>,
    limiters: NetLimiters,
    metrics: Arc<NetMetrics>,
    queue_sizes: [u16; 2],
}

/// An interface's rate limiters, shared with the controller's `PATCH`es.
#[derive(Clone)]
pub struct NetLimiters {
    pub rx: SharedRateLimiter,
    pub tx: SharedRateLimiter,
}

/// Backend fds: the TAP, then the limiters' timers.
const TAP_FD: usize = 0;
const RX_TIMER_FD: usize = 1;
const TX_TIMER_FD: usize = 2;

impl Net {
    /// A device on `tap`, limited by `limiters`; `mmds` if the metadata
    /// service is reachable through it.
    pub fn new(
        tap: Tap,
        mac: Option<[u8; 6]>,
        mtu: Option<u16>,
        mmds: Option<MmdsStack>,
        limiters: NetLimiters,
        metrics: Arc<NetMetrics>,
    ) -> Net {
        let mut features = [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
        ]
        .iter()
        .fold(0u64, |f, bit| f | 1 << bit);
        if mac.is_some() {
            features |= 1 << VIRTIO_NET_F_MAC;
        }
        if mtu.is_some() {
            features |= 1 << VIRTIO_NET_F_MTU;
        }
        Net {
            tap,
            mac,
            mtu,
            features,
            acked: None,
            rx_frame: vec![0; MAX_FRAME_LEN],
            pending: None,
            pending_paid: false,
            tap_failed: false,
            tx_frame: vec![0; MAX_FRAME_LEN],
            mmds,
            limiters,
            metrics,
            queue_sizes: [QUEUE_SIZE; 2],
        }
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Whether the TAP may be read: the driver is running and the TAP works.
    fn tap_usable(&self) -> bool {
        self.acked.is_some() && !self.tap_failed
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked.is_some_and(|f| f & (1 << bit) != 0)
    }

    /// Takes the guest's frames to the TAP (or MMDS), at most a budget's
    /// worth. Returns whether buffers were used and whether frames were left.
    fn process_tx(&mut self, tx: &mut Queue, mem: &GuestMemoryMmap) -> (bool, bool) {
        let limiter = self.limiters.tx.clone();
        let Ok(mut limiter) = limiter.lock() else {
            return (false, false);
        };
        let mut used = false;
        for _ in 0..WORK_BUDGET {
            if limiter.is_waiting() {
                // The limiter's timer brings the device back.
                return (used, false);
            }
            let Some(chain) = tx.pop_descriptor_chain(mem) else {
                return (used, false);
            };
            let head = chain.head_index();
            match gather(mem, chain, &mut self.tx_frame) {
                Some(len) if !limiter.consume(u64::try_from(len).unwrap_or(u64::MAX)) => {
                    // The frame waits in the ring for its tokens.
                    self.metrics.tx_rate_limiter_throttled.inc();
                    tx.go_to_previous_position();
                    return (used, false);
                }
                Some(len) => self.send(len),
                None => {
                    self.metrics.tx_malformed_frames.inc();
                    log::debug!("net: dropped a malformed tx frame");
                }
            }
            used |= tx.add_used(mem, head, 0).is_ok();
        }
        (used, true)
    }

    /// Sends the frame in `tx_frame[..len]` on its way.
    fn send(&mut self, len: usize) {
        let frame = &self.tx_frame[..len];
        if let Some(mmds) = self
            .mmds
            .as_mut()
            .filter(|m| m.is_for_mmds(&frame[VNET_HDR_LEN..]))
        {
            METRICS.mmds.rx_accepted.inc();
            mmds.receive(&frame[VNET_HDR_LEN..]);
            return;
        }
        // A TAP whose host side is down or full drops the frame, as a wire would.
        match self.tap.write_frame(frame) {
            Ok(written) => {
                self.metrics.tx_packets_count.inc();
                self.metrics.tx_bytes_count.add(written as u64);
            }
            Err(e) => {
                self.metrics.tap_write_fails.inc();
                log::debug!("net: TAP {} dropped a frame: {e}", self.tap.name());
            }
        }
    }

    /// Fills the guest's rx buffers with MMDS's answers, then the TAP's
    /// frames, at most a budget's worth. Returns whether buffers were used and
    /// whether it stopped at the budget with frames perhaps left.
    fn process_rx(&mut self, rx: &mut Queue, mem: &GuestMemoryMmap) -> (bool, bool) {
        let limiter = self.limiters.rx.clone();
        let Ok(mut limiter) = limiter.lock() else {
            return (false, false);
        };
        let mut used = false;
        for _ in 0..WORK_BUDGET {
            let len = match self.pending {
                Some(len) => len,
                None => match self.next_frame() {
                    Some(len) => len,
                    None => return (used, false),
                },
            };
            self.pending = Some(len);
            if !self.pending_paid {
                // Refused, the frame waits with the TAP unwatched until
                // the limiter's timer brings the device back.
                if !limiter.consume(u64::try_from(len).unwrap_or(u64::MAX)) {
                    self.metrics.rx_rate_limiter_throttled.inc();
                    return (used, false);
                }
                self.pending_paid = true;
            }
            let mergeable = self.acked(VIRTIO_NET_F_MRG_RXBUF);
            match deliver(rx, mem, &mut self.rx_frame[..len], mergeable) {
                Delivery::Done => {
                    used = true;
                    self.metrics.rx_packets_count.inc();
                    self.metrics.rx_bytes_count.add(len as u64);
                }
                Delivery::Dropped => {
                    used = true;
                    self.metrics.rx_fails.inc();
                    log::debug!("net: rx buffers too small or unusable; dropped a frame");
                }
                Delivery::NoBuffers => return (used, false),
            }
            self.pending = None;
            self.pending_paid = false;
        }
        (used, true)
    }

    /// Reads the next frame into `rx_frame`: MMDS's first, then the TAP's.
    fn next_frame(&mut self) -> Option<usize> {
        if let Some(len) = self.mmds.as_mut().and_then(|m| {
            let frame = m.pop_reply()?;
            METRICS.mmds.tx_frames.inc();
            let len = (VNET_HDR_LEN + frame.len()).min(MAX_FRAME_LEN);
            self.rx_frame[..VNET_HDR_LEN].fill(0);
            self.rx_frame[VNET_HDR_LEN..len].copy_from_slice(&frame[..len - VNET_HDR_LEN]);
            Some(len)
        }) {
            return Some(len);
        }
        match self.tap.read_frame(&mut self.rx_frame) {
            Ok(len) if len > VNET_HDR_LEN => Some(len),
            Ok(_) => None,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    self.metrics.tap_read_fails.inc();
                    // A TAP deleted under ember fails every read at once: stop
                    // watching it rather than spin on its error.
                    log::warn!(
                        "net: cannot read TAP {}, giving it up: {e}",
                        self.tap.name()
                    );
                    self.tap_failed = true;
                }
                None
            }
        }
    }

    /// One bounded round: the guest's frames out, then frames in.
    fn run(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Activity {
        let [rx, tx] = queues else {
            return Activity::default();
        };
        let (tx_used, tx_left) = self.process_tx(tx, mem);
        let (rx_used, rx_left) = if rx.ready() {
            self.process_rx(rx, mem)
        } else {
            // A driver without a receive queue takes nothing: frames are
            // dropped as a wire drops them, a budget's worth per wake-up.
            self.pending_paid = false;
            for _ in 0..WORK_BUDGET {
                if self.pending.take().or_else(|| self.next_frame()).is_none() {
                    break;
                }
            }
            (false, false)
        };
        Activity {
            used: tx_used || rx_used,
            rerun: if tx_left {
                Some(TX)
            } else {
                rx_left.then_some(RX)
            },
        }
    }

    /// Takes every offload off the TAP, for a driver that has accepted none.
    fn clear_offloads(&self) {
        if let Err(e) = self.tap.set_offload(0) {
            log::warn!("net: cannot clear offloads on TAP {}: {e}", self.tap.name());
        }
    }

    /// The offloads the TAP may use: those the driver can take.
    fn tap_offloads(&self) -> u32 {
        [
            (VIRTIO_NET_F_GUEST_CSUM, TUN_F_CSUM),
            (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
            (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
            (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
        ]
        .iter()
        .filter(|(bit, _)| self.acked(*bit))
        .fold(0, |flags, (_, tun)| flags | tun)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    Done,
    Dropped,
    NoBuffers,
}

/// Writes `frame` (header first) into as many rx chains as it takes, or
/// into one without mergeable buffers; takes none if they are not all there
/// yet. A frame that does not fit the chains is dropped, and they are
/// returned empty.
fn deliver(rx: &mut Queue, mem: &GuestMemoryMmap, frame: &mut [u8], mergeable: bool) -> Delivery {
    let mut chains: Vec<(u16, Vec<(GuestAddress, usize)>)> = Vec::new();
    let (mut capacity, mut descriptors, mut usable) = (0usize, 0usize, true);
    while usable && capacity < frame.len() && (mergeable || chains.is_empty()) {
        let Some(chain) = rx.pop_descriptor_chain(mem) else {
            // Give the chains back: the frame waits for more buffers.
            let taken = u16::try_from(chains.len()).unwrap_or(u16::MAX);
            rx.set_next_avail(rx.next_avail().wrapping_sub(taken));
            return Delivery::NoBuffers;
        };
        let head = chain.head_index();
        let limit = MAX_FRAME_DESCRIPTORS.saturating_sub(descriptors);
        let buffers = writable_buffers(mem, chain, limit).unwrap_or_default();
        let size: usize = buffers.iter().map(|b| b.1).sum();
        // A chain that cannot take a byte (or the header, if first) spoils
        // the frame: dropping it returns the chains, rather than putting
        // them back to be walked again on every notification.
        usable = size >= if chains.is_empty() { VNET_HDR_LEN } else { 1 };
        descriptors += buffers.len();
        capacity = capacity.saturating_add(size);
        chains.push((head, buffers));
    }
    if capacity < frame.len() || !usable {
        for (head, _) in chains {
            let _ = rx.add_used(mem, head, 0);
        }
        return Delivery::Dropped;
    }
    let count = u16::try_from(chains.len()).unwrap_or(u16::MAX);
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&count.to_le_bytes());
    let mut rest = &frame[..];
    for (head, buffers) in chains {
        let mut written = 0usize;
        for (addr, size) in buffers {
            let n = size.min(rest.len());
            if mem.write_slice(&rest[..n], addr).is_err() {
                break;
            }
            rest = &rest[n..];
            written += n;
        }
        let _ = rx.add_used(mem, head, u32::try_from(written).unwrap_or(0));
    }
    Delivery::Done
}

/// Copies a tx chain's frame (header included) into `buf`; `None` if the
/// chain is not a frame: a device-writable or unreadable buffer, shorter
/// than a header and an Ethernet header, longer than [`MAX_FRAME_LEN`], or
/// of more than [`MAX_FRAME_DESCRIPTORS`] descriptors.
fn gather(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Option<usize> {
    let mut len = 0usize;
    for (count, desc) in chain.enumerate() {
        if count >= MAX_FRAME_DESCRIPTORS {
            return None;
        }
        let size = usize::try_from(desc.len()).ok()?;
        let end = len.checked_add(size).filter(|&end| end <= buf.len())?;
        if desc.is_write_only() || mem.read_slice(&mut buf[len..end], desc.addr()).is_err() {
            return None;
        }
        len = end;
    }
    (len >= VNET_HDR_LEN + ETHERNET_HEADER_LEN).then_some(len)
}

const ETHERNET_HEADER_LEN: usize = 14;

/// A rx chain's buffers, if all are device-writable and in guest memory and
/// there are at most `limit` of them.
fn writable_buffers(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    limit: usize,
) -> Option<Vec<(GuestAddress, usize)>> {
    let mut count = 0;
    chain
        .map(|desc| {
            count += 1;
            if count > limit {
                return None;
            }
            let size = usize::try_from(desc.len()).ok()?;
            (desc.is_write_only() && mem.check_range(desc.addr(), size, Permissions::Write))
                .then_some((desc.addr(), size))
        })
        .collect()
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // mac[6], status (u16, not offered), max_virtqueue_pairs (u16), mtu (u16).
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac.unwrap_or_default());
        config[10..].copy_from_slice(&self.mtu.unwrap_or_default().to_le_bytes());
        read_config_space(&config, offset, data);
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Activity {
        match index {
            RX => self.metrics.rx_queue_event_count.inc(),
            _ => self.metrics.tx_queue_event_count.inc(),
        }
        self.run(queues, mem)
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        let timer = |l: &SharedRateLimiter| l.lock().map(|l| l.timer_fd()).ok();
        [
            Some(self.tap.fd()),
            timer(&self.limiters.rx),
            timer(&self.limiters.tx),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The TAP is read only while the driver runs and a frame can be taken:
    /// one waiting for rx buffers or tokens holds the rest back in the
    /// TAP's queue. The timers are read whenever they fire.
    fn wants_backend(&self, index: usize) -> bool {
        index != TAP_FD || (self.tap_usable() && self.pending.is_none())
    }

    fn process_backend(
        &mut self,
        index: usize,
        queues: Option<&mut [Queue]>,
        mem: &GuestMemoryMmap,
    ) -> Activity {
        let timer = match index {
            RX_TIMER_FD => {
                self.metrics.rx_event_rate_limiter_count.inc();
                Some(&self.limiters.rx)
            }
            TX_TIMER_FD => {
                self.metrics.tx_rate_limiter_event_count.inc();
                Some(&self.limiters.tx)
            }
            _ => {
                self.metrics.rx_tap_event_count.inc();
                None
            }
        };
        if let Some(Ok(mut limiter)) = timer.map(|l| l.lock()) {
            limiter.on_timer();
        }
        queues.map_or_else(Activity::default, |q| self.run(q, mem))
    }

    fn activate(&mut self, acked_features: u64) {
        self.acked = Some(acked_features & self.features);
        if let Err(e) = self.tap.set_offload(self.tap_offloads()) {
            // The TAP must not hand over frames the driver cannot take.
            log::warn!("net: cannot set offloads on TAP {}: {e}", self.tap.name());
            self.clear_offloads();
        }
    }

    fn reset(&mut self) {
        self.clear_offloads();
        self.acked = None;
        self.pending = None;
        self.pending_paid = false;
        if let Some(mmds) = &mut self.mmds {
            mmds.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::test_utils::{desc, guest_memory, used_lens, NEXT, WRITE};

    /// A frame of `len` bytes after its header, each byte its offset's low bits.
    fn frame(len: usize) -> Vec<u8> {
        (0..VNET_HDR_LEN + len)
            .map(|i| i.to_le_bytes()[0])
            .collect()
    }

    #[test]
    fn a_frame_spans_mergeable_buffers_and_says_how_many() {
        let mem = guest_memory(0x40000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    desc(0x1000, 1000, WRITE, 0),
                    desc(0x2000, 1000, WRITE, 0),
                    desc(0x3000, 1000, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut rx: Queue = queue.create_queue().unwrap();
        let mut f = frame(2500);
        assert_eq!(deliver(&mut rx, &mem, &mut f, true), Delivery::Done);
        assert_eq!(used_lens(&queue, 3), vec![1000, 1000, 512]);
        let mut header = [0u8; VNET_HDR_LEN];
        mem.read_slice(&mut header, GuestAddress(0x1000)).unwrap();
        assert_eq!(u16::from_le_bytes([header[10], header[11]]), 3);
        let mut tail = [0u8; 4];
        mem.read_slice(&mut tail, GuestAddress(0x3000 + 508))
            .unwrap();
        assert_eq!(tail, f[VNET_HDR_LEN + 2500 - 4..]);
    }

    #[test]
    fn a_frame_waits_whole_until_there_are_buffers_enough() {
        let mem = guest_memory(0x40000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(&[desc(0x1000, 1000, WRITE, 0)], 0)
            .unwrap();
        let mut rx: Queue = queue.create_queue().unwrap();
        let mut f = frame(1500);
        assert_eq!(deliver(&mut rx, &mem, &mut f, true), Delivery::NoBuffers);
        assert_eq!(rx.next_avail(), 0, "the chain went back");
        queue
            .add_desc_chains(&[desc(0x2000, 1000, WRITE, 0)], 1)
            .unwrap();
        assert_eq!(deliver(&mut rx, &mem, &mut f, true), Delivery::Done);
        assert_eq!(used_lens(&queue, 2), vec![1000, 512]);
    }

    #[test]
    fn unusable_rx_buffers_drop_the_frame_and_come_back_empty() {
        let mem = guest_memory(0x40000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    // Too small without mergeable buffers.
                    desc(0x1000, 100, WRITE, 0),
                    // Read-only.
                    desc(0x2000, 4096, 0, 0),
                    // Outside guest memory, and at the top of the address space.
                    desc(0x40_0000_0000, 4096, WRITE, 0),
                    desc(0xffff_ffff_ffff_f000, 4096, WRITE | NEXT, 4),
                    desc(0x3000, 4096, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut rx: Queue = queue.create_queue().unwrap();
        for _ in 0..4 {
            let mut f = frame(1000);
            assert_eq!(deliver(&mut rx, &mem, &mut f, false), Delivery::Dropped);
        }
        assert_eq!(used_lens(&queue, 4), vec![0, 0, 0, 0]);
        assert_eq!(
            deliver(&mut rx, &mem, &mut frame(10), false),
            Delivery::NoBuffers
        );
    }

    #[test]
    fn a_bad_chain_among_mergeable_ones_drops_the_frame_instead_of_waiting() {
        let mem = guest_memory(0x40000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    desc(0x1000, 1000, WRITE, 0),
                    desc(0x2000, 1000, 0, 0),
                    desc(0x3000, 1000, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut rx: Queue = queue.create_queue().unwrap();
        assert_eq!(
            deliver(&mut rx, &mem, &mut frame(2500), true),
            Delivery::Dropped
        );
        assert_eq!(used_lens(&queue, 2), vec![0, 0]);
        assert_eq!(
            rx.next_avail(),
            2,
            "the chains went back used, not to the ring"
        );
    }

    #[test]
    fn chains_longer_than_a_frame_may_span_are_refused() {
        let mem = guest_memory(0x100000);
        let queue = MockSplitQueue::new(&mem, 2048);
        let count = u16::try_from(MAX_FRAME_DESCRIPTORS + 1).unwrap();
        let chain = |flags| -> Vec<_> {
            (0..count)
                .map(|i| {
                    let more = if i + 1 < count { NEXT } else { 0 };
                    desc(0x8000 + 64 * u64::from(i), 64, flags | more, i + 1)
                })
                .collect()
        };
        queue.add_desc_chains(&chain(0), 0).unwrap();
        let mut tx: Queue = queue.create_queue().unwrap();
        let mut buf = vec![0; MAX_FRAME_LEN];
        let popped = tx.pop_descriptor_chain(&mem).expect("a chain");
        assert_eq!(gather(&mem, popped, &mut buf), None);

        let queue = MockSplitQueue::new(&mem, 2048);
        queue.add_desc_chains(&chain(WRITE), 0).unwrap();
        let mut rx: Queue = queue.create_queue().unwrap();
        assert_eq!(
            deliver(&mut rx, &mem, &mut frame(60), true),
            Delivery::Dropped
        );
    }

    #[test]
    fn tx_chains_that_are_no_frame_are_refused() {
        let mem = guest_memory(0x40000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    // A header and an Ethernet header, split over two buffers.
                    desc(0x1000, 12, NEXT, 1),
                    desc(0x2000, 60, 0, 0),
                    // Device-writable.
                    desc(0x3000, 100, WRITE, 0),
                    // Shorter than the headers.
                    desc(0x4000, 20, 0, 0),
                    // Longer than any frame.
                    desc(0x5000, 0x8000, NEXT, 5),
                    desc(0x5000, 0x8000, NEXT, 6),
                    desc(0x5000, 0x8000, 0, 0),
                    // Outside guest memory.
                    desc(0x40_0000_0000, 100, 0, 0),
                ],
                0,
            )
            .unwrap();
        let mut tx: Queue = queue.create_queue().unwrap();
        let mut buf = vec![0; MAX_FRAME_LEN];
        let mut results = Vec::new();
        while let Some(chain) = tx.pop_descriptor_chain(&mem) {
            results.push(gather(&mem, chain, &mut buf));
        }
        assert_eq!(results, vec![Some(72), None, None, None, None]);
    }
}
