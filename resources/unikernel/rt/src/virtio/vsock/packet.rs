//! The virtio-vsock packet header (virtio 1.2 §5.10.6): 44 bytes, little-endian.

/// Size of the header in front of every packet's payload.
pub const HEADER_LEN: usize = 44;

/// The only socket type served: a byte stream.
pub const TYPE_STREAM: u16 = 1;

/// CID of the host.
pub const HOST_CID: u64 = 2;

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
    fn from_u16(op: u16) -> Option<Op> {
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

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded header. `op` is `None` for an operation this driver does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: Option<Op>,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Reads a header from the start of `bytes`, if it is long enough.
    pub fn decode(bytes: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
        Some(Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: Op::from_u16(u16_at(30)),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
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

/// A packet from the receive queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// The header and its `len` bytes of payload.
    Packet(Header, &'a [u8]),
    /// The header announces more payload than the device wrote.
    Truncated(Header),
}

/// The packet in the `bytes` a device wrote to a receive buffer; `None` without a
/// whole header, as then there is nobody to answer.
pub fn parse(bytes: &[u8]) -> Option<Received<'_>> {
    let header = Header::decode(bytes)?;
    Some(match bytes[HEADER_LEN..].get(..header.len as usize) {
        Some(payload) => Received::Packet(header, payload),
        None => Received::Truncated(header),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_field() {
        let header = Header {
            src_cid: 2,
            dst_cid: 0x1_0000_0003,
            src_port: 1_073_741_824,
            dst_port: 1024,
            len: 65536,
            kind: TYPE_STREAM,
            op: Some(Op::CreditRequest),
            flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
            buf_alloc: 0x0010_0000,
            fwd_cnt: 0xdead_beef,
        };
        let bytes = header.encode();
        assert_eq!(bytes[0], 2);
        assert_eq!(bytes[8..16], [3, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(bytes[30..32], [7, 0]);
        assert_eq!(bytes[40..44], [0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(Header::decode(&bytes), Some(header));
    }

    #[test]
    fn rejects_short_and_unknown() {
        assert_eq!(Header::decode(&[0; HEADER_LEN - 1]), None);
        let mut bytes = [0; HEADER_LEN + 3];
        bytes[30] = 9;
        let header = Header::decode(&bytes).unwrap();
        assert_eq!(header.op, None);
        assert_eq!(header.encode()[30], 0);
    }

    #[test]
    fn parses_a_buffer_into_header_and_exactly_its_payload() {
        let mut header = Header::decode(&[0; HEADER_LEN]).unwrap();
        header.len = 3;
        let mut buffer = header.encode().to_vec();
        buffer.extend_from_slice(b"abcd");
        assert_eq!(parse(&buffer), Some(Received::Packet(header, b"abc")));
        assert_eq!(
            parse(&buffer[..HEADER_LEN + 2]),
            Some(Received::Truncated(header))
        );
        assert_eq!(parse(&buffer[..HEADER_LEN - 1]), None);
    }
}
