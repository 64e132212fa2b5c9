//! A vsock device between fuzz-built guest queues and real host sockets.
//!
//! The guest side is three split queues (rx, tx, event) in [`queue::memory`],
//! filled from the input with packets (headers whose fields, ports and CIDs
//! come from the input, split over descriptors where the input says) or raw
//! descriptor chains. The host side is real: Unix streams connected to the
//! device's `uds_path` that write `CONNECT <port>\n` and data, and listeners
//! at `<uds_path>_<port>` for connections the guest opens. Each step is one
//! bounded call into the device or one non-blocking socket operation.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use ember::devices::virtio::vsock::packet::{Header, Op, HOST_CID, TYPE_STREAM};
use ember::devices::virtio::vsock::Vsock;
use ember::devices::virtio::VirtioDevice;
use ember::vstate::memory::GuestMemoryMmap;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use crate::bytes::Reader;
use crate::queue::{self, read_chain, Desc, Ring, DATA_START, LOW_END, NEXT, QSIZE};
use crate::scratch;

pub const GUEST_CID: u64 = 3;
/// The muxer numbers the host ends of host-initiated connections from here.
pub const LOCAL_PORT_BASE: u32 = 1 << 30;
/// Credit the fuzz guest announces unless the input says otherwise.
pub const GUEST_BUF_ALLOC: u32 = 256 << 10;

pub const RX: usize = 0;
pub const TX: usize = 1;
pub const EVENT: usize = 2;

/// Steps per input, host sockets and listeners per input: enough for every
/// path, few enough that no connect waits on a full backlog.
const MAX_STEPS: usize = 64;
const MAX_HOSTS: usize = 8;
const MAX_LISTENERS: usize = 4;
const MAX_ACCEPTED: usize = 8;
/// Largest packet payload the input places in guest memory.
pub const MAX_PAYLOAD: usize = 2048;

/// The step opcodes, in [`Harness::step`] order (the seeds use them).
pub mod op {
    pub const PACKET: u8 = 0;
    pub const RAW_TX: u8 = 1;
    pub const RX_CHAINS: u8 = 2;
    pub const BACKEND: u8 = 3;
    pub const HOST_CONNECT: u8 = 4;
    pub const HOST_WRITE: u8 = 5;
    pub const HOST_READ: u8 = 6;
    pub const HOST_CLOSE: u8 = 7;
    pub const LISTEN: u8 = 8;
    pub const ACCEPT: u8 = 9;
    pub const RESET: u8 = 10;
    pub const EVENT_CHAIN: u8 = 11;
    pub const RAW_HEAD: u8 = 12;
    pub const COUNT: u8 = 13;
}

pub struct Harness {
    pub mem: GuestMemoryMmap,
    pub dev: Vsock,
    pub queues: Vec<Queue>,
    rings: Vec<Ring>,
    uds: PathBuf,
    /// Host ends of connections to `uds_path` (host-initiated).
    hosts: Vec<UnixStream>,
    /// Guest ports those connections asked for.
    connect_ports: Vec<u32>,
    /// Host ends of guest-initiated connections, accepted from `listeners`.
    accepted: Vec<UnixStream>,
    listeners: Vec<(u32, UnixListener, PathBuf)>,
    /// Where the next packet goes in guest memory.
    cursor: u64,
    /// Host connections whose `CONNECT` line the muxer took, in order.
    handshakes: u32,
}

impl Harness {
    /// A fresh device listening in the scratch directory; `None` if the
    /// host refuses a socket (then the input is skipped).
    pub fn new() -> Option<Self> {
        crate::ignore_sigpipe();
        let uds = scratch::fresh("v.sock");
        let dev = Vsock::new(GUEST_CID, &uds).ok()?;
        let mem = queue::memory();
        let rings: Vec<Ring> = (0..3)
            .map(|i| Ring::new(&mem, queue::ring_base(i), QSIZE))
            .collect();
        let queues = rings.iter().map(Ring::queue).collect();
        Some(Harness {
            mem,
            dev,
            queues,
            rings,
            uds,
            hosts: Vec::new(),
            connect_ports: Vec::new(),
            accepted: Vec::new(),
            listeners: Vec::new(),
            cursor: DATA_START,
            handshakes: 0,
        })
    }

