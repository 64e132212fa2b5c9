//! The function's HTTP server: with `ember.http=<port>` on the command line the
//! runtime also serves the function on that TCP port of the guest's address, so any
//! HTTP client on the network can call it. A request's body is the input (a GET has
//! none); 200 carries the output, 500 the function's error or panic message.
//!
//! HTTP/1.1 with keep-alive and pipelined requests; bodies by `Content-Length`
//! (a chunked body gets 411); `Expect: 100-continue` is answered at once, since
//! curl waits a second for it before sending a body over 1 KiB. What a client can
//! make the guest hold is bounded: each connection's socket buffers, a head of
//! [`MAX_HEAD`] bytes, a body the heap can take (413 otherwise) and
//! [`MAX_CONNECTIONS`] sockets; when all are taken, the longest-idle kept-alive
//! connection is closed to make room for a new one.
//!
//! This module keeps the connections and parses; the function runtime takes the
//! requests in the order they completed and writes the responses.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt::{self, Write};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, SocketBuffer, State};

use super::Stack;
use crate::virtio::Transport;

/// Each connection's receive and send buffers.
const RX_BUFFER: usize = 64 * 1024;
const TX_BUFFER: usize = 64 * 1024;
/// The longest request head (request line and headers) taken.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most header lines taken.
const MAX_HEADERS: usize = 64;
/// Sockets at most, listening or connected.
pub const MAX_CONNECTIONS: usize = 16;

/// Names a connection for as long as it lives (never reused).
pub type HttpId = u64;

/// The server's connections and what it knows of each.
pub struct HttpServer {
    port: u16,
    /// Largest request body taken; larger ones get 413.
    max_request: usize,
    conns: Vec<Conn>,
    next_id: HttpId,
    next_order: u64,
}

struct Conn {
    id: HttpId,
    handle: SocketHandle,
    /// Bytes received and not yet part of a request: a head being read, or what
    /// the client pipelined after one.
    pending: Vec<u8>,
    phase: Phase,
    /// When the connection last finished a request, for choosing one to close.
    idle_since: u64,
}

enum Phase {
    /// Listening, or reading a request's head.
    Head,
    /// Reading a body of `len` bytes.
    Body {
        body: Vec<u8>,
        len: usize,
        keep_alive: bool,
    },
    /// A whole request, waiting for the function; `order` says when it completed.
    Ready {
        body: Vec<u8>,
        keep_alive: bool,
        order: u64,
    },
    /// The function has the request.
    Serving { keep_alive: bool },
    /// The response is being written: `head`, then the caller's body; `written`
    /// counts both.
    Responding {
        head: ResponseHead,
        written: usize,
        keep_alive: bool,
    },
}

/// A request the server answers itself, and closes the connection after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    BadRequest,
    MethodNotAllowed,
    LengthRequired,
    TooLarge,
    HeadTooLarge,
}

impl Reject {
    fn status(self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest => (400, "bad request"),
            Reject::MethodNotAllowed => (405, "only GET, POST and PUT invoke the function"),
            Reject::LengthRequired => (411, "a body needs a Content-Length"),
            Reject::TooLarge => (413, "the body does not fit in the guest's memory"),
            Reject::HeadTooLarge => (431, "the request head is too long"),
        }
    }
}

/// A request head as the server needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Its length in bytes, the blank line included.
    pub len: usize,
    pub body_len: usize,
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before sending the body.
    pub expects_continue: bool,
}

/// Parses the head at the start of `bytes`: `Ok(None)` while it is incomplete.
pub fn parse_head(bytes: &[u8], max_body: usize) -> Result<Option<Head>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD => {
            return Err(Reject::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    if len > MAX_HEAD {
        return Err(Reject::HeadTooLarge);
    }
    if !matches!(request.method, Some("GET" | "POST" | "PUT")) {
        return Err(Reject::MethodNotAllowed);
    }
    let mut keep_alive = request.version == Some(1);
    let mut body_len: Option<usize> = None;
    let mut expects_continue = false;
    for header in request.headers.iter() {
        let value = core::str::from_utf8(header.value).map_err(|_| Reject::BadRequest)?;
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| Reject::BadRequest)?;
            if body_len.is_some_and(|earlier| earlier != n) {
                return Err(Reject::BadRequest);
            }
            body_len = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Reject::LengthRequired);
        } else if header.name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if header.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let body_len = body_len.unwrap_or(0);
    if body_len > max_body {
        return Err(Reject::TooLarge);
    }
    Ok(Some(Head {
        len,
        body_len,
        keep_alive,
        expects_continue,
    }))
}

