//! A containerd of the test's own, as a node runs one: Debian's `containerd`
//! (installed if missing), with its root, state, sockets and configuration in
//! a scratch directory, ember's shim found on its PATH, driven with `ctr`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::artifacts::{built_binary, static_ember, workspace_root};
use crate::scratch::TempDir;
use crate::{require_kvm, require_root};

/// The runtime ember's shim registers as.
pub const RUNTIME: &str = "io.containerd.ember.v2";
/// The containerd namespace the tests' containers live in.
const NAMESPACE: &str = "ember-test";
/// Where a task's VM leases its uid (see the shim's `vm.rs`).
pub const UID_LEASES: &str = "/run/ember-shim/uids";

/// Where Debian's containernetworking-plugins puts CNI's plugins.
pub const CNI_PLUGINS: &str = "/usr/lib/cni";

/// Installs Debian's containerd (with ctr) and CNI's plugins once, if they are
/// not there.
fn install_containerd() {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut done = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let installed =
        Path::new("/usr/bin/containerd").exists() && Path::new(CNI_PLUGINS).join("bridge").exists();
    if *done || installed {
        *done = true;
        return;
    }
    let apt = |args: &[&str]| {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .expect("run apt-get");
        assert!(status.success(), "apt-get {args:?} failed");
    };
    apt(&["update", "-qq"]);
    apt(&[
        "install",
        "-y",
        "-qq",
        "containerd",
        "containernetworking-plugins",
    ]);
    *done = true;
}

pub struct Containerd {
    dir: TempDir,
    daemon: Child,
}

impl Containerd {
    /// Starts containerd with ember's shim beside `ember-jailer` on its PATH
    /// and the statically linked ember named by `EMBER_SHIM_EMBER`.
    pub fn start() -> Containerd {
        require_root();
        require_kvm();
        install_containerd();
        let dir = TempDir::new("containerd");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = dir.path("root").display(),
            state = dir.path("state").display(),
            sock = dir.path("ctd.sock").display(),
        );
        std::fs::write(dir.path("config.toml"), config).expect("write containerd's config");
        let shim = built_binary("containerd-shim-ember-v2");
        let bin_dir = shim.parent().expect("target/release").to_owned();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(dir.path("containerd.log")).expect("containerd's log");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(dir.path("config.toml"))
            .env("PATH", path)
            .env("EMBER_SHIM_EMBER", static_ember())
            .env("EMBER_SHIM_SNAPSHOT_DIR", dir.path("snapshots"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let containerd = Containerd { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        containerd
    }

    /// `ctr`'s flags for this containerd and the tests' namespace.
    pub fn global_args(&self) -> Vec<String> {
        vec![
            "--address".into(),
            self.dir.path("ctd.sock").to_string_lossy().into_owned(),
            "--namespace".into(),
            NAMESPACE.into(),
        ]
    }

    /// Runs `ctr` against this containerd, in the tests' namespace.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .args(self.global_args())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs `ctr`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What containerd (and the shims, through it) logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("containerd.log")).unwrap_or_default()
    }

    /// Packs the unikernel `kernel` as the function image `name` with
    /// `resources/function-image.py` and imports it; returns its reference.
    pub fn import_function(&self, name: &str, kernel: &Path) -> String {
        let tarball = self.dir.path(&format!("{name}.tar"));
        let reference = format!("ember.dev/test/{name}:latest");
        let status = Command::new("python3")
            .arg(workspace_root().join("resources/function-image.py"))
            .arg(name)
            .arg(&tarball)
            .arg("--kernel")
            .arg(kernel)
            .args(["--name", &reference])
            .stdout(Stdio::null())
            .status()
            .expect("run resources/function-image.py");
        assert!(status.success(), "function-image.py failed");
        self.ok(&["image", "import", tarball.to_str().expect("UTF-8 path")]);
        reference
    }

    /// Starts task `id` of `image` on ember in the background, its console
    /// going to the file [`Containerd::console`] reads.
    pub fn run_detached(&self, image: &str, id: &str) {
        self.run_detached_with(image, id, &[]);
    }

    /// As [`Containerd::run_detached`], with more `ctr run` flags.
    pub fn run_detached_with(&self, image: &str, id: &str, flags: &[&str]) {
        let args = self.run_detached_args(image, id, flags);
        self.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// The `ctr` arguments (after the global ones) of [`Containerd::run_detached_with`].
    pub fn run_detached_args(&self, image: &str, id: &str, flags: &[&str]) -> Vec<String> {
        let log_uri = format!("file://{}", self.console_path(id).display());
        let mut args = vec![
            "run",
            "--detach",
            "--runtime",
            RUNTIME,
            "--log-uri",
            &log_uri,
        ];
        args.extend(flags);
        args.extend([image, id]);
        args.into_iter().map(String::from).collect()
    }

    fn console_path(&self, id: &str) -> PathBuf {
        self.dir.path(&format!("{id}.console"))
    }

    /// Task `id`'s console so far.
    pub fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.console_path(id)).unwrap_or_default()
    }

