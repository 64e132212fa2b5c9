//! ember under containerd: `ctr run` -> the function's first answer for a
//! task that boots and one that restores the shim's cached snapshot (through
//! ember's API, and over HTTP at a pod's address), what the
//! shim itself spends per task (its `create` and `start`), tasks started per
//! second from the cache, and the host memory an idle task holds (the shim
//! and ember processes, and the host's MemAvailable drop).
//!
//! `cargo bench --bench containerd [-- --short] [-- --json PATH]`. Root and KVM.

use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, print_table, BenchArgs, Samples};
use ember_test_support::containerd::{Containerd, RUNTIME};
use ember_test_support::{artifact, rss_besides_guest_kib, try_http, KeepAlive, NetNs};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The echo function's guest memory (the image's default), in KiB.
const GUEST_KIB: u64 = 64 * 1024;
/// Tasks started at once in the rate measure.
const IN_FLIGHT: usize = 4;

/// Starts task `id` of `image` with `ctr run --detach` and returns the time
/// until its function first answers through ember's API.
fn run_to_first_answer(containerd: &Containerd, image: &str, id: &str, env: &[&str]) -> Duration {
    run_with(containerd, image, id, env, &[])
}

/// As [`run_to_first_answer`], with more `ctr run` arguments.
fn run_with(
    containerd: &Containerd,
    image: &str,
    id: &str,
    env: &[&str],
    more: &[&str],
) -> Duration {
    let started = Instant::now();
    let mut args = vec!["run", "--detach", "--runtime", RUNTIME];
    for e in env {
        args.extend(["--env", e]);
    }
    args.extend(more);
    args.extend([image, id]);
    containerd.ok(&args);
    let socket = containerd.bundle(id).join("ember.sock");
    loop {
        // Before the guest listens ember answers 502; before ember's API is
        // up the connect fails: try again a millisecond later.
        if let Ok((200, body)) = try_http(&socket, "POST", "/invocations", b"ping", TIMEOUT) {
            assert_eq!(body, "ping");
            return started.elapsed();
        }
        assert!(started.elapsed() < TIMEOUT, "{id} never answered");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A task in pod `pod` (bridged into `host`'s `cni0` at 10.79.0.2): the time
/// from `ctr run` until the function is ready (its first answer through ember's
/// API, as a readiness probe sees it) and then answers HTTP at the pod's
/// address.
fn run_to_first_http_answer(
    containerd: &Containerd,
    image: &str,
    id: &str,
    env: &[&str],
    host: &NetNs,
    pod: &NetNs,
) -> Duration {
    let started = Instant::now();
    let with_ns = format!("network:{}", pod.path());
    run_with(containerd, image, id, env, &["--with-ns", &with_ns]);
    let mut client = KeepAlive::tcp(host.connect("10.79.0.2:8080"));
    assert_eq!(
        client.request("POST", "/", b"ping"),
        (200, b"ping".to_vec())
    );
    started.elapsed()
}

/// The shim's own time for task `id`, from its log line: create and start, in µs.
fn shim_time(containerd: &Containerd, id: &str) -> (f64, f64) {
    let line = containerd.wait_log(&format!("task {id}: "), TIMEOUT);
    let number = |after: &str| -> f64 {
        line.split(after)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no '{after}' in {line}"))
    };
    (number("create "), number("start "))
}

fn mem_available_kib() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemAvailable")
}

fn pss_kib(pid: u32) -> f64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("smaps");
    rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Pss")
}

fn parent(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 1..];
    after_name
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ppid")
}