/// A response's status line and headers, formatted into a fixed buffer.
#[derive(Clone, Copy)]
pub struct ResponseHead {
    bytes: [u8; 192],
    len: usize,
}

impl ResponseHead {
    pub fn new(code: u16, body_len: usize, keep_alive: bool) -> ResponseHead {
        let mut head = ResponseHead {
            bytes: [0; 192],
            len: 0,
        };
        let (reason, content_type) = match code {
            200 => ("OK", "application/octet-stream"),
            400 => ("Bad Request", "text/plain; charset=utf-8"),
            405 => ("Method Not Allowed", "text/plain; charset=utf-8"),
            411 => ("Length Required", "text/plain; charset=utf-8"),
            413 => ("Content Too Large", "text/plain; charset=utf-8"),
            431 => (
                "Request Header Fields Too Large",
                "text/plain; charset=utf-8",
            ),
            _ => ("Internal Server Error", "text/plain; charset=utf-8"),
        };
        let connection = if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        };
        // Every part is bounded: the longest head is well under the buffer.
        let _ = write!(
            head,
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {body_len}\r\n{connection}\r\n"
        );
        head
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for ResponseHead {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// How far [`Stack::write_http_response`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// All of it is in the socket's send buffer.
    Done,
    /// Some is left, the client has not taken enough yet; this call moved `.0`
    /// bytes.
    More(usize),
    /// The connection is gone.
    Gone,
}

impl HttpServer {
    fn new(port: u16, max_request: usize) -> HttpServer {
        HttpServer {
            port,
            max_request,
            conns: Vec::with_capacity(MAX_CONNECTIONS),
            next_id: 0,
            next_order: 0,
        }
    }

    fn find(&mut self, id: HttpId) -> Option<&mut Conn> {
        self.conns.iter_mut().find(|c| c.id == id)
    }

    fn position(&self, id: HttpId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }
}

impl<T: Transport> Stack<T> {
    /// Starts serving HTTP on `port`, taking bodies up to `max_request` bytes.
    /// Two sockets listen from the start, so that the first connection (to a
    /// VM restored from a snapshot taken now, say) needs no new socket: making
    /// one touches all the pages of its buffers.
    pub fn serve_http(&mut self, port: u16, max_request: usize) {
        self.http = Some(HttpServer::new(port, max_request));
        self.add_listener(0);
        self.add_listener(0);
    }

    /// The HTTP request that completed first, if any: its connection and body.
    pub fn take_http_request(&mut self) -> Option<(HttpId, Vec<u8>)> {
        let server = self.http.as_mut()?;
        let conn = server
            .conns
            .iter_mut()
            .filter(|c| matches!(c.phase, Phase::Ready { .. }))
            .min_by_key(|c| match c.phase {
                Phase::Ready { order, .. } => order,
                _ => u64::MAX,
            })?;
        let Phase::Ready {
            body, keep_alive, ..
        } = core::mem::replace(&mut conn.phase, Phase::Head)
        else {
            return None;
        };
        conn.phase = Phase::Serving { keep_alive };
        Some((conn.id, body))
    }

    /// Starts the response to connection `id`'s request: `code`, and a body of
    /// `body_len` bytes for [`Stack::write_http_response`].
    pub fn start_http_response(&mut self, id: HttpId, code: u16, body_len: usize) {
        if let Some(conn) = self.http.as_mut().and_then(|s| s.find(id))
            && let Phase::Serving { keep_alive } = conn.phase
        {
            conn.phase = Phase::Responding {
                head: ResponseHead::new(code, body_len, keep_alive),
                written: 0,
                keep_alive,
            };
        }
    }

