//! ember under `ember-jailer`, checked from outside as an operator would:
//! its credentials, root, cgroups, namespaces, limits, capabilities and
//! seccomp, and that the jailed VMM still boots, invokes and restores.
//! Also ember's seccomp on its own: every thread filtered, violations fatal.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ember_test_support::jail::JAIL_UID;
use ember_test_support::{
    artifact, http, http_bytes, require_kvm, send_and_hang_up, Ember, Jail, NetNs, TempDir,
    UffdHandler,
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(20);

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in status"))
        .trim()
}

fn namespace(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("namespace link")
}

/// Boots the echo function in `jail` and checks it answers.
fn boot_function(jail: &Jail) {
    let kernel = jail.provide(&artifact("unikernel-echo"), "echo.elf");
    jail.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"}).to_string(),
    );
    jail.ok(
        "PUT",
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/run/v.sock"}"#,
    );
    jail.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = http_bytes(&jail.socket(), "POST", "/invocations", b"jailed");
        if status == 200 {
            assert_eq!(body, b"jailed");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the jailed function never answered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Boots the echo function in `jail`, pauses it and snapshots it to
/// `/fn.snap` and `/fn.mem` in the jail.
fn snapshot_function(jail: &Jail) {
    boot_function(jail);
    jail.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    jail.ok(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path": "/fn.snap", "mem_file_path": "/fn.mem"}"#,
    );
}

#[test]
fn jailed_ember_is_confined_and_serves_a_function() {
    // A network namespace of its own, kept alive by a sleeping process.
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .expect("unshare --net");
    std::thread::sleep(Duration::from_millis(50));
    let netns = format!("/proc/{}/ns/net", holder.id());
    let jail = Jail::start(
        "confined-1",
        &["--netns", &netns, "--new-pid-ns", "--daemonize"],
    );
    boot_function(&jail);
    let pid = jail.pid.to_string();

    let status = jail.status(None);
    assert_eq!(field(&status, "Uid"), "123\t123\t123\t123");
    assert_eq!(field(&status, "Gid"), "100\t100\t100\t100");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&status, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(field(&status, "NoNewPrivs"), "1");

    // Its root is the jail: exactly what the jailer and the test put there.
    let seen: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("ember's root")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = ["dev", "ember", "ember.pid", "echo.elf", "run"]
        .map(String::from)
        .into();
    assert_eq!(seen, expected);
    let dev: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(dev.contains("kvm") && dev.contains("userfaultfd") && dev.contains("net"));

    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let cgroup = format!("/{}/confined-1", jail.cgroup_parent);
    assert!(
        cgroups
            .lines()
            .any(|l| l.contains(":pids:") && l.ends_with(&cgroup)),
        "{cgroups}"
    );
    let max = Path::new("/sys/fs/cgroup/pids")
        .join(&jail.cgroup_parent)
        .join("confined-1/pids.max");
    assert_eq!(std::fs::read_to_string(max).unwrap().trim(), "100");

    for kind in ["mnt", "pid", "net"] {
        assert_ne!(namespace(&pid, kind), namespace("self", kind), "{kind}");
    }
    assert_eq!(namespace(&pid, "net"), std::fs::read_link(&netns).unwrap());

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["1024", "1024"]
    );

    // Every thread runs under a seccomp filter.
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let tid = task.unwrap().file_name().to_string_lossy().into_owned();
        assert_eq!(
            field(&jail.status(Some(&tid)), "Seccomp"),
            "2",
            "task {tid}"
        );
    }
    let _ = holder.kill();
    let _ = holder.wait();
}

