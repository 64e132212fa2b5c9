//! virtio-mmio against virtio-pci (`--enable-pci`), side by side on the echo
//! function, measured in turns so that the host's drift weighs on both alike: spawn -> ready, InstanceStart, a snapshot restore to its first
//! answer, invocation round trips back to back and with the guest asleep in
//! between (2 ms apart, the serverless case; through ember's API and straight
//! over the vsock socket), vsock throughput (1 MiB echoes),
//! and what each invocation costs in exits to ember, MMIO accesses and
//! interrupts (KVM's tracepoints, counted by `perf stat` where the host has it).
//!
//! `cargo bench --bench transport [-- --short] [-- --json PATH]`

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_proto::invocation::{parse_response_prefix, request_prefix, Status, RESPONSE_PREFIX_LEN};
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
        // SAFETY: signals our own child, which has not been reaped yet.
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

/// Both transports' samples of one measure, taken in turns so that the
/// host's drift (a 2-core nested host is noisy) weighs on both alike.
struct Pair([Samples; 2]);

impl Pair {
    fn new(what: &str, unit: &'static str) -> Pair {
        Pair(TRANSPORTS.map(|t| Samples::new(&format!("{}: {what}", t.name()), unit)))
    }

    fn push(&mut self, transport: Transport, value: f64) {
        self.0[transport as usize].values.push(value);
    }
}

const TRANSPORTS: [Transport; 2] = [Transport::Mmio, Transport::Pci];

/// The transports in the order of turn `i`: alternating which goes first.
fn turn(i: u32) -> [Transport; 2] {
    if i.is_multiple_of(2) {
        TRANSPORTS
    } else {
        [Transport::Pci, Transport::Mmio]
    }
}

/// One echo function per transport, with a kept-alive API connection each
/// and a connection of its own to the function's vsock port.
struct Running {
    dir: TempDir,
    ember: Ember,
    client: KeepAlive,
    vsock: BufReader<UnixStream>,
}

impl Running {
    fn start(transport: Transport, echo: &Path) -> Running {
        let dir = TempDir::new("transport-bench");
        let (ember, _) = boot(transport, &dir, echo);
        let client = KeepAlive::connect(ember.socket.as_deref().unwrap());
        let mut vsock = UnixStream::connect(dir.path("v.sock")).expect("the vsock socket");
        vsock.write_all(b"CONNECT 1024\n").unwrap();
        let mut vsock = BufReader::new(vsock);
        let mut line = String::new();
        vsock.read_line(&mut line).unwrap();
        assert!(line.starts_with("OK "), "{line}");
        Running {
            dir,
            ember,
            client,
            vsock,
        }
    }

    /// Through ember's API, which speaks to the function over vsock itself.
    fn invoke(&mut self, payload: &[u8]) -> f64 {
        let begin = Instant::now();
        let (status, body) = self.client.request("POST", "/invocations", payload);
        assert_eq!((status, body.len()), (200, payload.len()));
        micros(begin.elapsed())
    }

    /// Straight to the function's vsock port, as a platform that speaks ember's
    /// framing does: no API thread on the way.
    fn invoke_vsock(&mut self, payload: &[u8]) -> f64 {
        let len = u32::try_from(payload.len()).expect("a short payload");
        let request = [&request_prefix(len)[..], payload].concat();
        let begin = Instant::now();
        self.vsock.get_mut().write_all(&request).unwrap();
        let mut head = [0u8; RESPONSE_PREFIX_LEN];
        self.vsock.read_exact(&mut head).unwrap();
        let (status, out_len) = parse_response_prefix(head);
        let mut output = vec![0u8; out_len as usize];
        self.vsock.read_exact(&mut output).unwrap();
        let elapsed = begin.elapsed();
        assert_eq!((status, output.len()), (Some(Status::Ok), payload.len()));
        micros(elapsed)
    }
}

