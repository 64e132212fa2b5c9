//! A function VM with a balloon, steered through the API, as the balloon
//! tests and benchmark drive one.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{require_kvm, Ember, TempDir};

impl Ember {
    /// Boots the function in `kernel` with `mem_mib` of memory, a vsock at
    /// `dir/v.sock` and the balloon `balloon` (`PUT /balloon`'s body);
    /// returns once the function listens.
    pub fn with_balloon(dir: &TempDir, kernel: &Path, mem_mib: u64, balloon: &Value) -> Ember {
        require_kvm();
        let ember = Ember::with_api(dir, &[]);
        ember.put_boot_source(kernel, "console=ttyS0");
        ember.ok(
            "PUT",
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": mem_mib}).to_string(),
        );
        ember.ok(
            "PUT",
            "/vsock",
            &json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
        );
        ember.ok("PUT", "/balloon", &balloon.to_string());
        ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
        ember.expect_line("EMBER-FN: ready on port", Duration::from_secs(20));
        ember
    }

    /// `GET /balloon/statistics`.
    pub fn balloon_stats(&self) -> Value {
        let (status, body) = self.api("GET", "/balloon/statistics", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("statistics as JSON")
    }

    /// Sets the balloon's target and waits until the guest holds that much
    /// (the host has the pages back by then); returns how long that took.
    pub fn steer_balloon(&self, mib: u64) -> Duration {
        let started = Instant::now();
        self.ok("PATCH", "/balloon", &json!({"amount_mib": mib}).to_string());
        loop {
            let stats = self.balloon_stats();
            assert_eq!(stats["target_mib"], mib, "{stats}");
            if stats["actual_mib"] == mib {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the guest never reached {mib} MiB: {stats}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// The resident memory of process `pid`, guest memory included, in MiB.
pub fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in status");
    kib / 1024.0
}
