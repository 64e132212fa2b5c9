//! Network benchmark, all measured from inside a function (the `netbench`
//! unikernel) on a TAP in a namespace of its own: TCP throughput each way on
//! one stream, request/response round trips (1 byte and 1 KiB), connections
//! per second, MMDS V2 token + GET latency, and boot to ready with and
//! without a net device. Runs at the TAP MTU Firecracker setups use (1500)
//! and at a 64 KiB MTU offered to the guest through `mtu`.
//!
//! `cargo bench --bench net [-- --short] [-- --json PATH]`

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, BenchArgs, Samples};
use ember_test_support::{artifact, require_kvm, Ember, NetNs, TempDir};
use serde_json::json;

const READY: &str = "EMBER-FN: ready on port";
const TIMEOUT: Duration = Duration::from_secs(20);
const HOST: &str = "10.0.0.1";
const BOOT_ARGS: &str = "console=ttyS0 ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off";

/// Runs `serve` on every connection to `port` in `ns`, one thread each.
fn server(ns: &NetNs, port: u16, serve: fn(std::net::TcpStream)) {
    let listener: TcpListener = ns.listen(&format!("{HOST}:{port}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || serve(stream));
        }
    });
}

/// The host sides the netbench function talks to.
fn servers(ns: &NetNs, recv_bytes: usize) {
    server(ns, 5001, |mut s| {
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    });
    server(ns, 5003, |mut s| {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    server(ns, 5004, drop);
    source(ns, 5002, recv_bytes);
}

/// Sends `bytes` bytes on every connection to `port` in `ns`, then closes it.
fn source(ns: &NetNs, port: u16, bytes: usize) {
    let listener = ns.listen(&format!("{HOST}:{port}"));
    std::thread::spawn(move || {
        let block = vec![0x5au8; 1 << 20];
        for mut s in listener.incoming().flatten() {
            let mut left = bytes;
            while left > 0 {
                let n = left.min(block.len());
                if s.write_all(&block[..n]).is_err() {
                    break;
                }
                left -= n;
            }
        }
    });
}

/// Boots `kernel` in `ns` with (or without) a net device of `mtu`; returns
/// ember and the time from spawn to the console line starting with `ready`.
fn boot(
    ns: &NetNs,
    dir: &TempDir,
    kernel: &str,
    net: Option<u32>,
    ready: &str,
) -> (Ember, Duration) {
    let mut config = json!({
        "boot-source": {"kernel_image_path": artifact(kernel), "boot_args": BOOT_ARGS},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
        "vsock": {"guest_cid": 3, "uds_path": dir.path("v.sock")},
    });
    if let Some(mtu) = net {
        config["network-interfaces"] =
            json!([{"iface_id": "eth0", "host_dev_name": "tap0", "mtu": mtu}]);
        config["mmds-config"] = json!({"version": "V2", "network_interfaces": ["eth0"]});
    }
    let path = dir.path("vm.json");
    std::fs::write(&path, config.to_string()).expect("write the config");
    let socket = dir.path("api.sock");
    let ember = ns.spawn_ember(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--config-file",
            path.to_str().unwrap(),
        ],
        Some(&socket),
    );
    let (at, _) = ember
        .wait_line(TIMEOUT, |l| l.starts_with(ready))
        .expect("the guest is ready");
    let ready = at - ember.spawned_at;
    if net.is_some() {
        ember.ok(
            "PUT",
            "/mmds",
            r#"{"latest": {"meta-data": {"instance-id": "i-bench"}}}"#,
        );
    }
    (ember, ready)
}

/// Invokes netbench with `input`; the `key=value` fields of its answer.
fn run(ember: &Ember, input: &str) -> Vec<(String, u64)> {
    let (status, body) = ember.invoke(input.as_bytes());
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "netbench {input}: {text}");
    text.split_whitespace()
        .filter_map(|field| field.split_once('='))
        .flat_map(|(k, v)| {
            v.split(',')
                .filter_map(|n| n.parse().ok())
                .map(move |n| (k.to_string(), n))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn field(fields: &[(String, u64)], key: &str, nth: usize) -> f64 {
    fields
        .iter()
        .filter(|(k, _)| k == key)
        .nth(nth)
        .map(|(_, v)| *v as f64)
        .unwrap_or_else(|| panic!("no {key} in {fields:?}"))
}

/// Mbit/s of a `bytes=.. ns=..` answer.
fn mbits(fields: &[(String, u64)]) -> f64 {
    field(fields, "bytes", 0) * 8.0 * 1e3 / field(fields, "ns", 0)
}

/// The rate limiter's own rate: 1 MiB per 100 ms.
const LIMIT_BYTES_PER_S: f64 = 10.0 * 1048576.0;

/// Throughput through a PATCHed 10 MiB/s limit each way, as a percentage of
/// the limit, over transfers of 5 s at the limit (1 s in short mode), timed
/// on the host (the guest's clock is only as good as the TSC frequency it
/// is told). The bucket starts full, so the first 1 MiB comes at once: it is
/// left out.
fn limited_rates(ember: &Ember, runs: usize, short: bool) -> [Samples; 2] {
    let limit = json!({"bandwidth": {"size": 1048576, "refill_time": 100}});
    let body = json!({"iface_id": "eth0", "rx_rate_limiter": limit, "tx_rate_limiter": limit});
    ember.ok("PATCH", "/network-interfaces/eth0", &body.to_string());
    let seconds = if short { 1 } else { 5 };
    let bytes = (seconds * 10) << 20;
    let percent = |input: String| {
        let start = Instant::now();
        let fields = run(ember, &input);
        let elapsed = start.elapsed().as_secs_f64();
        let rate = (field(&fields, "bytes", 0) - 1048576.0) / elapsed;
        100.0 * rate / LIMIT_BYTES_PER_S
    };
    let mut tx = Samples::new("guest -> host through a 10 MiB/s limit", "% of limit");
    let mut rx = Samples::new("host -> guest through a 10 MiB/s limit", "% of limit");
    for _ in 0..runs {
        tx.values.push(percent(format!("send:{HOST}:5001:{bytes}")));
        rx.values.push(percent(format!("recv:{HOST}:5006")));
    }
    [tx, rx]
}

fn main() {
    let args = BenchArgs::parse("net");
    require_kvm();
    let (runs, stream_mib, rounds) = if args.short {
        (2, 16, 200)
    } else {
        (5, 256, 2000)
    };
    let bytes = stream_mib << 20;
    let mut all: Vec<Samples> = Vec::new();
    for mtu in [1500u32, 65520] {
        let ns = NetNs::new(&format!("bench{mtu}"));
        ns.add_tap("tap0", &format!("{HOST}/24"), mtu);
        servers(&ns, bytes);
        source(&ns, 5006, if args.short { 10 << 20 } else { 50 << 20 });
        let dir = TempDir::new("net-bench");
        let (ember, _) = boot(&ns, &dir, "unikernel-netbench", Some(mtu), READY);
        let label = |what: &str| format!("{what}, MTU {mtu}");
        let mut tx = Samples::new(&label("guest -> host TCP, 1 stream"), "Mbit/s");
        let mut rx = Samples::new(&label("host -> guest TCP, 1 stream"), "Mbit/s");
        for _ in 0..runs {
            tx.values
                .push(mbits(&run(&ember, &format!("send:{HOST}:5001:{bytes}"))));
            rx.values
                .push(mbits(&run(&ember, &format!("recv:{HOST}:5002"))));
        }
        let mut rr1 = Samples::new(&label("TCP round trip 1 B (p50 per run)"), "us");
        let mut rr1k = Samples::new(&label("TCP round trip 1 KiB (p50 per run)"), "us");
        let mut conns = Samples::new(&label("TCP connections per second"), "conn/s");
        let mut mmds = Samples::new(&label("MMDS V2 token + GET (p50 per run)"), "us");
        for _ in 0..runs {
            let r = run(&ember, &format!("rr:{HOST}:5003:1:{rounds}"));
            rr1.values.push(field(&r, "ns", 0) / 1e3);
            let r = run(&ember, &format!("rr:{HOST}:5003:1024:{rounds}"));
            rr1k.values.push(field(&r, "ns", 0) / 1e3);
            let count = rounds / 4;
            let r = run(&ember, &format!("conn:{HOST}:5004:{count}"));
            conns
                .values
                .push(f64::from(count) * 1e9 / field(&r, "ns", 0));
            let r = run(&ember, &format!("mmds:{}", rounds / 4));
            mmds.values.push(field(&r, "ns", 0) / 1e3);
        }
        all.extend([tx, rx, rr1, rr1k, conns, mmds]);
        if mtu == 1500 {
            all.extend(limited_rates(&ember, runs, args.short));
        }
    }

    let ns = NetNs::new("benchboot");
    ns.add_tap("tap0", &format!("{HOST}/24"), 1500);
    // The VMM's part: to the test guest's first line, which no driver precedes;
    // then the function's, whose runtime also sets up the device and its stack.
    for (kernel, ready, what) in [
        (
            "test-pvh",
            "EMBER-TEST-GUEST: hello",
            "spawn -> guest's first line",
        ),
        ("unikernel-echo", READY, "spawn -> echo function ready"),
    ] {
        let mut with = Samples::new(&format!("{what}, with a net device"), "us");
        let mut without = Samples::new(&format!("{what}, without"), "us");
        for _ in 0..(runs * 4) {
            for (net, samples) in [(Some(1500), &mut with), (None, &mut without)] {
                let dir = TempDir::new("net-bench-boot");
                let (_ember, at) = boot(&ns, &dir, kernel, net, ready);
                samples.values.push(micros(at));
            }
        }
        all.extend([with, without]);
    }

    println!("\nember network benchmark (netbench unikernel, 1 vCPU, TAP in a namespace)\n");
    let refs: Vec<&Samples> = all.iter().collect();
    let results = ember_test_support::bench::print_table(&refs);
    args.write_report(&json!({"benchmark": "net", "short": args.short, "results": results}));
}
