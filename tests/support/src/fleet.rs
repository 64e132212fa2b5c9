//! A fleet of function microVMs, driven as a FaaS host drives them: many VMM
//! processes started from a boot or from one snapshot at a chosen
//! concurrency, kept running, each invoked once over its vsock socket, then
//! torn down. Every stage is timed per VM, and the VMMs run in a cgroup of
//! their own so that the CPU they spend (user and kernel, however short each
//! process's life) is read from its `cpu.stat`.
//!
//! It speaks only Firecracker's API (plus the hybrid vsock socket), so it
//! drives ember and Firecracker alike. Each VM lives in a directory of its
//! own, its working directory, so the relative socket paths a snapshot holds
//! (`v.sock`) land there.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::KeepAlive;

/// How long any one step may take before the fleet gives up on a VM.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The echo function's vsock port and guest CID.
const FUNCTION_PORT: u32 = 1024;
const GUEST_CID: u32 = 3;

/// Which VMM runs the fleet.
#[derive(Clone, Debug)]
pub enum Vmm {
    Ember(PathBuf),
    Firecracker(PathBuf),
}

impl Vmm {
    pub fn name(&self) -> &'static str {
        match self {
            Vmm::Ember(_) => "ember",
            Vmm::Firecracker(_) => "firecracker",
        }
    }

    fn program(&self) -> &Path {
        match self {
            Vmm::Ember(path) | Vmm::Firecracker(path) => path,
        }
    }

    /// The VMM run in `dir` with `args`, its console and log discarded.
    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(self.program());
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }
}

/// How each VM comes up.
#[derive(Clone, Debug)]
pub enum Start {
    /// Configured through the API and booted.
    Boot { kernel: PathBuf, mem_mib: u32 },
    /// Loaded from one snapshot (File backend), resumed.
    Snapshot { state: PathBuf, mem: PathBuf },
}

impl Start {
    pub fn name(&self) -> &'static str {
        match self {
            Start::Boot { .. } => "boot",
            Start::Snapshot { .. } => "snapshot",
        }
    }
}

