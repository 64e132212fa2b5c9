//! Parsing a virtio-blk descriptor chain into a typed request (virtio 1.2 §5.2.6).
//!
//! Pure: reads only the 16-byte header from guest memory and checks the shape
//! of the chain, so a hostile guest's chain becomes an error, never a panic.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemory};

pub const SECTOR_SIZE: u64 = 512;
/// Bytes of the device id a `GET_ID` request returns.
pub const ID_BYTES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestType,
    pub sector: u64,
    /// Guest buffers, in chain order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Where the one-byte status goes.
    pub status: GuestAddress,
}

impl Request {
    pub fn data_len(&self) -> u64 {
        self.data.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// The bytes a rate limiter counts: those read or written, as in Firecracker.
    pub fn limited_bytes(&self) -> u64 {
        match self.kind {
            RequestType::In | RequestType::Out => self.data_len(),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A chain without descriptors.
    #[error("descriptor chain is empty")]
    Empty,
    /// The first buffer cannot be the 16-byte request header the device reads.
    #[error("request header is missing, too short or device-writable")]
    BadHeader,
    /// The header lies where guest memory cannot be read.
    #[error("cannot read the request header from guest memory")]
    HeaderUnreadable,
    /// The chain does not end with the byte the device writes its status to.
    #[error("no device-writable status descriptor ends the chain")]
    BadStatus,
    /// A read whose buffers the device may not write, or a write whose buffers it would.
    #[error("a data buffer has the wrong direction for this request")]
    BadDataDirection,
    /// Data that is not whole 512-byte sectors.
    #[error("data length is not a whole number of sectors")]
    UnalignedLength,
}

/// A parse failure, with the status address when the chain had a usable one,
/// so the device can still report the error to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    pub error: Error,
    pub status: Option<GuestAddress>,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Header {
    kind: u32,
    reserved: u32,
    sector: u64,
}

// SAFETY: `Header` is plain old data with no padding (4 + 4 + 8 bytes).
unsafe impl ByteValued for Header {}

/// Parses the descriptors of one request's chain.
pub fn parse<M: GuestMemory>(
    mem: &M,
    chain: impl Iterator<Item = Descriptor>,
) -> Result<Request, ParseError> {
    let descriptors: Vec<Descriptor> = chain.collect();
    let fail = |error, status| ParseError { error, status };

    let (header_desc, rest) = descriptors.split_first().ok_or(fail(Error::Empty, None))?;
    let status = rest
        .last()
        .filter(|d| d.is_write_only() && d.len() >= 1)
        .map(|d| d.addr());
    let Some(status_addr) = status else {
        return Err(fail(Error::BadStatus, None));
    };
    if header_desc.is_write_only() || (header_desc.len() as usize) < std::mem::size_of::<Header>() {
        return Err(fail(Error::BadHeader, status));
    }
    let header: Header = mem
        .read_obj(header_desc.addr())
        .map_err(|_| fail(Error::HeaderUnreadable, status))?;

    let kind = RequestType::from(header.kind);
    let data_descs = &rest[..rest.len() - 1];
    let device_writes = matches!(kind, RequestType::In | RequestType::GetId);
    if matches!(
        kind,
        RequestType::In | RequestType::Out | RequestType::GetId
    ) && data_descs
        .iter()
        .any(|d| d.is_write_only() != device_writes)
    {
        return Err(fail(Error::BadDataDirection, status));
    }
    let request = Request {
        kind,
        sector: header.sector,
        data: data_descs.iter().map(|d| (d.addr(), d.len())).collect(),
        status: status_addr,
    };
    if matches!(kind, RequestType::In | RequestType::Out)
        && !request.data_len().is_multiple_of(SECTOR_SIZE)
    {
        return Err(fail(Error::UnalignedLength, status));
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use crate::vstate::memory::GuestMemoryMmap;
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::test_utils::{chain, guest_memory};

    const HEADER_AT: u64 = 0x1000;
    const DATA_AT: u64 = 0x2000;
    const STATUS_AT: u64 = 0x3000;

    fn memory() -> GuestMemoryMmap {
        guest_memory(0x10000)
    }

    /// Builds a chain of `(addr, len, device-writable)` descriptors and parses it.
    fn parse_chain(
        mem: &GuestMemoryMmap,
        kind: u32,
        sector: u64,
        descs: &[(u64, u32, bool)],
    ) -> Result<Request, ParseError> {
        let header = Header {
            kind,
            reserved: 0,
            sector,
        };
        mem.write_obj(header, GuestAddress(HEADER_AT)).unwrap();
        let queue = MockSplitQueue::new(mem, 16);
        parse(mem, chain(&queue, descs))
    }

    #[test]
    fn read_request_has_its_sector_buffers_and_status() {
        let mem = memory();
        let req = parse_chain(
            &mem,
            VIRTIO_BLK_T_IN,
            7,
            &[
                (HEADER_AT, 16, false),
                (DATA_AT, 1024, true),
                (STATUS_AT, 1, true),
            ],
        )
        .unwrap();
        assert_eq!(req.kind, RequestType::In);
        assert_eq!(req.sector, 7);
        assert_eq!(req.data, vec![(GuestAddress(DATA_AT), 1024)]);
        assert_eq!(req.status, GuestAddress(STATUS_AT));
    }

    #[test]
    fn flush_needs_no_data_and_unknown_types_parse_as_unsupported() {
        let mem = memory();
        let flush = parse_chain(
            &mem,
            VIRTIO_BLK_T_FLUSH,
            0,
            &[(HEADER_AT, 16, false), (STATUS_AT, 1, true)],
        );
        assert_eq!(flush.unwrap().kind, RequestType::Flush);
        let odd = parse_chain(&mem, 99, 0, &[(HEADER_AT, 16, false), (STATUS_AT, 1, true)]);
        assert_eq!(odd.unwrap().kind, RequestType::Unsupported(99));
    }

    #[test]
    fn malformed_chains_are_errors_that_keep_the_status_when_possible() {
        let mem = memory();
        let no_status = parse_chain(
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[(HEADER_AT, 16, false), (DATA_AT, 512, false)],
        );
        assert_eq!(
            no_status.unwrap_err(),
            ParseError {
                error: Error::BadStatus,
                status: None
            }
        );

        let short_header = parse_chain(
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[(HEADER_AT, 8, false), (STATUS_AT, 1, true)],
        );
        assert_eq!(short_header.unwrap_err().error, Error::BadHeader);

        let writable_header = parse_chain(
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[(HEADER_AT, 16, true), (STATUS_AT, 1, true)],
        );
        assert_eq!(writable_header.unwrap_err().error, Error::BadHeader);

        let wrong_direction = parse_chain(
            &mem,
            VIRTIO_BLK_T_OUT,
            0,
            &[
                (HEADER_AT, 16, false),
                (DATA_AT, 512, true),
                (STATUS_AT, 1, true),
            ],
        );
        assert_eq!(
            wrong_direction.unwrap_err(),
            ParseError {
                error: Error::BadDataDirection,
                status: Some(GuestAddress(STATUS_AT))
            }
        );

        let unaligned = parse_chain(
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[
                (HEADER_AT, 16, false),
                (DATA_AT, 100, true),
                (STATUS_AT, 1, true),
            ],
        );
        assert_eq!(unaligned.unwrap_err().error, Error::UnalignedLength);

        let outside_memory = parse_chain(
            &mem,
            VIRTIO_BLK_T_IN,
            0,
            &[(0xffff_0000, 16, false), (STATUS_AT, 1, true)],
        );
        assert_eq!(outside_memory.unwrap_err().error, Error::HeaderUnreadable);
    }
}
