//! Networking for functions: virtio-net on TAPs in namespaces the tests
//! make, the `fetch` function reaching HTTP servers on the TAPs' host
//! sides, MMDS answered by ember, clones on their own TAPs, and bad input.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ember_test_support::{artifact, cpu_ticks_over, require_kvm, Ember, KeepAlive, NetNs, TempDir};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(20);
const READY: &str = "EMBER-FN: ready on port 1024";
/// The guest's side of every test link; the host side is `.1`.
const GUEST_IP: &str = "10.0.0.2";
const HOST_IP: &str = "10.0.0.1";
const GUEST_MAC: &str = "06:00:0a:00:00:02";

fn boot_args(guest: &str, host: &str) -> String {
    format!("console=ttyS0 ip={guest}::{host}:255.255.255.0::eth0:off")
}

/// A body of `len` bytes that no two offsets of share by accident.
fn pattern(len: usize) -> Vec<u8> {
    (0..u32::try_from(len).expect("a test-sized body"))
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

/// Serves `GET /<name>` with the body `bodies` maps it to (404 otherwise),
/// one connection at a time, for as long as the test runs.
fn serve_http(listener: TcpListener, bodies: Vec<(&'static str, Vec<u8>)>) {
    let bodies = Arc::new(bodies);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let bodies = bodies.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("");
                let found = bodies.iter().find(|(p, _)| *p == path);
                let (status, body) = match found {
                    Some((_, body)) => ("200 OK", body.as_slice()),
                    None => ("404 Not Found", &b"no such page"[..]),
                };
                let mut out = &stream;
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(body);
            });
        }
    });
}

/// A network namespace with TAP `tap` whose host side is `HOST_IP/24`.
fn link(tag: &str, tap: &str) -> NetNs {
    let ns = NetNs::new(tag);
    ns.add_tap(tap, &format!("{HOST_IP}/24"), 1500);
    ns
}

/// Boots function `name` in `ns` on TAP `tap` through the API; `mmds` is
/// the MMDS configuration, if any, applied before InstanceStart.
fn boot_function(ns: &NetNs, dir: &TempDir, name: &str, tap: &str, mmds: Option<Value>) -> Ember {
    boot_function_at(ns, dir, name, tap, mmds, &boot_args(GUEST_IP, HOST_IP))
}

