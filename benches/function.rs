//! Function benchmark: unikernel spawn -> ready for invocations, the first
//! invocation, invocation round trips (1 KiB and 1 MiB, p50/p99), SHA-256 of
//! 16 MiB in the guest against the same crate on the host, and ember's RSS.
//!
//! `cargo bench --bench function [-- --short] [-- --json PATH]`; `-- --demo`
//! boots the echo function, invokes it a few times and prints what it saw.

use std::path::Path;
use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, BenchArgs, Samples};
use ember_test_support::{artifact, require_kvm, Ember, KeepAlive, TempDir};
use serde_json::json;
use sha2::{Digest, Sha256};

const READY: &str = "EMBER-FN: ready on port";
const TIMEOUT: Duration = Duration::from_secs(20);
const GUEST_MEM_MIB: u64 = 256;

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
    let (status, body) = ember.invoke(payload);
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
    let mut later = Samples::new("later invocations (1 KiB echo)", "us");
    let payload = vec![b'x'; 1024];
    for _ in 0..50 {
        later.values.push(micros(timed_invoke(&ember, &payload).0));
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
    let args = BenchArgs::parse("function");
    let short = args.short;
    require_kvm();
    let echo = artifact("unikernel-echo");
    if args.demo {
        demo(&echo);
        return;
    }
    let sha = artifact("unikernel-sha256");
    let (boots, small_runs, big_runs) = if short { (5, 100, 10) } else { (20, 1000, 50) };

    let mut ready = Samples::new("spawn -> ready for invocations", "us");
    let mut first = Samples::new("first invocation (1 KiB echo)", "us");
    let mut rss = Samples::new("ember RSS besides guest memory", "KiB");
    for _ in 0..boots {
        let dir = TempDir::new("fn-bench");
        let ember = start(&dir, &echo);
        let (at, _) = ember
            .wait_line(TIMEOUT, |l| l.starts_with(READY))
            .expect("function ready");
        ready.values.push(micros(at - ember.spawned_at));
        first
            .values
            .push(micros(timed_invoke(&ember, &[b'a'; 1024]).0));
        rss.values.push(ember_test_support::rss_besides_guest_kib(
            ember.pid(),
            GUEST_MEM_MIB << 10,
        ));
    }

    let dir = TempDir::new("fn-bench");
    let ember = start(&dir, &echo);
    ember.expect_line(READY, TIMEOUT);
    let mut small = Samples::new("echo 1 KiB round trip", "us");
    let kib = vec![7u8; 1024];
    for _ in 0..small_runs {
        small.values.push(micros(timed_invoke(&ember, &kib).0));
    }
    // The same over one kept-alive API connection, as an HTTP client pool does.
    let mut small_kept = Samples::new("echo 1 KiB round trip, keep-alive", "us");
    let mut client = KeepAlive::connect(ember.socket.as_deref().unwrap());
    for _ in 0..small_runs {
        let start = Instant::now();
        let (status, body) = client.request("POST", "/invocations", &kib);
        small_kept.values.push(micros(start.elapsed()));
        assert_eq!((status, body.len()), (200, kib.len()));
    }
    let mut big = Samples::new("echo 1 MiB round trip", "us");
    let mib = vec![9u8; 1 << 20];
    for _ in 0..big_runs {
        big.values.push(micros(timed_invoke(&ember, &mib).0));
    }
    let input: Vec<u8> = (0..16u32 << 20)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 11) & 0xff) as u8)
        .collect();
    let mut echo_16 = Samples::new("echo 16 MiB round trip", "us");
    for _ in 0..5 {
        echo_16.values.push(micros(timed_invoke(&ember, &input).0));
    }
    drop(ember);

    let dir = TempDir::new("fn-bench");
    let ember = start(&dir, &sha);
    ember.expect_line(READY, TIMEOUT);
    let expected = Sha256::digest(&input).to_vec();
    let mut guest_sha = Samples::new("sha256 16 MiB invocation", "us");
    for _ in 0..5 {
        let (d, out) = timed_invoke(&ember, &input);
        assert_eq!(out, expected, "the guest's digest matches the host's");
        guest_sha.values.push(micros(d));
    }
    let mut host_sha = Samples::new("sha256 16 MiB on the host (same crate)", "us");
    for _ in 0..5 {
        let start = Instant::now();
        std::hint::black_box(Sha256::digest(std::hint::black_box(&input)));
        host_sha.values.push(micros(start.elapsed()));
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
    let results = ember_test_support::bench::print_table(&all);
    // The whole call also moves 16 MiB into the guest, so this bounds the
    // guest's hashing slowdown from above.
    let ratio = guest_sha.sorted()[0] / host_sha.sorted()[0];
    println!(
        "\nsha256 of 16 MiB: fastest whole invocation (transfer included) = {ratio:.2}x the host's hashing alone"
    );
    let report = json!({"benchmark": "function", "short": short, "results": results,
        "sha256_invocation_vs_host_hash_ratio": ratio});
    args.write_report(&report);
}
