//! A small virtio-vsock driver on raw rings: three queues of 16, the receive
//! buffers posted as each attack likes, header-only packets out. Enough to
//! connect, accept, refuse and count, and to let the attacks shape the rings.

use core::ptr::read_volatile;

use rt::virtio::queue::desc_len;
use rt::virtio::vsock::packet::{HEADER_LEN, HOST_CID, Header, Op, TYPE_STREAM};

use super::Error;
use super::device::{self, Device, VSOCK};
use super::ring::{Desc, F_WRITE, RawQueue, Shared, addr};

const RX: u32 = 0;
const TX: u32 = 1;
const EVENT: u32 = 2;
/// Size of every queue; also the number of transmit slots (bits of `tx_free`).
pub const QUEUE_SIZE: u16 = 16;
/// The guest port the host connects to (`CONNECT 1024`), as in the calm phase.
pub const SERVICE_PORT: u32 = 1024;
/// The receive credit every sent header announces.
const BUF_ALLOC: u32 = 65536;
/// Receive buffers of [`Vsock::post_rx`]: a header and a page of payload.
const RX_LEN: usize = HEADER_LEN + 4096;
const EVENT_BUFFERS: u16 = 4;

static RX_BUFFERS: Shared<[[u8; RX_LEN]; QUEUE_SIZE as usize]> =
    Shared::new([[0; RX_LEN]; QUEUE_SIZE as usize]);
static TX_HEADERS: Shared<[[u8; HEADER_LEN]; QUEUE_SIZE as usize]> =
    Shared::new([[0; HEADER_LEN]; QUEUE_SIZE as usize]);
static EVENTS: Shared<[u32; EVENT_BUFFERS as usize]> = Shared::new([0; EVENT_BUFFERS as usize]);

/// The first vsock device, set up with raw rx, tx and event queues.
pub struct Vsock {
    pub device: Device,
    /// The receive queue, for attacks that shape its buffers themselves.
    pub rx: RawQueue,
    tx: RawQueue,
    /// Transmit slots (descriptor `i` and header `i`) the device does not hold.
    tx_free: u16,
    rx_unnotified: bool,
    tx_unnotified: bool,
    cid: u64,
}

impl Vsock {
    /// Finds the vsock device, sets it up properly and posts the event buffers
    /// (never looked at again); the receive queue starts empty.
    pub fn open(cmdline: &[u8]) -> Result<Vsock, Error> {
        let device = device::find(cmdline, VSOCK)?;
        let queue = || RawQueue::new(QUEUE_SIZE).ok_or("out of ring pages");
        let (rx, tx, mut event) = (queue()?, queue()?, queue()?);
        device.init([&rx, &tx, &event])?;
        for i in 0..EVENT_BUFFERS {
            let buffer = Desc {
                addr: addr(EVENTS.at(usize::from(i))),
                len: 4,
                flags: F_WRITE,
                next: 0,
            };
            event.set_desc(i, buffer);
            event.publish(i);
        }
        device.notify(EVENT);
        Ok(Vsock {
            cid: device.config_u64(0),
            device,
            rx,
            tx,
            tx_free: u16::MAX,
            rx_unnotified: false,
            tx_unnotified: false,
        })
    }

    /// Posts sixteen ordinary receive buffers (one descriptor each, a header and
    /// 4 KiB of payload) for [`Vsock::recv`].
    pub fn post_rx(&mut self) {
        for i in 0..QUEUE_SIZE {
            let buffer = Desc {
                addr: addr(RX_BUFFERS.at(usize::from(i))),
                len: const { desc_len(RX_LEN) },
                flags: F_WRITE,
                next: 0,
            };
            self.rx.set_desc(i, buffer);
            self.post(i);
        }
    }

    /// Publishes receive chain `head` (its descriptors already written); the
    /// device hears of it at the next [`Vsock::kick`].
    pub fn post(&mut self, head: u16) {
        self.rx.publish(head);
        self.rx_unnotified = true;
    }

    /// The header of the next packet received into [`Vsock::post_rx`]'s buffers.
    /// Every buffer goes back to the device at once, whatever it held.
    pub fn recv(&mut self) -> Option<Header> {
        while let Some((id, len)) = self.rx.pop_used() {
            let Some(head) = u16::try_from(id).ok().filter(|&h| h < QUEUE_SIZE) else {
                continue;
            };
            let header = if len as usize >= HEADER_LEN {
                // SAFETY: buffer `head` is ours and the device has returned it; the
                // volatile read of its first bytes sees what the device wrote.
                let bytes = unsafe {
                    read_volatile(RX_BUFFERS.at(usize::from(head)).cast::<[u8; HEADER_LEN]>())
                };
                Header::decode(&bytes)
            } else {
                None
            };
            self.post(head);
            if header.is_some() {
                return header;
            }
        }
        None
    }

    pub fn can_send(&self) -> bool {
        self.tx_free != 0
    }

    /// Queues a header-only packet; the caller checked [`Vsock::can_send`].
    pub fn send(&mut self, header: &Header) {
        assert!(self.can_send(), "no free transmit slot");
        // Below 16: `tx_free` is a u16 with a bit set.
        #[allow(clippy::cast_possible_truncation)]
        let slot = self.tx_free.trailing_zeros() as u16;
        self.tx_free &= !(1 << slot);
        // The slot is free, so the device is not reading it.
        TX_HEADERS.write(usize::from(slot), header.encode());
        let packet = Desc {
            addr: addr(TX_HEADERS.at(usize::from(slot))),
            len: const { desc_len(HEADER_LEN) },
            flags: 0,
            next: 0,
        };
        self.tx.set_desc(slot, packet);
        self.tx.publish(slot);
        self.tx_unnotified = true;
    }

    /// Frees the slots of packets the device has taken.
    pub fn reclaim(&mut self) {
        while let Some((id, _)) = self.tx.pop_used() {
            if id < u32::from(QUEUE_SIZE) {
                self.tx_free |= 1 << id;
            }
        }
    }

    /// Whether the device holds packets given to [`Vsock::send`].
    pub fn sending(&self) -> bool {
        self.tx_free != u16::MAX
    }

    /// Tells the device about buffers posted and packets queued since the last
    /// kick.
    pub fn kick(&mut self) {
        if core::mem::take(&mut self.rx_unnotified) {
            self.device.notify(RX);
        }
        if core::mem::take(&mut self.tx_unnotified) {
            self.device.notify(TX);
        }
    }

    /// Kicks, then sleeps until the next interrupt.
    pub fn wait(&mut self) {
        self.kick();
        self.device.sleep();
    }

    /// A header-only stream packet from guest port `local` to host port `peer`.
    pub fn packet(&self, op: Op, local: u32, peer: u32) -> Header {
        Header {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: local,
            dst_port: peer,
            len: 0,
            kind: TYPE_STREAM,
            op: Some(op),
            flags: 0,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// The RESPONSE that accepts `request` on its guest port.
    pub fn accept(&self, request: &Header) -> Header {
        self.packet(Op::Response, request.dst_port, request.src_port)
    }
}

/// Whether `header` asks to connect to guest port `port`.
pub fn is_request_for(header: &Header, port: u32) -> bool {
    header.op == Some(Op::Request) && header.dst_port == port
}
