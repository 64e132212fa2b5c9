//! A `--config-file` document: parsed as `VmConfig`, then every check the
//! controller makes on its sections before touching the host
//! (`Controller::apply_config`: unsupported sections, the logger's level,
//! the machine, each drive, the vsock and the function), and serialized back
//! as `GET /vm/config` would show it.

#![no_main]

use ember::config::VmConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = VmConfig::from_json(data) else {
        return;
    };
    let _ = config.unsupported_section();
    if let Some(logger) = &config.logger {
        if let Some(level) = &logger.level {
            let _ = ember::logger::parse_level(level);
        }
    }
    if let Some(machine) = &config.machine_config {
        let _ = machine.validate();
    }
    for drive in &config.drives {
        let _ = drive.validate();
        let _ = drive.path();
    }
    if let Some(vsock) = &config.vsock {
        let _ = vsock.validate();
    }
    if let Some(function) = &config.function {
        let _ = function.validate();
    }
    let shown = serde_json::to_vec(&config).expect("a parsed config serializes");
    // What ember shows it reads back.
    VmConfig::from_json(&shown).expect("a shown config parses");
});
