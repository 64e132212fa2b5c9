//! ember's command line (`cli::parse`) over any argument vector, non-UTF-8
//! arguments included. Input: the arguments separated by NUL bytes.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use ember::cli::{parse, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args: Vec<OsString> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string())
            .collect()
    };
    if let Ok(Command::Run(args)) = parse(args) {
        assert!(ember::config::is_valid_id(&args.id));
        assert!(args.api_sock.is_some() || args.config_file.is_some());
    }
});
