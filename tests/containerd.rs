//! ember under containerd: function images run through `ctr` on the runtime
//! `io.containerd.ember.v2` (the shim in `shim/`), each task a jailed ember,
//! and nothing left on the host once the tasks are gone. Root and KVM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ember_test_support::containerd::{Containerd, CNI_PLUGINS, RUNTIME, UID_LEASES};
use ember_test_support::{artifact, http, http_bytes, KeepAlive, NetNs, TempDir};

const TIMEOUT: Duration = Duration::from_secs(30);
const READY: &str = "EMBER-FN: ready on port";
/// Tasks on the CNI bridge at once.
const CNI_TASKS: usize = 10;

/// Calls task `id`'s function through ember's API, as the shim exposes it.
fn invoke(containerd: &Containerd, id: &str, payload: &[u8]) -> (u16, Vec<u8>) {
    http_bytes(
        &containerd.bundle(id).join("ember.sock"),
        "POST",
        "/invocations",
        payload,
    )
}

/// The uid a process runs as (real, effective, saved and filesystem alike).
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .expect("Uid line");
    line.split_whitespace()
        .skip(1)
        .map(|u| u.parse().expect("a uid"))
        .collect()
}

/// The VM's leaf cgroups, as the jail makes them under the container's
/// `cgroupsPath` (`/<namespace>/<id>` for ctr), in a v1 or v2 hierarchy.
fn cgroups(id: &str) -> Vec<std::path::PathBuf> {
    ["memory", "cpu", "cpuacct", "pids", ""]
        .iter()
        .map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join("ember-test")
                .join(id)
        })
        .collect()
}

/// Nothing of task `id`, whose VM ran as `pid` and `uid`, is left on the host.
fn assert_gone(containerd: &Containerd, id: &str, pid: u32, uid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the VM of {id} still runs"
    );
    assert!(
        !containerd.bundle(id).exists(),
        "{id}'s bundle (and jail) is left"
    );
    assert!(
        !Path::new(UID_LEASES).join(uid.to_string()).exists(),
        "{id}'s uid {uid} is still leased"
    );
    for cgroup in cgroups(id) {
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
    }
    let ls = containerd.ok(&["task", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == id), "containerd still lists {id}");
}

