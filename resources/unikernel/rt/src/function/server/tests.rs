//! The server's unit tests: packets in, packets and requests out, as a peer and
//! the function would see them.

use alloc::vec;
use alloc::vec::Vec;

use super::*;
use crate::function::framing::{Request, Status};
use crate::virtio::vsock::credit::BUF_ALLOC;
use crate::virtio::vsock::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

const GUEST: u64 = 3;
const PORT: u32 = 1024;
const PEER_BUF: u32 = 256 * 1024;

fn header(op: Op, peer_port: u32) -> Header {
    Header {
        src_cid: 2,
        dst_cid: GUEST,
        src_port: peer_port,
        dst_port: PORT,
        len: 0,
        kind: TYPE_STREAM,
        op: Some(op),
        flags: 0,
        buf_alloc: PEER_BUF,
        fwd_cnt: 0,
    }
}

fn server() -> Server {
    Server::new(GUEST, PORT, 64 << 20)
}

fn drain(server: &mut Server) -> Vec<Outgoing> {
    core::iter::from_fn(|| server.next_packet()).collect()
}

fn ops(packets: &[Outgoing]) -> Vec<(Op, u32)> {
    packets
        .iter()
        .map(|p| (p.header.op.unwrap(), p.header.dst_port))
        .collect()
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn connect(server: &mut Server, peer_port: u32) {
    server.receive(&header(Op::Request, peer_port), &[]);
    let reply = drain(server);
    assert_eq!(ops(&reply), [(Op::Response, peer_port)]);
}

fn send(server: &mut Server, peer_port: u32, data: &[u8]) {
    let mut h = header(Op::Rw, peer_port);
    h.len = u32::try_from(data.len()).unwrap();
    server.receive(&h, data);
}

#[test]
fn answers_connections_and_refuses_strangers() {
    let mut server = server();
    server.receive(&header(Op::Request, 7000), &[]);
    let reply = drain(&mut server);
    let h = reply[0].header;
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (GUEST, 2, PORT, 7000)
    );
    assert_eq!(
        (h.op, h.buf_alloc, h.fwd_cnt),
        (Some(Op::Response), BUF_ALLOC, 0)
    );

    let mut other_port = header(Op::Request, 7001);
    other_port.dst_port = 99;
    server.receive(&other_port, &[]);
    let reply = drain(&mut server);
    assert_eq!(ops(&reply), [(Op::Rst, 7001)]);
    assert_eq!(reply[0].header.src_port, 99);

    send(&mut server, 7002, b"data");
    let mut wrong_cid = header(Op::Request, 7003);
    wrong_cid.dst_cid = 4;
    server.receive(&wrong_cid, &[]);
    let mut datagram = header(Op::Request, 7004);
    datagram.kind = 3;
    server.receive(&datagram, &[]);
    let mut unknown = header(Op::Rw, 7005);
    unknown.op = None;
    server.receive(&unknown, &[]);
    server.receive(&header(Op::Rst, 7006), &[]);
    let reply = drain(&mut server);
    assert_eq!(
        ops(&reply),
        [
            (Op::Rst, 7002),
            (Op::Rst, 7003),
            (Op::Rst, 7004),
            (Op::Rst, 7005)
        ]
    );

    // The accepted connection is still there.
    send(&mut server, 7000, &frame(b"x"));
    assert_eq!(
        server.take_request(),
        Some((0, Request::Data(b"x".to_vec())))
    );
}

#[test]
fn streams_a_16_mib_request_without_stalling() {
    let mut server = server();
    server.receive(&header(Op::Request, 7000), &[]);
    // What the peer knows of the guest's credit: (buf_alloc, fwd_cnt).
    let learn = |known: (u32, u32), packets: Vec<Outgoing>| {
        packets
            .last()
            .map_or(known, |p| (p.header.buf_alloc, p.header.fwd_cnt))
    };
    let (mut our_buf, mut our_fwd) = learn((0, 0), drain(&mut server));
    let body: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
    let stream = frame(&body);
    let mut sent = 0u32;
    for chunk in stream.chunks(MAX_PAYLOAD) {
        let window = our_buf - sent.wrapping_sub(our_fwd);
        assert!(window as usize >= chunk.len(), "stalled after {sent} bytes");
        send(&mut server, 7000, chunk);
        sent += u32::try_from(chunk.len()).unwrap();
        (our_buf, our_fwd) = learn((our_buf, our_fwd), drain(&mut server));
    }
    let (_, request) = server.take_request().unwrap();
    assert_eq!(request, Request::Data(body));
}

