//! smoltcp's view of the virtio-net driver: frames in place (or reassembled) for
//! receiving, transmit slots for sending.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::virtio::Transport;
use crate::virtio::net::{ETHERNET_HEADER_LEN, Frame, Net, Rx, Tx};

impl<T: Transport> phy::Device for Net<T> {
    type RxToken<'a>
        = RxToken<'a>
    where
        T: 'a;
    type TxToken<'a>
        = TxToken<'a>
    where
        T: 'a;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let (rx, tx) = self.split();
        let frame = rx.next()?;
        Some((RxToken { rx, frame }, TxToken { tx }))
    }

    /// Only with a free slot, so that smoltcp keeps what it cannot send yet.
    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        let (_, tx) = self.split();
        tx.can_send().then_some(TxToken { tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = ETHERNET_HEADER_LEN + usize::from(self.mtu());
        caps.checksum = checksums();
        caps
    }
}

/// Computed on transmit, never verified on receive: with GUEST_CSUM the device may
/// deliver TCP and UDP checksums that are only partial (the host checked them, or
/// the packet never left it).
fn checksums() -> ChecksumCapabilities {
    let mut checksums = ChecksumCapabilities::default();
    checksums.ipv4 = Checksum::Tx;
    checksums.tcp = Checksum::Tx;
    checksums.udp = Checksum::Tx;
    checksums.icmpv4 = Checksum::Tx;
    checksums
}

/// A received frame; its buffer goes back to the device once consumed.
pub struct RxToken<'a> {
    rx: &'a mut Rx,
    frame: Frame,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(self.rx.frame(&self.frame));
        self.rx.release(&self.frame);
        result
    }
}

/// A frame to send (dropped if no slot is free: see [`Tx::send`]).
pub struct TxToken<'a> {
    tx: &'a mut Tx,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.send(len, f)
    }
}
