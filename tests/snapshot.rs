//! Snapshots: boot, pause, snapshot, restore in a fresh ember with each
//! memory backend, and check the guest carries on; clones; diffs; bad files.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ember_test_support::{
    artifact, ember_bin, ember_snapshot_bin, hugetlb_kib, on_pci, require_kvm, Ember, HugePagePool,
    TempDir, UffdHandler,
};
use serde_json::{json, Value};

const BOOT: Duration = Duration::from_secs(20);

struct Snapshot {
    state: PathBuf,
    mem: PathBuf,
}

/// Boots the echo function, invokes it once, pauses it and snapshots it into `dir`.
fn snapshot_echo_function(dir: &TempDir) -> Snapshot {
    let ember = Ember::function_via_api(
        dir,
        &artifact("unikernel-echo"),
        json!({"vcpu_count": 1, "mem_size_mib": 128}),
    );
    assert_eq!(ember.invoke(b"before"), (200, b"before".to_vec()));

    let snap = Snapshot {
        state: dir.path("fn.snap"),
        mem: dir.path("fn.mem"),
    };
    let create = json!({"snapshot_path": snap.state, "mem_file_path": snap.mem}).to_string();
    let (status, body) = ember.api("PUT", "/snapshot/create", &create);
    assert_eq!(status, 400, "a running VM cannot be snapshotted");
    assert!(body.contains("paused"), "{body}");
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok("PUT", "/snapshot/create", &create);
    snap
}

/// Pauses `ember` and takes a `Full` snapshot into `dir`.
fn pause_and_snapshot(ember: &Ember, dir: &TempDir) -> Snapshot {
    let snap = Snapshot {
        state: dir.path("fn.snap"),
        mem: dir.path("fn.mem"),
    };
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok(
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_path": snap.state, "mem_file_path": snap.mem}).to_string(),
    );
    snap
}

fn state(ember: &Ember) -> String {
    let (_, info) = ember.api("GET", "/", "");
    let info: Value = serde_json::from_str(&info).unwrap();
    info["state"].as_str().unwrap().to_string()
}

/// Loads `snap` into a fresh ember with its API in `dir` and the vsock moved into `dir` too.
fn restore(dir: &TempDir, snap: &Snapshot, mem_backend: Value, resume: bool) -> Ember {
    let ember = Ember::with_api(dir, &[]);
    ember.ok(
        "PUT",
        "/snapshot/load",
        &json!({
            "snapshot_path": snap.state,
            "mem_backend": mem_backend,
            "resume_vm": resume,
            "vsock_override": {"uds_path": dir.path("v.sock")},
        })
        .to_string(),
    );
    ember
}

fn file_backend(snap: &Snapshot) -> Value {
    json!({"backend_type": "File", "backend_path": snap.mem})
}

#[test]
fn full_snapshot_restored_from_its_file_answers_invocations() {
    let dir = TempDir::new("snap-file");
    let snap = snapshot_echo_function(&dir);
    let memory_before = std::fs::read(&snap.mem).unwrap();

    let clone_dir = TempDir::new("snap-file-restore");
    let ember = restore(&clone_dir, &snap, file_backend(&snap), false);
    assert_eq!(state(&ember), "Paused", "resume_vm: false leaves it paused");
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(state(&ember), "Running");
    assert_eq!(ember.invoke(b"after"), (200, b"after".to_vec()));
    assert_eq!(
        ember.invoke(b"x".repeat(100_000).as_slice()).1.len(),
        100_000
    );

    let (_, config) = ember.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["machine-config"]["mem_size_mib"], 128);
    assert_eq!(
        config["vsock"]["uds_path"].as_str(),
        clone_dir.path("v.sock").to_str()
    );
    let (status, body) = ember.api("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(status, 400, "a restored VM is started: {body}");
    drop(ember);
    assert!(
        std::fs::read(&snap.mem).unwrap() == memory_before,
        "the guest's writes never reach the memory file"
    );
}

