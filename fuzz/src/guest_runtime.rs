//! The guest runtime's invocation server (`rt::function::server::Server`) as a
//! function's vsock driver feeds it: receive buffers holding any bytes, parsed by
//! `rt::virtio::vsock::packet::parse` and handed over as the runtime does, between
//! the calls the runtime makes (take a request, start a response, open, read, write
//! and close client streams, transport resets, send what is due).
//!
//! Input: the largest request (u16), then steps, each an op byte and its operands:
//! 0 a receive buffer (a chunk), 1 take a request, 2 start a response (connection,
//! status, body length), 3 send everything due, 4 connect to a host port, 5 look
//! at, read or close a client connection, 6 start a client write (connection,
//! length), 7 a transport reset (to the same CID or another), 8 close every client.

use rt::function::framing::{Request, Status};
use rt::function::server::{ConnId, Payload, Server};
use rt::virtio::vsock::packet::{self, Header, Op, Received, HEADER_LEN, HOST_CID, TYPE_STREAM};

use crate::bytes::{Reader, Writer};

/// The guest's CID and the port functions listen on, as ember configures them.
pub const GUEST_CID: u64 = 3;
pub const PORT: u32 = 1024;

pub mod op {
    pub const RECEIVE: u8 = 0;
    pub const TAKE_REQUEST: u8 = 1;
    pub const RESPOND: u8 = 2;
    pub const SEND: u8 = 3;
    pub const CONNECT: u8 = 4;
    pub const CLIENT: u8 = 5;
    pub const CLIENT_WRITE: u8 = 6;
    pub const TRANSPORT_RESET: u8 = 7;
    pub const CLOSE_CLIENTS: u8 = 8;
}

/// More packets than any state can owe at once (resets, handshakes, credit and
/// shutdowns of every connection) plus one per byte of the largest body: a
/// sender that gets more than this from `next_packet` is in a loop.
const PACKETS_OWED_AT_MOST: usize = 4096 + u16::MAX as usize;

/// What a run did, for the seed tests.
#[derive(Debug, Default)]
pub struct Summary {
    pub requests: Vec<Request>,
    pub packets_sent: usize,
    pub body_bytes_sent: usize,
}

/// Runs the steps in `data`, asserting what must hold whatever the peer sends:
/// no request taken is over the limit, and every packet sent is from the current
/// CID, is a stream packet, carries exactly the bytes its header announces, takes
/// them from within the largest body handed over, and the packets due run out.
pub fn run(data: &[u8]) -> Summary {
    let mut r = Reader::new(data);
    let max_request = usize::from(r.u16());
    let mut server = Server::new(GUEST_CID, PORT, max_request);
    let mut cid = GUEST_CID;
    let mut ids: Vec<ConnId> = Vec::new();
    let mut largest_body = 0;
    let mut summary = Summary::default();
    while !r.is_empty() {
        match r.u8() % 9 {
            op::RECEIVE => {
                let buffer = r.chunk(HEADER_LEN + 1024);
                match packet::parse(buffer) {
                    Some(Received::Packet(header, payload)) => {
                        assert_eq!(payload.len(), header.len as usize);
                        server.receive(&header, payload);
                    }
                    Some(Received::Truncated(header)) => {
                        assert!(buffer.len() - HEADER_LEN < header.len as usize);
                        server.refuse(&header);
                    }
                    None => assert!(buffer.len() < HEADER_LEN),
                }
            }
            op::TAKE_REQUEST => {
                if let Some((id, request)) = server.take_request() {
                    match &request {
                        Request::Data(data) => assert!(data.len() <= max_request),
                        Request::TooLarge(len) => assert!(*len as usize > max_request),
                    }
                    ids.push(id);
                    summary.requests.push(request);
                }
            }
            op::RESPOND => {
                let id = pick(&mut r, &ids);
                let status = [Status::Ok, Status::Error, Status::Panic][usize::from(r.u8() % 3)];
                let len = r.u16();
                server.start_response(id, status, u32::from(len));
                largest_body = largest_body.max(usize::from(len));
            }
            op::SEND => send_all(&mut server, cid, largest_body, &mut summary),
            op::CONNECT => ids.extend(server.connect(r.u32())),
            op::CLIENT => {
                let id = pick(&mut r, &ids);
                match r.u8() % 3 {
                    0 => drop(server.client_state(id)),
                    1 => {
                        let mut out = Vec::new();
                        assert_eq!(server.read(id, &mut out), out.len());
                    }
                    _ => server.close(id),
                }
            }
            op::CLIENT_WRITE => {
                let id = pick(&mut r, &ids);
                let len = usize::from(r.u16());
                if server.start_send(id, len) {
                    largest_body = largest_body.max(len);
                }
            }
            op::TRANSPORT_RESET => {
                cid = if r.bool() { GUEST_CID } else { r.u64() };
                server.transport_reset(cid);
            }
            _ => server.close_clients(),
        }
    }
    send_all(&mut server, cid, largest_body, &mut summary);
    summary
}

/// A connection named by the input: one the run has seen, or any id.
fn pick(r: &mut Reader, ids: &[ConnId]) -> ConnId {
    let choice = usize::from(r.u8());
    match ids.get(choice) {
        Some(&id) if choice < 0xf0 => id,
        _ => r.u64(),
    }
}

fn send_all(server: &mut Server, cid: u64, largest_body: usize, summary: &mut Summary) {
    for _ in 0..PACKETS_OWED_AT_MOST {
        let Some(out) = server.next_packet() else {
            return;
        };
        assert_eq!(out.header.src_cid, cid);
        assert_eq!(out.header.kind, TYPE_STREAM);
        let carried = match out.payload {
            Payload::None => 0,
            Payload::Data {
                inline_len,
                offset,
                len,
                ..
            } => {
                assert!(offset + len <= largest_body, "data beyond the body");
                summary.body_bytes_sent += len;
                inline_len + len
            }
        };
        assert_eq!(out.header.len as usize, carried);
        summary.packets_sent += 1;
    }
    panic!("next_packet never runs out");
}

/// A receive buffer with a packet from the host's `src_port` to the guest's
/// `dst_port`, offering 256 KiB of credit, in the input format.
pub fn receive(w: &mut Writer, operation: Op, ports: (u32, u32), flags: u32, payload: &[u8]) {
    let (src_port, dst_port) = ports;
    let header = Header {
        src_cid: HOST_CID,
        dst_cid: GUEST_CID,
        src_port,
        dst_port,
        len: payload.len() as u32,
        kind: TYPE_STREAM,
        op: Some(operation),
        flags,
        buf_alloc: 256 << 10,
        fwd_cnt: 0,
    };
    let mut buffer = header.encode().to_vec();
    buffer.extend_from_slice(payload);
    w.u8(op::RECEIVE).chunk(&buffer);
}
