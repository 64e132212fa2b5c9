//! Unikernel functions: boot an example function, invoke it over the API, and
//! check each output against what the test computes on the host.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use ember_test_support::{artifact, require_kvm, Ember, TempDir};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(20);
const READY: &str = "EMBER-FN: ready on port 1024";

/// Starts function `name` (PVH unless `linux64`) with a vsock, through the API.
fn start_via_api(dir: &TempDir, name: &str, linux64: bool) -> Ember {
    let kernel = artifact(&if linux64 {
        format!("unikernel-{name}-linux64")
    } else {
        format!("unikernel-{name}")
    });
    Ember::function_via_api(dir, &kernel, json!({"vcpu_count": 1, "mem_size_mib": 256}))
}

/// Starts function `name` from a config file, with ember's API on for invocations.
fn start_via_config(dir: &TempDir, name: &str, linux64: bool) -> Ember {
    require_kvm();
    let kernel = artifact(&if linux64 {
        format!("unikernel-{name}-linux64")
    } else {
        format!("unikernel-{name}")
    });
    let config = json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "vsock": {"guest_cid": 3, "uds_path": dir.path("v.sock")},
        "function": {"vsock_port": 1024, "timeout_ms": 20000}
    });
    let path = dir.path("fn.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let socket = dir.path("api.sock");
    let ember = Ember::spawn(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--config-file",
            path.to_str().unwrap(),
        ],
        Some(&socket),
    );
    ember.expect_line(READY, BOOT);
    ember
}

fn payloads() -> Vec<Vec<u8>> {
    let big: Vec<u8> = (0..16u32 << 20)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 13) & 0xff) as u8)
        .collect();
    vec![Vec::new(), b"hello, function".to_vec(), big]
}

#[test]
fn echo_answers_through_the_api_in_both_boot_protocols() {
    for linux64 in [false, true] {
        let dir = TempDir::new("fn-echo");
        let ember = start_via_api(&dir, "echo", linux64);
        for payload in payloads() {
            let (status, body) = ember.invoke(&payload);
            assert_eq!(status, 200, "{} bytes", payload.len());
            assert!(
                body == payload,
                "echo of {} bytes came back different ({} bytes)",
                payload.len(),
                body.len()
            );
        }
    }
}

#[test]
fn sha256_matches_the_host_from_a_config_file_in_both_boot_protocols() {
    for linux64 in [false, true] {
        let dir = TempDir::new("fn-sha");
        let ember = start_via_config(&dir, "sha256", linux64);
        for payload in payloads() {
            let (status, body) = ember.invoke(&payload);
            assert_eq!(status, 200);
            assert_eq!(
                body,
                Sha256::digest(&payload).to_vec(),
                "{} bytes",
                payload.len()
            );
        }
    }
}

#[test]
fn failing_and_panicking_functions_give_502_and_the_next_call_works() {
    let dir = TempDir::new("fn-faulty");
    let ember = start_via_api(&dir, "faulty", false);
    let (status, body) = ember.invoke(b"panic");
    assert_eq!(status, 502);
    let fault: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        fault["fault_message"]
            .as_str()
            .unwrap()
            .contains("faulty: asked to panic"),
        "{fault}"
    );
    let (status, body) = ember.invoke(b"error");
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&body).contains("faulty: asked to fail"));
    assert_eq!(ember.invoke(b"abc"), (200, b"cba".to_vec()));
}

#[test]
fn a_guest_that_stops_answering_gives_504() {
    let dir = TempDir::new("fn-hang");
    let ember = start_via_api(&dir, "faulty", false);
    ember.ok(
        "PUT",
        "/function",
        r#"{"vsock_port": 1024, "timeout_ms": 500}"#,
    );
    let (status, body) = ember.invoke(b"hang");
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    let (status, _) = ember.api("GET", "/", "");
    assert_eq!(status, 200, "ember keeps serving");
}

#[test]
fn invocations_need_a_running_vm_with_a_vsock() {
    let dir = TempDir::new("fn-errors");
    let ember = Ember::with_api(&dir, &[]);
    let (status, body) = ember.invoke(b"x");
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("before starting"));
}