    /// Moves what fits of the started response (its head, then `body`) into the
    /// socket. Once all of it is there the connection reads its next request, or
    /// closes if the client asked.
    pub fn write_http_response(&mut self, id: HttpId, body: &[u8], tsc: u64) -> Written {
        let Some(server) = self.http.as_mut() else {
            return Written::Gone;
        };
        let Some(at) = server.position(id) else {
            return Written::Gone;
        };
        let conn = &mut server.conns[at];
        let Phase::Responding {
            head,
            written,
            keep_alive,
        } = &mut conn.phase
        else {
            return Written::Gone;
        };
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        let head_bytes = head.as_bytes();
        let total = head_bytes.len() + body.len();
        let before = *written;
        while *written < total {
            let part = match head_bytes.get(*written..) {
                Some(rest) if !rest.is_empty() => rest,
                _ => &body[*written - head_bytes.len()..],
            };
            match socket.send_slice(part) {
                Ok(0) => return Written::More(*written - before),
                Ok(n) => *written += n,
                Err(_) => {
                    self.end_http(id, true);
                    return Written::Gone;
                }
            }
        }
        if *keep_alive {
            conn.phase = Phase::Head;
            conn.idle_since = tsc;
        } else {
            self.end_http(id, false);
        }
        Written::Done
    }

    /// Resets connection `id` (its client stopped taking the response).
    pub fn abort_http(&mut self, id: HttpId) {
        self.end_http(id, true);
    }

    /// Drops the server's connection `id`, closing its socket in the background
    /// (see [`Stack::linger`]), or resetting it.
    fn end_http(&mut self, id: HttpId, reset: bool) {
        let Some(server) = self.http.as_mut() else {
            return;
        };
        if let Some(at) = server.position(id) {
            let handle = server.conns.swap_remove(at).handle;
            self.linger(handle, reset);
        }
    }

    /// Resets every connection (keeping a listener): after a snapshot restore, each
    /// was with a client of the VM the snapshot was taken from.
    pub(super) fn abort_http_all(&mut self) {
        let Some(server) = self.http.as_mut() else {
            return;
        };
        let connected: Vec<SocketHandle> = server
            .conns
            .iter()
            .map(|c| c.handle)
            .filter(|&h| self.sockets.get::<tcp::Socket>(h).state() != State::Listen)
            .collect();
        server.conns.retain(|c| !connected.contains(&c.handle));
        for handle in connected {
            self.linger(handle, true);
        }
    }

    /// Reads what the connections received into requests, answers what the
    /// server answers itself, and keeps a socket listening. Bounded: each
    /// connection moves at most its receive buffer.
    pub(super) fn advance_http(&mut self, tsc: u64) {
        let Some(server) = self.http.as_mut() else {
            return;
        };
        let mut ended = Vec::new();
        for conn in &mut server.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            match read_request(conn, socket, server.max_request, &mut server.next_order) {
                Ok(()) => {}
                Err(None) => ended.push((conn.id, false)),
                Err(Some(reject)) => {
                    let (code, message) = reject.status();
                    let head = ResponseHead::new(code, message.len(), false);
                    // A fresh or drained send buffer takes both; else the client
                    // gets the reset it has earned by not reading.
                    let sent = socket.send_slice(head.as_bytes()).ok() == Some(head.len)
                        && socket.send_slice(message.as_bytes()).ok() == Some(message.len());
                    ended.push((conn.id, !sent));
                }
            }
        }
        for (id, reset) in ended {
            self.end_http(id, reset);
        }
        self.keep_listening(tsc);
    }

