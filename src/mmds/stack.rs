//! MMDS's end of the guest's link: a smoltcp interface at the service's
//! address, fed the frames a net device detours to it, serving HTTP on port
//! 80 from [`super::http`]. It answers ARP for the address and never
//! originates traffic of its own, so it needs no timer: it runs when the
//! guest sends it a frame or takes its answers.
//!
//! Work and memory are bounded whatever the guest sends: a few connections
//! with small buffers, a capped queue of frames each way, and requests of
//! at most [`http::MAX_REQUEST_BYTES`].

use std::collections::VecDeque;
use std::time::Instant as StdInstant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use super::http::{self, Parsed};
use super::SharedMmds;

/// The service's MAC address (locally administered), as in Firecracker.
const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
const HTTP_PORT: u16 = 80;
/// Connections open at once; more are refused (RST) until one ends.
const CONNECTIONS: usize = 8;
const SOCKET_RX_BYTES: usize = http::MAX_REQUEST_BYTES;
const SOCKET_TX_BYTES: usize = 16 * 1024;
/// Frames queued each way before the stack stops taking or making more.
const MAX_QUEUED_FRAMES: usize = 64;
/// Largest frame the endpoint sends or takes, as on a 1500-byte MTU link.
const MTU: usize = 1514;
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];

/// The frames between the device and the interface.
#[derive(Default)]
struct Link {
    from_guest: VecDeque<Vec<u8>>,
    to_guest: VecDeque<Vec<u8>>,
}

/// One connection's HTTP state: request bytes not yet answered, the answer
/// bytes the socket has not taken yet, and when bytes last moved.
struct Conn {
    request: Vec<u8>,
    reply: VecDeque<u8>,
    close_after_reply: bool,
    last_active: StdInstant,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            request: Vec::new(),
            reply: VecDeque::new(),
            close_after_reply: false,
            last_active: StdInstant::now(),
        }
    }
}

/// The interface and its sockets, made on the first frame for the service.
struct Endpoint {
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: Vec<(SocketHandle, Conn)>,
}

pub struct MmdsStack {
    address: [u8; 4],
    mmds: SharedMmds,
    link: Link,
    endpoint: Option<Endpoint>,
    origin: StdInstant,
}

impl MmdsStack {
    pub fn new(address: [u8; 4], mmds: SharedMmds) -> Self {
        MmdsStack {
            address,
            mmds,
            link: Link::default(),
            endpoint: None,
            origin: StdInstant::now(),
        }
    }

    /// Whether an Ethernet frame from the guest is for the service: ARP about
    /// its address, or IPv4 to it (whatever the destination MAC, so a guest
    /// that routes the address through its gateway reaches it too).
    pub fn is_for_mmds(&self, frame: &[u8]) -> bool {
        let ethertype = frame.get(12..14);
        let target = if ethertype == Some(&ETHERTYPE_ARP) {
            frame.get(38..42)
        } else if ethertype == Some(&ETHERTYPE_IPV4) {
            frame.get(30..34)
        } else {
            None
        };
        target == Some(&self.address)
    }

    /// Takes a frame [`is_for_mmds`](Self::is_for_mmds) picked, and runs the stack.
    pub fn receive(&mut self, frame: &[u8]) {
        if self.link.from_guest.len() >= MAX_QUEUED_FRAMES || frame.len() > MTU {
            return;
        }
        let mut frame = frame.to_vec();
        if frame[0] & 1 == 0 {
            // Unicast to any MAC (the gateway's, say) is for the endpoint.
            frame[..6].copy_from_slice(&MMDS_MAC);
        }
        self.link.from_guest.push_back(frame);
        self.poll();
    }

    /// The next frame for the guest, if any; taking it lets the stack go on.
    pub fn pop_reply(&mut self) -> Option<Vec<u8>> {
        let frame = self.link.to_guest.pop_front();
        if frame.is_some() && self.link.to_guest.is_empty() {
            self.poll();
        }
        frame
    }

