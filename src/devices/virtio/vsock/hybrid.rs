//! Firecracker's hybrid vsock: guest stream sockets carried over host Unix
//! sockets.
//!
//! A host process connects to `uds_path` and writes `CONNECT <port>\n`; ember
//! asks the guest for a connection to `<port>` and, once the guest accepts,
//! answers `OK <host_port>\n` and relays bytes both ways. A guest connecting to
//! host port P reaches the listener at `<uds_path>_<P>`. Flow control is
//! virtio-vsock's credit scheme both ways, so neither side can make the other
//! buffer without bound: a guest that ignores it is reset.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::vstate::memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryBackend, ReadVolatile, WriteVolatile};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::{
    Header, RxBuffer, TxPacket, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

pub const HOST_CID: u64 = 2;
/// Host-side ports of host-initiated connections are allocated from here up.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Guest-to-host bytes ember holds per connection: the credit it gives the guest.
const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Tell the guest about freed credit once this much has been forwarded unannounced.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 2;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// Connections waiting for their `CONNECT` line, and established ones, at most.
const MAX_CONNECTIONS: usize = 1024;
/// Answers (RST, RESPONSE, ...) ember holds for a guest that posts no rx
/// buffers; past this it stops reading the guest's tx queue until they drain.
const MAX_PENDING_CONTROL: usize = 4096;

