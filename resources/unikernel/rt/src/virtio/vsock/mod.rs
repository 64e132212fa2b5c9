//! virtio-vsock driver (virtio 1.2 §5.10), interrupt-driven: receive buffers stay
//! posted, sent packets come back through the used ring, and the event queue
//! reports transport resets. Stream logic lives with its user
//! ([`crate::function`](mod@crate::function)); this module moves packets.

pub mod credit;
pub mod packet;

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

pub use self::packet::Received;
use self::packet::{HEADER_LEN, Header};
use super::queue::desc_len;
use super::{Buffer, DeviceTransport, Error, F_VERSION_1, Queue, Transport, device_memory, leak};

/// Device ID of a socket device.
pub const DEVICE_ID: u32 = 19;

const RX: u32 = 0;
const TX: u32 = 1;
const EVENT: u32 = 2;

/// Largest payload a receive buffer takes, as Linux and Firecracker send at most.
const RX_PAYLOAD: usize = 64 * 1024;
const RX_BUFFER_LEN: usize = HEADER_LEN + RX_PAYLOAD;
/// [`RX_BUFFER_LEN`] as a descriptor's length.
const RX_BUFFER_DESC_LEN: u32 = desc_len(RX_BUFFER_LEN);
/// Receive buffers posted (fewer if the queue is smaller): 1 MiB in flight.
const RX_BUFFERS: usize = 16;
const _: () = assert!(RX_BUFFERS <= u32::BITS as usize);
const EVENT_BUFFERS: usize = 4;
/// Transmit slots, one bit each in `free_slots`; two descriptors per packet fill
/// a 64-entry queue.
const TX_SLOTS: usize = 32;
/// Descriptors of the longest packet: header (with inline bytes), payload.
const TX_CHAIN: u16 = 2;
/// Payloads up to this long are copied next to their header (one descriptor);
/// longer ones keep up to this much copied there and the rest in a second one.
pub const INLINE_LEN: usize = 20;

/// `virtio_vsock_event.id` of a transport reset (after a snapshot restore).
const EVENT_TRANSPORT_RESET: u32 = 0;

/// One packet in flight on the transmit queue: its header and any short payload.
#[repr(C)]
struct TxSlot {
    header: [u8; HEADER_LEN],
    inline: [u8; INLINE_LEN],
}

/// A socket device after initialization.
pub struct Vsock<T: Transport = DeviceTransport> {
    transport: T,
    rx: Queue,
    tx: Queue,
    event: Queue,
    guest_cid: u64,
    /// `RX_BUFFERS` receive buffers back to back (leaked: the device owns them).
    rx_memory: NonNull<u8>,
    /// One little-endian u32 per event buffer (leaked likewise).
    events: NonNull<u32>,
    /// Receive buffers in use (fewer if the queue is smaller).
    rx_buffers: usize,
    /// Receive buffers handled but not posted again, one bit each: they go back
    /// in batches (see [`Vsock::receive`]).
    rx_held: u32,
    tx_slots: NonNull<TxSlot>,
    free_slots: u32,
    /// Queues with buffers the device has not been told about.
    unnotified: [bool; 3],
}

impl<T: Transport> Vsock<T> {
    /// Initializes the socket device behind `transport` (already probed as one)
    /// and posts the receive and event buffers.
    pub fn new(transport: T) -> Result<Vsock<T>, Error> {
        transport.negotiate(F_VERSION_1, 0)?;
        let mut queues = [Queue::new()?, Queue::new()?, Queue::new()?];
        for (index, queue) in (0..).zip(&mut queues) {
            queue.enable_interrupts();
            transport.setup_queue(index, queue)?;
        }
        if queues[TX as usize].size() < TX_CHAIN {
            return Err(Error::QueueTooSmall(TX));
        }
        transport.driver_ok();
        let [rx, tx, event] = queues;
        let rx_buffers = RX_BUFFERS.min(usize::from(rx.size()));
        let slots = Vec::from_iter((0..TX_SLOTS).map(|_| TxSlot {
            header: [0; HEADER_LEN],
            inline: [0; INLINE_LEN],
        }));
        let mut vsock = Vsock {
            guest_cid: transport.config_u64(0),
            transport,
            rx,
            tx,
            event,
            rx_memory: device_memory(RX_BUFFERS * RX_BUFFER_LEN),
            events: leak(vec![0u32; EVENT_BUFFERS]),
            rx_buffers,
            rx_held: 0,
            tx_slots: leak(slots),
            free_slots: u32::MAX,
            unnotified: [false; 3],
        };
        for index in (0..).take(vsock.rx_buffers) {
            vsock.post_rx(index);
        }
        for index in (0..).take(EVENT_BUFFERS.min(usize::from(vsock.event.size()))) {
            vsock.post_event(index);
        }
        vsock.kick();
        Ok(vsock)
    }

