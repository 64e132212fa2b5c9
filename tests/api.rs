//! The API and command line as a Firecracker client sees them: shapes,
//! status codes, and clear 400s for bad input while ember keeps serving.

use std::process::Command;
use std::time::Duration;

use ember_test_support::{artifact, ember_bin, require_kvm, send_and_hang_up, Ember, TempDir};
use serde_json::{json, Value};

fn fault(reply: &str) -> String {
    let value: Value =
        serde_json::from_str(reply).unwrap_or_else(|e| panic!("not JSON ({e}): {reply}"));
    value["fault_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no fault_message in {reply}"))
        .to_string()
}

/// Asserts a 400 whose fault message contains `needle`, and that ember still answers.
fn rejects(ember: &Ember, method: &str, path: &str, body: &str, needle: &str) {
    let (status, reply) = ember.api(method, path, body);
    assert_eq!(status, 400, "{method} {path} {body} -> {status} {reply}");
    let message = fault(&reply);
    assert!(
        message.contains(needle),
        "{method} {path}: {message:?} lacks {needle:?}"
    );
    let (status, _) = ember.api("GET", "/", "");
    assert_eq!(status, 200, "ember stopped serving after {method} {path}");
}

/// The kernel's vmalloc use, in KiB: where KVM keeps a VM's page maps.
fn vmalloc_used_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmallocUsed:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A VM costs the kernel memory in proportion to its size: under this
/// machine's shadow paging, KVM's page maps for 512 GiB of guest memory take
/// about 1.3 GiB. A client that keeps changing the machine configuration
/// between such sizes must not have ember make a VM per change side by side
/// (12 changes in a second once took 19 GiB and left the host 2 GiB): while it
/// does, the kernel holds about one VM's worth, and afterwards a small machine
/// boots as usual.
#[test]
fn a_burst_of_huge_machine_configurations_holds_one_vm_at_a_time() {
    require_kvm();
    let dir = TempDir::new("config-burst");
    let socket = dir.path("api.sock");
    let ember = Ember::spawn_program(
        &ember_bin(),
        &["--api-sock", socket.to_str().unwrap()],
        Some(&socket),
    );
    let before = vmalloc_used_kib();
    for i in 0..8 {
        let machine = json!({"vcpu_count": 1 + i % 2, "mem_size_mib": 512u64 << 10});
        ember.ok("PUT", "/machine-config", &machine.to_string());
    }
    let mut peak = 0;
    let settled = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < settled {
        peak = peak.max(vmalloc_used_kib().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        peak < 3 << 20,
        "the kernel's vmalloc use grew by {} MiB",
        peak >> 10
    );
    ember.put_boot_source(&artifact("test-elf"), "console=ttyS0");
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("EMBER-TEST-GUEST: hello", Duration::from_secs(20));
}

#[test]
fn instance_info_version_and_defaults_have_firecrackers_shape() {
    let dir = TempDir::new("info");
    let ember = Ember::with_api(&dir, &["--id", "fn-42"]);
    let (status, body) = ember.api("GET", "/", "");
    assert_eq!(status, 200);
    let info: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(info["id"], "fn-42");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "ember");
    assert!(info["vmm_version"].is_string());

    // Firecracker clients read `firecracker_version` as a semantic version.
    let (status, body) = ember.api("GET", "/version", "");
    assert_eq!(status, 200);
    let version: Value = serde_json::from_str(&body).unwrap();
    let semver = version["firecracker_version"].as_str().unwrap();
    let numbers: Vec<&str> = semver
        .split(['-', '+'])
        .next()
        .unwrap()
        .split('.')
        .collect();
    assert_eq!(numbers.len(), 3, "{semver}");
    assert!(numbers.iter().all(|n| n.parse::<u64>().is_ok()), "{semver}");
    assert_eq!(version["app_name"], "ember");
    assert_eq!(version["vmm_version"], info["vmm_version"]);

    let (_, body) = ember.api("GET", "/machine-config", "");
    let machine: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            machine["vcpu_count"].as_u64(),
            machine["mem_size_mib"].as_u64()
        ),
        (Some(1), Some(128))
    );
    assert_eq!(machine["huge_pages"], "None", "{machine}");

    ember.ok("PATCH", "/machine-config", r#"{"mem_size_mib": 512}"#);
    let (_, body) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["machine-config"]["mem_size_mib"], 512);
    assert_eq!(config["machine-config"]["vcpu_count"], 1);
    // Every key Firecracker writes is there, `null` or empty while unset.
    for key in ["balloon", "boot-source", "cpu-config", "logger", "metrics"] {
        assert_eq!(config.get(key), Some(&Value::Null), "{key}: {config}");
    }
    for key in ["mmds-config", "vsock", "entropy", "memory-hotplug"] {
        assert_eq!(config.get(key), Some(&Value::Null), "{key}: {config}");
    }
    for key in ["drives", "network-interfaces", "pmem"] {
        assert_eq!(config.get(key), Some(&json!([])), "{key}: {config}");
    }
}

