//! virtio-mmio against virtio-pci (`--enable-pci`), side by side on the echo
//! function: spawn -> ready, InstanceStart, a snapshot restore to its first
//! answer, invocation round trips back to back and with the guest asleep in
//! between (2 ms apart, the serverless case), vsock throughput (1 MiB echoes),
//! and what each invocation costs in exits to ember, MMIO accesses and
//! interrupts (KVM's tracepoints, counted by `perf stat` where the host has it).
//!
//! `cargo bench --bench transport [-- --short] [-- --json PATH]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, BenchArgs, Samples};
use ember_test_support::{artifact, ember_bin, require_kvm, Ember, KeepAlive, TempDir};
use serde_json::json;

const READY: &str = "EMBER-FN: ready on port";
const TIMEOUT: Duration = Duration::from_secs(20);
/// The pause between invocations that lets the guest go to sleep.
const IDLE_GAP: Duration = Duration::from_millis(2);

#[derive(Clone, Copy)]
enum Transport {
    Mmio,
    Pci,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Mmio => "mmio",
            Transport::Pci => "pci",
        }
    }

    /// ember with its API in `dir`, on this transport.
    fn ember(self, dir: &TempDir) -> Ember {
        let socket = dir.path("api.sock");
        let mut args = vec!["--api-sock", socket.to_str().unwrap()];
        if let Transport::Pci = self {
            args.push("--enable-pci");
        }
        Ember::spawn_program(&ember_bin(), &args, Some(&socket))
    }
}

/// The echo function booted through the API; returns ember and the time from
/// InstanceStart to the function's ready line.
fn boot(transport: Transport, dir: &TempDir, echo: &Path) -> (Ember, Duration) {
    let ember = transport.ember(dir);
    ember.put_boot_source(echo, "console=ttyS0");
    ember.ok(
        "PUT",
        "/vsock",
        &json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
    );
    let start = Instant::now();
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let (at, _) = ember
        .wait_line(TIMEOUT, |l| l.starts_with(READY))
        .expect("function ready");
    (ember, at - start)
}

/// KVM's tracepoints counted system-wide by `perf stat` while the bench runs
/// one VM (kvm_pvm reports no `kvm_exit`, so these are the kinds that show):
/// exits to ember, MMIO and port accesses (KVM's or ember's), and the end of
/// each interrupt the guest took.
const EVENTS: [(&str, &str); 4] = [
    ("kvm:kvm_userspace_exit", "exits to ember"),
    ("kvm:kvm_mmio", "MMIO accesses"),
    ("kvm:kvm_pio", "port accesses"),
    ("kvm:kvm_eoi", "interrupts taken"),
];

/// A running `perf stat`, if the host has perf.
struct ExitCounter(Option<(std::process::Child, PathBuf)>);

