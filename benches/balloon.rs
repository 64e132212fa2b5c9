//! Balloon benchmark: a function VM writes 160 MiB, then the balloon inflates by
//! 100 MiB and deflates again; the table gives the time from `PATCH /balloon` to
//! the guest holding the target (the host has the pages back by then) and how
//! far ember's RSS fell.
//!
//! `cargo bench --bench balloon [-- --short] [-- --json PATH]`

use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, print_table, BenchArgs, Samples};
use ember_test_support::{artifact, require_kvm, Ember, TempDir};
use serde_json::{json, Value};

const GUEST_MIB: u64 = 256;
const TOUCHED_MIB: u64 = 160;
/// The inflate the issue's target names.
const INFLATE_MIB: u64 = 100;

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// Sets the target and waits for the guest to hold it; the time that took.
fn steer(ember: &Ember, mib: u64) -> Duration {
    let started = Instant::now();
    ember.ok("PATCH", "/balloon", &json!({"amount_mib": mib}).to_string());
    loop {
        let (_, body) = ember.api("GET", "/balloon/statistics", "");
        let stats: Value = serde_json::from_str(&body).expect("statistics");
        if stats["actual_mib"] == mib {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "stuck: {stats}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn main() {
    let args = BenchArgs::parse("balloon");
    require_kvm();
    let runs = if args.short { 3 } else { 20 };
    let dir = TempDir::new("bench-balloon");
    let ember = Ember::with_api(&dir, &[]);
    ember.put_boot_source(&artifact("unikernel-memory"), "console=ttyS0");
    ember.ok(
        "PUT",
        "/machine-config",
        &json!({"vcpu_count": 1, "mem_size_mib": GUEST_MIB}).to_string(),
    );
    ember.ok(
        "PUT",
        "/vsock",
        &json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
    );
    ember.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1}"#,
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("EMBER-FN: ready on port", Duration::from_secs(20));

    let mut inflate = Samples::new("inflate 100 MiB: PATCH -> guest holds it", "us");
    let mut deflate = Samples::new("deflate 100 MiB: PATCH -> guest has it back", "us");
    let mut freed = Samples::new("ember RSS given back by the inflate", "MiB");
    for _ in 0..runs {
        let (status, _) = ember.invoke(TOUCHED_MIB.to_string().as_bytes());
        assert_eq!(status, 200);
        let before = rss_mib(ember.pid());
        inflate.values.push(micros(steer(&ember, INFLATE_MIB)));
        freed.values.push(before - rss_mib(ember.pid()));
        deflate.values.push(micros(steer(&ember, 0)));
    }
    let rows = print_table(&[&inflate, &deflate, &freed]);
    args.write_report(&json!({"benchmark": "balloon", "guest_mib": GUEST_MIB, "rows": rows}));
}
