//! virtio-vsock packets (virtio 1.2 §5.10.6): the 44-byte header, reading a
//! packet the guest sent from a tx descriptor chain, and writing one into an
//! rx chain. Payload bytes stay in guest memory: callers move them straight
//! between guest buffers and host sockets.

use vm_memory::bitmap::{AtomicBitmap, BS};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, Permissions,
    VolatileSlice,
};

use crate::vstate::memory::GuestMemoryMmap;

/// A piece of a guest buffer; writes through it mark the pages dirty.
pub type GuestSlice<'m> = VolatileSlice<'m, BS<'m, AtomicBitmap>>;

use virtio_queue::desc::split::Descriptor;

/// Length of the header, as the used ring's lengths count it.
pub const HEADER_LEN_U32: u32 = 44;
pub const HEADER_LEN: usize = HEADER_LEN_U32 as usize;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: `Header` is packed plain old data, 44 bytes with no padding; any bit
// pattern is a valid value.
unsafe impl ByteValued for Header {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the descriptor chain is shorter than a packet header")]
    ShortHeader,
    #[error("a tx descriptor is device-writable")]
    WritableTxDescriptor,
    #[error("the header's length field ({0}) exceeds the chain's payload")]
    LengthMismatch(u32),
    #[error("guest memory is not accessible at the packet's buffers")]
    Memory,
    #[error("the rx buffer is smaller than a packet header or not writable")]
    RxTooSmall,
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
    Ok(Header::from_slice(&bytes).copied().unwrap_or_default())
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
        let bytes = header.as_slice();
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
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20000)]).unwrap()
    }

    fn chain<'a>(
        queue: &'a MockSplitQueue<'a, GuestMemoryMmap>,
        descs: &[(u64, u32, bool)],
    ) -> virtio_queue::DescriptorChain<&'a GuestMemoryMmap> {
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, write)| {
                let flags = if write {
                    const { crate::devices::virtio::narrow::to_u16(VRING_DESC_F_WRITE) }
                } else {
                    0
                };
                RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
            })
            .collect();
        queue.build_desc_chain(&raw).unwrap()
    }

    fn header(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 5000,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    #[test]
    fn header_is_44_bytes_little_endian() {
        assert_eq!(std::mem::size_of::<Header>(), HEADER_LEN);
        let h = header(OP_RW, 5);
        let bytes = h.as_slice();
        assert_eq!(&bytes[..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &5u32.to_le_bytes());
        assert_eq!(&bytes[30..32], &OP_RW.to_le_bytes());
    }

    #[test]
    fn tx_packet_with_header_and_payload_split_across_descriptors() {
        let mem = memory();
        let h = header(OP_RW, 10);
        mem.write_slice(&h.as_slice()[..20], GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(&h.as_slice()[20..], GuestAddress(0x2000))
            .unwrap();
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
        mem.write_obj(header(OP_RW, 100), GuestAddress(0x1000))
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
        mem.write_obj(header(OP_RW, 8), GuestAddress(0x1000))
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
        let used = rx.write_header(&mem, &header(OP_RW, 3)).unwrap();
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
