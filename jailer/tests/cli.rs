//! Runs the `ember-jailer` binary: every run must end with a one-line error
//! (exec is not written yet) and leave nothing behind.

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

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn help_lists_missing_steps() {
    let o = jailer(&["--help"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("Not implemented yet"), "{out}");
    assert!(out.contains("exec"), "{out}");
}

#[test]
fn bad_argument_is_one_line() {
    let o = jailer(&["--id", "x", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("ember-jailer: args: unknown argument '--bogus'\n"));
}

#[test]
fn stops_at_exec_and_removes_its_chroot() {
    let t = TempDir::new("chroot");
    let exec = exec_file(&t);
    let base = t.0.join("base");
    let o = jailer(&[
        "--id",
        "cli-1",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--resource-limit",
        "fsize=1000000",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "ember-jailer: exec: not implemented yet\n");
    assert!(!base.exists());
}

#[test]
fn taken_id_is_refused_and_kept() {
    let t = TempDir::new("taken");
    let exec = exec_file(&t);
    let jail = t.0.join("base/ember/cli-2");
    fs::create_dir_all(&jail).unwrap();
    let o = jailer(&[
        "--id",
        "cli-2",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        t.0.join("base").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "ember-jailer: chroot: id already in use, directory exists '{}'\n",
            jail.display()
        )
    );
    assert!(jail.is_dir());
}

/// Uses the host's real cgroup v1 `pids` controller, under a parent cgroup
/// unique to this test, and checks nothing is left behind.
#[test]
fn real_cgroup_v1_is_created_and_removed() {
    let pids = Path::new("/sys/fs/cgroup/pids");
    if !is_root() || !pids.join("tasks").exists() {
        eprintln!("skipped: needs root and cgroup v1 pids at {pids:?}");
        return;
    }
    let t = TempDir::new("cgroup");
    let exec = exec_file(&t);
    let parent = format!("ember-jailer-test-{}", std::process::id());
    let o = jailer(&[
        "--id",
        "cli-3",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        t.0.join("base").to_str().unwrap(),
        "--cgroup",
        "pids.max=64",
        "--parent-cgroup",
        &parent,
    ]);
    let leftover = pids.join(&parent);
    let left = leftover.exists();
    if left {
        let _ = fs::remove_dir(leftover.join("cli-3"));
        let _ = fs::remove_dir(&leftover);
    }
    assert_eq!(stderr(&o), "ember-jailer: exec: not implemented yet\n");
    assert!(!left, "cgroup left behind");
}

#[test]
fn missing_netns_fails_and_cleans_up() {
    let t = TempDir::new("netns");
    let exec = exec_file(&t);
    let base = t.0.join("base");
    let missing = t.0.join("no-such-netns");
    let o = jailer(&[
        "--id",
        "cli-4",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--netns",
        missing.to_str().unwrap(),
    ]);
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
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let t = TempDir::new("netns-ok");
    let exec = exec_file(&t);
    let base = t.0.join("base");
    let o = jailer(&[
        "--id",
        "cli-5",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--netns",
        "/proc/self/ns/net",
    ]);
    assert_eq!(stderr(&o), "ember-jailer: exec: not implemented yet\n");
    assert!(!base.exists());
}

/// A value the kernel rejects: the error names the cgroup the run created
/// for real, and that cgroup (and its parent) is gone afterwards.
#[test]
fn real_cgroup_v1_write_error_names_path_and_cleans_up() {
    let pids = Path::new("/sys/fs/cgroup/pids");
    if !is_root() || !pids.join("tasks").exists() {
        eprintln!("skipped: needs root and cgroup v1 pids at {pids:?}");
        return;
    }
    let t = TempDir::new("cgroup-bad");
    let exec = exec_file(&t);
    let base = t.0.join("base");
    let parent = format!("ember-jailer-test-bad-{}", std::process::id());
    let o = jailer(&[
        "--id",
        "cli-6",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--chroot-base-dir",
        base.to_str().unwrap(),
        "--cgroup",
        "pids.max=not-a-number",
        "--parent-cgroup",
        &parent,
    ]);
    let leftover = pids.join(&parent);
    let left = leftover.exists();
    if left {
        let _ = fs::remove_dir(leftover.join("cli-6"));
        let _ = fs::remove_dir(&leftover);
    }
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "ember-jailer: cgroup: write '{}': Invalid argument (os error 22)\n",
            leftover.join("cli-6/pids.max").display()
        )
    );
    assert!(!left, "cgroup left behind");
    assert!(!base.exists());
}