    /// The driver reset the device: every connection is gone.
    pub fn reset(&mut self) {
        self.link = Link::default();
        self.endpoint = None;
    }

    fn poll(&mut self) {
        let now = Instant::from_micros(
            i64::try_from(self.origin.elapsed().as_micros()).unwrap_or(i64::MAX),
        );
        let address = self.address;
        let endpoint = self
            .endpoint
            .get_or_insert_with(|| Endpoint::new(address, &mut self.link, now));
        if self.link.from_guest.iter().any(|f| is_syn(f)) {
            endpoint.keep_one_listening();
        }
        // Bounded: each round either moves a queued frame or answers bytes the
        // guest sent, and both queues are capped.
        for _ in 0..MAX_QUEUED_FRAMES {
            endpoint
                .iface
                .poll(now, &mut self.link, &mut endpoint.sockets);
            let Some(mut mmds) = self.mmds.lock() else {
                return;
            };
            let moved = endpoint.serve(&mut mmds, self.origin);
            if !moved {
                return;
            }
        }
    }
}

impl Endpoint {
    fn new(address: [u8; 4], link: &mut Link, now: Instant) -> Self {
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MMDS_MAC)));
        let mut iface = Interface::new(config, link, now);
        // A /0 prefix puts every guest address on the link: the endpoint
        // answers whoever asks, whatever subnet the guest configured.
        iface.update_ip_addrs(|addrs| {
            let [a, b, c, d] = address;
            let _ = addrs.push(IpCidr::new(Ipv4Address::new(a, b, c, d).into(), 0));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let conns = (0..CONNECTIONS)
            .map(|_| {
                let mut socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; SOCKET_RX_BYTES]),
                    tcp::SocketBuffer::new(vec![0; SOCKET_TX_BYTES]),
                );
                // Nothing would come back to send a delayed ACK later.
                socket.set_ack_delay(None);
                socket.set_nagle_enabled(false);
                let _ = socket.listen(HTTP_PORT);
                (sockets.add(socket), Conn::default())
            })
            .collect();
        Endpoint {
            iface,
            sockets,
            conns,
        }
    }

    /// Makes sure a connection attempt finds a listening socket: with every
    /// socket taken (by clients that went quiet, say, since nothing times
    /// them out), the one idle longest is dropped for the newcomer (its
    /// client gets a reset when it next sends).
    fn keep_one_listening(&mut self) {
        let sockets = &mut self.sockets;
        if self
            .conns
            .iter()
            .any(|(h, _)| sockets.get::<tcp::Socket>(*h).is_listening())
        {
            return;
        }
        if let Some((handle, conn)) = self.conns.iter_mut().min_by_key(|(_, c)| c.last_active) {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            socket.abort();
            *conn = Conn::default();
            let _ = socket.listen(HTTP_PORT);
        }
    }

    /// Reads requests and answers them one at a time, each once the last is
    /// sent, so a guest that pipelines requests and never takes the answers
    /// holds up only its own connection; sends what fits; listens again on
    /// sockets whose connection ended. Returns whether anything moved.
    fn serve(&mut self, mmds: &mut super::Mmds, origin: StdInstant) -> bool {
        let mut moved = false;
        for (handle, conn) in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                // TIME-WAIT guards against stray segments of a wire; the
                // guest's link has none, and the socket is needed again.
                socket.abort();
                *conn = Conn::default();
                let _ = socket.listen(HTTP_PORT);
                continue;
            }
            let mut active = false;
            if conn.reply.is_empty() && !conn.close_after_reply {
                if socket.can_recv() {
                    let room = http::MAX_REQUEST_BYTES - conn.request.len();
                    let mut chunk = vec![0; room.min(socket.recv_queue())];
                    if let Ok(n) = socket.recv_slice(&mut chunk) {
                        conn.request.extend_from_slice(&chunk[..n]);
                        active |= n > 0;
                    }
                }
                active |= conn.answer_next(mmds, origin);
            }
            if !conn.reply.is_empty() && socket.can_send() {
                let (front, _) = conn.reply.as_slices();
                if let Ok(n) = socket.send_slice(front) {
                    conn.reply.drain(..n);
                    active |= n > 0;
                }
            }
            if active {
                conn.last_active = StdInstant::now();
            }
            moved |= active;
            // A peer done sending is closed once a round answers it nothing more
            // (pipelined requests are answered one round at a time).
            let finished = conn.reply.is_empty()
                && (conn.close_after_reply || (!socket.may_recv() && !active));
            if finished && socket.may_send() {
                socket.close();
            }
        }
        moved
    }
}