#[test]
fn sends_responses_within_the_peers_credit() {
    let mut server = server();
    let mut request = header(Op::Request, 7000);
    request.buf_alloc = 100_000;
    server.receive(&request, &[]);
    drain(&mut server);
    let data = frame(b"in");
    let mut rw = header(Op::Rw, 7000);
    rw.buf_alloc = 100_000;
    rw.len = u32::try_from(data.len()).unwrap();
    server.receive(&rw, &data);
    let (conn, _) = server.take_request().unwrap();
    server.start_response(conn, Status::Ok, 300_000);
    let packets = drain(&mut server);
    assert_eq!(
        packets.iter().map(|p| &p.payload).collect::<Vec<_>>(),
        [
            &Payload::Data {
                inline: [0, 0xe0, 0x93, 0x04, 0],
                inline_len: 5,
                offset: 0,
                len: 65536 - 5
            },
            &Payload::Data {
                inline: [0; 5],
                inline_len: 0,
                offset: 65536 - 5,
                len: 100_000 - 65536
            },
            &Payload::None,
        ]
    );
    assert_eq!(packets[2].header.op, Some(Op::CreditRequest));
    assert_eq!(packets[0].header.len, 65536);
    assert!(server.responding());

    let mut update = header(Op::CreditUpdate, 7000);
    update.buf_alloc = 100_000;
    update.fwd_cnt = 100_000;
    server.receive(&update, &[]);
    let mut offset = 100_000 - 5;
    while server.responding() {
        for p in drain(&mut server) {
            match p.payload {
                Payload::Data {
                    offset: at,
                    len,
                    inline_len: 0,
                    ..
                } => {
                    assert_eq!(at, offset);
                    offset += len;
                }
                _ => assert_eq!(p.header.op, Some(Op::CreditRequest)),
            }
        }
        update.fwd_cnt = u32::try_from(offset + 5).unwrap();
        server.receive(&update, &[]);
    }
    assert_eq!(offset, 300_000);
}

#[test]
fn serves_requests_in_completion_order() {
    let mut server = server();
    for port in [7000, 7001] {
        connect(&mut server, port);
    }
    let a = frame(b"first to start");
    send(&mut server, 7000, &a[..6]);
    send(&mut server, 7001, &frame(b"first to finish"));
    send(&mut server, 7000, &a[6..]);
    assert_eq!(
        server.take_request(),
        Some((1, Request::Data(b"first to finish".to_vec())))
    );
    assert_eq!(
        server.take_request(),
        Some((0, Request::Data(b"first to start".to_vec())))
    );
    assert_eq!(server.take_request(), None);
}

#[test]
fn credits_pipelined_requests_when_taken() {
    let mut server = server();
    connect(&mut server, 7000);
    let mut both = frame(b"one");
    both.extend(frame(b"two!"));
    send(&mut server, 7000, &both);
    server.receive(&header(Op::CreditRequest, 7000), &[]);
    let update = drain(&mut server);
    assert_eq!(ops(&update), [(Op::CreditUpdate, 7000)]);
    assert_eq!(update[0].header.fwd_cnt, 7);
    assert_eq!(
        server.take_request(),
        Some((0, Request::Data(b"one".to_vec())))
    );
    server.receive(&header(Op::CreditRequest, 7000), &[]);
    assert_eq!(drain(&mut server)[0].header.fwd_cnt, 15);
    assert_eq!(
        server.take_request(),
        Some((0, Request::Data(b"two!".to_vec())))
    );
}

