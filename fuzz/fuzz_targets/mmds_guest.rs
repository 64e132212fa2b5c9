//! MMDS's guest side: any bytes as an HTTP request to `mmds::http::handle`
//! (V1 or V2, with or without `imds_compat`), then any frames into
//! `MmdsStack`, ARP or IPv4 for its address where the input says; every
//! answer is a frame of at most 1514 bytes, and they run out. See
//! `ember_fuzz::mmds` for the format.

#![no_main]

use ember_fuzz::bytes::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ember_fuzz::mmds::run(&mut Reader::new(data));
});
