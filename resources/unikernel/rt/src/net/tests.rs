//! The stack over the driver over a fake device, whose other end is a second
//! smoltcp interface (the peer): frames the guest sends reach the peer, the peer's
//! come back through the receive queue, spread over several buffers when long.

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpCidr, IpEndpoint};

use super::*;
use crate::cmdline::IpConfig;
use crate::virtio::F_VERSION_1;
use crate::virtio::fake::FakeTransport;
use crate::virtio::net::{HEADER_LEN, Net};

const RX: u32 = 0;
const TX: u32 = 1;
/// VERSION_1, MAC, MTU and MRG_RXBUF.
const FEATURES: u64 = F_VERSION_1 | 1 << 5 | 1 << 3 | 1 << 15;
/// Large enough that the peer's frames take two receive buffers (8 KiB each).
const MTU: u16 = 9000;
/// The TSC runs at 1 GHz here: a tick is a nanosecond.
const KHZ: u64 = 1_000_000;

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// The peer's end of the wire.
#[derive(Default)]
struct PeerDevice {
    inbox: VecDeque<Vec<u8>>,
    outbox: Vec<Vec<u8>>,
}

struct PeerRx(Vec<u8>);
struct PeerTx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for PeerRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for PeerTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

impl phy::Device for PeerDevice {
    type RxToken<'a> = PeerRx;
    type TxToken<'a> = PeerTx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(PeerRx, PeerTx<'_>)> {
        let frame = self.inbox.pop_front()?;
        Some((PeerRx(frame), PeerTx(&mut self.outbox)))
    }

    fn transmit(&mut self, _: Instant) -> Option<PeerTx<'_>> {
        Some(PeerTx(&mut self.outbox))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 14 + usize::from(MTU);
        caps
    }
}

/// The guest's stack, the fake device under it, and the peer on the wire.
struct Wire {
    fake: FakeTransport,
    stack: Stack<FakeTransport>,
    peer: Interface,
    peer_device: PeerDevice,
    peer_sockets: SocketSet<'static>,
    /// TSC ticks (nanoseconds) since boot.
    now: u64,
}

impl Wire {
    /// A guest configured as `config`, and a peer at `peer` (its subnet a /16).
    fn new(config: Option<IpConfig>, peer: Ipv4Addr) -> Wire {
        Wire::with_mtu(config, peer, MTU)
    }

    /// The same with a guest MTU of `mtu` (the peer's stays [`MTU`]).
    fn with_mtu(config: Option<IpConfig>, peer: Ipv4Addr, mtu: u16) -> Wire {
        let mut net_config = vec![0x06, 0, 0, 0, 0, 2, 0, 0, 0, 0];
        net_config.extend_from_slice(&mtu.to_le_bytes());
        let fake = FakeTransport::new(FEATURES, &[64, 64], &net_config);
        let stack = Stack::new(Net::new(fake.clone()).unwrap(), config, 0, KHZ);
        let mut peer_device = PeerDevice::default();
        let mac = EthernetAddress([0x06, 0, 0, 0, 0, 1]);
        let mut peer_iface =
            Interface::new(Config::new(mac.into()), &mut peer_device, Instant::ZERO);
        peer_iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(peer.into(), 16)).unwrap());
        Wire {
            fake,
            stack,
            peer: peer_iface,
            peer_device,
            peer_sockets: SocketSet::new(Vec::new()),
            now: 0,
        }
    }

    /// A peer socket listening on `port`.
    fn listen(&mut self, port: u16) -> SocketHandle {
        let buffer = || tcp::SocketBuffer::new(vec![0; 1 << 20]);
        let mut socket = tcp::Socket::new(buffer(), buffer());
        socket.listen(port).unwrap();
        self.peer_sockets.add(socket)
    }

    fn peer_socket(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.peer_sockets.get_mut(handle)
    }

    /// Lets frames cross both ways until the wire is quiet, 1 ms passing per round.
    fn run(&mut self) {
        for _ in 0..100 {
            self.now += 1_000_000;
            let at = Instant::from_micros(i64::try_from(self.now / 1000).unwrap());
            let guest_moved = self.stack.poll(self.now);
            while let Some(chain) = self.fake.pop_avail(TX) {
                let bytes = chain.read(0);
                assert_eq!(
                    bytes[..HEADER_LEN],
                    [0; HEADER_LEN],
                    "transmit headers are zero"
                );
                self.peer_device
                    .inbox
                    .push_back(bytes[HEADER_LEN..].to_vec());
                self.fake.complete(TX, &chain, 0);
            }
            self.peer
                .poll(at, &mut self.peer_device, &mut self.peer_sockets);
            let frames = core::mem::take(&mut self.peer_device.outbox);
            for frame in &frames {
                self.deliver(frame);
            }
            if !guest_moved && frames.is_empty() && !self.stack.has_used() {
                return;
            }
        }
        panic!("the wire never went quiet");
    }

    /// Writes `frame` into as many receive buffers as it takes, as a device with
    /// merged buffers does.
    fn deliver(&self, frame: &[u8]) {
        let mut packet = vec![0; HEADER_LEN];
        packet.extend_from_slice(frame);
        let count = u16::try_from(packet.len().div_ceil(8192)).unwrap();
        packet[10..12].copy_from_slice(&count.to_le_bytes());
        for part in packet.chunks(8192) {
            let chain = self.fake.pop_avail(RX).expect("a receive buffer");
            chain.write(0, part);
            self.fake
                .complete(RX, &chain, u32::try_from(part.len()).unwrap());
        }
    }
}