#[test]
fn host_initiated_vsock_connection_carries_data_both_ways() {
    let dir = TempDir::new("vsock-host");
    let _ember = start_via_api(&dir, "echo", false);
    let mut stream = UnixStream::connect(dir.path("v.sock")).unwrap();
    stream.write_all(b"CONNECT 1024\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "{line}");
    for message in [&b"first"[..], b"second, longer message"] {
        stream
            .write_all(&u32::try_from(message.len()).expect("short").to_le_bytes())
            .unwrap();
        stream.write_all(message).unwrap();
        let mut head = [0u8; 5];
        reader.read_exact(&mut head).unwrap();
        assert_eq!(head[0], 0);
        let mut body = vec![0u8; u32::from_le_bytes(head[1..].try_into().unwrap()) as usize];
        reader.read_exact(&mut body).unwrap();
        assert_eq!(body, message);
    }
    // Nobody listens on port 9: the guest resets, the host sees the socket close.
    let mut refused = UnixStream::connect(dir.path("v.sock")).unwrap();
    refused.write_all(b"CONNECT 9\n").unwrap();
    let mut rest = Vec::new();
    refused.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn guest_initiated_vsock_connection_reaches_the_host_listener() {
    let dir = TempDir::new("vsock-guest");
    let ember = start_via_api(&dir, "faulty", false);
    let listener = UnixListener::bind(format!("{}_5000", dir.path("v.sock").display())).unwrap();
    let host = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap();
        stream.write_all(b"host says hi").unwrap();
        buf[..n].to_vec()
    });
    let (status, body) = ember.invoke(b"dial:5000:guest says hi");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"host says hi");
    assert_eq!(host.join().unwrap(), b"guest says hi");
}

#[test]
fn the_vsock_socket_is_gone_after_a_clean_exit() {
    require_kvm();
    let dir = TempDir::new("vsock-exit");
    let uds = dir.path("v.sock");
    let config = json!({
        "boot-source": {"kernel_image_path": artifact("test-pvh"), "boot_args": "console=ttyS0"},
        "vsock": {"guest_cid": 3, "uds_path": uds}
    });
    let mut ember = Ember::with_config(&dir, &config);
    ember.expect_line("guest: reset", BOOT);
    assert_eq!(ember.wait_exit(BOOT).code(), Some(0));
    assert!(!uds.exists(), "ember left {} behind", uds.display());
}

/// Boots the `random` function, with an entropy device configured by the
/// body `entropy`, if any.
fn random_function(dir: &TempDir, entropy: Option<&str>) -> Ember {
    require_kvm();
    let ember = Ember::with_api(dir, &[]);
    ember.put_boot_source(&artifact("unikernel-random"), "console=ttyS0");
    ember.ok(
        "PUT",
        "/vsock",
        &json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
    );
    if let Some(body) = entropy {
        ember.ok("PUT", "/entropy", body);
    }
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line(READY, BOOT);
    ember
}

#[test]
fn random_gets_fresh_bytes_from_the_entropy_device_through_getrandom() {
    let dir = TempDir::new("fn-random");
    let ember = random_function(&dir, Some("{}"));
    let (status, first) = ember.invoke(b"32");
    assert_eq!((status, first.len()), (200, 32));
    let (status, second) = ember.invoke(b"32");
    assert_eq!(status, 200);
    assert_ne!(first, second, "two draws of 32 bytes came out the same");
    let (status, big) = ember.invoke(b"1048576");
    assert_eq!((status, big.len()), (200, 1 << 20));
    let mut seen = [false; 256];
    big.iter().for_each(|&b| seen[usize::from(b)] = true);
    assert!(
        seen.iter().all(|&s| s),
        "1 MiB of random bytes lacks some byte values"
    );
    let (_, config) = ember.api("GET", "/vm/config", "");
    assert!(
        config.contains(r#""entropy":{"rate_limiter":null}"#),
        "{config}"
    );
    let (status, body) = ember.invoke(b"many");
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn without_an_entropy_device_random_says_what_is_missing() {
    let dir = TempDir::new("fn-no-random");
    let ember = random_function(&dir, None);
    let (status, body) = ember.invoke(b"8");
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("no entropy device"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

/// How long the `random` function takes for 1 MiB.
fn time_a_mebibyte(ember: &Ember) -> Duration {
    let start = Instant::now();
    let (status, bytes) = ember.invoke(b"1048576");
    assert_eq!((status, bytes.len()), (200, 1 << 20));
    start.elapsed()
}

#[test]
fn a_rate_limited_entropy_device_gives_no_more_than_its_limit() {
    let dir = TempDir::new("fn-random-limited");
    // 64 KiB per 100 ms: 640 KiB/s, starting with a full bucket.
    let limits = r#"{"rate_limiter": {"bandwidth": {"size": 65536, "refill_time": 100}}}"#;
    let limited = random_function(&dir, Some(limits));
    let free_dir = TempDir::new("fn-random-free");
    let free = random_function(&free_dir, Some(r#"{"rate_limiter": null}"#));
    // 1 MiB, the first 64 KiB from the bucket: at least 1.5 s at the limit.
    let floor = Duration::from_millis(1500);
    let limited_time = time_a_mebibyte(&limited);
    assert!(
        limited_time >= floor,
        "1 MiB in {limited_time:?} through a 640 KiB/s limit"
    );
    let free_time = time_a_mebibyte(&free);
    assert!(
        free_time < floor,
        "the unlimited device took {free_time:?}, as long as the limited one must"
    );
    let (_, config) = limited.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["entropy"]["rate_limiter"]["bandwidth"],
        json!({"size": 65536, "one_time_burst": null, "refill_time": 100})
    );
}
