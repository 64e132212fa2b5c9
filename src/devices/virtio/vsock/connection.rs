//! One vsock stream connection between a guest port and a host Unix socket:
//! its state machine, its credit in both directions, and the bounded buffer of
//! guest bytes the host socket has not taken yet.

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use ember_proto::credit::Credit;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::EventSet;

/// Guest-to-host bytes ember holds per connection: the credit it gives the guest.
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed credit once this much has been forwarded unannounced.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;
/// A drained buffer keeps at most this much of its allocation for the next burst.
const TX_BUF_KEEP: usize = 16 * 1024;

/// `bytes` as vsock's byte counters take it: they count modulo 2^32
/// (virtio 1.2 §5.10.6.3).
#[allow(clippy::cast_possible_truncation)] // modulo 2^32 only the low 32 bits count
pub fn counted(bytes: usize) -> u32 {
    bytes as u32
}

/// Where a connection is in its life; the deadline of the states that wait on
/// the guest lets ember end a connection whose guest stopped answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected and ember sent the guest a REQUEST; it has until the
    /// deadline to answer.
    LocalInit {
        deadline: Instant,
    },
    Established,
    /// Ember sent the guest a SHUTDOWN (the host end is gone); the guest has
    /// until the deadline to send its RST.
    Closing {
        deadline: Instant,
    },
}

impl ConnState {
    pub fn deadline(self) -> Option<Instant> {
        match self {
            ConnState::LocalInit { deadline } | ConnState::Closing { deadline } => Some(deadline),
            ConnState::Established => None,
        }
    }
}

/// Guest bytes waiting for the host socket. Its size never exceeds the credit
/// given to the guest, and its allocation shrinks again once it drains.
#[derive(Default)]
pub struct TxBuf {
    bytes: Vec<u8>,
    /// Bytes before this offset were written to the socket already.
    start: usize,
}

impl TxBuf {
    pub fn len(&self) -> usize {
        self.bytes.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends guest memory to the buffer.
    pub fn push<B: vm_memory::bitmap::BitmapSlice>(&mut self, slice: &VolatileSlice<B>) {
        let at = self.bytes.len();
        self.bytes.resize(at + slice.len(), 0);
        slice.copy_to(&mut self.bytes[at..]);
    }

    /// Writes what the socket takes; returns how many bytes it took.
    fn flush_to(&mut self, stream: &mut UnixStream) -> std::io::Result<usize> {
        let mut written = 0;
        while !self.is_empty() {
            match stream.write(&self.bytes[self.start..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.start += n;
                    written += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            self.bytes.clear();
            self.bytes.shrink_to(TX_BUF_KEEP);
            self.start = 0;
        }
        Ok(written)
    }
}

pub struct Connection {
    pub stream: UnixStream,
    pub state: ConnState,
    /// Both directions' credit: host bytes sent to the guest against its
    /// buffer, guest bytes written to the host socket against ember's.
    pub credit: Credit,
    /// Guest bytes the host socket has not taken yet.
    pub pending: TxBuf,
    /// The host socket has data to read (epoll said so; cleared on EAGAIN).
    pub readable: bool,
    /// Waiting in the muxer's round-robin queue of connections with data for the guest.
    pub rx_queued: bool,
    pub guest_done_sending: bool,
    /// What the muxer's epoll watches the host socket for.
    pub interest: EventSet,
    /// The host socket hung up or closed: no longer in the epoll set.
    pub unwatched: bool,
}

impl Connection {
    pub fn new(stream: UnixStream, state: ConnState) -> Self {
        Connection {
            stream,
            state,
            credit: Credit::new(CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD),
            pending: TxBuf::default(),
            readable: false,
            rx_queued: false,
            guest_done_sending: false,
            interest: EventSet::empty(),
            unwatched: false,
        }
    }

    /// What epoll should report for the host socket.
    pub fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == ConnState::Established && !self.readable {
            set |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Whether host data could go to the guest now.
    pub fn has_rx_data(&self) -> bool {
        self.state == ConnState::Established && self.readable && self.credit.window() > 0
    }

    /// Whether `len` more guest bytes stay within the credit ember gave.
    pub fn within_credit(&self, len: u32) -> bool {
        self.pending.len() as u64 + u64::from(len) <= u64::from(CONN_BUF_ALLOC)
    }

    /// Writes what it can of `pending` to the host socket, freeing guest credit.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let written = self.pending.flush_to(&mut self.stream)?;
        self.credit.consumed(counted(written));
        if self.pending.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn credit_counts_wrap() {
        let (a, _) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a, ConnState::Established);
        conn.readable = true;
        conn.credit.peer_update(1000, u32::MAX - 10);
        conn.credit.sent(89);
        assert_eq!(conn.credit.window(), 900);
        assert!(conn.has_rx_data());
        conn.credit.sent(900);
        assert_eq!(conn.credit.window(), 0);
        assert!(!conn.has_rx_data());
    }

    #[test]
    fn pending_bytes_drain_to_the_socket_and_release_their_memory() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut conn = Connection::new(a, ConnState::Established);
        let mut data = vec![7u8; CONN_BUF_ALLOC as usize];
        let slice = VolatileSlice::from(&mut data[..]);
        conn.pending.push(&slice);
        assert!(
            !conn.within_credit(1),
            "the buffer is at the guest's credit"
        );
        conn.flush().unwrap();
        assert!(conn.credit.update_due());
        let mut sink = vec![0u8; CONN_BUF_ALLOC as usize];
        let mut got = 0;
        while !conn.pending.is_empty() {
            got += b.read(&mut sink).unwrap();
            conn.flush().unwrap();
        }
        assert!(conn.pending.bytes.capacity() <= TX_BUF_KEEP);
        assert_eq!(conn.credit.advertise(), (CONN_BUF_ALLOC, CONN_BUF_ALLOC));
        assert!(!conn.credit.update_due());
        assert!(got > 0);
    }
}