/// As [`boot_function`], with the guest's command line `boot_args` (its addressing).
fn boot_function_at(
    ns: &NetNs,
    dir: &TempDir,
    name: &str,
    tap: &str,
    mmds: Option<Value>,
    boot_args: &str,
) -> Ember {
    require_kvm();
    let socket = dir.path("api.sock");
    let ember = ns.spawn_ember(&["--api-sock", socket.to_str().unwrap()], Some(&socket));
    ember.put_boot_source(&artifact(&format!("unikernel-{name}")), boot_args);
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    ember.ok(
        "PUT",
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": tap, "guest_mac": GUEST_MAC}).to_string(),
    );
    if let Some(config) = mmds {
        ember.ok("PUT", "/mmds/config", &config.to_string());
    }
    ember.ok(
        "PUT",
        "/vsock",
        &json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line(READY, BOOT);
    ember
}

fn fetch(ember: &Ember, url: &str) -> (u16, Vec<u8>) {
    ember.invoke(url.as_bytes())
}

/// The `fetch` function on a link of its own whose host side serves `pages`
/// at `HOST_IP:8080`.
fn fetch_function(tag: &str, pages: Vec<(&'static str, Vec<u8>)>) -> (NetNs, TempDir, Ember) {
    let ns = link(tag, "tap0");
    serve_http(ns.listen(&format!("{HOST_IP}:8080")), pages);
    let dir = TempDir::new(&format!("net-{tag}"));
    let ember = boot_function(&ns, &dir, "fetch", "tap0", None);
    (ns, dir, ember)
}

#[test]
fn fetch_returns_exactly_the_bytes_a_host_side_server_sends() {
    let big = pattern(16 << 20);
    let small = b"hello from the host side".to_vec();
    let pages = vec![("/small", small.clone()), ("/big", big.clone())];
    let (_ns, _dir, ember) = fetch_function("fetch", pages);
    assert_eq!(
        fetch(&ember, &format!("http://{HOST_IP}:8080/small")),
        (200, small)
    );
    let (status, body) = fetch(&ember, &format!("http://{HOST_IP}:8080/big"));
    assert_eq!(status, 200);
    assert!(
        body == big,
        "16 MiB came back as {} different bytes",
        body.len()
    );
    let (status, body) = fetch(&ember, &format!("http://{HOST_IP}:8080/missing"));
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("404"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[test]
fn two_functions_on_two_taps_reach_only_their_own_host_side() {
    let (a, b) = (NetNs::new("iso-a"), NetNs::new("iso-b"));
    a.add_tap("tap0", "10.0.1.1/24", 1500);
    b.add_tap("tap0", "10.0.2.1/24", 1500);
    serve_http(a.listen("10.0.1.1:8080"), vec![("/", b"host a".to_vec())]);
    serve_http(b.listen("10.0.2.1:8080"), vec![("/", b"host b".to_vec())]);
    let (dir_a, dir_b) = (TempDir::new("net-iso-a"), TempDir::new("net-iso-b"));
    let fn_a = boot_function_at(
        &a,
        &dir_a,
        "fetch",
        "tap0",
        None,
        &boot_args("10.0.1.2", "10.0.1.1"),
    );
    let fn_b = boot_function_at(
        &b,
        &dir_b,
        "fetch",
        "tap0",
        None,
        &boot_args("10.0.2.2", "10.0.2.1"),
    );
    assert_eq!(
        fetch(&fn_a, "http://10.0.1.1:8080/"),
        (200, b"host a".to_vec())
    );
    assert_eq!(
        fetch(&fn_b, "http://10.0.2.1:8080/"),
        (200, b"host b".to_vec())
    );
    for (from, to) in [
        (&fn_a, "10.0.2.1"),
        (&fn_a, "10.0.2.2"),
        (&fn_b, "10.0.1.1"),
    ] {
        let (status, body) = fetch(from, &format!("http://{to}:8080/"));
        assert_eq!(
            status,
            502,
            "reached {to}: {}",
            String::from_utf8_lossy(&body)
        );
    }
}

/// Boots `metadata` with MMDS `version` on eth0 and the document `doc`.
fn metadata_function(ns: &NetNs, dir: &TempDir, version: &str, doc: &Value) -> Ember {
    let config = json!({"version": version, "network_interfaces": ["eth0"]});
    let ember = boot_function(ns, dir, "metadata", "tap0", Some(config));
    ember.ok("PUT", "/mmds", &doc.to_string());
    ember
}

fn read_mmds(ember: &Ember, input: &str) -> (u16, String) {
    let (status, body) = ember.invoke(input.as_bytes());
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn metadata_reads_mmds_over_v2_tokens_and_sees_patches() {
    let ns = link("mmds2", "tap0");
    let dir = TempDir::new("net-mmds2");
    let doc = json!({"latest": {"meta-data": {"instance-id": "i-0123", "tags": {"a": "1"}}}});
    let ember = metadata_function(&ns, &dir, "V2", &doc);
    assert_eq!(
        read_mmds(&ember, "/latest/meta-data/instance-id"),
        (200, "i-0123".into())
    );
    assert_eq!(
        read_mmds(&ember, "/latest/meta-data/"),
        (200, "instance-id\ntags/".into())
    );
    ember.ok(
        "PATCH",
        "/mmds",
        r#"{"latest": {"meta-data": {"instance-id": "i-4567"}}}"#,
    );
    assert_eq!(
        read_mmds(&ember, "/latest/meta-data/instance-id"),
        (200, "i-4567".into())
    );
    let (status, body) = read_mmds(&ember, "token:not-a-token:/latest/meta-data/instance-id");
    assert_eq!(status, 502);
    assert!(body.contains("mmds: 401"), "{body}");
    let (status, body) = read_mmds(&ember, "v1:/latest/meta-data/instance-id");
    assert_eq!(status, 502, "V2 needs a token");
    assert!(body.contains("mmds: 401"), "{body}");
    // A token is good for its lifetime only.
    let (status, token) = read_mmds(&ember, "new-token:1");
    assert_eq!(status, 200, "{token}");
    let with_token = format!("token:{token}:/latest/meta-data/instance-id");
    assert_eq!(read_mmds(&ember, &with_token), (200, "i-4567".into()));
    std::thread::sleep(Duration::from_millis(1100));
    let (status, body) = read_mmds(&ember, &with_token);
    assert_eq!(status, 502, "an expired token");
    assert!(body.contains("mmds: 401"), "{body}");
}

#[test]
fn metadata_reads_mmds_over_v1_without_a_token() {
    let ns = link("mmds1", "tap0");
    let dir = TempDir::new("net-mmds1");
    let ember = metadata_function(&ns, &dir, "V1", &json!({"user-data": "hello"}));
    assert_eq!(read_mmds(&ember, "v1:/user-data"), (200, "hello".into()));
    let (status, body) = read_mmds(&ember, "v1:/no/such/key");
    assert_eq!(status, 502);
    assert!(body.contains("mmds: 404"), "{body}");
}

/// Loads the snapshot `state` (memory file `mem`) into `ember` and resumes it,
/// its vsock in `dir` and its `eth0` on TAP `tap`.
fn load_onto_tap(ember: &Ember, state: &Path, mem: &Path, dir: &TempDir, tap: &str) {
    ember.ok(
        "PUT",
        "/snapshot/load",
        &json!({
            "snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem},
            "resume_vm": true,
            "vsock_override": {"uds_path": dir.path("v.sock")},
            "network_overrides": [{"iface_id": "eth0", "host_dev_name": tap}],
        })
        .to_string(),
    );
}

#[test]
fn clones_restored_onto_their_own_taps_fetch_again() {
    let (_ns, dir, ember) = fetch_function("snap", vec![("/", b"origin".to_vec())]);
    assert_eq!(
        fetch(&ember, &format!("http://{HOST_IP}:8080/")),
        (200, b"origin".to_vec())
    );
    let (state, mem) = (dir.path("fn.snap"), dir.path("fn.mem"));
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok(
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_path": state, "mem_file_path": mem}).to_string(),
    );
    drop(ember);
    let clones: Vec<(NetNs, TempDir, Ember)> = ["clone-a", "clone-b"]
        .iter()
        .map(|tag| {
            let tap = format!("tap-{tag}");
            let ns = link(tag, &tap);
            serve_http(
                ns.listen(&format!("{HOST_IP}:8080")),
                vec![("/", tag.as_bytes().to_vec())],
            );
            let dir = TempDir::new(&format!("net-{tag}"));
            let socket = dir.path("api.sock");
            let ember = ns.spawn_ember(&["--api-sock", socket.to_str().unwrap()], Some(&socket));
            load_onto_tap(&ember, &state, &mem, &dir, &tap);
            let (_, config) = ember.api("GET", "/vm/config", "");
            assert!(config.contains(&tap), "{config}");
            (ns, dir, ember)
        })
        .collect();
    for (ns, _, ember) in &clones {
        let tag = ns.name().rsplit('-').take(2).collect::<Vec<_>>();
        let expected = format!("{}-{}", tag[1], tag[0]);
        assert_eq!(
            fetch(ember, &format!("http://{HOST_IP}:8080/")),
            (200, expected.into_bytes())
        );
    }
}

#[test]
fn functions_answer_http_on_their_address_as_over_the_api() {
    let ns = link("http", "tap0");
    let dir = TempDir::new("net-http");
    let args = format!("{} ember.http=8080", boot_args(GUEST_IP, HOST_IP));
    let ember = boot_function_at(&ns, &dir, "faulty", "tap0", None, &args);
    let mut client = KeepAlive::tcp(ns.connect(&format!("{GUEST_IP}:8080")));
    assert_eq!(
        client.request("POST", "/", b"olleh"),
        (200, b"hello".to_vec())
    );
    // A body larger than a socket buffer, on the same connection.
    let big = pattern(300_000);
    let reversed: Vec<u8> = big.iter().rev().copied().collect();
    assert_eq!(client.request("PUT", "/any/path", &big), (200, reversed));
    let (status, body) = client.request("POST", "/", b"error");
    assert_eq!(
        (status, body.as_slice()),
        (500, &b"faulty: asked to fail"[..])
    );
    let (status, body) = client.request("POST", "/", b"panic");
    assert_eq!(status, 500);
    assert!(String::from_utf8_lossy(&body).contains("asked to panic"));
    assert_eq!(client.request("GET", "/", b""), (200, Vec::new()));
    let (status, _) = client.request("DELETE", "/", b"");
    assert_eq!(status, 405);
    // Over ember's API at the same time, and over HTTP from several clients.
    assert_eq!(ember.invoke(b"ipa"), (200, b"api".to_vec()));
    let mut clients: Vec<_> = (0..4)
        .map(|_| KeepAlive::tcp(ns.connect(&format!("{GUEST_IP}:8080"))))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let input = format!("client {i}");
        let expected: Vec<u8> = input.bytes().rev().collect();
        assert_eq!(
            client.request("POST", "/", input.as_bytes()),
            (200, expected)
        );
    }
}

#[test]
fn clones_take_their_address_from_the_mmds_and_answer_http_there() {
    let ns = link("readdress", "tap0");
    let dir = TempDir::new("net-readdress");
    let args = format!(
        "{} ember.http=8080 ember.net=mmds",
        boot_args(GUEST_IP, HOST_IP)
    );
    let mmds = json!({"network_interfaces": ["eth0"], "version": "V2"});
    let ember = boot_function_at(&ns, &dir, "echo", "tap0", Some(mmds), &args);
    let mut client = KeepAlive::tcp(ns.connect(&format!("{GUEST_IP}:8080")));
    assert_eq!(
        client.request("POST", "/", b"origin"),
        (200, b"origin".to_vec())
    );
    let (state, mem) = (dir.path("fn.snap"), dir.path("fn.mem"));
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok(
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_path": state, "mem_file_path": mem}).to_string(),
    );
    drop(ember);
    for (tag, last) in [("clone-x", 3), ("clone-y", 4)] {
        let tap = format!("tap-{tag}");
        let ns = link(tag, &tap);
        let dir = TempDir::new(&format!("net-{tag}"));
        let socket = dir.path("api.sock");
        let ember = ns.spawn_ember(&["--api-sock", socket.to_str().unwrap()], Some(&socket));
        let address = format!("10.0.0.{last}");
        let mac = format!("06:00:0a:00:00:{last:02x}");
        let network = format!("ip={address}::{HOST_IP}:255.255.255.0::eth0:off mac={mac}");
        ember.ok(
            "PUT",
            "/mmds",
            &json!({"ember": {"network": network}}).to_string(),
        );
        load_onto_tap(&ember, &state, &mem, &dir, &tap);
        ember.expect_line(&format!("EMBER-FN: restored as {address}"), BOOT);
        let mut client = KeepAlive::tcp(ns.connect(&format!("{address}:8080")));
        assert_eq!(
            client.request("POST", "/", tag.as_bytes()),
            (200, tag.as_bytes().to_vec())
        );
        let neighbours = std::process::Command::new("ip")
            .args(["-n", ns.name(), "neigh", "show", &address])
            .output()
            .expect("run ip neigh");
        let neighbours = String::from_utf8_lossy(&neighbours.stdout);
        assert!(
            neighbours.contains(&mac),
            "{address} is at {mac}: {neighbours}"
        );
    }
}

/// Expects `PUT path body` to be refused with a 400 that mentions `expected`.
fn refused(ember: &Ember, path: &str, body: &Value, expected: &str) {
    let (status, answer) = ember.api("PUT", path, &body.to_string());
    assert_eq!(status, 400, "{path} {body}: {answer}");
    assert!(answer.contains(expected), "{path} {body}: {answer}");
}

#[test]
fn bad_interfaces_and_mmds_configs_get_a_400_that_says_which() {
    let ns = link("bad", "tap0");
    ns.add_tap("tap-busy", "10.0.9.1/24", 1500);
    let _holder = ns.hold_tap("tap-busy");
    let dir = TempDir::new("net-bad");
    let socket = dir.path("api.sock");
    let ember = ns.spawn_ember(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--mmds-size-limit",
            "64",
        ],
        Some(&socket),
    );
    let net = |id: &str, tap: &str, mac: Option<&str>| json!({"iface_id": id, "host_dev_name": tap, "guest_mac": mac});
    refused(
        &ember,
        "/network-interfaces/eth0",
        &net("eth0", "nosuchtap", None),
        "does not exist",
    );
    refused(
        &ember,
        "/network-interfaces/eth0",
        &net("eth0", "tap-busy", None),
        "busy",
    );
    refused(
        &ember,
        "/network-interfaces/eth0",
        &net("eth0", "tap0", Some("01:00:00:00:00:01")),
        "guest_mac",
    );
    refused(
        &ember,
        "/network-interfaces/eth0",
        &net("eth0", "tap0", Some("zz")),
        "guest_mac",
    );
    let limited = json!({"iface_id": "eth0", "host_dev_name": "tap0", "rx_rate_limiter": {"bandwidth": {"size": -1, "refill_time": 1}}});
    refused(&ember, "/network-interfaces/eth0", &limited, "integer `-1`");
    refused(
        &ember,
        "/mmds/config",
        &json!({"network_interfaces": ["eth0"]}),
        "no network interface with id 'eth0'",
    );
    ember.ok(
        "PUT",
        "/network-interfaces/eth0",
        &net("eth0", "tap0", Some(GUEST_MAC)).to_string(),
    );
    refused(
        &ember,
        "/network-interfaces/eth1",
        &net("eth1", "tap0", None),
        "already used",
    );
    ns.add_tap("tap1", "10.0.8.1/24", 1500);
    refused(
        &ember,
        "/network-interfaces/eth1",
        &net("eth1", "tap1", Some(GUEST_MAC)),
        "already used",
    );
    refused(
        &ember,
        "/mmds/config",
        &json!({"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.9"}),
        "link-local",
    );
    refused(
        &ember,
        "/mmds",
        &json!({"key": "a value longer than sixty-four bytes of JSON, which is the limit"}),
        "limit",
    );
    let (_, config) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    let ifaces = config["network-interfaces"].as_array().expect("a list");
    assert_eq!(ifaces.len(), 1, "nothing half-made: {config}");
    assert_eq!(ifaces[0]["host_dev_name"], "tap0");
    assert_eq!(config["mmds-config"], Value::Null, "{config}");
}

#[test]
fn a_firecracker_launchers_config_file_boots_unchanged_and_bad_ones_exit_152() {
    let ns = link("cfg", "tap0");
    serve_http(
        ns.listen(&format!("{HOST_IP}:8080")),
        vec![("/", b"from a config".to_vec())],
    );
    let dir = TempDir::new("net-cfg");
    let drive = dir.path("scratch.img");
    std::fs::write(&drive, vec![0u8; 1 << 20]).unwrap();
    let config = |ifaces: Value| {
        json!({
            "boot-source": {"kernel_image_path": artifact("unikernel-fetch"), "boot_args": boot_args(GUEST_IP, HOST_IP)},
            "drives": [{"drive_id": "scratch", "path_on_host": drive, "is_root_device": false, "is_read_only": false}],
            "network-interfaces": ifaces,
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "smt": false},
            "vsock": {"guest_cid": 3, "uds_path": dir.path("v.sock")},
        })
    };
    let write = |name: &str, value: &Value| {
        let path = dir.path(name);
        std::fs::write(&path, value.to_string()).unwrap();
        path
    };
    require_kvm();
    // Two interfaces, as a launcher with a second network gives; the
    // function uses the first.
    ns.add_tap("tap1", "10.0.9.1/24", 1500);
    let good = write(
        "vm.json",
        &config(json!([
            {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC},
            {"iface_id": "eth1", "host_dev_name": "tap1"}
        ])),
    );
    let socket = dir.path("api.sock");
    let ember = ns.spawn_ember(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--config-file",
            good.to_str().unwrap(),
        ],
        Some(&socket),
    );
    ember.expect_line(READY, BOOT);
    assert_eq!(
        fetch(&ember, &format!("http://{HOST_IP}:8080/")),
        (200, b"from a config".to_vec())
    );
    let (_, shown) = ember.api("GET", "/vm/config", "");
    let shown: Value = serde_json::from_str(&shown).unwrap();
    let taps: Vec<&str> = shown["network-interfaces"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|n| n["host_dev_name"].as_str())
        .collect();
    assert_eq!(taps, ["tap0", "tap1"]);
    drop(ember);
    let _ = std::fs::remove_file(dir.path("v.sock"));
    for (ifaces, expected) in [
        (
            json!([{"iface_id": "eth0", "host_dev_name": "nosuchtap"}]),
            "does not exist",
        ),
        (
            json!([{"iface_id": "eth0", "host_dev_name": "tap0"}, {"iface_id": "eth0", "host_dev_name": "tap0"}]),
            "configured twice",
        ),
    ] {
        let bad = write("bad.json", &config(ifaces));
        let mut ember = ns.spawn_ember(&["--no-api", "--config-file", bad.to_str().unwrap()], None);
        let status = ember.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(152), "{expected}: {}", ember.stderr());
        assert!(ember.stderr().contains(expected), "{}", ember.stderr());
    }
}

