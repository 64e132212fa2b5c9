//! virtio-vsock packets (virtio 1.2 §5.10.6): reading a packet the guest
//! sent from a tx descriptor chain, and writing one into an rx chain. The
//! 44-byte header is `ember_proto`'s, which the guest runtime shares. Payload bytes stay in
//! guest memory: callers move them straight between guest buffers and host
//! sockets.

use vm_memory::bitmap::{AtomicBitmap, BS};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, Permissions, VolatileSlice,
};

use crate::vstate::memory::GuestMemoryMmap;

/// A piece of a guest buffer; writes through it mark the pages dirty.
pub type GuestSlice<'m> = VolatileSlice<'m, BS<'m, AtomicBitmap>>;

use virtio_queue::desc::split::Descriptor;

pub use ember_proto::vsock::{
    Header, Op, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Length of the header, as the used ring's lengths count it.
pub const HEADER_LEN_U32: u32 = 44;
const _: () = assert!(HEADER_LEN_U32 as usize == HEADER_LEN);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A tx chain too short to hold a header.
    #[error("the descriptor chain is shorter than a packet header")]
    ShortHeader,
    /// The guest marked a buffer it sends as one the device writes.
    #[error("a tx descriptor is device-writable")]
    WritableTxDescriptor,
    /// The header claims more payload than the chain holds.
    #[error("the header's length field ({0}) exceeds the chain's payload")]
    LengthMismatch(u32),
    /// Guest memory refused an access the range check allowed.
    #[error("guest memory is not accessible at the packet's buffers")]
    Memory,
    /// An rx chain that cannot take a header, or that the device may not write.
    #[error("the rx buffer is smaller than a packet header or not writable")]
    RxTooSmall,
    /// A buffer the guest placed outside its memory.
    #[error("a descriptor lies outside guest memory")]
    OutsideMemory,
}

/// A packet the guest sent: its header and where its payload lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub header: Header,
    pub payload: Vec<(GuestAddress, usize)>,
}

/// Gathers `len` bytes starting at byte `skip` of the buffers `descs`, which
/// were checked to lie in guest memory (so no address here overflows).
fn ranges(
    descs: &[(GuestAddress, usize)],
    mut skip: usize,
    mut len: usize,
) -> Vec<(GuestAddress, usize)> {
    let mut out = Vec::new();
    for &(addr, size) in descs {
        if len == 0 {
            break;
        }
        if skip >= size {
            skip -= size;
            continue;
        }
        let take = (size - skip).min(len);
        if let Some(start) = addr.checked_add(skip as u64) {
            out.push((start, take));
        }
        len -= take;
        skip = 0;
    }
    out
}

/// A chain's buffers, each checked to lie wholly in guest memory.
fn buffers<M: GuestMemory>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
    device_writes: bool,
    wrong_direction: Error,
) -> Result<Vec<(GuestAddress, usize)>, Error> {
    let mut descs = Vec::new();
    for desc in chain {
        if desc.is_write_only() != device_writes {
            return Err(wrong_direction);
        }
        let len = desc.len() as usize;
        let access = if device_writes {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(desc.addr(), len, access) {
            return Err(Error::OutsideMemory);
        }
        descs.push((desc.addr(), len));
    }
    Ok(descs)
}

/// Reads the header that may be split over the first descriptors.
fn read_header<M: GuestMemory>(mem: &M, descs: &[(GuestAddress, usize)]) -> Result<Header, Error> {
    let mut bytes = [0u8; HEADER_LEN];
    let mut at = 0;
    for (addr, len) in ranges(descs, 0, HEADER_LEN) {
        mem.read_slice(&mut bytes[at..at + len], addr)
            .map_err(|_| Error::Memory)?;
        at += len;
    }
    if at < HEADER_LEN {
        return Err(Error::ShortHeader);
    }
    Header::decode(&bytes).ok_or(Error::ShortHeader)
}

/// Parses the packet in a tx chain.
pub fn parse_tx<M: GuestMemory>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
) -> Result<TxPacket, Error> {
    let descs = buffers(mem, chain, false, Error::WritableTxDescriptor)?;
    let header = read_header(mem, &descs)?;
    let available: usize = descs.iter().map(|d| d.1).sum::<usize>() - HEADER_LEN;
    if header.len as usize > available {
        return Err(Error::LengthMismatch(header.len));
    }
    Ok(TxPacket {
        header,
        payload: ranges(&descs, HEADER_LEN, header.len as usize),
    })
}

/// An rx chain the device fills: the header first, then payload.
pub struct RxBuffer {
    descs: Vec<(GuestAddress, usize)>,
}

impl RxBuffer {
    pub fn new<M: GuestMemory>(
        mem: &M,
        chain: impl Iterator<Item = Descriptor>,
    ) -> Result<Self, Error> {
        let descs = buffers(mem, chain, true, Error::RxTooSmall)?;
        if descs.iter().map(|d| d.1).sum::<usize>() < HEADER_LEN {
            return Err(Error::RxTooSmall);
        }
        Ok(RxBuffer { descs })
    }