    /// Waits until task `id`'s console has a line starting with `prefix`.
    pub fn wait_console(&self, id: &str, prefix: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.console(id).lines().any(|l| l.starts_with(prefix)) {
            assert!(
                Instant::now() < deadline,
                "task {id} never printed '{prefix}'; console:\n{}\ncontainerd:\n{}",
                self.console(id),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until task `id`'s function serves: booted to its ready line, or
    /// restored from a snapshot (and its API up, which holds calls until the
    /// load is done).
    pub fn wait_ready(&self, id: &str, ready_line: &str, timeout: Duration) {
        let restored = format!("task {id}: restored from snapshot");
        let deadline = Instant::now() + timeout;
        while !self.console(id).lines().any(|l| l.starts_with(ready_line))
            && !self.log().contains(&restored)
        {
            assert!(
                Instant::now() < deadline,
                "task {id} never became ready; console:\n{}\ncontainerd:\n{}",
                self.console(id),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.wait_api(id, timeout);
    }

    /// Task `id`'s bundle, where the shim keeps its jail and `ember.sock`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path("state")
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(id)
    }

    /// The function snapshots the shims keep.
    pub fn snapshots(&self) -> PathBuf {
        self.dir.path("snapshots")
    }

    /// Waits until containerd's log (where the shims log) has a line containing `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(text)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "containerd never logged '{text}':\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until task `id`'s ember answers on its API socket.
    pub fn wait_api(&self, id: &str, timeout: Duration) {
        let socket = self.bundle(id).join("ember.sock");
        let deadline = Instant::now() + timeout;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "{id}'s API never came up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Kills task `id` (SIGKILL), waits until containerd sees it stopped, and
    /// deletes it and its container.
    pub fn kill_and_remove(&self, id: &str) {
        self.ok(&["task", "kill", "--signal", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.task(id).is_some_and(|(_, status)| status != "STOPPED") {
            assert!(
                Instant::now() < deadline,
                "{id} never stopped:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.ok(&["task", "delete", id]);
        self.ok(&["container", "delete", id]);
    }

    /// Task `id`'s pid and status as `ctr task ls` shows them.
    pub fn task(&self, id: &str) -> Option<(u32, String)> {
        self.ok(&["task", "ls"]).lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(id))
                .then(|| Some((fields.next()?.parse().ok()?, fields.next()?.to_owned())))
                .flatten()
        })
    }
}

impl Drop for Containerd {
    /// Kills and removes whatever a failed test left, then stops containerd.
    fn drop(&mut self) {
        let listed = |what: &str| -> Vec<String> {
            String::from_utf8_lossy(&self.ctr(&[what, "ls", "-q"]).stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        };
        for task in listed("task") {
            self.ctr(&["task", "kill", "--signal", "SIGKILL", &task]);
            self.ctr(&["task", "delete", "--force", &task]);
        }
        for container in listed("container") {
            self.ctr(&["container", "delete", &container]);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.daemon.id()) {
            // SAFETY: kill has no memory-safety preconditions; the daemon is our
            // unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = self.daemon.wait();
    }
}
