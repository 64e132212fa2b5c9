//! Fleet scale: many echo-function VMs started from one snapshot (and from a
//! boot) at a chosen concurrency, kept running, invoked once each over vsock,
//! then killed, with ember and, given `--firecracker PATH`, Firecracker in
//! turns in the same run; also from a pool (every process started and idle
//! first, then loaded), where a cold start is the load and first answer alone. It prints per-stage percentiles (spawn -> API
//! ready -> loaded -> first answer, kill -> reaped), starts per second, the
//! host CPU per start and per exit (the VMMs run in a cgroup of their own),
//! PSS, threads and fds per VM and the host's MemAvailable drop per VM, and
//! spawn -> exit of a guest that resets at once.
//!
//! `cargo bench --bench fleet [-- --short] [--vms N] [--concurrency C]
//!  [--boots N] [--rounds R] [--firecracker PATH] [--json PATH]`

use std::path::{Path, PathBuf};
use std::time::Instant;

use ember_test_support::artifacts::static_ember;
use ember_test_support::bench::{micros, BenchArgs, Samples};
use ember_test_support::fleet::{
    footprint, mem_available_kib, snapshot, stop, Cgroup, Fleet, Start, Vmm,
};
use ember_test_support::{artifact, require_kvm, require_root};
use serde_json::json;

/// Guest memory of every function VM.
const MEM_MIB: u32 = 64;

/// A flag's value, parsed, or `default`.
fn flag<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A directory for the run's VMs on tmpfs, removed at the end.
struct RunDir(PathBuf);