const LISTENER_TOKEN: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on vsock socket '{path}': {source}")]
    Listen {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the vsock epoll: {0}")]
    Epoll(std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The host connected; the guest has not answered the REQUEST yet.
    LocalInit,
    Established,
    /// The host end closed; SHUTDOWN sent, waiting for the guest's RST.
    Closing,
}

/// (host port, guest port).
type Key = (u32, u32);

struct Connection {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Guest bytes written to the host socket.
    fwd_cnt: u32,
    last_fwd_cnt_sent: u32,
    /// Guest bytes the host socket has not taken yet.
    pending: Vec<u8>,
    /// The host socket has data to read (epoll said so; cleared on EAGAIN).
    readable: bool,
    guest_done_sending: bool,
    interest: EventSet,
    /// The host socket hung up or closed: no longer in the epoll set.
    unwatched: bool,
}

impl Connection {
    fn new(stream: UnixStream, state: State) -> Self {
        Connection {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            pending: Vec::new(),
            readable: false,
            guest_done_sending: false,
            interest: EventSet::empty(),
            unwatched: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state == State::Established && !self.readable {
            set |= EventSet::IN;
        }
        if !self.pending.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }

    /// Writes what it can of `pending` to the host socket, freeing guest credit.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pending.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host connection that has not said which guest port it wants yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct HybridBackend {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    /// Header-only packets waiting for an rx buffer.
    control: VecDeque<Header>,
    next_local_port: u32,
}

impl HybridBackend {
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, Error> {
        let listen_err = |source| Error::Listen {
            path: uds_path.display().to_string(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let epoll = Epoll::new().map_err(Error::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
            )
            .map_err(Error::Epoll)?;
        Ok(HybridBackend {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            control: VecDeque::new(),
            next_local_port: LOCAL_PORT_BASE,
        })
    }

    /// Whether ember can take another packet from the guest: not while too
    /// many of its answers wait for rx buffers.
    pub fn accepts_tx(&self) -> bool {
        self.control.len() < MAX_PENDING_CONTROL
    }

    /// The fd the VMM's event loop watches for host-side activity.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn header(&self, key: Key, op: u16) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn send_control(&mut self, key: Key, op: u16, flags: u32) {
        let mut header = self.header(key, op);
        header.flags = flags;
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.last_fwd_cnt_sent = conn.fwd_cnt;
        }
        self.control.push_back(header);
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

    fn watch(&mut self, key: Key) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.unwatched {
            return;
        }
        let wanted = conn.wanted_interest();
        if wanted != conn.interest {
            let fd = conn.stream.as_raw_fd();
            let result = self.epoll.ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(wanted, u64::from(fd as u32)),
            );
            if result.is_ok() {
                conn.interest = wanted;
            }
        }
    }

    fn add_conn(&mut self, key: Key, conn: Connection) -> bool {
        let fd = conn.stream.as_raw_fd();
        if self
            .epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::empty(), u64::from(fd as u32)),
            )
            .is_err()
        {
            return false;
        }
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.watch(key);
        true
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(conn) = self.conns.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            self.by_fd.remove(&fd);
        }
    }

    /// Resets the connection: RST to the guest, host socket closed.
    fn reset(&mut self, key: Key) {
        self.send_control(key, OP_RST, 0);
        self.remove_conn(key);
    }

    /// Handles what happened on the host side: new connections, `CONNECT`
    /// lines, readable and writable sockets. One pass: the event loop calls
    /// again while the epoll fd stays readable.
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
            if event.data() == LISTENER_TOKEN {
                self.accept();
                continue;
            }
            let fd = event.data() as u32 as RawFd;
            if self.handshakes.contains_key(&fd) {
                self.read_connect_line(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                self.host_ready(key, event.event_set());
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() + self.conns.len() >= MAX_CONNECTIONS {
                        log::warn!("vsock: too many connections; refusing one");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if stream.set_nonblocking(true).is_err()
                        || self
                            .epoll
                            .ctl(
                                ControlOperation::Add,
                                fd,
                                EpollEvent::new(EventSet::IN, u64::from(fd as u32)),
                            )
                            .is_err()
                    {
                        continue;
                    }
                    self.handshakes.insert(
                        fd,
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
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
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect(&handshake.line)),
                Ok(_) if handshake.line.len() < MAX_CONNECT_LINE => handshake.line.push(byte[0]),
                Ok(_) => break Err(()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Ok(Some(guest_port)) = outcome else {
            // A malformed request just closes the host socket.
            return;
        };
        let local_port = self.allocate_local_port(guest_port);
        let key = (local_port, guest_port);
        if self.add_conn(key, Connection::new(handshake.stream, State::LocalInit)) {
            self.send_control(key, OP_REQUEST, 0);
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
            // what is left is read (up to the EOF) as the guest takes it.
            conn.readable = true;
            self.unwatch(key);
            return;
        }
        if events.contains(EventSet::IN) {
            conn.readable = true;
        }
        if events.contains(EventSet::OUT) {
            if conn.flush().is_err() {
                self.reset(key);
                return;
            }
            self.maybe_credit_update(key);
        }
        self.watch(key);
    }

    fn maybe_credit_update(&mut self, key: Key) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        if conn.fwd_cnt.wrapping_sub(conn.last_fwd_cnt_sent) >= CREDIT_UPDATE_THRESHOLD {
            self.send_control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    /// Acts on one packet the guest sent.
    pub fn handle_tx(&mut self, mem: &GuestMemoryMmap, packet: &TxPacket) {
        let h = packet.header;
        let (src_cid, dst_cid, type_) = (h.src_cid, h.dst_cid, h.type_);
        if src_cid != self.guest_cid || dst_cid != HOST_CID {
            log::debug!("vsock: dropped a packet from cid {src_cid} to cid {dst_cid}");
            return;
        }
        let key = (h.dst_port, h.src_port);
        if type_ != TYPE_STREAM {
            if h.op != OP_RST {
                self.control.push_back(self.header(key, OP_RST));
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.peer_buf_alloc = h.buf_alloc;
            conn.peer_fwd_cnt = h.fwd_cnt;
        }
        let state = self.conns.get(&key).map(|c| c.state);
        match (h.op, state) {
            (OP_REQUEST, None) => self.connect_to_host(key),
            (OP_RESPONSE, Some(State::LocalInit)) => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    conn.state = State::Established;
                    // A fresh socket's buffer takes the short line whole.
                    let ok = format!("OK {}\n", key.0);
                    if conn.stream.write_all(ok.as_bytes()).is_err() {
                        self.reset(key);
                        return;
                    }
                }
            }
            (OP_RW, Some(State::Established)) => self.forward_to_host(mem, key, packet),
            (OP_CREDIT_UPDATE, Some(_)) => {}
            (OP_CREDIT_REQUEST, Some(_)) => self.send_control(key, OP_CREDIT_UPDATE, 0),
            (OP_SHUTDOWN, Some(_))
                if h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND =>
            {
                if let Some(conn) = self.conns.get_mut(&key) {
                    let _ = conn.flush();
                }
                self.reset(key);
                return;
            }
            (OP_SHUTDOWN, Some(_)) => {
                if let Some(conn) = self.conns.get_mut(&key) {
                    if h.flags & SHUTDOWN_SEND != 0 {
                        conn.guest_done_sending = true;
                        if conn.flush().is_err() {
                            self.reset(key);
                            return;
                        }
                    }
                }
            }
            (OP_RST, _) => {
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
                self.control.push_back(self.header(key, OP_RST));
                return;
            }
        }
        self.watch(key);
    }

    /// A guest connects to host port `key.0`: the listener at `<uds_path>_<port>`.
    fn connect_to_host(&mut self, key: Key) {
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.0));
        let stream = UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|()| s));
        match stream {
            Ok(stream) if self.conns.len() < MAX_CONNECTIONS => {
                if self.add_conn(key, Connection::new(stream, State::Established)) {
                    self.send_control(key, OP_RESPONSE, 0);
                } else {
                    self.control.push_back(self.header(key, OP_RST));
                }
            }
            _ => self.control.push_back(self.header(key, OP_RST)),
        }
    }

    fn forward_to_host(&mut self, mem: &GuestMemoryMmap, key: Key, packet: &TxPacket) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let len = packet.header.len;
        if conn.pending.len() as u64 + u64::from(len) > u64::from(CONN_BUF_ALLOC) {
            log::debug!("vsock: guest exceeded its credit on port {}", key.1);
            self.reset(key);
            return;
        }
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
            if offset < size {
                let Ok(rest) = slice.subslice(offset, size - offset) else {
                    failed = true;
                    break;
                };
                if conn.pending.write_all_volatile(&rest).is_err() {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.reset(key);
            return;
        }
        conn.fwd_cnt = conn.fwd_cnt.wrapping_add(forwarded as u32);
        self.maybe_credit_update(key);
    }

    /// A connection with host data to send and guest credit to send it with.
    fn next_data_source(&self) -> Option<Key> {
        self.conns
            .iter()
            .find(|(_, c)| c.state == State::Established && c.readable && c.peer_credit() > 0)
            .map(|(&k, _)| k)
    }

    /// Fills the guest's rx buffers: control packets first, then host data.
    pub fn fill_rx(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        loop {
            let data_source = if self.control.is_empty() {
                self.next_data_source()
            } else {
                None
            };
            if self.control.is_empty() && data_source.is_none() {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let rx = match RxBuffer::new(chain) {
                Ok(rx) => rx,
                Err(e) => {
                    log::debug!("vsock: unusable rx buffer: {e}");
                    used |= queue.add_used(mem, head, 0).is_ok();
                    continue;
                }
            };
            let written = match (self.control.pop_front(), data_source) {
                (Some(header), _) => rx.write_header(mem, &header).ok(),
                (None, Some(key)) => self.read_host_data(key, &rx, mem),
                (None, None) => None,
            };
            match written {
                Some(len) => used |= queue.add_used(mem, head, len).is_ok(),
                // Nothing went into this buffer: the guest keeps it.
                None => queue.go_to_previous_position(),
            }
        }
        used
    }

    /// Reads host bytes straight into the rx buffer; `None` if there were none.
    fn read_host_data(&mut self, key: Key, rx: &RxBuffer, mem: &GuestMemoryMmap) -> Option<u32> {
        let conn = self.conns.get_mut(&key)?;
        let max = (conn.peer_credit() as usize).min(rx.payload_capacity());
        let slices = rx.payload_slices(mem, max).ok()?;
        let mut total = 0usize;
        let mut eof = false;
        let mut error = false;
        'slices: for slice in &slices {
            let mut offset = 0;
            while offset < slice.len() {
                let Ok(mut part) = slice.subslice(offset, slice.len() - offset) else {
                    break 'slices;
                };
                match conn.stream.read_volatile(&mut part) {
                    Ok(0) => {
                        eof = total == 0;
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
                        error = total == 0;
                        break 'slices;
                    }
                }
            }
        }
        if total == 0 {
            if eof || error {
                // The host end is gone: tell the guest, wait for its RST.
                conn.state = State::Closing;
                conn.readable = false;
                self.unwatch(key);
                self.send_control(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
            }
            self.watch(key);
            return None;
        }
        conn.tx_cnt = conn.tx_cnt.wrapping_add(total as u32);
        let mut header = self.header(key, OP_RW);
        header.len = total as u32;
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.last_fwd_cnt_sent = conn.fwd_cnt;
        }
        self.watch(key);
        rx.write_header(mem, &header).ok()
    }

    /// Drops every connection (the guest forgot them all, e.g. after a restore).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        keys.into_iter().for_each(|k| self.remove_conn(k));
        self.control.clear();
    }
}

