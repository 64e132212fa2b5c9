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

mod http_server {
    use super::*;
    use crate::net::serve::{self, Head, Reject, Written};

    const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    /// A guest serving HTTP on 8080 and a peer to call it from.
    fn serving() -> Wire {
        let mut wire = Wire::new(config(GUEST, 24, None), ip(10, 0, 0, 1));
        wire.stack.serve_http(8080, 1 << 20);
        wire
    }

    impl Wire {
        /// A peer connection to the guest's HTTP port.
        fn call(&mut self, local_port: u16) -> SocketHandle {
            let buffer = || tcp::SocketBuffer::new(vec![0; 1 << 20]);
            let mut socket = tcp::Socket::new(buffer(), buffer());
            socket
                .connect(
                    self.peer.context(),
                    IpEndpoint::new(GUEST.into(), 8080),
                    local_port,
                )
                .unwrap();
            let handle = self.peer_sockets.add(socket);
            self.run();
            assert!(self.peer_socket(handle).may_send(), "connected");
            handle
        }

        fn send(&mut self, handle: SocketHandle, bytes: &[u8]) {
            assert_eq!(self.peer_socket(handle).send_slice(bytes), Ok(bytes.len()));
            self.run();
        }

        fn received(&mut self, handle: SocketHandle) -> String {
            let mut buf = vec![0; 1 << 20];
            let n = self.peer_socket(handle).recv_slice(&mut buf).unwrap_or(0);
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        /// Answers the next request with `code` and `body`; returns its input.
        fn answer(&mut self, code: u16, body: &[u8]) -> Vec<u8> {
            let (id, input) = self.stack.take_http_request().expect("a request");
            self.stack.start_http_response(id, code, body.len());
            assert_eq!(
                self.stack.write_http_response(id, body, self.now),
                Written::Done
            );
            self.run();
            input
        }
    }

    #[test]
    fn answers_posts_on_a_kept_alive_connection() {
        let mut wire = serving();
        let client = wire.call(40000);
        // Two requests, the second pipelined in the same segment.
        wire.send(
            client,
            b"POST /fn HTTP/1.1\r\nHost: g\r\nContent-Length: 5\r\n\r\nhello\
              POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nbye",
        );
        assert_eq!(wire.answer(200, b"HELLO"), b"hello");
        assert_eq!(
            wire.received(client),
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: 5\r\n\r\nHELLO"
        );
        assert_eq!(wire.answer(500, b"no"), b"bye");
        assert_eq!(
            wire.received(client),
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; \
             charset=utf-8\r\nContent-Length: 2\r\n\r\nno"
        );
        assert!(wire.peer_socket(client).may_recv(), "kept alive");
        assert!(wire.stack.take_http_request().is_none());
    }

    #[test]
    fn serves_several_clients_and_closes_when_asked() {
        let mut wire = serving();
        let first = wire.call(40001);
        let second = wire.call(40002);
        wire.send(second, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        wire.send(first, b"PUT / HTTP/1.0\r\nContent-Length: 1\r\n\r\n1");
        // In the order they completed.
        assert_eq!(wire.answer(200, b"a"), b"");
        assert!(
            wire.received(second)
                .ends_with("Connection: close\r\n\r\na")
        );
        assert!(!wire.peer_socket(second).may_recv(), "closed");
        assert_eq!(wire.answer(200, b"b"), b"1");
        assert!(wire.received(first).ends_with("\r\n\r\nb"));
        assert!(!wire.peer_socket(first).may_recv(), "HTTP/1.0 closes");
    }

    #[test]
    fn says_continue_before_a_body_it_waits_for() {
        let mut wire = serving();
        let client = wire.call(40003);
        wire.send(
            client,
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
        );
        assert_eq!(wire.received(client), "HTTP/1.1 100 Continue\r\n\r\n");
        assert!(wire.stack.take_http_request().is_none());
        wire.send(client, b"data");
        assert_eq!(wire.answer(200, b""), b"data");
    }

    #[test]
    fn answers_bad_requests_itself_and_closes() {
        for (request, status) in [
            (&b"DELETE / HTTP/1.1\r\n\r\n"[..], "405 Method Not Allowed"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "411 Length Required",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
                "413 Content Too Large",
            ),
            (b"\x01\x02 nonsense\r\n\r\n", "400 Bad Request"),
        ] {
            let mut wire = serving();
            let client = wire.call(40004);
            wire.send(client, request);
            let answer = wire.received(client);
            assert!(
                answer.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{answer}"
            );
            assert!(
                !wire.peer_socket(client).may_recv(),
                "closed after {status}"
            );
            assert!(wire.stack.take_http_request().is_none());
        }
    }

    #[test]
    fn keeps_room_for_new_clients_by_closing_idle_ones() {
        let mut wire = serving();
        let idle: Vec<SocketHandle> = (0..serve::MAX_CONNECTIONS)
            .map(|i| wire.call(41000 + u16::try_from(i).unwrap()))
            .collect();
        let late = wire.call(42000);
        wire.send(late, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(wire.answer(200, b"late"), b"");
        assert!(wire.received(late).ends_with("late"));
        let closed = idle
            .iter()
            .filter(|&&h| !wire.peer_socket(h).may_recv())
            .count();
        assert!(closed >= 1, "an idle connection made room");
        let open = wire
            .stack
            .sockets
            .iter()
            .filter(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(t) if t.is_open()))
            .count();
        assert!(open <= serve::MAX_CONNECTIONS + 8, "{open} sockets");
    }

    #[test]
    fn a_restored_clone_takes_its_new_address_and_keeps_listening() {
        let mut wire = serving();
        wire.call(40005);
        // Past the peer's one-second pause between ARP requests.
        wire.now += 2_000_000_000;
        let clone = Ipv4Addr::new(10, 0, 0, 3);
        wire.stack.readdress(
            config(clone, 24, None).unwrap(),
            [2, 0, 0, 0, 0, 3],
            wire.now,
        );
        wire.run();
        assert_eq!(
            wire.stack.iface.hardware_addr(),
            EthernetAddress([2, 0, 0, 0, 0, 3]).into()
        );
        let buffer = || tcp::SocketBuffer::new(vec![0; 4096]);
        let mut socket = tcp::Socket::new(buffer(), buffer());
        let context = wire.peer.context();
        socket
            .connect(context, IpEndpoint::new(clone.into(), 8080), 40006)
            .unwrap();
        let again = wire.peer_sockets.add(socket);
        wire.run();
        wire.send(again, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(wire.answer(200, b"clone"), b"");
        assert!(wire.received(again).ends_with("clone"));
    }

    #[test]
    fn parses_heads_within_bounds() {
        let head = b"POST / HTTP/1.1\r\nContent-Length: 10\r\nConnection: close\r\n\r\n";
        assert_eq!(
            serve::parse_head(head, 10),
            Ok(Some(Head {
                len: head.len(),
                body_len: 10,
                keep_alive: false,
                expects_continue: false,
            }))
        );
        assert_eq!(serve::parse_head(head, 9), Err(Reject::TooLarge));
        assert_eq!(serve::parse_head(&head[..20], 10), Ok(None));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(serve::MAX_HEAD, b'a');
        assert_eq!(serve::parse_head(&long, 10), Err(Reject::HeadTooLarge));
        assert_eq!(
            serve::parse_head(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                10
            ),
            Err(Reject::BadRequest)
        );
    }
}
