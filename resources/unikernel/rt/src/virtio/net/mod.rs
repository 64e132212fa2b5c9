//! virtio-net driver (virtio 1.2 §5.1), interrupt-driven like vsock: receive
//! buffers stay posted, frames go out in batches with one notification each, and
//! the device interrupts only while the driver sleeps ([`Net::enable_interrupts`]):
//! while it works, it looks at the used rings itself. The TCP/IP stack over it is
//! [`crate::net`].
//!
//! Features: VERSION_1, MAC, MTU, MRG_RXBUF, GUEST_CSUM and GUEST_TSO4. The stack
//! computes full checksums when it sends, so neither CSUM nor HOST_TSO*: transmit
//! headers are all zero. With GUEST_CSUM the device may deliver TCP and UDP packets
//! whose checksum is only partial (NEEDS_CSUM), so the stack must not verify the
//! checksums of what it receives. With GUEST_TSO4 it may deliver TCP segments of up
//! to 64 KiB, which MRG_RXBUF lets it spread over several receive buffers
//! (`num_buffers` in the first buffer's header says how many).

mod rx;
#[cfg(test)]
mod tests;
mod tx;

use core::mem::take;

pub(crate) use self::rx::{Frame, Rx};
pub(crate) use self::tx::Tx;
use super::{DeviceTransport, Error, F_VERSION_1, Queue, Transport};

/// Device ID of a network device.
pub const DEVICE_ID: u32 = 1;

const RX: u32 = 0;
const TX: u32 = 1;

const F_GUEST_CSUM: u64 = 1 << 1;
const F_MTU: u64 = 1 << 3;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_MRG_RXBUF: u64 = 1 << 15;
/// What the driver takes of what the device offers.
const OPTIONAL: u64 = F_MAC | F_MTU | F_MRG_RXBUF | F_GUEST_CSUM | F_GUEST_TSO4;

/// `virtio_net_hdr_v1`, ahead of every frame: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset (all zero on transmit, unread on receive) and num_buffers.
pub const HEADER_LEN: usize = 12;
pub const ETHERNET_HEADER_LEN: usize = 14;
/// The longest frame a device delivers: a 64 KiB (TSO) segment and its Ethernet
/// header, as Linux and Firecracker size their buffers (65562 bytes with the header).
pub const MAX_FRAME: usize = 65_550;
/// The MTU without VIRTIO_NET_F_MTU, or when the device's is below IPv4's minimum.
pub const DEFAULT_MTU: u16 = 1500;
const MIN_MTU: u16 = 68;

/// A network device after initialization.
pub struct Net<T: Transport = DeviceTransport> {
    transport: T,
    rx: Rx,
    tx: Tx,
    mac: Option<[u8; 6]>,
    mtu: u16,
}

impl<T: Transport> Net<T> {
    /// Initializes the network device behind `transport` (already probed as one)
    /// and posts the receive buffers.
    pub fn new(transport: T) -> Result<Net<T>, Error> {
        let features = transport.negotiate(F_VERSION_1, OPTIONAL)?;
        let (mut rx, mut tx) = (Queue::new()?, Queue::new()?);
        transport.setup_queue(RX, &mut rx)?;
        transport.setup_queue(TX, &mut tx)?;
        let (mac, mtu) = read_config(&transport, features);
        transport.driver_ok();
        let largest = ETHERNET_HEADER_LEN + usize::from(mtu);
        // Without merged buffers each one must take the largest frame by itself.
        let unmerged = match (features & F_MRG_RXBUF, features & F_GUEST_TSO4) {
            (0, 0) => largest,
            (0, _) => MAX_FRAME,
            _ => 0,
        };
        let mut net = Net {
            rx: Rx::new(rx, features & F_MRG_RXBUF != 0, unmerged),
            tx: Tx::new(tx, largest),
            transport,
            mac,
            mtu,
        };
        net.kick();
        Ok(net)
    }

    /// The MAC address the device assigned, if it did.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.mac
    }

    /// The IP MTU: the device's (its TAP's), or [`DEFAULT_MTU`].
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Both queues, for a receiver and a sender at the same time (smoltcp's tokens).
    pub(crate) fn split(&mut self) -> (&mut Rx, &mut Tx) {
        (&mut self.rx, &mut self.tx)
    }

    /// Whether there is work for the driver: received frames, or sent frames back
    /// while every transmit slot is taken. Memory reads only, for polling.
    pub fn has_used(&self) -> bool {
        self.rx.has_used() || (!self.tx.can_send() && self.tx.has_used())
    }

    /// Frees the transmit slots of frames the device has sent; returns whether
    /// there were any.
    pub fn reclaim(&mut self) -> bool {
        self.tx.reclaim()
    }

    /// Posts handled receive buffers again (in batches, see [`Rx::refill`]) and
    /// tells the device about every buffer posted and frame queued since the last
    /// kick: at most one notification per queue. Returns whether frames went out.
    pub fn kick(&mut self) -> bool {
        self.rx.refill();
        if take(&mut self.rx.unnotified) {
            self.rx.queue.notify(&self.transport, RX);
        }
        let sent = take(&mut self.tx.unnotified);
        if sent {
            self.tx.queue.notify(&self.transport, TX);
        }
        sent
    }

    /// While the driver works: asks the device not to interrupt.
    pub fn disable_interrupts(&mut self) {
        self.rx.queue.disable_interrupts();
        self.tx.queue.disable_interrupts();
    }

    /// Before the vCPU sleeps: lets the device interrupt for received frames, and
    /// for sent ones when no transmit slot is free (the only time the driver waits
    /// for them). Returns whether the vCPU may sleep: not if buffers came back
    /// while interrupts were off.
    pub fn enable_interrupts(&mut self) -> bool {
        self.rx.queue.enable_interrupts();
        if !self.tx.can_send() {
            self.tx.queue.enable_interrupts();
        }
        !self.has_used()
    }

    /// Acknowledges the device's interrupt before the driver waits for the next;
    /// returns how many register accesses (VM exits) that took. The device only
    /// interrupts after returning buffers, so without any returned since the last
    /// acknowledgement there is none to acknowledge and this takes none.
    pub fn ack_interrupt(&mut self) -> u64 {
        let returned = take(&mut self.rx.returned) | take(&mut self.tx.returned);
        if !returned {
            return 0;
        }
        self.transport.ack_interrupt()
    }
}

/// The MAC address (if offered) and MTU in the device's config space: `mac[6]` at
/// offset 0, `mtu` (u16) at 10. Read as 32-bit words, which Firecracker's and
/// ember's devices serve at any offset, with fewer exits than byte reads; the
/// fields never change, so no generation check.
fn read_config(transport: &impl Transport, features: u64) -> (Option<[u8; 6]>, u16) {
    let mac = (features & F_MAC != 0).then(|| {
        let [a, b, c, d] = transport.config_u32(0).to_le_bytes();
        let [e, f, _, _] = transport.config_u32(4).to_le_bytes();
        [a, b, c, d, e, f]
    });
    let mtu = if features & F_MTU != 0 {
        let [_, _, low, high] = transport.config_u32(8).to_le_bytes();
        u16::from_le_bytes([low, high])
    } else {
        DEFAULT_MTU
    };
    (mac, if mtu < MIN_MTU { DEFAULT_MTU } else { mtu })
}
