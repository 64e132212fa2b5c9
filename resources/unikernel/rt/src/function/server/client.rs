//! The function's own streams to host ports (its `HostStream`s): it connects,
//! writes, reads and closes, and each call checks here what the connection can do
//! now. A stream the host reset keeps what arrived until the function has read it.

use alloc::vec::Vec;

use super::conn::{Conn, Owed, Role, State};
use super::send::Response;
use super::{CLIENT_PORTS, ConnId, MAX_CONNECTIONS, Server};
use crate::function::framing::RESPONSE_PREFIX_LEN;
use crate::virtio::vsock::packet::HOST_CID;

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

impl Server {
    /// Opens a client connection to `port` on the host; `None` when the table is
    /// full.
    pub fn connect(&mut self, port: u32) -> Option<ConnId> {
        if self.conns.len() >= MAX_CONNECTIONS {
            let i = self.conns.iter().position(|c| c.state == State::Closing)?;
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
            role: Role::Client,
            state: State::Connecting,
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
        let Some(conn) = self
            .conns
            .iter()
            .find(|c| c.id == id && c.state != State::Closing)
        else {
            return ClientState::Gone;
        };
        if conn.role != Role::Client {
            return ClientState::Gone;
        }
        match conn.state {
            State::Connecting => ClientState::Connecting,
            State::Open => ClientState::Open {
                readable: conn.inbox.len(),
                eof: conn.peer_done,
            },
            State::Reset => ClientState::Open {
                readable: conn.inbox.len(),
                eof: true,
            },
            State::Closing | State::Refused => ClientState::Gone,
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
        conn.consumed(n);
        n
    }

    /// Closes client connection `id`: a SHUTDOWN, then the host's RST ends it; a
    /// RST at once if it is not open or the host is done both ways; nothing if
    /// the host reset it.
    pub fn close(&mut self, id: ConnId) {
        let Some(i) = self
            .conns
            .iter()
            .position(|c| c.id == id && c.state != State::Closing)
        else {
            return;
        };
        let conn = &mut self.conns[i];
        if conn.was_reset() {
            self.remove(i);
        } else if conn.role != Role::Client
            || conn.state != State::Open
            || conn.peer_done && conn.peer_deaf
        {
            self.abort(i);
        } else {
            conn.owed.shutdown = true;
            conn.state = State::Closing;
            conn.inbox = Vec::new();
        }
    }

    /// Drops every client connection (the function that held them panicked).
    pub fn close_clients(&mut self) {
        while let Some(i) = self.conns.iter().position(|c| c.role == Role::Client) {
            if self.conns[i].was_reset() {
                self.remove(i);
            } else {
                self.abort(i);
            }
        }
    }

    /// Starts sending `len` bytes on client connection `id`, handed out by
    /// [`Server::next_packet`] as [`Payload::Data`](super::Payload::Data) ranges; false if it cannot
    /// take them.
    pub fn start_send(&mut self, id: ConnId, len: usize) -> bool {
        let open = self.conns.iter().any(|c| {
            c.id == id && c.role == Role::Client && c.state == State::Open && !c.peer_deaf
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

    /// Whether the last client write stopped short (the connection went away).
    pub fn send_dropped(&self) -> bool {
        self.dropped
    }
}