/// ember's `snapshot-load` config-file section: a clone restores at start,
/// with no API call (as the containerd shim starts its clones).
#[test]
fn a_config_file_loads_a_snapshot_at_start() {
    let dir = TempDir::new("snap-config");
    let snap = snapshot_echo_function(&dir);
    let clone_dir = TempDir::new("snap-config-clone");
    let load = json!({
        "snapshot_path": snap.state,
        "mem_backend": file_backend(&snap),
        "resume_vm": true,
        "vsock_override": {"uds_path": clone_dir.path("v.sock")},
    });
    let path = clone_dir.path("vm.json");
    std::fs::write(&path, json!({"snapshot-load": load}).to_string()).unwrap();
    let ember = Ember::with_api(&clone_dir, &["--config-file", path.to_str().unwrap()]);
    assert_eq!(state(&ember), "Running");
    assert_eq!(ember.invoke(b"from a file"), (200, b"from a file".to_vec()));

    // A file that loads a snapshot and also describes a machine is refused whole.
    let both = clone_dir.path("both.json");
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 128});
    std::fs::write(
        &both,
        json!({"snapshot-load": load, "machine-config": machine}).to_string(),
    )
    .unwrap();
    let mut refused = Ember::spawn(&["--no-api", "--config-file", both.to_str().unwrap()], None);
    assert!(!refused.wait_exit(BOOT).success());
    assert!(
        refused
            .stderr()
            .contains("'machine-config' describes the machine"),
        "{}",
        refused.stderr()
    );
}

#[test]
fn test_guest_console_carries_on_after_a_restore_and_its_drive_is_reopened() {
    require_kvm();
    let dir = TempDir::new("snap-console");
    let disk = dir.disk("data.img", 8, b"drive data");
    let mut ember = Ember::with_api(&dir, &[]);
    ember.put_boot_source(&artifact("test-elf"), "console=ttyS0 ember.echo");
    ember.ok(
        "PUT",
        "/drives/data",
        &json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false,
                "is_read_only": true})
        .to_string(),
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("echo: ready", BOOT);
    ember.write_stdin(b"before\n");
    ember.expect_line("before", BOOT);
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snap = Snapshot {
        state: dir.path("echo.snap"),
        mem: dir.path("echo.mem"),
    };
    ember.ok(
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_path": snap.state, "mem_file_path": snap.mem}).to_string(),
    );
    drop(ember);
    let load = json!({"snapshot_path": snap.state, "mem_file_path": snap.mem, "resume_vm": true})
        .to_string();

    // The drive is opened again from its path: without the file, no restore.
    let moved = dir.path("moved.img");
    std::fs::rename(&disk, &moved).unwrap();
    let refused_dir = TempDir::new("snap-console-no-drive");
    let refused = Ember::with_api(&refused_dir, &[]);
    let (status, body) = refused.api("PUT", "/snapshot/load", &load);
    assert_eq!(status, 400);
    assert!(body.contains("data.img"), "{body}");
    assert_eq!(state(&refused), "Not started");
    std::fs::rename(&moved, &disk).unwrap();

    let restored_dir = TempDir::new("snap-console-restore");
    let mut restored = Ember::with_api(&restored_dir, &[]);
    restored.ok("PUT", "/snapshot/load", &load);
    let (_, config) = restored.api("GET", "/vm/config", "");
    assert!(config.contains("data.img"), "{config}");
    restored.write_stdin(b"typed after restore\n");
    restored.expect_line("typed after restore", BOOT);
    assert!(
        restored.lines_starting("echo: ready").is_empty(),
        "the guest did not boot again"
    );
    restored.write_stdin(b"reset\n");
    assert_eq!(restored.wait_exit(BOOT).code(), Some(0));
}

