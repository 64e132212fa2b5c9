//! Firecracker's hybrid vsock: guest stream sockets carried over host Unix
//! sockets, multiplexed by this muxer.
//!
//! A host process connects to `uds_path` and writes `CONNECT <port>\n`; ember
//! asks the guest for a connection to `<port>` and, once the guest accepts,
//! answers `OK <host_port>\n` and relays bytes both ways. A guest connecting to
//! host port P reaches the listener at `<uds_path>_<P>`.
//!
//! The guest is hostile, so everything it can make the muxer hold is bounded:
//! guest bytes by the credit ember gives per connection and by a total across
//! connections, answers waiting for rx buffers by a count, connections by a
//! count, and a connection waiting on the guest (for its RESPONSE, or for its
//! RST after a SHUTDOWN) by a deadline, after which ember kills it. Expired
//! connections are swept before any limit is checked. Host data goes to the
//! guest one rx buffer per connection in turn, so one stream cannot starve the
//! others, and no call does more than a bounded amount of work.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::ffi::OsStr;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::devices::nonblocking_timer;
use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryBackend, ReadVolatile, WriteVolatile};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{counted, ConnState, Connection, CONN_BUF_ALLOC};
use super::packet::{
    Header, Op, RxBuffer, TxPacket, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// Host-side ports of host-initiated connections are allocated from here up.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Connections waiting for their `CONNECT` line, and established ones, at most.
pub const MAX_CONNECTIONS: usize = 1024;
/// Answers (RST, RESPONSE, ...) ember holds for a guest that posts no rx
/// buffers; past this it stops reading the guest's tx queue until they drain.
const MAX_PENDING_CONTROL: usize = 4096;
/// Guest bytes held for host sockets, over all connections, before ember stops
/// reading the guest's tx queue (each connection may add one credit's worth).
const MAX_PENDING_BYTES: usize = 4 << 20;
/// How long the guest has to answer a REQUEST, or to RST after a SHUTDOWN
/// (Firecracker's values).
pub const CONN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONN_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the listener rests after the process ran out of descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Packets taken from the tx queue, and rx buffers filled, per call.
pub const WORK_BUDGET: usize = 256;

const LISTENER_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;

/// The epoll token of a host socket: its fd, which is never negative.
fn fd_token(fd: RawFd) -> u64 {
    u64::from(fd.cast_unsigned())
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `uds_path` socket cannot be bound (an existing file there, say).
    #[error("cannot listen on vsock socket '{path}': {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    /// The muxer's own epoll fd or deadline timer.
    #[error("cannot create the vsock epoll or timer: {0}")]
    Epoll(std::io::Error),
}

/// (host port, guest port).
type Key = (u32, u32);

/// What happens at a deadline of the kill queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Expiry {
    /// Kill the connection if it still waits on the guest with this deadline.
    Connection(Key),
    /// Watch the listener again after running out of descriptors.
    Listener,
}

/// A host connection that has not said which guest port it wants yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

