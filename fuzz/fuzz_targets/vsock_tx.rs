//! The vsock device's tx path: packets the guest sends (headers, ports, CIDs,
//! lengths and ops from the input, split over descriptors where the input
//! says) and raw tx chains (addresses outside memory or near `u64::MAX`,
//! any flags and `next`), with real host sockets behind the muxer: hosts
//! connecting to `uds_path` with `CONNECT <port>\n` and data, listeners at
//! `<uds_path>_<port>` for the connections the guest opens. Steps interleave
//! `process_queue`, `process_backend`, device resets and host socket
//! operations; see `ember_fuzz::vsock::Harness::step` for the format.

#![no_main]

use ember_fuzz::bytes::Reader;
use ember_fuzz::vsock::Harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut harness) = Harness::new() else {
        return;
    };
    harness.run(&mut Reader::new(data));
});