#[test]
fn uffd_restores_serve_on_demand_then_prefetch_the_recorded_working_set() {
    let dir = TempDir::new("snap-uffd");
    let snap = snapshot_echo_function(&dir);
    let working_set = dir.path("fn.ws");
    let handler = UffdHandler::start(&dir.path("uffd.sock"), &snap.mem, Some(&working_set));
    let backend = json!({"backend_type": "Uffd", "backend_path": handler.socket});

    // The first VM is served on demand, and its faults become the working set.
    let first_dir = TempDir::new("snap-uffd-1");
    let first = restore(&first_dir, &snap, backend.clone(), true);
    assert_eq!(first.invoke(b"on demand"), (200, b"on demand".to_vec()));
    // ember's metrics carry what its handler reports (within 10 ms of a fault).
    let seen = reported(&first, "ember_ember_page_faults_served", |v| v > 0);
    drop(first);
    let (prefetched, faults) = handler.vm_stats(0);
    assert_eq!(prefetched, 0);
    assert!(faults > 0, "the restored guest faulted its memory in");
    assert!(seen <= faults, "ember saw {seen} of {faults} faults");
    let recorded = handler.expect_line("vm 0: recorded a working set of", BOOT);
    assert!(recorded.contains(&format!("{faults} pages")), "{recorded}");
    assert!(working_set.exists());

    // Later VMs get the set copied in before they ask for it.
    let second_dir = TempDir::new("snap-uffd-2");
    let second = restore(&second_dir, &snap, backend, true);
    assert_eq!(second.invoke(b"prefetched"), (200, b"prefetched".to_vec()));
    let prefetched_seen = reported(&second, "ember_ember_pages_prefetched", |v| v > 0);
    drop(second);
    let (prefetched, faults_left) = handler.vm_stats(1);
    assert_eq!(prefetched, faults, "the whole working set was prefetched");
    assert_eq!(prefetched_seen, prefetched, "ember's metrics say as much");
    assert!(
        faults_left < faults,
        "prefetching left {faults_left} of {faults} faults"
    );
}

/// The value of Prometheus gauge `name` on `ember`'s `GET /metrics`, once it
/// satisfies `ready` (within 2 s).
fn reported(ember: &Ember, name: &str, ready: impl Fn(u64) -> bool) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let (status, text) = ember.api("GET", "/metrics", "");
        assert_eq!(status, 200, "{text}");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        if ready(value) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} stayed at {value}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_clones_of_one_snapshot_run_at_once_and_diverge() {
    let dir = TempDir::new("snap-clones");
    let snap = snapshot_echo_function(&dir);
    let handler = UffdHandler::start(&dir.path("uffd.sock"), &snap.mem, None);
    let (a_dir, b_dir) = (TempDir::new("snap-clone-a"), TempDir::new("snap-clone-b"));
    let a = restore(&a_dir, &snap, file_backend(&snap), true);
    let b = restore(
        &b_dir,
        &snap,
        json!({"backend_type": "Uffd", "backend_path": handler.socket}),
        true,
    );
    for round in 0..3 {
        let (for_a, for_b) = (format!("a{round}"), format!("b{round}").repeat(1000));
        assert_eq!(a.invoke(for_a.as_bytes()), (200, for_a.into_bytes()));
        assert_eq!(b.invoke(for_b.as_bytes()), (200, for_b.into_bytes()));
    }
    ember_pauses_alone(&a, &b);
}