/// A cgroup (v2) the fleet's VMMs run in, removed when dropped.
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// A new cgroup under the host's cgroup2 hierarchy.
    pub fn new(name: &str) -> Cgroup {
        let mounts = fs::read_to_string("/proc/self/mounts").expect("read /proc/self/mounts");
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.get(2) == Some(&"cgroup2"))
            .and_then(|f| f.get(1).map(PathBuf::from))
            .expect("a cgroup2 hierarchy: the fleet accounts its CPU there (run as root)");
        let path = root.join(format!("{name}-{}", std::process::id()));
        fs::create_dir_all(&path).expect("create the fleet's cgroup (run as root)");
        Cgroup { path }
    }

    /// CPU time its processes have used so far, in microseconds.
    pub fn cpu_usec(&self) -> u64 {
        fs::read_to_string(self.path.join("cpu.stat"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Processes still in it.
    pub fn processes(&self) -> usize {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn procs_file(&self) -> std::ffi::CString {
        let path = self.path.join("cgroup.procs");
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path without NUL")
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + STEP_TIMEOUT;
        while fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One VM of the fleet.
pub struct FleetVm {
    pub child: Child,
    pub dir: PathBuf,
}

impl FleetVm {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// When each stage of one VM's start ended: the API from its spawn, the
/// load's 204 and the first answer from the spawn, or, for a VM taken from a
/// pool, from the load request.
#[derive(Clone, Copy, Debug, Default)]
pub struct StartTimes {
    pub api_ready: Duration,
    pub loaded: Duration,
    pub answered: Duration,
}

/// What a start phase did: the VMs, their stage times, its wall-clock time
/// and the CPU the VMMs spent in it (for a pool, from the first load on;
/// filling the pool is `pool_cpu_usec`).
pub struct Started {
    pub vms: Vec<FleetVm>,
    pub times: Vec<StartTimes>,
    pub wall: Duration,
    pub cpu_usec: u64,
    pub pool_cpu_usec: u64,
}

/// A fleet to start: which VMM, how, how many, how many at once, and where
/// the VMs' directories go (tmpfs spares the sockets' inode allocation).
/// With `pool`, every process is started and left idle first, as a platform
/// keeps a pool of them, and only then are they loaded.
pub struct Fleet<'a> {
    pub vmm: &'a Vmm,
    pub start: &'a Start,
    pub count: usize,
    pub concurrency: usize,
    pub base: &'a Path,
    pub cgroup: &'a Cgroup,
    pub pool: bool,
}

/// `f` over `0..count`, `concurrency` at a time; the first error stops it.
fn parallel<T: Send>(
    count: usize,
    concurrency: usize,
    f: impl Fn(usize) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count || failure.lock().is_ok_and(|f| f.is_some()) {
                    return;
                }
                match f(index) {
                    Ok(value) => {
                        if let Ok(mut all) = results.lock() {
                            all.push((index, value));
                        }
                    }
                    Err(e) => {
                        if let Ok(mut first) = failure.lock() {
                            first.get_or_insert(format!("VM {index}: {e}"));
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_default() {
        return Err(e);
    }
    let mut all = results.into_inner().unwrap_or_default();
    all.sort_by_key(|(index, _)| *index);
    Ok(all.into_iter().map(|(_, value)| value).collect())
}

impl Fleet<'_> {
    /// Starts every VM and has each answer one invocation.
    pub fn start(&self) -> Result<Started, String> {
        let cpu_before = self.cgroup.cpu_usec();
        let begin = Instant::now();
        if !self.pool {
            let started = parallel(self.count, self.concurrency, |i| {
                let (vm, spawned, api_ready) = self.spawn(i)?;
                let (loaded, answered) = self.bring_up(&vm, spawned)?;
                Ok((
                    vm,
                    StartTimes {
                        api_ready,
                        loaded,
                        answered,
                    },
                ))
            })?;
            let (vms, times) = started.into_iter().unzip();
            return Ok(Started {
                vms,
                times,
                wall: begin.elapsed(),
                cpu_usec: self.cgroup.cpu_usec().saturating_sub(cpu_before),
                pool_cpu_usec: 0,
            });
        }
        let pool = parallel(self.count, self.concurrency, |i| self.spawn(i))?;
        let pool_cpu_usec = self.cgroup.cpu_usec().saturating_sub(cpu_before);
        let cpu_before = self.cgroup.cpu_usec();
        let begin = Instant::now();
        let up = parallel(self.count, self.concurrency, |i| {
            let (vm, _, _) = &pool[i];
            self.bring_up(vm, Instant::now())
        })?;
        let wall = begin.elapsed();
        let cpu_usec = self.cgroup.cpu_usec().saturating_sub(cpu_before);
        let (vms, times) = pool
            .into_iter()
            .zip(up)
            .map(|((vm, _, api_ready), (loaded, answered))| {
                (
                    vm,
                    StartTimes {
                        api_ready,
                        loaded,
                        answered,
                    },
                )
            })
            .unzip();
        Ok(Started {
            vms,
            times,
            wall,
            cpu_usec,
            pool_cpu_usec,
        })
    }

    /// Starts VM `index`'s process in the fleet's cgroup and waits for its
    /// API: the VM, when it was spawned and how long its API took.
    fn spawn(&self, index: usize) -> Result<(FleetVm, Instant, Duration), String> {
        let dir = self.base.join(format!("vm{index}"));
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let socket = dir.join("api.sock");
        let procs = self.cgroup.procs_file();
        let mut command = self.vmm.command(&dir, &["--api-sock", "api.sock"]);
        // SAFETY: between fork and exec the child only opens, writes and
        // closes a file through async-signal-safe libc calls.
        unsafe {
            command.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written == 1 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let spawned = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.vmm.program().display()))?;
        let vm = FleetVm { child, dir };
        let api_ready = wait_for_socket(&socket, spawned)?;
        Ok((vm, spawned, api_ready))
    }

    /// Boots or loads `vm` and has it answer once: when each ended, from `since`.
    fn bring_up(&self, vm: &FleetVm, since: Instant) -> Result<(Duration, Duration), String> {
        // One connection for all of a VM's requests, read by Content-Length
        // (Firecracker keeps a connection open whatever it was asked).
        let mut client = KeepAlive::connect(&vm.dir.join("api.sock"));
        let mut api = |method: &str, path: &str, body: Value| {
            let (status, answer) = client.request(method, path, body.to_string().as_bytes());
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!(
                    "{method} {path}: {status} {}",
                    String::from_utf8_lossy(&answer)
                ))
            }
        };
        match self.start {
            Start::Boot { kernel, mem_mib } => {
                for (method, path, body) in boot_requests(kernel, *mem_mib) {
                    api(method, path, body)?;
                }
            }
            Start::Snapshot { state, mem } => {
                api(
                    "PUT",
                    "/snapshot/load",
                    json!({"snapshot_path": state,
                           "mem_backend": {"backend_type": "File", "backend_path": mem},
                           "resume_vm": true}),
                )?;
            }
        }
        let loaded = since.elapsed();
        invoke(&vm.dir.join("v.sock"), b"warm")?;
        Ok((loaded, since.elapsed()))
    }
}

/// What configures and boots the echo function at `kernel` with `mem_mib` MiB
/// and its vsock socket at `v.sock`, as (method, path, body).
fn boot_requests(kernel: &Path, mem_mib: u32) -> [(&'static str, &'static str, Value); 4] {
    [
        (
            "PUT",
            "/boot-source",
            json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}),
        ),
        (
            "PUT",
            "/machine-config",
            json!({"vcpu_count": 1, "mem_size_mib": mem_mib}),
        ),
        (
            "PUT",
            "/vsock",
            json!({"guest_cid": GUEST_CID, "uds_path": "v.sock"}),
        ),
        ("PUT", "/actions", json!({"action_type": "InstanceStart"})),
    ]
}

/// Waits until the API socket takes connections; returns when, from `spawned`.
fn wait_for_socket(socket: &Path, spawned: Instant) -> Result<Duration, String> {
    loop {
        if UnixStream::connect(socket).is_ok() {
            return Ok(spawned.elapsed());
        }
        if spawned.elapsed() > STEP_TIMEOUT {
            return Err(format!(
                "no API at {} after {STEP_TIMEOUT:?}",
                socket.display()
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Calls the echo function over the hybrid vsock socket and checks its
/// answer; a function not listening yet (a boot) is asked again.
pub fn invoke(vsock: &Path, input: &[u8]) -> Result<(), String> {
    let begin = Instant::now();
    loop {
        match invoke_once(vsock, input) {
            Ok(output) if output == input => return Ok(()),
            Ok(output) => return Err(format!("the function answered {output:?}")),
            Err(e) if begin.elapsed() > STEP_TIMEOUT => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_micros(200)),
        }
    }
}

fn invoke_once(vsock: &Path, input: &[u8]) -> Result<Vec<u8>, String> {
    let mut stream = UnixStream::connect(vsock).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("CONNECT {FUNCTION_PORT}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("handshake: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("the function refused: {line:?}"));
    }
    let len = u32::try_from(input.len()).map_err(|e| e.to_string())?;
    let request = [&len.to_le_bytes()[..], input].concat();
    stream
        .write_all(&request)
        .map_err(|e| format!("send: {e}"))?;
    let mut head = [0u8; 5];
    reader
        .read_exact(&mut head)
        .map_err(|e| format!("answer: {e}"))?;
    if head[0] != 0 {
        return Err(format!("the function failed (status {})", head[0]));
    }
    let out_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let mut output = vec![0u8; out_len as usize];
    reader
        .read_exact(&mut output)
        .map_err(|e| format!("answer: {e}"))?;
    Ok(output)
}

/// Boots one echo VM of `mem_mib` MiB with `vmm` in `dir`, invokes it, pauses it and saves a
/// full snapshot there: the image every clone of that VMM loads.
pub fn snapshot(vmm: &Vmm, echo: &Path, mem_mib: u32, dir: &Path) -> Start {
    std::fs::create_dir_all(dir).expect("create the snapshot directory");
    let spawned = Instant::now();
    let mut child = vmm
        .command(dir, &["--api-sock", "api.sock"])
        .spawn()
        .expect("start the snapshot's VM");
    let socket = dir.join("api.sock");
    wait_for_socket(&socket, spawned).unwrap_or_else(|e| panic!("{}: {e}", vmm.name()));
    let mut client = KeepAlive::connect(&socket);
    let mut ok = |method: &str, path: &str, body: Value| {
        let (status, answer) = client.request(method, path, body.to_string().as_bytes());
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    };
    for (method, path, body) in boot_requests(echo, mem_mib) {
        ok(method, path, body);
    }
    invoke(&dir.join("v.sock"), b"warm").expect("the snapshot's VM answers");
    ok("PATCH", "/vm", json!({"state": "Paused"}));
    let (state, mem) = (dir.join("fn.snap"), dir.join("fn.mem"));
    ok(
        "PUT",
        "/snapshot/create",
        json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
    );
    let _ = child.kill();
    let _ = child.wait();
    Start::Snapshot { state, mem }
}

/// What a running fleet costs the host, per VM.
#[derive(Clone, Copy, Debug, Default)]
pub struct Footprint {
    /// Proportional set size (private pages, shares of shared ones), KiB.
    pub pss_kib: f64,
    pub threads: f64,
    pub fds: f64,
}

/// The fleet's footprint, averaged over its VMs.
pub fn footprint(vms: &[FleetVm]) -> Footprint {
    let mut total = Footprint::default();
    for vm in vms {
        let proc = PathBuf::from(format!("/proc/{}", vm.pid()));
        let field = |file: &str, key: &str| -> f64 {
            fs::read_to_string(proc.join(file))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
                })
                .unwrap_or(0.0)
        };
        total.pss_kib += field("smaps_rollup", "Pss:");
        total.threads += field("status", "Threads:");
        total.fds += fs::read_dir(proc.join("fd")).map_or(0, |d| d.count()) as f64;
    }
    let n = vms.len().max(1) as f64;
    Footprint {
        pss_kib: total.pss_kib / n,
        threads: total.threads / n,
        fds: total.fds / n,
    }
}

/// The host's MemAvailable, KiB.
pub fn mem_available_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemAvailable:")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
        })
        .unwrap_or(0)
}

