//! A guest cannot hurt ember: the test guest attacks the VMM from inside the
//! VM (`ember.attack=<mode>`, resources/unikernel/README.md), and these tests
//! check from outside that, during every attack, each API request answers,
//! Pause, Resume and a snapshot still work, and afterwards ember's memory and
//! log have grown only a little, it uses no CPU once the guest is quiet, and
//! the guest's function answers an invocation.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ember_test_support::{
    artifact, cpu_ticks_over, require_kvm, rss_besides_guest_kib, try_http, Ember, NetNs, TempDir,
};

/// The attacks run one at a time: they measure ember's CPU and memory.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const GUEST_MIB: u64 = 128;
/// Growth allowed over an attack (the issue's targets).
const MAX_RSS_GROWTH_KIB: f64 = 8.0 * 1024.0;
const MAX_LOG_GROWTH: u64 = 64 * 1024;
/// A request that takes this long means a frozen thread, not a slow one.
const FROZEN: Duration = Duration::from_secs(3);
/// How long an attack may take, from boot to its `done` line.
const ATTACK_TIME: Duration = Duration::from_secs(120);

/// What the attacked VM has besides the test guest.
#[derive(Clone, Copy)]
struct Devices {
    drive: bool,
    vsock: bool,
    /// A net device on a TAP in a namespace of the test's own.
    net: bool,
    /// An entropy device.
    entropy: bool,
    /// A balloon with every queue: statistics and free page reporting.
    balloon: bool,
}

const DRIVE: Devices = Devices {
    drive: true,
    vsock: false,
    net: false,
    entropy: false,
    balloon: false,
};
const VSOCK: Devices = Devices {
    drive: false,
    vsock: true,
    net: false,
    entropy: false,
    balloon: false,
};
/// Every kind of device the generic attacks can take on without a host side.
const BOTH: Devices = Devices {
    drive: true,
    vsock: true,
    net: false,
    entropy: true,
    balloon: true,
};
const NET: Devices = Devices {
    drive: false,
    vsock: true,
    net: true,
    entropy: false,
    balloon: false,
};
/// The addresses of the attacked VM's link, host side and guest side.
const TAP_HOST: &str = "10.0.0.1";
const TAP_GUEST: &str = "10.0.0.2";
const GUEST_MAC: &str = "06:00:0a:00:00:02";

/// An ember whose guest runs one attack.
struct Attacked {
    mode: &'static str,
    dir: TempDir,
    ember: Ember,
    log: PathBuf,
    rss_before: f64,
    log_before: u64,
    monitor: Option<Monitor>,
    /// Dropped last, after ember has let go of its TAP.
    ns: Option<NetNs>,
}

impl Attacked {
    /// Boots the test guest with `ember.attack=<mode>`; with `drained` false
    /// nobody reads ember's stdout until `drain_console`.
    fn boot(mode: &'static str, devices: Devices, drained: bool) -> Attacked {
        let mut vm = Attacked::prepare(mode, devices, drained);
        vm.start();
        vm
    }

