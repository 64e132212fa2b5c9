//! The invocation server's vsock streams, without the device: packets in, requests
//! out in the order they completed, responses and control packets back out. The
//! function may also open streams to host ports ("clients").
//!
//! A connection's bytes are credited (its `fwd_cnt` grows) as they move into its
//! request buffer, so a large request streams through at full speed; bytes of a
//! pipelined next request wait, uncredited, until the current one has been taken.
//! The peer's credit bounds those to [`BUF_ALLOC`] per connection. A client's bytes
//! are credited as the function reads them.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::framing::{RESPONSE_PREFIX_LEN, Request, RequestReader, response_prefix};
use crate::virtio::vsock::credit::{BUF_ALLOC, Credit};
use crate::virtio::vsock::packet::{
    HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Open connections at most; a REQUEST beyond that evicts one that is closing or
/// is refused.
pub const MAX_CONNECTIONS: usize = 32;
/// Queued resets at most; more are dropped (the peer's side times out instead).
const MAX_RESETS: usize = 64;
/// Largest payload per packet sent, as Linux and Firecracker use.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Local ports of client connections: the dynamic range.
const CLIENT_PORTS: core::ops::RangeInclusive<u32> = 49152..=65535;

/// Names a connection for as long as it lives (never reused).
pub type ConnId = u64;

/// A packet to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub header: Header,
    pub payload: Payload,
}

/// What follows an outgoing header (`header.len` bytes).
#[derive(Debug, PartialEq, Eq)]
pub enum Payload {
    None,
    /// `inline[..inline_len]` (what is left of a response's prefix), then the
    /// range `offset..offset + len` of the body given to
    /// [`Server::start_response`] or [`Server::start_send`]: a small response
    /// goes out as one packet.
    Data {
        inline: [u8; RESPONSE_PREFIX_LEN],
        inline_len: usize,
        offset: usize,
        len: usize,
    },
}

/// Control packets a connection owes its peer.
#[derive(Debug, Default)]
struct Owed {
    request: bool,
    response: bool,
    credit_update: bool,
    shutdown: bool,
}

/// Who opened a connection.
#[derive(Debug, PartialEq, Eq)]
enum Role {
    /// The peer, to the listening port: it carries invocations.
    Invocations,
    /// The function, to a host port; `connected` once the host accepted.
    Client { connected: bool },
}

/// What a client connection can do now.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientState {
    /// The host has not accepted yet.
    Connecting,
    /// `readable` bytes wait; `eof` once the host sends no more.
    Open { readable: usize, eof: bool },
    /// Refused, reset, or never existed.
    Gone,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    role: Role,
    peer_cid: u64,
    peer_port: u32,
    local_port: u32,
    credit: Credit,
    owed: Owed,
    /// A CREDIT_REQUEST went out since the peer last spoke.
    credit_asked: bool,
    /// The peer will send nothing more.
    peer_done: bool,
    /// The peer will receive nothing more.
    peer_deaf: bool,
    /// SHUTDOWN sent (or owed); the peer's RST ends the connection.
    closing: bool,
    /// A client the peer reset: only what it received remains, for the function.
    reset: bool,
    /// Invocation framing (idle on clients).
    reader: RequestReader,
    /// Received bytes not yet consumed: behind a complete request, or not yet read
    /// by the function.
    inbox: Vec<u8>,
    /// When its request completed, for serving in that order.
    ready: Option<u64>,
}

/// The response (or a client's write) being sent.
#[derive(Debug)]
struct Response {
    conn: ConnId,
    prefix: [u8; RESPONSE_PREFIX_LEN],
    prefix_sent: usize,
    len: usize,
    sent: usize,
}

/// Every stream: those to the listening port and the function's to host ports.
/// Its tables are allocated up front, so a full heap cannot stop it (a connection
/// whose bytes find no room is reset).
#[derive(Debug)]
pub struct Server {
    cid: u64,
    port: u32,
    /// Largest request buffered; larger ones are dropped as too large.
    max_request: usize,
    conns: Vec<Conn>,
    next_id: ConnId,
    next_order: u64,
    next_client_port: u32,
    /// Resets to send, for aborted connections and packets that fit none.
    resets: VecDeque<Header>,
    /// The connection whose request is being served.
    active: Option<ConnId>,
    response: Option<Response>,
    /// The last client write was dropped before all of it went out.
    dropped: bool,
}

impl Server {
    pub fn new(cid: u64, port: u32, max_request: usize) -> Server {
        Server {
            cid,
            port,
            max_request,
            conns: Vec::with_capacity(MAX_CONNECTIONS),
            next_id: 0,
            next_order: 0,
            next_client_port: *CLIENT_PORTS.start(),
            resets: VecDeque::with_capacity(MAX_RESETS),
            active: None,
            response: None,
            dropped: false,
        }
    }

