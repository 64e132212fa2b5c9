//! HTTP method + path + body -> a typed controller request, with Firecracker's
//! routes and error wording. Pure, so every bad input has a unit test.

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{
    BootSourceConfig, DeviceConfig, DeviceUpdate, DriveConfig, DriveUpdate, FunctionConfig,
    HintingStart, LoggerConfig, MachineConfigBody, MachineConfigUpdate, NetworkInterfaceConfig,
    NetworkInterfaceUpdate, SnapshotCreateConfig, SnapshotLoadConfig, VsockConfig,
};
use crate::controller::Request;

/// Firecracker's default limit for a request body (`--http-api-max-payload-size`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 51_200;
/// Limit for an invocation's payload (ember's extension): a function's
/// input, not configuration, so `--http-api-max-payload-size` leaves it be.
pub const MAX_INVOCATION_BYTES: usize = 32 << 20;

/// The body limit of the request `method` `path`, where Firecracker's
/// endpoints take up to `max_payload` bytes.
pub fn body_limit(method: &str, path: &str, max_payload: usize) -> usize {
    if method == "POST" && path.trim_end_matches('/') == "/invocations" {
        MAX_INVOCATION_BYTES
    } else {
        max_payload
    }
}

/// A request the API rejects before it reaches the controller (always a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(pub String);

/// Endpoints of Firecracker's API that ember does not serve yet.
const NOT_YET: [&str; 4] = ["cpu-config", "hotplug", "pmem", "serial"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: String,
}

/// A typed body, which must be a JSON object: serde's derived structs also
/// take an array, field by field in order, so `PUT /machine-config [2, 256]`
/// would otherwise set 2 vCPUs.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, RouteError> {
    let kind = match document(body)? {
        // Parsed again as `T` so that errors say where in the body they are.
        Value::Object(_) => return serde_json::from_slice(body).map_err(invalid_body),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    Err(RouteError(format!(
        "the request body must be a JSON object, not {kind}"
    )))
}

/// Any JSON document, as the MMDS data store takes.
fn document(body: &[u8]) -> Result<Value, RouteError> {
    if body.is_empty() {
        return Err(RouteError(
            "the request body is empty; this endpoint needs a JSON body".into(),
        ));
    }
    serde_json::from_slice(body).map_err(invalid_body)
}

fn invalid_body(e: serde_json::Error) -> RouteError {
    RouteError(format!("invalid request body: {e}"))
}

