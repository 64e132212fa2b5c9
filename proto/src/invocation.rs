//! ember's invocation framing on a vsock stream: a request is a 4-byte
//! little-endian length N and N bytes; a response is a status byte, a 4-byte
//! little-endian length M and M bytes.

/// Bytes in front of a request's body.
pub const REQUEST_PREFIX_LEN: usize = 4;
/// Bytes in front of a response's body.
pub const RESPONSE_PREFIX_LEN: usize = 5;

/// How an invocation ended, as the response's first byte says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// The function returned its output, which is the body.
    Ok = 0,
    /// The function (or the runtime, for a request it cannot take) returned
    /// an error; the body is the message.
    Error = 1,
    /// The function panicked; the body is the panic message.
    Panic = 2,
}

impl Status {
    pub fn from_u8(status: u8) -> Option<Status> {
        match status {
            0 => Some(Status::Ok),
            1 => Some(Status::Error),
            2 => Some(Status::Panic),
            _ => None,
        }
    }
}

/// The bytes in front of a request body of `len` bytes.
pub fn request_prefix(len: u32) -> [u8; REQUEST_PREFIX_LEN] {
    len.to_le_bytes()
}

/// The bytes in front of a response body of `len` bytes.
pub fn response_prefix(status: Status, len: u32) -> [u8; RESPONSE_PREFIX_LEN] {
    let len = len.to_le_bytes();
    [status as u8, len[0], len[1], len[2], len[3]]
}

/// A response prefix's status byte (`None` if it names no status) and body length.
pub fn parse_response_prefix(prefix: [u8; RESPONSE_PREFIX_LEN]) -> (Option<Status>, u32) {
    let [status, len @ ..] = prefix;
    (Status::from_u8(status), u32::from_le_bytes(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_little_endian_and_round_trip() {
        assert_eq!(request_prefix(0x0102_0304), [4, 3, 2, 1]);
        let prefix = response_prefix(Status::Panic, 0x0102_0304);
        assert_eq!(prefix, [2, 4, 3, 2, 1]);
        assert_eq!(
            parse_response_prefix(prefix),
            (Some(Status::Panic), 0x0102_0304)
        );
        for status in [Status::Ok, Status::Error, Status::Panic] {
            assert_eq!(Status::from_u8(status as u8), Some(status));
        }
        assert_eq!(parse_response_prefix([3, 0, 0, 0, 0]), (None, 0));
    }
}
