//! The ember process driver: spawn it (or the jailer that becomes it), its
//! API, console, stdin and exit.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::artifacts::{ember_bin, guest_cache_dir, jailer_bin, static_ember};
use crate::http::{http, http_bytes};
use crate::require_kvm;
use crate::scratch::TempDir;

/// Everything the guest printed so far, with the time each line arrived.
#[derive(Default)]
struct Console {
    lines: Vec<(Instant, String)>,
    closed: bool,
}

/// A running `ember` process.
pub struct Ember {
    pub child: Child,
    pub socket: Option<PathBuf>,
    pub spawned_at: Instant,
    stdin: Option<ChildStdin>,
    /// ember's stdout while nobody reads it (`spawn_undrained`).
    undrained: Option<std::process::ChildStdout>,
    console: Arc<(Mutex<Console>, Condvar)>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    /// With `EMBER_TEST_JAILED`: the jail directory to remove afterwards.
    jail_dir: Option<PathBuf>,
}

/// Whether the suite runs ember's virtio devices on PCI (`EMBER_TEST_PCI`).
pub fn on_pci() -> bool {
    std::env::var_os("EMBER_TEST_PCI").is_some()
}

/// `args`, with `--enable-pci` when the suite runs on PCI.
pub fn transport_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    if on_pci() {
        args.push("--enable-pci");
    }
    args
}

impl Ember {
    /// Spawns ember with `args`; with `socket` set, waits until the API answers a connect.
    ///
    /// With `EMBER_TEST_JAILED` set, ember runs under `ember-jailer` (chroot,
    /// namespaces, dropped groups, seccomp), so the whole suite can run jailed.
    ///
    /// With `EMBER_TEST_PCI` set, ember puts its virtio devices on PCI
    /// (`--enable-pci`), so the whole suite can run on either transport.
    pub fn spawn(args: &[&str], socket: Option<&Path>) -> Ember {
        let args = transport_args(args);
        if std::env::var_os("EMBER_TEST_JAILED").is_some() {
            return Ember::spawn_jailed(&args, socket);
        }
        Ember::spawn_program(&ember_bin(), &args, socket)
    }

    /// Runs ember in a jail whose root also shows the host's /tmp (the
    /// tests' files and sockets) and the guest cache at their usual paths.
    /// The bind mounts are made in a mount namespace of their own, which the
    /// jailer then narrows: nothing is mounted on the host, and they vanish
    /// with ember.
    fn spawn_jailed(args: &[&str], socket: Option<&Path>) -> Ember {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let valid = |id: &str| {
            (1..=64).contains(&id.len())
                && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        // The jailer gives ember `--id`; a test's own id becomes the jail's.
        let mut id = None;
        let mut ember_args: Vec<&str> = Vec::new();
        let mut it = args.iter();
        while let Some(&arg) = it.next() {
            match (arg, id.is_none()) {
                ("--id", true) if it.clone().next().is_some_and(|v| valid(v)) => {
                    id = it.next().map(|v| v.to_string())
                }
                _ => ember_args.push(arg),
            }
        }
        let id = id.unwrap_or_else(|| {
            let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            format!("t{}-{n}", std::process::id())
        });
        let base = Path::new("/var/tmp/ember-test-jails");
        let jail_dir = base.join("ember").join(&id);
        let _ = std::fs::remove_dir_all(&jail_dir);
        let root = jail_dir.join("root");
        let cache = guest_cache_dir();
        for dir in [
            root.join("tmp"),
            root.join(cache.strip_prefix("/").unwrap_or(&cache)),
        ] {
            std::fs::create_dir_all(dir).expect("create a jail mount point");
        }
        let script = r#"root=$1 cache=$2; shift 2
mount --bind /tmp "$root/tmp" && mount --bind "$cache" "$root$cache" && exec "$@""#;
        let static_ember = static_ember();
        let mut command: Vec<&str> = vec![
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            root.to_str().unwrap(),
            cache.to_str().unwrap(),
        ];
        let jailer = jailer_bin();
        command.extend([
            jailer.to_str().unwrap(),
            "--id",
            &id,
            "--exec-file",
            static_ember.to_str().unwrap(),
            "--uid",
            "0",
            "--gid",
            "0",
            "--allow-root",
            "--chroot-base-dir",
            base.to_str().unwrap(),
            "--",
        ]);
        command.extend(ember_args);
        let mut ember = Ember::spawn_program(Path::new("unshare"), &command, socket);
        ember.jail_dir = Some(jail_dir);
        ember
    }

    /// Spawns `program` (ember, or the jailer that becomes ember) with `args`.
    pub fn spawn_program(program: &Path, args: &[&str], socket: Option<&Path>) -> Ember {
        let mut ember = Ember::spawn_quiet(program, args, socket);
        ember.drain_console();
        ember
    }

    /// Spawns ember with `args` but leaves its stdout unread, as a console
    /// nobody drains, until `drain_console`.
    pub fn spawn_undrained(args: &[&str], socket: Option<&Path>) -> Ember {
        Ember::spawn_quiet(&ember_bin(), &transport_args(args), socket)
    }

    fn spawn_quiet(program: &Path, args: &[&str], socket: Option<&Path>) -> Ember {
        Ember::spawn_command(Command::new(program).args(args), socket)
    }

    /// Spawns ember with `args` in the network namespace `netns` (an open
    /// `/var/run/netns/<name>`), as `ip netns exec` would, without its exec.
    pub fn spawn_in_netns(netns: &std::fs::File, args: &[&str], socket: Option<&Path>) -> Ember {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fd = netns.as_raw_fd();
        let mut command = Command::new(ember_bin());
        command.args(transport_args(args));
        // SAFETY: the hook only calls setns, which is async-signal-safe, on an
        // fd the parent keeps open until the spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut ember = Ember::spawn_command(&mut command, socket);
        ember.drain_console();
        ember
    }

    fn spawn_command(command: &mut Command, socket: Option<&Path>) -> Ember {
        let spawned_at = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ember");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let undrained = child.stdout.take();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let err_sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                err_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        let ember = Ember {
            child,
            socket: socket.map(Path::to_path_buf),
            spawned_at,
            stdin,
            undrained,
            console,
            stderr,
            stderr_reader: Some(stderr_reader),
            jail_dir: None,
        };
        if let Some(socket) = socket {
            ember.wait_for_socket(socket);
        }
        ember
    }