    /// Handles one received packet; `payload` is its `len` bytes.
    pub fn receive(&mut self, header: &Header, payload: &[u8]) {
        let op = match header.op {
            Some(op) if header.kind == TYPE_STREAM && header.dst_cid == self.cid => op,
            _ => return self.refuse(header),
        };
        let Some(i) = self.find(header) else {
            return match op {
                Op::Request => self.accept(header),
                Op::Rst => {}
                _ => self.refuse(header),
            };
        };
        let conn = &mut self.conns[i];
        conn.credit.peer_update(header.buf_alloc, header.fwd_cnt);
        conn.credit_asked = false;
        match (op, &mut conn.role) {
            (Op::Rw, _) => self.data(i, payload),
            (Op::CreditUpdate, _) => {}
            (Op::CreditRequest, _) => conn.owed.credit_update = true,
            (Op::Shutdown, _) => self.shutdown(i, header.flags),
            (Op::Rst, _) if conn.closing => self.remove(i),
            // A client keeps what it received for the function to read.
            (Op::Rst, Role::Client { .. }) => {
                conn.reset = true;
                let id = conn.id;
                self.forget(id);
            }
            (Op::Rst, Role::Invocations) => self.remove(i),
            (Op::Response, Role::Client { connected }) if !*connected => *connected = true,
            // The peer forgot this connection and starts anew.
            (Op::Request, Role::Invocations) => {
                self.remove(i);
                self.accept(header);
            }
            (Op::Request | Op::Response, _) => self.abort(i),
        }
    }

    /// The live connection a packet belongs to.
    fn find(&self, header: &Header) -> Option<usize> {
        self.conns.iter().position(|c| {
            c.peer_cid == header.src_cid
                && c.peer_port == header.src_port
                && c.local_port == header.dst_port
                && !c.reset
        })
    }

    /// A packet that fits nowhere (bad type, CID, port or op, or a truncated
    /// payload): reset its stream, and its connection if it has one.
    pub fn refuse(&mut self, header: &Header) {
        if header.op == Some(Op::Rst) {
            return;
        }
        match self.find(header) {
            Some(i) => self.abort(i),
            None => self.queue_reset(Header {
                src_cid: self.cid,
                dst_cid: header.src_cid,
                src_port: header.dst_port,
                dst_port: header.src_port,
                len: 0,
                kind: TYPE_STREAM,
                op: Some(Op::Rst),
                flags: 0,
                buf_alloc: 0,
                fwd_cnt: 0,
            }),
        }
    }

    fn queue_reset(&mut self, header: Header) {
        if self.resets.len() < MAX_RESETS {
            self.resets.push_back(header);
        }
    }

    /// After a transport reset (snapshot restore) every connection is gone on the
    /// other side: forget them all without a word, under a possibly new CID.
    pub fn transport_reset(&mut self, cid: u64) {
        self.cid = cid;
        self.conns.clear();
        self.resets.clear();
        self.active = None;
        self.dropped |= self.response.take().is_some();
    }

    fn accept(&mut self, header: &Header) {
        if header.dst_port != self.port {
            return self.refuse(header);
        }
        if self.conns.len() >= MAX_CONNECTIONS {
            match self.conns.iter().position(|c| c.closing) {
                Some(i) => self.abort(i),
                None => return self.refuse(header),
            }
        }
        // A reset still owed to an earlier stream of the same peer port would
        // reach this one.
        self.resets
            .retain(|r| !(r.dst_cid == header.src_cid && r.dst_port == header.src_port));
        let mut credit = Credit::default();
        credit.peer_update(header.buf_alloc, header.fwd_cnt);
        let conn = Conn {
            role: Role::Invocations,
            peer_cid: header.src_cid,
            peer_port: header.src_port,
            local_port: self.port,
            credit,
            owed: Owed {
                response: true,
                ..Owed::default()
            },
            ..self.blank()
        };
        self.conns.push(conn);
    }

    /// A connection in no state yet, with a fresh id.
    fn blank(&mut self) -> Conn {
        let id = self.next_id;
        self.next_id += 1;
        Conn {
            id,
            role: Role::Invocations,
            peer_cid: 0,
            peer_port: 0,
            local_port: 0,
            credit: Credit::default(),
            owed: Owed::default(),
            credit_asked: false,
            peer_done: false,
            peer_deaf: false,
            closing: false,
            reset: false,
            reader: RequestReader::new(self.max_request),
            inbox: Vec::new(),
            ready: None,
        }
    }