    /// Runs the steps the input describes.
    pub fn run(&mut self, r: &mut Reader) {
        for _ in 0..MAX_STEPS {
            if r.is_empty() {
                break;
            }
            self.step(r);
        }
        // Whatever the input left waiting gets one more round.
        self.backend(true);
    }

    /// One step: an opcode byte (modulo [`op::COUNT`]) and its operands.
    /// `PACKET`: a packet from the guest (see `read_packet`) in one to three
    /// descriptors; `RAW_TX`: a chain (`queue::read_chain`), optionally with
    /// a header at its first buffer; `RX_CHAINS`: one to four rx chains;
    /// `BACKEND`: host-side activity, with the driver ready or not; the
    /// `HOST_*` steps: a host connects (`CONNECT` to a port, or any line),
    /// writes (a chunk or a bulk), reads, closes or shuts down; `LISTEN`:
    /// a host listens on a port; `ACCEPT`: listeners take the guest's
    /// connections; `RESET`: a device reset, or a restore with an event
    /// buffer; `EVENT_CHAIN`: an event buffer; `RAW_HEAD`: any head index
    /// published on the rx or tx queue.
    pub fn step(&mut self, r: &mut Reader) {
        match r.u8() % op::COUNT {
            op::PACKET => {
                let (header, payload) = self.read_packet(r);
                self.send_split(r, &header, payload);
            }
            op::RAW_TX => self.raw_tx(r),
            op::RX_CHAINS => {
                for _ in 0..1 + r.u8() % 4 {
                    let chain = read_chain(r, true);
                    self.rings[RX].add(&self.mem, &chain);
                }
                self.run_queue(RX);
            }
            op::BACKEND => self.backend(r.bool()),
            op::HOST_CONNECT => self.host_connect(r),
            op::HOST_WRITE => self.host_write(r),
            op::HOST_READ => self.host_read(r),
            op::HOST_CLOSE => self.host_close(r),
            op::LISTEN => self.listen(r),
            op::ACCEPT => self.accept(),
            op::RESET => {
                if r.bool() {
                    self.dev.reset();
                } else {
                    let chain = read_chain(r, true);
                    self.rings[EVENT].add(&self.mem, &chain);
                    self.dev.restored(&mut self.queues, &self.mem);
                }
            }
            op::EVENT_CHAIN => {
                let chain = read_chain(r, true);
                self.rings[EVENT].add(&self.mem, &chain);
                self.run_queue(EVENT);
            }
            _ => {
                let index = if r.bool() { TX } else { RX };
                self.rings[index].publish(&self.mem, r.u16());
                self.run_queue(index);
            }
        }
    }

    /// A notification of queue `index`, run again while the device asks to
    /// be (a few times: the event loop would, between other work).
    pub fn run_queue(&mut self, index: usize) {
        for _ in 0..4 {
            let activity = self.dev.process_queue(index, &mut self.queues, &self.mem);
            if activity.rerun.is_none() {
                break;
            }
        }
    }

    /// Activity on the device's host side, with the driver ready or not yet.
    pub fn backend(&mut self, ready: bool) {
        let queues = ready.then_some(self.queues.as_mut_slice());
        self.dev.process_backend(0, queues, &self.mem);
    }