    /// Configures the VM, short of starting it.
    fn prepare(mode: &'static str, devices: Devices, drained: bool) -> Attacked {
        require_kvm();
        let dir = TempDir::new(&format!("hostile-{mode}"));
        let socket = dir.path("api.sock");
        let log = dir.path("ember.log");
        std::fs::write(&log, b"").unwrap();
        let mut args = vec![
            "--api-sock",
            socket.to_str().unwrap(),
            "--log-path",
            log.to_str().unwrap(),
            "--level",
            "Debug",
        ];
        // The attacks on PCI need the devices there.
        if mode.starts_with("pci-") {
            args.push("--enable-pci");
        }
        let ns = devices.net.then(|| {
            let ns = NetNs::new(&format!("hostile-{mode}"));
            ns.add_tap("tap0", &format!("{TAP_HOST}/24"), 1500);
            ns
        });
        let ember = match &ns {
            Some(ns) => ns.spawn_ember(&args, Some(&socket)),
            None => {
                let mut ember = Ember::spawn_undrained(&args, Some(&socket));
                if drained {
                    ember.drain_console();
                }
                ember
            }
        };
        ember.put_boot_source(
            &artifact("test-elf"),
            &format!("console=ttyS0 ember.attack={mode}"),
        );
        if devices.drive {
            let disk = dir.disk("disk.img", 2048, b"hostile");
            ember.ok(
                "PUT",
                "/drives/disk",
                &serde_json::json!({"drive_id": "disk", "path_on_host": disk,
                    "is_root_device": false, "is_read_only": false})
                .to_string(),
            );
        }
        if devices.net {
            ember.ok(
                "PUT",
                "/network-interfaces/eth0",
                &serde_json::json!({"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": GUEST_MAC})
                    .to_string(),
            );
        }
        if devices.entropy {
            ember.ok("PUT", "/entropy", "{}");
        }
        if devices.balloon {
            ember.ok(
                "PUT",
                "/balloon",
                r#"{"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 1, "free_page_reporting": true}"#,
            );
        }
        if devices.vsock {
            ember.ok(
                "PUT",
                "/vsock",
                &serde_json::json!({"guest_cid": 3, "uds_path": dir.path("v.sock")}).to_string(),
            );
        }
        Attacked {
            mode,
            dir,
            ember,
            log,
            rss_before: 0.0,
            log_before: 0,
            monitor: None,
            ns,
        }
    }

    /// Starts the VM and the API monitor.
    fn start(&mut self) {
        self.rss_before = rss_besides_guest_kib(self.ember.pid(), GUEST_MIB * 1024);
        self.log_before = file_len(&self.log);
        self.ember
            .ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
        self.monitor = Some(Monitor::start(self.dir.path("api.sock")));
    }

    /// Waits for the guest's `attack: <mode> ... done` line.
    fn expect_done(&self) -> String {
        let prefix = format!("attack: {} ", self.mode);
        match self.ember.wait_line(ATTACK_TIME, |l| {
            l.starts_with(&prefix) && l.split_whitespace().any(|w| w == "done")
        }) {
            Some((_, line)) => line,
            None => panic!(
                "{}: the attack never finished\nconsole:\n{}\nstderr:\n{}\nlog:\n{}",
                self.mode,
                self.ember.console().join("\n"),
                self.ember.stderr(),
                tail(&self.log)
            ),
        }
    }

    fn uds(&self) -> PathBuf {
        self.dir.path("v.sock")
    }

    /// Waits for the guest's `attack: <mode> <what>` line.
    fn expect(&self, what: &str) -> String {
        self.ember
            .expect_line(&format!("attack: {} {what}", self.mode), ATTACK_TIME)
    }