/// Under a umask that hides nothing, a jail holding a running VM, its
/// snapshot and its log has nothing another user could read or enter: every
/// directory is 0700 and every file the jailer or ember made is its owner's
/// alone. Not checked: the kernel the test (as a platform would) linked in,
/// and the exec file when the jailer links it, the host's own binary, both
/// world-readable outside as well, behind the 0700 root.
#[test]
fn every_file_a_jail_holds_is_its_users_alone_even_under_a_permissive_umask() {
    use std::os::unix::fs::MetadataExt;
    let jail = Jail::start_under_umask(
        "modes-1",
        &["--new-pid-ns", "--daemonize"],
        &["--log-path", "/run/ember.log"],
        Some(0),
        |_| {},
    );
    snapshot_function(&jail);
    let host_binary = std::fs::metadata(ember_test_support::artifacts::static_ember()).unwrap();
    let root = jail.root();
    let jail_dir = root.parent().unwrap();
    assert_eq!(
        std::fs::metadata(jail_dir).unwrap().mode() & 0o7777,
        0o700,
        "the jail's own directory"
    );
    let mut seen = Vec::new();
    let mut pending = vec![root.clone()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let shown = path.strip_prefix(&root).unwrap().display().to_string();
        seen.push(shown.clone());
        if meta.is_dir() {
            assert_eq!(meta.mode() & 0o7777, 0o700, "/{shown}");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (
                    ember_test_support::jail::JAIL_UID,
                    ember_test_support::jail::JAIL_GID
                ),
                "/{shown}"
            );
            for entry in std::fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
        } else if meta.ino() == host_binary.ino() {
            assert_eq!(shown, "ember");
        } else if shown != "echo.elf" {
            assert_eq!(meta.mode() & 0o077, 0, "/{shown}: {:o}", meta.mode());
        }
    }
    seen.sort();
    for expected in [
        "fn.mem",
        "fn.snap",
        "run/ember.log",
        "run/api.sock",
        "dev/kvm",
        "ember.pid",
    ] {
        assert!(seen.iter().any(|s| s == expected), "{expected} in {seen:?}");
    }
}

/// What an ember that a guest took over would try first, each from its
/// `vmm` thread in a jail (through the self-test flag): run a program,
/// start a process, make memory executable, signal another process. The
/// filter kills it for each, and says which syscall.
#[test]
fn a_jailed_vmm_thread_cannot_exec_fork_map_code_or_signal_others() {
    require_kvm();
    ember_test_support::require_root();
    for (probe, syscall) in [
        ("execve", libc::SYS_execve),
        ("fork", libc::SYS_clone),
        ("mprotect-exec", libc::SYS_mprotect),
        ("signal-other", libc::SYS_tgkill),
    ] {
        let base = TempDir::new("jail-probe");
        let id = format!("probe-{probe}");
        let selftest = format!("vmm:{probe}");
        let args = Jail::jailer_args(
            &id,
            base.as_path(),
            "ember-test-probes",
            &[],
            &["--seccomp-selftest", &selftest],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut ember = Ember::spawn_program(&ember_test_support::jailer_bin(), &args, None);
        expect_sigsys(&mut ember, "vmm", syscall);
    }
    // As PID 1 of its own PID namespace, where a signal's default action is
    // ignored, the violation still ends ember.
    let base = TempDir::new("jail-probe-pidns");
    let args = Jail::jailer_args(
        "probe-pidns",
        base.as_path(),
        "ember-test-probes",
        &["--new-pid-ns"],
        &["--seccomp-selftest", "vmm:execve"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut jailer = Ember::spawn_program(&ember_test_support::jailer_bin(), &args, None);
    assert!(jailer.wait_exit(TIMEOUT).success());
    let pid_file = base.as_path().join("ember/probe-pidns/root/ember.pid");
    let pid = std::fs::read_to_string(pid_file).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "ember (pid {pid}) lives on");
        std::thread::sleep(Duration::from_millis(1));
    }
    let expected = format!(
        "ember: seccomp: a vmm thread made syscall {} outside its allowlist",
        libc::SYS_execve
    );
    assert!(jailer.stderr().contains(&expected), "{}", jailer.stderr());
}

#[test]
fn a_jailed_ember_restores_a_snapshot_served_by_the_uffd_handler() {
    let jail = Jail::start("snap-1", &[]);
    snapshot_function(&jail);

    let restored = Jail::start("snap-2", &[]);
    let snap = restored.provide(&jail.root().join("fn.snap"), "fn.snap");
    // The handler runs outside, as a platform's would, with its socket inside.
    let handler = UffdHandler::start(
        &restored.root().join("run/uffd.sock"),
        &jail.root().join("fn.mem"),
        None,
    );
    std::os::unix::fs::chown(
        &handler.socket,
        Some(ember_test_support::jail::JAIL_UID),
        Some(ember_test_support::jail::JAIL_GID),
    )
    .unwrap();
    restored.ok(
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": snap, "resume_vm": true,
                "mem_backend": {"backend_type": "Uffd", "backend_path": "/run/uffd.sock"},
                "vsock_override": {"uds_path": "/run/v.sock"}})
        .to_string(),
    );
    let (status, body) = http_bytes(&restored.socket(), "POST", "/invocations", b"restored");
    assert_eq!((status, body.as_slice()), (200, &b"restored"[..]));
    drop(restored);
    assert!(
        handler.vm_stats(0).1 > 0,
        "the handler served the jailed VM's faults"
    );
}