#[test]
fn resets_a_peer_that_ignores_credit() {
    let mut server = server();
    connect(&mut server, 7000);
    send(&mut server, 7000, &frame(b"done"));
    let flood = vec![0; MAX_PAYLOAD];
    for _ in 0..BUF_ALLOC as usize / MAX_PAYLOAD {
        send(&mut server, 7000, &flood);
    }
    assert!(drain(&mut server).is_empty());
    send(&mut server, 7000, b"!");
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);
    assert_eq!(server.take_request(), None);
}

#[test]
fn closes_after_the_last_answer_once_the_peer_stops_sending() {
    let mut server = server();
    connect(&mut server, 7000);
    send(&mut server, 7000, &frame(b"q"));
    let mut shutdown = header(Op::Shutdown, 7000);
    shutdown.flags = SHUTDOWN_SEND;
    server.receive(&shutdown, &[]);
    assert!(drain(&mut server).is_empty());
    let (conn, _) = server.take_request().unwrap();
    server.start_response(conn, Status::Ok, 1);
    let packets = drain(&mut server);
    // The prefix and the 1-byte body go out together.
    assert_eq!(ops(&packets), [(Op::Rw, 7000), (Op::Shutdown, 7000)]);
    assert_eq!(packets[0].header.len, 6);
    assert_eq!(packets[1].header.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    server.receive(&header(Op::Rst, 7000), &[]);
    send(&mut server, 7000, b"late");
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);

    // A partial request can never complete: close at once.
    connect(&mut server, 7001);
    send(&mut server, 7001, &frame(b"cut short")[..5]);
    shutdown.src_port = 7001;
    server.receive(&shutdown, &[]);
    assert_eq!(ops(&drain(&mut server)), [(Op::Shutdown, 7001)]);
    assert_eq!(server.take_request(), None);

    // A peer that will not receive cannot be answered.
    connect(&mut server, 7002);
    send(&mut server, 7002, &frame(b"q"));
    shutdown.src_port = 7002;
    shutdown.flags = SHUTDOWN_RCV;
    server.receive(&shutdown, &[]);
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7002)]);
    assert_eq!(server.take_request(), None);
}

#[test]
fn resets_connections_with_broken_packets() {
    let mut server = server();
    connect(&mut server, 7000);
    let mut truncated = header(Op::Rw, 7000);
    truncated.len = 10;
    server.refuse(&truncated);
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);
    send(&mut server, 7000, &frame(b"q"));
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 7000)]);
    assert_eq!(server.take_request(), None);
}

#[test]
fn forgets_everything_silently_on_transport_reset() {
    let mut server = server();
    connect(&mut server, 7000);
    send(&mut server, 7000, &frame(b"q"));
    let (conn, _) = server.take_request().unwrap();
    server.start_response(conn, Status::Ok, 10);
    server.transport_reset(5);
    assert!(!server.responding());
    assert!(drain(&mut server).is_empty());
    let mut request = header(Op::Request, 7000);
    request.dst_cid = 5;
    server.receive(&request, &[]);
    let reply = drain(&mut server);
    assert_eq!(ops(&reply), [(Op::Response, 7000)]);
    assert_eq!(reply[0].header.src_cid, 5);
}