/// What tearing a fleet down took: per VM, the time from the signal to the
/// process being reaped; in all, the wall-clock time and the VMMs' CPU.
pub struct Stopped {
    pub exits: Vec<Duration>,
    pub wall: Duration,
    pub cpu_usec: u64,
}

/// Sends every VM `signal` (`concurrency` at a time) and reaps it.
pub fn stop(
    vms: Vec<FleetVm>,
    signal: libc::c_int,
    concurrency: usize,
    cgroup: &Cgroup,
) -> Stopped {
    let cpu_before = cgroup.cpu_usec();
    let begin = Instant::now();
    let queue = Mutex::new(vms);
    let exits = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..concurrency.max(1) {
            scope.spawn(|| loop {
                let Some(mut vm) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    return;
                };
                let sent = Instant::now();
                if let Ok(pid) = i32::try_from(vm.pid()) {
                    // SAFETY: signals our own child, not reaped yet.
                    unsafe { libc::kill(pid, signal) };
                }
                let _ = vm.child.wait();
                if let Ok(mut all) = exits.lock() {
                    all.push(sent.elapsed());
                }
            });
        }
    });
    Stopped {
        exits: exits.into_inner().unwrap_or_default(),
        wall: begin.elapsed(),
        cpu_usec: cgroup.cpu_usec().saturating_sub(cpu_before),
    }
}