/// Pausing one clone leaves the other serving.
fn ember_pauses_alone(a: &Ember, b: &Ember) {
    a.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(b.invoke(b"still here"), (200, b"still here".to_vec()));
    assert_eq!(state(a), "Paused");
    assert_eq!(state(b), "Running");
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_diff_merged_onto_its_base_equals_a_full_snapshot_and_restores() {
    require_kvm();
    let dir = TempDir::new("snap-diff");
    let mut ember = Ember::with_api(&dir, &[]);
    ember.put_boot_source(&artifact("test-elf"), "console=ttyS0 ember.echo");
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}"#,
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("echo: ready", BOOT);
    let create = |kind: &str, name: &str| {
        json!({"snapshot_type": kind, "snapshot_path": dir.path(&format!("{name}.snap")),
               "mem_file_path": dir.path(&format!("{name}.mem"))})
        .to_string()
    };
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    ember.ok("PUT", "/snapshot/create", &create("Full", "base"));
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    ember.write_stdin(b"between the snapshots\n");
    ember.expect_line("between the snapshots", BOOT);
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    // A diff that cannot be written loses nothing: the next one holds its pages.
    let unwritable = json!({"snapshot_type": "Diff", "snapshot_path": dir.path("lost.snap"),
                            "mem_file_path": dir.path("no-such-dir/lost.mem")})
    .to_string();
    let (status, body) = ember.api("PUT", "/snapshot/create", &unwritable);
    assert_eq!(status, 400);
    assert!(body.contains("no-such-dir"), "{body}");
    assert!(!dir.path("lost.snap").exists() && !dir.path("lost.snap.partial").exists());
    ember.ok("PUT", "/snapshot/create", &create("Diff", "diff"));
    ember.ok("PUT", "/snapshot/create", &create("Full", "full"));
    drop(ember);

    let diff = dir.path("diff.mem");
    assert_eq!(
        std::fs::metadata(&diff).unwrap().len(),
        64 << 20,
        "a diff has the full layout"
    );
    assert!(
        allocated(&diff) < allocated(&dir.path("full.mem")) / 4,
        "the diff holds only the dirtied pages: {} of {} bytes",
        allocated(&diff),
        allocated(&dir.path("full.mem"))
    );
    let out = std::process::Command::new(ember_snapshot_bin())
        .args(["merge", "--base"])
        .arg(dir.path("base.mem"))
        .arg("--diff")
        .arg(&diff)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(dir.path("base.mem")).unwrap()
            == std::fs::read(dir.path("full.mem")).unwrap(),
        "base + diff is the memory at the time of the diff"
    );

    let restored_dir = TempDir::new("snap-diff-restore");
    let mut restored = Ember::with_api(&restored_dir, &[]);
    restored.ok(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": dir.path("diff.snap"), "mem_file_path": dir.path("base.mem"),
                "resume_vm": true})
        .to_string(),
    );
    restored.echo_then_reset("after the merge", BOOT);
}

#[test]
fn a_diff_snapshot_needs_dirty_page_tracking() {
    let dir = TempDir::new("snap-diff-untracked");
    let snap = snapshot_echo_function(&dir);
    let restored_dir = TempDir::new("snap-diff-untracked-restore");
    let ember = restore(&restored_dir, &snap, file_backend(&snap), false);
    let (status, body) = ember.api(
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_type": "Diff", "snapshot_path": restored_dir.path("d.snap"),
                "mem_file_path": restored_dir.path("d.mem")})
        .to_string(),
    );
    assert_eq!(status, 400);
    assert!(body.contains("track_dirty_pages"), "{body}");
    assert!(!restored_dir.path("d.snap").exists());
}

/// Loads a broken snapshot: a 400 that names the problem, and the process
/// stays fresh enough to load a good one afterwards.
fn expect_load_refused(snap: &Snapshot, state_file: &Path, mem_backend: Value, expected: &str) {
    let dir = TempDir::new("snap-bad");
    let ember = Ember::with_api(&dir, &[]);
    let (status, body) = ember.api(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": state_file, "mem_backend": mem_backend}).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(expected), "expected {expected:?} in {body}");
    assert_eq!(state(&ember), "Not started");
    ember.ok(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": snap.state, "mem_backend": file_backend(snap), "resume_vm": true,
                "vsock_override": {"uds_path": dir.path("v.sock")}})
        .to_string(),
    );
    assert_eq!(ember.invoke(b"good"), (200, b"good".to_vec()));
}

