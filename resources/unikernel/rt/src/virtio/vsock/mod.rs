//! virtio-vsock driver (virtio 1.2 §5.10), interrupt-driven: receive buffers stay
//! posted, sent packets come back through the used ring, and the event queue
//! reports transport resets. Stream logic lives with its user
//! ([`crate::function`](mod@crate::function)); this module moves packets.

pub mod credit;
pub mod packet;

use alloc::alloc::Layout;
use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;

pub use self::packet::Received;
use self::packet::{HEADER_LEN, Header};
use super::{Buffer, Error, F_VERSION_1, Queue, Transport};

/// Device ID of a socket device.
pub const DEVICE_ID: u32 = 19;

const RX: u32 = 0;
const TX: u32 = 1;
const EVENT: u32 = 2;

/// Largest payload a receive buffer takes, as Linux and Firecracker send at most.
const RX_PAYLOAD: usize = 64 * 1024;
const RX_BUFFER_LEN: usize = HEADER_LEN + RX_PAYLOAD;
/// Receive buffers posted (fewer if the queue is smaller): 1 MiB in flight.
const RX_BUFFERS: usize = 16;
const _: () = assert!(RX_BUFFERS <= u32::BITS as usize);
const EVENT_BUFFERS: usize = 4;
/// Transmit slots, one bit each in `free_slots`; two descriptors per packet fill
/// a 64-entry queue.
const TX_SLOTS: usize = 32;
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
pub struct Vsock {
    transport: Transport,
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

impl Vsock {
    /// Initializes the socket device behind `transport` (already probed as one)
    /// and posts the receive and event buffers.
    pub fn new(transport: Transport) -> Result<Vsock, Error> {
        transport.negotiate(F_VERSION_1, 0)?;
        let mut queues = [Queue::new()?, Queue::new()?, Queue::new()?];
        for (index, queue) in (0..).zip(&mut queues) {
            queue.enable_interrupts();
            transport.setup_queue(index, queue)?;
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
        for i in 0..vsock.rx_buffers {
            vsock.post_rx(i as u32);
        }
        for i in 0..EVENT_BUFFERS.min(usize::from(vsock.event.size())) {
            vsock.post_event(i as u32);
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
            len: RX_BUFFER_LEN as u32,
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
            let written = (len as usize).min(RX_BUFFER_LEN);
            // SAFETY: the device returned buffer `index` and wrote `written` bytes
            // of it; it does not touch the buffer again until it is posted below.
            let bytes = unsafe {
                core::slice::from_raw_parts(
                    self.rx_memory.add(index as usize * RX_BUFFER_LEN).as_ptr(),
                    written,
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
        let head = Buffer {
            addr: slot.header.as_ptr() as u64,
            len: (HEADER_LEN + copied) as u32,
            device_writes: false,
        };
        let body = Buffer {
            addr: payload.as_ptr() as u64,
            len: payload.len() as u32,
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
        1 + u64::from(self.transport.ack_interrupt())
    }
}

/// The bits of `free_slots` that name slots.
fn slot_mask() -> u32 {
    u32::MAX >> (32 - TX_SLOTS)
}

/// `len` bytes for the device to write before the driver reads them, for the rest
/// of the run. Not zeroed: under kvm_pvm each page costs a fault when first
/// touched, and zeroing the receive buffers would fault all of them in at boot
/// (about 1 ms); this way only the pages packets reach are.
fn device_memory(len: usize) -> NonNull<u8> {
    let layout = Layout::from_size_align(len, 64).expect("receive memory fits a layout");
    // SAFETY: the layout's size is not zero.
    let memory = unsafe { alloc::alloc::alloc(layout) };
    NonNull::new(memory).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout))
}

/// Gives `memory` to the device for the rest of the run.
fn leak<T>(memory: Vec<T>) -> NonNull<T> {
    NonNull::from(memory.leak()).cast()
}
