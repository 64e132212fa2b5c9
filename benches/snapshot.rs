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
use ember_test_support::{artifact, require_kvm, Ember, TempDir, UffdHandler};
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

    let all = [
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