/// A snapshot taken with the devices on one transport (virtio-mmio, or
/// virtio-pci with `--enable-pci`) is refused by an ember on the other, with
/// a 400 that says which flag to start it with; the ember stays fresh.
#[test]
fn a_snapshot_loads_only_on_the_transport_it_was_taken_on() {
    let dir = TempDir::new("snap-transport");
    let snap = snapshot_echo_function(&dir);
    let other = TempDir::new("snap-other-transport");
    let socket = other.path("api.sock");
    let mut args = vec!["--api-sock", socket.to_str().unwrap()];
    let (ours, theirs, hint) = if on_pci() {
        ("virtio-pci", "virtio-mmio", "start ember with --enable-pci")
    } else {
        args.push("--enable-pci");
        (
            "virtio-mmio",
            "virtio-pci",
            "start ember without --enable-pci",
        )
    };
    let ember = Ember::spawn_program(&ember_bin(), &args, Some(&socket));
    let (status, body) = ember.api(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": snap.state, "mem_backend": file_backend(&snap),
                "vsock_override": {"uds_path": other.path("v.sock")}})
        .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    let expected = format!(
        "the snapshot's devices are on {ours}, and this ember puts them on {theirs}: {hint}"
    );
    assert!(body.contains(&expected), "{body}");
    assert_eq!(state(&ember), "Not started");
}

#[test]
fn bad_snapshots_are_refused_with_a_400_that_says_why() {
    let dir = TempDir::new("snap-bad-files");
    let snap = snapshot_echo_function(&dir);
    let good = std::fs::read(&snap.state).unwrap();
    let variant = |name: &str, bytes: &[u8]| {
        let path = dir.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };

    let truncated = variant("truncated.snap", &good[..good.len() / 2]);
    expect_load_refused(&snap, &truncated, file_backend(&snap), "truncated");

    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let corrupted = variant("corrupted.snap", &flipped);
    expect_load_refused(&snap, &corrupted, file_backend(&snap), "checksum");

    let mut newer = good.clone();
    newer[8] = 0x63;
    let version = variant("version.snap", &newer);
    expect_load_refused(&snap, &version, file_backend(&snap), "version");

    // As an arm64 host would write it: a valid checksum over another architecture.
    let mut foreign = good.clone();
    foreign[10..26].copy_from_slice(b"aarch64\0\0\0\0\0\0\0\0\0");
    let body = foreign.len() - 8;
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ).checksum(&foreign[..body]);
    foreign[body..].copy_from_slice(&crc.to_le_bytes());
    let arch = variant("arch.snap", &foreign);
    expect_load_refused(&snap, &arch, file_backend(&snap), "aarch64");

    let short_mem = variant("short.mem", &std::fs::read(&snap.mem).unwrap()[..4096]);
    expect_load_refused(
        &snap,
        &snap.state,
        json!({"backend_type": "File", "backend_path": short_mem}),
        "size",
    );

    expect_load_refused(
        &snap,
        &snap.state,
        json!({"backend_type": "Uffd", "backend_path": dir.path("nobody-listens.sock")}),
        "page-fault handler",
    );
    expect_load_refused(
        &snap,
        &dir.path("missing.snap"),
        file_backend(&snap),
        "missing.snap",
    );
}

#[test]
fn load_is_refused_after_configuring_a_boot() {
    require_kvm();
    let dir = TempDir::new("snap-after-config");
    let ember = Ember::with_api(&dir, &[]);
    ember.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": artifact("test-elf")}).to_string(),
    );
    let (status, body) = ember.api(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": dir.path("x.snap"), "mem_file_path": dir.path("x.mem")})
            .to_string(),
    );
    assert_eq!(status, 400);
    assert!(body.contains("boot-specific"), "{body}");
}

