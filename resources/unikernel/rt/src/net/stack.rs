//! The TCP/IP stack: smoltcp's interface and sockets over the virtio-net driver,
//! polled by the function runtime with bounded work, and the TSC deadline its
//! timers want.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::net::Ipv4Addr;
use core::time::Duration;

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::{Socket, dns, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, Ipv4Cidr};

use super::MMDS_ADDR;
use super::serve::HttpServer;
use crate::cmdline::IpConfig;
use crate::time;
use crate::virtio::net::Net;
use crate::virtio::{DeviceTransport, Transport};

/// Frames taken, and rounds of sending, per poll at most; the rest wait for the
/// next (the serving loop polls again before it sleeps), so that a flood does not
/// starve the invocation connection.
const MAX_WORK_PER_POLL: usize = 32;
/// The MMDS's link: a /30 holding it and the address the guest talks to it from.
const MMDS_LINK: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(169, 254, 169, 253), 30);
/// How soon to poll again when the stack is due but could not act just now (no
/// transmit slot free, say): never a busy loop.
const RETRY: Duration = Duration::from_millis(1);
/// Local ports of streams: the dynamic range.
const EPHEMERAL: core::ops::RangeInclusive<u16> = 49152..=65535;

/// The interface, its sockets and the device under them.
pub struct Stack<T: Transport = DeviceTransport> {
    device: Net<T>,
    pub(super) iface: Interface,
    pub(super) sockets: SocketSet<'static>,
    pub(super) config: Option<IpConfig>,
    /// TSC frequency, for smoltcp's clock.
    khz: u64,
    /// The last poll stopped sending at its bound: more may be due at once.
    sending: bool,
    /// The function's streams by id (never reused, so a stale id finds nothing).
    pub(super) streams: Vec<(u64, SocketHandle)>,
    pub(super) next_id: u64,
    next_port: u16,
    /// Streams the function dropped, closing on their own, oldest first.
    pub(super) lingering: VecDeque<SocketHandle>,
    /// The DNS socket (given a server) and its query in flight.
    pub(super) dns: Option<SocketHandle>,
    pub(super) query: Option<dns::QueryHandle>,
    /// The function's HTTP server, if the command line asks for one.
    pub(super) http: Option<HttpServer>,
}