/// What Firecracker's `GET /vm/config` prints for a VM with one drive and a
/// logger, nulls and all, with `kernel` as its kernel and `disk` as its drive.
fn firecracker_export(kernel: &str, disk: &str) -> Value {
    json!({
        "balloon": null,
        "drives": [{"drive_id": "rootfs", "partuuid": null, "is_root_device": true,
                    "cache_type": "Unsafe", "is_read_only": null, "path_on_host": disk,
                    "rate_limiter": null, "io_engine": "Sync", "socket": null}],
        "boot-source": {"kernel_image_path": kernel, "initrd_path": null,
                        "boot_args": "console=ttyS0"},
        "cpu-config": null,
        "logger": {"log_path": null, "level": "Warning", "show_level": null,
                   "show_log_origin": null, "module": null},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false,
                           "track_dirty_pages": false, "huge_pages": "None"},
        "metrics": null,
        "mmds-config": null,
        "network-interfaces": [],
        "vsock": null,
        "entropy": {"rate_limiter": null},
        "pmem": [],
        "memory-hotplug": null
    })
}

#[test]
fn a_firecracker_export_loads_and_names_what_ember_lacks() {
    require_kvm();
    let dir = TempDir::new("export");
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let kernel = artifact("test-pvh");
    let export = firecracker_export(kernel.to_str().unwrap(), disk.to_str().unwrap());
    let path = dir.path("vm.json");
    let path_str = path.to_str().unwrap();
    std::fs::write(&path, export.to_string()).unwrap();
    let mut ember = Ember::spawn(&["--no-api", "--config-file", path_str], None);
    assert_eq!(ember.wait_exit(Duration::from_secs(20)).code(), Some(0));

    for (key, value) in [
        (
            "pmem",
            json!([{"id": "p0", "path_on_host": "x", "root_device": false}]),
        ),
        ("memory-hotplug", json!({"total_size_mib": 1024})),
        ("cpu-config", json!({"cpuid_modifiers": []})),
    ] {
        let mut config = export.clone();
        config[key] = value;
        std::fs::write(&path, config.to_string()).unwrap();
        let (code, _, stderr) = run_ember(&["--no-api", "--config-file", path_str]);
        assert_eq!(code, Some(152), "{key}: {stderr}");
        assert!(stderr.contains(&format!("'{key}'")), "{key}: {stderr}");
    }
    let mut config = export.clone();
    config["serial"] = json!({"serial_out_path": "x"});
    std::fs::write(&path, config.to_string()).unwrap();
    let (code, _, stderr) = run_ember(&["--no-api", "--config-file", path_str]);
    assert_eq!(code, Some(152), "{stderr}");
    assert!(stderr.contains("`serial`"), "{stderr}");
}