    /// The CID the device gave this guest (read again after a transport reset).
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    fn post_rx(&mut self, index: u32) {
        let buffer = Buffer {
            // SAFETY: `index` < RX_BUFFERS, inside the receive memory.
            addr: unsafe { self.rx_memory.add(index as usize * RX_BUFFER_LEN) }.as_ptr() as u64,
            len: RX_BUFFER_DESC_LEN,
            device_writes: true,
        };
        // SAFETY: the receive memory is leaked, so valid forever, and only read
        // between the device returning a buffer and posting it again.
        unsafe { self.rx.push(&[buffer], index) }.expect("a returned buffer fits");
        self.unnotified[RX as usize] = true;
    }

    fn post_event(&mut self, index: u32) {
        let buffer = Buffer {
            // SAFETY: `index` < EVENT_BUFFERS, inside the event memory.
            addr: unsafe { self.events.add(index as usize) }.as_ptr() as u64,
            len: 4,
            device_writes: true,
        };
        // SAFETY: as for the receive buffers.
        unsafe { self.event.push(&[buffer], index) }.expect("a returned buffer fits");
        self.unnotified[EVENT as usize] = true;
    }

    /// Whether the device reported a transport reset since the last call; the
    /// guest CID is read again then, and every queue notified at the next kick
    /// (a restored device may hold chains it was never told about).
    pub fn take_transport_reset(&mut self) -> bool {
        let mut reset = false;
        while let Some((index, len)) = self.event.pop_used() {
            // SAFETY: the device returned event buffer `index` (< EVENT_BUFFERS);
            // the volatile read sees what it wrote.
            let id = unsafe { self.events.add(index as usize).read_volatile() };
            reset |= len >= 4 && u32::from_le(id) == EVENT_TRANSPORT_RESET;
            self.post_event(index);
        }
        if reset {
            self.guest_cid = self.transport.config_u64(0);
            self.unnotified = [true; 3];
        }
        reset
    }