#[test]
fn pending_reads_do_not_starve_the_api() {
    // A TAP flooded from the host while the guest takes nothing: ember's
    // main thread holds the frames back and keeps answering its API.
    let ns = link("flood", "tap0");
    let dir = TempDir::new("net-flood");
    let ember = boot_function(&ns, &dir, "echo", "tap0", None);
    let flooder =
        ns.within(|| std::net::UdpSocket::bind(format!("{HOST_IP}:0")).expect("a UDP socket"));
    ns.within(|| {
        let _ = std::process::Command::new("ip")
            .args([
                "neigh", "replace", GUEST_IP, "lladdr", GUEST_MAC, "dev", "tap0",
            ])
            .status();
    });
    let payload = [0u8; 1400];
    for _ in 0..20_000 {
        let _ = flooder.send_to(&payload, format!("{GUEST_IP}:9"));
    }
    let (status, _) = ember.api("GET", "/", "");
    assert_eq!(status, 200);
    assert_eq!(ember.invoke(b"still here"), (200, b"still here".to_vec()));
}

#[test]
fn an_idle_function_on_a_network_costs_no_host_cpu() {
    let (_ns, _dir, ember) = fetch_function("idle", vec![("/", b"x".to_vec())]);
    assert_eq!(
        fetch(&ember, &format!("http://{HOST_IP}:8080/")),
        (200, b"x".to_vec())
    );
    // Once its connection is closed, nothing runs: no timer in the guest,
    // no polling in ember.
    let ticks = cpu_ticks_over(ember.pid(), Duration::from_secs(2));
    assert!(
        ticks <= 2,
        "an idle function with a net device used {ticks} ticks in 2 s"
    );
}

