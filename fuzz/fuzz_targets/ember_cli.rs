//! ember's command line (`cli::parse`) over any argument vector, non-UTF-8
//! arguments included. Input: the arguments separated by NUL bytes.

#![no_main]

use ember::cli::{parse, Command};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = ember_fuzz::bytes::nul_separated_args(data);
    if let Ok(Command::Run(args)) = parse(args) {
        assert!(ember::config::is_valid_id(&args.id));
        assert!(args.api_sock.is_some() || args.config_file.is_some());
    }
});