    /// Pauses the VM, snapshots it and resumes it, each request answering.
    fn pause_snapshot_resume(&self) {
        let snapshot = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": self.dir.path("vm.snap"),
            "mem_file_path": self.dir.path("vm.mem"),
        });
        for (method, path, body) in [
            ("PATCH", "/vm", r#"{"state": "Paused"}"#.to_string()),
            ("PUT", "/snapshot/create", snapshot.to_string()),
            ("PATCH", "/vm", r#"{"state": "Resumed"}"#.to_string()),
        ] {
            let socket = self.ember.socket.as_deref().unwrap();
            match try_http(socket, method, path, body.as_bytes(), FROZEN * 10) {
                Ok((204, _)) => {}
                other => panic!(
                    "{} attack: {method} {path} -> {other:?}\nstderr:\n{}",
                    self.mode,
                    self.ember.stderr()
                ),
            }
        }
    }

    /// After the attack: every request answered, bounded growth, no CPU
    /// while the guest is quiet.
    fn check_after(&mut self) {
        let latencies = self.monitor.take().map(Monitor::stop).unwrap_or_default();
        let pid = self.ember.pid();
        let rss_growth = rss_besides_guest_kib(pid, GUEST_MIB * 1024) - self.rss_before;
        let log_growth = file_len(&self.log) - self.log_before;
        let cpu = cpu_ticks_over(pid, Duration::from_secs(1));
        let p = |q: f64| {
            let mut sorted = latencies.clone();
            sorted.sort();
            // Float-to-int `as` saturates; `get` below copes with any index.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted.get(at).copied().unwrap_or_default()
        };
        eprintln!(
            "{}: {} API requests during the attack, p50 {:?} p99 {:?} max {:?}; RSS +{rss_growth:.0} KiB, log +{log_growth} B, CPU afterwards {cpu} ticks/s",
            self.mode,
            latencies.len(),
            p(0.5),
            p(0.99),
            p(1.0),
        );
        assert!(!latencies.is_empty(), "no API request got through");
        assert!(
            rss_growth <= MAX_RSS_GROWTH_KIB,
            "{}: ember's RSS grew by {rss_growth} KiB",
            self.mode
        );
        assert!(
            log_growth <= MAX_LOG_GROWTH,
            "{}: the log grew by {log_growth} bytes:\n{}",
            self.mode,
            tail(&self.log)
        );
        assert!(
            cpu <= 5,
            "{}: ember still uses CPU after the attack: {cpu} ticks in 1 s",
            self.mode
        );
    }

    /// The guest's function (its calm phase) answers an invocation.
    fn invoke_echo(&self) {
        let socket = self.ember.socket.as_deref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = try_http(socket, "POST", "/invocations", b"still alive", FROZEN * 5);
            match answer {
                Ok((200, body)) if body == "still alive" => return,
                other if Instant::now() > deadline => panic!(
                    "{}: the function never answered after the attack: {other:?}\nconsole:\n{}\nstderr:\n{}",
                    self.mode,
                    self.ember.console().join("\n"),
                    self.ember.stderr()
                ),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// Sends `GET /` every few milliseconds and records how long each took; any
/// request that fails or takes `FROZEN` fails the test.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<Duration>, String>>,
}

impl Monitor {
    fn start(socket: PathBuf) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut latencies = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let start = Instant::now();
                match try_http(&socket, "GET", "/", b"", FROZEN) {
                    Ok((200, _)) => latencies.push(start.elapsed()),
                    other => return Err(format!("GET / -> {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(latencies)
        });
        Monitor { stop, thread }
    }

    fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join().expect("monitor thread") {
            Ok(latencies) => latencies,
            Err(e) => panic!("the API stopped answering during the attack: {e}"),
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Connects to the guest's port 1024 through the hybrid vsock socket.
fn connect_guest(uds: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(uds).expect("connect to the vsock socket");
    stream.write_all(b"CONNECT 1024\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        assert_eq!(stream.read(&mut byte).unwrap(), 1, "no OK from the guest");
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"OK "),
        "{:?}",
        String::from_utf8_lossy(&line)
    );
    stream
}

/// Runs an attack that needs nothing from the host but watching.
fn simple_attack(mode: &'static str, devices: Devices) -> Attacked {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::boot(mode, devices, true);
    vm.expect("start");
    vm.pause_snapshot_resume();
    vm.expect_done();
    vm.check_after();
    if devices.vsock {
        vm.invoke_echo();
    }
    vm
}

#[test]
fn register_garbage() {
    simple_attack("register-garbage", BOTH);
}

#[test]
fn status_games_cannot_reprogram_a_live_device() {
    let vm = simple_attack("status-games", DRIVE);
    vm.expect("first read status=0");
    // The device kept serving the rings it was activated with.
    vm.expect("completed during games=100/100");
    vm.expect("read after reset status=0");
}

#[test]
fn bad_avail_index() {
    simple_attack("bad-avail-idx", DRIVE);
}

#[test]
fn looping_descriptor_chains() {
    let vm = simple_attack("looping-chain", DRIVE);
    vm.expect("valid read status=0");
}

#[test]
fn a_ring_refilled_forever_still_lets_the_api_through() {
    simple_attack("ring-refill", DRIVE);
}

#[test]
fn notify_storm() {
    simple_attack("notify-storm", BOTH);
}

/// virtio-pci, four functions: configuration space writes of every width and offset (BAR
/// sizing and moves, MSI-X control), MSI-X tables with bad addresses and
/// flipping masks, every BAR filled with garbage, then a notification storm.
#[test]
fn pci_garbage() {
    let vm = simple_attack("pci-garbage", BOTH);
    vm.expect("done functions=4");
}

#[test]
fn a_console_nobody_reads_never_blocks_the_vcpu() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::boot("serial-flood", VSOCK, false);
    // The guest writes 256 KiB; a pipe holds 64 KiB. Once ember says it drops
    // output, the pipe is full: pausing then waits for the vCPU, which a
    // blocking console write would hold for good.
    let dropped = |vm: &Attacked| {
        std::fs::read_to_string(&vm.log)
            .unwrap_or_default()
            .contains("serial console: output is not being read")
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dropped(&vm) {
        assert!(
            Instant::now() < deadline,
            "ember did not say it dropped console output"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    vm.pause_snapshot_resume();
    vm.ember.drain_console();
    // The function answers once the flood is over (whatever of its last
    // lines the full pipe dropped).
    vm.invoke_echo();
    vm.check_after();
}

#[test]
fn header_only_rx_buffers() {
    rx_attack("rx-header-only");
}

#[test]
fn rx_buffers_outside_guest_memory() {
    rx_attack("rx-outside-ram");
}

/// The guest accepts a host connection, then posts rx buffers that cannot
/// take the data the host sends.
fn rx_attack(mode: &'static str) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::boot(mode, VSOCK, true);
    vm.expect("listening");
    let mut host = connect_guest(&vm.uds());
    vm.expect("connected");
    host.write_all(&[0x5a; 64 * 1024]).unwrap();
    vm.pause_snapshot_resume();
    vm.expect_done();
    vm.check_after();
    vm.invoke_echo();
}

/// Sends UDP datagrams to the guest's address until told to stop: frames
/// the guest's hostile receive buffers can never take.
fn flood_tap(ns: &NetNs, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let socket = ns.within(|| {
        let status = std::process::Command::new("ip")
            .args([
                "neigh", "replace", TAP_GUEST, "lladdr", GUEST_MAC, "dev", "tap0",
            ])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip neigh replace");
        std::net::UdpSocket::bind(format!("{TAP_HOST}:0")).expect("a UDP socket")
    });
    std::thread::spawn(move || {
        let payload = [0x66u8; 1400];
        let mut sent = 0;
        while !stop.load(Ordering::Relaxed) {
            if socket.send_to(&payload, format!("{TAP_GUEST}:9")).is_ok() {
                sent += 1;
            }
        }
        sent
    })
}

#[test]
fn net_garbage_frames_and_buffers_under_a_tap_flood() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::boot("net-garbage", NET, true);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = flood_tap(vm.ns.as_ref().expect("a namespace"), stop.clone());
    vm.expect("start");
    vm.pause_snapshot_resume();
    let done = vm.expect_done();
    stop.store(true, Ordering::Relaxed);
    let datagrams = flood.join().expect("the flooder");
    eprintln!("{done}; {datagrams} datagrams flooded the TAP");
    assert!(
        done.contains("tx=20000"),
        "every tx chain came back: {done}"
    );
    vm.check_after();
    vm.invoke_echo();
}

#[test]
fn a_device_reset_ends_the_guests_connections() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::boot("vsock-reset", VSOCK, true);
    vm.expect("listening");
    let mut host = connect_guest(&vm.uds());
    vm.expect("connected");
    vm.expect_done();
    // The guest reset its device: its connections are gone, so ember closes
    // the host's end instead of keeping it (and its fd) for ever.
    let mut byte = [0u8; 1];
    match host.read(&mut byte) {
        Ok(0) => {}
        other => panic!("the host connection outlived the device reset: {other:?}"),
    }
    vm.check_after();
    vm.invoke_echo();
}

#[test]
fn a_guest_connecting_to_a_full_backlog_does_not_block_ember() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::prepare("vsock-connect-flood", VSOCK, true);
    // A host service that never accepts, its backlog full.
    let mut path = vm.uds().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).unwrap();
    // SAFETY: listen on our own socket only changes its backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let _waiting = fill_backlog(Path::new(&path));
    vm.start();
    vm.expect("start");
    vm.pause_snapshot_resume();
    vm.expect_done();
    vm.check_after();
    vm.invoke_echo();
}

/// Connects to `path` without blocking until its backlog refuses more.
fn fill_backlog(path: &Path) -> Vec<UnixStream> {
    let mut queued = Vec::new();
    loop {
        // SAFETY: socket takes no pointers; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(fd >= 0);
        // SAFETY: a fresh socket that this stream now owns.
        let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: an all-zero sockaddr_un is valid; the path fits (asserted).
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).expect("AF_UNIX is 1");
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        assert!(bytes.len() < addr.sun_path.len());
        for (d, &b) in addr.sun_path.iter_mut().zip(bytes) {
            *d = libc::c_char::from_ne_bytes([b]);
        }
        let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + bytes.len())
            .expect("asserted shorter than sun_path");
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) };
        if rc < 0 {
            return queued;
        }
        queued.push(stream);
        assert!(queued.len() < 64, "the backlog never filled");
    }
}

