//! Snapshot benchmark: creating Full and Diff snapshots of the echo function,
//! and the cold start that matters for serverless, load request -> first
//! invocation answered, with the File backend, userfaultfd on demand and
//! userfaultfd with the working set prefetched (with the faults served).
//!
//! `cargo bench --bench snapshot [-- --short] [-- --json PATH]`; `-- --demo`
//! snapshots the echo function, restores it once per backend and prints
//! what it saw.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, print_table, BenchArgs, Samples};
use ember_test_support::{artifact, require_kvm, Ember, HugePagePool, TempDir, UffdHandler};
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(20);
const GUEST_MEM_MIB: u64 = 256;

fn invoke(ember: &Ember, payload: &[u8]) {
    let (status, body) = ember.invoke(payload);
    assert_eq!(
        (status, body.as_slice()),
        (200, payload),
        "invocation failed: {}",
        String::from_utf8_lossy(&body)
    );
}

/// The echo function booted with dirty-page tracking and invoked once.
fn boot_function(dir: &TempDir) -> Ember {
    let ember = Ember::function_via_api(
        dir,
        &artifact("unikernel-echo"),
        json!({"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB, "track_dirty_pages": true}),
    );
    invoke(&ember, b"warm up");
    ember
}

fn create(ember: &Ember, kind: &str, state: &Path, mem: &Path) -> Duration {
    let body = json!({"snapshot_type": kind, "snapshot_path": state, "mem_file_path": mem});
    let start = Instant::now();
    ember.ok("PUT", "/snapshot/create", &body.to_string());
    start.elapsed()
}

/// A fresh ember, API up; then load request -> first invocation answered.
/// Returns (load request -> 204, load request -> first answer).
fn cold_start(state: &Path, backend: &Value) -> (Duration, Duration) {
    let dir = TempDir::new("snap-bench-restore");
    let ember = Ember::with_api(&dir, &[]);
    let load = json!({"snapshot_path": state, "mem_backend": backend, "resume_vm": true,
                      "vsock_override": {"uds_path": dir.path("v.sock")}})
    .to_string();
    let start = Instant::now();
    ember.ok("PUT", "/snapshot/load", &load);
    let loaded = start.elapsed();
    invoke(&ember, b"cold start");
    (loaded, start.elapsed())
}

struct Mode {
    load: Samples,
    first: Samples,
    faults: Samples,
}

impl Mode {
    fn new(name: &str) -> Self {
        Mode {
            load: Samples::new(&format!("{name}: load request -> 204"), "us"),
            first: Samples::new(&format!("{name}: load request -> first invocation"), "us"),
            faults: Samples::new(&format!("{name}: page faults served"), "faults"),
        }
    }

    fn run(&mut self, state: &Path, backend: &Value, handler: Option<(&UffdHandler, &mut usize)>) {
        let (load, first) = cold_start(state, backend);
        self.load.values.push(micros(load));
        self.first.values.push(micros(first));
        if let Some((handler, vm)) = handler {
            self.faults.values.push(handler.vm_stats(*vm).1 as f64);
            *vm += 1;
        }
    }
}

/// The echo function of `GUEST_MEM_MIB` on `huge_pages` ("None" or "2M"):
/// InstanceStart request -> the function listening.
fn boot_time(huge_pages: &str) -> Duration {
    let dir = TempDir::new("snap-bench-boot");
    let ember = Ember::with_api(&dir, &[]);
    ember.put_boot_source(&artifact("unikernel-echo"), "console=ttyS0");
    let machine = json!({"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB, "huge_pages": huge_pages});
    ember.ok("PUT", "/machine-config", &machine.to_string());
    let vsock = json!({"guest_cid": 3, "uds_path": dir.path("v.sock")});
    ember.ok("PUT", "/vsock", &vsock.to_string());
    let start = Instant::now();
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let (ready, _) = ember
        .wait_line(TIMEOUT, |l| l.starts_with("EMBER-FN: ready"))
        .expect("the function is ready");
    ready - start
}

/// Boot and cold starts with guest memory on 2 MiB huge pages, beside the
/// same on 4 KiB pages.
fn huge_pages(runs: usize) -> Vec<Samples> {
    let pool = HugePagePool::take();
    // Two VMs of GUEST_MEM_MIB at a time, at most.
    pool.set_free(2 * GUEST_MEM_MIB / 2 + 8);
    let mut boot_small = Samples::new("4 KiB pages: InstanceStart -> function ready", "us");
    let mut boot_huge = Samples::new("2 MiB pages: InstanceStart -> function ready", "us");
    for _ in 0..runs {
        boot_small.values.push(micros(boot_time("None")));
        boot_huge.values.push(micros(boot_time("2M")));
    }
    let dir = TempDir::new("snap-bench-huge");
    let ember = Ember::function_via_api(
        &dir,
        &artifact("unikernel-echo"),
        json!({"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB, "huge_pages": "2M"}),
    );
    invoke(&ember, b"warm up");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let (state, mem) = (dir.path("huge.snap"), dir.path("huge.mem"));
    let mut create_huge = Samples::new("2 MiB pages: create Full snapshot", "us");
    for _ in 0..runs {
        create_huge
            .values
            .push(micros(create(&ember, "Full", &state, &mem)));
    }
    drop(ember);
    let mut file = Mode::new("2 MiB pages, File");
    let backend = json!({"backend_type": "File", "backend_path": mem});
    for _ in 0..runs {
        file.run(&state, &backend, None);
    }
    let handler = UffdHandler::start(&dir.path("uffd-huge.sock"), &mem, None);
    let mut uffd = Mode::new("2 MiB pages, Uffd on demand");
    let backend = json!({"backend_type": "Uffd", "backend_path": handler.socket});
    let mut vm = 0;
    for _ in 0..runs {
        uffd.run(&state, &backend, Some((&handler, &mut vm)));
    }
    vec![
        boot_small,
        boot_huge,
        create_huge,
        file.load,
        file.first,
        uffd.load,
        uffd.first,
        uffd.faults,
    ]
}

fn main() {
    let args = BenchArgs::parse("snapshot");
    require_kvm();
    let runs = match (args.demo, args.short) {
        (true, _) => 3,
        (false, true) => 5,
        (false, false) => 20,
    };
    let dir = TempDir::new("snap-bench");
    let ember = boot_function(&dir);
    let (state, mem) = (dir.path("fn.snap"), dir.path("fn.mem"));

    let mut full = Samples::new("create Full snapshot (paused VM)", "us");
    let mut diff = Samples::new("create Diff snapshot after 1 invocation", "us");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    for _ in 0..runs {
        full.values
            .push(micros(create(&ember, "Full", &state, &mem)));
    }
    let diff_paths: (PathBuf, PathBuf) = (dir.path("d.snap"), dir.path("d.mem"));
    for _ in 0..runs {
        ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
        invoke(&ember, b"dirty some pages");
        ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
        diff.values
            .push(micros(create(&ember, "Diff", &diff_paths.0, &diff_paths.1)));
    }
    // The snapshot the restores use: right after an invocation, as a platform takes it.
    create(&ember, "Full", &state, &mem);
    drop(ember);
    let mem_file = std::fs::metadata(&mem).expect("memory file");
    let allocated_kib = std::os::unix::fs::MetadataExt::blocks(&mem_file) / 2;

    let mut file = Mode::new("File");
    let file_backend = json!({"backend_type": "File", "backend_path": mem});
    for _ in 0..runs {
        file.run(&state, &file_backend, None);
    }

    let on_demand_handler = UffdHandler::start(&dir.path("uffd-od.sock"), &mem, None);
    let mut on_demand = Mode::new("Uffd on demand");
    let backend = json!({"backend_type": "Uffd", "backend_path": on_demand_handler.socket});
    let mut vm = 0;
    for _ in 0..runs {
        on_demand.run(&state, &backend, Some((&on_demand_handler, &mut vm)));
    }
    drop(on_demand_handler);

    // The first VM records the working set; the runs after it get it prefetched.
    let working_set = dir.path("fn.ws");
    let handler = UffdHandler::start(&dir.path("uffd-pf.sock"), &mem, Some(&working_set));
    let backend = json!({"backend_type": "Uffd", "backend_path": handler.socket});
    let mut vm = 0;
    cold_start(&state, &backend);
    handler.vm_stats(vm);
    vm += 1;
    let recorded = handler.expect_line("vm 0: recorded a working set of", TIMEOUT);
    let mut prefetch = Mode::new("Uffd prefetch");
    for _ in 0..runs {
        prefetch.run(&state, &backend, Some((&handler, &mut vm)));
    }

    let huge = if args.demo {
        Vec::new()
    } else {
        huge_pages(runs)
    };
    let mut all = vec![
        &full,
        &diff,
        &file.load,
        &file.first,
        &on_demand.load,
        &on_demand.first,
        &on_demand.faults,
        &prefetch.load,
        &prefetch.first,
        &prefetch.faults,
    ];
    all.extend(&huge);
    println!(
        "\nember snapshot benchmark (echo function, PVH, {GUEST_MEM_MIB} MiB, 1 vCPU; memory file {} KiB allocated of {} MiB; {})\n",
        allocated_kib,
        GUEST_MEM_MIB,
        recorded.trim_start_matches("vm 0: ")
    );
    let results = print_table(&all);
    let gain = on_demand.first.percentile(50.0) - prefetch.first.percentile(50.0);
    println!(
        "\nprefetch vs on demand, median load -> first invocation: {gain:.0} us faster ({:.0} -> {:.0} faults)",
        on_demand.faults.percentile(50.0),
        prefetch.faults.percentile(50.0)
    );
    let report = json!({"benchmark": "snapshot", "short": args.short, "results": results,
        "memory_file_allocated_kib": allocated_kib, "prefetch_gain_us_p50": gain});
    if args.demo {
        return;
    }
    args.write_report(&report);
}
