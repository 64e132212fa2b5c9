//! Networks for the tests, each in a network namespace of its own (`ip netns
//! add`) with TAP devices inside: traffic stays in the namespace, and
//! dropping the namespace removes its TAPs.

use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;

use crate::ember::Ember;

/// A network namespace, deleted (with its devices) on drop.
pub struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A fresh namespace named after the test process and `tag`, with loopback up.
    pub fn new(tag: &str) -> NetNs {
        crate::require_root();
        let name = format!("ember-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path, for `ember-jailer --netns`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// A TAP named `tap`, up, with the host side's address `cidr` (e.g.
    /// `10.0.0.1/24`) and `mtu`.
    pub fn add_tap(&self, tap: &str, cidr: &str, mtu: u32) {
        self.add_tap_for(tap, cidr, mtu, None);
    }

    /// As [`NetNs::add_tap`], for user `owner` if given: a process of that uid
    /// may attach to it without CAP_NET_ADMIN, as a jailed ember must.
    pub fn add_tap_for(&self, tap: &str, cidr: &str, mtu: u32, owner: Option<u32>) {
        let owner = owner.map(|uid| uid.to_string());
        let mut add = vec!["-n", &self.name, "tuntap", "add", tap, "mode", "tap"];
        if let Some(uid) = &owner {
            add.extend(["user", uid.as_str()]);
        }
        ip(&add);
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", tap]);
        ip(&[
            "-n",
            &self.name,
            "link",
            "set",
            tap,
            "mtu",
            &mtu.to_string(),
            "up",
        ]);
    }

    /// Runs `f` on a thread that entered the namespace: sockets it makes
    /// belong to the namespace, wherever they are used afterwards.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = Path::new("/var/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open the namespace");
            // SAFETY: setns on a namespace fd; it changes only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the namespace thread")
    }

    /// A TCP listener at `addr` inside the namespace.
    pub fn listen(&self, addr: &str) -> TcpListener {
        let addr = addr.to_string();
        self.within(move || TcpListener::bind(&addr).expect("bind in the namespace"))
    }

    /// A bridge `bridge` with the address `cidr`, up: the host side of pods
    /// made with [`NetNs::add_pod`].
    pub fn add_bridge(&self, bridge: &str, cidr: &str) {
        ip(&["-n", &self.name, "link", "add", bridge, "type", "bridge"]);
        ip(&["-n", &self.name, "addr", "add", cidr, "dev", bridge]);
        ip(&["-n", &self.name, "link", "set", bridge, "up"]);
    }

    /// Makes `pod` a pod the way CNI's bridge plugin leaves one: its `eth0`,
    /// with `cidr` and a default route via `gateway`, is a veth whose peer
    /// `peer` is a port of this namespace's `bridge`.
    pub fn add_pod(&self, bridge: &str, pod: &NetNs, peer: &str, cidr: &str, gateway: &str) {
        let pod_name = pod.name();
        ip(&[
            "-n", pod_name, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns",
            &self.name,
        ]);
        ip(&[
            "-n", &self.name, "link", "set", peer, "master", bridge, "up",
        ]);
        ip(&["-n", pod_name, "addr", "add", cidr, "dev", "eth0"]);
        ip(&["-n", pod_name, "link", "set", "eth0", "up"]);
        ip(&["-n", pod_name, "route", "add", "default", "via", gateway]);
    }

    /// A TCP connection from the namespace to `addr`.
    pub fn connect(&self, addr: &str) -> std::net::TcpStream {
        let addr = addr.to_string();
        self.within(move || {
            std::net::TcpStream::connect(&addr)
                .unwrap_or_else(|e| panic!("connect to {addr} in the namespace: {e}"))
        })
    }

    /// Opens TAP `tap` as another process would, so it is busy for ember.
    pub fn hold_tap(&self, tap: &str) -> File {
        let tap = tap.to_string();
        self.within(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("open /dev/net/tun");
            let mut req = [0u8; 40];
            req[..tap.len()].copy_from_slice(tap.as_bytes());
            // IFF_TAP | IFF_NO_PI
            req[16..18].copy_from_slice(&0x1002u16.to_ne_bytes());
            // SAFETY: TUNSETIFF reads and writes a 40-byte `ifreq`, which `req` is.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), 0x4004_54ca, req.as_mut_ptr()) };
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            file
        })
    }

    /// Spawns ember in the namespace, with `args` (see [`Ember::spawn`]).
    pub fn spawn_ember(&self, args: &[&str], socket: Option<&Path>) -> Ember {
        let netns = File::open(self.path()).expect("open the namespace");
        Ember::spawn_in_netns(&netns, args, socket)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