#[test]
fn put_logger_keeps_the_settings_a_request_leaves_out() {
    let dir = TempDir::new("logger");
    let log = dir.path("ember.log");
    let ember = Ember::with_api(&dir, &[]);
    let first = json!({"log_path": log.to_str().unwrap(), "level": "Warning", "show_level": true});
    ember.ok("PUT", "/logger", &first.to_string());
    ember.ok("PUT", "/logger", r#"{"show_log_origin": true}"#);
    let (status, _) = ember.api("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    assert_eq!(status, 400, "nothing to reset before boot");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("PUT /actions failed"))
        .unwrap_or_else(|| panic!("no line for the bad request in {text:?}"));
    assert!(line.contains(" :WARN"), "the level went missing: {line}");
    assert!(line.contains(".rs:"), "the origin is not shown: {line}");
    let (_, body) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["logger"]["show_level"], true, "{config}");
    assert_eq!(config["logger"]["level"], "Warning", "{config}");
}

#[test]
fn bad_requests_get_a_400_that_says_why() {
    let dir = TempDir::new("bad");
    let ember = Ember::with_api(&dir, &[]);
    rejects(
        &ember,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "k", "extra": 1}"#,
        "unknown field `extra`",
    );
    rejects(
        &ember,
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path": "#,
        "invalid request body",
    );
    rejects(
        &ember,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 33, "mem_size_mib": 128}"#,
        "vcpu_count",
    );
    rejects(
        &ember,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 0, "mem_size_mib": 128}"#,
        "vcpu_count",
    );
    rejects(
        &ember,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 0}"#,
        "mem_size_mib",
    );
    rejects(
        &ember,
        "PUT",
        "/drives/a",
        r#"{"drive_id": "b", "path_on_host": "x", "is_root_device": false}"#,
        "does not match",
    );
    rejects(
        &ember,
        "PUT",
        "/drives/a",
        &json!({"drive_id": "a", "path_on_host": dir.path("missing.img"), "is_root_device": false})
            .to_string(),
        "missing.img",
    );
    rejects(
        &ember,
        "PUT",
        "/actions",
        r#"{"action_type": "Launch"}"#,
        "Launch",
    );
    rejects(
        &ember,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        "boot-source",
    );
    rejects(
        &ember,
        "PUT",
        "/actions",
        r#"{"action_type": "SendCtrlAltDel"}"#,
        "before starting",
    );
    rejects(
        &ember,
        "PATCH",
        "/vm",
        r#"{"state": "Paused"}"#,
        "before starting",
    );
    rejects(
        &ember,
        "GET",
        "/no/such/thing",
        "",
        "invalid request method and/or path",
    );
    rejects(
        &ember,
        "PUT",
        "/balloon",
        "{}",
        "missing field `amount_mib`",
    );
    rejects(
        &ember,
        "PUT",
        "/balloon",
        r#"{"amount_mib": 4096, "deflate_on_oom": false}"#,
        "more than the guest's memory (128 MiB)",
    );
    rejects(
        &ember,
        "PATCH",
        "/balloon/hinting/start",
        "{}",
        "no balloon device",
    );
    rejects(&ember, "GET", "/balloon", "", "no balloon device");
    rejects(
        &ember,
        "PUT",
        "/network-interfaces/eth0",
        "{}",
        "missing field `iface_id`",
    );
    rejects(
        &ember,
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path": "s", "mem_file_path": "m"}"#,
        "not supported before starting",
    );
    rejects(
        &ember,
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap0"}, {"iface_id": "eth0", "host_dev_name": "tap1"}]}"#,
        "names interface 'eth0' twice",
    );

    rejects(&ember, "PATCH", "/machine-config", "{}", "changes nothing");
    // serde would read an array as the fields in order: 2 vCPUs, 256 MiB.
    rejects(
        &ember,
        "PUT",
        "/machine-config",
        "[2, 256]",
        "must be a JSON object, not an array",
    );
    let (_, body) = ember.api("GET", "/machine-config", "");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["vcpu_count"],
        1
    );

    let huge = format!(r#"{{"kernel_image_path": "{}"}}"#, "k".repeat(60_000));
    rejects(
        &ember,
        "PUT",
        "/boot-source",
        &huge,
        "larger than the limit of 51200 bytes",
    );

    // A root device may exist only once.
    let a = dir.disk("a.img", 8, b"");
    let b = dir.disk("b.img", 8, b"");
    ember.ok(
        "PUT",
        "/drives/a",
        &json!({"drive_id": "a", "path_on_host": a, "is_root_device": true}).to_string(),
    );
    rejects(
        &ember,
        "PUT",
        "/drives/b",
        &json!({"drive_id": "b", "path_on_host": b, "is_root_device": true}).to_string(),
        "root block device already exists",
    );
}