fn config(address: Ipv4Addr, prefix_len: u8, gateway: Option<Ipv4Addr>) -> Option<IpConfig> {
    Some(IpConfig {
        address,
        prefix_len,
        gateway,
        dns: None,
    })
}

#[test]
fn connects_and_moves_data_both_ways() {
    let mut wire = Wire::new(config(ip(10, 0, 0, 2), 24, None), ip(10, 0, 0, 1));
    let listener = wire.listen(80);
    let id = wire
        .stack
        .connect(SocketAddrV4::new(ip(10, 0, 0, 1), 80))
        .unwrap();
    assert_eq!(wire.stack.connected(id), None);
    wire.run();
    assert_eq!(wire.stack.connected(id), Some(true));
    assert!(wire.peer_socket(listener).is_active());

    // Guest to peer, in MTU-sized frames.
    let request: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert_eq!(wire.stack.send(id, &request), Ok(request.len()));
    wire.run();
    let mut got = vec![0; 200_000];
    let n = wire.peer_socket(listener).recv_slice(&mut got).unwrap();
    assert_eq!(got[..n], request);

    // Peer to guest, each frame in two receive buffers; then the peer's close.
    let response: Vec<u8> = (0..=250u8).cycle().take(50_000).collect();
    wire.peer_socket(listener).send_slice(&response).unwrap();
    wire.peer_socket(listener).close();
    wire.run();
    let mut buf = vec![0; 200_000];
    assert_eq!(wire.stack.recv(id, &mut buf), Some(Ok(response.len())));
    assert_eq!(buf[..response.len()], response);
    assert_eq!(wire.stack.recv(id, &mut buf), Some(Ok(0)), "end of stream");

    // Dropped after the peer's close: the close completes and the socket goes.
    wire.stack.release(id);
    wire.run();
    assert_eq!(wire.stack.sockets.iter().count(), 0);
    assert_eq!(
        wire.stack.recv(id, &mut buf),
        Some(Err(NetError::Reset)),
        "a stale id"
    );
    assert_eq!(wire.stack.deadline(wire.now), None, "idle: no timer");
}

#[test]
fn sends_in_rounds_without_sleeping_between_them() {
    let guest = config(ip(10, 0, 0, 2), 24, None);
    let mut wire = Wire::with_mtu(guest, ip(10, 0, 0, 1), 1500);
    let listener = wire.listen(80);
    let id = wire
        .stack
        .connect(SocketAddrV4::new(ip(10, 0, 0, 1), 80))
        .unwrap();
    wire.run();
    let data = vec![7; 200_000];
    assert_eq!(wire.stack.send(id, &data), Ok(data.len()));
    wire.fake.take_notified();
    wire.stack.poll(wire.now);
    assert_eq!(
        wire.fake.take_notified(),
        [TX],
        "one notification for the batch"
    );
    assert!(
        wire.stack.has_used(),
        "more segments due than one poll sends"
    );
    wire.run();
    assert!(!wire.stack.has_used());
    let mut got = vec![0; 300_000];
    assert_eq!(
        wire.peer_socket(listener).recv_slice(&mut got),
        Ok(data.len())
    );
}