/// Answers DNS queries on `socket`: `A` questions for `name` with `address`,
/// anything else with NXDOMAIN.
fn serve_dns(socket: std::net::UdpSocket, name: &'static str, address: [u8; 4]) {
    std::thread::spawn(move || {
        let mut query = [0u8; 512];
        while let Ok((len, peer)) = socket.recv_from(&mut query) {
            let Some(question_end) = query[12..len]
                .iter()
                .position(|&b| b == 0)
                .map(|p| 12 + p + 5)
            else {
                continue;
            };
            let labels: Vec<String> = {
                let (mut at, mut labels) = (12, Vec::new());
                while query[at] != 0 {
                    let n = usize::from(query[at]);
                    labels.push(String::from_utf8_lossy(&query[at + 1..at + 1 + n]).into_owned());
                    at += 1 + n;
                }
                labels
            };
            let found =
                labels.join(".") == name && query[question_end - 4..question_end - 2] == [0, 1];
            let mut answer = query[..question_end].to_vec();
            answer[2] = 0x81;
            answer[3] = if found { 0x80 } else { 0x83 };
            answer[6..8].copy_from_slice(&[0, u8::from(found)]);
            answer[8..12].fill(0);
            if found {
                answer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                answer.extend_from_slice(&address);
            }
            let _ = socket.send_to(&answer, peer);
        }
    });
}

