//! The pod's network for a function VM. In the pod's network namespace the
//! shim makes a TAP for the VM and joins it to the pod's interface with tc
//! redirects both ways (Kata's "tcfilter" model): every frame that reaches
//! the interface goes to the guest and every frame the guest sends leaves
//! through the interface. The guest takes the interface's MAC and IPv4
//! address (Linux's `ip=` on its command line), so it answers on the pod's IP
//! and the pod's peers see nothing new.
//!
//! The work is done from a thread that has joined the namespace: the
//! interface, address and route are read from procfs and interface ioctls, the
//! TAP is made through `/dev/net/tun`, and one `tc` command adds the redirects
//! (each process start costs about 2 ms here, a fork of the shim more).

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use containerd_shim::monitor::{monitor_subscribe, wait_pid, Topic};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the pod's network namespace '{path}': {source}")]
    Namespace {
        path: String,
        source: std::io::Error,
    },
    #[error("{command} in the pod's network namespace failed: {output}")]
    Command { command: String, output: String },
    #[error("cannot join the pod's network namespace: {0}")]
    Join(std::io::Error),
    #[error("cannot read the pod's interfaces: {0}")]
    Parse(String),
}

/// The pod's interface as the VM takes it over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct PodNetwork {
    /// The pod's interface (`eth0` for CNI) and the TAP joined to it.
    pub interface: String,
    pub tap: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl PodNetwork {
    /// Linux's `ip=` for the guest: address, gateway and netmask.
    pub fn boot_arg(&self) -> String {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        let gateway = self.gateway.map(|g| g.to_string()).unwrap_or_default();
        format!(
            "ip={}::{gateway}:{}::eth0:off",
            self.address,
            Ipv4Addr::from(mask)
        )
    }
}

/// An `ifreq` as the interface ioctls take it: the name, then a 24-byte union
/// (a sockaddr, flags, ...).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        let len = name.len().min(libc::IFNAMSIZ - 1);
        req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        req
    }

    /// Runs interface ioctl `request` on `fd`.
    fn ioctl(&mut self, fd: &OwnedFd, request: libc::Ioctl) -> std::io::Result<()> {
        // SAFETY: `self` is a whole `ifreq` (40 bytes) that outlives the call,
        // which reads and writes only within it.
        match unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(self)) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// The IPv4 address in the union's `sockaddr_in`.
    fn ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.data[4], self.data[5], self.data[6], self.data[7])
    }
}

/// A socket to run interface ioctls on, in the calling thread's namespace.
fn ioctl_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; the descriptor is checked, then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pod's interface in the calling thread's namespace: the first Ethernet
/// interface with an IPv4 address (name, MAC, address, prefix length), and
/// the default route's gateway through it. None if there is none.
fn find() -> Result<Option<PodNetwork>, Error> {
    let read = |path: &str| {
        std::fs::read_to_string(path).map_err(|e| Error::Parse(format!("{path}: {e}")))
    };
    let devices = read("/proc/thread-self/net/dev")?;
    let routes = read("/proc/thread-self/net/route")?;
    let socket = ioctl_socket().map_err(Error::Join)?;
    for name in device_names(&devices) {
        let mut hwaddr = IfReq::new(name);
        if hwaddr.ioctl(&socket, libc::SIOCGIFHWADDR).is_err()
            || u16::from_ne_bytes([hwaddr.data[0], hwaddr.data[1]]) != libc::ARPHRD_ETHER
        {
            continue;
        }
        let mut address = IfReq::new(name);
        if address.ioctl(&socket, libc::SIOCGIFADDR).is_err() {
            continue;
        }
        let mut netmask = IfReq::new(name);
        netmask
            .ioctl(&socket, libc::SIOCGIFNETMASK)
            .map_err(|e| Error::Parse(format!("{name}'s netmask: {e}")))?;
        let mac = hwaddr.data[2..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        return Ok(Some(PodNetwork {
            interface: name.to_owned(),
            tap: String::new(),
            mac,
            address: address.ipv4(),
            prefix_len: u8::try_from(u32::from(netmask.ipv4()).leading_ones()).unwrap_or(32),
            gateway: default_gateway(&routes, name),
        }));
    }
    Ok(None)
}

/// The interface names of `/proc/net/dev` (`  eth0: 1234 ...`), loopback left out.
fn device_names(devices: &str) -> impl Iterator<Item = &str> {
    devices
        .lines()
        .skip(2)
        .filter_map(|line| Some(line.split_once(':')?.0.trim()))
        .filter(|name| *name != "lo")
}

/// The gateway of the default route through `interface`, from `/proc/net/route`
/// (addresses in hex, in memory order).
fn default_gateway(routes: &str, interface: &str) -> Option<Ipv4Addr> {
    routes.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [iface, destination, gateway, ..] = fields.as_slice() else {
            return None;
        };
        if *iface != interface || *destination != "00000000" {
            return None;
        }
        let gateway = u32::from_str_radix(gateway, 16).ok()?;
        (gateway != 0).then(|| Ipv4Addr::from(gateway.to_ne_bytes()))
    })
}