#[test]
fn connections_a_silent_guest_leaves_behind_are_reclaimed() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut vm = Attacked::prepare("vsock-silent", VSOCK, true);
    // A host service that accepts each guest connection and hangs up at once,
    // so ember sends SHUTDOWN and waits for an RST that never comes.
    let mut path = vm.uds().into_os_string();
    path.push("_5001");
    let service = UnixListener::bind(&path).unwrap();
    service.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let closer = std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match service.accept() {
                Ok((stream, _)) => drop(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    vm.start();
    vm.expect("listening");
    // Host connections whose REQUEST the guest never answers.
    let ignored: Vec<UnixStream> = (0..1000)
        .map(|_| {
            let mut s = UnixStream::connect(vm.uds()).unwrap();
            s.write_all(b"CONNECT 1024\n").unwrap();
            s
        })
        .collect();
    vm.pause_snapshot_resume();
    vm.expect_done();
    // Past the deadlines, every one of them is gone on ember's side...
    std::thread::sleep(Duration::from_secs(3));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", vm.ember.pid()))
        .unwrap()
        .count();
    assert!(fds < 200, "ember still holds {fds} descriptors");
    for mut s in ignored {
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut byte = [0u8; 1];
        assert!(
            matches!(s.read(&mut byte), Ok(0)),
            "a dead connection lives on"
        );
    }
    // ... and a new connection gets through.
    vm.check_after();
    vm.invoke_echo();
    stop.store(true, Ordering::Relaxed);
    closer.join().unwrap();
}

/// While the VM is paused nothing changes its memory: two snapshots taken
/// a while apart are identical even though the host sent console input and
/// vsock data in between, which reach the guest once it resumes.
#[test]
fn a_paused_vm_is_frozen_devices_included() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("hostile-paused");
    let mut ember = Ember::function_via_api(
        &dir,
        &artifact("unikernel-echo"),
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": GUEST_MIB}),
    );
    ember.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let before = memory_snapshot(&ember, &dir, "a");
    let mut host = UnixStream::connect(dir.path("v.sock")).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    ember.write_stdin(b"typed while paused\n");
    std::thread::sleep(Duration::from_millis(500));
    let after = memory_snapshot(&ember, &dir, "b");
    assert!(
        before == after,
        "guest memory changed while the VM was paused"
    );
    ember.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut ok = [0u8; 3];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(
        &ok, b"OK ",
        "the connection made while paused is served after"
    );
}

/// A Full snapshot's memory file.
fn memory_snapshot(ember: &Ember, dir: &TempDir, name: &str) -> Vec<u8> {
    ember.ok(
        "PUT",
        "/snapshot/create",
        &serde_json::json!({"snapshot_type": "Full",
            "snapshot_path": dir.path(&format!("{name}.snap")),
            "mem_file_path": dir.path(&format!("{name}.mem"))})
        .to_string(),
    );
    std::fs::read(dir.path(&format!("{name}.mem"))).unwrap()
}
