//! The virtio-vsock packet header (virtio 1.2 §5.10.6): 44 bytes,
//! little-endian, in front of every packet's payload.

/// Size of the header.
pub const HEADER_LEN: usize = 44;

/// The only socket type ember and its guests use: a byte stream.
pub const TYPE_STREAM: u16 = 1;

/// The host's CID.
pub const HOST_CID: u64 = 2;

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// What a packet does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

impl Op {
    /// The operation a header's `op` field names, if it is one.
    pub fn from_u16(op: u16) -> Option<Op> {
        Some(match op {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded header. `op` is `None` for an operation neither side knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    /// Payload bytes after the header.
    pub len: u32,
    /// The socket type (`type` in the specification).
    pub kind: u16,
    pub op: Option<Op>,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// The `N` bytes at `at` of a header; `at + N` is within it by construction.
fn field<const N: usize>(bytes: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

impl Header {
    /// Reads a header from the start of `bytes`, if it is long enough.
    pub fn decode(bytes: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            src_cid: u64::from_le_bytes(field(bytes, 0)),
            dst_cid: u64::from_le_bytes(field(bytes, 8)),
            src_port: u32::from_le_bytes(field(bytes, 16)),
            dst_port: u32::from_le_bytes(field(bytes, 20)),
            len: u32::from_le_bytes(field(bytes, 24)),
            kind: u16::from_le_bytes(field(bytes, 28)),
            op: Op::from_u16(u16::from_le_bytes(field(bytes, 30))),
            flags: u32::from_le_bytes(field(bytes, 32)),
            buf_alloc: u32::from_le_bytes(field(bytes, 36)),
            fwd_cnt: u32::from_le_bytes(field(bytes, 40)),
        })
    }

    /// The header's wire form (an unknown `op` encodes as 0).
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        out[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        out[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        out[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..30].copy_from_slice(&self.kind.to_le_bytes());
        out[30..32].copy_from_slice(&self.op.map_or(0, |op| op as u16).to_le_bytes());
        out[32..36].copy_from_slice(&self.flags.to_le_bytes());
        out[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        out[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_with_the_specified_layout() {
        let header = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x0102_0304,
            dst_port: 1024,
            len: 5,
            kind: TYPE_STREAM,
            op: Some(Op::Shutdown),
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            buf_alloc: 1 << 20,
            fwd_cnt: 7,
        };
        let bytes = header.encode();
        assert_eq!(bytes[0], 3);
        assert_eq!(bytes[8], 2);
        assert_eq!(bytes[16..20], [4, 3, 2, 1]);
        assert_eq!(bytes[28..32], [1, 0, 4, 0]);
        assert_eq!(bytes[32], 3);
        assert_eq!(Header::decode(&bytes), Some(header));
    }

    #[test]
    fn a_short_buffer_has_no_header_and_an_unknown_op_is_none() {
        assert_eq!(Header::decode(&[0; HEADER_LEN - 1]), None);
        let mut bytes = Header::default().encode();
        bytes[30] = 99;
        let header = Header::decode(&bytes).expect("a whole header");
        assert_eq!(header.op, None);
        assert_eq!(header.encode()[30], 0, "an unknown op is not sent on");
        for value in 1..=7 {
            assert_eq!(Op::from_u16(value).map(|op| op as u16), Some(value));
        }
        assert_eq!(Op::from_u16(0), None);
        assert_eq!(Op::from_u16(8), None);
    }
}