/// How one rx buffer was used for a connection's host data.
enum RxFill {
    /// The used length: the header and the bytes read.
    Filled(u32),
    /// Nothing to read after all (or end of file): the buffer is untouched.
    Nothing,
    /// The buffer cannot carry data (no payload room, or outside memory).
    Unusable,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    /// Fires at the earliest deadline of `expiries`.
    timer: TimerFd,
    timer_at: Option<Instant>,
    expiries: BinaryHeap<Reverse<(Instant, Expiry)>>,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Header-only packets waiting for an rx buffer.
    control: VecDeque<Header>,
    /// Connections with host data for the guest, served in turn.
    rx_ready: VecDeque<Key>,
    /// Bytes in every connection's `pending`.
    pending_bytes: usize,
    next_local_port: u32,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        let listen_err = |source| Error::Listen {
            path: uds_path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        let timer = nonblocking_timer().map_err(Error::Epoll)?;
        for (fd, token) in [
            (listener.as_raw_fd(), LISTENER_TOKEN),
            (timer.as_raw_fd(), TIMER_TOKEN),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(Error::Epoll)?;
        }
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_at: None,
            expiries: BinaryHeap::new(),
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            rx_ready: VecDeque::new(),
            pending_bytes: 0,
            next_local_port: LOCAL_PORT_BASE,
        })
    }

    /// Whether ember can take another packet from the guest: not while too
    /// many of its answers wait for rx buffers or too many guest bytes wait for
    /// host sockets.
    pub fn accepts_tx(&self) -> bool {
        self.control.len() < MAX_PENDING_CONTROL && self.pending_bytes < MAX_PENDING_BYTES
    }

    /// The fd the VMM's event loop watches for host-side activity.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// A header to the guest for connection `key`; the credit it carries
    /// counts as told.
    fn header(&mut self, key: Key, op: Op) -> Header {
        let (buf_alloc, fwd_cnt) = self
            .conns
            .get_mut(&key)
            .map_or((CONN_BUF_ALLOC, 0), |c| c.credit.advertise());
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            kind: TYPE_STREAM,
            op: Some(op),
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn send_control(&mut self, key: Key, op: Op, flags: u32) {
        let mut header = self.header(key, op);
        header.flags = flags;
        self.control.push_back(header);
    }

    fn set_state(&mut self, key: Key, state: ConnState) {
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.state = state;
        }
        if let Some(deadline) = state.deadline() {
            self.expire_at(deadline, Expiry::Connection(key));
        }
    }

    fn expire_at(&mut self, deadline: Instant, expiry: Expiry) {
        self.expiries.push(Reverse((deadline, expiry)));
        self.arm_timer();
    }

    /// Points the timer at the earliest deadline, if it is not set for it already.
    fn arm_timer(&mut self) {
        let Some(&Reverse((first, _))) = self.expiries.peek() else {
            return;
        };
        if self.timer_at.is_some_and(|at| at <= first) {
            return;
        }
        let wait = first
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(1));
        match self.timer.reset(wait, None) {
            Ok(()) => self.timer_at = Some(first),
            Err(e) => log::warn!("vsock: cannot arm the connection timer: {e}"),
        }
    }

    /// Acts on every deadline that has passed: kills connections the guest
    /// left waiting, and watches the listener again after a rest.
    fn sweep(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((deadline, expiry))) = self.expiries.peek() {
            if deadline > now {
                break;
            }
            self.expiries.pop();
            match expiry {
                Expiry::Connection(key) => {
                    let current = self.conns.get(&key).and_then(|c| c.state.deadline());
                    if current == Some(deadline) {
                        log::debug!("vsock: the guest left port {} waiting; killed", key.1);
                        self.reset(key);
                    }
                }
                Expiry::Listener => self.set_listening(true),
            }
        }
        if self.timer_at.is_some_and(|at| at <= now) {
            self.timer_at = None;
        }
        self.arm_timer();
    }

    fn set_listening(&self, on: bool) {
        let events = if on { EventSet::IN } else { EventSet::empty() };
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            self.listener.as_raw_fd(),
            EpollEvent::new(events, LISTENER_TOKEN),
        );
    }

    /// Stops watching the connection's host socket for good.
    fn unwatch(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.unwatched {
            let fd = conn.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            conn.unwatched = true;
        }
    }

    /// Brings the epoll interest of the connection's host socket up to date.
    fn watch(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let wanted = conn.wanted_interest();
        if conn.unwatched || wanted == conn.interest {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let event = EpollEvent::new(wanted, fd_token(fd));
        if self.epoll.ctl(ControlOperation::Modify, fd, event).is_ok() {
            conn.interest = wanted;
        }
    }

    /// Queues the connection for the guest's rx buffers if it has data to send.
    fn wake_rx(&mut self, key: Key) {
        if let Some(conn) = self.conns.get_mut(&key) {
            if conn.has_rx_data() && !conn.rx_queued {
                conn.rx_queued = true;
                self.rx_ready.push_back(key);
            }
        }
    }

    fn add_conn(&mut self, key: Key, conn: Connection) -> bool {
        let fd = conn.stream.as_raw_fd();
        let event = EpollEvent::new(EventSet::empty(), fd_token(fd));
        if self.epoll.ctl(ControlOperation::Add, fd, event).is_err() {
            return false;
        }
        let state = conn.state;
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.set_state(key, state);
        self.watch(key);
        true
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            if !conn.unwatched {
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
            self.by_fd.remove(&fd);
            self.pending_bytes -= conn.pending.len();
        }
    }

    /// Resets the connection: RST to the guest, host socket closed.
    fn reset(&mut self, key: Key) {
        self.send_control(key, Op::Rst, 0);
        self.remove_conn(key);
    }

    /// Flushes the connection's pending bytes; a broken host socket resets it.
    fn flush(&mut self, key: Key) -> bool {
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        let before = conn.pending.len();
        let flushed = conn.flush();
        self.pending_bytes = self.pending_bytes - before + conn.pending.len();
        if flushed.is_err() {
            self.reset(key);
            return false;
        }
        if conn.credit.update_due() {
            self.send_control(key, Op::CreditUpdate, 0);
        }
        true
    }

    /// Handles what happened on the host side: new connections, `CONNECT`
    /// lines, readable and writable sockets, deadlines. One batch of events:
    /// the event loop calls again while the epoll fd stays readable.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let ready = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != ErrorKind::Interrupted {
                    log::warn!("vsock: epoll failed: {e}");
                }
                return;
            }
        };
        for event in &events[..ready] {
            match event.data() {
                LISTENER_TOKEN => self.accept(),
                TIMER_TOKEN => {
                    // Non-blocking: a timer re-armed since it fired has nothing to read.
                    let _ = self.timer.wait();
                    self.sweep();
                }
                data => {
                    // Every other token is a host socket's `fd_token`.
                    let Ok(fd) = RawFd::try_from(data) else {
                        continue;
                    };
                    if self.handshakes.contains_key(&fd) {
                        self.read_connect_line(fd);
                    } else if let Some(&key) = self.by_fd.get(&fd) {
                        self.host_ready(key, event.event_set());
                    }
                }
            }
        }
    }

    fn accept(&mut self) {
        self.sweep();
        for _ in 0..MAX_CONNECTIONS {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // The connection stays in the backlog; accepting again at
                    // once would fail the same way, over and over.
                    log::warn!("vsock: out of file descriptors; not accepting for a while");
                    self.set_listening(false);
                    self.expire_at(Instant::now() + ACCEPT_BACKOFF, Expiry::Listener);
                    return;
                }
                Err(_) => return,
            };
            if self.handshakes.len() + self.conns.len() >= MAX_CONNECTIONS {
                log::warn!("vsock: too many connections; refusing one");
                continue;
            }
            let fd = stream.as_raw_fd();
            let event = EpollEvent::new(EventSet::IN, fd_token(fd));
            if stream.set_nonblocking(true).is_ok()
                && self.epoll.ctl(ControlOperation::Add, fd, event).is_ok()
            {
                let line = Vec::new();
                self.handshakes.insert(fd, Handshake { stream, line });
            }
        }
    }

    /// Reads `CONNECT <port>\n` a byte at a time, so no stream data is taken early.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match handshake.stream.read(&mut byte) {
                Ok(0) => break None,
                Ok(_) if byte[0] == b'\n' => break parse_connect(&handshake.line),
                Ok(_) if handshake.line.len() < MAX_CONNECT_LINE => handshake.line.push(byte[0]),
                Ok(_) => break None,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break None,
            }
        };
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        // A malformed request just closes the host socket, and so does any
        // while the guest leaves its answers unread (its vsock may not even be
        // set up): host connections cannot grow the queue of answers either.
        let Some(guest_port) = outcome.filter(|_| self.control.len() < MAX_PENDING_CONTROL) else {
            return;
        };
        let key = (self.allocate_local_port(guest_port), guest_port);
        let deadline = Instant::now() + CONN_REQUEST_TIMEOUT;
        let conn = Connection::new(handshake.stream, ConnState::LocalInit { deadline });
        if self.add_conn(key, conn) {
            self.send_control(key, Op::Request, 0);
        }
    }

    fn allocate_local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(LOCAL_PORT_BASE);
            if !self.conns.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    fn host_ready(&mut self, key: Key, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            // epoll reports a hang-up whatever the interest, so stop watching:
            // what is left is read (up to the end of file) as the guest takes it.
            conn.readable = true;
            self.unwatch(key);
            self.wake_rx(key);
            return;
        }
        if events.contains(EventSet::IN) {
            conn.readable = true;
            self.wake_rx(key);
        }
        if events.contains(EventSet::OUT) && !self.flush(key) {
            return;
        }
        self.watch(key);
    }

    /// Acts on one packet the guest sent.
    pub fn handle_tx(&mut self, mem: &GuestMemoryMmap, packet: &TxPacket) {
        let h = packet.header;
        let (src_cid, dst_cid, kind) = (h.src_cid, h.dst_cid, h.kind);
        if src_cid != self.guest_cid || dst_cid != HOST_CID {
            log::debug!("vsock: dropped a packet from cid {src_cid} to cid {dst_cid}");
            return;
        }
        let key = (h.dst_port, h.src_port);
        if kind != TYPE_STREAM {
            if h.op != Some(Op::Rst) {
                self.send_control(key, Op::Rst, 0);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.credit.peer_update(h.buf_alloc, h.fwd_cnt);
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (h.op, state) {
            (Some(Op::Request), None) => self.connect_to_host(key, &h),
            (Some(Op::Response), Some(ConnState::LocalInit { .. })) => {
                self.set_state(key, ConnState::Established);
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                // A fresh socket's buffer takes the short line whole.
                let ok = format!("OK {}\n", key.0);
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.reset(key);
                    return;
                }
            }
            (Some(Op::Rw), Some(ConnState::Established)) => self.forward_to_host(mem, key, packet),
            (Some(Op::CreditUpdate), Some(_)) => {}
            (Some(Op::CreditRequest), Some(_)) => self.send_control(key, Op::CreditUpdate, 0),
            (Some(Op::Shutdown), Some(_))
                if h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND =>
            {
                self.flush(key);
                self.reset(key);
                return;
            }
            (Some(Op::Shutdown), Some(_)) => {
                if h.flags & SHUTDOWN_SEND != 0 {
                    if let Some(conn) = self.conns.get_mut(&key) {
                        conn.guest_done_sending = true;
                    }
                    if !self.flush(key) {
                        return;
                    }
                }
            }
            (Some(Op::Rst), _) => {
                self.remove_conn(key);
                return;
            }
            // Anything else (data before the handshake, a REQUEST for a live
            // connection, an unknown op) breaks the protocol: reset.
            (_, Some(_)) => {
                self.reset(key);
                return;
            }
            (_, None) => {
                self.send_control(key, Op::Rst, 0);
                return;
            }
        }
        // The guest's credit may have grown.
        self.wake_rx(key);
        self.watch(key);
    }

    /// A guest connects to host port `key.0`: the listener at `<uds_path>_<port>`.
    /// The connect never blocks: a listener that is not accepting gets an RST.
    /// The guest's credit comes with its REQUEST.
    fn connect_to_host(&mut self, key: Key, request: &Header) {
        self.sweep();
        if self.handshakes.len() + self.conns.len() >= MAX_CONNECTIONS {
            log::debug!("vsock: too many connections; refusing guest port {}", key.1);
            self.send_control(key, Op::Rst, 0);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let connected = connect_nonblocking(&path).is_ok_and(|stream| {
            let mut conn = Connection::new(stream, ConnState::Established);
            conn.credit.peer_update(request.buf_alloc, request.fwd_cnt);
            self.add_conn(key, conn)
        });
        if connected {
            self.send_control(key, Op::Response, 0);
        } else {
            self.send_control(key, Op::Rst, 0);
        }
    }

    fn forward_to_host(&mut self, mem: &GuestMemoryMmap, key: Key, packet: &TxPacket) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if !conn.within_credit(packet.header.len) {
            log::debug!("vsock: guest exceeded its credit on port {}", key.1);
            self.reset(key);
            return;
        }
        let before = conn.pending.len();
        let mut forwarded = 0usize;
        let mut failed = false;
        for &(addr, size) in &packet.payload {
            let Ok(slice) = mem.get_slice(addr, size) else {
                failed = true;
                break;
            };
            let mut offset = 0;
            // Straight from guest memory to the socket; only what it refuses is copied.
            while conn.pending.is_empty() && offset < size {
                let Ok(part) = slice.subslice(offset, size - offset) else {
                    break;
                };
                match conn.stream.write_volatile(&part) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => {
                        offset += n;
                        forwarded += n;
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == ErrorKind::Interrupted => {}
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == ErrorKind::WouldBlock =>
                    {
                        break
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                break;
            }
            match slice.subslice(offset, size - offset) {
                Ok(rest) => conn.pending.push(&rest),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        self.pending_bytes = self.pending_bytes - before + conn.pending.len();
        if failed {
            self.reset(key);
            return;
        }
        conn.credit.consumed(counted(forwarded));
        if conn.credit.update_due() {
            self.send_control(key, Op::CreditUpdate, 0);
        }
    }

    /// The next connection with data for the guest, taken off the rx queue.
    fn next_rx_conn(&mut self) -> Option<Key> {
        while let Some(key) = self.rx_ready.pop_front() {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.rx_queued = false;
                if conn.has_rx_data() {
                    return Some(key);
                }
            }
        }
        None
    }

    /// Fills the guest's rx buffers: control packets first, then host data,
    /// one buffer per connection in turn. Returns whether buffers were used
    /// and whether the budget ran out with work left.
    pub fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> (bool, bool) {
        let mut used = false;
        for _ in 0..WORK_BUDGET {
            let data_source = if self.control.is_empty() {
                match self.next_rx_conn() {
                    Some(key) => Some(key),
                    None => return (used, false),
                }
            } else {
                None
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if let Some(key) = data_source {
                    self.wake_rx(key);
                }
                return (used, false);
            };
            let head = chain.head_index();
            let rx = match RxBuffer::new(mem, chain) {
                Ok(rx) => rx,
                Err(e) => {
                    // Used as it is, empty, never offered again.
                    log::debug!("vsock: unusable rx buffer: {e}");
                    if let Some(key) = data_source {
                        self.wake_rx(key);
                    }
                    used |= queue.add_used(mem, head, 0).is_ok();
                    continue;
                }
            };
            let written = match data_source {
                None => {
                    let header = self.control.pop_front().unwrap_or_default();
                    rx.write_header(mem, &header).unwrap_or(0)
                }
                Some(key) => match self.read_host_data(key, &rx, mem) {
                    RxFill::Filled(len) => len,
                    RxFill::Unusable => 0,
                    RxFill::Nothing => {
                        // Leave the buffer for the next packet.
                        queue.go_to_previous_position();
                        continue;
                    }
                },
            };
            used |= queue.add_used(mem, head, written).is_ok();
        }
        (used, true)
    }

    /// Reads host bytes straight into the rx buffer, within the guest's credit.
    fn read_host_data(&mut self, key: Key, rx: &RxBuffer, mem: &GuestMemoryMmap) -> RxFill {
        let Some(conn) = self.conns.get_mut(&key) else {
            return RxFill::Nothing;
        };
        let max = (conn.credit.window() as usize).min(rx.payload_capacity());
        let Ok(slices) = rx.payload_slices(mem, max) else {
            self.wake_rx(key);
            return RxFill::Unusable;
        };
        if max == 0 {
            self.wake_rx(key);
            return RxFill::Unusable;
        }
        let mut total = 0usize;
        let mut ended = false;
        'slices: for slice in &slices {
            let mut offset = 0;
            while offset < slice.len() {
                let Ok(mut part) = slice.subslice(offset, slice.len() - offset) else {
                    break 'slices;
                };
                match conn.stream.read_volatile(&mut part) {
                    Ok(0) => {
                        ended = total == 0;
                        break 'slices;
                    }
                    Ok(n) => {
                        offset += n;
                        total += n;
                    }
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == ErrorKind::Interrupted => {}
                    Err(vm_memory::VolatileMemoryError::IOError(e))
                        if e.kind() == ErrorKind::WouldBlock =>
                    {
                        conn.readable = false;
                        break 'slices;
                    }
                    Err(_) => {
                        ended = total == 0;
                        break 'slices;
                    }
                }
            }
        }
        if total == 0 {
            if ended {
                // The host end is gone: tell the guest, wait for its RST.
                conn.readable = false;
                self.unwatch(key);
                let deadline = Instant::now() + CONN_SHUTDOWN_TIMEOUT;
                self.set_state(key, ConnState::Closing { deadline });
                self.send_control(key, Op::Shutdown, SHUTDOWN_RCV | SHUTDOWN_SEND);
            }
            self.watch(key);
            return RxFill::Nothing;
        }
        // At most `max`, itself at most the guest's u32 credit.
        let Ok(len) = u32::try_from(total) else {
            self.reset(key);
            return RxFill::Unusable;
        };
        conn.credit.sent(len);
        let mut header = self.header(key, Op::Rw);
        header.len = len;
        self.wake_rx(key);
        self.watch(key);
        rx.write_header(mem, &header)
            .map_or(RxFill::Unusable, RxFill::Filled)
    }

    /// Drops every connection and every answer not yet delivered: the guest
    /// forgot them all (a device reset, or a restore).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.remove_conn(k));
        self.control.clear();
        self.rx_ready.clear();
    }

    #[cfg(test)]
    fn connection_count(&self) -> usize {
        self.conns.len()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Connects to the Unix socket at `path` without blocking: a listener whose
/// backlog is full fails at once (EAGAIN) instead of holding the caller.
fn connect_nonblocking(path: &OsStr) -> std::io::Result<UnixStream> {
    // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family =
        libc::sa_family_t::try_from(libc::AF_UNIX).map_err(|_| ErrorKind::InvalidInput)?;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ErrorKind::InvalidInput.into());
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + bytes.len())
        .map_err(|_| ErrorKind::InvalidInput)?;
    // SAFETY: socket takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; the stream closes it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers its used part.
    let rc = unsafe { libc::connect(fd, std::ptr::addr_of!(addr).cast::<libc::sockaddr>(), len) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// `CONNECT <port>` (without the newline) -> the port.
fn parse_connect(line: &[u8]) -> Option<u32> {
    std::str::from_utf8(line)
        .ok()?
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;

    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::super::packet::{HEADER_LEN, HEADER_LEN_U32};
    use super::*;
    use crate::devices::virtio::test_utils::{
        desc, guest_memory, used_lens, vsock_header_at, NEXT, WRITE,
    };

    const GUEST_CID: u64 = 3;

    fn new_muxer(tag: &str) -> (Muxer, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("ember-vsock-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (Muxer::new(GUEST_CID, &path).unwrap(), path)
    }

    fn from_guest(op: Op, src_port: u32, dst_port: u32) -> TxPacket {
        TxPacket {
            header: Header {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                kind: TYPE_STREAM,
                op: Some(op),
                buf_alloc: 65536,
                ..Default::default()
            },
            payload: Vec::new(),
        }
    }

    /// A host connection to guest port 1024 the guest accepted: the host end
    /// and the connection's key.
    fn established(muxer: &mut Muxer, path: &Path, mem: &GuestMemoryMmap) -> (UnixStream, Key) {
        let mut host = UnixStream::connect(path).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        muxer.process_host_events();
        muxer.process_host_events();
        let request = muxer.control.pop_back().unwrap();
        assert_eq!((request.op, request.dst_port), (Some(Op::Request), 1024));
        muxer.handle_tx(mem, &from_guest(Op::Response, 1024, request.src_port));
        let mut line = String::new();
        std::io::BufReader::new(host.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = request.src_port;
        assert_eq!(line, format!("OK {port}\n"));
        (host, (port, 1024))
    }

    #[test]
    fn connect_lines_parse_like_firecrackers() {
        assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"connect 1"), None);
        assert_eq!(parse_connect(b"CONNECT x"), None);
        assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
        assert_eq!(parse_connect(b""), None);
    }

    #[test]
    fn requests_to_closed_ports_are_reset_and_floods_stay_bounded() {
        let (mut muxer, path) = new_muxer("flood");
        let mem = guest_memory(0x40000);
        muxer.handle_tx(&mem, &from_guest(Op::Request, 5000, 7777));
        let rst = muxer.control.front().copied().unwrap();
        assert_eq!(
            (rst.op, rst.dst_port, rst.src_port),
            (Some(Op::Rst), 5000, 7777)
        );
        // A guest that never posts rx buffers cannot make ember queue answers forever.
        let mut port = 0;
        while muxer.accepts_tx() {
            muxer.handle_tx(&mem, &from_guest(Op::Request, port, 7777));
            port += 1;
        }
        assert_eq!(muxer.control.len(), MAX_PENDING_CONTROL);
        // Nor can host connections while the guest reads nothing.
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        muxer.process_host_events();
        muxer.process_host_events();
        assert_eq!(muxer.control.len(), MAX_PENDING_CONTROL);
        assert_eq!(host.read(&mut [0u8; 1]).unwrap(), 0, "refused");
        // Packets from another CID get no connection.
        let (mut muxer, _path) = new_muxer("cid");
        let mut wrong_cid = from_guest(Op::Request, 1, 2);
        wrong_cid.header.src_cid = 9;
        muxer.handle_tx(&mem, &wrong_cid);
        assert!(muxer.control.is_empty() && muxer.conns.is_empty());
    }

    #[test]
    fn host_connection_handshake_and_data_both_ways() {
        let (mut muxer, path) = new_muxer("stream");
        let mem = guest_memory(0x40000);
        let (mut host, key) = established(&mut muxer, &path, &mem);

        // Guest -> host: the payload goes from guest memory to the socket.
        mem.write_slice(b"hi host", GuestAddress(0x1000)).unwrap();
        let mut rw = from_guest(Op::Rw, 1024, key.0);
        rw.header.len = 7;
        rw.payload = vec![(GuestAddress(0x1000), 7)];
        muxer.handle_tx(&mem, &rw);
        let mut got = [0u8; 7];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi host");

        // Host -> guest: bytes land in an rx buffer behind an RW header.
        host.write_all(b"hi guest").unwrap();
        muxer.process_host_events();
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(&[desc(0x8000, 4096, WRITE, 0)], 0)
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        assert_eq!(muxer.fill_rx(&mut q, &mem), (true, false));
        let header = vsock_header_at(&mem, 0x8000);
        assert_eq!(
            (header.op, header.len, header.dst_port),
            (Some(Op::Rw), 8, 1024)
        );
        let mut payload = [0u8; 8];
        mem.read_slice(&mut payload, GuestAddress(0x8000 + HEADER_LEN as u64))
            .unwrap();
        assert_eq!(&payload, b"hi guest");

        // The host hangs up: the guest is told to shut down, and its RST ends it.
        drop(host);
        muxer.process_host_events();
        queue
            .add_desc_chains(&[desc(0x9000, 4096, WRITE, 0)], 1)
            .unwrap();
        muxer.fill_rx(&mut q, &mem);
        let shutdown = vsock_header_at(&mem, 0x9000);
        assert_eq!(shutdown.op, Some(Op::Shutdown));
        muxer.handle_tx(&mem, &from_guest(Op::Rst, 1024, key.0));
        assert_eq!(muxer.connection_count(), 0);
    }

    #[test]
    fn rx_buffers_that_cannot_carry_data_are_used_empty_not_retried() {
        let (mut muxer, path) = new_muxer("hdronly");
        let mem = guest_memory(0x40000);
        let (mut host, _) = established(&mut muxer, &path, &mem);
        host.write_all(&[7u8; 4096]).unwrap();
        muxer.process_host_events();
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    // Header only: no room for a byte of payload.
                    desc(0x8000, HEADER_LEN_U32, WRITE, 0),
                    // Payload outside guest memory, then at the top of the address space.
                    desc(0x9000, HEADER_LEN_U32, WRITE | NEXT, 2),
                    desc(0x40_0000_0000, 4096, WRITE, 0),
                    desc(0xa000, HEADER_LEN_U32, WRITE | NEXT, 4),
                    desc(0xffff_ffff_ffff_f000, 4096, WRITE, 0),
                    desc(0xffff_ffff_ffff_ff00, 4096, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        // Before, the first buffer was put back and popped again forever.
        assert_eq!(muxer.fill_rx(&mut q, &mem), (true, false));
        assert_eq!(used_lens(&queue, 4), vec![0, 0, 0, 0]);
        // A usable buffer then gets the data.
        queue
            .add_desc_chains(&[desc(0xb000, 8192, WRITE, 0)], 6)
            .unwrap();
        muxer.fill_rx(&mut q, &mem);
        assert_eq!(used_lens(&queue, 5)[4], HEADER_LEN_U32 + 4096);
    }

    #[test]
    fn host_data_reaches_the_guest_one_buffer_per_connection_in_turn() {
        let (mut muxer, path) = new_muxer("fair");
        let mem = guest_memory(0x40000);
        let (mut first, a) = established(&mut muxer, &path, &mem);
        let (mut second, b) = established(&mut muxer, &path, &mem);
        first.write_all(&[1u8; 8192]).unwrap();
        second.write_all(&[2u8; 8192]).unwrap();
        muxer.process_host_events();
        let queue = MockSplitQueue::new(&mem, 16);
        let buffers: Vec<RawDescriptor> = (0..4)
            .map(|i| desc(0x8000 + i * 0x1000, 0x1000, WRITE, 0))
            .collect();
        queue.add_desc_chains(&buffers, 0).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        muxer.fill_rx(&mut q, &mem);
        let ports: Vec<u32> = (0..4)
            .map(|i| {
                let h = vsock_header_at(&mem, 0x8000 + i * 0x1000);
                h.src_port
            })
            .collect();
        assert!(ports[0] != ports[1] && ports[0] == ports[2] && ports[1] == ports[3]);
        assert!(ports.contains(&a.0) && ports.contains(&b.0));
    }

    #[test]
    fn a_guest_connect_to_a_full_backlog_is_refused_without_blocking() {
        let (mut muxer, path) = new_muxer("backlog");
        let mem = guest_memory(0x40000);
        let mut host_path = path.clone().into_os_string();
        host_path.push("_5000");
        let _ = std::fs::remove_file(&host_path);
        let listener = UnixListener::bind(&host_path).unwrap();
        // SAFETY: listen on our own socket; only its backlog changes.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut queued = Vec::new();
        while let Ok(stream) = connect_nonblocking(&host_path) {
            queued.push(stream);
            assert!(queued.len() < 64, "the backlog never filled");
        }
        muxer.handle_tx(&mem, &from_guest(Op::Request, 40, 5000));
        let answer = muxer.control.pop_front().unwrap();
        assert_eq!((answer.op, answer.dst_port), (Some(Op::Rst), 40));
        let _ = std::fs::remove_file(&host_path);
    }

    #[test]
    fn connections_the_guest_leaves_waiting_are_killed_before_limits_are_checked() {
        let (mut muxer, path) = new_muxer("killq");
        let mem = guest_memory(0x40000);
        let mut host_path = path.clone().into_os_string();
        host_path.push("_6000");
        let _ = std::fs::remove_file(&host_path);
        let _listener = UnixListener::bind(&host_path).unwrap();

        // A host connection whose REQUEST the guest never answers.
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        muxer.process_host_events();
        muxer.process_host_events();
        let request = muxer.control.pop_front().unwrap();
        let key = (request.src_port, 1024);
        assert!(matches!(
            muxer.conns[&key].state,
            ConnState::LocalInit { .. }
        ));
        // Its deadline passes: the timer fires and the sweep kills it.
        let deadline = Instant::now();
        muxer.set_state(key, ConnState::LocalInit { deadline });
        muxer.sweep();
        assert_eq!(muxer.connection_count(), 0);
        assert_eq!(muxer.control.pop_front().and_then(|h| h.op), Some(Op::Rst));
        let mut buf = [0u8; 1];
        assert_eq!(host.read(&mut buf).unwrap(), 0, "the host end is closed");

        // The table full of connections whose guest never sent its RST: a new
        // guest connection still gets in, because the dead ones go first.
        for port in (0u32..).take(MAX_CONNECTIONS) {
            let (a, _b) = UnixStream::pair().unwrap();
            let past = Instant::now();
            let conn = Connection::new(a, ConnState::Closing { deadline: past });
            assert!(muxer.add_conn((9000, port), conn));
        }
        muxer.handle_tx(&mem, &from_guest(Op::Request, 77, 6000));
        assert_eq!(muxer.connection_count(), 1);
        assert_eq!(muxer.control.back().and_then(|h| h.op), Some(Op::Response));
        let _ = std::fs::remove_file(&host_path);
    }

    #[test]
    fn a_reset_forgets_connections_and_answers() {
        let (mut muxer, path) = new_muxer("reset");
        let mem = guest_memory(0x40000);
        let (mut host, _) = established(&mut muxer, &path, &mem);
        muxer.handle_tx(&mem, &from_guest(Op::Request, 5, 1));
        assert!(!muxer.control.is_empty());
        muxer.reset_all();
        assert_eq!(muxer.connection_count(), 0);
        assert!(muxer.control.is_empty());
        let mut buf = [0u8; 1];
        assert_eq!(host.read(&mut buf).unwrap(), 0, "the host end is closed");
    }

    #[test]
    fn guest_bytes_held_for_slow_hosts_stay_bounded() {
        let (mut muxer, path) = new_muxer("bounded");
        let mem = guest_memory(1 << 20);
        let chunk: u32 = 64 * 1024;
        // Hosts that never read: each connection takes its credit's worth.
        let mut hosts = Vec::new();
        while muxer.accepts_tx() {
            let (host, key) = established(&mut muxer, &path, &mem);
            hosts.push(host);
            for _ in 0..CONN_BUF_ALLOC / chunk {
                let mut rw = from_guest(Op::Rw, 1024, key.0);
                rw.header.len = chunk;
                rw.payload = vec![(GuestAddress(0x10000), chunk as usize)];
                muxer.handle_tx(&mem, &rw);
            }
            assert!(hosts.len() < 512, "ember kept taking guest bytes");
        }
        let held: usize = muxer.conns.values().map(|c| c.pending.len()).sum();
        assert_eq!(held, muxer.pending_bytes);
        assert!(held <= MAX_PENDING_BYTES + CONN_BUF_ALLOC as usize);
        // Once the hosts read, the guest's packets are taken again.
        for host in &mut hosts {
            host.set_nonblocking(true).unwrap();
            let mut sink = vec![0u8; 1 << 20];
            while host.read(&mut sink).is_ok_and(|n| n > 0) {}
        }
        for _ in 0..64 {
            muxer.process_host_events();
        }
        assert!(muxer.accepts_tx());
    }

    #[test]
    fn a_host_service_that_hangs_up_at_once_gets_the_guest_a_shutdown() {
        let (mut muxer, path) = new_muxer("hangup");
        let mem = guest_memory(0x40000);
        let mut host_path = path.clone().into_os_string();
        host_path.push("_7000");
        let _ = std::fs::remove_file(&host_path);
        let listener = UnixListener::bind(&host_path).unwrap();
        // The guest says nothing after its REQUEST: its credit is in the REQUEST.
        muxer.handle_tx(&mem, &from_guest(Op::Request, 31, 7000));
        drop(listener.accept().unwrap());
        for _ in 0..4 {
            muxer.process_host_events();
        }
        let queue = MockSplitQueue::new(&mem, 16);
        let buffers: Vec<RawDescriptor> = (0..2)
            .map(|i| desc(0x8000 + i * 0x1000, 0x1000, WRITE, 0))
            .collect();
        queue.add_desc_chains(&buffers, 0).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        muxer.fill_rx(&mut q, &mem);
        let ops: Vec<Option<Op>> = (0..2)
            .map(|i| {
                let header = vsock_header_at(&mem, 0x8000 + i * 0x1000);
                header.op
            })
            .collect();
        assert_eq!(ops, vec![Some(Op::Response), Some(Op::Shutdown)]);
        let _ = std::fs::remove_file(&host_path);
    }
}
