//! The invocation server's vsock streams, without the device: packets in, requests
//! out in the order they completed, responses and control packets back out. The
//! function may also open streams to host ports ("clients").
//!
//! A connection's bytes are credited (its `fwd_cnt` grows) as they move into its
//! request buffer, so a large request streams through at full speed; bytes of a
//! pipelined next request wait, uncredited, until the current one has been taken.
//! The peer's credit bounds those to [`BUF_ALLOC`] per connection. A client's bytes
//! are credited as the function reads them.
//!
//! One [`Server`] holds every connection; its methods are split by role: `conn`
//! (a connection's state), `receive` (packets from peers), `invocations` (requests
//! to the function and its responses), `client` (the function's own streams) and
//! `send` (packets to peers). This module keeps the connection table.
//!
//! [`BUF_ALLOC`]: crate::virtio::vsock::credit::BUF_ALLOC

mod client;
mod conn;
mod invocations;
mod receive;
mod send;
#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use self::conn::Conn;
use self::send::Response;
use super::framing::RESPONSE_PREFIX_LEN;
use crate::virtio::vsock::packet::{Header, Op};

pub use self::client::ClientState;

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

    /// An open invocation connection with a fresh id, for the caller to fill in.
    fn blank(&mut self) -> Conn {
        let id = self.next_id;
        self.next_id += 1;
        Conn::new(id, self.max_request)
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
}