#[test]
fn missing_or_malformed_kernels_are_named_in_the_error() {
    let dir = TempDir::new("kernel");
    let ember = Ember::with_api(&dir, &[]);
    let missing = dir.path("nope.elf");
    rejects(
        &ember,
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": missing}).to_string(),
        "nope.elf",
    );

    require_kvm();
    let garbage = dir.path("garbage.bin");
    std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
    ember.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": garbage}).to_string(),
    );
    let (status, reply) = ember.api("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(status, 400);
    let message = fault(&reply);
    assert!(
        message.contains("garbage.bin") && message.contains("neither a valid ELF nor a bzImage"),
        "{message}"
    );
    let (_, info) = ember.api("GET", "/", "");
    assert!(
        info.contains("Not started"),
        "a failed start leaves nothing half-started: {info}"
    );
}

#[test]
fn configuration_is_refused_after_start_and_start_only_happens_once() {
    require_kvm();
    let dir = TempDir::new("after-start");
    let mut ember = Ember::with_api(&dir, &[]);
    let boot =
        json!({"kernel_image_path": artifact("test-elf"), "boot_args": "console=ttyS0 ember.echo"})
            .to_string();
    ember.ok("PUT", "/boot-source", &boot);
    let first = dir.disk("first.img", 8, b"");
    let second = dir.disk("second.img", 16, b"");
    ember.ok(
        "PUT",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": first, "is_root_device": false}).to_string(),
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("echo: ready", Duration::from_secs(20));
    rejects(
        &ember,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        "already running",
    );
    rejects(&ember, "PUT", "/boot-source", &boot, "after starting");
    rejects(
        &ember,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
        "after starting",
    );
    rejects(
        &ember,
        "PATCH",
        "/machine-config",
        r#"{"vcpu_count": 2}"#,
        "after starting",
    );
    let (_, info) = ember.api("GET", "/", "");
    assert!(info.contains(r#""state":"Running""#), "{info}");

    // A running drive can be pointed at another file, and the configuration says so.
    rejects(
        &ember,
        "PATCH",
        "/drives/nope",
        r#"{"drive_id": "nope", "path_on_host": "x"}"#,
        "no drive with id 'nope'",
    );
    rejects(
        &ember,
        "PATCH",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": dir.path("missing.img")}).to_string(),
        "missing.img",
    );
    ember.ok(
        "PATCH",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": second}).to_string(),
    );
    let (_, config) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["drives"][0]["path_on_host"], json!(second));
    ember.write_stdin(b"reset\n");
    assert_eq!(ember.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

/// A request read whole is carried out even when its client hangs up before
/// the answer, as with Firecracker's synchronous API server: configuration
/// lands and InstanceStart starts the guest.
#[test]
fn a_request_is_carried_out_when_its_client_hangs_up() {
    require_kvm();
    let dir = TempDir::new("hang-up");
    let mut ember = Ember::with_api(&dir, &[]);
    let socket = dir.path("api.sock");
    let boot =
        json!({"kernel_image_path": artifact("test-elf"), "boot_args": "console=ttyS0 ember.echo"})
            .to_string();
    send_and_hang_up(&socket, "PUT", "/boot-source", &boot);
    ember.ok("PUT", "/mmds", "{}");
    let keys = 100;
    for key in 0..keys {
        send_and_hang_up(
            &socket,
            "PATCH",
            "/mmds",
            &json!({ format!("k{key}"): key }).to_string(),
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, mmds) = ember.api("GET", "/mmds", "");
        let mmds: Value = serde_json::from_str(&mmds).unwrap();
        if (0..keys).all(|key| mmds[format!("k{key}")] == json!(key)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "MMDS holds only {mmds}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_, config) = ember.api("GET", "/vm/config", "");
    assert!(config.contains("ember.echo"), "{config}");
    send_and_hang_up(
        &socket,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    );
    ember.expect_line("echo: ready", Duration::from_secs(20));
    ember.write_stdin(b"reset\n");
    assert_eq!(ember.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

fn run_ember(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(ember_bin())
        .args(args)
        .output()
        .expect("run ember");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn command_line_errors_are_one_clear_line_and_nonzero() {
    for args in [
        &["--frobnicate"][..],
        &["--api-sock"],
        &["--level", "loud"],
        &["--id", "not valid!"],
        &["--no-api"],
        &["--start-time-us", "yesterday"],
        &["--http-api-max-payload-size", "-1"],
    ] {
        let (code, _, stderr) = run_ember(args);
        assert_ne!(code, Some(0), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("ember: "), "{args:?}: {stderr}");
    }
    let (code, stdout, _) = run_ember(&["--version"]);
    assert_eq!((code, stdout.starts_with("ember v")), (Some(0), true));
    let (code, stdout, _) = run_ember(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--api-sock",
        "--config-file",
        "--no-api",
        "--id",
        "--level",
        "--log-path",
        "--boot-timer",
        "--start-time-us",
        "--http-api-max-payload-size",
        "--module",
        "--snapshot-version",
        "--describe-snapshot",
        "--enable-pci",
    ] {
        assert!(stdout.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn the_api_payload_limit_is_a_flag() {
    let dir = TempDir::new("payload");
    let ember = Ember::with_api(&dir, &["--http-api-max-payload-size", "100"]);
    let boot = |name: &str| json!({"kernel_image_path": name}).to_string();
    rejects(
        &ember,
        "PUT",
        "/boot-source",
        &boot(&"k".repeat(100)),
        "larger than the limit of 100 bytes",
    );
    // Under the limit, the body is read (and the missing kernel named).
    rejects(&ember, "PUT", "/boot-source", &boot("k"), "'k'");
    // The metadata store is capped at the same size unless told otherwise:
    // two requests under the limit, whose merge is over it.
    ember.ok("PUT", "/mmds", &json!({"a": "x".repeat(80)}).to_string());
    let patch = json!({"b": "y".repeat(40)}).to_string();
    rejects(&ember, "PATCH", "/mmds", &patch, "over its limit of 100");
}

/// CLOCK_MONOTONIC in microseconds, as Firecracker's jailer passes it in `--start-time-us`.
fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    assert_eq!(rc, 0);
    u64::try_from(now.tv_sec).unwrap() * 1_000_000 + u64::try_from(now.tv_nsec).unwrap() / 1_000
}

#[test]
fn firecrackers_jailer_flags_are_taken_and_the_start_up_time_logged() {
    let dir = TempDir::new("start-time");
    for (name, module) in [("all", None), ("api", Some("ember::api"))] {
        let log = dir.path(&format!("{name}.log"));
        let start = (monotonic_us() - 5_000).to_string();
        let mut args = vec![
            "--start-time-us",
            &start,
            "--start-time-cpu-us",
            "1000",
            "--parent-cpu-time-us",
            "2000",
            "--level",
            "Info",
            "--log-path",
            log.to_str().unwrap(),
        ];
        if let Some(module) = module {
            args.extend(["--module", module]);
        }
        let sub = TempDir::new(&format!("start-time-{name}"));
        let ember = Ember::with_api(&sub, &args);
        // Refused by the controller, so the API thread logs a warning.
        let (status, _) = ember.api("PATCH", "/vm", r#"{"state": "Paused"}"#);
        assert_eq!(status, 400);
        let text = std::fs::read_to_string(&log).unwrap();
        let failed = text.contains("API request PATCH /vm failed");
        let start_up = text
            .lines()
            .find_map(|l| l.split("Process start-up time = ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap().parse::<u64>().unwrap());
        match module {
            None => {
                // At least the 5 ms the start time was set back, and not 10 s more.
                let us = start_up.unwrap_or_else(|| panic!("no start-up time in {text}"));
                assert!((5_000..10_000_000).contains(&us), "{us} us");
                assert!(failed, "{text}");
            }
            // Only the API's records pass the filter: the start-up line is main's.
            Some(_) => assert_eq!((start_up, failed), (None, true), "{text}"),
        }
    }
}

#[test]
fn snapshot_versions_are_printed() {
    let (code, stdout, _) = run_ember(&["--snapshot-version"]);
    assert_eq!(code, Some(0));
    let written = stdout.trim().to_string();
    assert_eq!(
        written,
        format!("v{}.0.0", ember_snapshot::format::FORMAT_VERSION)
    );

    let dir = TempDir::new("describe");
    let state = dir.path("fn.snap");
    let mut bytes = Vec::new();
    ember_snapshot::format::save(&mut bytes, &"state").unwrap();
    std::fs::write(&state, &bytes).unwrap();
    let (code, stdout, _) = run_ember(&["--describe-snapshot", state.to_str().unwrap()]);
    assert_eq!((code, stdout.trim()), (Some(0), written.as_str()));

    std::fs::write(&state, b"not a snapshot").unwrap();
    let (code, _, stderr) = run_ember(&["--describe-snapshot", state.to_str().unwrap()]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("fn.snap") && stderr.contains("not an ember snapshot"),
        "{stderr}"
    );
    let (code, _, stderr) = run_ember(&["--describe-snapshot", "/no/such/file"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("/no/such/file"), "{stderr}");
}

#[test]
fn bad_config_files_are_refused_with_the_reason() {
    let dir = TempDir::new("bad-config");
    let path = dir.path("vm.json");
    let path_str = path.to_str().unwrap();
    for (content, needle) in [
        ("{not json", "invalid config file"),
        (
            r#"{"boot-source": {"kernel_image_path": "/no/such/kernel"}}"#,
            "/no/such/kernel",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 99, "mem_size_mib": 128}}"#,
            "vcpu_count",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "k"}, "network-interfaces": [{"iface_id": "eth0"}]}"#,
            "host_dev_name",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
            "boot-source",
        ),
    ] {
        std::fs::write(&path, content).unwrap();
        let (code, _, stderr) = run_ember(&["--no-api", "--config-file", path_str]);
        assert_eq!(code, Some(152), "{content}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{content}: {stderr:?} lacks {needle:?}"
        );
    }
}

#[test]
fn log_path_and_boot_timer_record_the_boot() {
    require_kvm();
    let dir = TempDir::new("log");
    let log = dir.path("ember.log");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-pvh"), "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}
    });
    let config_path = dir.path("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut ember = Ember::spawn(
        &[
            "--no-api",
            "--config-file",
            config_path.to_str().unwrap(),
            "--boot-timer",
            "--level",
            "Info",
            "--log-path",
            log.to_str().unwrap(),
            "--id",
            "timed",
        ],
        None,
    );
    assert_eq!(ember.wait_exit(Duration::from_secs(20)).code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[timed:"), "{text}");
    assert!(text.contains("Guest-boot-time ="), "{text}");
}

#[test]
fn the_mmds_data_store_starts_from_a_file_and_takes_puts_and_patches() {
    require_kvm();
    let dir = TempDir::new("mmds");
    let metadata = dir.path("metadata.json");
    std::fs::write(
        &metadata,
        r#"{"latest": {"meta-data": {"instance-id": "i-1"}}}"#,
    )
    .unwrap();
    let ember = Ember::with_api(
        &dir,
        &[
            "--metadata",
            metadata.to_str().unwrap(),
            "--mmds-size-limit",
            "100",
        ],
    );
    let mmds = |ember: &Ember| -> Value {
        let (status, body) = ember.api("GET", "/mmds", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(
        mmds(&ember),
        json!({"latest": {"meta-data": {"instance-id": "i-1"}}})
    );
    ember.ok(
        "PATCH",
        "/mmds",
        r#"{"latest": {"user-data": "hello", "meta-data": {"instance-id": null}}}"#,
    );
    assert_eq!(
        mmds(&ember),
        json!({"latest": {"meta-data": {}, "user-data": "hello"}})
    );
    let big = json!({"blob": "x".repeat(200)}).to_string();
    rejects(&ember, "PUT", "/mmds", &big, "--mmds-size-limit");
    assert_eq!(mmds(&ember)["latest"]["user-data"], json!("hello"));
    rejects(
        &ember,
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces": ["eth0"]}"#,
        "no network interface with id 'eth0'",
    );
    ember.ok("PUT", "/mmds", r#"{"fresh": 1}"#);
    assert_eq!(mmds(&ember), json!({"fresh": 1}));
}

#[test]
fn a_metadata_file_ember_cannot_use_stops_it_with_the_reason() {
    require_kvm();
    let dir = TempDir::new("mmds-bad");
    let socket = dir.path("api.sock");
    let not_json = dir.path("not.json");
    std::fs::write(&not_json, "{not json").unwrap();
    let missing = dir.path("missing.json");
    for (file, reason) in [
        (&not_json, "invalid metadata file"),
        (&missing, "cannot read metadata file"),
    ] {
        let (code, _, stderr) = run_ember(&[
            "--api-sock",
            socket.to_str().unwrap(),
            "--metadata",
            file.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(152), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
        assert!(!socket.exists(), "the API socket is removed");
    }
}
