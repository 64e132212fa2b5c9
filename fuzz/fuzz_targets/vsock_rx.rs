//! The vsock device's rx path: established connections (host-initiated ones
//! the guest accepted, guest-initiated ones a host listener accepted) with
//! host data pending, then rx chains from the input (header-only buffers,
//! buffers outside memory or across a region's end, chained descriptors),
//! credit updates and the rest of the vsock harness's steps, driven through
//! `process_queue` and `process_backend`.
//!
//! Input: a setup byte (bits 0-1: host-initiated connections, to guest ports
//! 1024.., bits 2-3: guest-initiated ones, from guest ports 2000.. to host
//! ports 5000..), then one chunk of host data per connection, then steps as
//! in `vsock_tx`.

#![no_main]

use ember_fuzz::bytes::Reader;
use ember_fuzz::vsock::Harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut harness) = Harness::new() else {
        return;
    };
    let mut r = Reader::new(data);
    harness.rx_setup(&mut r);
    harness.run(&mut r);
});