    /// Opens a client connection to `port` on the host; `None` when the table is
    /// full.
    pub fn connect(&mut self, port: u32) -> Option<ConnId> {
        if self.conns.len() >= MAX_CONNECTIONS {
            let i = self.conns.iter().position(|c| c.closing)?;
            self.abort(i);
        }
        let local_port = loop {
            let candidate = self.next_client_port;
            self.next_client_port = if candidate == *CLIENT_PORTS.end() {
                *CLIENT_PORTS.start()
            } else {
                candidate + 1
            };
            if !self.conns.iter().any(|c| c.local_port == candidate) {
                break candidate;
            }
        };
        let conn = Conn {
            role: Role::Client { connected: false },
            peer_cid: HOST_CID,
            peer_port: port,
            local_port,
            owed: Owed {
                request: true,
                ..Owed::default()
            },
            ..self.blank()
        };
        let id = conn.id;
        self.conns.push(conn);
        Some(id)
    }

    /// Where client connection `id` stands; a reset one reads to its end.
    pub fn client_state(&self, id: ConnId) -> ClientState {
        let Some(conn) = self.conns.iter().find(|c| c.id == id && !c.closing) else {
            return ClientState::Gone;
        };
        match conn.role {
            Role::Client { connected: true } => ClientState::Open {
                readable: conn.inbox.len(),
                eof: conn.peer_done || conn.reset,
            },
            Role::Client { connected: false } if !conn.reset => ClientState::Connecting,
            _ => ClientState::Gone,
        }
    }