    /// Hands every received packet to `handle`. Handled buffers go back to the
    /// device once at most half of them are left with it, all at once, so that a
    /// small exchange costs no queue notification while a stream never runs dry (as
    /// Linux's driver does).
    pub fn receive(&mut self, mut handle: impl FnMut(Received<'_>)) {
        while let Some((index, len)) = self.rx.pop_used() {
            // SAFETY: the device returned buffer `index` and wrote `len` bytes of it
            // (the queue bounds `len` by the buffer); it does not touch the buffer
            // again until it is posted below.
            let bytes = unsafe {
                core::slice::from_raw_parts(
                    self.rx_memory.add(index as usize * RX_BUFFER_LEN).as_ptr(),
                    len as usize,
                )
            };
            if let Some(packet) = packet::parse(bytes) {
                handle(packet);
            }
            self.rx_held |= 1 << index;
        }
        let held = self.rx_held.count_ones() as usize;
        if held > 0 && 2 * held >= self.rx_buffers {
            while self.rx_held != 0 {
                let index = self.rx_held.trailing_zeros();
                self.rx_held &= !(1 << index);
                self.post_rx(index);
            }
        }
    }

    /// Whether the device has returned buffers on any queue since they were last
    /// looked at: a cheap check (memory reads only) for polling.
    pub fn has_used(&self) -> bool {
        self.rx.has_used() || self.tx.has_used() || self.event.has_used()
    }

    /// Whether [`Vsock::send`] has room for another packet.
    pub fn can_send(&self) -> bool {
        self.free_slots & slot_mask() != 0 && self.tx.free_descriptors() >= 2
    }

    /// Queues a packet: `header` (whose `len` must be `inline.len() +
    /// payload.len()`), then `inline` (at most [`INLINE_LEN`] bytes, copied) and
    /// `payload`, copied as well if both fit in [`INLINE_LEN`], else referenced.
    ///
    /// # Safety
    /// A referenced payload must stay valid until [`Vsock::sending`] returns false.
    pub unsafe fn send(&mut self, header: &Header, inline: &[u8], payload: &[u8]) {
        assert!(self.can_send(), "no room to send");
        assert!(inline.len() <= INLINE_LEN, "inline part too long");
        let index = (self.free_slots & slot_mask()).trailing_zeros();
        self.free_slots &= !(1 << index);
        // SAFETY: the slot was free, so the device is not reading it, and `index`
        // < TX_SLOTS.
        let slot = unsafe { &mut *self.tx_slots.add(index as usize).as_ptr() };
        slot.header = header.encode();
        slot.inline[..inline.len()].copy_from_slice(inline);
        let mut copied = inline.len();
        let referenced = copied + payload.len() > INLINE_LEN;
        if !referenced {
            slot.inline[copied..copied + payload.len()].copy_from_slice(payload);
            copied += payload.len();
        }
        // Both fit: `copied` is at most INLINE_LEN, and the payload no longer than
        // `header.len`, a u32, as the caller promised.
        #[allow(clippy::cast_possible_truncation)]
        let (head_len, body_len) = ((HEADER_LEN + copied) as u32, payload.len() as u32);
        let head = Buffer {
            addr: slot.header.as_ptr() as u64,
            len: head_len,
            device_writes: false,
        };
        let body = Buffer {
            addr: payload.as_ptr() as u64,
            len: body_len,
            device_writes: false,
        };
        let chain: &[Buffer] = if referenced { &[head, body] } else { &[head] };
        // SAFETY: the slot stays reserved until the chain comes back, and the
        // caller keeps the payload valid that long.
        unsafe { self.tx.push(chain, index) }.expect("can_send checked the room");
        self.unnotified[TX as usize] = true;
    }

    /// Frees the slots of packets the device has sent.
    pub fn reclaim_sent(&mut self) {
        while let Some((index, _)) = self.tx.pop_used() {
            self.free_slots |= 1 << index;
        }
    }

    /// Whether the device still holds packets given to [`Vsock::send`].
    pub fn sending(&self) -> bool {
        self.tx.in_flight()
    }

    /// Tells the device about every buffer posted since the last call.
    pub fn kick(&mut self) {
        for (index, queue) in [(RX, &self.rx), (TX, &self.tx), (EVENT, &self.event)] {
            if core::mem::take(&mut self.unnotified[index as usize]) {
                queue.notify(&self.transport, index);
            }
        }
    }

    /// Acknowledges the device's interrupt before the driver waits for the next;
    /// returns how many register accesses (VM exits) that took.
    pub fn ack_interrupt(&self) -> u64 {
        self.transport.ack_interrupt()
    }

    /// One register read, only for the VM exit it takes: for timing one where
    /// acknowledging interrupts takes none (MSI-X). Returns the exits (1).
    pub fn sample_exit(&self) -> u64 {
        self.transport.config_generation();
        1
    }
}

/// The bits of `free_slots` that name slots.
fn slot_mask() -> u32 {
    u32::MAX >> (32 - TX_SLOTS)
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Chain, FakeTransport};
    use super::super::queue::{DESC_F_NEXT, DESC_F_WRITE};
    use super::packet::{HOST_CID, Op, TYPE_STREAM};
    use super::*;
    use crate::function::server::{Payload, Server};
    use crate::virtio::vsock::credit::BUF_ALLOC;