#[test]
fn a_restored_function_still_draws_from_its_rate_limited_entropy_device() {
    require_kvm();
    let dir = TempDir::new("snap-random");
    let ember = Ember::with_api(&dir, &[]);
    ember.put_boot_source(&artifact("unikernel-random"), "console=ttyS0");
    ember.ok(
        "PUT",
        "/vsock",
        &json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
    );
    // 64 KiB per 100 ms: 640 KiB/s.
    let limiter = json!({"bandwidth": {"size": 65536, "refill_time": 100}});
    ember.ok(
        "PUT",
        "/entropy",
        &json!({ "rate_limiter": limiter }).to_string(),
    );
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    ember.expect_line("EMBER-FN: ready on port", BOOT);
    let (status, before) = ember.invoke(b"16");
    assert_eq!((status, before.len()), (200, 16));
    let snap = pause_and_snapshot(&ember, &dir);
    drop(ember);
    let clone_dir = TempDir::new("snap-random-clone");
    let clone = restore(&clone_dir, &snap, file_backend(&snap), true);
    let (status, after) = clone.invoke(b"16");
    assert_eq!((status, after.len()), (200, 16));
    assert_ne!(before, after);
    let (_, config) = clone.api("GET", "/vm/config", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        config["entropy"]["rate_limiter"]["bandwidth"],
        json!({"size": 65536, "one_time_burst": null, "refill_time": 100})
    );
    // The limit still holds: 640 KiB, less the full bucket, take 0.9 s at least.
    let start = std::time::Instant::now();
    let (status, bytes) = clone.invoke(b"655360");
    assert_eq!((status, bytes.len()), (200, 655_360));
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "640 KiB in {elapsed:?}"
    );
}

#[test]
fn huge_page_guests_boot_snapshot_and_restore_from_a_file_and_over_uffd() {
    require_kvm();
    let pool = HugePagePool::take();
    let machine = json!({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"});

    // No free huge pages: InstanceStart says so, and ember stays up.
    pool.set_free(0);
    let dir = TempDir::new("snap-huge-none");
    let ember = Ember::with_api(&dir, &[]);
    ember.put_boot_source(&artifact("unikernel-echo"), "console=ttyS0");
    ember.ok("PUT", "/machine-config", &machine.to_string());
    let (status, body) = ember.api("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("huge pages") && body.contains("nr_hugepages"),
        "{body}"
    );
    assert_eq!(state(&ember), "Not started");
    drop(ember);

    // 128 MiB is 64 pages; a VM and a clone at a time, with room to spare.
    pool.set_free(160);
    let dir = TempDir::new("snap-huge");
    let ember = Ember::function_via_api(&dir, &artifact("unikernel-echo"), machine.clone());
    assert_eq!(ember.invoke(b"huge"), (200, b"huge".to_vec()));
    assert!(hugetlb_kib(ember.pid()) > 0, "the guest runs on huge pages");
    let snap = pause_and_snapshot(&ember, &dir);
    drop(ember);

    let file_dir = TempDir::new("snap-huge-file");
    let from_file = restore(&file_dir, &snap, file_backend(&snap), true);
    assert_eq!(from_file.invoke(b"file"), (200, b"file".to_vec()));
    assert!(
        hugetlb_kib(from_file.pid()) > 0,
        "the clone runs on huge pages"
    );
    let (_, machine_config) = from_file.api("GET", "/machine-config", "");
    assert!(
        machine_config.contains(r#""huge_pages":"2M""#),
        "{machine_config}"
    );
    drop(from_file);

    let handler = UffdHandler::start(&dir.path("uffd.sock"), &snap.mem, None);
    let uffd_dir = TempDir::new("snap-huge-uffd");
    let backend = json!({"backend_type": "Uffd", "backend_path": handler.socket});
    let over_uffd = restore(&uffd_dir, &snap, backend, true);
    assert_eq!(over_uffd.invoke(b"uffd"), (200, b"uffd".to_vec()));
    drop(over_uffd);
    let (_, faults) = handler.vm_stats(0);
    assert!(
        faults > 0 && faults < 64,
        "{faults} faults of 2 MiB pages for a 128 MiB guest"
    );
}