    /// Moves what client connection `id` received into `out`; returns how many
    /// bytes.
    pub fn read(&mut self, id: ConnId, out: &mut Vec<u8>) -> usize {
        let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) else {
            return 0;
        };
        let n = conn.inbox.len();
        out.append(&mut conn.inbox);
        conn.credit.consumed(n as u32);
        n
    }

    /// Closes client connection `id`: a SHUTDOWN, then the host's RST ends it; a
    /// RST at once if it is not open or the host is done both ways; nothing if
    /// the host reset it.
    pub fn close(&mut self, id: ConnId) {
        let Some(i) = self.conns.iter().position(|c| c.id == id && !c.closing) else {
            return;
        };
        let conn = &mut self.conns[i];
        if conn.reset {
            self.remove(i);
        } else if conn.role != (Role::Client { connected: true })
            || conn.peer_done && conn.peer_deaf
        {
            self.abort(i);
        } else {
            conn.owed.shutdown = true;
            conn.closing = true;
            conn.inbox = Vec::new();
        }
    }

    /// Drops every client connection (the function that held them panicked).
    pub fn close_clients(&mut self) {
        while let Some(i) = self
            .conns
            .iter()
            .position(|c| matches!(c.role, Role::Client { .. }))
        {
            if self.conns[i].reset {
                self.remove(i);
            } else {
                self.abort(i);
            }
        }
    }

    /// Starts sending `len` bytes on client connection `id`, handed out by
    /// [`Server::next_packet`] as [`Payload::Data`] ranges; false if it cannot
    /// take them.
    pub fn start_send(&mut self, id: ConnId, len: usize) -> bool {
        let open = self.conns.iter().any(|c| {
            c.id == id
                && c.role == (Role::Client { connected: true })
                && !(c.peer_deaf || c.closing || c.reset)
        });
        self.dropped = false;
        if open {
            self.response = Some(Response {
                conn: id,
                prefix: [0; RESPONSE_PREFIX_LEN],
                prefix_sent: RESPONSE_PREFIX_LEN,
                len,
                sent: 0,
            });
        }
        open
    }

    fn data(&mut self, i: usize, payload: &[u8]) {
        let conn = &mut self.conns[i];
        if conn.peer_done || conn.closing || conn.role == (Role::Client { connected: false }) {
            return self.abort(i);
        }
        let used = if conn.role == Role::Invocations && conn.inbox.is_empty() {
            conn.reader.feed(payload)
        } else {
            0
        };
        conn.credit.consumed(used as u32);
        let rest = &payload[used..];
        // More than the advertised buffer means the peer ignores flow control.
        if conn.inbox.len() + rest.len() > BUF_ALLOC as usize
            || conn.inbox.try_reserve(rest.len()).is_err()
        {
            return self.abort(i);
        }
        conn.inbox.extend_from_slice(rest);
        self.mark_ready(i);
    }

    fn shutdown(&mut self, i: usize, flags: u32) {
        let conn = &mut self.conns[i];
        conn.peer_done |= flags & SHUTDOWN_SEND != 0;
        conn.peer_deaf |= flags & SHUTDOWN_RCV != 0;
        match conn.role {
            // No response could be delivered.
            Role::Invocations if conn.peer_deaf => self.abort(i),
            Role::Invocations => self.close_if_done(i),
            // Both sides closed: the RST ends it.
            Role::Client { .. } if conn.closing && conn.peer_done && conn.peer_deaf => {
                self.abort(i)
            }
            Role::Client { .. } if conn.peer_deaf => {
                let id = conn.id;
                self.forget(id);
            }
            Role::Client { .. } => {}
        }
    }

    fn mark_ready(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.reader.is_complete() && conn.ready.is_none() {
            conn.ready = Some(self.next_order);
            self.next_order += 1;
        }
    }

    /// Closes a connection whose peer stopped sending once its last complete
    /// request is answered; a partial one can never complete.
    fn close_if_done(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.role == Role::Invocations
            && conn.peer_done
            && !conn.closing
            && !conn.owed.shutdown
            && self.active != Some(conn.id)
            && !conn.reader.is_complete()
        {
            conn.reader.clear();
            conn.owed.shutdown = true;
        }
    }

    /// Ends a connection with a RST.
    fn abort(&mut self, i: usize) {
        let reset = self.control(i, Op::Rst, 0).header;
        self.queue_reset(reset);
        self.remove(i);
    }

    fn remove(&mut self, i: usize) {
        let conn = self.conns.swap_remove(i);
        self.forget(conn.id);
    }

    /// Drops what was being done for connection `id`.
    fn forget(&mut self, id: ConnId) {
        if self.active == Some(id) {
            self.active = None;
        }
        if self.response.as_ref().is_some_and(|r| r.conn == id) {
            self.response = None;
            self.dropped = true;
        }
    }

    /// The earliest completed request; its connection becomes the active one.
    pub fn take_request(&mut self) -> Option<(ConnId, Request)> {
        let (_, i) = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.ready.map(|order| (order, i)))
            .min()?;
        let conn = &mut self.conns[i];
        conn.ready = None;
        let request = conn.reader.take()?;
        // Bytes behind the request start the next one.
        let used = conn.reader.feed(&conn.inbox);
        conn.inbox.drain(..used);
        conn.credit.consumed(used as u32);
        self.active = Some(conn.id);
        self.mark_ready(i);
        Some((self.conns[i].id, request))
    }

    /// Starts the response to the active request: `status` and a body of `len`
    /// bytes, handed out by [`Server::next_packet`] as [`Payload::Data`] ranges.
    /// Dropped if the connection is gone.
    pub fn start_response(&mut self, conn: ConnId, status: u8, len: u32) {
        if self.conns.iter().any(|c| c.id == conn) {
            self.response = Some(Response {
                conn,
                prefix: response_prefix(status, len),
                prefix_sent: 0,
                len: len as usize,
                sent: 0,
            });
        } else {
            self.active = None;
        }
    }

    /// Whether the response (or client write) still has bytes to hand out.
    pub fn responding(&self) -> bool {
        self.response.is_some()
    }

    /// Whether the last client write stopped short (the connection went away).
    pub fn send_dropped(&self) -> bool {
        self.dropped
    }

    /// The next packet to send, if any: resets, handshakes, response data as far as
    /// the peer's credit allows, credit updates, shutdowns.
    pub fn next_packet(&mut self) -> Option<Outgoing> {
        if let Some(header) = self.resets.pop_front() {
            return Some(Outgoing {
                header,
                payload: Payload::None,
            });
        }
        if let Some(i) = self.conns.iter().position(|c| c.owed.request) {
            self.conns[i].owed.request = false;
            return Some(self.control(i, Op::Request, 0));
        }
        if let Some(i) = self.conns.iter().position(|c| c.owed.response) {
            self.conns[i].owed.response = false;
            return Some(self.control(i, Op::Response, 0));
        }
        if let Some(out) = self.response_data() {
            return Some(out);
        }
        if let Some(i) = self
            .conns
            .iter()
            .position(|c| c.owed.credit_update || c.credit.update_due())
        {
            self.conns[i].owed.credit_update = false;
            return Some(self.control(i, Op::CreditUpdate, 0));
        }
        if let Some(i) = self.conns.iter().position(|c| c.owed.shutdown) {
            let conn = &mut self.conns[i];
            conn.owed.shutdown = false;
            conn.closing = true;
            return Some(self.control(i, Op::Shutdown, SHUTDOWN_RCV | SHUTDOWN_SEND));
        }
        None
    }

    /// The next piece of the response, or a CREDIT_REQUEST when the peer has no
    /// room (once, until it speaks again).
    fn response_data(&mut self) -> Option<Outgoing> {
        let response = self.response.as_mut()?;
        let i = self.conns.iter().position(|c| c.id == response.conn)?;
        let conn = &mut self.conns[i];
        let window = conn.credit.window() as usize;
        if window == 0 {
            if conn.credit_asked {
                return None;
            }
            conn.credit_asked = true;
            return Some(self.control(i, Op::CreditRequest, 0));
        }
        let room = window.min(MAX_PAYLOAD);
        let start = response.prefix_sent;
        let inline_len = room.min(RESPONSE_PREFIX_LEN - start);
        let mut inline = [0; RESPONSE_PREFIX_LEN];
        inline[..inline_len].copy_from_slice(&response.prefix[start..start + inline_len]);
        response.prefix_sent += inline_len;
        let offset = response.sent;
        let body_len = (room - inline_len).min(response.len - offset);
        response.sent += body_len;
        let payload = Payload::Data {
            inline,
            inline_len,
            offset,
            len: body_len,
        };
        let len = inline_len + body_len;
        let done = response.prefix_sent == RESPONSE_PREFIX_LEN && response.sent == response.len;
        let response_conn = response.conn;
        conn.credit.sent(len as u32);
        let mut out = self.control(i, Op::Rw, 0);
        out.header.len = len as u32;
        out.payload = payload;
        if done {
            self.response = None;
            if self.active == Some(response_conn) {
                self.active = None;
                self.close_if_done(i);
            }
        }
        Some(out)
    }

    /// A header-only packet from connection `i`, carrying its credit.
    fn control(&mut self, i: usize, op: Op, flags: u32) -> Outgoing {
        let conn = &mut self.conns[i];
        let (buf_alloc, fwd_cnt) = conn.credit.advertise();
        Outgoing {
            header: Header {
                src_cid: self.cid,
                dst_cid: conn.peer_cid,
                src_port: conn.local_port,
                dst_port: conn.peer_port,
                len: 0,
                kind: TYPE_STREAM,
                op: Some(op),
                flags,
                buf_alloc,
                fwd_cnt,
            },
            payload: Payload::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::framing::STATUS_OK;

    const GUEST: u64 = 3;
    const PORT: u32 = 1024;
    const PEER_BUF: u32 = 256 * 1024;

    fn header(op: Op, peer_port: u32) -> Header {
        Header {
            src_cid: 2,
            dst_cid: GUEST,
            src_port: peer_port,
            dst_port: PORT,
            len: 0,
            kind: TYPE_STREAM,
            op: Some(op),
            flags: 0,
            buf_alloc: PEER_BUF,
            fwd_cnt: 0,
        }
    }

    fn server() -> Server {
        Server::new(GUEST, PORT, 64 << 20)
    }

    fn drain(server: &mut Server) -> Vec<Outgoing> {
        core::iter::from_fn(|| server.next_packet()).collect()
    }

    fn ops(packets: &[Outgoing]) -> Vec<(Op, u32)> {
        packets
            .iter()
            .map(|p| (p.header.op.unwrap(), p.header.dst_port))
            .collect()
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn connect(server: &mut Server, peer_port: u32) {
        server.receive(&header(Op::Request, peer_port), &[]);
        let reply = drain(server);
        assert_eq!(ops(&reply), [(Op::Response, peer_port)]);
    }

    fn send(server: &mut Server, peer_port: u32, data: &[u8]) {
        let mut h = header(Op::Rw, peer_port);
        h.len = data.len() as u32;
        server.receive(&h, data);
    }

    #[test]
    fn answers_connections_and_refuses_strangers() {
        let mut server = server();
        server.receive(&header(Op::Request, 7000), &[]);
        let reply = drain(&mut server);
        let h = reply[0].header;
        assert_eq!(
            (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
            (GUEST, 2, PORT, 7000)
        );
        assert_eq!(
            (h.op, h.buf_alloc, h.fwd_cnt),
            (Some(Op::Response), BUF_ALLOC, 0)
        );

        let mut other_port = header(Op::Request, 7001);
        other_port.dst_port = 99;
        server.receive(&other_port, &[]);
        let reply = drain(&mut server);
        assert_eq!(ops(&reply), [(Op::Rst, 7001)]);
        assert_eq!(reply[0].header.src_port, 99);

        send(&mut server, 7002, b"data");
        let mut wrong_cid = header(Op::Request, 7003);
        wrong_cid.dst_cid = 4;
        server.receive(&wrong_cid, &[]);
        let mut datagram = header(Op::Request, 7004);
        datagram.kind = 3;
        server.receive(&datagram, &[]);
        let mut unknown = header(Op::Rw, 7005);
        unknown.op = None;
        server.receive(&unknown, &[]);
        server.receive(&header(Op::Rst, 7006), &[]);
        let reply = drain(&mut server);
        assert_eq!(
            ops(&reply),
            [
                (Op::Rst, 7002),
                (Op::Rst, 7003),
                (Op::Rst, 7004),
                (Op::Rst, 7005)
            ]
        );

        // The accepted connection is still there.
        send(&mut server, 7000, &frame(b"x"));
        assert_eq!(
            server.take_request(),
            Some((0, Request::Data(b"x".to_vec())))
        );
    }

    #[test]
    fn streams_a_16_mib_request_without_stalling() {
        let mut server = server();
        server.receive(&header(Op::Request, 7000), &[]);
        // What the peer knows of the guest's credit: (buf_alloc, fwd_cnt).
        let learn = |known: (u32, u32), packets: Vec<Outgoing>| {
            packets
                .last()
                .map_or(known, |p| (p.header.buf_alloc, p.header.fwd_cnt))
        };
        let (mut our_buf, mut our_fwd) = learn((0, 0), drain(&mut server));
        let body: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        let stream = frame(&body);
        let mut sent = 0u32;
        for chunk in stream.chunks(MAX_PAYLOAD) {
            let window = our_buf - sent.wrapping_sub(our_fwd);
            assert!(window as usize >= chunk.len(), "stalled after {sent} bytes");
            send(&mut server, 7000, chunk);
            sent += chunk.len() as u32;
            (our_buf, our_fwd) = learn((our_buf, our_fwd), drain(&mut server));
        }
        let (_, request) = server.take_request().unwrap();
        assert_eq!(request, Request::Data(body));
    }

    #[test]
    fn sends_responses_within_the_peers_credit() {
        let mut server = server();
        let mut request = header(Op::Request, 7000);
        request.buf_alloc = 100_000;
        server.receive(&request, &[]);
        drain(&mut server);
        let data = frame(b"in");
        let mut rw = header(Op::Rw, 7000);
        rw.buf_alloc = 100_000;
        rw.len = data.len() as u32;
        server.receive(&rw, &data);
        let (conn, _) = server.take_request().unwrap();
        server.start_response(conn, STATUS_OK, 300_000);
        let packets = drain(&mut server);
        assert_eq!(
            packets.iter().map(|p| &p.payload).collect::<Vec<_>>(),
            [
                &Payload::Data {
                    inline: [0, 0xe0, 0x93, 0x04, 0],
                    inline_len: 5,
                    offset: 0,
                    len: 65536 - 5
                },
                &Payload::Data {
                    inline: [0; 5],
                    inline_len: 0,
                    offset: 65536 - 5,
                    len: 100_000 - 65536
                },
                &Payload::None,
            ]
        );
        assert_eq!(packets[2].header.op, Some(Op::CreditRequest));
        assert_eq!(packets[0].header.len, 65536);
        assert!(server.responding());

        let mut update = header(Op::CreditUpdate, 7000);
        update.buf_alloc = 100_000;
        update.fwd_cnt = 100_000;
        server.receive(&update, &[]);
        let mut offset = 100_000 - 5;
        while server.responding() {
            for p in drain(&mut server) {
                match p.payload {
                    Payload::Data {
                        offset: at,
                        len,
                        inline_len: 0,
                        ..
                    } => {
                        assert_eq!(at, offset);
                        offset += len;
                    }
                    _ => assert_eq!(p.header.op, Some(Op::CreditRequest)),
                }
            }
            update.fwd_cnt = (offset + 5) as u32;
            server.receive(&update, &[]);
        }
        assert_eq!(offset, 300_000);
    }

    #[test]
    fn serves_requests_in_completion_order() {
        let mut server = server();
        for port in [7000, 7001] {
            connect(&mut server, port);
        }
        let a = frame(b"first to start");
        send(&mut server, 7000, &a[..6]);
        send(&mut server, 7001, &frame(b"first to finish"));
        send(&mut server, 7000, &a[6..]);
        assert_eq!(
            server.take_request(),
            Some((1, Request::Data(b"first to finish".to_vec())))
        );
        assert_eq!(
            server.take_request(),
            Some((0, Request::Data(b"first to start".to_vec())))
        );
        assert_eq!(server.take_request(), None);
    }

    #[test]
    fn credits_pipelined_requests_when_taken() {
        let mut server = server();
        connect(&mut server, 7000);
        let mut both = frame(b"one");
        both.extend(frame(b"two!"));
        send(&mut server, 7000, &both);
        server.receive(&header(Op::CreditRequest, 7000), &[]);
        let update = drain(&mut server);
        assert_eq!(ops(&update), [(Op::CreditUpdate, 7000)]);
        assert_eq!(update[0].header.fwd_cnt, 7);
        assert_eq!(
            server.take_request(),
            Some((0, Request::Data(b"one".to_vec())))
        );
        server.receive(&header(Op::CreditRequest, 7000), &[]);
        assert_eq!(drain(&mut server)[0].header.fwd_cnt, 15);
        assert_eq!(
            server.take_request(),
            Some((0, Request::Data(b"two!".to_vec())))
        );
    }

    #[test]
    fn resets_a_peer_that_ignores_credit() {
        let mut server = server();
        connect(&mut server, 7000);
        send(&mut server, 7000, &frame(b"done"));
        let flood = vec![0; MAX_PAYLOAD];
        for _ in 0..BUF_ALLOC as usize / MAX_PAYLOAD {
            send(&mut server, 7000, &flood);
        }
        assert!(drain(&mut server).is_empty());
        send(&mut server, 7000, b"!");
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);
        assert_eq!(server.take_request(), None);
    }

    #[test]
    fn closes_after_the_last_answer_once_the_peer_stops_sending() {
        let mut server = server();
        connect(&mut server, 7000);
        send(&mut server, 7000, &frame(b"q"));
        let mut shutdown = header(Op::Shutdown, 7000);
        shutdown.flags = SHUTDOWN_SEND;
        server.receive(&shutdown, &[]);
        assert!(drain(&mut server).is_empty());
        let (conn, _) = server.take_request().unwrap();
        server.start_response(conn, STATUS_OK, 1);
        let packets = drain(&mut server);
        // The prefix and the 1-byte body go out together.
        assert_eq!(ops(&packets), [(Op::Rw, 7000), (Op::Shutdown, 7000)]);
        assert_eq!(packets[0].header.len, 6);
        assert_eq!(packets[1].header.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
        server.receive(&header(Op::Rst, 7000), &[]);
        send(&mut server, 7000, b"late");
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);

        // A partial request can never complete: close at once.
        connect(&mut server, 7001);
        send(&mut server, 7001, &frame(b"cut short")[..5]);
        shutdown.src_port = 7001;
        server.receive(&shutdown, &[]);
        assert_eq!(ops(&drain(&mut server)), [(Op::Shutdown, 7001)]);
        assert_eq!(server.take_request(), None);

        // A peer that will not receive cannot be answered.
        connect(&mut server, 7002);
        send(&mut server, 7002, &frame(b"q"));
        shutdown.src_port = 7002;
        shutdown.flags = SHUTDOWN_RCV;
        server.receive(&shutdown, &[]);
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7002)]);
        assert_eq!(server.take_request(), None);
    }

    #[test]
    fn resets_connections_with_broken_packets() {
        let mut server = server();
        connect(&mut server, 7000);
        let mut truncated = header(Op::Rw, 7000);
        truncated.len = 10;
        server.refuse(&truncated);
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);
        send(&mut server, 7000, &frame(b"q"));
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);
        assert_eq!(server.take_request(), None);
    }

    #[test]
    fn forgets_everything_silently_on_transport_reset() {
        let mut server = server();
        connect(&mut server, 7000);
        send(&mut server, 7000, &frame(b"q"));
        let (conn, _) = server.take_request().unwrap();
        server.start_response(conn, STATUS_OK, 10);
        server.transport_reset(5);
        assert!(!server.responding());
        assert!(drain(&mut server).is_empty());
        let mut request = header(Op::Request, 7000);
        request.dst_cid = 5;
        server.receive(&request, &[]);
        let reply = drain(&mut server);
        assert_eq!(ops(&reply), [(Op::Response, 7000)]);
        assert_eq!(reply[0].header.src_cid, 5);
    }

    #[test]
    fn opens_reads_writes_and_closes_client_connections() {
        let mut server = server();
        let id = server.connect(5000).unwrap();
        assert_eq!(server.client_state(id), ClientState::Connecting);
        let request = drain(&mut server);
        let h = request[0].header;
        assert_eq!((h.op, h.dst_cid, h.dst_port), (Some(Op::Request), 2, 5000));
        let local = h.src_port;
        assert!(CLIENT_PORTS.contains(&local));
        assert!(!server.start_send(id, 1));

        let from_host = |op, len| Header {
            src_port: 5000,
            dst_port: local,
            len,
            ..header(op, 5000)
        };
        server.receive(&from_host(Op::Response, 0), &[]);
        assert_eq!(
            server.client_state(id),
            ClientState::Open {
                readable: 0,
                eof: false
            }
        );
        assert!(server.start_send(id, 10));
        let sent = drain(&mut server);
        assert_eq!(
            sent[0].payload,
            Payload::Data {
                inline: [0; 5],
                inline_len: 0,
                offset: 0,
                len: 10
            }
        );
        assert_eq!((sent[0].header.src_port, sent[0].header.len), (local, 10));
        assert!(!server.responding());

        server.receive(&from_host(Op::Rw, 2), b"hi");
        let mut got = Vec::new();
        assert_eq!(server.read(id, &mut got), 2);
        assert_eq!(got, b"hi");
        let mut shutdown = from_host(Op::Shutdown, 0);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        server.receive(&shutdown, &[]);
        assert_eq!(
            server.client_state(id),
            ClientState::Open {
                readable: 0,
                eof: true
            }
        );
        assert!(!server.start_send(id, 1));
        server.close(id);
        let reset = drain(&mut server);
        assert_eq!(ops(&reset), [(Op::Rst, 5000)]);
        assert_eq!(reset[0].header.src_port, local);
        assert_eq!(server.client_state(id), ClientState::Gone);

        // Refused.
        let id = server.connect(5001).unwrap();
        let local = drain(&mut server)[0].header.src_port;
        server.receive(
            &Header {
                src_port: 5001,
                dst_port: local,
                ..header(Op::Rst, 5001)
            },
            &[],
        );
        assert_eq!(server.client_state(id), ClientState::Gone);
        server.close(id);
        assert!(drain(&mut server).is_empty());
    }

    #[test]
    fn keeps_what_a_reset_client_received() {
        let mut server = server();
        let id = server.connect(5000).unwrap();
        let local = drain(&mut server)[0].header.src_port;
        let from_host = |op, len| Header {
            src_port: 5000,
            dst_port: local,
            len,
            ..header(op, 5000)
        };
        server.receive(&from_host(Op::Response, 0), &[]);
        server.receive(&from_host(Op::Rw, 3), b"bye");
        server.receive(&from_host(Op::Rst, 0), &[]);
        assert_eq!(
            server.client_state(id),
            ClientState::Open {
                readable: 3,
                eof: true
            }
        );
        server.close(id);
        assert!(drain(&mut server).is_empty());

        // A graceful close waits for the host's RST.
        let id = server.connect(5000).unwrap();
        let local = drain(&mut server)[0].header.src_port;
        let from_host = |op| Header {
            src_port: 5000,
            dst_port: local,
            ..header(op, 5000)
        };
        server.receive(&from_host(Op::Response), &[]);
        server.close(id);
        let shutdown = drain(&mut server);
        assert_eq!(ops(&shutdown), [(Op::Shutdown, 5000)]);
        server.receive(&from_host(Op::Rst), &[]);
        assert!(server.conns.is_empty());

        // After a panic, whatever the function held is reset.
        let id = server.connect(5000).unwrap();
        drain(&mut server);
        server.close_clients();
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 5000)]);
        assert_eq!(server.client_state(id), ClientState::Gone);
    }

    #[test]
    fn reports_client_writes_cut_short() {
        let mut server = server();
        let id = server.connect(5000).unwrap();
        let local = drain(&mut server)[0].header.src_port;
        let response = Header {
            src_port: 5000,
            dst_port: local,
            ..header(Op::Response, 5000)
        };
        server.receive(&response, &[]);
        assert!(server.start_send(id, 1 << 20));
        drain(&mut server);
        assert!(server.responding());
        server.transport_reset(GUEST);
        assert!(!server.responding());
        assert!(server.send_dropped());
        assert_eq!(server.client_state(id), ClientState::Gone);
    }

    #[test]
    fn evicts_closing_connections_when_full() {
        let mut server = server();
        for port in 0..MAX_CONNECTIONS as u32 {
            connect(&mut server, 7000 + port);
        }
        server.receive(&header(Op::Request, 8000), &[]);
        assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 8000)]);

        let mut shutdown = header(Op::Shutdown, 7003);
        shutdown.flags = SHUTDOWN_SEND;
        server.receive(&shutdown, &[]);
        assert_eq!(ops(&drain(&mut server)), [(Op::Shutdown, 7003)]);
        server.receive(&header(Op::Request, 8000), &[]);
        assert_eq!(
            ops(&drain(&mut server)),
            [(Op::Rst, 7003), (Op::Response, 8000)]
        );
    }
}