#[test]
fn fetch_resolves_names_through_the_dns_server_ip_names() {
    let ns = link("dns", "tap0");
    serve_http(
        ns.listen(&format!("{HOST_IP}:8080")),
        vec![("/", b"by name".to_vec())],
    );
    let dns =
        ns.within(|| std::net::UdpSocket::bind(format!("{HOST_IP}:53")).expect("bind port 53"));
    serve_dns(dns, "functions.test", [10, 0, 0, 1]);
    let dir = TempDir::new("net-dns");
    // dns0, after `off`, is the TAP's host side.
    let with_dns = format!("{}:{HOST_IP}", boot_args(GUEST_IP, HOST_IP));
    let ember = boot_function_at(&ns, &dir, "fetch", "tap0", None, &with_dns);
    assert_eq!(
        fetch(&ember, "http://functions.test:8080/"),
        (200, b"by name".to_vec())
    );
    let (status, body) = fetch(&ember, "http://nowhere.test:8080/");
    assert_eq!(status, 502);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("dns") && body.contains("nowhere.test"),
        "{body}"
    );
}

/// Host sides for the netbench function: a sink on port 5001 and, on port
/// 5002, a sender of `bytes` bytes per connection.
fn netbench_peers(ns: &NetNs, bytes: usize) {
    let sink = ns.listen(&format!("{HOST_IP}:5001"));
    std::thread::spawn(move || {
        for mut stream in sink.incoming().flatten() {
            std::thread::spawn(move || std::io::copy(&mut stream, &mut std::io::sink()));
        }
    });
    let source = ns.listen(&format!("{HOST_IP}:5002"));
    std::thread::spawn(move || {
        for mut stream in source.incoming().flatten() {
            let _ = stream.write_all(&pattern(bytes));
        }
    });
}

