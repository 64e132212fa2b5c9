//! Boot benchmark: spawn -> API ready, InstanceStart -> guest marker,
//! spawn -> marker with `--config-file`, spawn -> exit after a guest reset,
//! SIGTERM -> exit of a VM that has just started,
//! and ember's own memory besides guest memory.
//!
//! `cargo bench --bench boot [-- --short] [-- --json PATH]` prints a table of
//! min/median/max over the runs and writes the same figures as JSON;
//! `-- --demo` boots one guest verbosely, printing its console and each stage.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use ember_test_support::bench::{micros, BenchArgs, Samples};
use ember_test_support::{artifact, require_kvm, Ember, TempDir};
use serde_json::json;

const MARKER: &str = "EMBER-TEST-GUEST: hello from";
const TIMEOUT: Duration = Duration::from_secs(20);
const GUEST_MEM_MIB: u64 = 128;

fn config(kernel: &std::path::Path, args: &str) -> serde_json::Value {
    json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": args},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB}
    })
}

/// One boot, told step by step: what a user sees, with the time of each stage.
fn demo(kernel: &std::path::Path) {
    let dir = TempDir::new("demo");
    let rootfs = dir.disk("rootfs.img", 64, b"hello from the host's disk image");
    let mut ember = Ember::with_api(&dir, &["--level", "Info", "--boot-timer", "--id", "demo"]);
    let spawned = ember.spawned_at;
    let mut stages = vec![("spawn -> API socket ready", spawned.elapsed())];
    let t = Instant::now();
    ember.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 ember.echo"}).to_string(),
    );
    ember.ok(
        "PUT",
        "/drives/rootfs",
        &json!({"drive_id": "rootfs", "path_on_host": rootfs, "is_root_device": true, "is_read_only": false})
            .to_string(),
    );
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 128}"#,
    );
    stages.push(("3 configuration requests", t.elapsed()));
    let start = Instant::now();
    ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    stages.push(("InstanceStart -> 204", start.elapsed()));
    let (marker, _) = ember
        .wait_line(TIMEOUT, |l| l.starts_with(MARKER))
        .expect("marker");
    stages.push(("InstanceStart -> guest marker", marker - start));
    let (ready, _) = ember
        .wait_line(TIMEOUT, |l| l == "echo: ready")
        .expect("echo ready");
    stages.push(("InstanceStart -> guest done with its disk", ready - start));
    let typed = Instant::now();
    ember.write_stdin(b"hello, guest\n");
    let (echoed, _) = ember
        .wait_line(TIMEOUT, |l| l == "hello, guest")
        .expect("echo");
    stages.push(("console line typed -> echoed", echoed - typed));
    let reset = Instant::now();
    ember.write_stdin(b"reset\n");
    let status = ember.child.wait().expect("wait for ember");
    stages.push(("'reset' typed -> ember exited", reset.elapsed()));

    println!("\n--- guest console ---");
    for line in ember.console() {
        println!("  {line}");
    }
    println!("--- ember log (--level Info) ---");
    for line in ember.stderr().lines() {
        println!("  {line}");
    }
    println!("--- stages ---");
    for (stage, d) in stages {
        println!("  {stage:<44} {:>9.3} ms", d.as_secs_f64() * 1e3);
    }
    println!("  ember exit status: {status}\n");
}

fn main() {
    let args = BenchArgs::parse("boot");
    let short = args.short;
    let runs = if short { 5 } else { 30 };
    require_kvm();
    let kernel = artifact("test-elf");
    if args.demo {
        demo(&kernel);
        return;
    }

    let mut api_ready = Samples::new("spawn -> API socket ready", "us");
    let mut start_reply = Samples::new("InstanceStart request -> 204", "us");
    let mut start_marker = Samples::new("InstanceStart -> guest marker", "us");
    let mut config_marker = Samples::new("spawn -> marker (--config-file)", "us");
    let mut spawn_exit = Samples::new("spawn -> exit after guest reset", "us");
    let mut sigterm_exit = Samples::new("SIGTERM at the marker -> exit", "us");
    let mut rss = Samples::new("ember RSS besides guest memory", "KiB");

    for _ in 0..runs {
        let dir = TempDir::new("bench");
        let ember = Ember::with_api(&dir, &[]);
        api_ready.values.push(micros(ember.spawned_at.elapsed()));
        ember.ok(
            "PUT",
            "/boot-source",
            &json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0 ember.echo"})
                .to_string(),
        );
        ember.ok(
            "PUT",
            "/machine-config",
            &json!({"vcpu_count": 1, "mem_size_mib": GUEST_MEM_MIB}).to_string(),
        );
        let before = Instant::now();
        ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
        start_reply.values.push(micros(before.elapsed()));
        let (seen, _) = ember
            .wait_line(TIMEOUT, |l| l.starts_with(MARKER))
            .expect("guest marker");
        start_marker.values.push(micros(seen - before));
        ember.expect_line("echo: ready", TIMEOUT);
        rss.values.push(ember_test_support::rss_besides_guest_kib(
            ember.pid(),
            GUEST_MEM_MIB << 10,
        ));
    }

    for _ in 0..runs {
        let dir = TempDir::new("bench");
        let mut ember = Ember::with_config(&dir, &config(&kernel, "console=ttyS0 ember.echo"));
        let (seen, _) = ember
            .wait_line(TIMEOUT, |l| l.starts_with(MARKER))
            .expect("guest marker");
        config_marker.values.push(micros(seen - ember.spawned_at));
        // A platform's stop of a VM it has just started.
        let pid = i32::try_from(ember.pid()).expect("pid");
        let signalled = Instant::now();
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = ember.child.wait().expect("wait for ember");
        assert_eq!(status.signal(), Some(libc::SIGTERM), "SIGTERM ends ember");
        sigterm_exit.values.push(micros(signalled.elapsed()));
    }

    for _ in 0..runs {
        let dir = TempDir::new("bench");
        let mut ember = Ember::with_config(&dir, &config(&kernel, "console=ttyS0"));
        let status = ember.child.wait().expect("wait for ember");
        assert_eq!(status.code(), Some(0), "guest reset ends ember with 0");
        spawn_exit.values.push(micros(ember.spawned_at.elapsed()));
    }

    let all = [
        &api_ready,
        &start_reply,
        &start_marker,
        &config_marker,
        &spawn_exit,
        &sigterm_exit,
        &rss,
    ];
    println!("\nember boot benchmark: {runs} runs each, test unikernel (test-elf), {GUEST_MEM_MIB} MiB, 1 vCPU\n");
    println!(
        "{:<36} {:>10} {:>10} {:>10}  unit",
        "measure", "min", "median", "max"
    );
    let mut results = Vec::new();
    for series in all {
        let (min, median, max) = (
            series.percentile(0.0),
            series.percentile(50.0),
            series.percentile(100.0),
        );
        println!(
            "{:<36} {min:>10.0} {median:>10.0} {max:>10.0}  {}",
            series.name, series.unit
        );
        results.push(json!({
            "name": series.name, "unit": series.unit, "runs": series.values.len(),
            "min": min, "median": median, "max": max, "samples": series.sorted(),
        }));
    }
    let report = json!({"benchmark": "boot", "short": short, "results": results});
    println!();
    args.write_report(&report);
}
