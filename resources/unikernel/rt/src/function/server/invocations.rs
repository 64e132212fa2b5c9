//! The serving side: complete requests go to the function in the order they
//! completed, one at a time, and its response goes back on the same connection.
//! A connection whose peer stopped sending is closed once nothing is left to
//! answer on it.

use super::conn::{Role, State};
use super::send::Response;
use super::{ConnId, Server};
use crate::function::framing::{Request, Status, response_prefix};

impl Server {
    /// Gives connection `i` its place in the serving order once its request is
    /// complete.
    pub(super) fn mark_ready(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.reader.is_complete() && conn.ready.is_none() {
            conn.ready = Some(self.next_order);
            self.next_order += 1;
        }
    }

    /// Closes a connection whose peer stopped sending once its last complete
    /// request is answered; a partial one can never complete.
    pub(super) fn close_if_done(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if conn.role == Role::Invocations
            && conn.peer_done
            && conn.state == State::Open
            && !conn.owed.shutdown
            && self.active != Some(conn.id)
            && !conn.reader.is_complete()
        {
            conn.reader.clear();
            conn.owed.shutdown = true;
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
        conn.consumed(used);
        self.active = Some(conn.id);
        self.mark_ready(i);
        Some((self.conns[i].id, request))
    }

    /// Starts the response to the active request: `status` and a body of `len`
    /// bytes, handed out by [`Server::next_packet`] as [`Payload::Data`](super::Payload::Data) ranges.
    /// Dropped if the connection is gone.
    pub fn start_response(&mut self, conn: ConnId, status: Status, len: u32) {
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
}
