//! Function benchmark: unikernel spawn -> ready for invocations, the first
//! invocation, invocation round trips (1 KiB and 1 MiB, p50/p99), SHA-256 of
//! 16 MiB in the guest against the same crate on the host, and ember's RSS.
//!
//! `cargo bench --bench function [-- --short] [-- --json PATH]`; `-- --demo`
//! boots the echo function, invokes it a few times and prints what it saw.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{artifact, http_bytes, require_kvm, Ember, KeepAlive, TempDir};
use serde_json::json;
use sha2::{Digest, Sha256};

const READY: &str = "EMBER-FN: ready on port";
const TIMEOUT: Duration = Duration::from_secs(20);
const GUEST_MEM_MIB: u64 = 256;

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

struct Stats {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
}

impl Stats {
    fn new(name: &str, unit: &'static str) -> Self {
        Stats {
            name: name.to_string(),
            unit,
            samples: Vec::new(),
        }
    }

    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    /// The `p`-th percentile (nearest rank).
    fn percentile(&self, p: f64) -> f64 {
        let s = self.sorted();
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    }
}

/// Boots `kernel` with a vsock and ember's API; returns once the function listens.
fn start(dir: &TempDir, kernel: &Path) -> Ember {
    let config = json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB},
        "vsock": {"guest_cid": 3, "uds_path": dir.path("v.sock")}
    });
    let path = dir.path("fn.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let socket = dir.path("api.sock");
    Ember::spawn(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--config-file",
            path.to_str().unwrap(),
        ],
        Some(&socket),
    )
}

fn invoke(ember: &Ember, payload: &[u8]) -> Vec<u8> {
    let (status, body) = http_bytes(
        ember.socket.as_deref().unwrap(),
        "POST",
        "/invocations",
        payload,
    );
    assert_eq!(
        status,
        200,
        "invocation failed: {}",
        String::from_utf8_lossy(&body)
    );
    body
}

fn timed_invoke(ember: &Ember, payload: &[u8]) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let out = invoke(ember, payload);
    (start.elapsed(), out)
}