/// Makes TAP `tap` in the calling thread's namespace, owned by `uid` (so the
/// jailed ember may open it without CAP_NET_ADMIN), persistent and up.
fn make_tap(tap: &str, uid: u32) -> Result<(), Error> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| Error::Command {
            command: format!("{what} {tap}"),
            output: e.to_string(),
        }
    };
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(failed("open /dev/net/tun for"))?;
    let tun = OwnedFd::from(tun);
    let mut req = IfReq::new(tap);
    let flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI).unwrap_or_default();
    req.data[..2].copy_from_slice(&flags.to_ne_bytes());
    req.ioctl(&tun, libc::TUNSETIFF)
        .map_err(failed("TUNSETIFF"))?;
    for (request, value, what) in [
        (libc::TUNSETOWNER, libc::c_ulong::from(uid), "TUNSETOWNER"),
        (libc::TUNSETPERSIST, 1, "TUNSETPERSIST"),
    ] {
        // SAFETY: these take their argument by value; no memory is passed.
        if unsafe { libc::ioctl(tun.as_raw_fd(), request, value) } != 0 {
            return Err(failed(what)(std::io::Error::last_os_error()));
        }
    }
    let socket = ioctl_socket().map_err(failed("socket for"))?;
    let mut up = IfReq::new(tap);
    up.ioctl(&socket, libc::SIOCGIFFLAGS)
        .map_err(failed("SIOCGIFFLAGS"))?;
    let flags = i16::from_ne_bytes([up.data[0], up.data[1]])
        | i16::try_from(libc::IFF_UP).unwrap_or_default();
    up.data[..2].copy_from_slice(&flags.to_ne_bytes());
    up.ioctl(&socket, libc::SIOCSIFFLAGS)
        .map_err(failed("SIOCSIFFLAGS"))
}

/// Runs `f` on a thread of its own that has joined the network namespace `ns`:
/// the commands it starts run there too (a child starts in its parent thread's
/// namespace), with no `setns` between fork and exec, so they are spawned the
/// fast way rather than by a fork of the whole shim.
fn in_namespace<T: Send>(
    ns: &File,
    f: impl FnOnce() -> Result<T, Error> + Send,
) -> Result<T, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns only reads the descriptor, which `ns` keeps open.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::Join(std::io::Error::last_os_error()));
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(Error::Join(std::io::Error::other("the thread panicked"))))
    })
}

/// Runs `program` with `input` on its stdin (in the calling thread's namespace).
fn run(program: &str, args: &[&str], input: &str) -> Result<String, Error> {
    let failed = |output: String| Error::Command {
        command: format!("{program} {}", args.join(" ")),
        output,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The shim crate's reaper thread reaps every child the moment it exits, so
    // the exit code comes from its monitor, subscribed to before the spawn.
    let subscription = monitor_subscribe(Topic::Pid).map_err(|e| failed(e.to_string()))?;
    let mut child = command.spawn().map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .map_err(|e| failed(e.to_string()))?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)
            .map_err(|e| failed(e.to_string()))?;
    }
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    if wait_pid(pid, subscription) != 0 {
        return Err(failed(stderr.trim().to_owned()));
    }
    Ok(stdout)
}

fn open(netns: &str) -> Result<File, Error> {
    File::open(netns).map_err(|source| Error::Namespace {
        path: netns.to_owned(),
        source,
    })
}

/// Makes the VM's TAP `tap` (owned by `uid`, so the jailed ember may open it) in
/// the namespace `netns` and joins it to the pod's interface. None when the
/// namespace has no interface with an IPv4 address: the VM then has no network.
pub fn attach(netns: &str, tap: &str, uid: u32) -> Result<Option<PodNetwork>, Error> {
    let ns = open(netns)?;
    in_namespace(&ns, || {
        let Some(mut pod) = find()? else {
            return Ok(None);
        };
        make_tap(tap, uid)?;
        pod.tap = tap.to_owned();
        let interface = &pod.interface;
        let redirects = format!(
            "qdisc add dev {interface} ingress\n\
             filter add dev {interface} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev {tap}\n\
             qdisc add dev {tap} ingress\n\
             filter add dev {tap} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev {interface}\n"
        );
        if let Err(e) = run("tc", &["-batch", "-"], &redirects) {
            let _ = run("ip", &["link", "del", tap], "");
            return Err(e);
        }
        Ok(Some(pod))
    })
}

/// A VM's place in a pod network: the namespace and what [`attach`] made there.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
pub struct Attached {
    pub netns: String,
    pub pod: PodNetwork,
}

/// Undoes [`attach`]: the TAP (its redirect goes with it) and the interface's
/// redirect. A namespace already gone took both along.
pub fn detach(netns: &str, network: &PodNetwork) {
    let Ok(ns) = open(netns) else {
        return;
    };
    let _ = in_namespace(&ns, || {
        let _ = run("ip", &["link", "del", &network.tap], "");
        let _ = run(
            "tc",
            &["qdisc", "del", "dev", &network.interface, "ingress"],
            "",
        );
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_interfaces_and_the_default_gateway_from_procfs() {
        let devices = "Inter-|   Receive\n face |bytes\n    lo: 0 0\n  eth0: 1 2\n ember1: 3 4\n";
        assert_eq!(
            device_names(devices).collect::<Vec<_>>(),
            ["eth0", "ember1"]
        );
        let routes = "Iface\tDestination\tGateway \tFlags\n\
                      eth0\t0058580A\t00000000\t0001\n\
                      eth0\t00000000\t0100580A\t0003\n";
        assert_eq!(
            default_gateway(routes, "eth0"),
            Some(Ipv4Addr::new(10, 88, 0, 1))
        );
        assert_eq!(default_gateway(routes, "eth1"), None);
        let network = PodNetwork {
            interface: "eth0".into(),
            tap: "tap0".into(),
            mac: "0a:58:0a:58:00:05".into(),
            address: Ipv4Addr::new(10, 88, 0, 5),
            prefix_len: 16,
            gateway: Some(Ipv4Addr::new(10, 88, 0, 1)),
        };
        assert_eq!(
            network.boot_arg(),
            "ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off"
        );
    }
}