#[test]
fn a_function_image_runs_as_a_jailed_vm_and_answers_through_the_shim() {
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    containerd.run_detached(&image, "fn-1");
    containerd.wait_console("fn-1", READY, TIMEOUT);
    let (pid, status) = containerd.task("fn-1").expect("ctr lists the task");
    assert_eq!(status, "RUNNING");

    let (code, body) = invoke(&containerd, "fn-1", b"hello from containerd");
    assert_eq!(
        (code, body.as_slice()),
        (200, &b"hello from containerd"[..])
    );

    // The task's process is the jailed ember: its own uid, chroot and cgroups.
    let uid = uids(pid)[0];
    assert!(uid >= 1_000_000, "ember runs as uid {uid}");
    assert!(uids(pid).iter().all(|&u| u == uid), "{:?}", uids(pid));
    assert!(Path::new(UID_LEASES).join(uid.to_string()).exists());
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt ns");
    assert_ne!(ns(&pid.to_string()), ns("self"), "ember has its own mounts");
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    assert!(root.join("function").is_file() && root.join("vm.json").is_file());
    assert!(!root.join("etc").exists() && !root.join("usr").exists());
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    assert!(
        cgroup.lines().any(|l| l.ends_with(":/ember-test/fn-1")),
        "{cgroup}"
    );
    let metrics = containerd.ok(&["task", "metrics", "fn-1"]);
    let usage: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_in_bytes"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memory usage in:\n{metrics}"));
    assert!(usage > 0, "{metrics}");

    // Pause and resume reach the VM (ember's PATCH /vm).
    containerd.ok(&["task", "pause", "fn-1"]);
    assert_eq!(
        containerd.task("fn-1").map(|t| t.1).as_deref(),
        Some("PAUSED")
    );
    let (_, vm) = http(
        &containerd.bundle("fn-1").join("ember.sock"),
        "GET",
        "/",
        b"",
    );
    assert!(vm.contains(r#""state":"Paused""#), "{vm}");
    containerd.ok(&["task", "resume", "fn-1"]);
    assert_eq!(
        containerd.task("fn-1").map(|t| t.1).as_deref(),
        Some("RUNNING")
    );
    assert_eq!(
        invoke(&containerd, "fn-1", b"again"),
        (200, b"again".to_vec())
    );

    containerd.kill_and_remove("fn-1");
    assert_gone(&containerd, "fn-1", pid, uid);
}

/// Ten tasks in `make test`; `EMBER_CONTAINERD_TASKS` more (`make bench` runs
/// 100), started eight at a time.
#[test]
fn many_tasks_of_one_image_at_once_all_answer_and_leave_nothing_behind() {
    let count: usize = std::env::var("EMBER_CONTAINERD_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10);
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    let ids: Vec<String> = (0..count).map(|i| format!("many-{i}")).collect();
    std::thread::scope(|s| {
        for chunk in ids.chunks(count.div_ceil(8)) {
            let (containerd, image) = (&containerd, &image);
            s.spawn(move || {
                chunk
                    .iter()
                    .for_each(|id| containerd.run_detached(image, id))
            });
        }
    });
    let mut vms = Vec::new();
    for id in &ids {
        containerd.wait_ready(id, READY, TIMEOUT);
        let payload = format!("call for {id}");
        let (code, body) = invoke(&containerd, id, payload.as_bytes());
        assert_eq!((code, body), (200, payload.into_bytes()), "{id}");
        let (pid, _) = containerd.task(id).expect("listed");
        vms.push((id, pid, uids(pid)[0]));
    }
    let mut distinct: Vec<u32> = vms.iter().map(|v| v.2).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "each VM has a uid of its own");
    for id in &ids {
        containerd.ok(&["task", "kill", "--signal", "SIGKILL", id]);
    }
    for id in &ids {
        containerd.kill_and_remove(id);
    }
    for (id, pid, uid) in vms {
        assert_gone(&containerd, id, pid, uid);
    }
}

/// `ctr run` in the foreground returns the task's exit status.
#[test]
fn the_task_ends_with_the_vm_status_0_after_a_guest_reset_128_plus_n_after_signal_n() {
    let containerd = Containerd::start();
    let resets = containerd.import_function("resets", &artifact("test-elf"));
    let out = containerd.ctr(&["run", "--rm", "--runtime", RUNTIME, &resets, "reset-1"]);
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(console.contains("guest: reset"), "{console}");
    assert_eq!(out.status.code(), Some(0), "{console}");

    let echo = containerd.import_function("echo", &artifact("unikernel-echo"));
    let log_uri = "file:///dev/null";
    let mut run = Command::new("ctr")
        .args(containerd.global_args())
        .args(["run", "--rm", "--runtime", RUNTIME, "--log-uri", log_uri])
        .args([echo.as_str(), "killed-1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("ctr run");
    let pid = loop {
        if let Some((pid, status)) = containerd.task("killed-1") {
            if status == "RUNNING" {
                break pid;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let uid = loop {
        // The jailer becomes ember once the jail is up.
        let uid = uids(pid)[0];
        if uid != 0 {
            break uid;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    containerd.ok(&["task", "kill", "--signal", "SIGKILL", "killed-1"]);
    let status = run.wait().expect("ctr run ends");
    assert_eq!(status.code(), Some(128 + 9));
    assert_gone(&containerd, "killed-1", pid, uid);
}

/// The shim's snapshot cache: the first task of a function boots and is
/// snapshotted once ready; the next restores from that snapshot (its memory
/// file a hard link of the cache's, shared by every clone) and answers alike.
#[test]
fn the_second_task_of_a_function_is_a_restore_of_the_first_ones_snapshot() {
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    containerd.run_detached(&image, "first-1");
    containerd.wait_console("first-1", READY, TIMEOUT);
    let stored = containerd.wait_log("task first-1: snapshot", TIMEOUT);
    assert!(stored.contains("stored"), "{stored}");
    assert_eq!(
        invoke(&containerd, "first-1", b"one"),
        (200, b"one".to_vec())
    );

    containerd.run_detached(&image, "second-1");
    containerd.wait_log("task second-1: restored from snapshot", TIMEOUT);
    containerd.wait_api("second-1", TIMEOUT);
    assert_eq!(
        invoke(&containerd, "second-1", b"two"),
        (200, b"two".to_vec())
    );
    assert!(
        !containerd.console("second-1").contains(READY),
        "the clone did not boot again"
    );
    let jail_memory = containerd
        .bundle("second-1")
        .join("jail/ember/second-1/root/vm.mem");
    let entry = std::fs::read_dir(containerd.snapshots())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a cache entry");
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    assert_eq!(inode(&jail_memory), inode(&entry.join("vm.mem")));

    remove_all(&containerd, &["first-1", "second-1"]);
    assert!(
        entry.join("vm.mem").is_file(),
        "the cache outlives its tasks"
    );
}

/// A shim that dies (OOM-killed, say) leaves its VM running; containerd then
/// runs `containerd-shim-ember-v2 delete` in the bundle, which kills the VM
/// (named by pid and start time in the bundle's record) and cleans up.
#[test]
fn a_dead_shims_vm_is_killed_and_cleaned_up_by_shim_delete() {
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    containerd.run_detached(&image, "orphan-1");
    containerd.wait_console("orphan-1", READY, TIMEOUT);
    let (pid, _) = containerd.task("orphan-1").expect("listed");
    let uid = uids(pid)[0];
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let shim: libc::pid_t = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("ember's parent, the shim");
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(shim, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + TIMEOUT;
    // Killed, then reaped by whichever process adopted it (init, here).
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphaned VM was never killed:\n{}",
            containerd.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    containerd.ctr(&["task", "delete", "orphan-1"]);
    containerd.ok(&["container", "delete", "orphan-1"]);
    assert_gone(&containerd, "orphan-1", pid, uid);
}

/// Container annotations (as Kubernetes passes pod annotations) override the
/// image's settings; a Kubernetes pod sandbox (the pause container) runs no VM.
#[test]
fn annotations_set_the_vm_and_a_pod_sandbox_runs_no_vm() {
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    let log_uri = "file:///dev/null";
    containerd.ok(&[
        "run",
        "--detach",
        "--runtime",
        RUNTIME,
        "--log-uri",
        log_uri,
        "--annotation",
        "io.ember.memory-mib=96",
        "--annotation",
        "io.ember.vcpus=2",
        &image,
        "sized-1",
    ]);
    containerd.wait_api("sized-1", TIMEOUT);
    let socket = containerd.bundle("sized-1").join("ember.sock");
    let (status, machine) = http(&socket, "GET", "/machine-config", b"");
    assert_eq!(status, 200, "{machine}");
    let machine: serde_json::Value = serde_json::from_str(&machine).unwrap();
    assert_eq!(
        (
            machine["mem_size_mib"].as_u64(),
            machine["vcpu_count"].as_u64()
        ),
        (Some(96), Some(2))
    );
    let (pid, _) = containerd.task("sized-1").expect("listed");
    let uid = uids(pid)[0];
    containerd.kill_and_remove("sized-1");
    assert_gone(&containerd, "sized-1", pid, uid);

    containerd.ok(&[
        "run",
        "--detach",
        "--runtime",
        RUNTIME,
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        &image,
        "pod-1",
    ]);
    let (pid, status) = containerd.task("pod-1").expect("listed");
    assert_eq!(status, "RUNNING");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert!(
        comm.starts_with("containerd-shim"),
        "the sandbox is the shim: {comm}"
    );
    assert!(!containerd.bundle("pod-1").join("jail").exists(), "no VM");
    containerd.kill_and_remove("pod-1");
    assert!(!containerd.bundle("pod-1").exists());
}

/// Kills and deletes tasks `ids`, then checks each left nothing behind.
fn remove_all(containerd: &Containerd, ids: &[impl AsRef<str>]) {
    let vms: Vec<(&str, u32, u32)> = ids
        .iter()
        .map(|id| {
            let id = id.as_ref();
            let (pid, _) = containerd.task(id).expect("listed");
            let uid = uids(pid)[0];
            containerd.kill_and_remove(id);
            (id, pid, uid)
        })
        .collect();
    for (id, pid, uid) in vms {
        assert_gone(containerd, id, pid, uid);
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A task in a pod's network namespace is on the pod's network with the pod's
/// address: the shim joins the VM to the pod's interface (tc redirects both
/// ways to a TAP), and the guest takes the interface's MAC and address. The
/// pod here is a namespace whose `eth0` is a veth to a peer namespace, as CNI's
/// bridge plugin leaves a pod; the peer serves HTTP, and the fetch function
/// calls it.
#[test]
fn a_task_in_a_pod_network_reaches_its_peers_from_the_pods_address() {
    let containerd = Containerd::start();
    let image = containerd.import_function("fetch", &artifact("unikernel-fetch"));
    let pod = NetNs::new("pod");
    let peer = NetNs::new("peer");
    ip(&[
        "-n",
        pod.name(),
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "peer0",
        "netns",
        peer.name(),
    ]);
    ip(&[
        "-n",
        pod.name(),
        "addr",
        "add",
        "10.77.0.2/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", pod.name(), "link", "set", "eth0", "up"]);
    ip(&[
        "-n",
        peer.name(),
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        "peer0",
    ]);
    ip(&["-n", peer.name(), "link", "set", "peer0", "up"]);
    let listener = peer.listen("10.77.0.1:8080");
    let server = std::thread::spawn(move || {
        let (mut stream, client) = listener.accept().expect("the guest connects");
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\r\n\r\n") {
            std::io::Read::read_exact(&mut stream, &mut byte).expect("the request");
            request.push(byte[0]);
        }
        let body = b"from the pod's peer";
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
        std::io::Write::write_all(&mut stream, body).unwrap();
        client
    });
    let with_ns = format!("network:{}", pod.path());
    containerd.run_detached_with(&image, "net-1", &["--with-ns", &with_ns]);
    containerd.wait_console("net-1", READY, TIMEOUT);
    let (pid, _) = containerd.task("net-1").expect("listed");
    let uid = uids(pid)[0];
    let links = ip(&["-n", pod.name(), "-o", "link", "show"]);
    assert!(
        links.contains(": ember"),
        "the VM's TAP is in the pod: {links}"
    );
    let (code, body) = invoke(&containerd, "net-1", b"http://10.77.0.1:8080/hello");
    assert_eq!(
        (code, String::from_utf8_lossy(&body).as_ref()),
        (200, "from the pod's peer"),
        "console:\n{}",
        containerd.console("net-1")
    );
    let client = server.join().expect("the peer's server");
    assert_eq!(
        client.ip().to_string(),
        "10.77.0.2",
        "the guest used the pod's address"
    );

    containerd.kill_and_remove("net-1");
    assert_gone(&containerd, "net-1", pid, uid);
    let links = ip(&["-n", pod.name(), "-o", "link", "show"]);
    assert!(!links.contains(": ember"), "the TAP is gone: {links}");
    let qdiscs = Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.name(),
            "tc",
            "qdisc",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .expect("tc");
    let qdiscs = String::from_utf8_lossy(&qdiscs.stdout);
    assert!(
        !qdiscs.contains("ingress"),
        "the redirect is gone: {qdiscs}"
    );
}

/// Functions on a pod network answer HTTP at the pod's address, read the
/// container's environment from the MMDS, and a second pod's task restores the
/// first one's snapshot and takes its own pod's address and MAC: both answer at
/// once on one bridge.
#[test]
fn pods_answer_http_at_their_addresses_and_a_restored_clone_takes_its_own() {
    let containerd = Containerd::start();
    let image = containerd.import_function("metadata", &artifact("unikernel-metadata"));
    let host = NetNs::new("bridge");
    host.add_bridge("cni0", "10.78.0.1/24");
    let pods = [NetNs::new("pod-a"), NetNs::new("pod-b")];
    host.add_pod("cni0", &pods[0], "veth-a", "10.78.0.2/24", "10.78.0.1");
    host.add_pod("cni0", &pods[1], "veth-b", "10.78.0.3/24", "10.78.0.1");
    let call = |address: &str, input: &[u8]| {
        let mut client = KeepAlive::tcp(host.connect(&format!("{address}:8080")));
        let (code, body) = client.request("POST", "/", input);
        (code, String::from_utf8_lossy(&body).into_owned())
    };

    let with_ns = format!("network:{}", pods[0].path());
    let args = ["--with-ns", &with_ns, "--env", "GREETING=hello from a"];
    containerd.run_detached_with(&image, "http-a", &args);
    containerd.wait_console("http-a", "EMBER-FN: ready on port 1024, http 8080", TIMEOUT);
    let stored = containerd.wait_log("task http-a: snapshot", TIMEOUT);
    assert!(stored.contains("stored"), "{stored}");
    assert_eq!(
        call("10.78.0.2", b"/ember/env/GREETING"),
        (200, "hello from a".into())
    );

    let with_ns = format!("network:{}", pods[1].path());
    let args = ["--with-ns", &with_ns, "--env", "GREETING=hello from b"];
    containerd.run_detached_with(&image, "http-b", &args);
    containerd.wait_log("task http-b: restored from snapshot", TIMEOUT);
    containerd.wait_console("http-b", "EMBER-FN: restored as 10.78.0.3", TIMEOUT);
    assert_eq!(
        call("10.78.0.3", b"/ember/env/GREETING"),
        (200, "hello from b".into())
    );
    assert_eq!(
        call("10.78.0.2", b"/ember/env/GREETING"),
        (200, "hello from a".into()),
        "the first pod still answers at its own address"
    );
    let pod_mac = ip(&["-n", pods[1].name(), "-br", "link", "show", "eth0"]);
    let neighbours = ip(&["-n", host.name(), "neigh", "show", "10.78.0.3"]);
    let mac = pod_mac.split_whitespace().nth(2).expect("a MAC");
    assert!(
        neighbours.contains(mac),
        "the clone took its pod's MAC {mac}: {neighbours}"
    );
    assert_eq!(
        invoke(&containerd, "http-b", b"/ember/env/GREETING"),
        (200, b"hello from b".to_vec()),
        "ember.sock still reaches the function"
    );

    remove_all(&containerd, &["http-a", "http-b"]);
}

/// `ctr run --cni`: between create and start, ctr runs CNI's bridge plugin
/// (Debian's containernetworking-plugins) on the network namespace the shim
/// made for the task, as it would on runc's; the VM answers HTTP at the address
/// CNI gave. ctr reads CNI's configuration from /etc/cni/net.d and its plugins
/// from /opt/cni/bin, so it runs here in a mount namespace of its own whose /etc
/// and /opt are overlays with those added, and in a network namespace of the
/// test's, where the plugin makes its bridge: nothing of the host's changes.
/// The first task of the function boots; the rest restore its snapshot, and
/// all answer at once, each at its own address.
#[test]
fn ctr_run_cni_puts_tasks_on_a_cni_bridge_network_restoring_all_but_the_first() {
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    let host = NetNs::new("cni");
    let dir = TempDir::new("cni");
    let (conf, ipam) = (dir.path("net.d"), dir.path("ipam"));
    std::fs::create_dir(&conf).unwrap();
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ember-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.88.7.0/24"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam,
            },
        }],
    });
    std::fs::write(conf.join("10-ember.conflist"), conflist.to_string()).unwrap();
    let overlays = dir.path("overlays");
    std::fs::create_dir(&overlays).unwrap();
    let script = format!(
        "set -e
        mount -t tmpfs tmpfs {o}
        mkdir -p {o}/etc/cni {o}/etc-work {o}/opt/cni {o}/opt-work
        cp -r {conf} {o}/etc/cni/net.d
        ln -s {plugins} {o}/opt/cni/bin
        mount -t overlay overlay -o lowerdir=/etc,upperdir={o}/etc,workdir={o}/etc-work /etc
        mount -t overlay overlay -o lowerdir=/opt,upperdir={o}/opt,workdir={o}/opt-work /opt
        exec ctr \"$@\"",
        o = overlays.display(),
        conf = conf.display(),
        plugins = CNI_PLUGINS,
    );
    let ctr_run_cni = |id: &str| {
        let mut ctr = containerd.global_args();
        ctr.extend(containerd.run_detached_args(&image, id, &["--cni"]));
        let out = Command::new("ip")
            .args(["netns", "exec", host.name()])
            .args(["unshare", "--mount", "--propagation", "private"])
            .args(["sh", "-c", &script, "sh"])
            .args(&ctr)
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr run --cni: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            containerd.log()
        );
    };
    let leases = || -> Vec<String> {
        let mut leased: Vec<String> = std::fs::read_dir(ipam.join("ember-test"))
            .expect("host-local's leases")
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("10.88.7."))
            .collect();
        leased.sort();
        leased
    };
    let call = |address: &str| {
        let mut client = KeepAlive::tcp(host.connect(&format!("{address}:8080")));
        client.request("POST", "/", address.as_bytes())
    };
    ctr_run_cni("cni-1");
    containerd.wait_console("cni-1", READY, TIMEOUT);
    let first = leases();
    assert_eq!(first.len(), 1, "one address leased: {first:?}");
    assert_eq!(call(&first[0]), (200, first[0].clone().into_bytes()));
    containerd.wait_log("task cni-1: snapshot", TIMEOUT);

    // The others restore the first one's snapshot, each at its own address,
    // and all answer at once.
    let ids: Vec<String> = (1..=CNI_TASKS).map(|i| format!("cni-{i}")).collect();
    for id in &ids[1..] {
        ctr_run_cni(id);
        containerd.wait_log(&format!("task {id}: restored from snapshot"), TIMEOUT);
    }
    let all = leases();
    assert_eq!(all.len(), CNI_TASKS, "an address each: {all:?}");
    for id in &ids[1..] {
        containerd.wait_console(id, "EMBER-FN: restored as 10.88.7.", TIMEOUT);
    }
    for address in &all {
        assert_eq!(call(address), (200, address.clone().into_bytes()));
    }

    remove_all(&containerd, &ids);
    let links = ip(&["-n", host.name(), "-o", "link", "show", "master", "cni0"]);
    assert!(
        links.trim().is_empty(),
        "the pod's veth went with it: {links}"
    );
}

#[test]
fn an_image_without_its_unikernel_is_refused_and_leaves_nothing() {
    let containerd = Containerd::start();
    let image = containerd.import_function("echo", &artifact("unikernel-echo"));
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &image,
        "missing-1",
        "/no/such/unikernel",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the image has no unikernel at '/no/such/unikernel'"),
        "{stderr}"
    );
    containerd.ctr(&["container", "delete", "missing-1"]);
    assert!(!containerd.bundle("missing-1").exists());
}
