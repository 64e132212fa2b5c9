//! One connection: who opened it, where it stands in its life, and what it holds.
//! Kept apart from the code that moves it between states so that the states, and
//! which facts are independent of them, read in one place.

use alloc::vec::Vec;

use super::ConnId;
use crate::function::framing::RequestReader;
use crate::virtio::vsock::credit::{self, Credit};

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// The peer, to the listening port: it carries invocations.
    Invocations,
    /// The function, to a host port.
    Client,
}

/// Where a connection stands in its life, as this side sees it. What the peer
/// shut down (`Conn::peer_done`, `Conn::peer_deaf`) is apart: it can happen in
/// any of the live states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// A client's REQUEST is owed or sent; the host has not answered.
    Connecting,
    /// Accepted (an invocation connection starts here): bytes may flow.
    Open,
    /// SHUTDOWN sent, or owed by a client the function closed: the peer's RST
    /// ends the connection.
    Closing,
    /// A client the host reset once it had accepted: only what it received
    /// remains, for the function to read.
    Reset,
    /// A client the host reset (refused) before it accepted.
    Refused,
}

/// Control packets a connection owes its peer.
#[derive(Debug, Default)]
pub(super) struct Owed {
    pub request: bool,
    pub response: bool,
    pub credit_update: bool,
    pub shutdown: bool,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub id: ConnId,
    pub role: Role,
    pub state: State,
    pub peer_cid: u64,
    pub peer_port: u32,
    pub local_port: u32,
    pub credit: Credit,
    pub owed: Owed,
    /// A CREDIT_REQUEST went out since the peer last spoke.
    pub credit_asked: bool,
    /// The peer will send nothing more.
    pub peer_done: bool,
    /// The peer will receive nothing more.
    pub peer_deaf: bool,
    /// Invocation framing (idle on clients).
    pub reader: RequestReader,
    /// Received bytes not yet consumed: behind a complete request, or not yet read
    /// by the function.
    pub inbox: Vec<u8>,
    /// When its request completed, for serving in that order.
    pub ready: Option<u64>,
}

impl Conn {
    /// An open invocation connection with nothing owed, received or credited.
    pub fn new(id: ConnId, max_request: usize) -> Conn {
        Conn {
            id,
            role: Role::Invocations,
            state: State::Open,
            peer_cid: 0,
            peer_port: 0,
            local_port: 0,
            credit: credit::new(),
            owed: Owed::default(),
            credit_asked: false,
            peer_done: false,
            peer_deaf: false,
            reader: RequestReader::new(max_request),
            inbox: Vec::new(),
            ready: None,
        }
    }

    /// Records `n` received bytes as consumed, which credits them to the peer.
    pub fn consumed(&mut self, n: usize) {
        // Fits: at most BUF_ALLOC bytes are held per connection (and the counter
        // wraps at 2^32 anyway, so the truncation would be its arithmetic).
        #[allow(clippy::cast_possible_truncation)]
        self.credit.consumed(n as u32);
    }

    /// Whether the host reset it: no packet belongs to it any more.
    pub fn was_reset(&self) -> bool {
        matches!(self.state, State::Reset | State::Refused)
    }
}