    /// Makes sure one socket listens, closing the longest-idle kept-alive
    /// connection if every socket is taken.
    fn keep_listening(&mut self, tsc: u64) {
        let Some(server) = self.http.as_mut() else {
            return;
        };
        let sockets = &self.sockets;
        let listening = server
            .conns
            .iter()
            .any(|c| sockets.get::<tcp::Socket>(c.handle).state() == State::Listen);
        if listening {
            return;
        }
        if server.conns.len() >= MAX_CONNECTIONS {
            let idle = server
                .conns
                .iter()
                .filter(|c| matches!(c.phase, Phase::Head) && c.pending.is_empty())
                .min_by_key(|c| c.idle_since)
                .map(|c| c.id);
            let Some(id) = idle else {
                return;
            };
            self.end_http(id, false);
        }
        self.add_listener(tsc);
    }

    fn add_listener(&mut self, tsc: u64) {
        let Some(server) = self.http.as_mut() else {
            return;
        };
        let mut socket = tcp::Socket::new(
            SocketBuffer::new(vec![0; RX_BUFFER]),
            SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        // A client that writes a request in two parts (head, then body) holds
        // the second back until the first is acknowledged (Nagle's algorithm):
        // acknowledging at once rather than after smoltcp's 10 ms keeps that
        // from costing 10 ms per request.
        socket.set_ack_delay(None);
        if socket.listen(server.port).is_err() {
            return;
        }
        let id = server.next_id;
        server.next_id += 1;
        server.conns.push(Conn {
            id,
            handle: self.sockets.add(socket),
            pending: Vec::new(),
            phase: Phase::Head,
            idle_since: tsc,
        });
    }
}

/// Moves what `socket` received into `conn`'s request. `Err(None)`: the client has
/// closed its side with no request under way, or reset the connection;
/// `Err(Some(_))`: the server answers the request itself and closes.
fn read_request(
    conn: &mut Conn,
    socket: &mut tcp::Socket<'static>,
    max_request: usize,
    next_order: &mut u64,
) -> Result<(), Option<Reject>> {
    let state = socket.state();
    if matches!(state, State::Closed | State::TimeWait) {
        return Err(None);
    }
    if matches!(state, State::Listen | State::SynReceived) {
        return Ok(());
    }
    if let Phase::Head = conn.phase {
        // Only what a head may need: the rest waits in the socket. Twice, as the
        // socket's ring may hold it in two pieces.
        for _ in 0..2 {
            let room = MAX_HEAD.saturating_sub(conn.pending.len());
            let pending = &mut conn.pending;
            let _ = socket.recv(|data| {
                let n = data.len().min(room);
                pending.extend_from_slice(&data[..n]);
                (n, ())
            });
        }
        let Some(head) = parse_head(&conn.pending, max_request)? else {
            return match socket.may_recv() {
                true => Ok(()),
                false => Err(None),
            };
        };
        let mut body = Vec::new();
        body.try_reserve_exact(head.body_len)
            .map_err(|_| Some(Reject::TooLarge))?;
        let end = conn.pending.len().min(head.len + head.body_len);
        body.extend_from_slice(&conn.pending[head.len..end]);
        conn.pending.drain(..end);
        if head.expects_continue && body.len() < head.body_len {
            // A client that waits for this has drained the send buffer; one that
            // did not wait does not need it.
            let _ = socket.send_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        conn.phase = Phase::Body {
            body,
            len: head.body_len,
            keep_alive: head.keep_alive,
        };
    }
    let Phase::Body {
        body,
        len,
        keep_alive,
    } = &mut conn.phase
    else {
        return Ok(());
    };
    while body.len() < *len {
        let want = *len - body.len();
        // Within the room reserved for the whole body: no reallocation.
        let taken = socket.recv(|data| {
            let n = data.len().min(want);
            body.extend_from_slice(&data[..n]);
            (n, n)
        });
        if !matches!(taken, Ok(1..)) {
            break;
        }
    }
    if body.len() < *len {
        return match socket.may_recv() {
            true => Ok(()),
            false => Err(Some(Reject::BadRequest)),
        };
    }
    conn.phase = Phase::Ready {
        body: core::mem::take(body),
        keep_alive: *keep_alive,
        order: *next_order,
    };
    *next_order += 1;
    Ok(())
}