/// cgroup v2 for real: this machine's v2 hierarchy offers `hugetlb`.
#[test]
fn a_jailed_ember_lives_in_a_real_cgroup_v2() {
    let jail = Jail::start(
        "v2-1",
        &["--cgroup-version", "2", "--cgroup", "hugetlb.2MB.max=0"],
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", jail.pid)).unwrap();
    let leaf = format!("/{}/v2-1", jail.cgroup_parent);
    assert!(
        cgroups
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&leaf)),
        "{cgroups}"
    );
    let max = Path::new("/sys/fs/cgroup/unified")
        .join(&jail.cgroup_parent)
        .join("v2-1/hugetlb.2MB.max");
    assert_eq!(std::fs::read_to_string(max).unwrap().trim(), "0");
}

/// Firecracker's workflow: the platform puts the VM's files in the jail
/// first; ember boots from a config file there, with a drive, and its
/// console is the jailer's stdio.
#[test]
fn a_jailed_ember_boots_from_a_config_file_in_a_prepared_jail() {
    let mut jail = Jail::start_with("config-1", &[], &["--config-file", "/vm.json"], |root| {
        std::fs::copy(artifact("test-elf"), root.join("guest.elf")).unwrap();
        let mut disk = vec![0u8; 8 * 512];
        disk[..10].copy_from_slice(b"drive data");
        std::fs::write(root.join("data.img"), disk).unwrap();
        std::os::unix::fs::chown(
            root.join("data.img"),
            Some(ember_test_support::jail::JAIL_UID),
            None,
        )
        .unwrap();
        let config = json!({
            "boot-source": {"kernel_image_path": "/guest.elf", "boot_args": "console=ttyS0 ember.echo"},
            "drives": [{"drive_id": "data", "path_on_host": "/data.img",
                        "is_root_device": false, "is_read_only": false}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}
        });
        std::fs::write(root.join("vm.json"), config.to_string()).unwrap();
    });
    let ember = &mut jail.ember;
    ember.expect_line("echo: ready", TIMEOUT);
    let blk = ember.lines_starting("blk0:");
    assert!(blk.iter().any(|l| l.contains("drive data")), "{blk:?}");
    ember.echo_then_reset("typed into a jail", TIMEOUT);
}

/// ember alone, outside any jail: every thread filtered, by kind.
#[test]
fn every_ember_thread_runs_under_seccomp_unless_disabled() {
    require_kvm();
    let filtered = |extra: &[&str]| {
        let dir = TempDir::new("seccomp-threads");
        let ember = Ember::with_api(&dir, extra);
        ember.put_boot_source(&artifact("test-elf"), "console=ttyS0 ember.echo");
        ember.ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
        );
        ember.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
        ember.expect_line("echo: ready", TIMEOUT);
        let mut modes = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", ember.pid())).unwrap() {
            let task = task.unwrap().path();
            // A short-lived thread (dropping a VM, say) may end while we look.
            let (Ok(name), Ok(status)) = (
                std::fs::read_to_string(task.join("comm")),
                std::fs::read_to_string(task.join("status")),
            ) else {
                continue;
            };
            modes.push((
                name.trim().to_string(),
                field(&status, "Seccomp").to_string(),
            ));
        }
        modes
    };
    let modes = filtered(&[]);
    for name in ["ember", "ember_api", "ember_vcpu0", "ember_vcpu1"] {
        assert!(modes.iter().any(|(n, _)| n == name), "{name} in {modes:?}");
    }
    assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}");
    let modes = filtered(&["--no-seccomp"]);
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}");
}