#[test]
fn opens_reads_writes_and_closes_client_connections() {
    let mut server = server();
    let id = server.connect(5000).unwrap();
    assert_eq!(server.client_state(id), ClientState::Connecting);
    let request = drain(&mut server);
    let h = request[0].header;
    assert_eq!((h.op, h.dst_cid, h.dst_port), (Some(Op::Request), 2, 5000));
    let local = h.src_port;
    assert!(CLIENT_PORTS.contains(&local));
    assert!(!server.start_send(id, 1));

    let from_host = |op, len| Header {
        src_port: 5000,
        dst_port: local,
        len,
        ..header(op, 5000)
    };
    server.receive(&from_host(Op::Response, 0), &[]);
    assert_eq!(
        server.client_state(id),
        ClientState::Open {
            readable: 0,
            eof: false
        }
    );
    assert!(server.start_send(id, 10));
    let sent = drain(&mut server);
    assert_eq!(
        sent[0].payload,
        Payload::Data {
            inline: [0; 5],
            inline_len: 0,
            offset: 0,
            len: 10
        }
    );
    assert_eq!((sent[0].header.src_port, sent[0].header.len), (local, 10));
    assert!(!server.responding());

    server.receive(&from_host(Op::Rw, 2), b"hi");
    let mut got = Vec::new();
    assert_eq!(server.read(id, &mut got), 2);
    assert_eq!(got, b"hi");
    let mut shutdown = from_host(Op::Shutdown, 0);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    server.receive(&shutdown, &[]);
    assert_eq!(
        server.client_state(id),
        ClientState::Open {
            readable: 0,
            eof: true
        }
    );
    assert!(!server.start_send(id, 1));
    server.close(id);
    let reset = drain(&mut server);
    assert_eq!(ops(&reset), [(Op::Rst, 5000)]);
    assert_eq!(reset[0].header.src_port, local);
    assert_eq!(server.client_state(id), ClientState::Gone);

    // Refused.
    let id = server.connect(5001).unwrap();
    let local = drain(&mut server)[0].header.src_port;
    server.receive(
        &Header {
            src_port: 5001,
            dst_port: local,
            ..header(Op::Rst, 5001)
        },
        &[],
    );
    assert_eq!(server.client_state(id), ClientState::Gone);
    server.close(id);
    assert!(drain(&mut server).is_empty());
}

#[test]
fn keeps_what_a_reset_client_received() {
    let mut server = server();
    let id = server.connect(5000).unwrap();
    let local = drain(&mut server)[0].header.src_port;
    let from_host = |op, len| Header {
        src_port: 5000,
        dst_port: local,
        len,
        ..header(op, 5000)
    };
    server.receive(&from_host(Op::Response, 0), &[]);
    server.receive(&from_host(Op::Rw, 3), b"bye");
    server.receive(&from_host(Op::Rst, 0), &[]);
    assert_eq!(
        server.client_state(id),
        ClientState::Open {
            readable: 3,
            eof: true
        }
    );
    server.close(id);
    assert!(drain(&mut server).is_empty());

    // A graceful close waits for the host's RST.
    let id = server.connect(5000).unwrap();
    let local = drain(&mut server)[0].header.src_port;
    let from_host = |op| Header {
        src_port: 5000,
        dst_port: local,
        ..header(op, 5000)
    };
    server.receive(&from_host(Op::Response), &[]);
    server.close(id);
    let shutdown = drain(&mut server);
    assert_eq!(ops(&shutdown), [(Op::Shutdown, 5000)]);
    server.receive(&from_host(Op::Rst), &[]);
    assert!(server.conns.is_empty());

    // After a panic, whatever the function held is reset.
    let id = server.connect(5000).unwrap();
    drain(&mut server);
    server.close_clients();
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 5000)]);
    assert_eq!(server.client_state(id), ClientState::Gone);
}

#[test]
fn reports_client_writes_cut_short() {
    let mut server = server();
    let id = server.connect(5000).unwrap();
    let local = drain(&mut server)[0].header.src_port;
    let response = Header {
        src_port: 5000,
        dst_port: local,
        ..header(Op::Response, 5000)
    };
    server.receive(&response, &[]);
    assert!(server.start_send(id, 1 << 20));
    drain(&mut server);
    assert!(server.responding());
    server.transport_reset(GUEST);
    assert!(!server.responding());
    assert!(server.send_dropped());
    assert_eq!(server.client_state(id), ClientState::Gone);
}

#[test]
fn evicts_closing_connections_when_full() {
    let mut server = server();
    for port in 0..u32::try_from(MAX_CONNECTIONS).unwrap() {
        connect(&mut server, 7000 + port);
    }
    server.receive(&header(Op::Request, 8000), &[]);
    assert_eq!(ops(&drain(&mut server)), [(Op::Rst, 8000)]);

    let mut shutdown = header(Op::Shutdown, 7003);
    shutdown.flags = SHUTDOWN_SEND;
    server.receive(&shutdown, &[]);
    assert_eq!(ops(&drain(&mut server)), [(Op::Shutdown, 7003)]);
    server.receive(&header(Op::Request, 8000), &[]);
    assert_eq!(
        ops(&drain(&mut server)),
        [(Op::Rst, 7003), (Op::Response, 8000)]
    );
}