/// How long netbench takes to send `bytes` to the host and to receive as many.
fn time_both_ways(ember: &Ember, bytes: usize) -> (Duration, Duration) {
    let timed = |input: String| {
        let start = std::time::Instant::now();
        let (status, body) = ember.invoke(input.as_bytes());
        let elapsed = start.elapsed();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{input}: {body}");
        assert!(
            body.starts_with(&format!("bytes={bytes} ")),
            "{input}: {body}"
        );
        elapsed
    };
    (
        timed(format!("send:{HOST_IP}:5001:{bytes}")),
        timed(format!("recv:{HOST_IP}:5002")),
    )
}

#[test]
fn limited_interfaces_hold_their_rate_both_ways_until_a_patch_lifts_it() {
    const BYTES: usize = 2 << 20;
    let ns = link("net-limits", "tap0");
    netbench_peers(&ns, BYTES);
    let dir = TempDir::new("net-limits");
    let ember = boot_function(&ns, &dir, "netbench", "tap0", None);
    // 128 KiB per 125 ms: 1 MiB/s of frames each way, starting full.
    let limit = json!({"bandwidth": {"size": 131072, "refill_time": 125}});
    let patch = |limit: &Value| {
        let body = json!({"iface_id": "eth0", "rx_rate_limiter": limit, "tx_rate_limiter": limit});
        ember.ok("PATCH", "/network-interfaces/eth0", &body.to_string());
    };
    patch(&limit);
    let (_, config) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    // Firecracker's shape: the bucket not given is null, as is the burst.
    assert_eq!(
        config["network-interfaces"][0]["tx_rate_limiter"],
        json!({"bandwidth": {"size": 131072, "one_time_burst": null, "refill_time": 125}, "ops": null})
    );

    // 2 MiB of payload is more than 2 MiB of frames, less the full bucket:
    // at least 1.875 s at the limit.
    let floor = Duration::from_millis(1875);
    let (send, recv) = time_both_ways(&ember, BYTES);
    assert!(
        send >= floor,
        "sent 2 MiB in {send:?} through a 1 MiB/s limit"
    );
    assert!(
        recv >= floor,
        "received 2 MiB in {recv:?} through a 1 MiB/s limit"
    );

    patch(&json!({"bandwidth": {"size": 0, "refill_time": 0}}));
    let (send, recv) = time_both_ways(&ember, BYTES);
    assert!(send < floor, "unlimited, sending 2 MiB took {send:?}");
    assert!(recv < floor, "unlimited, receiving 2 MiB took {recv:?}");
    let (_, config) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["network-interfaces"][0]["tx_rate_limiter"],
        Value::Null
    );
}