    /// A port: a host-initiated connection's host end, a port a host asked
    /// for, a listener's, the function port, or anything.
    fn read_port(&self, r: &mut Reader) -> u32 {
        match r.u8() % 6 {
            0 => LOCAL_PORT_BASE + u32::from(r.u8() % 8),
            1 => {
                let k = usize::from(r.u8());
                self.connect_ports
                    .get(k % self.connect_ports.len().max(1))
                    .copied()
                    .unwrap_or(1024)
            }
            2 => {
                let k = usize::from(r.u8());
                self.listeners
                    .get(k % self.listeners.len().max(1))
                    .map_or(5000, |l| l.0)
            }
            3 => 1024,
            4 => u32::from(r.u8()),
            _ => r.u32(),
        }
    }

    /// A packet header (and payload) from the guest: the right CIDs and type
    /// and a truthful length unless the input says otherwise.
    fn read_packet<'a>(&self, r: &mut Reader<'a>) -> (Header, &'a [u8]) {
        let tag = r.u8();
        // Any 16-bit op: those the specification lacks all decode as `None`.
        let op = Op::from_u16(if tag & 0x10 != 0 {
            r.u16()
        } else {
            u16::from(r.u8() % 8)
        });
        let src_port = self.read_port(r);
        let dst_port = self.read_port(r);
        let src_cid = if tag & 1 != 0 { r.u64() } else { GUEST_CID };
        let dst_cid = if tag & 2 != 0 { r.u64() } else { HOST_CID };
        let kind = if tag & 4 != 0 { r.u16() } else { TYPE_STREAM };
        let len = (tag & 8 != 0).then(|| r.u32());
        let flags = if tag & 0x20 != 0 {
            r.u32()
        } else {
            u32::from(r.u8() % 4)
        };
        let buf_alloc = if tag & 0x40 != 0 {
            r.u32()
        } else {
            GUEST_BUF_ALLOC
        };
        let fwd_cnt = if tag & 0x80 != 0 { r.u32() } else { 0 };
        let payload = r.chunk(MAX_PAYLOAD);
        let header = Header {
            src_cid,
            dst_cid,
            src_port,
            dst_port,
            len: len.unwrap_or(payload.len() as u32),
            kind,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        };
        (header, payload)
    }

    /// Room for `len` bytes in the data area of the first region.
    fn place(&mut self, len: usize) -> u64 {
        let len = (len as u64 + 7) & !7;
        if self.cursor + len > LOW_END {
            self.cursor = DATA_START;
        }
        let at = self.cursor;
        self.cursor += len;
        at
    }

    /// Writes the packet to guest memory and sends it on the tx queue, in
    /// one to three descriptors cut where the input says.
    fn send_split(&mut self, r: &mut Reader, header: &Header, payload: &[u8]) {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        let at = self.place(bytes.len());
        let _ = self.mem.write_slice(&bytes, GuestAddress(at));
        let pieces = 1 + r.u8() % 3;
        let mut cuts: Vec<usize> = (1..pieces)
            .map(|_| usize::from(r.u16()) % (bytes.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut start = 0;
        let mut descs = Vec::new();
        for (i, &end) in cuts.iter().enumerate() {
            descs.push(Desc {
                addr: at + start as u64,
                len: (end - start) as u32,
                flags: if i + 1 < cuts.len() { NEXT } else { 0 },
                next: None,
            });
            start = end;
        }
        self.rings[TX].add(&self.mem, &descs);
        self.run_queue(TX);
    }

    /// Sends a well-formed packet in one descriptor.
    pub fn send(&mut self, header: &Header, payload: &[u8]) {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(payload);
        let at = self.place(bytes.len());
        let _ = self.mem.write_slice(&bytes, GuestAddress(at));
        let desc = Desc {
            addr: at,
            len: bytes.len() as u32,
            flags: 0,
            next: None,
        };
        self.rings[TX].add(&self.mem, &[desc]);
        self.run_queue(TX);
    }

    /// A raw tx chain, with a packet header at its first buffer if the input
    /// says so (and that buffer is in memory).
    fn raw_tx(&mut self, r: &mut Reader) {
        let chain = read_chain(r, false);
        if r.bool() {
            let (header, _) = self.read_packet(r);
            let _ = self
                .mem
                .write_slice(&header.encode(), GuestAddress(chain[0].addr));
        }
        self.rings[TX].add(&self.mem, &chain);
        self.run_queue(TX);
    }

    /// A host process connects to `uds_path` and asks for a guest port (or
    /// writes any line at all).
    fn host_connect(&mut self, r: &mut Reader) {
        if self.hosts.len() >= MAX_HOSTS {
            return;
        }
        let (line, port) = match r.u8() % 4 {
            0 => (Vec::new(), Some(1024)),
            1 => (Vec::new(), Some(u32::from(r.u8()))),
            2 => (Vec::new(), Some(r.u32())),
            _ => (r.chunk(64).to_vec(), None),
        };
        let line = match port {
            Some(port) => format!("CONNECT {port}\n").into_bytes(),
            None => line,
        };
        if let Some(stream) = self.connect_host(&line) {
            self.connect_ports.extend(port);
            self.hosts.push(stream);
        }
    }

    fn connect_host(&self, line: &[u8]) -> Option<UnixStream> {
        let mut stream = UnixStream::connect(&self.uds).ok()?;
        stream.set_nonblocking(true).ok()?;
        let _ = stream.write(line);
        Some(stream)
    }

    /// The host end of a connection: host-initiated ones first, then accepted ones.
    fn stream(&mut self, r: &mut Reader) -> Option<&mut UnixStream> {
        let count = self.hosts.len() + self.accepted.len();
        if count == 0 {
            r.u8();
            return None;
        }
        let k = usize::from(r.u8()) % count;
        match k.checked_sub(self.hosts.len()) {
            None => self.hosts.get_mut(k),
            Some(k) => self.accepted.get_mut(k),
        }
    }

    /// A host writes a chunk of the input, or a bulk of up to 64 KiB that
    /// fills socket buffers and guest credit.
    fn host_write(&mut self, r: &mut Reader) {
        let bulk = r.u8();
        let data: Vec<u8> = if bulk & 1 == 0 {
            r.chunk(4096).to_vec()
        } else {
            vec![bulk; 1024 * (1 + usize::from(bulk >> 2))]
        };
        if let Some(stream) = self.stream(r) {
            let mut at = 0;
            while at < data.len() {
                match stream.write(&data[at..]) {
                    Ok(0) => break,
                    Ok(n) => at += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// A host reads what it has been sent (up to 256 KiB), without waiting.
    fn host_read(&mut self, r: &mut Reader) {
        if let Some(stream) = self.stream(r) {
            let mut buf = [0u8; 16 * 1024];
            for _ in 0..16 {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }

    /// A host closes its end, or shuts one direction.
    fn host_close(&mut self, r: &mut Reader) {
        let how = r.u8() % 3;
        let count = self.hosts.len() + self.accepted.len();
        if count == 0 {
            r.u8();
            return;
        }
        let k = usize::from(r.u8()) % count;
        let (list, k) = match k.checked_sub(self.hosts.len()) {
            None => (&mut self.hosts, k),
            Some(k) => (&mut self.accepted, k),
        };
        match how {
            0 => {
                list.remove(k);
            }
            1 => {
                let _ = list[k].shutdown(Shutdown::Write);
            }
            _ => {
                let _ = list[k].shutdown(Shutdown::Read);
            }
        }
    }

    /// A host process listens on `<uds_path>_<port>`.
    fn listen(&mut self, r: &mut Reader) {
        let port = match r.u8() % 3 {
            0 => 5000 + u32::from(r.u8() % 4),
            1 => u32::from(r.u8()),
            _ => r.u32(),
        };
        self.bind(port);
    }

    pub fn bind(&mut self, port: u32) -> bool {
        if self.listeners.len() >= MAX_LISTENERS || self.listeners.iter().any(|l| l.0 == port) {
            return false;
        }
        let mut path = self.uds.clone().into_os_string();
        path.push(format!("_{port}"));
        let path = PathBuf::from(path);
        let _ = std::fs::remove_file(&path);
        let Ok(listener) = UnixListener::bind(&path) else {
            return false;
        };
        if listener.set_nonblocking(true).is_err() {
            return false;
        }
        self.listeners.push((port, listener, path));
        true
    }

    /// The listeners take the connections the guest opened.
    pub fn accept(&mut self) {
        for (_, listener, _) in &self.listeners {
            while self.accepted.len() < MAX_ACCEPTED {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                if stream.set_nonblocking(true).is_ok() {
                    self.accepted.push(stream);
                }
            }
        }
    }

    /// A header from the guest with the right CIDs, type and credit.
    pub fn guest_header(op: Op, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            kind: TYPE_STREAM,
            op: Some(op),
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
        }
    }

    /// A host connection to guest port `guest_port` that the guest accepts:
    /// `CONNECT`, the muxer's REQUEST, the guest's RESPONSE, `OK`. True when
    /// the host got its `OK`.
    pub fn establish_host(&mut self, guest_port: u32) -> bool {
        if self.hosts.len() >= MAX_HOSTS {
            return false;
        }
        let Some(mut stream) = self.connect_host(format!("CONNECT {guest_port}\n").as_bytes())
        else {
            return false;
        };
        // One round accepts the connection, the next reads its line.
        self.backend(false);
        self.backend(false);
        let local_port = LOCAL_PORT_BASE + self.handshakes;
        self.handshakes += 1;
        let response = Self::guest_header(Op::Response, guest_port, local_port, 0);
        self.send(&response, &[]);
        let mut ok = [0u8; 64];
        let established = matches!(stream.read(&mut ok), Ok(n) if ok[..n].starts_with(b"OK "));
        self.connect_ports.push(guest_port);
        self.hosts.push(stream);
        established
    }

    /// A connection the guest opens from `guest_port` to a host listening on
    /// `host_port`, accepted by the host. True when it was accepted.
    pub fn establish_guest(&mut self, guest_port: u32, host_port: u32) -> bool {
        self.bind(host_port);
        let before = self.accepted.len();
        let request = Self::guest_header(Op::Request, guest_port, host_port, 0);
        self.send(&request, &[]);
        self.accept();
        self.accepted.len() > before
    }

    /// How many host ends there are: host-initiated, and accepted from listeners.
    pub fn connections(&self) -> (usize, usize) {
        (self.hosts.len(), self.accepted.len())
    }

    /// `vsock_rx`'s setup: a byte saying how many connections to establish
    /// each way (bits 0-1: host-initiated, to guest ports 1024..; bits 2-3:
    /// guest-initiated, from guest ports 2000.. to host ports 5000..), then
    /// a chunk of data from each host end, which the device then notices.
    pub fn rx_setup(&mut self, r: &mut Reader) {
        let setup = r.u8();
        for i in 0..u32::from(setup & 3) {
            self.establish_host(1024 + i);
        }
        for i in 0..u32::from((setup >> 2) & 3) {
            self.establish_guest(2000 + i, 5000 + i);
        }
        self.host_data(r);
        self.backend(true);
    }

    /// One chunk of the input written by each host end, in turn.
    pub fn host_data(&mut self, r: &mut Reader) {
        for stream in self.hosts.iter_mut().chain(self.accepted.iter_mut()) {
            let _ = stream.write(r.chunk(8192));
        }
    }

    /// Guest data on an established connection.
    pub fn guest_write(&mut self, guest_port: u32, host_port: u32, data: &[u8]) {
        let rw = Self::guest_header(Op::Rw, guest_port, host_port, data.len() as u32);
        self.send(&rw, data);
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The device removes `uds_path` itself.
        for (_, _, path) in &self.listeners {
            let _ = std::fs::remove_file(path);
        }
    }
}
