//! `ember-jailer`'s argument parser (`jailer/src/args.rs`, compiled in from
//! its source: the jailer is a binary without a library) over any argument
//! vector. Input: the arguments separated by NUL bytes.
//!
//! The parser stats `--exec-file`: `/tmp/ember-fuzz-jailer/ember` exists so
//! that inputs (and the seeds) can get past that check.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../jailer/src/error.rs"]
mod error;

#[allow(dead_code)]
#[path = "../../jailer/src/args.rs"]
mod args;

/// Where the exec file the seeds name lives.
const EXEC_DIR: &str = "/tmp/ember-fuzz-jailer";

fuzz_target!(|data: &[u8]| {
    static EXEC: std::sync::Once = std::sync::Once::new();
    EXEC.call_once(|| {
        let _ = std::fs::create_dir_all(EXEC_DIR);
        let _ = std::fs::write(format!("{EXEC_DIR}/ember"), b"");
    });
    let args = ember_fuzz::bytes::nul_separated_args(data);
    if let Ok(args::Command::Jail(jail)) = args::parse(args) {
        assert!(args::validate_id(&jail.id).is_ok());
        let _ = jail.cgroup_rel();
        let _ = jail.exec_file_name();
        for cgroup in &jail.cgroups {
            let _ = cgroup.controller();
        }
    }
});
