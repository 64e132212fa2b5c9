//! The pod's network for a function VM. In the pod's network namespace the
//! shim makes a TAP for the VM and joins it to the pod's interface with tc
//! redirects both ways (Kata's "tcfilter" model): every frame that reaches
//! the interface goes to the guest and every frame the guest sends leaves
//! through the interface. The guest takes the interface's MAC and IPv4
//! address (Linux's `ip=` on its command line), so it answers on the pod's IP
//! and the pod's peers see nothing new.
//!
//! The namespace's own commands do the work: `ip` (JSON output) to read the
//! interface and route and to make the TAP, `tc` for the redirects, each run
//! in the namespace.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
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

/// `ip -j addr show`'s entries, the parts read here.
#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    link_type: Option<String>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Deserialize)]
struct AddrInfo {
    family: String,
    /// An IPv4 or IPv6 address, as `family` says.
    local: String,
    prefixlen: u8,
}

impl AddrInfo {
    fn ipv4(&self) -> Option<Ipv4Addr> {
        (self.family == "inet")
            .then(|| self.local.parse().ok())
            .flatten()
    }
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    gateway: Option<Ipv4Addr>,
    #[serde(default)]
    dev: Option<String>,
}

/// Runs `program` with `input` on its stdin in the namespace `netns`.
fn run_in(netns: &File, program: &str, args: &[&str], input: &str) -> Result<String, Error> {
    let fd = netns.as_raw_fd();
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
    // SAFETY: between fork and exec the child only calls setns, a system call
    // that allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
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

/// The pod's interface: the first Ethernet interface with an IPv4 address, and
/// the default route's gateway through it. None if the namespace has none.
fn find(listing: &str) -> Result<Option<(Link, Option<Ipv4Addr>)>, Error> {
    let mut documents =
        serde_json::Deserializer::from_str(listing).into_iter::<serde_json::Value>();
    let mut next = || -> Result<serde_json::Value, Error> {
        documents
            .next()
            .ok_or_else(|| Error::Parse("ip printed less than asked".into()))?
            .map_err(|e| Error::Parse(e.to_string()))
    };
    let links: Vec<Link> =
        serde_json::from_value(next()?).map_err(|e| Error::Parse(e.to_string()))?;
    let routes: Vec<Route> =
        serde_json::from_value(next()?).map_err(|e| Error::Parse(e.to_string()))?;
    let Some(link) = links.into_iter().find(|l| {
        l.link_type.as_deref() == Some("ether") && l.addr_info.iter().any(|a| a.ipv4().is_some())
    }) else {
        return Ok(None);
    };
    let gateway = routes
        .iter()
        .find(|r| r.dev.as_deref() == Some(link.ifname.as_str()))
        .and_then(|r| r.gateway);
    Ok(Some((link, gateway)))
}

/// Makes the VM's TAP `tap` (owned by `uid`, so the jailed ember may open it) in
/// the namespace `netns` and joins it to the pod's interface. None when the
/// namespace has no interface with an IPv4 address: the VM then has no network.
pub fn attach(netns: &str, tap: &str, uid: u32) -> Result<Option<PodNetwork>, Error> {
    let ns = open(netns)?;
    let listing = run_in(
        &ns,
        "ip",
        &["-j", "-batch", "-"],
        "addr show\nroute show default\n",
    )?;
    let Some((link, gateway)) = find(&listing)? else {
        return Ok(None);
    };
    let Some((address, prefix_len)) = link
        .addr_info
        .iter()
        .find_map(|a| Some((a.ipv4()?, a.prefixlen)))
    else {
        return Ok(None);
    };
    let interface = link.ifname.clone();
    run_in(
        &ns,
        "ip",
        &["-batch", "-"],
        &format!("tuntap add dev {tap} mode tap user {uid}\nlink set dev {tap} up\n"),
    )?;
    let redirects = format!(
        "qdisc add dev {interface} ingress\n\
         filter add dev {interface} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev {tap}\n\
         qdisc add dev {tap} ingress\n\
         filter add dev {tap} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev {interface}\n"
    );
    if let Err(e) = run_in(&ns, "tc", &["-batch", "-"], &redirects) {
        let _ = run_in(&ns, "ip", &["link", "del", tap], "");
        return Err(e);
    }
    Ok(Some(PodNetwork {
        mac: link.address.clone().unwrap_or_default(),
        address,
        prefix_len,
        gateway,
        interface,
        tap: tap.to_owned(),
    }))
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
    let _ = run_in(&ns, "ip", &["link", "del", &network.tap], "");
    let _ = run_in(
        &ns,
        "tc",
        &["qdisc", "del", "dev", &network.interface, "ingress"],
        "",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_pods_interface_and_gateway_in_ips_output() {
        let listing = r#"[{"ifindex":1,"ifname":"lo","link_type":"loopback","address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},{"ifindex":3,"ifname":"eth0","link_type":"ether","address":"0a:58:0a:58:00:05","addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]
[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]}]
"#;
        let (link, gateway) = find(listing).unwrap().expect("eth0");
        assert_eq!(link.ifname, "eth0");
        assert_eq!(link.address.as_deref(), Some("0a:58:0a:58:00:05"));
        assert_eq!(gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
        let network = PodNetwork {
            interface: link.ifname,
            tap: "tap0".into(),
            mac: link.address.unwrap(),
            address: Ipv4Addr::new(10, 88, 0, 5),
            prefix_len: 16,
            gateway,
        };
        assert_eq!(
            network.boot_arg(),
            "ip=10.88.0.5::10.88.0.1:255.255.0.0::eth0:off"
        );
        let only_loopback =
            "[{\"ifname\":\"lo\",\"link_type\":\"loopback\",\"addr_info\":[]}]\n[]\n";
        assert!(find(only_loopback).unwrap().is_none());
        assert!(matches!(find("[]"), Err(Error::Parse(_))));
    }
}