/// Maps one HTTP request to a controller request.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Request, RouteError> {
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    let invalid = || {
        RouteError(format!(
            "invalid request method and/or path: {method} {path}"
        ))
    };
    match (method, segments.as_slice()) {
        ("GET", []) | ("GET", [""]) => Ok(Request::GetInstanceInfo),
        ("GET", ["version"]) => Ok(Request::GetVersion),
        ("GET", ["machine-config"]) => Ok(Request::GetMachineConfig),
        ("PUT" | "PATCH", ["machine-config"]) => machine_config(method, body),
        ("GET", ["vm", "config"]) => Ok(Request::GetVmConfig),
        ("PUT", ["boot-source"]) => Ok(Request::PutBootSource(json::<BootSourceConfig>(body)?)),
        ("PUT", ["logger"]) => Ok(Request::PutLogger(json::<LoggerConfig>(body)?)),
        ("PUT", ["vsock"]) => Ok(Request::PutDevice(DeviceConfig::Vsock(
            json::<VsockConfig>(body)?,
        ))),
        ("PUT", ["balloon"]) => Ok(Request::PutDevice(DeviceConfig::Balloon(json(body)?))),
        ("PATCH", ["balloon"]) => Ok(Request::PatchBalloon(json(body)?)),
        ("GET", ["balloon"]) => Ok(Request::GetBalloon),
        ("GET", ["balloon", "statistics"]) => Ok(Request::GetBalloonStats),
        ("PATCH", ["balloon", "statistics"]) => Ok(Request::PatchBalloonStats(json(body)?)),
        // Firecracker's body is optional: without one, the guest's STOP ends the run.
        ("PATCH", ["balloon", "hinting", "start"]) if body.is_empty() => {
            Ok(Request::StartHinting(HintingStart::default()))
        }
        ("PATCH", ["balloon", "hinting", "start"]) => Ok(Request::StartHinting(json(body)?)),
        ("PATCH", ["balloon", "hinting", "stop"]) => Ok(Request::StopHinting),
        ("GET", ["balloon", "hinting", "status"]) => Ok(Request::GetHintingStatus),
        ("PUT", ["entropy"]) => Ok(Request::PutDevice(DeviceConfig::Entropy(json(body)?))),
        ("PUT", ["function"]) => Ok(Request::PutFunction(json::<FunctionConfig>(body)?)),
        // The payload is the function's input, carried as is, not JSON.
        ("POST", ["invocations"]) => Ok(Request::GetInvocationTarget),
        ("PUT", ["drives", id]) => {
            let drive: DriveConfig = json(body)?;
            check_id(id, &drive.drive_id)?;
            Ok(Request::PutDevice(DeviceConfig::Drive(drive)))
        }
        ("PATCH", ["drives", id]) => {
            let update: DriveUpdate = json(body)?;
            check_id(id, &update.drive_id)?;
            Ok(Request::UpdateDevice(DeviceUpdate::Drive(update)))
        }
        ("PUT", ["actions"]) => match json::<Action>(body)?.action_type.as_str() {
            "InstanceStart" => Ok(Request::StartInstance),
            "SendCtrlAltDel" => Ok(Request::SendCtrlAltDel),
            "FlushMetrics" => Ok(Request::FlushMetrics),
            other => Err(RouteError(format!(
                "unknown action_type '{other}': use InstanceStart, SendCtrlAltDel or FlushMetrics"
            ))),
        },
        ("PUT" | "PATCH", ["network-interfaces", id]) => network_interface(method, id, body),
        ("PUT", ["metrics"]) => Ok(Request::PutMetrics(json(body)?)),
        ("GET", ["metrics"]) => Ok(Request::GetMetrics),
        ("PUT", ["mmds", "config"]) => Ok(Request::PutMmdsConfig(json(body)?)),
        ("PUT", ["mmds"]) => Ok(Request::PutMmds(document(body)?)),
        ("PATCH", ["mmds"]) => Ok(Request::PatchMmds(document(body)?)),
        ("GET", ["mmds"]) => Ok(Request::GetMmds),
        ("PUT", ["snapshot", "create"]) => {
            Ok(Request::CreateSnapshot(json::<SnapshotCreateConfig>(body)?))
        }
        ("PUT", ["snapshot", "load"]) => {
            Ok(Request::LoadSnapshot(json::<SnapshotLoadConfig>(body)?))
        }
        ("PATCH", ["vm"]) => match json::<VmState>(body)?.state.as_str() {
            "Paused" => Ok(Request::Pause),
            "Resumed" => Ok(Request::Resume),
            other => Err(RouteError(format!(
                "unknown VM state '{other}': use Paused or Resumed"
            ))),
        },
        (_, [first, ..]) if NOT_YET.contains(first) => Err(RouteError(format!(
            "{method} {path}: this endpoint is not supported by ember yet"
        ))),
        _ => Err(invalid()),
    }
}

/// `PUT` (the whole configuration) or `PATCH` (some fields) of `/machine-config`.
fn machine_config(method: &str, body: &[u8]) -> Result<Request, RouteError> {
    if method == "PUT" {
        let body: MachineConfigBody = json(body)?;
        return body
            .into_config()
            .map(Request::PutMachineConfig)
            .map_err(|e| RouteError(e.to_string()));
    }
    let update: MachineConfigUpdate = json(body)?;
    // Firecracker refuses an update that changes nothing, too.
    if update == MachineConfigUpdate::default() {
        return Err(RouteError(
            "PATCH /machine-config changes nothing: give at least one field".into(),
        ));
    }
    Ok(Request::PatchMachineConfig(update))
}

/// `PUT` (a new interface) or `PATCH` (an update) of `/network-interfaces/{id}`.
fn network_interface(method: &str, id: &str, body: &[u8]) -> Result<Request, RouteError> {
    if method == "PUT" {
        let net: NetworkInterfaceConfig = json(body)?;
        check_id(id, &net.iface_id)?;
        Ok(Request::PutDevice(DeviceConfig::Net(net)))
    } else {
        let update: NetworkInterfaceUpdate = json(body)?;
        check_id(id, &update.iface_id)?;
        Ok(Request::UpdateDevice(DeviceUpdate::Net(update)))
    }
}

