//! `api::routes::route` over any method, path and body: a 400 or a typed
//! request, never a panic. What the controller then checks without state
//! (each body's `validate`) runs too.
//!
//! Input: `<method>\n<path>\n<body>`; the method and path are taken lossily
//! as UTF-8, the body as bytes.

#![no_main]

use ember::api::routes::{body_limit, route, DEFAULT_MAX_BODY_BYTES};
use ember::config::{DeviceConfig, DeviceUpdate};
use ember::controller::Request;
use ember::mmds::MmdsStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == b'\n');
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();

    let limit = body_limit(&method, &path, DEFAULT_MAX_BODY_BYTES);
    assert!(limit >= DEFAULT_MAX_BODY_BYTES);
    let Ok(request) = route(&method, &path, body) else {
        return;
    };
    match request {
        Request::PutMachineConfig(machine) => {
            // `route` only hands over configurations that validate.
            assert_eq!(machine.validate(), Ok(()));
        }
        Request::PatchMachineConfig(update) => {
            let _ = ember::config::MachineConfig::default().updated(&update);
        }
        Request::PutDevice(DeviceConfig::Drive(drive)) => {
            let _ = drive.validate();
            let _ = drive.path();
        }
        Request::UpdateDevice(DeviceUpdate::Drive(update)) => {
            if let Some(limiter) = &update.rate_limiter {
                let _ = ember::config::RateLimiterConfig::patched(None, limiter);
            }
        }
        Request::PutLogger(logger) => {
            if let Some(level) = &logger.level {
                let _ = ember::logger::parse_level(level);
            }
        }
        Request::PutDevice(DeviceConfig::Vsock(vsock)) => {
            let _ = vsock.validate();
        }
        Request::PutFunction(function) => {
            let _ = function.validate();
        }
        Request::PutMmds(data) => {
            let _ = MmdsStore::default().put(data);
        }
        Request::PatchMmds(patch) => {
            // A merge patch follows the patch's nesting, which serde_json bounds.
            let mut store = MmdsStore::default();
            let _ = store.put(serde_json::json!({"latest": {"meta-data": {"a": [1, 2]}}}));
            let _ = store.patch(patch);
        }
        Request::CreateSnapshot(params) => {
            let _ = params.validate();
        }
        Request::LoadSnapshot(params) => {
            let _ = params.validate();
            let _ = params.backend();
        }
        _ => {}
    }
});
