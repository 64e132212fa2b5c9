//! Packets to peers, one at a time in priority order: resets, handshakes, the
//! response (or client write) within the peer's credit, credit updates,
//! shutdowns. The bodies stay with the caller; packets only name ranges of them,
//! so nothing is copied here.

use super::conn::State;
use super::{ConnId, MAX_PAYLOAD, MAX_RESETS, Outgoing, Payload, Server};
use crate::function::framing::RESPONSE_PREFIX_LEN;
use crate::virtio::vsock::packet::{Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// The response (or a client's write) being sent.
#[derive(Debug)]
pub(super) struct Response {
    pub conn: ConnId,
    pub prefix: [u8; RESPONSE_PREFIX_LEN],
    pub prefix_sent: usize,
    pub len: usize,
    pub sent: usize,
}

impl Server {
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
            conn.state = State::Closing;
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
        // Fits: at most `room`, which MAX_PAYLOAD (64 KiB) bounds.
        #[allow(clippy::cast_possible_truncation)]
        let len = (inline_len + body_len) as u32;
        let done = response.prefix_sent == RESPONSE_PREFIX_LEN && response.sent == response.len;
        let response_conn = response.conn;
        conn.credit.sent(len);
        let mut out = self.control(i, Op::Rw, 0);
        out.header.len = len;
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
    pub(super) fn control(&mut self, i: usize, op: Op, flags: u32) -> Outgoing {
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

    /// Queues a reset, unless too many wait already.
    pub(super) fn queue_reset(&mut self, header: Header) {
        if self.resets.len() < MAX_RESETS {
            self.resets.push_back(header);
        }
    }
}
