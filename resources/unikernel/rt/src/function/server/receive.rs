//! Packets from peers: which connection each belongs to, and what it does there.
//! Everything a peer controls enters here, so this is where a packet that fits no
//! state is refused.

use super::conn::{Conn, Owed, Role, State};
use super::{MAX_CONNECTIONS, Server};
use crate::virtio::vsock::credit::{self, BUF_ALLOC};
use crate::virtio::vsock::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

impl Server {
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
        match (op, conn.role) {
            (Op::Rw, _) => self.data(i, payload),
            (Op::CreditUpdate, _) => {}
            (Op::CreditRequest, _) => conn.owed.credit_update = true,
            (Op::Shutdown, _) => self.shutdown(i, header.flags),
            (Op::Rst, _) if conn.state == State::Closing => self.remove(i),
            // A client keeps what it received for the function to read.
            (Op::Rst, Role::Client) => {
                conn.state = if conn.state == State::Connecting {
                    State::Refused
                } else {
                    State::Reset
                };
                let id = conn.id;
                self.forget(id);
            }
            (Op::Rst, Role::Invocations) => self.remove(i),
            (Op::Response, Role::Client) if conn.state == State::Connecting => {
                conn.state = State::Open;
            }
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
                && !c.was_reset()
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
            match self.conns.iter().position(|c| c.state == State::Closing) {
                Some(i) => self.abort(i),
                None => return self.refuse(header),
            }
        }
        // A reset still owed to an earlier stream of the same peer port would
        // reach this one.
        self.resets
            .retain(|r| !(r.dst_cid == header.src_cid && r.dst_port == header.src_port));
        let mut credit = credit::new();
        credit.peer_update(header.buf_alloc, header.fwd_cnt);
        let conn = Conn {
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

    fn data(&mut self, i: usize, payload: &[u8]) {
        let conn = &mut self.conns[i];
        // Neither before a client is accepted nor after either side shut it down.
        if conn.peer_done || conn.state != State::Open {
            return self.abort(i);
        }
        let used = if conn.role == Role::Invocations && conn.inbox.is_empty() {
            conn.reader.feed(payload)
        } else {
            0
        };
        conn.consumed(used);
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
            Role::Client if conn.state == State::Closing && conn.peer_done && conn.peer_deaf => {
                self.abort(i)
            }
            Role::Client if conn.peer_deaf => {
                let id = conn.id;
                self.forget(id);
            }
            Role::Client => {}
        }
    }
}