fn check_id(path_id: &str, body_id: &str) -> Result<(), RouteError> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(RouteError(format!(
            "the id from the path ('{path_id}') does not match the id from the body ('{body_id}')"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricsConfig;

    fn err(method: &str, path: &str, body: &str) -> String {
        route(method, path, body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn firecracker_requests_map_to_typed_requests() {
        assert_eq!(route("GET", "/", b"").unwrap(), Request::GetInstanceInfo);
        assert_eq!(route("GET", "/version", b"").unwrap(), Request::GetVersion);
        assert_eq!(
            route("GET", "/vm/config", b"").unwrap(),
            Request::GetVmConfig
        );
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type": "InstanceStart"}"#).unwrap(),
            Request::StartInstance
        );
        assert_eq!(
            route("PATCH", "/vm", br#"{"state": "Paused"}"#).unwrap(),
            Request::Pause
        );
        assert_eq!(
            route("PATCH", "/vm", br#"{"state": "Resumed"}"#).unwrap(),
            Request::Resume
        );
        let Request::PutMachineConfig(m) = route(
            "PUT",
            "/machine-config",
            br#"{"vcpu_count": 2, "mem_size_mib": 256}"#,
        )
        .unwrap() else {
            panic!("not a machine config");
        };
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 256));
        let drive = br#"{"drive_id": "rootfs", "path_on_host": "disk.img", "is_root_device": true, "is_read_only": false}"#;
        assert!(
            matches!(route("PUT", "/drives/rootfs", drive).unwrap(), Request::PutDevice(DeviceConfig::Drive(d)) if d.drive_id == "rootfs")
        );
        let boot = br#"{"kernel_image_path": "guest.elf", "boot_args": "console=ttyS0"}"#;
        assert!(
            matches!(route("PUT", "/boot-source", boot).unwrap(), Request::PutBootSource(b) if b.kernel_image_path == "guest.elf")
        );
    }

    #[test]
    fn ember_extensions_route() {
        assert!(matches!(
            route("PUT", "/vsock", br#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#).unwrap(),
            Request::PutDevice(DeviceConfig::Vsock(v)) if v.guest_cid == 3
        ));
        assert!(matches!(
            route("PUT", "/function", br#"{"vsock_port": 52, "timeout_ms": 100}"#).unwrap(),
            Request::PutFunction(f) if f.vsock_port == 52
        ));
        assert_eq!(
            route("POST", "/invocations", b"\x00not json").unwrap(),
            Request::GetInvocationTarget
        );
        assert_eq!(
            body_limit("POST", "/invocations", 100),
            MAX_INVOCATION_BYTES
        );
        assert_eq!(body_limit("PUT", "/invocations", 100), 100);
        assert_eq!(body_limit("PUT", "/machine-config", 100), 100);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        assert!(err(
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "k", "kernel": 1}"#
        )
        .contains("unknown field `kernel`"));
        assert!(err("PUT", "/boot-source", "{not json").contains("invalid request body"));
        assert!(err("PUT", "/boot-source", "").contains("empty"));
        assert!(err(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 64, "mem_size_mib": 128}"#
        )
        .contains("vcpu_count"));
        assert!(err(
            "PUT",
            "/drives/a",
            r#"{"drive_id": "b", "path_on_host": "x", "is_root_device": false}"#
        )
        .contains("does not match"));
        assert!(err("PUT", "/actions", r#"{"action_type": "Explode"}"#).contains("Explode"));
        assert!(err("PATCH", "/vm", r#"{"state": "Sleeping"}"#).contains("Sleeping"));
        assert!(err("DELETE", "/machine-config", "").contains("invalid request method and/or path"));
        assert!(err("GET", "/nowhere", "").contains("GET /nowhere"));
    }

    #[test]
    fn typed_bodies_must_be_json_objects() {
        let typed = [
            ("PUT", "/machine-config"),
            ("PATCH", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/logger"),
            ("PUT", "/vsock"),
            ("PUT", "/entropy"),
            ("PUT", "/function"),
            ("PUT", "/drives/a"),
            ("PATCH", "/drives/a"),
            ("PUT", "/actions"),
            ("PUT", "/network-interfaces/a"),
            ("PATCH", "/network-interfaces/a"),
            ("PUT", "/mmds/config"),
            ("PUT", "/snapshot/create"),
            ("PUT", "/snapshot/load"),
            ("PATCH", "/vm"),
        ];
        for (method, path) in typed {
            for (body, kind) in [
                ("[2, 256]", "an array"),
                ("2", "a number"),
                (r#""InstanceStart""#, "a string"),
                ("true", "a boolean"),
                (" null ", "null"),
            ] {
                assert_eq!(
                    err(method, path, body),
                    format!("the request body must be a JSON object, not {kind}"),
                    "{method} {path} {body}"
                );
            }
        }
        // The metadata store is the exception: it takes any JSON document.
        assert_eq!(
            route("PUT", "/mmds", b"[1, 2]").unwrap(),
            Request::PutMmds(serde_json::json!([1, 2]))
        );
    }

    #[test]
    fn a_machine_config_patch_must_change_something() {
        assert!(err("PATCH", "/machine-config", "{}").contains("changes nothing"));
        assert_eq!(
            route("PATCH", "/machine-config", br#"{"mem_size_mib": 256}"#).unwrap(),
            Request::PatchMachineConfig(MachineConfigUpdate {
                mem_size_mib: Some(256),
                ..MachineConfigUpdate::default()
            })
        );
    }

    #[test]
    fn firecracker_endpoints_ember_lacks_say_so() {
        for path in ["/pmem/p0", "/hotplug/memory", "/cpu-config"] {
            assert!(
                err("PUT", path, "{}").contains("not supported by ember yet"),
                "{path}"
            );
        }
    }

    #[test]
    fn metrics_routes_take_firecrackers_shapes() {
        assert_eq!(
            route("PUT", "/metrics", br#"{"metrics_path": "/m.fifo"}"#).unwrap(),
            Request::PutMetrics(MetricsConfig {
                metrics_path: "/m.fifo".into()
            })
        );
        assert!(err("PUT", "/metrics", r#"{"path": "/m"}"#).contains("metrics_path"));
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type": "FlushMetrics"}"#).unwrap(),
            Request::FlushMetrics
        );
        assert_eq!(route("GET", "/metrics", b"").unwrap(), Request::GetMetrics);
    }

    #[test]
    fn network_interfaces_and_mmds_config_route_in_firecrackers_shape() {
        let put = route(
            "PUT",
            "/network-interfaces/eth0",
            br#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}"#,
        )
        .unwrap();
        let Request::PutDevice(DeviceConfig::Net(net)) = put else {
            panic!("not a net device: {put:?}");
        };
        assert_eq!(net.mac(), Some([6, 0, 0xac, 0x10, 0, 2]));
        assert!(err(
            "PUT",
            "/network-interfaces/eth1",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#
        )
        .contains("does not match"));
        assert!(matches!(
            route(
                "PATCH",
                "/network-interfaces/eth0",
                br#"{"iface_id": "eth0"}"#
            ),
            Ok(Request::UpdateDevice(DeviceUpdate::Net(_)))
        ));
        assert!(matches!(
            route(
                "PUT",
                "/mmds/config",
                br#"{"version": "V2", "network_interfaces": ["eth0"]}"#
            ),
            Ok(Request::PutMmdsConfig(_))
        ));
        assert!(err(
            "PUT",
            "/mmds/config",
            r#"{"version": "V3", "network_interfaces": []}"#
        )
        .contains("V3"));
    }

    #[test]
    fn the_mmds_data_store_takes_any_json_document() {
        assert_eq!(
            route("PUT", "/mmds", br#"{"latest": {"a": 1}}"#).unwrap(),
            Request::PutMmds(serde_json::json!({"latest": {"a": 1}}))
        );
        assert_eq!(
            route("PATCH", "/mmds/", b"\"text\"").unwrap(),
            Request::PatchMmds(serde_json::json!("text"))
        );
        assert_eq!(route("GET", "/mmds", b"").unwrap(), Request::GetMmds);
        assert!(err("PUT", "/mmds", "{not json").contains("invalid request body"));
        assert!(err("PATCH", "/mmds", "").contains("body is empty"));
    }
}
