//! Runs the `ember-jailer` binary on a fake exec file (a script whose
//! interpreter does not exist inside the jail): every run must end with one
//! line naming the failed step and leave nothing behind, including failures
//! after the pivot into the jail, which the watcher process cleans up.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vmm_sys_util::tempdir::TempDir;

/// A scratch directory for one run, removed when dropped. Searchable by
/// everyone, as a chroot base is: the tenant user some tests act as reaches
/// the jail's root below it.
fn scratch() -> TempDir {
    let t = TempDir::new_with_prefix("/tmp/ember-jailer-cli-").expect("a temporary directory");
    fs::set_permissions(t.as_path(), fs::Permissions::from_mode(0o755))
        .expect("open the scratch directory to the tenant");
    t
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
    let p = t.as_path().join("ember");
    fs::write(&p, b"#!/bin/true\n").unwrap();
    p.to_str().unwrap().to_owned()
}

/// These tests need root (CI runs as root) and fail loudly without it.
fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "ember-jailer's tests must run as root");
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

/// Runs the jailer for `id` and `exec`, as 123:100, with the chroot base
/// `<t>/base` and `extra` flags.
fn jail_in(t: &TempDir, id: &str, exec: &str, extra: &[&str]) -> Output {
    let base = t.as_path().join("base");
    let mut args = vec![
        "--id",
        id,
        "--exec-file",
        exec,
        "--uid",
        "123",
        "--gid",
        "100",
        "--chroot-base-dir",
        base.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    jailer(&args)
}

/// Runs the jailer for `id` in a fresh temp dir with the fake exec file.
/// Returns its output, the temp dir and the chroot base.
fn jail(id: &str, extra: &[&str]) -> (Output, TempDir, PathBuf) {
    let t = scratch();
    let exec = exec_file(&t);
    let output = jail_in(&t, id, &exec, extra);
    let base = t.as_path().join("base");
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
    let (o, _t, base) = jail("cli-1", &["--resource-limit", "fsize=1000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!base.exists());
}

/// Daemonized, the jailer's first process exits 0 at once, as Firecracker's
/// does; the watcher still prints the line (on the caller's stderr, which
/// `output` reads to its end) once it has cleaned up.
#[test]
fn a_failed_exec_after_daemonizing_is_reported_and_cleaned_up() {
    let (o, _t, base) = jail("cli-9", &["--daemonize"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!base.exists());
}

#[test]
fn a_failed_exec_in_a_new_pid_namespace_is_cleaned_up_too() {
    require_root();
    let (o, _t, base) = jail("cli-7", &["--new-pid-ns"]);
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!base.exists());
}

#[test]
fn taken_id_is_refused_and_kept() {
    let t = scratch();
    let exec = exec_file(&t);
    let running = t.as_path().join("base/ember/cli-2/root/ember");
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
    let t = scratch();
    let exec = exec_file(&t);
    let root = t.as_path().join("base/ember/cli-8/root");
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
        "cli-3",
        &["--cgroup", "pids.max=64", "--parent-cgroup", &parent],
    );
    let left = cgroup_left(pids, &parent, "cli-3");
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert!(!left, "cgroup left behind");
}

#[test]
fn missing_netns_fails_and_cleans_up() {
    let probe = scratch();
    let missing = probe.as_path().join("no-such-netns");
    let (o, _t, base) = jail("cli-4", &["--netns", missing.to_str().unwrap()]);
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
    let (o, _t, base) = jail("cli-5", &["--netns", "/proc/self/ns/net"]);
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
    let t = scratch();
    let exec = exec_file(&t);
    let base = t.as_path().join("base");
    let missing = t.as_path().join("no-ember");
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

#[test]
fn root_ids_are_refused_unless_asked_for() {
    let t = scratch();
    let exec = exec_file(&t);
    for (uid, gid) in [("0", "100"), ("123", "0")] {
        let o = jailer(&[
            "--id",
            "r-1",
            "--exec-file",
            &exec,
            "--uid",
            uid,
            "--gid",
            gid,
        ]);
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr(&o).starts_with(
                "ember-jailer: args: --uid 0 or --gid 0 runs the jailed process as root: \
                 add --allow-root to mean it\n"
            ),
            "{}",
            stderr(&o)
        );
    }
    let base = t.as_path().join("base");
    let o = jailer(&[
        "--id",
        "r-2",
        "--exec-file",
        &exec,
        "--uid",
        "0",
        "--gid",
        "0",
        "--allow-root",
        "--chroot-base-dir",
        base.to_str().unwrap(),
    ]);
    assert_eq!(stderr(&o), EXEC_FAILED);
}

/// A host file or directory an attack aims at: root's, mode 0600/0700.
fn host_target(t: &TempDir) -> (PathBuf, PathBuf) {
    let dir = t.as_path().join("host-dev");
    fs::create_dir_all(dir.join("net")).unwrap();
    let file = dir.join("net/tun");
    fs::write(&file, b"the host's").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    (dir, file)
}

/// Owner, group and mode.
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// A prepared root whose `run` or PID file is a link to a host directory or
/// file: the jailer refuses it, naming the link, and leaves the target alone.
#[test]
fn links_planted_in_a_prepared_root_are_refused() {
    require_root();
    for (entry, flags) in [("run", &[][..]), ("ember.pid", &["--new-pid-ns"][..])] {
        let t = scratch();
        let exec = exec_file(&t);
        let (dir, file) = host_target(&t);
        let root = t.as_path().join("base/ember/cli-p/root");
        fs::create_dir_all(&root).unwrap();
        let target = if entry == "run" { &dir } else { &file };
        std::os::unix::fs::symlink(target, root.join(entry)).unwrap();
        let before = (owner_and_mode(&dir), owner_and_mode(&file));
        let o = jail_in(&t, "cli-p", &exec, flags);
        assert_eq!(
            stderr(&o),
            format!(
                "ember-jailer: chroot: the prepared root holds a symbolic link '{}'\n",
                root.join(entry).display()
            )
        );
        assert_eq!((owner_and_mode(&dir), owner_and_mode(&file)), before);
        assert_eq!(fs::read(&file).unwrap(), b"the host's");
    }
}

/// A process of the jailed user racing the jailer, as a tenant who already
/// runs under that uid would: it holds `dir` open (as a process whose working
/// directory it is does, so no lock on a directory above it keeps it out),
/// watches it with inotify and, from the first event in `mask` on, keeps
/// trying to replace entry `name` with a symbolic link to `target` (moving
/// what is there aside) for up to 2 s.
struct Racer {
    pid: libc::pid_t,
}

impl Racer {
    fn start(dir: &Path, mask: u32, name: &str, target: &Path) -> Racer {
        use std::ffi::CString;
        let c = |s: &std::ffi::OsStr| CString::new(s.as_encoded_bytes()).unwrap();
        let (c_dir, c_target) = (c(dir.as_os_str()), c(target.as_os_str()));
        let (c_entry, c_aside, c_link) = (
            c(name.as_ref()),
            c(format!("{name}.aside").as_ref()),
            c(format!("{name}.link").as_ref()),
        );
        let mut ready = [0; 2];
        // SAFETY: `ready` has room for the two descriptors pipe writes.
        assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
        // SAFETY: the child only makes raw syscalls on memory prepared before
        // the fork (no allocation, no locks), then leaves with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                let verdict = (|| {
                    if libc::setresgid(100, 100, 100) != 0 || libc::setresuid(123, 123, 123) != 0 {
                        return 3;
                    }
                    let held = libc::open(c_dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                    let watch = libc::inotify_init1(0);
                    if held < 0
                        || watch < 0
                        || libc::inotify_add_watch(watch, c_dir.as_ptr(), mask) < 0
                    {
                        return 3;
                    }
                    libc::write(ready[1], b"r".as_ptr().cast(), 1);
                    let mut event = [0u8; 4096];
                    if libc::read(watch, event.as_mut_ptr().cast(), event.len()) <= 0 {
                        return 3;
                    }
                    let mut start = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut start);
                    loop {
                        libc::renameat(held, c_entry.as_ptr(), held, c_aside.as_ptr());
                        libc::unlinkat(held, c_link.as_ptr(), 0);
                        if libc::symlinkat(c_target.as_ptr(), held, c_link.as_ptr()) == 0
                            && libc::renameat(held, c_link.as_ptr(), held, c_entry.as_ptr()) == 0
                        {
                            return 1;
                        }
                        let mut now = libc::timespec {
                            tv_sec: 0,
                            tv_nsec: 0,
                        };
                        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
                        if now.tv_sec - start.tv_sec >= 2 {
                            return 0;
                        }
                    }
                })();
                libc::_exit(verdict);
            }
            libc::close(ready[1]);
            let mut byte = 0u8;
            assert_eq!(
                libc::read(ready[0], (&mut byte as *mut u8).cast(), 1),
                1,
                "racer ready"
            );
            libc::close(ready[0]);
            Racer { pid }
        }
    }

    /// Whether the swap went through (false: every try was refused).
    fn swapped(self) -> bool {
        let mut status = 0;
        // SAFETY: waits for the child this value owns.
        assert_eq!(unsafe { libc::waitpid(self.pid, &mut status, 0) }, self.pid);
        match libc::WEXITSTATUS(status) {
            0 => false,
            1 => true,
            other => panic!("the racer could not start: {other}"),
        }
    }
}