    /// Starts collecting the console's lines.
    pub fn drain_console(&mut self) {
        let Some(stdout) = self.undrained.take() else {
            return;
        };
        let sink = self.console.clone();
        std::thread::spawn(move || {
            // Bytes, not text: a guest may print anything.
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                let end = line.strip_suffix(b"\n").unwrap_or(&line);
                let end = end.strip_suffix(b"\r").unwrap_or(end);
                let text = String::from_utf8_lossy(end).into_owned();
                line.clear();
                let (lock, cv) = &*sink;
                lock.lock().unwrap().lines.push((Instant::now(), text));
                cv.notify_all();
            }
            let (lock, cv) = &*sink;
            lock.lock().unwrap().closed = true;
            cv.notify_all();
        });
    }

    /// Spawns ember with its API on a fresh socket in `dir`.
    pub fn with_api(dir: &TempDir, extra: &[&str]) -> Ember {
        let socket = dir.path("api.sock");
        let mut args = vec!["--api-sock", socket.to_str().unwrap()];
        args.extend_from_slice(extra);
        Ember::spawn(&args, Some(&socket))
    }

    /// Spawns `ember --no-api --config-file` for `config`, written to `dir`.
    pub fn with_config(dir: &TempDir, config: &serde_json::Value) -> Ember {
        let path = dir.path("vm.json");
        std::fs::write(&path, config.to_string()).unwrap();
        Ember::spawn(&["--no-api", "--config-file", path.to_str().unwrap()], None)
    }

    fn wait_for_socket(&self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "ember's API socket never came up; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// One HTTP request on the API socket: (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(
            self.socket.as_deref().expect("ember has no API socket"),
            method,
            path,
            body.as_bytes(),
        )
    }

    /// Asserts a request answers 204.
    pub fn ok(&self, method: &str, path: &str, body: &str) {
        let (status, reply) = self.api(method, path, body);
        assert_eq!(status, 204, "{method} {path} {body} -> {status} {reply}");
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn console(&self) -> Vec<String> {
        self.console
            .0
            .lock()
            .unwrap()
            .lines
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The console lines so far that start with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<String> {
        self.console()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Waits for a console line satisfying `pred`; returns it with its arrival time.
    pub fn wait_line(
        &self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut console = lock.lock().unwrap();
        loop {
            if let Some(found) = console.lines.iter().find(|(_, l)| pred(l)) {
                return Some(found.clone());
            }
            let now = Instant::now();
            if console.closed || now >= deadline {
                return None;
            }
            console = cv.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    /// Waits for a line starting with `prefix` or fails with what the guest printed.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        match self.wait_line(timeout, |l| l.starts_with(prefix)) {
            Some((_, line)) => line,
            None => panic!(
                "no console line starting with {prefix:?} within {timeout:?}\nconsole:\n{}\nstderr:\n{}",
                self.console().join("\n"),
                self.stderr()
            ),
        }
    }

    /// Types `line` at the test guest's echo console and waits for it to
    /// come back; then types `reset` and expects ember to exit 0.
    pub fn echo_then_reset(&mut self, line: &str, timeout: Duration) {
        self.write_stdin(format!("{line}\n").as_bytes());
        self.expect_line(line, timeout);
        self.write_stdin(b"reset\n");
        assert_eq!(self.wait_exit(timeout).code(), Some(0));
    }

    /// Spawns ember and boots the function in `kernel` through the API, with
    /// `machine` as its machine configuration and a vsock at `dir/v.sock`;
    /// returns once the function listens.
    pub fn function_via_api(dir: &TempDir, kernel: &Path, machine: serde_json::Value) -> Ember {
        require_kvm();
        let ember = Ember::with_api(dir, &[]);
        ember.put_boot_source(kernel, "console=ttyS0");
        ember.ok("PUT", "/machine-config", &machine.to_string());
        ember.ok(
            "PUT",
            "/vsock",
            &serde_json::json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
        );
        ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
        ember.expect_line("EMBER-FN: ready on port", Duration::from_secs(20));
        ember
    }

    /// `PUT /boot-source` with `kernel` and `boot_args`.
    pub fn put_boot_source(&self, kernel: &Path, boot_args: &str) {
        self.ok(
            "PUT",
            "/boot-source",
            &serde_json::json!({"kernel_image_path": kernel, "boot_args": boot_args}).to_string(),
        );
    }

    /// Closes ember's stdin: the console's writer goes away.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    pub fn write_stdin(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for ember to exit, killing it after `timeout`; then all of its
    /// stderr has been read.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "ember did not exit within {timeout:?}\nconsole:\n{}\nstderr:\n{}",
                    self.console().join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `POST /invocations` with `input`: the HTTP status and the function's output.
    pub fn invoke(&self, input: &[u8]) -> (u16, Vec<u8>) {
        let socket = self.socket.as_deref().expect("ember has no API socket");
        http_bytes(socket, "POST", "/invocations", input)
    }
}

impl Drop for Ember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.jail_dir {
            // Its mounts died with ember's mount namespace: only empty
            // mount points and the jail's own files remain.
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
