//! Drives the real binaries as a user does: spawn ember (or the jailer, or
//! the page-fault handler), talk to its API socket, read its console, feed
//! its stdin, wait for it to exit. Shared by the integration tests in
//! `tests/` and the benchmarks in `benches/`.

pub mod artifacts;
pub mod balloon;
pub mod bench;
pub mod containerd;
pub mod ember;
pub mod fleet;
pub mod http;
pub mod hugepages;
pub mod jail;
pub mod netns;
pub mod scratch;
pub mod uffd;

pub use artifacts::{artifact, ember_bin, ember_snapshot_bin, expected_memory_lines, jailer_bin};
pub use balloon::resident_mib;
pub use ember::{on_pci, Ember};
pub use http::{http, http_bytes, send_and_hang_up, try_http, KeepAlive};
pub use hugepages::{hugetlb_kib, HugePagePool};
pub use jail::Jail;
pub use netns::NetNs;
pub use scratch::TempDir;
pub use uffd::UffdHandler;

use std::path::Path;
use std::time::Duration;

/// Fails loudly when KVM is missing: these tests never skip.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: ember's integration tests need KVM (a host with hardware or nested virtualization)"
    );
}

/// Fails loudly unless the tests run as root, which the jail needs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "the jail tests must run as root (CI does)");
}

/// Resident memory of `pid` outside its guest-memory mapping (the one of
/// `guest_kib`), in KiB: what the VMM itself costs.
pub fn rss_besides_guest_kib(pid: u32, guest_kib: u64) -> f64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let (mut total, mut guest, mut size) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if size == guest_kib {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    (total - guest) as f64
}

/// Clock ticks of user and system time `pid` used over `period`, after
/// 300 ms for the guest to settle into its wait.
pub fn cpu_ticks_over(pid: u32, period: Duration) -> u64 {
    ticks_over(&format!("/proc/{pid}/stat"), period)
}

/// As [`cpu_ticks_over`], for `pid`'s main thread alone (ember's event loop,
/// without the vCPU threads a busy guest keeps busy).
pub fn main_thread_ticks_over(pid: u32, period: Duration) -> u64 {
    ticks_over(&format!("/proc/{pid}/task/{pid}/stat"), period)
}

fn ticks_over(stat_path: &str, period: Duration) -> u64 {
    let ticks = || {
        let stat = std::fs::read_to_string(stat_path).expect("the process's stat");
        // Fields after the command name, which is in parentheses.
        let rest = &stat[stat.rfind(')').expect("a command name") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields[i].parse::<u64>().expect("a tick count");
        field(11) + field(12)
    };
    std::thread::sleep(Duration::from_millis(300));
    let before = ticks();
    std::thread::sleep(period);
    ticks() - before
}