fn main() {
    let args = BenchArgs::parse("transport");
    require_kvm();
    let echo = artifact("unikernel-echo");
    let (boots, runs, big_runs, restores): (u32, u32, u32, u32) = if args.short {
        (4, 100, 6, 4)
    } else {
        (20, 1000, 50, 20)
    };

    let mut ready = Pair::new("spawn -> ready", "us");
    let mut start = Pair::new("InstanceStart -> ready", "us");
    for i in 0..boots {
        for transport in turn(i) {
            let dir = TempDir::new("transport-bench");
            let (ember, started) = boot(transport, &dir, &echo);
            let (at, _) = ember
                .wait_line(TIMEOUT, |l| l.starts_with(READY))
                .expect("function ready");
            ready.push(transport, micros(at - ember.spawned_at));
            start.push(transport, micros(started));
        }
    }

    let mut running: Vec<Running> = TRANSPORTS
        .iter()
        .map(|&transport| Running::start(transport, &echo))
        .collect();
    let kib = vec![7u8; 1024];
    // Back to back: blocks of 20 in turns, so that neither guest is still
    // polling from its own last call while the other is measured.
    let mut hot = Pair::new("echo 1 KiB, back to back", "us");
    for block in 0..runs / 20 {
        for transport in turn(block) {
            for _ in 0..20 {
                let sample = running[transport as usize].invoke(&kib);
                hot.push(transport, sample);
            }
        }
    }
    let mut idle = Pair::new("echo 1 KiB, 2 ms apart", "us");
    let mut events = [None, None];
    for transport in TRANSPORTS {
        let counter = ExitCounter::start(&running[transport as usize].dir);
        for _ in 0..runs / 2 {
            std::thread::sleep(IDLE_GAP);
            let sample = running[transport as usize].invoke(&kib);
            idle.push(transport, sample);
        }
        // Per invocation, with the guest's sleep between two of them.
        events[transport as usize] = counter.stop().map(|counts| {
            counts
                .iter()
                .map(|&c| c as f64 / f64::from(runs / 2))
                .collect::<Vec<f64>>()
        });
    }
    for i in runs / 2..runs {
        for transport in turn(i) {
            std::thread::sleep(IDLE_GAP);
            let sample = running[transport as usize].invoke(&kib);
            idle.push(transport, sample);
        }
    }
    let mut direct = Pair::new("echo 1 KiB over vsock, 2 ms apart", "us");
    for i in 0..runs {
        for transport in turn(i) {
            std::thread::sleep(IDLE_GAP);
            let sample = running[transport as usize].invoke_vsock(&kib);
            direct.push(transport, sample);
        }
    }
    let mib = vec![9u8; 1 << 20];
    let mut big = Pair::new("vsock echo 1 MiB", "MB/s");
    for i in 0..big_runs {
        for transport in turn(i) {
            // Both ways: 2 MiB moved per call.
            let sample = 2.0 * f64::from(1u32 << 20) / running[transport as usize].invoke(&mib);
            big.push(transport, sample);
        }
    }

    // Each VM's snapshot, in its directory, which lives as long as the files do.
    let snapshots: Vec<(TempDir, PathBuf, PathBuf)> = running
        .into_iter()
        .map(|vm| {
            vm.ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
            let (state, mem) = (vm.dir.path("fn.snap"), vm.dir.path("fn.mem"));
            vm.ember.ok(
                "PUT",
                "/snapshot/create",
                &json!({"snapshot_path": state, "mem_file_path": mem}).to_string(),
            );
            drop(vm.ember);
            (vm.dir, state, mem)
        })
        .collect();
    let mut restore = Pair::new("snapshot load -> first answer", "us");
    for i in 0..restores {
        for transport in turn(i) {
            let (_, state, mem) = &snapshots[transport as usize];
            let dir = TempDir::new("transport-restore");
            let ember = transport.ember(&dir);
            let begin = Instant::now();
            ember.ok(
                "PUT",
                "/snapshot/load",
                &json!({"snapshot_path": state,
                        "mem_backend": {"backend_type": "File", "backend_path": mem},
                        "resume_vm": true, "vsock_override": {"uds_path": dir.path("v.sock")}})
                .to_string(),
            );
            assert_eq!(ember.invoke(b"warm").0, 200);
            restore.push(transport, micros(begin.elapsed()));
        }
    }
    drop(snapshots);

    let pairs = [&ready, &start, &restore, &hot, &idle, &direct, &big];
    let all: Vec<&Samples> = pairs.iter().flat_map(|p| p.0.iter()).collect();
    println!("\nember transport benchmark: virtio-mmio against virtio-pci, measured in turns (echo unikernel, 1 vCPU)\n");
    let results = ember_test_support::bench::print_table(&all);
    println!("\nper invocation 2 ms apart (perf's count of KVM tracepoints):");
    for (i, (event, what)) in EVENTS.iter().enumerate() {
        let show = |t: Transport| {
            events[t as usize]
                .as_ref()
                .and_then(|e| e.get(i))
                .map_or("n/a".to_string(), |v| format!("{v:.2}"))
        };
        println!(
            "  {what:<18} ({event:<24}) mmio {:>6}  pci {:>6}",
            show(Transport::Mmio),
            show(Transport::Pci)
        );
    }
    let p50 = |pair: &Pair, t: Transport| pair.0[t as usize].percentile(50.0);
    let idle_gain = 1.0 - p50(&idle, Transport::Pci) / p50(&idle, Transport::Mmio);
    let direct_gain = 1.0 - p50(&direct, Transport::Pci) / p50(&direct, Transport::Mmio);
    let boot_cost = p50(&start, Transport::Pci) - p50(&start, Transport::Mmio);
    println!(
        "invocation 2 ms apart, p50: pci {:.0}% below mmio through the API, {:.0}% over vsock; InstanceStart -> ready, p50: pci {boot_cost:+.0} us",
        idle_gain * 100.0,
        direct_gain * 100.0
    );
    let report = json!({"benchmark": "transport", "short": args.short, "results": results,
        "events": EVENTS.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        "events_per_invocation": {"mmio": events[0], "pci": events[1]},
        "idle_round_trip_p50_gain": idle_gain, "vsock_idle_round_trip_p50_gain": direct_gain, "instance_start_p50_cost_us": boot_cost});
    args.write_report(&report);
}
