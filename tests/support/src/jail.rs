//! A jail made by `ember-jailer` around ember, as a platform makes one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::artifacts::{jailer_bin, static_ember};
use crate::ember::{transport_args, Ember};
use crate::http::http;
use crate::scratch::TempDir;
use crate::{require_kvm, require_root};

/// The uid and gid jailed embers run as in the tests and benchmarks.
pub const JAIL_UID: u32 = 123;
pub const JAIL_GID: u32 = 100;

/// A jail run by `ember-jailer`; kills ember and removes the jail and cgroup when dropped.
pub struct Jail {
    /// The jailer's process, which is ember after the exec (without
    /// `--new-pid-ns`); its stdio is the jailed ember's console.
    pub ember: Ember,
    base: TempDir,
    id: String,
    pub cgroup_parent: String,
    pub pid: u32,
    /// When the jailer was spawned and when the jailed API first answered a connect.
    pub spawned_at: Instant,
    pub api_ready_at: Instant,
}

impl Jail {
    /// Jails ember as `id` with its API at `/run/api.sock`, plus `extra` jailer flags.
    pub fn start(id: &str, extra: &[&str]) -> Jail {
        Jail::start_with(id, extra, &[], |_| {})
    }

    /// As `start`, with `ember_args` for ember and `prepare` filling the jail's
    /// root before the jailer runs, as a platform does with its VM's files.
    pub fn start_with(
        id: &str,
        extra: &[&str],
        ember_args: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Jail {
        Jail::start_under_umask(id, extra, ember_args, None, prepare)
    }

    /// The jailer's arguments for `id` under `base`, as 123:100 with
    /// `extra` jailer flags and `ember_args` after ember's API socket.
    pub fn jailer_args(
        id: &str,
        base: &Path,
        cgroup_parent: &str,
        extra: &[&str],
        ember_args: &[&str],
    ) -> Vec<String> {
        let mut args: Vec<String> = [
            "--id",
            id,
            "--exec-file",
            static_ember().to_str().unwrap(),
            "--uid",
            &JAIL_UID.to_string(),
            "--gid",
            &JAIL_GID.to_string(),
            "--chroot-base-dir",
            base.to_str().unwrap(),
            "--parent-cgroup",
            cgroup_parent,
            "--resource-limit",
            "no-file=1024",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--", "--api-sock", "/run/api.sock", "--level", "Info"].map(String::from));
        args.extend(transport_args(ember_args).iter().map(|a| a.to_string()));
        args
    }

    /// As `start_with`, with the jailer started under `umask` if given.
    pub fn start_under_umask(
        id: &str,
        extra: &[&str],
        ember_args: &[&str],
        umask: Option<u32>,
        prepare: impl FnOnce(&Path),
    ) -> Jail {
        require_root();
        require_kvm();
        let base = TempDir::new(&format!("jail-{id}"));
        let root = base.as_path().join("ember").join(id).join("root");
        std::fs::create_dir_all(&root).expect("create the jail's root");
        prepare(&root);
        let cgroup_parent = format!("ember-test-{}", std::process::id());
        // A v1 `pids` limit unless the caller chose its cgroups.
        let mut extra = extra.to_vec();
        if !extra.contains(&"--cgroup") {
            extra.extend(["--cgroup", "pids.max=100"]);
        }
        let args = Jail::jailer_args(id, base.as_path(), &cgroup_parent, &extra, ember_args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let jailer = jailer_bin();
        let ember = match umask {
            None => Ember::spawn_program(&jailer, &args, None),
            Some(mask) => {
                let script = format!("umask {mask:03o} && exec \"$0\" \"$@\"");
                let mut command = vec!["-c", script.as_str(), jailer.to_str().unwrap()];
                command.extend(&args);
                Ember::spawn_program(Path::new("sh"), &command, None)
            }
        };
        let mut jail = Jail {
            pid: ember.pid(),
            spawned_at: ember.spawned_at,
            api_ready_at: ember.spawned_at,
            ember,
            base,
            id: id.to_string(),
            cgroup_parent,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(jail.socket()).is_err() {
            if let Ok(Some(status)) = jail.ember.child.try_wait() {
                // With either flag the jailer's own process leaves, successfully.
                let leaves = extra.contains(&"--new-pid-ns") || extra.contains(&"--daemonize");
                if !leaves || !status.success() {
                    panic!("the jailer exited: {status}: {}", jail.ember.stderr());
                }
            }
            assert!(Instant::now() < deadline, "the jailed API never came up");
            std::thread::sleep(Duration::from_micros(100));
        }
        jail.api_ready_at = Instant::now();
        // ember's pid as the host sees it, whatever the jailer's own became.
        let pid_file = jail.root().join("ember.pid");
        jail.pid = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        jail
    }

    pub fn root(&self) -> PathBuf {
        self.base
            .as_path()
            .join("ember")
            .join(&self.id)
            .join("root")
    }

    pub fn socket(&self) -> PathBuf {
        self.root().join("run/api.sock")
    }

    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = http(&self.socket(), method, path, body.as_bytes());
        assert_eq!(status, 204, "{method} {path} {body} -> {status} {reply}");
    }

    /// Hard-links (or copies) `file` into the jail; returns its path inside.
    pub fn provide(&self, file: &Path, name: &str) -> String {
        let inside = self.root().join(name);
        if std::fs::hard_link(file, &inside).is_err() {
            std::fs::copy(file, &inside).expect("copy into the jail");
        }
        format!("/{name}")
    }

    pub fn status(&self, task: Option<&str>) -> String {
        let path = match task {
            Some(tid) => format!("/proc/{}/task/{tid}/status", self.pid),
            None => format!("/proc/{}/status", self.pid),
        };
        std::fs::read_to_string(path).expect("ember's status")
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.ember.child.kill();
        let _ = self.ember.child.wait();
        // The cgroup empties once the kernel has finished with the killed process.
        for hierarchy in ["/sys/fs/cgroup/pids", "/sys/fs/cgroup/unified"] {
            let cgroup = Path::new(hierarchy).join(&self.cgroup_parent);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::fs::remove_dir(cgroup.join(&self.id)).is_err()
                && cgroup.join(&self.id).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = std::fs::remove_dir(cgroup);
        }
    }
}
