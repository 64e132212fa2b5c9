//! The guest runtime's vsock parsing and invocation server, driven by
//! `ember_fuzz::guest_runtime::run` (whose docs give the input format and what
//! must hold).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ember_fuzz::guest_runtime::run(data);
});