fn main() {
    let args = BenchArgs::parse("containerd");
    let (runs, idle_tasks, rate_tasks): (u32, u32, usize) =
        if args.short { (3, 5, 8) } else { (15, 40, 40) };
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));

    let mut boot = Samples::new("ctr run -> first answer, boot", "us");
    let mut restore = Samples::new("ctr run -> first answer, snapshot restore", "us");
    let mut create = Samples::new("shim create (restore: mount, new netns)", "us");
    let mut start = Samples::new("shim start (restore: digest, jail, spawn the jailer)", "us");
    for run in 0..runs {
        let id = format!("boot-{run}");
        let took = run_to_first_answer(&containerd, &image, &id, &["EMBER_SNAPSHOT=off"]);
        boot.values.push(micros(took));
        containerd.kill_and_remove(&id);
    }
    // The first task of the function takes the snapshot the rest restore.
    run_to_first_answer(&containerd, &image, "seed", &[]);
    containerd.wait_log("task seed: snapshot", TIMEOUT);
    containerd.kill_and_remove("seed");
    for run in 0..runs {
        let id = format!("restore-{run}");
        restore
            .values
            .push(micros(run_to_first_answer(&containerd, &image, &id, &[])));
        let (c, s) = shim_time(&containerd, &id);
        create.values.push(c);
        start.values.push(s);
        containerd.kill_and_remove(&id);
    }

    // On a pod network: a fresh pod each run, bridged as CNI's bridge plugin
    // would, called over HTTP from the bridge's side.
    let host = NetNs::new("bench-bridge");
    host.add_bridge("cni0", "10.79.0.1/24");
    let mut http_boot = Samples::new("pod network: ctr run -> first HTTP answer, boot", "us");
    let mut http_restore = Samples::new(
        "pod network: ctr run -> first HTTP answer, snapshot restore",
        "us",
    );
    let pod_run = |id: &str, env: &[&str]| {
        let pod = NetNs::new(id);
        host.add_pod(
            "cni0",
            &pod,
            &format!("v-{id}"),
            "10.79.0.2/24",
            "10.79.0.1",
        );
        let took = run_to_first_http_answer(&containerd, &image, id, env, &host, &pod);
        if id == "nseed" {
            containerd.wait_log("task nseed: snapshot", TIMEOUT);
        }
        containerd.kill_and_remove(id);
        took
    };
    for run in 0..runs {
        let took = pod_run(&format!("nb-{run}"), &["EMBER_SNAPSHOT=off"]);
        http_boot.values.push(micros(took));
    }
    pod_run("nseed", &[]);
    let mut pod_create = Samples::new(
        "pod network: shim create (restore: + TAP, redirects, MMDS data)",
        "us",
    );
    let mut pod_start = Samples::new("pod network: shim start (restore)", "us");
    for run in 0..runs {
        let id = format!("nr-{run}");
        http_restore.values.push(micros(pod_run(&id, &[])));
        let (c, s) = shim_time(&containerd, &id);
        pod_create.values.push(c);
        pod_start.values.push(s);
    }

    // Tasks started per second from the cache, IN_FLIGHT at a time.
    let began = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..IN_FLIGHT {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= rate_tasks {
                    return;
                }
                run_to_first_answer(&containerd, &image, &format!("rate-{i}"), &[]);
            });
        }
    });
    let rate = rate_tasks as f64 / began.elapsed().as_secs_f64();
    for i in 0..rate_tasks {
        containerd.kill_and_remove(&format!("rate-{i}"));
    }

    // Idle tasks: what each holds on the host once it has answered.
    let before = mem_available_kib();
    let mut shim_pss = Samples::new("idle task: shim PSS", "KiB");
    let mut ember_rss = Samples::new("idle task: ember RSS besides guest memory", "KiB");
    let ids: Vec<String> = (0..idle_tasks).map(|i| format!("idle-{i}")).collect();
    for id in &ids {
        run_to_first_answer(&containerd, &image, id, &[]);
    }
    let drop_per_task = (before - mem_available_kib()) / f64::from(idle_tasks);
    for id in &ids {
        let (pid, _) = containerd.task(id).expect("listed");
        shim_pss.values.push(pss_kib(parent(pid)));
        ember_rss.values.push(rss_besides_guest_kib(pid, GUEST_KIB));
    }
    for id in &ids {
        containerd.kill_and_remove(id);
    }

    println!(
        "\nember under containerd (echo function, {runs} runs; ctr and containerd included)\n"
    );
    let rows = print_table(&[
        &boot,
        &restore,
        &http_boot,
        &http_restore,
        &pod_create,
        &pod_start,
        &create,
        &start,
        &shim_pss,
        &ember_rss,
    ]);
    println!("tasks started per second from the snapshot, {IN_FLIGHT} in flight: {rate:.1}");
    println!("host MemAvailable drop per idle task ({idle_tasks} tasks): {drop_per_task:.0} KiB");
    args.write_report(&json!({
        "bench": "containerd",
        "rows": rows,
        "tasks_per_second": rate,
        "in_flight": IN_FLIGHT,
        "mem_available_drop_per_idle_task_kib": drop_per_task,
        "idle_tasks": idle_tasks,
    }));
}