impl Drop for HybridBackend {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
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

    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const GUEST_CID: u64 = 3;

    fn new_backend(tag: &str) -> (HybridBackend, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("ember-vsock-{tag}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        (HybridBackend::new(GUEST_CID, &path).unwrap(), path)
    }

    fn from_guest(op: u16, src_port: u32, dst_port: u32) -> TxPacket {
        TxPacket {
            header: Header {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port,
                dst_port,
                type_: TYPE_STREAM,
                op,
                buf_alloc: 65536,
                ..Default::default()
            },
            payload: Vec::new(),
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap()
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
    fn credit_counts_wrap() {
        let (a, _) = UnixStream::pair().unwrap();
        let mut conn = Connection::new(a, State::Established);
        conn.peer_buf_alloc = 1000;
        conn.peer_fwd_cnt = u32::MAX - 10;
        conn.tx_cnt = 89;
        assert_eq!(conn.peer_credit(), 900);
        conn.tx_cnt = conn.peer_fwd_cnt.wrapping_add(1000);
        assert_eq!(conn.peer_credit(), 0);
    }

    #[test]
    fn requests_to_closed_ports_are_reset_and_floods_stay_bounded() {
        let (mut backend, _path) = new_backend("flood");
        let mem = memory();
        backend.handle_tx(&mem, &from_guest(OP_REQUEST, 5000, 7777));
        let rst = backend.control.front().copied().unwrap();
        assert_eq!((rst.op, rst.dst_port, rst.src_port), (OP_RST, 5000, 7777));
        // A guest that never posts rx buffers cannot make ember queue answers forever.
        let mut port = 0;
        while backend.accepts_tx() {
            backend.handle_tx(&mem, &from_guest(OP_REQUEST, port, 7777));
            port += 1;
        }
        assert_eq!(backend.control.len(), MAX_PENDING_CONTROL);
        // Packets from another CID or of another type get no connection.
        let (mut backend, _path) = new_backend("cid");
        let mut wrong_cid = from_guest(OP_REQUEST, 1, 2);
        wrong_cid.header.src_cid = 9;
        backend.handle_tx(&mem, &wrong_cid);
        assert!(backend.control.is_empty() && backend.conns.is_empty());
    }

    #[test]
    fn host_connection_handshake_and_data_both_ways() {
        let (mut backend, path) = new_backend("stream");
        let mem = memory();
        let mut host = UnixStream::connect(&path).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        backend.process_host_events();
        backend.process_host_events();
        let request = backend.control.pop_front().unwrap();
        assert_eq!(
            (request.op, request.dst_port, request.dst_cid),
            (OP_REQUEST, 1024, GUEST_CID)
        );
        assert!(request.src_port >= LOCAL_PORT_BASE);

        backend.handle_tx(&mem, &from_guest(OP_RESPONSE, 1024, request.src_port));
        let mut reader = std::io::BufReader::new(host.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let host_port = request.src_port;
        assert_eq!(line, format!("OK {host_port}\n"));

        // Guest -> host: the payload goes from guest memory to the socket.
        mem.write_slice(b"hi host", GuestAddress(0x1000)).unwrap();
        let mut rw = from_guest(OP_RW, 1024, request.src_port);
        rw.header.len = 7;
        rw.payload = vec![(GuestAddress(0x1000), 7)];
        backend.handle_tx(&mem, &rw);
        let mut got = [0u8; 7];
        reader.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi host");

        // Host -> guest: bytes land in an rx buffer behind an RW header.
        host.write_all(b"hi guest").unwrap();
        backend.process_host_events();
        let queue = MockSplitQueue::new(&mem, 16);
        let rx = RawDescriptor::from(Descriptor::new(0x8000, 4096, VRING_DESC_F_WRITE as u16, 0));
        queue.build_desc_chain(&[rx]).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        assert!(backend.fill_rx(&mut q, &mem));
        let header: Header = mem.read_obj(GuestAddress(0x8000)).unwrap();
        assert_eq!((header.op, header.len, header.dst_port), (OP_RW, 8, 1024));
        let mut payload = [0u8; 8];
        mem.read_slice(
            &mut payload,
            GuestAddress(0x8000 + super::super::packet::HEADER_LEN as u64),
        )
        .unwrap();
        assert_eq!(&payload, b"hi guest");

        // The host hangs up: the guest is told to shut down, and its RST ends it.
        drop(reader);
        drop(host);
        backend.process_host_events();
        let rx = RawDescriptor::from(Descriptor::new(0x9000, 4096, VRING_DESC_F_WRITE as u16, 0));
        queue.build_desc_chain(&[rx]).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        backend.fill_rx(&mut q, &mem);
        let shutdown = backend
            .control
            .pop_front()
            .or_else(|| mem.read_obj::<Header>(GuestAddress(0x9000)).ok());
        assert_eq!(shutdown.map(|h| h.op), Some(OP_SHUTDOWN));
        backend.handle_tx(&mem, &from_guest(OP_RST, 1024, request.src_port));
        assert!(backend.conns.is_empty());
    }
}
