//! The harness of `mmds_guest`: what a guest can send the metadata service.
//!
//! Input: a flags byte (bit 0: V2, bit 1: `imds_compat`), a chunk that goes
//! to `mmds::http::handle` as a request, then frames, each a chunk and a
//! byte saying how to aim it: bit 0 makes it ARP and bit 1 IPv4 (the
//! ethertype set, and the target or destination address the service's), so
//! the fuzzer reaches the stack without guessing the address.

use std::time::Instant;

use ember::config::MmdsVersion;
use ember::mmds::http;
use ember::mmds::stack::MmdsStack;
use ember::mmds::SharedMmds;

use crate::bytes::Reader;

pub const ADDRESS: [u8; 4] = [169, 254, 169, 254];
/// Largest frame the harness builds: a 1500-byte MTU link's.
const MAX_FRAME: usize = 1514;
/// The service never queues more than this many answers (its bound is lower).
const MAX_REPLIES: usize = 256;

/// Runs one input; returns how many frames the service answered with.
pub fn run(r: &mut Reader) -> usize {
    let flags = r.u8();
    let mmds = SharedMmds::default();
    if let Some(mut m) = mmds.lock() {
        m.version = if flags & 1 == 1 {
            MmdsVersion::V2
        } else {
            MmdsVersion::V1
        };
        m.imds_compat = flags & 2 == 2;
        let document =
            serde_json::json!({"latest": {"meta-data": {"id": "i-1", "n": 1, "tags": {}}}});
        m.store.put(document).expect("a small document");
        let request = r.chunk(2 * http::MAX_REQUEST_BYTES);
        match http::handle(request, &mut m, Instant::now()) {
            http::Parsed::Answer { consumed, response } => {
                assert!(consumed <= request.len() && response.starts_with(b"HTTP/1.1 "));
            }
            http::Parsed::Bad(response) => assert!(response.starts_with(b"HTTP/1.1 400")),
            http::Parsed::Incomplete => assert!(request.len() < http::MAX_REQUEST_BYTES),
        }
    }
    let mut stack = MmdsStack::new(ADDRESS, mmds);
    let mut answers = 0;
    while !r.is_empty() {
        let mut frame = r.chunk(MAX_FRAME).to_vec();
        aim(&mut frame, r.u8());
        if stack.is_for_mmds(&frame) {
            stack.receive(&frame);
        }
        let mut replies = 0;
        while let Some(reply) = stack.pop_reply() {
            assert!(reply.len() <= MAX_FRAME, "a {} byte answer", reply.len());
            replies += 1;
            assert!(replies <= MAX_REPLIES, "answers without end");
        }
        answers += replies;
    }
    answers
}

/// Makes `frame` ARP (bit 0 of `how`) or IPv4 (bit 1) for the service.
fn aim(frame: &mut [u8], how: u8) {
    if how & 1 == 1 && frame.len() >= 42 {
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        frame[38..42].copy_from_slice(&ADDRESS);
    } else if how & 2 == 2 && frame.len() >= 34 {
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[30..34].copy_from_slice(&ADDRESS);
    }
}
