//! Packets from the receive queue. The header itself is `ember_proto`'s, shared with
//! ember's device.

pub use ember_proto::vsock::{
    HEADER_LEN, HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

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