#[test]
fn reaches_the_mmds_on_link_from_another_subnet() {
    let gateway = Some(ip(172, 16, 0, 1));
    let mut wire = Wire::new(config(ip(172, 16, 0, 2), 30, gateway), MMDS_ADDR);
    let listener = wire.listen(80);
    let id = wire
        .stack
        .connect(SocketAddrV4::new(MMDS_ADDR, 80))
        .unwrap();
    wire.run();
    assert_eq!(wire.stack.connected(id), Some(true));
    let guest = IpEndpoint::new(ip(169, 254, 169, 253).into(), 0);
    let from = wire.peer_socket(listener).remote_endpoint().unwrap();
    assert_eq!(from.addr, guest.addr);
}

#[test]
fn reports_a_refused_connection_and_keeps_timers_only_while_needed() {
    let mut wire = Wire::new(config(ip(10, 0, 0, 2), 24, None), ip(10, 0, 0, 1));
    assert_eq!(wire.stack.deadline(wire.now), None);
    let id = wire
        .stack
        .connect(SocketAddrV4::new(ip(10, 0, 0, 1), 81))
        .unwrap();
    // Before any frame moved: the SYN (after ARP) is due.
    assert!(wire.stack.deadline(wire.now).is_some());
    wire.run();
    assert_eq!(wire.stack.connected(id), Some(false));
    wire.stack.release(id);
    wire.run();
    assert_eq!(wire.stack.deadline(wire.now), None);
}

#[test]
fn waits_for_retransmissions_when_nobody_answers() {
    let mut wire = Wire::new(config(ip(10, 0, 0, 2), 24, None), ip(10, 9, 9, 9));
    let id = wire
        .stack
        .connect(SocketAddrV4::new(ip(10, 0, 0, 7), 80))
        .unwrap();
    wire.stack.poll(wire.now);
    // An ARP request went out; the stack wants to try again later, not now.
    assert_eq!(
        wire.fake
            .pop_avail(TX)
            .map(|chain| chain.read(0)[HEADER_LEN + 12..HEADER_LEN + 14].to_vec()),
        Some(vec![0x08, 0x06])
    );
    let deadline = wire.stack.deadline(wire.now).unwrap();
    assert!(deadline > wire.now);
    wire.stack.abort(id);
    assert_eq!(wire.stack.connected(id), Some(false));
}

#[test]
fn refuses_what_it_cannot_reach() {
    let peer = SocketAddrV4::new(ip(8, 8, 8, 8), 53);
    let mut down = Wire::new(None, ip(10, 0, 0, 1));
    assert_eq!(down.stack.connect(peer), Err(NetError::NoAddress));
    assert_eq!(
        down.stack.start_query("example.com"),
        Err(NetError::NoAddress)
    );
    let mut wire = Wire::new(config(ip(10, 0, 0, 2), 24, None), ip(10, 0, 0, 1));
    assert_eq!(
        wire.stack.connect(peer),
        Err(NetError::NoRoute(ip(8, 8, 8, 8)))
    );
    let nowhere = SocketAddrV4::new(ip(10, 0, 0, 1), 0);
    assert_eq!(
        wire.stack.connect(nowhere),
        Err(NetError::Unaddressable(nowhere))
    );
    assert_eq!(
        wire.stack.start_query("example.com"),
        Err(NetError::NoDnsServer)
    );
    let dns = Some(IpConfig {
        dns: Some(ip(10, 0, 0, 1)),
        ..config(ip(10, 0, 0, 2), 24, None).unwrap()
    });
    let mut wire = Wire::new(dns, ip(10, 0, 0, 1));
    assert_eq!(
        wire.stack.start_query("a..b"),
        Err(NetError::BadName("a..b".into()))
    );
    wire.stack.start_query("example.com").unwrap();
    assert_eq!(wire.stack.query_result("example.com"), None);
    wire.stack.cancel_query();
    assert_eq!(
        wire.stack.query_result("example.com"),
        Some(Err(NetError::NoAnswer("example.com".into())))
    );
}

#[test]
fn takes_a_bounded_number_of_frames_per_poll() {
    let mut wire = Wire::new(config(ip(10, 0, 0, 2), 24, None), ip(10, 0, 0, 1));
    // Broadcast frames of an unknown type, dropped.
    for _ in 0..40 {
        wire.deliver(&[0xff; 60]);
    }
    assert!(wire.stack.poll(wire.now));
    assert!(wire.stack.has_used(), "more than one poll takes");
    assert!(wire.stack.poll(wire.now));
    assert!(!wire.stack.has_used());
}
