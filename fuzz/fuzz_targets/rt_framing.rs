//! The invocation framing a function's runtime reads requests with
//! (`rt::function::framing::RequestReader`), fed a stream in pieces of any
//! size: it must find exactly the requests a whole-stream reading finds (a
//! length over the limit is a `TooLarge` whose bytes are skipped), never take
//! more bytes than it is given, and nothing once a request waits to be taken.
//!
//! Input: the largest request (u16), a count of piece sizes (u8) and the sizes
//! (u8 each, 0 meaning 1), then the stream; the pieces take turns.

#![no_main]

use ember_fuzz::bytes::Reader;
use libfuzzer_sys::fuzz_target;
use rt::function::framing::{Request, RequestReader};

/// The requests in `stream`, read whole; a partial one at the end is not one.
fn whole_stream(mut stream: &[u8], max_len: usize) -> Vec<Request> {
    let mut requests = Vec::new();
    while let Some((prefix, rest)) = stream.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*prefix);
        let Some(body) = rest.get(..len as usize) else {
            break;
        };
        requests.push(if len as usize > max_len {
            Request::TooLarge(len)
        } else {
            Request::Data(body.to_vec())
        });
        stream = &rest[len as usize..];
    }
    requests
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let max_len = usize::from(r.u16());
    let count = usize::from(r.u8() % 16) + 1;
    let pieces: Vec<usize> = (0..count).map(|_| usize::from(r.u8()).max(1)).collect();
    let stream = r.rest();

    let mut reader = RequestReader::new(max_len);
    let mut found = Vec::new();
    let mut rest = stream;
    for &piece in pieces.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let mut input = &rest[..piece.min(rest.len())];
        rest = &rest[input.len()..];
        while !input.is_empty() {
            let used = reader.feed(input);
            assert!(used <= input.len());
            input = &input[used..];
            match reader.take() {
                Some(request) => found.push(request),
                None => assert!(input.is_empty(), "stopped short without a request"),
            }
            assert_eq!(reader.feed(&[]), 0);
        }
    }
    if let Some(request) = reader.take() {
        found.push(request);
    }
    assert_eq!(found, whole_stream(stream, max_len));
});
