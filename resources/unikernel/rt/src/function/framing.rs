//! Reading ember's invocation requests from a stream delivered in arbitrary pieces.
//! The framing itself (prefixes, status codes) is `ember_proto`'s, shared with the
//! host.

use alloc::vec::Vec;

pub use ember_proto::invocation::{RESPONSE_PREFIX_LEN, Status, response_prefix};

/// A complete request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Data(Vec<u8>),
    /// The announced length (whose bytes were read and dropped) exceeds what the
    /// reader may allocate.
    TooLarge(u32),
}

/// Parses one request at a time from a stream delivered in arbitrary pieces.
#[derive(Debug)]
pub struct RequestReader {
    /// Requests longer than this are dropped as [`Request::TooLarge`].
    max_len: usize,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Reading the length prefix.
    Length {
        bytes: [u8; 4],
        have: usize,
    },
    Body {
        data: Vec<u8>,
        len: usize,
    },
    Discard {
        left: usize,
        len: u32,
    },
    Done(Request),
}

impl State {
    const IDLE: State = State::Length {
        bytes: [0; 4],
        have: 0,
    };
}

impl RequestReader {
    pub fn new(max_len: usize) -> RequestReader {
        RequestReader {
            max_len,
            state: State::IDLE,
        }
    }

    /// Consumes bytes of the current request from the front of `input` and returns
    /// how many; once a request is complete it consumes nothing until [`take`]n.
    ///
    /// [`take`]: RequestReader::take
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.state {
                State::Done(_) => return used,
                _ if rest.is_empty() => return used,
                State::Length { bytes, have } => {
                    let n = rest.len().min(4 - *have);
                    bytes[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    used += n;
                    if *have == 4 {
                        let len = u32::from_le_bytes(*bytes);
                        self.state = body_state(len, self.max_len);
                    }
                }
                State::Body { data, len } => {
                    let n = rest.len().min(*len - data.len());
                    data.extend_from_slice(&rest[..n]);
                    used += n;
                    if data.len() == *len {
                        self.state = State::Done(Request::Data(core::mem::take(data)));
                    }
                }
                State::Discard { left, len } => {
                    let n = rest.len().min(*left);
                    *left -= n;
                    used += n;
                    if *left == 0 {
                        self.state = State::Done(Request::TooLarge(*len));
                    }
                }
            }
        }
    }

    /// The complete request, if there is one; the reader then starts the next.
    pub fn take(&mut self) -> Option<Request> {
        match core::mem::replace(&mut self.state, State::IDLE) {
            State::Done(request) => Some(request),
            other => {
                self.state = other;
                None
            }
        }
    }

    pub fn is_complete(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// Whether no byte of a request has arrived since the last one was taken.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Length { have: 0, .. })
    }

    /// Drops a partly received request.
    pub fn clear(&mut self) {
        self.state = State::IDLE;
    }
}

/// Where a request of `len` bytes goes: a buffer for all of it, or nowhere.
fn body_state(len: u32, max_len: usize) -> State {
    let size = len as usize;
    let mut data = Vec::new();
    if size > max_len || data.try_reserve_exact(size).is_err() {
        return State::Discard { left: size, len };
    }
    if size == 0 {
        return State::Done(Request::Data(data));
    }
    State::Body { data, len: size }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn reads_requests_split_anywhere() {
        let mut stream = frame(b"hello, world");
        stream.extend(frame(b""));
        stream.extend(frame(&[7; 1000]));
        for piece in [1, 2, 3, 5, 7, 64, 4096] {
            let mut reader = RequestReader::new(usize::MAX);
            let mut got = Vec::new();
            let mut pending = Vec::new();
            for chunk in stream.chunks(piece) {
                pending.extend_from_slice(chunk);
                loop {
                    let used = reader.feed(&pending);
                    pending.drain(..used);
                    match reader.take() {
                        Some(request) => got.push(request),
                        None => break,
                    }
                }
            }
            assert!(pending.is_empty() && reader.is_idle(), "piece {piece}");
            assert_eq!(
                got,
                [
                    Request::Data(b"hello, world".to_vec()),
                    Request::Data(Vec::new()),
                    Request::Data(vec![7; 1000]),
                ],
                "piece {piece}"
            );
        }
    }

    #[test]
    fn stops_at_the_end_of_a_request() {
        let mut stream = frame(b"ab");
        stream.extend(frame(b"cde"));
        let mut reader = RequestReader::new(usize::MAX);
        assert_eq!(reader.feed(&stream), 6);
        assert!(reader.is_complete());
        assert_eq!(reader.feed(&stream[6..]), 0);
        assert_eq!(reader.take(), Some(Request::Data(b"ab".to_vec())));
        assert_eq!(reader.take(), None);
        assert_eq!(reader.feed(&stream[6..8]), 2);
        assert!(!reader.is_idle());
        reader.clear();
        assert!(reader.is_idle());
    }

    #[test]
    fn drops_requests_over_the_limit() {
        let mut stream = frame(&[1; 100]);
        stream.extend(frame(b"ok"));
        let mut reader = RequestReader::new(10);
        assert_eq!(reader.feed(&stream[..50]), 50);
        assert_eq!(reader.feed(&stream[50..]), 54);
        assert_eq!(reader.take(), Some(Request::TooLarge(100)));
        assert_eq!(reader.feed(&stream[104..]), 6);
        assert_eq!(reader.take(), Some(Request::Data(b"ok".to_vec())));
    }
}