impl RunDir {
    fn new() -> RunDir {
        let path = PathBuf::from(format!("/dev/shm/ember-fleet-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the fleet directory on /dev/shm");
        RunDir(path)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One VMM's figures over its rounds.
struct Figures {
    api_ready: Samples,
    loaded: Samples,
    answered: Samples,
    exit: Samples,
    starts_per_s: Vec<f64>,
    cpu_per_start_ms: Vec<f64>,
    /// For a pool: the CPU each process took to start and wait idle.
    cpu_per_idle_ms: Vec<f64>,
    cpu_per_exit_ms: Vec<f64>,
    pss_kib: Vec<f64>,
    mem_drop_kib: Vec<f64>,
    threads: Vec<f64>,
    fds: Vec<f64>,
}

impl Figures {
    fn new(vmm: &str, start: &str) -> Figures {
        let s = |what: &str| Samples::new(&format!("{vmm} {start}: {what}"), "us");
        // From a pool, the load and answer count from the load request.
        let from = if start.starts_with("pool") {
            "load"
        } else {
            "spawn"
        };
        Figures {
            api_ready: s("spawn -> API ready"),
            loaded: s(&format!("{from} -> loaded (204)")),
            answered: s(&format!("{from} -> first answer")),
            exit: s("SIGKILL -> reaped"),
            starts_per_s: Vec::new(),
            cpu_per_start_ms: Vec::new(),
            cpu_per_idle_ms: Vec::new(),
            cpu_per_exit_ms: Vec::new(),
            pss_kib: Vec::new(),
            mem_drop_kib: Vec::new(),
            threads: Vec::new(),
            fds: Vec::new(),
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Starts, measures and kills one fleet.
fn round(fleet: &Fleet, figures: &mut Figures, cgroup: &Cgroup) {
    let available = mem_available_kib();
    let started = fleet
        .start()
        .unwrap_or_else(|e| panic!("{} fleet: {e}", fleet.vmm.name()));
    let count = started.vms.len() as f64;
    let held = available.saturating_sub(mem_available_kib()) as f64 / count;
    let foot = footprint(&started.vms);
    for t in &started.times {
        figures.api_ready.values.push(micros(t.api_ready));
        figures.loaded.values.push(micros(t.loaded));
        figures.answered.values.push(micros(t.answered));
    }
    figures
        .starts_per_s
        .push(count / started.wall.as_secs_f64());
    figures
        .cpu_per_start_ms
        .push(started.cpu_usec as f64 / 1000.0 / count);
    figures
        .cpu_per_idle_ms
        .push(started.pool_cpu_usec as f64 / 1000.0 / count);
    figures.pss_kib.push(foot.pss_kib);
    figures.mem_drop_kib.push(held);
    figures.threads.push(foot.threads);
    figures.fds.push(foot.fds);
    let stopped = stop(started.vms, libc::SIGKILL, fleet.concurrency, cgroup);
    figures
        .exit
        .values
        .extend(stopped.exits.iter().map(|&d| micros(d)));
    figures
        .cpu_per_exit_ms
        .push(stopped.cpu_usec as f64 / 1000.0 / count);
    let _ = std::fs::remove_dir_all(fleet.base);
}

/// Spawn -> exit of a VM whose guest resets at once (`test-elf`, configured
/// by a config file, no API), `runs` times.
fn reset_exits(vmm: &Vmm, kernel: &Path, dir: &Path, runs: u32) -> Samples {
    let config = dir.join("reset.json");
    let body = json!({"boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
                      "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB},
                      "drives": []});
    std::fs::write(&config, body.to_string()).expect("write the config file");
    let mut samples = Samples::new(
        &format!("{}: spawn -> exit, guest resets at once", vmm.name()),
        "us",
    );
    let config = config.to_string_lossy();
    for _ in 0..runs {
        let begin = Instant::now();
        let status = vmm
            .command(dir, &["--no-api", "--config-file", &config])
            .status()
            .expect("run the VMM");
        samples.values.push(micros(begin.elapsed()));
        assert!(status.success(), "{} ended with {status}", vmm.name());
    }
    samples
}

fn main() {
    let args = BenchArgs::parse("fleet");
    require_kvm();
    require_root();
    let (vms, boots, rounds, resets) = if args.short {
        (
            flag("--vms", 100),
            flag("--boots", 20),
            flag("--rounds", 1),
            10,
        )
    } else {
        (
            flag("--vms", 1000),
            flag("--boots", 200),
            flag("--rounds", 2),
            40,
        )
    };
    let concurrency: usize = flag("--concurrency", 8);
    let mut vmms = vec![Vmm::Ember(static_ember())];
    let firecracker = flag::<PathBuf>("--firecracker", PathBuf::new());
    if let Some(path) = Some(firecracker)
        .filter(|p| !p.as_os_str().is_empty())
        .or_else(|| std::env::var_os("EMBER_FIRECRACKER").map(PathBuf::from))
    {
        vmms.push(Vmm::Firecracker(path));
    }
    let echo = artifact("unikernel-echo");
    let run = RunDir::new();
    let cgroup = Cgroup::new("ember-fleet");

    let snapshots: Vec<Start> = vmms
        .iter()
        .map(|vmm| {
            snapshot(
                vmm,
                &echo,
                MEM_MIB,
                &run.0.join(format!("{}-image", vmm.name())),
            )
        })
        .collect();
    let boot = Start::Boot {
        kernel: echo.clone(),
        mem_mib: MEM_MIB,
    };
    // Per kind of start, per VMM: from one snapshot, from one snapshot into
    // processes started ahead (a pool), and booted.
    const KINDS: [&str; 3] = ["snapshot", "pool + snapshot", "boot"];
    let mut figures: Vec<Vec<Figures>> = KINDS
        .iter()
        .map(|kind| vmms.iter().map(|v| Figures::new(v.name(), kind)).collect())
        .collect();
    for r in 0..rounds {
        // Alternating which VMM goes first, so the host's drift weighs on both.
        let mut order: Vec<usize> = (0..vmms.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for &i in &order {
            let base = run.0.join(format!("{}-clones", vmms[i].name()));
            for (k, kind) in KINDS.iter().enumerate() {
                let fleet = Fleet {
                    vmm: &vmms[i],
                    start: if *kind == "boot" {
                        &boot
                    } else {
                        &snapshots[i]
                    },
                    count: if *kind == "boot" { boots } else { vms },
                    concurrency,
                    base: &base,
                    cgroup: &cgroup,
                    pool: *kind == "pool + snapshot",
                };
                round(&fleet, &mut figures[k][i], &cgroup);
            }
        }
    }
    let test_elf = artifact("test-elf");
    let exits: Vec<Samples> = vmms
        .iter()
        .map(|vmm| reset_exits(vmm, &test_elf, &run.0, resets))
        .collect();

    println!(
        "\nember fleet benchmark: {vms} echo VMs from one snapshot and {boots} booted, {concurrency} in flight, {rounds} round(s), {MEM_MIB} MiB each\n"
    );
    let mut all: Vec<&Samples> = Vec::new();
    for f in figures.iter().flatten() {
        all.extend([&f.api_ready, &f.loaded, &f.answered, &f.exit]);
    }
    all.extend(exits.iter());
    let table = ember_test_support::bench::print_table(&all);
    println!(
        "\n{:<32} {:>9} {:>13} {:>12} {:>12} {:>9} {:>13} {:>8} {:>6}",
        "fleet (medians)",
        "starts/s",
        "CPU/start ms",
        "(pool) ms",
        "CPU/exit ms",
        "PSS KiB",
        "MemAvail KiB",
        "threads",
        "fds"
    );
    let mut summary = Vec::new();
    for f in figures.iter().flatten() {
        let name = f.api_ready.name.trim_end_matches(": spawn -> API ready");
        let row = json!({"fleet": name,
            "starts_per_s": median(&f.starts_per_s), "cpu_per_start_ms": median(&f.cpu_per_start_ms),
            "cpu_per_idle_start_ms": median(&f.cpu_per_idle_ms),
            "cpu_per_exit_ms": median(&f.cpu_per_exit_ms), "pss_kib": median(&f.pss_kib),
            "mem_available_drop_kib": median(&f.mem_drop_kib), "threads": median(&f.threads),
            "fds": median(&f.fds)});
        println!(
            "{:<32} {:>9.0} {:>13.2} {:>12.2} {:>12.2} {:>9.0} {:>13.0} {:>8.1} {:>6.1}",
            name,
            median(&f.starts_per_s),
            median(&f.cpu_per_start_ms),
            median(&f.cpu_per_idle_ms),
            median(&f.cpu_per_exit_ms),
            median(&f.pss_kib),
            median(&f.mem_drop_kib),
            median(&f.threads),
            median(&f.fds)
        );
        summary.push(row);
    }
    let report = json!({"benchmark": "fleet", "short": args.short, "vms": vms, "boots": boots,
        "concurrency": concurrency, "rounds": rounds, "results": table, "fleets": summary});
    args.write_report(&report);
}
