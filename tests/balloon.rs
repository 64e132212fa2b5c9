//! The balloon from the API to the guest and back: a function VM gives memory
//! back to the host when the balloon inflates, gets it back when it deflates,
//! and its balloon keeps working after a snapshot restore.

use ember_test_support::{artifact, require_kvm, resident_mib, Ember, TempDir};
use serde_json::{json, Value};

const GUEST_MIB: u64 = 256;
/// What the function writes before the balloon inflates: most of the heap.
const TOUCHED_MIB: u64 = 160;
const BALLOON_MIB: u64 = 200;

fn touch(ember: &Ember, mib: u64) -> (u16, String) {
    let (status, out) = ember.invoke(mib.to_string().as_bytes());
    (status, String::from_utf8_lossy(&out).into_owned())
}

/// The memory function with an empty balloon that reports statistics.
fn memory_function(dir: &TempDir) -> Ember {
    let balloon = json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1});
    Ember::with_balloon(dir, &artifact("unikernel-memory"), GUEST_MIB, &balloon)
}

#[test]
fn an_inflated_balloon_gives_memory_back_and_a_deflated_one_returns_it() {
    let dir = TempDir::new("balloon");
    let ember = memory_function(&dir);
    let (_, config) = ember.api("GET", "/balloon", "");
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["deflate_on_oom"], true, "{config}");

    let touched = format!("touched {TOUCHED_MIB} MiB");
    assert_eq!(touch(&ember, TOUCHED_MIB), (200, touched.clone()));
    let full = resident_mib(ember.pid());
    let took = ember.steer_balloon(BALLOON_MIB);
    let inflated = resident_mib(ember.pid());
    eprintln!("inflating {BALLOON_MIB} MiB took {took:?}; RSS {full:.0} -> {inflated:.0} MiB");
    // The balloon covers all but what the heap had beyond the touched pages.
    let heap_untouched = GUEST_MIB - TOUCHED_MIB;
    let given_back = BALLOON_MIB - heap_untouched;
    assert!(
        full - inflated >= given_back as f64 * 0.9,
        "RSS went from {full:.0} to {inflated:.0} MiB, where {given_back} MiB should have gone"
    );
    let (status, out) = touch(&ember, TOUCHED_MIB);
    assert_eq!(
        (status, out.contains("out of memory")),
        (502, true),
        "the balloon holds the memory: {out}"
    );

    ember.steer_balloon(0);
    assert_eq!(touch(&ember, TOUCHED_MIB), (200, touched));
    assert_eq!(ember.balloon_stats()["actual_pages"], 0);
}

#[test]
fn a_restored_balloon_keeps_its_pages_and_still_deflates() {
    let dir = TempDir::new("balloon-snap");
    let ember = memory_function(&dir);
    assert_eq!(touch(&ember, 64).0, 200);
    ember.steer_balloon(BALLOON_MIB);
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let (state, mem) = (dir.path("fn.snap"), dir.path("fn.mem"));
    let create = json!({"snapshot_path": state, "mem_file_path": mem});
    ember.ok("PUT", "/snapshot/create", &create.to_string());
    drop(ember);

    let clone_dir = TempDir::new("balloon-clone");
    let restored = Ember::with_api(&clone_dir, &[]);
    let load = json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
        "vsock_override": {"uds_path": clone_dir.path("v.sock")},
    });
    restored.ok("PUT", "/snapshot/load", &load.to_string());
    let stats = restored.balloon_stats();
    assert_eq!(
        (stats["target_mib"].clone(), stats["actual_mib"].clone()),
        (json!(BALLOON_MIB), json!(BALLOON_MIB)),
        "{stats}"
    );
    assert_eq!(touch(&restored, TOUCHED_MIB).0, 502, "still inflated");
    restored.steer_balloon(0);
    let touched = format!("touched {TOUCHED_MIB} MiB");
    assert_eq!(touch(&restored, TOUCHED_MIB), (200, touched));
}

#[test]
fn balloon_requests_ember_cannot_serve_are_refused_by_name() {
    require_kvm();
    let dir = TempDir::new("balloon-refused");
    let ember = Ember::with_api(&dir, &[]);
    let refused = |method: &str, path: &str, body: &str, needle: &str| {
        let (status, reply) = ember.api(method, path, body);
        assert_eq!(status, 400, "{method} {path} {body}: {reply}");
        assert!(
            reply.contains(needle),
            "{method} {path}: {reply} lacks {needle}"
        );
    };
    ember.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "2M"}"#,
    );
    refused(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 1, "deflate_on_oom": false}"#,
        "huge_pages",
    );
    ember.ok("PATCH", "/machine-config", r#"{"huge_pages": "None"}"#);
    ember.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 1, "deflate_on_oom": false}"#,
    );
    refused(
        "GET",
        "/balloon/statistics",
        "",
        "statistics are not enabled",
    );
    refused(
        "PATCH",
        "/machine-config",
        r#"{"huge_pages": "2M"}"#,
        "huge_pages",
    );
    refused(
        "GET",
        "/balloon/hinting/status",
        "",
        "hinting is not enabled",
    );
}

#[test]
fn a_hinting_run_is_started_and_stopped_through_the_api() {
    require_kvm();
    let dir = TempDir::new("balloon-hinting");
    let balloon = json!({"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true});
    let ember = Ember::with_balloon(&dir, &artifact("unikernel-echo"), 128, &balloon);
    let hinting = |ember: &Ember| -> Value {
        let (status, body) = ember.api("GET", "/balloon/hinting/status", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(hinting(&ember), json!({"host_cmd": 0, "guest_cmd": null}));
    ember.ok("PATCH", "/balloon/hinting/start", "");
    assert_eq!(hinting(&ember)["host_cmd"], 2, "the first run's id");
    ember.ok("PATCH", "/balloon/hinting/stop", "");
    assert_eq!(
        hinting(&ember)["host_cmd"],
        1,
        "done: the guest may use its pages"
    );
    ember.ok(
        "PATCH",
        "/balloon/hinting/start",
        r#"{"acknowledge_on_stop": false}"#,
    );
    assert_eq!(
        hinting(&ember)["host_cmd"],
        3,
        "each run has an id of its own"
    );
    assert_eq!(ember.invoke(b"still here"), (200, b"still here".to_vec()));
}