impl<T: Transport> Stack<T> {
    /// The stack on `device`, addressed as `config` says (down without it), at TSC
    /// value `tsc` of a TSC running at `khz`.
    pub fn new(mut device: Net<T>, config: Option<IpConfig>, tsc: u64, khz: u64) -> Stack<T> {
        let seed = seed(tsc);
        let mac = device.mac().unwrap_or_else(|| random_mac(seed));
        let mut iface_config = Config::new(EthernetAddress(mac).into());
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, instant(tsc, khz));
        let mut sockets = SocketSet::new(Vec::new());
        let mut dns = None;
        if let Some(config) = config {
            address(&mut iface, config);
            dns = config
                .dns
                .map(|server| sockets.add(dns::Socket::new(&[server.into()], Vec::new())));
        }
        let span = u64::from(EPHEMERAL.end() - EPHEMERAL.start());
        Stack {
            device,
            iface,
            sockets,
            config,
            khz,
            sending: false,
            streams: Vec::new(),
            next_id: 0,
            next_port: EPHEMERAL.start() + u16::try_from(seed % span).unwrap_or(0),
            lingering: VecDeque::new(),
            dns,
            query: None,
            http: None,
        }
    }

    /// Moves frames both ways (at most [`MAX_WORK_PER_POLL`] received, and rounds
    /// of sending) and drops lingering streams that have closed. Returns whether
    /// frames moved.
    pub fn poll(&mut self, tsc: u64) -> bool {
        let now = instant(tsc, self.khz);
        self.device.disable_interrupts();
        let mut moved = self.device.reclaim();
        for _ in 0..MAX_WORK_PER_POLL {
            let ingress = self
                .iface
                .poll_ingress_single(now, &mut self.device, &mut self.sockets);
            if ingress == PollIngressSingleResult::None {
                break;
            }
            moved = true;
        }
        self.advance_http(tsc);
        // Each round sends at most one segment per socket.
        self.sending = (0..MAX_WORK_PER_POLL).all(|_| {
            let egress = self
                .iface
                .poll_egress(now, &mut self.device, &mut self.sockets);
            egress == PollResult::SocketStateChanged
        });
        self.reap();
        moved | self.device.kick()
    }

    /// The TSC value by which the stack's timers (retransmissions, delayed ACKs,
    /// DNS retries, closing streams) want a poll; `None` if none is pending. Asked
    /// right after a poll: if the stack is still due it could not act, and it waits
    /// [`RETRY`] (or an interrupt).
    pub fn deadline(&mut self, tsc: u64) -> Option<u64> {
        let now = instant(tsc, self.khz);
        let at = self.iface.poll_at(now, &self.sockets)?;
        let wait = if at > now {
            Duration::from_micros((at - now).total_micros())
        } else {
            RETRY
        };
        Some(tsc.saturating_add(time::ticks_at(wait, self.khz)))
    }

    /// Whether there is work for the stack: frames from the device, or segments the
    /// last poll left unsent (it must poll again rather than sleep). Memory reads
    /// only, for polling.
    pub fn has_used(&self) -> bool {
        self.sending || self.device.has_used()
    }

    /// See [`Net::enable_interrupts`].
    pub fn enable_interrupts(&mut self) -> bool {
        self.device.enable_interrupts()
    }

    /// See [`Net::ack_interrupt`].
    pub fn ack_interrupt(&mut self) -> u64 {
        self.device.ack_interrupt()
    }

    /// Forgets every neighbour's MAC address, as after a snapshot restore: the
    /// guest may now be a clone on another TAP, whose host side answers from
    /// another address, and smoltcp would keep sending to the old one until
    /// its cache entries expired (a minute).
    pub fn forget_neighbors(&mut self, tsc: u64) {
        self.new_interface(self.iface.hardware_addr(), tsc);
    }

    /// Replaces the interface with a fresh one (no neighbours) at hardware
    /// address `mac`, addressed as `self.config` says.
    fn new_interface(&mut self, mac: HardwareAddress, tsc: u64) {
        let mut iface_config = Config::new(mac);
        iface_config.random_seed = seed(tsc);
        self.iface = Interface::new(iface_config, &mut self.device, instant(tsc, self.khz));
        if let Some(config) = self.config {
            address(&mut self.iface, config);
        }
    }

    /// Takes another address and MAC address, as a clone restored from a snapshot
    /// does: the snapshot's belong to the VM it was taken from. Every connection
    /// goes (their peers knew that VM); listening goes on.
    pub fn readdress(&mut self, config: IpConfig, mac: [u8; 6], tsc: u64) {
        self.abort_all();
        self.abort_http_all();
        if let Some(dns) = self.dns.take() {
            self.sockets.remove(dns);
        }
        self.dns = config.dns.map(|server| {
            self.sockets
                .add(dns::Socket::new(&[server.into()], Vec::new()))
        });
        self.config = Some(config);
        self.new_interface(EthernetAddress(mac).into(), tsc);
    }

    /// Resets every stream and drops the DNS query: the function that held them
    /// panicked, and its frames are gone.
    pub fn abort_all(&mut self) {
        for (_, handle) in core::mem::take(&mut self.streams) {
            self.sockets.get_mut::<tcp::Socket>(handle).abort();
            self.lingering.push_back(handle);
        }
        self.cancel_query();
    }

    /// Drops lingering streams once closed, TIME-WAIT included: its one duty,
    /// answering a retransmitted FIN, is not worth a timer.
    fn reap(&mut self) {
        let Stack {
            lingering, sockets, ..
        } = self;
        lingering.retain(|&handle| {
            let state = sockets.get::<tcp::Socket>(handle).state();
            let closed = matches!(state, tcp::State::Closed | tcp::State::TimeWait);
            if closed {
                sockets.remove(handle);
            }
            !closed
        });
    }

    /// A local port no socket uses, from a rotating start.
    pub(super) fn local_port(&mut self) -> u16 {
        let candidates = core::iter::successors(Some(self.next_port), |&p| Some(next_port(p)));
        let port = candidates
            .take(EPHEMERAL.len())
            .find(|&port| !self.port_in_use(port))
            .unwrap_or(self.next_port);
        self.next_port = next_port(port);
        port
    }

    fn port_in_use(&self, port: u16) -> bool {
        self.sockets.iter().any(|(_, socket)| match socket {
            Socket::Tcp(tcp) => tcp.local_endpoint().is_some_and(|e| e.port == port),
            _ => false,
        })
    }
}

/// The port after `port` in the dynamic range, wrapping around.
fn next_port(port: u16) -> u16 {
    if port >= *EPHEMERAL.end() {
        *EPHEMERAL.start()
    } else {
        port + 1
    }
}

/// Gives the interface its address, the MMDS link (unless the MMDS is on the
/// client's subnet already) and the default route.
fn address(iface: &mut Interface, config: IpConfig) {
    let own = Ipv4Cidr::new(config.address, config.prefix_len);
    iface.update_ip_addrs(|addrs| {
        // Both fit: smoltcp keeps two addresses.
        let _ = addrs.push(own.into());
        if !config.on_link(MMDS_ADDR) {
            let _ = addrs.push(MMDS_LINK.into());
        }
    });
    if let Some(gateway) = config.gateway {
        // The table is empty, with room for two.
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
    }
}

/// Randomness for smoltcp (initial sequence numbers, DNS ids and ports): RDRAND
/// where the CPU has it (it runs natively in ring 3), else only the boot-time TSC.
fn seed(tsc: u64) -> u64 {
    const ECX_RDRAND: u32 = 1 << 30;
    if core::arch::x86_64::__cpuid(1).ecx & ECX_RDRAND == 0 {
        return tsc;
    }
    // SAFETY: the CPU has RDRAND, as CPUID says.
    unsafe { rdrand() }.map_or(tsc, |random| random ^ tsc)
}

/// A random number, unless RDRAND keeps failing (it may, briefly, under load).
#[target_feature(enable = "rdrand")]
fn rdrand() -> Option<u64> {
    let mut value = 0;
    (0..10).find_map(|_| (core::arch::x86_64::_rdrand64_step(&mut value) == 1).then_some(value))
}

/// smoltcp's clock: microseconds of TSC time.
fn instant(tsc: u64, khz: u64) -> Instant {
    Instant::from_micros(i64::try_from(time::nanos_at(tsc, khz) / 1000).unwrap_or(i64::MAX))
}

/// A locally administered unicast MAC address, for a device that assigns none.
fn random_mac(seed: u64) -> [u8; 6] {
    let [a, b, c, d, e, ..] = seed.to_le_bytes();
    [0x02, a, b, c, d, e]
}
