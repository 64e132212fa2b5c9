//! Drives the real `ember` binary as a user does: spawn it, talk to its API
//! socket, read its console, feed its stdin, wait for it to exit.
//! Shared by the integration tests and the benchmark.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const EMBER: &str = env!("CARGO_BIN_EXE_ember");

/// Fails loudly when KVM is missing: these tests never skip.
pub fn require_kvm() {
    if !Path::new("/dev/kvm").exists() {
        panic!("/dev/kvm is missing: ember's integration tests need KVM (a host with hardware or nested virtualization)");
    }
}

/// Guest artifacts by name (`test-elf`, `test-pvh`, `kernel`, ...), built or
/// found in the cache by `resources/guests.sh` once per test binary, or read
/// from the `name=path` file `EMBER_GUESTS` names (guests built elsewhere).
pub fn artifact(name: &str) -> PathBuf {
    static ARTIFACTS: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let all = ARTIFACTS.get_or_init(|| {
        let listing = match std::env::var("EMBER_GUESTS") {
            Ok(file) => std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("cannot read EMBER_GUESTS file {file}: {e}")),
            Err(_) => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/guests.sh");
                let out = Command::new("bash")
                    .arg(&script)
                    .stderr(Stdio::inherit())
                    .output()
                    .expect("run resources/guests.sh");
                assert!(
                    out.status.success(),
                    "resources/guests.sh failed: {}",
                    out.status
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        listing
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect()
    });
    all.get(name)
        .unwrap_or_else(|| panic!("resources/guests.sh printed no '{name}=' artifact"))
        .clone()
}

/// A scratch directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("ember-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A disk image of `sectors` 512-byte sectors starting with `text`.
    pub fn disk(&self, name: &str, sectors: usize, text: &[u8]) -> PathBuf {
        let mut bytes = vec![0u8; sectors * 512];
        bytes[..text.len()].copy_from_slice(text);
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write disk image");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

impl Ember {
    /// Spawns ember with `args`; with `socket` set, waits until the API answers a connect.
    ///
    /// With `EMBER_TEST_JAILED` set, ember runs under `ember-jailer` (chroot,
    /// namespaces, dropped groups, seccomp), so the whole suite can run jailed.
    pub fn spawn(args: &[&str], socket: Option<&Path>) -> Ember {
        if std::env::var_os("EMBER_TEST_JAILED").is_some() {
            return Ember::spawn_jailed(args, socket);
        }
        Ember::spawn_program(Path::new(EMBER), args, socket)
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
        Ember::spawn_quiet(Path::new(EMBER), args, socket)
    }

    fn spawn_quiet(program: &Path, args: &[&str], socket: Option<&Path>) -> Ember {
        let spawned_at = Instant::now();
        let mut child = Command::new(program)
            .args(args)
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

/// Where `resources/guests.sh` caches the guests (`EMBER_CACHE`, or ~/.cache/ember).
fn guest_cache_dir() -> PathBuf {
    std::env::var_os("EMBER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/ember")
        })
}

/// One request that gives up after `timeout` instead of waiting for ever:
/// (status, body), or what went wrong.
pub fn try_http(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer within {timeout:?}: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A minimal HTTP/1.1 client for one request over a Unix socket.
pub fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, body) = http_bytes(socket, method, path, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One request whose response body may be binary.
pub fn http_bytes(socket: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (and close) before reading an oversized body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP header end in {:?}",
                String::from_utf8_lossy(&response)
            )
        });
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    (status, response[split + 4..].to_vec())
}

/// The `mem:` lines a test guest prints for `mem_mib` of RAM, from ember's documented layout.
pub fn expected_memory_lines(mem_mib: u64) -> Vec<String> {
    let size = mem_mib << 20;
    let gap = 0xd000_0000u64;
    let mut ranges = vec![(0u64, 0x9fc00u64)];
    if size <= gap {
        ranges.push((0x10_0000, size - 0x10_0000));
    } else {
        ranges.push((0x10_0000, gap - 0x10_0000));
        ranges.push((1 << 32, size - gap));
    }
    ranges
        .iter()
        .map(|&(start, len)| format!("mem: {start:#x}-{:#x} type=1", start + len - 1))
        .collect()
}

/// An HTTP/1.1 client that keeps its connection open between requests, as
/// platform HTTP clients do.
pub struct KeepAlive {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl KeepAlive {
    pub fn connect(socket: &Path) -> Self {
        let writer = UnixStream::connect(socket).expect("connect to the API socket");
        let reader = BufReader::new(writer.try_clone().expect("clone the API stream"));
        KeepAlive { reader, writer }
    }

    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {status_line:?}"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// Resident memory of `pid` outside its guest-memory mapping (the one of
/// `guest_kib`), in KiB: what the VMM itself costs.
pub fn rss_besides_guest_kib(pid: u32, guest_kib: u64) -> f64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let (mut total, mut guest, mut size) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match (fields.next(), fields.next()) {
            (Some("Size:"), Some(v)) => size = v.parse().unwrap_or(0),
            (Some("Rss:"), Some(v)) => {
                let rss: u64 = v.parse().unwrap_or(0);
                total += rss;
                if size == guest_kib {
                    guest += rss;
                }
            }
            _ => {}
        }
    }
    (total - guest) as f64
}

/// Timing samples of one benchmark measure.
pub struct Samples {
    pub name: String,
    pub unit: &'static str,
    pub values: Vec<f64>,
}

impl Samples {
    pub fn new(name: &str, unit: &'static str) -> Self {
        Samples {
            name: name.to_string(),
            unit,
            values: Vec::new(),
        }
    }