impl ExitCounter {
    fn start(dir: &TempDir) -> ExitCounter {
        let out = dir.path("perf.csv");
        let events: Vec<&str> = EVENTS.iter().map(|(e, _)| *e).collect();
        let child = std::process::Command::new("perf")
            .args(["stat", "-a", "-x,", "-o"])
            .arg(&out)
            .args(["-e", &events.join(",")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok();
        // perf counts from when it has opened its events.
        std::thread::sleep(Duration::from_millis(300));
        ExitCounter(child.map(|c| (c, out)))
    }

    /// Stops counting; each event's count, in [`EVENTS`] order.
    fn stop(self) -> Option<Vec<u64>> {
        let (mut child, out) = self.0?;
        let pid = i32::try_from(child.id()).ok()?;
        // SAFETY: signals our own child, which it has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        child.wait().ok()?;
        let text = std::fs::read_to_string(out).ok()?;
        EVENTS
            .iter()
            .map(|(event, _)| {
                text.lines()
                    .find(|l| l.contains(event))
                    .and_then(|l| l.split(',').next()?.parse().ok())
            })
            .collect()
    }
}

struct Results {
    samples: Vec<Samples>,
    /// Per invocation 2 ms apart, each of [`EVENTS`].
    events_per_invocation: Option<Vec<f64>>,
}

fn measure(transport: Transport, echo: &Path, short: bool) -> Results {
    let name = transport.name();
    let (boots, runs, big_runs, restores): (u32, u32, u32, u32) = if short {
        (3, 100, 5, 3)
    } else {
        (20, 1000, 50, 20)
    };
    let mut ready = Samples::new(&format!("{name}: spawn -> ready"), "us");
    let mut start = Samples::new(&format!("{name}: InstanceStart -> ready"), "us");
    for _ in 0..boots {
        let dir = TempDir::new("transport-bench");
        let (ember, started) = boot(transport, &dir, echo);
        let (at, _) = ember
            .wait_line(TIMEOUT, |l| l.starts_with(READY))
            .expect("function ready");
        ready.values.push(micros(at - ember.spawned_at));
        start.values.push(micros(started));
    }

    let dir = TempDir::new("transport-bench");
    let (ember, _) = boot(transport, &dir, echo);
    let kib = vec![7u8; 1024];
    let mut client = KeepAlive::connect(ember.socket.as_deref().unwrap());
    let mut invoke = |payload: &[u8]| {
        let begin = Instant::now();
        let (status, body) = client.request("POST", "/invocations", payload);
        assert_eq!((status, body.len()), (200, payload.len()));
        micros(begin.elapsed())
    };
    let mut hot = Samples::new(&format!("{name}: echo 1 KiB, back to back"), "us");
    for _ in 0..runs {
        hot.values.push(invoke(&kib));
    }
    let mut idle = Samples::new(&format!("{name}: echo 1 KiB, 2 ms apart"), "us");
    let counter = ExitCounter::start(&dir);
    for _ in 0..runs {
        std::thread::sleep(IDLE_GAP);
        idle.values.push(invoke(&kib));
    }
    // Per invocation, with the guest's sleep between two of them.
    let events_per_invocation = counter
        .stop()
        .map(|counts| counts.iter().map(|&c| c as f64 / f64::from(runs)).collect());
    let mib = vec![9u8; 1 << 20];
    let mut big = Samples::new(&format!("{name}: vsock echo 1 MiB"), "MB/s");
    for _ in 0..big_runs {
        // Both ways: 2 MiB moved per call.
        big.values.push(2.0 * f64::from(1u32 << 20) / invoke(&mib));
    }

    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snapshot = (dir.path("fn.snap"), dir.path("fn.mem"));
    ember.ok(
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_path": snapshot.0, "mem_file_path": snapshot.1}).to_string(),
    );
    drop(ember);
    let mut restore = Samples::new(&format!("{name}: snapshot load -> first answer"), "us");
    for _ in 0..restores {
        let dir = TempDir::new("transport-restore");
        let ember = transport.ember(&dir);
        let begin = Instant::now();
        ember.ok(
            "PUT",
            "/snapshot/load",
            &json!({"snapshot_path": snapshot.0,
                    "mem_backend": {"backend_type": "File", "backend_path": snapshot.1},
                    "resume_vm": true, "vsock_override": {"uds_path": dir.path("v.sock")}})
            .to_string(),
        );
        assert_eq!(ember.invoke(b"warm").0, 200);
        restore.values.push(micros(begin.elapsed()));
    }
    Results {
        samples: vec![ready, start, restore, hot, idle, big],
        events_per_invocation,
    }
}

fn main() {
    let args = BenchArgs::parse("transport");
    require_kvm();
    let echo = artifact("unikernel-echo");
    let mmio = measure(Transport::Mmio, &echo, args.short);
    let pci = measure(Transport::Pci, &echo, args.short);
    let all: Vec<&Samples> = mmio
        .samples
        .iter()
        .zip(&pci.samples)
        .flat_map(|(m, p)| [m, p])
        .collect();
    println!(
        "\nember transport benchmark: virtio-mmio against virtio-pci (echo unikernel, 1 vCPU)\n"
    );
    let results = ember_test_support::bench::print_table(&all);
    println!("\nper invocation 2 ms apart (perf's count of KVM tracepoints):");
    for (i, (event, what)) in EVENTS.iter().enumerate() {
        let show = |r: &Results| {
            r.events_per_invocation
                .as_ref()
                .and_then(|e| e.get(i))
                .map_or("n/a".to_string(), |v| format!("{v:.2}"))
        };
        println!(
            "  {what:<18} ({event:<24}) mmio {:>6}  pci {:>6}",
            show(&mmio),
            show(&pci)
        );
    }
    let p50 = |s: &Samples| s.percentile(50.0);
    let idle_gain = 1.0 - p50(&pci.samples[4]) / p50(&mmio.samples[4]);
    println!(
        "invocation 2 ms apart, p50: pci {:.0}% below mmio",
        idle_gain * 100.0
    );
    let report = json!({"benchmark": "transport", "short": args.short, "results": results,
        "events": EVENTS.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        "events_per_invocation": {"mmio": mmio.events_per_invocation, "pci": pci.events_per_invocation},
        "idle_round_trip_p50_gain": idle_gain});
    args.write_report(&report);
}
