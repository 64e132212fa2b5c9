//! Networking for functions: blocking TCP streams, DNS and a small HTTP client over
//! smoltcp and the virtio-net driver ([`crate::virtio::net`]). Like
//! [`HostStream`](crate::function::HostStream), each call blocks while the function
//! runtime keeps serving the invocation connection and the network.
//!
//! The address, netmask, gateway and DNS server come from Linux's `ip=` on the
//! kernel command line ([`crate::cmdline::ip_config`]). Without it the interface
//! stays down (frames are still taken and dropped) and calls fail with
//! [`NetError::NoAddress`].
//!
//! The MMDS ([`MMDS_ADDR`]) is on-link whatever the subnet, as Firecracker guests
//! make it with `ip route add 169.254.169.254 dev eth0`: the interface also takes
//! 169.254.169.253/30, so the stack ARPs for the MMDS (which the host answers) and
//! talks to it from that address. (smoltcp only believes ARP replies from its own
//! subnets, so a plain route would not do.)
//!
//! Parts: `device` (smoltcp's view of the driver), `stack` (interface, sockets,
//! polling and timers), `tcp`, `dns`, [`http`] (the client), `mmds` (requests and
//! tokens) and [`serve`] (the function's HTTP server).

mod device;
mod dns;
pub mod http;
#[cfg(not(any(test, feature = "hosted")))]
pub mod mmds;
pub mod serve;
mod stack;
mod tcp;

use alloc::string::String;
use core::fmt;
pub use core::net::{Ipv4Addr, SocketAddrV4};

#[cfg(not(any(test, feature = "hosted")))]
pub use self::dns::resolve;
pub use self::stack::Stack;
#[cfg(not(any(test, feature = "hosted")))]
pub use self::tcp::TcpStream;
use crate::function;

/// The MMDS's address, as in Firecracker.
pub const MMDS_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// Why a network call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The guest has no virtio-net device.
    NoDevice,
    /// The kernel command line has no `ip=`: the interface is down.
    NoAddress,
    /// Off the client's subnet (and not the MMDS), and `ip=` names no gateway.
    NoRoute(Ipv4Addr),
    /// Port 0 or the unspecified address.
    Unaddressable(SocketAddrV4),
    /// The peer answered the connection request with a reset.
    Refused(SocketAddrV4),
    /// The peer reset the connection, or a panic of the function dropped it.
    Reset,
    /// A write after `TcpStream::shutdown`.
    Closed,
    /// `.0` (`"connect to"`, `"read from"`, `"write to"`) the peer took too long.
    TimedOut(&'static str, SocketAddrV4),
    /// `ip=` names no DNS server.
    NoDnsServer,
    /// A name DNS cannot carry.
    BadName(String),
    /// The server found no address (or never answered, after its retries).
    NoAnswer(String),
    /// The name was not resolved in time.
    DnsTimedOut(String),
    /// An HTTP response the client cannot read, or a request it will not send.
    Http(&'static str),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoDevice => f.write_str("no network: no virtio-net device"),
            NetError::NoAddress => f.write_str("no network: kernel command line has no ip="),
            NetError::NoRoute(ip) => write!(f, "no route to {ip}: ip= names no gateway"),
            NetError::Unaddressable(peer) => write!(f, "cannot connect to {peer}"),
            NetError::Refused(peer) => write!(f, "connect to {peer}: connection refused"),
            NetError::Reset => f.write_str("connection reset"),
            NetError::Closed => f.write_str("connection shut down for writing"),
            NetError::TimedOut(what, peer) => write!(f, "{what} {peer} timed out"),
            NetError::NoDnsServer => f.write_str("dns: no server: ip= names no dns0"),
            NetError::BadName(name) => write!(f, "dns: bad name {name}"),
            NetError::NoAnswer(name) => write!(f, "dns: no answer for {name}"),
            NetError::DnsTimedOut(name) => write!(f, "dns: timed out resolving {name}"),
            NetError::Http(what) => write!(f, "http: {what}"),
        }
    }
}

impl From<NetError> for function::Error {
    fn from(err: NetError) -> function::Error {
        function::Error::new(alloc::format!("{err}"))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn errors_say_what_failed() {
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80);
        for (err, message) in [
            (
                NetError::NoAddress,
                "no network: kernel command line has no ip=",
            ),
            (
                NetError::TimedOut("connect to", peer),
                "connect to 10.0.0.1:80 timed out",
            ),
            (
                NetError::Refused(peer),
                "connect to 10.0.0.1:80: connection refused",
            ),
            (NetError::NoAnswer("x".into()), "dns: no answer for x"),
        ] {
            assert_eq!(function::Error::from(err).message(), message);
        }
    }
}