fn demo(echo: &Path) {
    let dir = TempDir::new("fn-demo");
    let ember = start(&dir, echo);
    let (ready_at, _) = ember
        .wait_line(TIMEOUT, |l| l.starts_with(READY))
        .expect("function ready");
    let ready = ready_at - ember.spawned_at;
    let (first, out) = timed_invoke(&ember, b"hello, function");
    println!("\n--- guest console ---");
    for line in ember.console() {
        println!("  {line}");
    }
    println!(
        "--- first invocation ---\n  request \"hello, function\" -> response {:?}",
        String::from_utf8_lossy(&out)
    );
    let mut later = Stats::new("later invocations (1 KiB echo)", "us");
    let payload = vec![b'x'; 1024];
    for _ in 0..50 {
        later.samples.push(micros(timed_invoke(&ember, &payload).0));
    }
    println!("--- timings ---");
    println!(
        "  spawn -> ready for invocations      {:>9.3} ms",
        ready.as_secs_f64() * 1e3
    );
    println!(
        "  first invocation                    {:>9.3} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  later invocations, p50 of 50        {:>9.3} ms",
        later.percentile(50.0) / 1e3
    );
    println!(
        "  later invocations, p99 of 50        {:>9.3} ms\n",
        later.percentile(99.0) / 1e3
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let short = args.iter().any(|a| a == "--short");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench/function.json").to_string()
        });
    require_kvm();
    let echo = artifact("unikernel-echo");
    if args.iter().any(|a| a == "--demo") {
        demo(&echo);
        return;
    }
    let sha = artifact("unikernel-sha256");
    let (boots, small_runs, big_runs) = if short { (5, 100, 10) } else { (20, 1000, 50) };

    let mut ready = Stats::new("spawn -> ready for invocations", "us");
    let mut first = Stats::new("first invocation (1 KiB echo)", "us");
    let mut rss = Stats::new("ember RSS besides guest memory", "KiB");
    for _ in 0..boots {
        let dir = TempDir::new("fn-bench");
        let ember = start(&dir, &echo);
        let (at, _) = ember
            .wait_line(TIMEOUT, |l| l.starts_with(READY))
            .expect("function ready");
        ready.samples.push(micros(at - ember.spawned_at));
        first
            .samples
            .push(micros(timed_invoke(&ember, &[b'a'; 1024]).0));
        rss.samples.push(common::rss_besides_guest_kib(
            ember.pid(),
            GUEST_MEM_MIB << 10,
        ));
    }

    let dir = TempDir::new("fn-bench");
    let ember = start(&dir, &echo);
    ember.expect_line(READY, TIMEOUT);
    let mut small = Stats::new("echo 1 KiB round trip", "us");
    let kib = vec![7u8; 1024];
    for _ in 0..small_runs {
        small.samples.push(micros(timed_invoke(&ember, &kib).0));
    }
    // The same over one kept-alive API connection, as an HTTP client pool does.
    let mut small_kept = Stats::new("echo 1 KiB round trip, keep-alive", "us");
    let mut client = KeepAlive::connect(ember.socket.as_deref().unwrap());
    for _ in 0..small_runs {
        let start = Instant::now();
        let (status, body) = client.request("POST", "/invocations", &kib);
        small_kept.samples.push(micros(start.elapsed()));
        assert_eq!((status, body.len()), (200, kib.len()));
    }
    let mut big = Stats::new("echo 1 MiB round trip", "us");
    let mib = vec![9u8; 1 << 20];
    for _ in 0..big_runs {
        big.samples.push(micros(timed_invoke(&ember, &mib).0));
    }
    let input: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut echo_16 = Stats::new("echo 16 MiB round trip", "us");
    for _ in 0..5 {
        echo_16.samples.push(micros(timed_invoke(&ember, &input).0));
    }
    drop(ember);

    let dir = TempDir::new("fn-bench");
    let ember = start(&dir, &sha);
    ember.expect_line(READY, TIMEOUT);
    let expected = Sha256::digest(&input).to_vec();
    let mut guest_sha = Stats::new("sha256 16 MiB invocation", "us");
    for _ in 0..5 {
        let (d, out) = timed_invoke(&ember, &input);
        assert_eq!(out, expected, "the guest's digest matches the host's");
        guest_sha.samples.push(micros(d));
    }
    let mut host_sha = Stats::new("sha256 16 MiB on the host (same crate)", "us");
    for _ in 0..5 {
        let start = Instant::now();
        std::hint::black_box(Sha256::digest(std::hint::black_box(&input)));
        host_sha.samples.push(micros(start.elapsed()));
    }

    let all = [
        &ready,
        &first,
        &small,
        &small_kept,
        &big,
        &echo_16,
        &guest_sha,
        &host_sha,
        &rss,
    ];
    println!("\nember function benchmark (echo and sha256 unikernels, PVH, {GUEST_MEM_MIB} MiB, 1 vCPU)\n");
    println!(
        "{:<40} {:>7} {:>10} {:>10} {:>10} {:>10}  unit",
        "measure", "runs", "min", "p50", "p99", "max"
    );
    let mut results = Vec::new();
    for s in all {
        let sorted = s.sorted();
        let (min, p50, p99, max) = (
            sorted[0],
            s.percentile(50.0),
            s.percentile(99.0),
            sorted[sorted.len() - 1],
        );
        println!(
            "{:<40} {:>7} {min:>10.0} {p50:>10.0} {p99:>10.0} {max:>10.0}  {}",
            s.name,
            sorted.len(),
            s.unit
        );
        results.push(json!({"name": s.name, "unit": s.unit, "runs": sorted.len(),
            "min": min, "p50": p50, "p99": p99, "max": max, "samples": sorted}));
    }
    // The whole call also moves 16 MiB into the guest, so this bounds the
    // guest's hashing slowdown from above.
    let ratio = guest_sha.sorted()[0] / host_sha.sorted()[0];
    println!(
        "\nsha256 of 16 MiB: fastest whole invocation (transfer included) = {ratio:.2}x the host's hashing alone"
    );
    let report = json!({"benchmark": "function", "short": short, "results": results,
        "sha256_invocation_vs_host_hash_ratio": ratio});
    if let Some(parent) = Path::new(&json_path).parent() {
        std::fs::create_dir_all(parent).expect("create the JSON directory");
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
    println!("JSON: {json_path}");
}
