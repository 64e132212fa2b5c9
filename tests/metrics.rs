//! Metrics as Firecracker writes them (one JSON object per flush, to a file
//! or a named pipe) and as Prometheus reads them (`GET /metrics`), counted
//! by real guests.

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use ember_test_support::{artifact, require_kvm, Ember, TempDir};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(20);

/// The last line of the metrics file at `path`, as JSON.
fn last_line(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().expect("a line")).unwrap()
}

#[test]
fn a_fatal_signal_or_a_seccomp_fault_is_the_last_line() {
    let dir = TempDir::new("metrics-death");
    let metrics = dir.path("metrics.json");
    let metrics_arg = metrics.to_str().unwrap();
    let ember = Ember::with_api(&dir, &["--metrics-path", metrics_arg]);
    ember.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    assert_eq!(last_line(&metrics)["signals"]["sighup"], 0);
    let pid = i32::try_from(ember.pid()).unwrap();
    // SAFETY: kill(2) on the child's pid, which the test owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let mut ember = ember;
    let status = ember.wait_exit(BOOT);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGHUP),
        "ember ends as SIGHUP would end it"
    );
    assert_eq!(last_line(&metrics), json!({"signals": {"sighup": 1}}));
    assert!(
        ember.stderr().contains("ember: caught SIGHUP; exiting"),
        "{}",
        ember.stderr()
    );

    let metrics = dir.path("seccomp.json");
    let mut ember = Ember::spawn(
        &[
            "--api-sock",
            dir.path("selftest.sock").to_str().unwrap(),
            "--metrics-path",
            metrics.to_str().unwrap(),
            "--seccomp-selftest",
            "vmm",
        ],
        None,
    );
    assert_eq!(ember.wait_exit(BOOT).signal(), Some(libc::SIGSYS));
    assert_eq!(last_line(&metrics), json!({"seccomp": {"num_faults": 1}}));
}

#[test]
fn a_booted_guest_leaves_its_counts_in_the_last_line_at_exit() {
    require_kvm();
    let dir = TempDir::new("metrics-exit");
    let root = dir.disk("root.img", 64, b"the root drive");
    let metrics = dir.path("metrics.json");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-pvh"), "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true,
                    "is_read_only": false, "cache_type": "Writeback"}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}
    });
    let config_path = dir.path("vm.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut ember = Ember::spawn(
        &[
            "--no-api",
            "--config-file",
            config_path.to_str().unwrap(),
            "--metrics-path",
            metrics.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().expect("a line")).unwrap();
    let rootfs = &last["block_rootfs"];
    // The test guest reads sectors 0 and 1 and past the end, writes sector 1, flushes.
    assert!(rootfs["read_count"].as_u64().unwrap() >= 2, "{rootfs}");
    assert_eq!(rootfs["write_count"], 1, "{rootfs}");
    assert_eq!(rootfs["write_bytes"], 512, "{rootfs}");
    assert_eq!(rootfs["flush_count"], 1, "{rootfs}");
    assert_eq!(
        rootfs["execute_fails"], 1,
        "the read past the end: {rootfs}"
    );
    assert_eq!(last["block"]["write_count"], 1);
    assert!(last["uart"]["write_count"].as_u64().unwrap() > 100);
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 100);
    assert!(last["vcpu"]["exit_mmio_write"].as_u64().unwrap() > 0);
    assert_eq!(last["put_api_requests"]["drive_count"], 1);
    assert_eq!(last["put_api_requests"]["drive_fails"], 0);
}

/// Reads the lines written into the named pipe at `path`.
fn pipe_lines(path: &Path) -> Receiver<Value> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path; mkfifo reads it and keeps nothing.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let (lines, received) = channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let pipe = std::fs::File::open(path).expect("open the pipe");
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if lines
                .send(serde_json::from_str(&line).expect("JSON"))
                .is_err()
            {
                break;
            }
        }
    });
    received
}

fn flush(ember: &Ember, lines: &Receiver<Value>) -> Value {
    ember.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    lines.recv_timeout(BOOT).expect("a line in the pipe")
}

#[test]
fn invocations_are_counted_per_flush_in_a_pipe_and_in_total_for_prometheus() {
    require_kvm();
    let dir = TempDir::new("metrics-fn");
    let ember = Ember::with_api(&dir, &[]);
    let (status, body) = ember.api("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    assert_eq!(status, 400);
    assert!(body.contains("not configured"), "{body}");
    let fifo = dir.path("metrics.fifo");
    let lines = pipe_lines(&fifo);
    let put = json!({ "metrics_path": fifo }).to_string();
    ember.ok("PUT", "/metrics", &put);
    let (status, body) = ember.api("PUT", "/metrics", &put);
    assert_eq!(status, 400);
    assert!(body.contains("already configured"), "{body}");

    ember.put_boot_source(&artifact("unikernel-echo"), "console=ttyS0");
    let vsock = json!({"guest_cid": 3, "uds_path": dir.path("v.sock")});
    ember.ok("PUT", "/vsock", &vsock.to_string());
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("EMBER-FN: ready on port", BOOT);
    for input in [&b"one"[..], b"two", b"three"] {
        assert_eq!(ember.invoke(input), (200, input.to_vec()));
    }
    let first = flush(&ember, &lines);
    assert_eq!(first["ember"]["invocations"], 3, "{}", first["ember"]);
    assert_eq!(first["ember"]["invocation_errors"], 0);
    assert!(first["ember"]["latency_p50_us"].as_u64().unwrap() > 0);
    // The guest accepts the connection, then answers each invocation.
    assert!(
        first["vsock"]["tx_packets_count"].as_u64().unwrap() >= 4,
        "{}",
        first["vsock"]
    );
    let put = &first["put_api_requests"];
    assert_eq!(
        (&put["metrics_count"], &put["metrics_fails"]),
        (&json!(2), &json!(1))
    );
    // The refused FlushMetrics and InstanceStart; this flush counts in the next line.
    assert_eq!(
        (&put["actions_count"], &put["actions_fails"]),
        (&json!(2), &json!(1))
    );

    assert_eq!(ember.invoke(b"four"), (200, b"four".to_vec()));
    let second = flush(&ember, &lines);
    assert_eq!(second["ember"]["invocations"], 1, "only what came since");
    assert_eq!(second["put_api_requests"]["actions_count"], 1);

    let (status, text) = ember.api("GET", "/metrics", "");
    assert_eq!(status, 200);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let total = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(total("ember_ember_invocations_total"), 4.0);
    assert!(total("ember_vcpu_exit_mmio_write_total") > 0.0);
    let histogram = scrape
        .samples
        .iter()
        .find(|s| s.metric == "ember_invocation_latency_us")
        .map(|s| &s.value);
    let Some(prometheus_parse::Value::Histogram(buckets)) = histogram else {
        panic!("no latency histogram in:\n{text}");
    };
    let all = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert_eq!(all, 4.0, "every answered invocation is in the histogram");
}