    pub fn sorted(&self) -> Vec<f64> {
        let mut s = self.values.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    /// The `p`-th percentile (nearest rank); 0 is the minimum, 100 the maximum.
    pub fn percentile(&self, p: f64) -> f64 {
        let s = self.sorted();
        // Float-to-int `as` saturates (a negative rank becomes 0); the clamp
        // below keeps the rank within the samples.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    }
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A benchmark's flags: `--short`, `--demo`, `--json PATH`.
pub struct BenchArgs {
    pub short: bool,
    pub demo: bool,
    pub json_path: PathBuf,
}

impl BenchArgs {
    /// Parses the process arguments; the JSON goes to `target/bench/<name>.json` by default.
    pub fn parse(name: &str) -> Self {
        let args: Vec<String> = std::env::args().collect();
        let json_path = args
            .iter()
            .position(|a| a == "--json")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench/{name}.json"))
            });
        BenchArgs {
            short: args.iter().any(|a| a == "--short"),
            demo: args.iter().any(|a| a == "--demo"),
            json_path,
        }
    }

    pub fn write_report(&self, report: &serde_json::Value) {
        if let Some(parent) = self.json_path.parent() {
            std::fs::create_dir_all(parent).expect("create the JSON directory");
        }
        let text = serde_json::to_string_pretty(report).expect("encode the report");
        std::fs::write(&self.json_path, text).expect("write the JSON report");
        println!("JSON: {}", self.json_path.display());
    }
}

/// `ember-snapshot`, built beside `ember` by `cargo test --workspace` / `cargo build --workspace`.
pub fn ember_snapshot_bin() -> PathBuf {
    let path = Path::new(EMBER).with_file_name("ember-snapshot");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo build --release --workspace)",
        path.display()
    );
    path
}

/// A running `ember-snapshot handler`, killed when dropped.
pub struct UffdHandler {
    child: Child,
    pub socket: PathBuf,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl UffdHandler {
    /// Serves `mem_file` on `socket`, with an optional working-set file.
    pub fn start(socket: &Path, mem_file: &Path, working_set: Option<&Path>) -> Self {
        let mut command = Command::new(ember_snapshot_bin());
        command
            .arg("handler")
            .arg("--socket")
            .arg(socket)
            .arg("--mem-file")
            .arg(mem_file);
        if let Some(set) = working_set {
            command.arg("--working-set").arg(set);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ember-snapshot handler");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let handler = UffdHandler {
            child,
            socket: socket.to_path_buf(),
            lines,
        };
        handler.expect_line("listening on", Duration::from_secs(10));
        handler
    }

    /// Waits for an output line starting with `prefix`.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "the handler printed no line starting with {prefix:?}; it printed:\n{}",
                lines.join("\n")
            );
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The numbers in a `vm N: prefetched P pages, served F faults (Z zero)` line.
    pub fn vm_stats(&self, vm: usize) -> (u64, u64) {
        let line = self.expect_line(&format!("vm {vm}: prefetched"), Duration::from_secs(10));
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        (numbers[1], numbers[2])
    }
}

impl Drop for UffdHandler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints one row per measure (runs, min, p50, p99, max) and returns them as JSON.
pub fn print_table(all: &[&Samples]) -> Vec<serde_json::Value> {
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10} {:>10}  unit",
        "measure", "runs", "min", "p50", "p99", "max"
    );
    all.iter()
        .map(|s| {
            let sorted = s.sorted();
            let (min, p50, p99, max) = (
                sorted[0],
                s.percentile(50.0),
                s.percentile(99.0),
                sorted[sorted.len() - 1],
            );
            println!(
                "{:<44} {:>6} {min:>10.0} {p50:>10.0} {p99:>10.0} {max:>10.0}  {}",
                s.name,
                sorted.len(),
                s.unit
            );
            serde_json::json!({"name": s.name, "unit": s.unit, "runs": sorted.len(),
                "min": min, "p50": p50, "p99": p99, "max": max, "samples": sorted})
        })
        .collect()
}

/// The uid and gid jailed embers run as in the tests and benchmarks.
pub const JAIL_UID: u32 = 123;
pub const JAIL_GID: u32 = 100;

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "the jail tests must run as root (CI does)");
}

pub fn jailer_bin() -> PathBuf {
    Path::new(EMBER).with_file_name("ember-jailer")
}

/// The statically linked ember the jail needs (nothing else is in the chroot).
pub fn static_ember() -> PathBuf {
    let path = Path::new(EMBER)
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("x86_64-unknown-linux-gnu/release/ember"))
        .expect("target directory");
    assert!(
        path.exists(),
        "{} is missing: `make build` builds it (RUSTFLAGS=\"-C target-feature=+crt-static\" \
         cargo build --release --target x86_64-unknown-linux-gnu --bin ember)",
        path.display()
    );
    path
}

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
        args.extend(ember_args.iter().map(|a| a.to_string()));
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
        let root = base.0.join("ember").join(id).join("root");
        std::fs::create_dir_all(&root).expect("create the jail's root");
        prepare(&root);
        let cgroup_parent = format!("ember-test-{}", std::process::id());
        // A v1 `pids` limit unless the caller chose its cgroups.
        let mut extra = extra.to_vec();
        if !extra.contains(&"--cgroup") {
            extra.extend(["--cgroup", "pids.max=100"]);
        }
        let args = Jail::jailer_args(id, &base.0, &cgroup_parent, &extra, ember_args);
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
        self.base.0.join("ember").join(&self.id).join("root")
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