    const CID: u64 = 3;
    /// The lengths of a header and of an inline payload, as a device reports them.
    const HEADER: u32 = desc_len(HEADER_LEN);
    const INLINE: u32 = desc_len(INLINE_LEN);

    fn device(max_sizes: &[u32]) -> (FakeTransport, Vsock<FakeTransport>) {
        let fake = FakeTransport::new(F_VERSION_1, max_sizes, &CID.to_le_bytes());
        let vsock = Vsock::new(fake.clone()).unwrap();
        (fake, vsock)
    }

    fn header(op: Op, len: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: CID,
            src_port: 7000,
            dst_port: 1024,
            len,
            kind: TYPE_STREAM,
            op: Some(op),
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        }
    }

    /// Has the device fill the next receive buffer with `bytes` and report `len`
    /// bytes written.
    fn deliver(fake: &FakeTransport, bytes: &[u8], len: u32) {
        let chain = fake.pop_avail(RX).expect("a receive buffer posted");
        fill(fake, &chain, bytes, len);
    }

    /// Has the device fill receive buffer `chain` with `bytes` and report `len`
    /// bytes written.
    fn fill(fake: &FakeTransport, chain: &Chain, bytes: &[u8], len: u32) {
        chain.write(0, bytes);
        fake.complete(RX, chain, len);
    }

    fn packet(header: &Header, payload: &[u8]) -> Vec<u8> {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    /// What `vsock` hands over, owned.
    fn received(vsock: &mut Vsock<FakeTransport>) -> Vec<(Header, Option<Vec<u8>>)> {
        let mut packets = Vec::new();
        vsock.receive(|packet| {
            packets.push(match packet {
                Received::Packet(header, payload) => (header, Some(payload.to_vec())),
                Received::Truncated(header) => (header, None),
            })
        });
        packets
    }

    #[test]
    fn posts_receive_and_event_buffers_at_start() {
        let (fake, vsock) = device(&[64, 64, 64]);
        assert_eq!(vsock.guest_cid(), CID);
        assert_eq!(fake.take_notified(), [RX, EVENT]);
        for queue in [RX, TX, EVENT] {
            assert_eq!(fake.avail_flags(queue), 0, "interrupts on");
        }
        let rx: Vec<_> = core::iter::from_fn(|| fake.pop_avail(RX)).collect();
        assert_eq!(rx.len(), RX_BUFFERS);
        for chain in &rx {
            assert_eq!(chain.descs.len(), 1);
            assert_eq!(
                (chain.descs[0].len, chain.descs[0].flags),
                (RX_BUFFER_DESC_LEN, DESC_F_WRITE)
            );
        }
        let events: Vec<_> = core::iter::from_fn(|| fake.pop_avail(EVENT)).collect();
        assert_eq!(events.len(), EVENT_BUFFERS);
        assert!(events.iter().all(|c| c.descs[0].len == 4));
        assert!(fake.pop_avail(TX).is_none());

        // A smaller receive queue gets as many buffers as it holds.
        let (fake, _) = device(&[4, 64, 2]);
        assert_eq!(core::iter::from_fn(|| fake.pop_avail(RX)).count(), 4);
        assert_eq!(core::iter::from_fn(|| fake.pop_avail(EVENT)).count(), 2);
    }

    #[test]
    fn refuses_a_transmit_queue_too_small_for_a_packet() {
        let fake = FakeTransport::new(F_VERSION_1, &[64, 1, 64], &[0; 8]);
        assert_eq!(Vsock::new(fake).err(), Some(Error::QueueTooSmall(TX)));
    }

    #[test]
    fn copies_short_packets_next_to_their_header() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        fake.take_notified();
        let header = header(Op::Rw, 7);
        // SAFETY: nothing is referenced: header and bytes are copied.
        unsafe { vsock.send(&header, b"abc", b"defg") };
        assert!(
            fake.take_notified().is_empty(),
            "the device hears at the kick"
        );
        vsock.kick();
        assert_eq!(fake.take_notified(), [TX]);
        let chain = fake.pop_avail(TX).unwrap();
        assert_eq!(chain.descs.len(), 1);
        assert_eq!(chain.descs[0].flags, 0);
        assert_eq!(chain.read(0), packet(&header, b"abcdefg"));
    }

    #[test]
    fn references_long_payloads_until_the_device_sent_them() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        let payload = vec![7u8; INLINE_LEN];
        let header = header(Op::Rw, 3 + INLINE);
        // SAFETY: `payload` outlives the test, which waits until it is sent.
        unsafe { vsock.send(&header, b"abc", &payload) };
        vsock.kick();
        let chain = fake.pop_avail(TX).unwrap();
        assert_eq!(chain.descs.len(), 2);
        assert_eq!(chain.descs[0].flags, DESC_F_NEXT);
        assert_eq!(chain.read(0), packet(&header, b"abc"));
        assert_eq!(
            (
                chain.descs[1].addr,
                chain.descs[1].len,
                chain.descs[1].flags
            ),
            (payload.as_ptr() as u64, INLINE, 0)
        );
        assert!(vsock.sending());
        vsock.reclaim_sent();
        assert!(vsock.sending());
        fake.complete(TX, &chain, 0);
        vsock.reclaim_sent();
        assert!(!vsock.sending());
    }

    #[test]
    fn sends_no_more_than_slots_and_descriptors_allow() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        let header = header(Op::CreditUpdate, 0);
        for _ in 0..TX_SLOTS {
            assert!(vsock.can_send());
            // SAFETY: nothing is referenced.
            unsafe { vsock.send(&header, &[], &[]) };
        }
        assert!(!vsock.can_send(), "every slot in use");
        vsock.kick();
        let chain = fake.pop_avail(TX).unwrap();
        fake.complete(TX, &chain, 0);
        vsock.reclaim_sent();
        assert!(vsock.can_send());

        let (_, mut vsock) = device(&[64, 4, 64]);
        let payload = [0u8; INLINE_LEN + 1];
        for _ in 0..2 {
            // SAFETY: `payload` outlives the test.
            unsafe { vsock.send(&header, &[], &payload) };
        }
        assert!(!vsock.can_send(), "every descriptor in use");
    }

    #[test]
    fn hands_over_received_packets_and_reposts_buffers_in_batches() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        fake.take_notified();
        // The device takes every buffer, as one that waits for traffic does.
        let posted: Vec<_> = core::iter::from_fn(|| fake.pop_avail(RX)).collect();
        let mut posted = posted.into_iter();
        let mut fill_next = |bytes: &[u8], len| fill(&fake, &posted.next().unwrap(), bytes, len);
        let data = header(Op::Rw, 5);
        fill_next(&packet(&data, b"hello, and more"), 64);
        let short = header(Op::Rw, 100);
        fill_next(&packet(&short, b"cut"), HEADER + 3);
        fill_next(&packet(&data, b"hello"), HEADER - 1);
        assert_eq!(
            received(&mut vsock),
            [(data, Some(b"hello".to_vec())), (short, None)]
        );
        // Three of sixteen buffers handled: the device keeps the other thirteen.
        vsock.kick();
        assert!(fake.pop_avail(RX).is_none());
        assert!(fake.take_notified().is_empty());

        let credit = header(Op::CreditUpdate, 0);
        for _ in 0..4 {
            fill_next(&credit.encode(), HEADER);
        }
        assert_eq!(received(&mut vsock).len(), 4);
        vsock.kick();
        assert!(fake.pop_avail(RX).is_none());
        fill_next(&credit.encode(), HEADER);
        assert_eq!(received(&mut vsock).len(), 1);
        // Half handled: all eight go back at once, with one notification.
        vsock.kick();
        assert_eq!(fake.take_notified(), [RX]);
        assert_eq!(core::iter::from_fn(|| fake.pop_avail(RX)).count(), 8);
    }

    #[test]
    fn drops_a_packet_longer_than_its_buffer() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        let data = header(Op::Rw, 5);
        deliver(&fake, &packet(&data, b"hello"), RX_BUFFER_DESC_LEN + 1);
        assert!(received(&mut vsock).is_empty());
        assert!(!vsock.has_used());
    }

    #[test]
    fn reports_transport_resets() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        fake.take_notified();
        assert!(!vsock.take_transport_reset());
        let mut posted = core::iter::from_fn(|| fake.pop_avail(EVENT)).collect::<Vec<_>>();
        assert_eq!(posted.len(), EVENT_BUFFERS);
        for (id, len) in [(5u32, 4), (EVENT_TRANSPORT_RESET, 2)] {
            let chain = posted.pop().unwrap();
            chain.write(0, &id.to_le_bytes());
            fake.complete(EVENT, &chain, len);
        }
        assert!(!vsock.take_transport_reset(), "other events and short ones");

        fake.set_config(0, &9u64.to_le_bytes());
        let chain = posted.pop().unwrap();
        chain.write(0, &EVENT_TRANSPORT_RESET.to_le_bytes());
        fake.complete(EVENT, &chain, 4);
        assert!(vsock.has_used());
        assert!(vsock.take_transport_reset());
        assert_eq!(vsock.guest_cid(), 9);
        // Every queue hears at the next kick, and the event buffers are back.
        vsock.kick();
        assert_eq!(fake.take_notified(), [RX, TX, EVENT]);
        assert_eq!(core::iter::from_fn(|| fake.pop_avail(EVENT)).count(), 3);
    }

    #[test]
    fn counts_the_exits_an_acknowledgement_takes() {
        let (fake, vsock) = device(&[64, 64, 64]);
        assert_eq!(vsock.ack_interrupt(), 1);
        fake.raise_interrupt(1);
        assert_eq!(vsock.ack_interrupt(), 2);
        assert_eq!(vsock.ack_interrupt(), 1);
    }

    #[test]
    fn answers_a_credit_request_with_a_credit_update_through_the_device() {
        let (fake, mut vsock) = device(&[64, 64, 64]);
        let mut server = Server::new(CID, 1024, 1 << 20);
        // What the device hands the server, and the packets the server sends back.
        let exchange = |vsock: &mut Vsock<FakeTransport>, server: &mut Server| {
            vsock.receive(|packet| match packet {
                Received::Packet(header, payload) => server.receive(&header, payload),
                Received::Truncated(header) => server.refuse(&header),
            });
            while let Some(out) = server.next_packet() {
                assert_eq!(out.payload, Payload::None);
                // SAFETY: nothing is referenced.
                unsafe { vsock.send(&out.header, &[], &[]) };
            }
            vsock.kick();
            core::iter::from_fn(|| fake.pop_avail(TX))
                .map(|chain| {
                    fake.complete(TX, &chain, 0);
                    Header::decode(&chain.read(0)).unwrap()
                })
                .collect::<Vec<_>>()
        };
        deliver(&fake, &header(Op::Request, 0).encode(), HEADER);
        let replies = exchange(&mut vsock, &mut server);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].op, Some(Op::Response));

        // Part of a request: its bytes are consumed into the request buffer.
        let data = [9, 0, 0, 0, b'p', b'a', b'r', b't'];
        deliver(&fake, &packet(&header(Op::Rw, 8), &data), 52);
        deliver(&fake, &header(Op::CreditRequest, 0).encode(), HEADER);
        let update = exchange(&mut vsock, &mut server);
        assert_eq!(update.len(), 1);
        let update = update[0];
        assert_eq!(update.op, Some(Op::CreditUpdate));
        assert_eq!((update.src_cid, update.dst_cid), (CID, HOST_CID));
        assert_eq!((update.src_port, update.dst_port), (1024, 7000));
        assert_eq!((update.buf_alloc, update.fwd_cnt), (BUF_ALLOC, 8));
    }
}