    /// Room for payload after the header.
    pub fn payload_capacity(&self) -> usize {
        self.descs.iter().map(|d| d.1).sum::<usize>() - HEADER_LEN
    }

    /// The guest memory the payload goes to, up to `len` bytes.
    pub fn payload_slices<'m>(
        &self,
        mem: &'m GuestMemoryMmap,
        len: usize,
    ) -> Result<Vec<GuestSlice<'m>>, Error> {
        ranges(&self.descs, HEADER_LEN, len)
            .into_iter()
            .map(|(addr, len)| mem.get_slice(addr, len).map_err(|_| Error::Memory))
            .collect()
    }

    /// Writes the header; returns the used length to report for the packet.
    pub fn write_header(&self, mem: &GuestMemoryMmap, header: &Header) -> Result<u32, Error> {
        let bytes = header.encode();
        let mut at = 0;
        for (addr, len) in ranges(&self.descs, 0, HEADER_LEN) {
            mem.write_slice(&bytes[at..at + len], addr)
                .map_err(|_| Error::Memory)?;
            at += len;
        }
        Ok(HEADER_LEN_U32 + header.len)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::test_utils::{chain, guest_memory};

    fn memory() -> GuestMemoryMmap {
        guest_memory(0x20000)
    }

    fn header(op: Op, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 5000,
            len,
            kind: TYPE_STREAM,
            op: Some(op),
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    #[test]
    fn tx_packet_with_header_and_payload_split_across_descriptors() {
        let mem = memory();
        let h = header(Op::Rw, 10);
        let bytes = h.encode();
        mem.write_slice(&bytes[..20], GuestAddress(0x1000)).unwrap();
        mem.write_slice(&bytes[20..], GuestAddress(0x2000)).unwrap();
        mem.write_slice(b"0123456789", GuestAddress(0x2000 + 24))
            .unwrap();
        let queue = MockSplitQueue::new(&mem, 16);
        let packet = parse_tx(
            &mem,
            chain(&queue, &[(0x1000, 20, false), (0x2000, 34, false)]),
        )
        .unwrap();
        assert_eq!(packet.header, h);
        assert_eq!(packet.payload, vec![(GuestAddress(0x2000 + 24), 10)]);
    }

    #[test]
    fn malformed_tx_chains_are_errors() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        assert_eq!(
            parse_tx(&mem, chain(&queue, &[(0x1000, 20, false)])),
            Err(Error::ShortHeader)
        );
        mem.write_slice(&header(Op::Rw, 100).encode(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            parse_tx(
                &mem,
                chain(&queue, &[(0x1000, 44, false), (0x3000, 10, false)])
            ),
            Err(Error::LengthMismatch(100))
        );
        assert_eq!(
            parse_tx(&mem, chain(&queue, &[(0x1000, 64, true)])),
            Err(Error::WritableTxDescriptor)
        );
        assert_eq!(
            parse_tx(&mem, chain(&queue, &[(0xffff_0000, 64, false)])),
            Err(Error::OutsideMemory)
        );
        // A payload descriptor at the top of the address space, where adding
        // an offset would wrap.
        mem.write_slice(&header(Op::Rw, 8).encode(), GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            parse_tx(
                &mem,
                chain(
                    &queue,
                    &[(0x1000, 44, false), (0xffff_ffff_ffff_fffc, 8, false)]
                )
            ),
            Err(Error::OutsideMemory)
        );
    }

    #[test]
    fn rx_buffer_takes_header_then_payload() {
        let mem = memory();
        let queue = MockSplitQueue::new(&mem, 16);
        let rx = RxBuffer::new(
            &mem,
            chain(&queue, &[(0x4000, 30, true), (0x5000, 100, true)]),
        )
        .unwrap();
        assert_eq!(rx.payload_capacity(), 86);
        let used = rx.write_header(&mem, &header(Op::Rw, 3)).unwrap();
        assert_eq!(used, 47);
        let slices = rx.payload_slices(&mem, 3).unwrap();
        slices[0].copy_from(b"abc");
        let mut back = [0u8; 3];
        mem.read_slice(&mut back, GuestAddress(0x5000 + 14))
            .unwrap();
        assert_eq!(&back, b"abc");
        assert!(RxBuffer::new(&mem, chain(&queue, &[(0x4000, 30, true)])).is_err());
        assert!(RxBuffer::new(&mem, chain(&queue, &[(0x4000, 64, false)])).is_err());
        for outside in [0x40_0000_0000, 0xffff_ffff_ffff_f000, 0xffff_ffff_ffff_ffd4] {
            assert_eq!(
                RxBuffer::new(
                    &mem,
                    chain(&queue, &[(0x4000, 44, true), (outside, 100, true)])
                )
                .err(),
                Some(Error::OutsideMemory)
            );
        }
    }
}