impl Conn {
    /// Answers the first whole request buffered, if there is one; a bad one
    /// ends the connection. Returns whether it answered.
    fn answer_next(&mut self, mmds: &mut super::Mmds, origin: StdInstant) -> bool {
        if self.request.is_empty() {
            return false;
        }
        let now = StdInstant::now().max(origin);
        match http::handle(&self.request, mmds, now) {
            Parsed::Incomplete => return false,
            Parsed::Answer { consumed, response } => {
                self.request.drain(..consumed);
                self.reply.extend(response);
            }
            Parsed::Bad(response) => {
                self.request.clear();
                self.reply.extend(response);
                self.close_after_reply = true;
            }
        }
        true
    }
}

/// Whether an Ethernet frame is a TCP SYN (a connection attempt) to port 80.
fn is_syn(frame: &[u8]) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if frame.get(12..14) != Some(&ETHERTYPE_IPV4) || frame.get(23) != Some(&6) {
        return false;
    }
    let tcp = 14 + 4 * usize::from(frame.get(14).map_or(0, |b| b & 0x0f));
    let port = frame.get(tcp + 2..tcp + 4);
    let flags = frame.get(tcp + 13).copied().unwrap_or(0);
    port == Some(&HTTP_PORT.to_be_bytes()) && flags & (SYN | ACK) == SYN
}

