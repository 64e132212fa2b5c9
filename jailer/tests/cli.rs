//! Runs the `ember-jailer` binary on a fake exec file (a script whose
//! interpreter does not exist inside the jail): every run must end with one
//! line naming the failed step and leave nothing behind, including failures
//! after the pivot into the jail, which the watcher process cleans up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ember-jailer-cli-{}-{tag}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn jailer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ember-jailer"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn exec_file(t: &TempDir) -> String {
    let p = t.0.join("ember");
    fs::write(&p, b"#!/bin/true\n").unwrap();
    p.to_str().unwrap().to_owned()
}

/// These tests need root (CI runs as root) and fail loudly without it.
fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "ember-jailer's tests must run as root"
    );
}

/// The cgroup v1 `pids` controller; the tests fail loudly where it is not mounted.
fn pids_controller() -> &'static Path {
    let pids = Path::new("/sys/fs/cgroup/pids");
    assert!(
        pids.join("tasks").exists(),
        "cgroup v1 pids is not mounted at {pids:?}"
    );
    pids
}

/// Runs the jailer for `id` and `exec`, with root's ids, the chroot base
/// `<t>/base` and `extra` flags.
fn jail_in(t: &TempDir, id: &str, exec: &str, extra: &[&str]) -> Output {
    let base = t.0.join("base");
    let mut args = vec![
        "--id",
        id,
        "--exec-file",
        exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        base.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    jailer(&args)
}

/// Runs the jailer for `id` in a fresh temp dir with the fake exec file.
/// Returns its output, the temp dir and the chroot base.
fn jail(tag: &str, id: &str, extra: &[&str]) -> (Output, TempDir, PathBuf) {
    let t = TempDir::new(tag);
    let exec = exec_file(&t);
    let output = jail_in(&t, id, &exec, extra);
    let base = t.0.join("base");
    (output, t, base)
}

/// Removes what a failed cleanup would leave under `parent` and says whether there was any.
fn cgroup_left(pids: &Path, parent: &str, id: &str) -> bool {
    let leftover = pids.join(parent);
    let left = leftover.exists();
    if left {
        let _ = fs::remove_dir(leftover.join(id));
        let _ = fs::remove_dir(&leftover);
    }
    left
}

/// What a run prints when everything up to the exec worked.
const EXEC_FAILED: &str =
    "ember-jailer: exec: execve '/ember': No such file or directory (os error 2)\n";

#[test]
fn help_describes_the_jail() {
    let o = jailer(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("--new-pid-ns"), "{out}");
    assert!(out.contains("no capabilities"), "{out}");
}

#[test]
fn bad_argument_is_one_line() {
    let o = jailer(&["--id", "x", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("ember-jailer: args: unknown argument '--bogus'\n"));
}

#[test]
fn a_failed_exec_inside_the_jail_is_reported_and_cleaned_up() {
    let (o, _t, base) = jail(
        "chroot",
        "cli-1",
        &["--resource-limit", "fsize=1000000", "--daemonize"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!base.exists());
}

#[test]
fn a_failed_exec_in_a_new_pid_namespace_is_cleaned_up_too() {
    require_root();
    let (o, _t, base) = jail("pidns", "cli-7", &["--new-pid-ns"]);
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!base.exists());
}

#[test]
fn taken_id_is_refused_and_kept() {
    let t = TempDir::new("taken");
    let exec = exec_file(&t);
    let running = t.0.join("base/ember/cli-2/root/ember");
    fs::create_dir_all(running.parent().unwrap()).unwrap();
    fs::write(&running, b"in use").unwrap();
    let o = jail_in(&t, "cli-2", &exec, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "ember-jailer: chroot: id already in use, the jail already holds '{}'\n",
            running.display()
        )
    );
    assert_eq!(fs::read(&running).unwrap(), b"in use");
}

/// A platform may put the VM's files in the jail before starting the jailer,
/// as with Firecracker's: they stay, and a failure removes only the jailer's own.
#[test]
fn a_prepared_jail_keeps_the_platforms_files_after_a_failure() {
    let t = TempDir::new("prepared");
    let exec = exec_file(&t);
    let root = t.0.join("base/ember/cli-8/root");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("kernel.elf"), b"kernel").unwrap();
    let o = jail_in(&t, "cli-8", &exec, &[]);
    assert_eq!(stderr(&o), EXEC_FAILED);
    let left: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["kernel.elf"]);
}

/// Uses the host's real cgroup v1 `pids` controller, under a parent cgroup
/// unique to this test, and checks nothing is left behind.
#[test]
fn real_cgroup_v1_is_created_and_removed() {
    require_root();
    let pids = pids_controller();
    let parent = format!("ember-jailer-test-{}", std::process::id());
    let (o, _t, _) = jail(
        "cgroup",
        "cli-3",
        &["--cgroup", "pids.max=64", "--parent-cgroup", &parent],
    );
    let left = cgroup_left(pids, &parent, "cli-3");
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!left, "cgroup left behind");
}

#[test]
fn missing_netns_fails_and_cleans_up() {
    let probe = TempDir::new("netns-path");
    let missing = probe.0.join("no-such-netns");
    let (o, _t, base) = jail("netns", "cli-4", &["--netns", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "ember-jailer: netns: open '{}': No such file or directory (os error 2)\n",
            missing.display()
        )
    );
    assert!(!base.exists());
}

#[test]
fn joins_a_real_netns() {
    require_root();
    let (o, _t, base) = jail("netns-ok", "cli-5", &["--netns", "/proc/self/ns/net"]);
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!base.exists());
}

/// A value the kernel rejects: the error names the cgroup the run created
/// for real, and that cgroup (and its parent) is gone afterwards.
#[test]
fn real_cgroup_v1_write_error_names_path_and_cleans_up() {
    require_root();
    let pids = pids_controller();
    let parent = format!("ember-jailer-test-bad-{}", std::process::id());
    let (o, _t, base) = jail(
        "cgroup-bad",
        "cli-6",
        &[
            "--cgroup",
            "pids.max=not-a-number",
            "--parent-cgroup",
            &parent,
        ],
    );
    let left = cgroup_left(pids, &parent, "cli-6");
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "ember-jailer: cgroup: write '{}': Invalid argument (os error 22)\n",
            pids.join(&parent).join("cli-6/pids.max").display()
        )
    );
    assert!(!left, "cgroup left behind");
    assert!(!base.exists());
}

#[test]
fn bad_id_and_missing_exec_file_fail_before_creating_anything() {
    let t = TempDir::new("bad-args");
    let exec = exec_file(&t);
    let base = t.0.join("base");
    let missing = t.0.join("no-ember");
    for (id, exec, expected) in [
        ("bad/id", exec.as_str(), "invalid --id 'bad/id'"),
        (&"x".repeat(65), exec.as_str(), "invalid --id"),
        ("ok-id", missing.to_str().unwrap(), "no-ember"),
    ] {
        let o = jail_in(&t, id, exec, &[]);
        assert_eq!(o.status.code(), Some(2), "{id}");
        let err = stderr(&o);
        assert!(err.contains(expected) && err.lines().count() == 2, "{err}");
        assert!(!base.exists());
    }
}