/// A root the jailed user owns, as one left from an earlier run is.
fn users_root(t: &TempDir, id: &str) -> PathBuf {
    let root = t.as_path().join("base/ember").join(id).join("root");
    fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(123), Some(100)).unwrap();
    root
}

/// The copy of the exec file races a tenant who swaps it for a link to a host
/// file the moment it appears (defeating a copy made, then chmod'ed and
/// chown'ed, by path): the root is the jailer's own while it works, so the
/// swap is refused until the hand-over (after which the root is the user's to
/// change, and the jailer touches nothing in it by path), and the host file
/// keeps its owner and mode.
#[test]
fn a_tenant_racing_the_exec_file_copy_cannot_touch_the_host() {
    require_root();
    let t = scratch();
    let exec = exec_file(&t);
    let (_, file) = host_target(&t);
    let root = users_root(&t, "cli-r");
    let before = owner_and_mode(&file);
    let racer = Racer::start(&root, libc::IN_CREATE, "ember", &file);
    let o = jail_in(&t, "cli-r", &exec, &[]);
    racer.swapped();
    assert_eq!(stderr(&o), EXEC_FAILED);
    assert_eq!(owner_and_mode(&file), before);
    assert_eq!(fs::read(&file).unwrap(), b"the host's");
}

/// Once the jail is handed over, its user may swap `dev` for a link to the
/// host's /dev; when the exec then fails, the cleanup removes the link, not
/// the host's `/dev/net`. (The swap must land before the cleanup: a run where
/// it did not is tried again.)
#[test]
fn cleanup_after_a_failure_never_follows_a_swapped_dev() {
    require_root();
    for attempt in 0.. {
        let t = scratch();
        let exec = exec_file(&t);
        let (dir, file) = host_target(&t);
        let root = users_root(&t, "cli-d");
        let racer = Racer::start(&root, libc::IN_ATTRIB, "dev", &dir);
        let o = jail_in(&t, "cli-d", &exec, &[]);
        let swapped = racer.swapped();
        assert_eq!(stderr(&o), EXEC_FAILED);
        assert_eq!(fs::read(&file).unwrap(), b"the host's", "attempt {attempt}");
        assert!(dir.join("net").is_dir());
        if swapped {
            assert!(!root.join("dev").exists(), "the link itself went");
            break;
        }
        assert!(attempt < 5, "the racer never swapped dev in time");
    }
}