impl phy::Device for Link {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: Instant) -> Option<(RxToken, TxToken<'_>)> {
        if self.to_guest.len() >= MAX_QUEUED_FRAMES {
            return None;
        }
        let frame = self.from_guest.pop_front()?;
        Some((RxToken(frame), TxToken(&mut self.to_guest)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        (self.to_guest.len() < MAX_QUEUED_FRAMES).then_some(TxToken(&mut self.to_guest))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU;
        // A guest with checksum offload sends partial checksums, as it may on
        // virtio-net: the link cannot corrupt, so only ours are computed.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push_back(frame);
        result
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use smoltcp::wire::IpAddress;

    use super::*;
    use crate::config::MmdsVersion;

    /// A guest's stack, wired to the MMDS endpoint through what a net device does.
    struct Guest {
        iface: Interface,
        link: Link,
        sockets: SocketSet<'static>,
        tcp: SocketHandle,
    }

    impl Guest {
        fn new() -> Guest {
            let mut link = Link::default();
            let mac = EthernetAddress([0x06, 0, 0xac, 0x10, 0, 2]);
            let mut iface = Interface::new(Config::new(mac.into()), &mut link, Instant::ZERO);
            iface.update_ip_addrs(|a| {
                let _ = a.push(IpCidr::new(Ipv4Address::new(169, 254, 0, 2).into(), 16));
            });
            let mut sockets = SocketSet::new(Vec::new());
            let tcp = sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 8192]),
                tcp::SocketBuffer::new(vec![0; 8192]),
            ));
            Guest {
                iface,
                link,
                sockets,
                tcp,
            }
        }

        /// A socket receiving into `rx_bytes`, connected from `port` (after an exchange).
        fn connect(&mut self, stack: &mut MmdsStack, port: u16, rx_bytes: usize) -> SocketHandle {
            let handle = self.sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; rx_bytes]),
                tcp::SocketBuffer::new(vec![0; 8192]),
            ));
            let mmds = (IpAddress::v4(169, 254, 169, 254), HTTP_PORT);
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            socket
                .connect(self.iface.context(), mmds, port)
                .expect("connect");
            self.exchange(stack, &mut 0);
            handle
        }

        /// Runs both ends until neither has anything to send.
        fn exchange(&mut self, stack: &mut MmdsStack, now: &mut i64) {
            for _ in 0..100 {
                *now += 1;
                self.iface.poll(
                    Instant::from_millis(*now),
                    &mut self.link,
                    &mut self.sockets,
                );
                let mut moved = false;
                while let Some(frame) = self.link.to_guest.pop_front() {
                    moved = true;
                    if stack.is_for_mmds(&frame) {
                        stack.receive(&frame);
                    }
                }
                while let Some(frame) = stack.pop_reply() {
                    moved = true;
                    self.link.from_guest.push_back(frame);
                }
                if !moved {
                    return;
                }
            }
            panic!("the exchange never settled");
        }

        /// One request on a fresh connection; the whole answer once the endpoint closes.
        fn request(&mut self, stack: &mut MmdsStack, request: &str, port: u16) -> String {
            let mut now = 0;
            let socket = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            let mmds = (IpAddress::v4(169, 254, 169, 254), HTTP_PORT);
            socket
                .connect(self.iface.context(), mmds, port)
                .expect("connect");
            self.exchange(stack, &mut now);
            let socket = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            assert!(socket.may_send(), "connected: {}", socket.state());
            socket.send_slice(request.as_bytes()).expect("send");
            socket.close();
            self.exchange(stack, &mut now);
            let socket = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            let mut answer = vec![0; 4096];
            let n = socket.recv_slice(&mut answer).unwrap_or(0);
            self.exchange(stack, &mut now);
            String::from_utf8_lossy(&answer[..n]).into_owned()
        }
    }

    fn stack(version: MmdsVersion) -> MmdsStack {
        let mmds = SharedMmds::default();
        {
            let mut m = mmds.lock().expect("a fresh lock");
            m.version = version;
            m.store
                .put(json!({"latest": {"meta-data": {"id": "i-1234"}}}))
                .expect("a small document");
        }
        MmdsStack::new([169, 254, 169, 254], mmds)
    }

    #[test]
    fn a_guest_stack_gets_answers_over_tcp() {
        let mut stack = stack(MmdsVersion::V2);
        let mut guest = Guest::new();
        let answer = guest.request(
            &mut stack,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
            40000,
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let token = answer.split("\r\n\r\n").nth(1).expect("a body").to_string();
        let get = format!("GET /latest/meta-data/id HTTP/1.1\r\nX-metadata-token: {token}\r\n\r\n");
        let answer = guest.request(&mut stack, &get, 40001);
        assert!(answer.ends_with("\r\n\r\ni-1234"), "{answer}");
        let answer = guest.request(
            &mut stack,
            "GET /latest/meta-data/id HTTP/1.1\r\n\r\n",
            40002,
        );
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    }

    #[test]
    fn pipelined_requests_are_answered_one_at_a_time_as_the_guest_takes_them() {
        let mut stack = stack(MmdsVersion::V1);
        let mut guest = Guest::new();
        // A reader that never reads: its window closes after 512 bytes.
        let slow = guest.connect(&mut stack, 41000, 512);
        let get = "GET /latest HTTP/1.1\r\nAccept: application/json\r\n\r\n";
        let socket = guest.sockets.get_mut::<tcp::Socket>(slow);
        let sent = socket.send_slice(get.repeat(100).as_bytes()).expect("send");
        assert!(sent > 40 * get.len());
        guest.exchange(&mut stack, &mut 100);
        let endpoint = stack.endpoint.as_ref().expect("the endpoint");
        let queued: usize = endpoint.conns.iter().map(|(_, c)| c.reply.len()).sum();
        assert!(
            queued < 200,
            "{queued} answer bytes queued for a reader that never reads"
        );
        // Reading lets the rest come, each answer whole.
        let mut answers = Vec::new();
        for _ in 0..200 {
            let socket = guest.sockets.get_mut::<tcp::Socket>(slow);
            let mut buf = [0u8; 512];
            let n = socket.recv_slice(&mut buf).unwrap_or(0);
            answers.extend_from_slice(&buf[..n]);
            guest.exchange(&mut stack, &mut 200);
        }
        let text = String::from_utf8_lossy(&answers);
        assert_eq!(text.matches("HTTP/1.1 200").count(), 100, "{text}");
    }

    #[test]
    fn a_newcomer_gets_the_socket_of_the_client_idle_longest() {
        let mut stack = stack(MmdsVersion::V1);
        let mut guest = Guest::new();
        let idle: Vec<SocketHandle> = (0..CONNECTIONS)
            .map(|i| {
                let port = 42000 + u16::try_from(i).expect("a few connections");
                guest.connect(&mut stack, port, 4096)
            })
            .collect();
        let states = |g: &mut Guest| {
            idle.iter()
                .map(|h| g.sockets.get::<tcp::Socket>(*h).state())
                .collect::<Vec<_>>()
        };
        assert!(states(&mut guest)
            .iter()
            .all(|s| *s == tcp::State::Established));
        let answer = guest.request(
            &mut stack,
            "GET /latest/meta-data/id HTTP/1.1\r\n\r\n",
            43000,
        );
        assert!(answer.ends_with("i-1234"), "{answer}");
        // The evicted client learns it when it next sends.
        for handle in &idle {
            let socket = guest.sockets.get_mut::<tcp::Socket>(*handle);
            socket.send_slice(b"GET / HTTP/1.1\r\n\r\n").expect("send");
        }
        guest.exchange(&mut stack, &mut 300);
        let reset = states(&mut guest)
            .iter()
            .filter(|s| **s == tcp::State::Closed)
            .count();
        assert_eq!(
            reset,
            1,
            "one idle client made room: {:?}",
            states(&mut guest)
        );
    }

    #[test]
    fn only_frames_for_the_address_are_taken() {
        let stack = stack(MmdsVersion::V1);
        let mut ipv4 = vec![0u8; 54];
        ipv4[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        ipv4[30..34].copy_from_slice(&[169, 254, 169, 254]);
        assert!(stack.is_for_mmds(&ipv4));
        ipv4[33] = 253;
        assert!(!stack.is_for_mmds(&ipv4));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&ETHERTYPE_ARP);
        arp[38..42].copy_from_slice(&[169, 254, 169, 254]);
        assert!(stack.is_for_mmds(&arp));
        assert!(!stack.is_for_mmds(&arp[..40]), "a truncated frame");
        assert!(!stack.is_for_mmds(&[]));
    }

    #[test]
    fn a_frame_flood_stays_within_the_queues() {
        let mut stack = stack(MmdsVersion::V1);
        let mut guest = Guest::new();
        // Fill the endpoint's queue towards the guest, which never takes it.
        for port in 0..256u16 {
            let socket = guest.sockets.get_mut::<tcp::Socket>(guest.tcp);
            socket.abort();
            let mmds = (IpAddress::v4(169, 254, 169, 254), HTTP_PORT);
            let _ = socket.connect(guest.iface.context(), mmds, 30000 + port);
            guest.iface.poll(
                Instant::from_millis(i64::from(port)),
                &mut guest.link,
                &mut guest.sockets,
            );
            while let Some(frame) = guest.link.to_guest.pop_front() {
                if stack.is_for_mmds(&frame) {
                    stack.receive(&frame);
                }
            }
        }
        assert!(stack.link.to_guest.len() <= MAX_QUEUED_FRAMES);
        assert!(stack.link.from_guest.len() <= MAX_QUEUED_FRAMES);
    }
}