/// A syscall outside a thread's allowlist kills ember with SIGSYS and is
/// logged, for each kind of thread (through the test-only self-test flag).
#[test]
fn a_syscall_outside_the_allowlist_kills_with_sigsys_and_is_logged() {
    require_kvm();
    for kind in ["vmm", "api", "vcpu"] {
        let dir = TempDir::new("seccomp-kill");
        let socket = dir.path("api.sock");
        let args = [
            "--api-sock",
            socket.to_str().unwrap(),
            "--seccomp-selftest",
            kind,
        ];
        let mut ember = if kind == "vcpu" {
            let ember = Ember::spawn(&args, Some(&socket));
            ember.ok(
                "PUT",
                "/boot-source",
                &json!({"kernel_image_path": artifact("test-elf")}).to_string(),
            );
            // The vCPU dies as it starts, maybe before the reply: send, don't wait.
            send_and_hang_up(
                &socket,
                "PUT",
                "/actions",
                r#"{"action_type": "InstanceStart"}"#,
            );
            ember
        } else {
            Ember::spawn(&args, None)
        };
        expect_sigsys(&mut ember, kind, libc::SYS_acct);
    }
}

fn expect_sigsys(ember: &mut Ember, kind: &str, syscall: i64) {
    use std::os::unix::process::ExitStatusExt;
    let status = ember.wait_exit(TIMEOUT);
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{kind}: {status}");
    let expected =
        format!("ember: seccomp: a {kind} thread made syscall {syscall} outside its allowlist");
    assert!(
        ember.stderr().contains(&expected),
        "{kind}: {}",
        ember.stderr()
    );
}

#[test]
fn a_custom_filter_file_replaces_the_builtin_one() {
    let dir = TempDir::new("seccomp-custom");
    let broken = dir.path("broken.json");
    std::fs::write(&broken, r#"{"vmm": {"default_action": "trap"}}"#).unwrap();
    let socket = dir.path("api.sock");
    let mut ember = Ember::spawn(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--seccomp-filter",
            broken.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(ember.wait_exit(TIMEOUT).code(), Some(152));
    assert!(ember.stderr().contains("broken.json"), "{}", ember.stderr());

    // The built-in filters plus `acct`: the self-test's forbidden syscall
    // passes, so ember lives on where the built-in filter kills it.
    let builtin = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/seccomp/x86_64.json");
    let mut filters: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(builtin).unwrap()).unwrap();
    filters["vmm"]["filter"]
        .as_array_mut()
        .unwrap()
        .push(json!({"syscall": "acct"}));
    let file = dir.path("with-acct.json");
    std::fs::write(&file, filters.to_string()).unwrap();
    let ember = Ember::spawn(
        &[
            "--api-sock",
            socket.to_str().unwrap(),
            "--seccomp-filter",
            file.to_str().unwrap(),
            "--seccomp-selftest",
            "vmm",
        ],
        Some(&socket),
    );
    let (status, info) = ember.api("GET", "/", "");
    assert_eq!(status, 200, "{info}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", ember.pid())).unwrap();
    assert_eq!(field(&status, "Seccomp"), "2");
}

#[test]
fn a_jailed_ember_in_a_network_namespace_reaches_its_taps_host_side() {
    let ns = NetNs::new("jail");
    ns.add_tap_for("tap0", "10.0.0.1/24", 1500, Some(JAIL_UID));
    ns.add_tap_for("tap-root", "10.0.1.1/24", 1500, Some(0));
    let listener = ns.listen("10.0.0.1:8080");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nfrom the host",
            );
        }
    });
    let jail = Jail::start("fn-net", &["--netns", &ns.path()]);
    let (status, body) = http(
        &jail.socket(),
        "PUT",
        "/network-interfaces/eth1",
        br#"{"iface_id": "eth1", "host_dev_name": "tap-root"}"#,
    );
    assert_eq!(status, 400, "{body}; stderr: {}", jail.ember.stderr());
    assert!(body.contains("may not attach"), "{body}");
    let kernel = jail.provide(&artifact("unikernel-fetch"), "fetch.elf");
    jail.ok(
        "PUT",
        "/boot-source",
        &json!({"kernel_image_path": kernel,
            "boot_args": "console=ttyS0 ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"})
        .to_string(),
    );
    jail.ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id": "eth0", "host_dev_name": "tap0"}"#,
    );
    jail.ok(
        "PUT",
        "/vsock",
        r#"{"guest_cid": 3, "uds_path": "/run/v.sock"}"#,
    );
    jail.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    jail.ember.expect_line("EMBER-FN: ready", TIMEOUT);
    let (status, body) = http_bytes(
        &jail.socket(),
        "POST",
        "/invocations",
        b"http://10.0.0.1:8080/",
    );
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"from the host"[..]),
        "{}",
        String::from_utf8_lossy(&body)
    );
}
