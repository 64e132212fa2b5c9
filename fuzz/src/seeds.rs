//! The seed corpus under `fuzz/corpus/<target>/`, written by
//! `cargo test --manifest-path fuzz/Cargo.toml --lib -- --ignored write_seeds`.
//! Each seed is a meaningful input: a valid request, a well-formed packet
//! exchange, a state file ember wrote. The other tests check that the seeds
//! still do what they are meant to.

use std::path::{Path, PathBuf};

use ember::devices::virtio::vsock::packet::Op;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};

use crate::bytes::{Reader, Writer};
use crate::queue::{DATA_START, HIGH_START};
use crate::vsock::{op, Harness};

/// The ops as the harness's input spells them: their 16-bit wire values.
const OP_REQUEST: u16 = Op::Request as u16;
const OP_RESPONSE: u16 = Op::Response as u16;
const OP_RST: u16 = Op::Rst as u16;
const OP_SHUTDOWN: u16 = Op::Shutdown as u16;
const OP_RW: u16 = Op::Rw as u16;
const OP_CREDIT_REQUEST: u16 = Op::CreditRequest as u16;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), data).unwrap();
}

/// Where a buffer is, in [`crate::queue::read_addr`]'s encoding.
#[derive(Clone, Copy)]
enum At {
    Data(u64),
    High(u64),
    /// Runs past the end of the first region: `LOW_END - back`.
    PastLow(u8),
    /// `u64::MAX - back`.
    Top(u16),
    Raw(u64),
}

fn addr(w: &mut Writer, at: At) {
    match at {
        At::Data(a) => w.u8(0).u16((a - DATA_START) as u16),
        At::High(a) => w.u8(4).u16((a - HIGH_START) as u16),
        At::PastLow(back) => w.u8(5).u8(back),
        At::Top(back) => w.u8(6).u16(back),
        At::Raw(a) => w.u8(7).u64(a),
    };
}

fn len(w: &mut Writer, len: u32) {
    match len {
        0..=0xff => w.u8(0).u8(len as u8),
        0x100..=0xffff => w.u8(1).u16(len as u16),
        _ => w.u8(3).u32(len),
    };
}

/// A well-formed chain, as [`crate::queue::read_chain`] reads it.
fn chain(w: &mut Writer, descs: &[(At, u32)]) {
    w.u8(descs.len() as u8 - 1);
    for &(at, l) in descs {
        w.u8(0);
        addr(w, at);
        len(w, l);
    }
}

/// A raw descriptor: flags and `next` as given.
fn raw_desc(w: &mut Writer, at: At, l: u32, flags: u16, next: u16) {
    w.u8(0x80);
    addr(w, at);
    len(w, l);
    w.u16(flags).u16(next);
}

/// Ports in [`Harness`]'s `read_port` encoding.
#[derive(Clone, Copy)]
enum Port {
    /// The host end of the k-th host-initiated connection.
    Local(u8),
    /// The k-th port a host asked for with `CONNECT`.
    Connect(u8),
    /// The k-th listener's port.
    Listener(u8),
    Function,
    Raw(u32),
}

fn port(w: &mut Writer, p: Port) {
    match p {
        Port::Local(k) => w.u8(0).u8(k),
        Port::Connect(k) => w.u8(1).u8(k),
        Port::Listener(k) => w.u8(2).u8(k),
        Port::Function => w.u8(3),
        Port::Raw(v) => w.u8(5).u32(v),
    };
}

/// A packet step: the guest sends `op` from `src` to `dst` with `flags` and
/// `payload`, in `pieces` descriptors (cut evenly).
fn packet(
    w: &mut Writer,
    op_code: u16,
    src: Port,
    dst: Port,
    flags: u8,
    payload: &[u8],
    pieces: u8,
) {
    if op_code < 8 {
        w.u8(op::PACKET).u8(0).u8(op_code as u8);
    } else {
        w.u8(op::PACKET).u8(0x10).u16(op_code);
    }
    port(w, src);
    port(w, dst);
    w.u8(flags).chunk(payload);
    w.u8(pieces - 1);
    let total = 44 + payload.len();
    for i in 1..pieces {
        w.u16((total * usize::from(i) / usize::from(pieces)) as u16);
    }
}

/// A packet whose credit fields the input sets (tag bits 0x40, 0x80).
fn credit_packet(w: &mut Writer, op_code: u16, src: Port, dst: Port, buf_alloc: u32, fwd_cnt: u32) {
    w.u8(op::PACKET).u8(0xc0).u8(op_code as u8);
    port(w, src);
    port(w, dst);
    w.u8(0).u32(buf_alloc).u32(fwd_cnt).chunk(&[]);
    w.u8(0);
}

fn rx_buffers(w: &mut Writer, chains: &[&[(At, u32)]]) {
    w.u8(op::RX_CHAINS).u8(chains.len() as u8 - 1);
    for c in chains {
        chain(w, c);
    }
}

fn vsock_tx_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut w = Writer::new();

    // The guest connects to a host listener, sends data, gets an answer and
    // shuts the connection down.
    w.u8(op::LISTEN).u8(0).u8(0);
    packet(
        &mut w,
        OP_REQUEST,
        Port::Raw(2000),
        Port::Listener(0),
        0,
        b"",
        1,
    );
    w.u8(op::ACCEPT);
    packet(
        &mut w,
        OP_RW,
        Port::Raw(2000),
        Port::Listener(0),
        0,
        b"hello host",
        2,
    );
    w.u8(op::HOST_READ).u8(0);
    w.u8(op::HOST_WRITE).u8(0).chunk(b"hello guest").u8(0);
    rx_buffers(
        &mut w,
        &[&[(At::Data(0x8000), 4096)], &[(At::Data(0x9000), 4096)]],
    );
    w.u8(op::BACKEND).u8(1);
    packet(
        &mut w,
        OP_SHUTDOWN,
        Port::Raw(2000),
        Port::Listener(0),
        3,
        b"",
        1,
    );
    packet(
        &mut w,
        OP_RST,
        Port::Raw(2000),
        Port::Listener(0),
        0,
        b"",
        1,
    );
    seeds.push(("guest-connects", w.finish()));

    // A host connects to the function port; the guest accepts, data flows
    // both ways, the guest asks for credit, the host hangs up.
    w.u8(op::HOST_CONNECT).u8(0);
    w.u8(op::BACKEND).u8(0).u8(op::BACKEND).u8(0);
    rx_buffers(&mut w, &[&[(At::Data(0x8000), 4096)]]);
    packet(
        &mut w,
        OP_RESPONSE,
        Port::Connect(0),
        Port::Local(0),
        0,
        b"",
        1,
    );
    w.u8(op::HOST_READ).u8(0);
    packet(
        &mut w,
        OP_RW,
        Port::Connect(0),
        Port::Local(0),
        0,
        &[0x42; 300],
        3,
    );
    w.u8(op::HOST_WRITE)
        .u8(0)
        .chunk(b"response from the host")
        .u8(0);
    w.u8(op::BACKEND).u8(1);
    rx_buffers(
        &mut w,
        &[&[(At::Data(0x9000), 44), (At::High(HIGH_START), 2048)]],
    );
    packet(
        &mut w,
        OP_CREDIT_REQUEST,
        Port::Connect(0),
        Port::Local(0),
        0,
        b"",
        1,
    );
    w.u8(op::HOST_CLOSE).u8(0).u8(0);
    w.u8(op::BACKEND).u8(1);
    rx_buffers(&mut w, &[&[(At::Data(0xa000), 4096)]]);
    seeds.push(("host-connects", w.finish()));

    // Packets that break the rules: wrong CID, unknown op, data before the
    // handshake, a length past the chain, a request to a closed port.
    w.u8(op::PACKET).u8(0x01).u8(OP_REQUEST as u8);
    port(&mut w, Port::Raw(1));
    port(&mut w, Port::Raw(2));
    w.u64(7).u8(0).chunk(b"").u8(0);
    packet(&mut w, 99, Port::Raw(1), Port::Raw(2), 0, b"", 1);
    packet(&mut w, OP_RW, Port::Raw(1), Port::Raw(2), 0, b"early", 1);
    w.u8(op::PACKET).u8(0x08).u8(OP_RW as u8);
    port(&mut w, Port::Raw(1));
    port(&mut w, Port::Raw(2));
    w.u32(0xffff_ff00).u8(0).chunk(b"short").u8(0);
    packet(
        &mut w,
        OP_REQUEST,
        Port::Raw(3000),
        Port::Raw(6000),
        0,
        b"",
        1,
    );
    rx_buffers(&mut w, &[&[(At::Data(0x8000), 64)]]);
    seeds.push(("protocol-errors", w.finish()));

    // Raw tx chains: outside memory, across the hole, near the top of the
    // address space, a loop, a bogus head.
    w.u8(op::RAW_TX).u8(1);
    raw_desc(&mut w, At::Data(0x5000), 44, 1, 1);
    raw_desc(&mut w, At::PastLow(16), 4096, 0, 0);
    w.u8(1);
    w.u8(0).u8(OP_REQUEST as u8);
    port(&mut w, Port::Function);
    port(&mut w, Port::Raw(5000));
    w.u8(0).chunk(b"");
    w.u8(op::RAW_TX).u8(0);
    raw_desc(&mut w, At::Top(10), 100, 0, 0);
    w.u8(0);
    w.u8(op::RAW_TX).u8(1);
    raw_desc(&mut w, At::Data(0x6000), 44, 1, 1);
    raw_desc(&mut w, At::Data(0x6100), 44, 1, 0);
    w.u8(0);
    w.u8(op::RAW_TX).u8(0);
    raw_desc(&mut w, At::Raw(0x40_0000_0000), 44, 4, 0);
    w.u8(0);
    w.u8(op::RAW_HEAD).u8(1).u16(0xffff);
    seeds.push(("raw-chains", w.finish()));

    // A device reset with a connection open, and the restore's event.
    w.u8(op::HOST_CONNECT).u8(0);
    w.u8(op::BACKEND).u8(0).u8(op::BACKEND).u8(0);
    packet(
        &mut w,
        OP_RESPONSE,
        Port::Connect(0),
        Port::Local(0),
        0,
        b"",
        1,
    );
    w.u8(op::RESET).u8(1);
    w.u8(op::RESET).u8(0);
    chain(&mut w, &[(At::Data(0xb000), 8)]);
    w.u8(op::EVENT_CHAIN);
    chain(&mut w, &[(At::Data(0xb100), 8)]);
    w.u8(op::HOST_WRITE).u8(0).chunk(b"after reset").u8(0);
    w.u8(op::BACKEND).u8(1);
    seeds.push(("reset-and-restore", w.finish()));

    // The guest announces little credit, the host floods, credit updates.
    w.u8(op::LISTEN).u8(0).u8(1);
    packet(
        &mut w,
        OP_REQUEST,
        Port::Raw(2001),
        Port::Listener(0),
        0,
        b"",
        1,
    );
    w.u8(op::ACCEPT);
    credit_packet(&mut w, 6, Port::Raw(2001), Port::Listener(0), 100, 0);
    w.u8(op::HOST_WRITE).u8(0x0d).u8(0);
    w.u8(op::BACKEND).u8(1);
    rx_buffers(
        &mut w,
        &[&[(At::Data(0x8000), 4096)], &[(At::Data(0x9000), 4096)]],
    );
    credit_packet(&mut w, 6, Port::Raw(2001), Port::Listener(0), 65536, 100);
    rx_buffers(
        &mut w,
        &[&[(At::Data(0xa000), 4096)], &[(At::Data(0xb000), 4096)]],
    );
    seeds.push(("credit", w.finish()));
    seeds
}

fn vsock_rx_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut w = Writer::new();
    // One connection each way with data waiting, then buffers of every shape.
    w.u8(0b0101)
        .chunk(b"from the host to port 1024")
        .chunk(&[9; 3000]);
    rx_buffers(
        &mut w,
        &[
            &[(At::Data(0x8000), 44)],
            &[(At::Data(0x8100), 44), (At::Raw(0x40_0000_0000), 4096)],
            &[(At::Data(0x8200), 44), (At::Top(0x100), 4096)],
            &[
                (At::Data(0x8300), 20),
                (At::Data(0x8400), 30),
                (At::PastLow(100), 200),
            ],
        ],
    );
    rx_buffers(
        &mut w,
        &[
            &[(At::Data(0x9000), 4096)],
            &[(At::High(HIGH_START), 0x2000)],
            &[(At::Data(0xa000), 4096)],
        ],
    );
    w.u8(op::BACKEND).u8(1);
    seeds.push(("both-ways", w.finish()));

    // Three host connections with data, buffers arriving one at a time.
    w.u8(0b0011).chunk(b"a").chunk(b"bb").chunk(&[3; 5000]);
    for i in 0..6u64 {
        rx_buffers(&mut w, &[&[(At::Data(0x8000 + i * 0x1000), 2048)]]);
        w.u8(op::BACKEND).u8(1);
    }
    seeds.push(("round-robin", w.finish()));

    // Host data, then the host hangs up: SHUTDOWN to the guest, its RST.
    w.u8(0b0001).chunk(b"last words");
    w.u8(op::HOST_CLOSE).u8(0).u8(0);
    w.u8(op::BACKEND).u8(1);
    rx_buffers(
        &mut w,
        &[&[(At::Data(0x8000), 4096)], &[(At::Data(0x9000), 4096)]],
    );
    packet(&mut w, OP_RST, Port::Connect(0), Port::Local(0), 0, b"", 1);
    seeds.push(("hang-up", w.finish()));
    seeds
}

/// A block request step for the `block_request` target.
fn block_request(w: &mut Writer, slot: u8, kind: u32, sector: u8, data: &[(At, u32)], status: At) {
    w.u8(0);
    addr(w, At::Data(0x7800 + u64::from(slot) * 0x10));
    let kind_tag = match kind {
        VIRTIO_BLK_T_IN => 0,
        VIRTIO_BLK_T_OUT => 1,
        VIRTIO_BLK_T_FLUSH => 2,
        VIRTIO_BLK_T_GET_ID => 3,
        _ => 4,
    };
    w.u8(kind_tag);
    if kind_tag == 4 {
        w.u8(kind as u8);
    }
    w.u8(0).u8(sector);
    w.u8(0); // a 16-byte header descriptor
    w.u8(data.len() as u8);
    for &(at, l) in data {
        addr(w, at);
        if l % 512 == 0 && l / 512 <= 8 {
            w.u8(1).u8((l / 512) as u8);
        } else {
            w.u8(0);
            len(w, l);
        }
        w.u8(0); // the direction the request needs
    }
    addr(w, status);
    w.u8(0).u8(0); // one byte, device-writable
}

fn block_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut w = Writer::new();
    w.u8(2).u8(8).chunk(b"guest data to write");
    w.u8(5);
    block_request(
        &mut w,
        0,
        VIRTIO_BLK_T_IN,
        0,
        &[(At::Data(0x6000), 512)],
        At::Data(0x7000),
    );
    block_request(
        &mut w,
        1,
        VIRTIO_BLK_T_OUT,
        1,
        &[(At::Data(0x4000), 1024)],
        At::Data(0x7001),
    );
    block_request(&mut w, 2, VIRTIO_BLK_T_FLUSH, 0, &[], At::Data(0x7002));
    block_request(
        &mut w,
        3,
        VIRTIO_BLK_T_GET_ID,
        0,
        &[(At::Data(0x6800), 20)],
        At::Data(0x7003),
    );
    block_request(
        &mut w,
        4,
        VIRTIO_BLK_T_IN,
        2,
        &[(At::Data(0x8000), 512), (At::High(HIGH_START), 1536)],
        At::High(HIGH_START + 0x1000),
    );
    block_request(&mut w, 5, 77, 0, &[], At::Data(0x7004));
    seeds.push(("requests", w.finish()));

    // Read-only disk with a partial sector; requests past the end, across
    // the hole, unaligned, status outside memory.
    w.u8(5).u8(4).chunk(b"");
    w.u8(4);
    block_request(
        &mut w,
        6,
        VIRTIO_BLK_T_OUT,
        0,
        &[(At::Data(0x6000), 512)],
        At::Data(0x7000),
    );
    block_request(
        &mut w,
        7,
        VIRTIO_BLK_T_IN,
        4,
        &[(At::Data(0x6000), 512)],
        At::Data(0x7001),
    );
    block_request(
        &mut w,
        8,
        VIRTIO_BLK_T_IN,
        0,
        &[(At::PastLow(100), 512)],
        At::Data(0x7002),
    );
    block_request(
        &mut w,
        9,
        VIRTIO_BLK_T_IN,
        0,
        &[(At::Data(0x6000), 100)],
        At::Top(0),
    );
    block_request(
        &mut w,
        10,
        VIRTIO_BLK_T_IN,
        0,
        &[(At::Data(0x6000), 512)],
        At::Raw(0x40_0000_0000),
    );
    seeds.push(("bad-requests", w.finish()));
    seeds
}

/// mmio_transport ops (see the target).
mod mmio {
    pub const WRITE_REG: u8 = 2;
    pub const READ_REG: u8 = 3;
    pub const PROCESS: u8 = 4;
    pub const BACKEND: u8 = 5;
    pub const MEM_WRITE: u8 = 6;
    pub const INIT: u8 = 7;
    pub const CHAIN: u8 = 8;
    pub const SAVE_RESTORE: u8 = 9;
    /// Indices into the target's `REGS`.
    pub const REG_QUEUE_NOTIFY: u8 = 12;
    pub const REG_INTERRUPT_STATUS: u8 = 13;
    pub const REG_INTERRUPT_ACK: u8 = 14;
    pub const REG_STATUS: u8 = 15;
}

fn mmio_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut w = Writer::new();

    // Block: initialization, a read request, interrupt handling, a snapshot.
    let header = {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        h
    };
    w.u8(0).u16(0).chunk(&header);
    w.u8(mmio::INIT).u8(0).u8(0);
    w.u8(mmio::CHAIN).u8(0).u8(0);
    // header (device reads), data and status (device writes; flipped)
    w.u8(2);
    w.u8(0);
    addr(&mut w, At::Data(0x4000));
    len(&mut w, 16);
    w.u8(1);
    addr(&mut w, At::Data(0x5000));
    len(&mut w, 512);
    w.u8(1);
    addr(&mut w, At::Data(0x6000));
    len(&mut w, 1);
    w.u8(mmio::READ_REG).u8(mmio::REG_INTERRUPT_STATUS);
    w.u8(mmio::WRITE_REG).u8(mmio::REG_INTERRUPT_ACK).u32(1);
    w.u8(0).u16(0x100).u8(3); // config space: the capacity
    w.u8(mmio::SAVE_RESTORE);
    w.u8(mmio::WRITE_REG).u8(mmio::REG_QUEUE_NOTIFY).u32(0);
    w.u8(mmio::PROCESS).u8(0);
    w.u8(mmio::WRITE_REG).u8(mmio::REG_STATUS).u32(0);
    seeds.push(("block", w.finish()));

    // Vsock: all three queues, an rx buffer, the backend.
    w.u8(1).u16(0).chunk(b"");
    for q in 0..3 {
        w.u8(mmio::INIT).u8(q).u8(0);
    }
    w.u8(mmio::CHAIN).u8(0).u8(1);
    chain(&mut w, &[(At::Data(0x8000), 4096)]);
    w.u8(mmio::BACKEND);
    w.u8(mmio::SAVE_RESTORE);
    w.u8(mmio::BACKEND);
    seeds.push(("vsock", w.finish()));

    // Dummy: a driver that does it by hand, register by register, with
    // unaligned and odd-width accesses along the way.
    w.u8(2).u16(0).chunk(b"");
    for (reg, value) in [
        (15u8, 1u32), // STATUS: ACKNOWLEDGE
        (15, 3),      // DRIVER
        (7, 1),       // DRIVER_FEATURES_SEL
        (6, 1),       // DRIVER_FEATURES: VERSION_1
        (15, 0xb),    // FEATURES_OK
        (8, 1),       // QUEUE_SEL
        (10, 8),      // QUEUE_NUM
        (16, 0x1000), // QUEUE_DESC_LOW
        (18, 0x1080), // QUEUE_AVAIL_LOW
        (20, 0x10c0), // QUEUE_USED_LOW
        (11, 1),      // QUEUE_READY
        (15, 0xf),    // DRIVER_OK
    ] {
        w.u8(mmio::WRITE_REG).u8(reg).u32(value);
    }
    w.u8(1).u16(0x71).u8(0).u64(0xff);
    w.u8(0).u16(0x102).u8(3);
    w.u8(1).u16(0x30).u8(3).u64(u64::MAX);
    w.u8(mmio::MEM_WRITE);
    addr(&mut w, At::Data(0x4000));
    w.chunk(b"buffer");
    w.u8(mmio::PROCESS).u8(1).u8(mmio::PROCESS).u8(3);
    seeds.push(("dummy-by-hand", w.finish()));

    // Vsock restored from a saved transport state (queues ready, activated).
    seeds.push(("vsock-restored", restored_vsock_seed()));
    seeds
}

/// The state of a vsock transport a driver set up, as a snapshot stores it.
fn restored_vsock_seed() -> Vec<u8> {
    use ember::devices::virtio::mmio::MmioTransport;
    use ember::devices::virtio::vsock::Vsock;
    use ember::devices::virtio::Interrupt;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let mem = crate::queue::memory();
    let uds = crate::scratch::fresh("seed-v.sock");
    let dev = Vsock::new(3, &uds).unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(Box::new(dev), mem.clone(), irq).unwrap();
    // What the target's init does, for all three queues.
    {
        use ember::devices::bus::BusDevice;
        let mut wr = |reg: u32, v: u32| t.write(u64::from(reg), &v.to_le_bytes());
        wr(0x70, 1); // STATUS: ACKNOWLEDGE
        wr(0x70, 3); // DRIVER
        wr(0x24, 1); // DRIVER_FEATURES_SEL
        wr(0x20, 1); // DRIVER_FEATURES: VERSION_1
        wr(0x70, 0xb); // FEATURES_OK
        for q in 0..3u32 {
            let ring = crate::queue::Ring::new(&mem, crate::queue::ring_base(q as usize), 16);
            let (d, a, u) = ring.addresses();
            wr(0x30, q); // QUEUE_SEL
            wr(0x38, 16); // QUEUE_NUM
            wr(0x80, d as u32);
            wr(0x90, a as u32);
            wr(0xa0, u as u32);
            wr(0x44, 1); // QUEUE_READY
        }
        wr(0x70, 0xf); // DRIVER_OK
    }
    let saved = postcard::to_stdvec(&t.save_state()).unwrap();
    drop(t);
    let mut w = Writer::new();
    w.u8(0x80 | 1).chunk(&saved).u16(0).chunk(b"");
    w.u8(mmio::CHAIN).u8(2).u8(1);
    chain(&mut w, &[(At::Data(0x8000), 8)]);
    w.u8(mmio::BACKEND);
    w.finish()
}

/// A state file ember wrote: `$EMBER_FUZZ_STATE_FILE` when set (a snapshot
/// of any VM, e.g. the echo function with 32 MiB, one vCPU and a vsock, as
/// committed), else the one already in the corpus.
fn state_file_seed() -> Vec<u8> {
    match std::env::var_os("EMBER_FUZZ_STATE_FILE") {
        Some(path) => std::fs::read(path).expect("cannot read $EMBER_FUZZ_STATE_FILE"),
        None => {
            let seed = std::fs::read(corpus_dir("snapshot_state").join("state-file"))
                .expect("no state file: set EMBER_FUZZ_STATE_FILE to a snapshot ember wrote");
            seed[1..].to_vec()
        }
    }
}

fn snapshot_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use ember::devices::legacy::i8042::I8042;
    use ember::devices::legacy::serial::{InputDrained, SerialDevice};
    use ember::devices::IrqLine;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    let state = state_file_seed();
    let payload = &state[ember_snapshot::format::HEADER_LEN..state.len() - 8];
    let mut seeds = Vec::new();
    seeds.push(("state-file", [&[0u8][..], &state].concat()));
    seeds.push(("payload", [&[1u8][..], payload].concat()));
    let mut other_arch = vec![2u8];
    other_arch.extend_from_slice(&1u16.to_le_bytes());
    other_arch.extend_from_slice(b"aarch64\0\0\0\0\0\0\0\0\0");
    other_arch.extend_from_slice(&[0; 9]);
    other_arch.extend_from_slice(&payload[..64]);
    seeds.push(("other-arch", other_arch));

    let drained = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut uart = SerialDevice::new(
        IrqLine(EventFd::new(EFD_NONBLOCK).unwrap()),
        InputDrained(drained),
        Box::new(std::io::sink()),
        None,
    )
    .unwrap();
    uart.enqueue_input(b"typed before the snapshot");
    let serial = postcard::to_stdvec(&uart.save_state()).unwrap();
    seeds.push(("serial", [&[3u8][..], &serial].concat()));

    let exit = std::sync::Arc::new(ember::exit::ExitSignal::new().unwrap());
    let mut i8042 = I8042::new(exit, IrqLine(EventFd::new(EFD_NONBLOCK).unwrap()));
    i8042.ctrl_alt_del().unwrap();
    let i8042 = postcard::to_stdvec(&i8042.save_state()).unwrap();
    seeds.push(("i8042", [&[4u8][..], &i8042].concat()));
    seeds
}

/// A page for memory_merge: hole, zeros, fill, or a chunk at an offset.
enum Page<'a> {
    Hole,
    Zeros,
    Fill(u8),
    Chunk(u16, &'a [u8]),
}

fn page(w: &mut Writer, p: &Page) {
    match p {
        Page::Hole => w.u8(0),
        Page::Zeros => w.u8(1),
        Page::Fill(b) => w.u8(2).u8(*b),
        Page::Chunk(at, c) => w.u8(3).u16(*at).chunk(c),
    };
}

fn memory_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut w = Writer::new();
    // Same size: base with data and a hole, diff with holes, zeros and data.
    w.u8(0).u8(4).u8(0).u8(1);
    for p in [
        Page::Fill(1),
        Page::Hole,
        Page::Fill(3),
        Page::Chunk(100, b"base"),
    ] {
        page(&mut w, &p);
    }
    for p in [Page::Hole, Page::Zeros, Page::Fill(0xdd), Page::Hole] {
        page(&mut w, &p);
    }
    seeds.push(("same-size", w.finish()));

    // Sizes that differ; then a partial last page on both.
    w.u8(0).u8(2).u8(0).u8(0).u8(3).u8(0);
    for p in [
        Page::Fill(1),
        Page::Fill(2),
        Page::Hole,
        Page::Fill(9),
        Page::Hole,
    ] {
        page(&mut w, &p);
    }
    seeds.push(("other-size", w.finish()));
    w.u8(0).u8(1).u8(1).u16(1000).u8(1);
    for p in [
        Page::Fill(1),
        Page::Fill(2),
        Page::Hole,
        Page::Chunk(10, b"tail"),
    ] {
        page(&mut w, &p);
    }
    seeds.push(("partial-page", w.finish()));

    // write_full / write_diff / merge over two regions.
    w.u8(1).u8(1);
    // Region 0: 3 pages, pages 0 and 2 dirtied.
    w.u8(3).u8(0);
    for p in [Page::Fill(1), Page::Zeros, Page::Chunk(7, b"old")] {
        page(&mut w, &p);
    }
    w.u8(1);
    page(&mut w, &Page::Zeros);
    w.u8(0).u8(1);
    page(&mut w, &Page::Fill(0xee));
    w.u8(0);
    // Region 1: 2 pages, page 1 dirtied.
    w.u8(2).u8(0);
    for p in [Page::Fill(5), Page::Hole] {
        page(&mut w, &p);
    }
    w.u8(0).u8(1);
    page(&mut w, &Page::Chunk(4000, b"new"));
    w.u8(0);
    seeds.push(("diff-round-trip", w.finish()));
    seeds
}

fn invocation_seeds() -> Vec<(&'static str, Vec<u8>)> {
    fn framed(status: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![status];
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(body);
        v
    }
    fn seed(flags: u8, reply: &[u8]) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(flags).chunk(b"input");
        w.bytes(reply);
        w.finish()
    }
    let mut too_long = vec![0u8];
    too_long.extend_from_slice(&(65u32 << 20).to_le_bytes());
    vec![
        ("ok", seed(0, &framed(0, b"output"))),
        ("failed", seed(0, &framed(1, b"bad input"))),
        ("panicked", seed(0, &framed(2, b"oops"))),
        ("unknown-status", seed(0, &framed(7, b""))),
        ("too-long", seed(0, &too_long)),
        ("short", seed(0x32, &framed(0, b"output")[..8])),
        (
            "stray-bytes",
            seed(0, &[framed(0, b"a"), b"zz".to_vec()].concat()),
        ),
        (
            "own-handshake",
            seed(1, &[b"OK 5\n".to_vec(), framed(0, b"x")].concat()),
        ),
        ("refused", seed(1, b"NO\n")),
        ("two-calls", seed(4 | 8 | 0x32, &framed(0, b"again"))),
    ]
}

fn framed_request(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_le_bytes()[..], body].concat()
}

fn rt_server_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::guest_runtime::{op, receive, PORT};
    use rt::virtio::vsock::packet::{Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
    const HOST: (u32, u32) = (5000, PORT);
    let both = SHUTDOWN_RCV | SHUTDOWN_SEND;

    let mut w = Writer::new();
    w.u16(4096);
    receive(&mut w, Op::Request, HOST, 0, b"");
    w.u8(op::SEND);
    receive(&mut w, Op::Rw, HOST, 0, &framed_request(b"hello"));
    w.u8(op::TAKE_REQUEST).u8(op::RESPOND).u8(0).u8(0).u16(5);
    w.u8(op::SEND);
    receive(&mut w, Op::Shutdown, HOST, both, b"");
    w.u8(op::SEND);
    receive(&mut w, Op::Rst, HOST, 0, b"");
    let invocation = w.finish();

    w.u16(4096);
    receive(&mut w, Op::Request, HOST, 0, b"");
    let two = [framed_request(b"one"), framed_request(b"two")].concat();
    receive(&mut w, Op::Rw, HOST, 0, &two);
    for i in 0..2 {
        w.u8(op::TAKE_REQUEST).u8(op::RESPOND).u8(i).u8(0).u16(3);
        w.u8(op::SEND);
    }
    let pipelined = w.finish();

    w.u16(8);
    receive(&mut w, Op::Request, HOST, 0, b"");
    receive(&mut w, Op::Rw, HOST, 0, &framed_request(&[7; 20]));
    w.u8(op::TAKE_REQUEST);
    let too_large = w.finish();

    // The function's own stream to host port 7000, from the first client port.
    const CLIENT: (u32, u32) = (7000, 49152);
    w.u16(4096).u8(op::CONNECT).u32(7000).u8(op::SEND);
    receive(&mut w, Op::Response, CLIENT, 0, b"");
    w.u8(op::CLIENT_WRITE).u8(0).u16(100).u8(op::SEND);
    receive(&mut w, Op::Rw, CLIENT, 0, b"reply");
    w.u8(op::CLIENT).u8(0).u8(1);
    w.u8(op::CLIENT).u8(0).u8(2).u8(op::SEND);
    receive(&mut w, Op::Rst, CLIENT, 0, b"");
    let client = w.finish();

    w.u16(4096);
    receive(&mut w, Op::Request, HOST, 0, b"");
    receive(&mut w, Op::Rw, HOST, 0, &framed_request(b"lost"));
    w.u8(op::TAKE_REQUEST).u8(op::TRANSPORT_RESET).u8(0).u64(9);
    w.u8(op::RESPOND).u8(0).u8(0).u16(4).u8(op::SEND);
    let transport_reset = w.finish();

    vec![
        ("invocation", invocation),
        ("pipelined", pipelined),
        ("too-large", too_large),
        ("client", client),
        ("transport-reset", transport_reset),
    ]
}

fn rt_framing_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let stream = [
        framed_request(b"first"),
        framed_request(b""),
        framed_request(&[1; 40]),
    ]
    .concat();
    let mut w = Writer::new();
    w.u16(64).u8(0).u8(1).bytes(&stream);
    let bytewise = w.finish();
    w.u16(64).u8(2).u8(3).u8(7).bytes(&stream);
    let uneven = w.finish();
    w.u16(16).u8(0).u8(200).bytes(&stream);
    let too_large = w.finish();
    vec![
        ("bytewise", bytewise),
        ("uneven", uneven),
        ("too-large", too_large),
    ]
}

fn uffd_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let regions = br#"[{"base_host_virt_addr": 140000000000000, "size": 4096, "offset": 0}, {"base_host_virt_addr": 140000000008192, "size": 8192, "offset": 4096}]"#;
    let mut w = Writer::new();
    w.u8(2).u8(1).chunk(b"0 1\n1 2\n").u8(2).bytes(regions);
    let serve = w.finish();
    w.u8(2).u8(3).chunk(b"0 0\n").u8(1).bytes(regions);
    let record = w.finish();
    // What the fuzzer found: page counts and page numbers that overflow, a
    // region at the top of the address space (regression seeds).
    w.u8(2)
        .u8(1)
        .chunk(b"4503599627370496 1\n")
        .u8(1)
        .bytes(regions);
    let page_past_files = w.finish();
    w.u8(2)
        .u8(1)
        .chunk(b"1 1\n")
        .u8(1)
        .bytes(br#"[{"base_host_virt_addr": 18446744073709547520, "size": 8192, "offset": 0}]"#);
    let region_at_top = w.finish();
    vec![
        ("working-set", [&[0u8][..], b"1 3\n7 1\n9 2\n"].concat()),
        (
            "page-count-overflow",
            [&[0u8][..], b"1 18446744073709551615\n1 1\n"].concat(),
        ),
        ("page-past-files", page_past_files),
        ("region-at-top", region_at_top),
        ("handshake", [&[1u8, 1][..], regions].concat()),
        ("handshake-no-fd", [&[1u8, 0][..], regions].concat()),
        ("serve", serve),
        ("record", record),
    ]
}

/// A guest's frame from 169.254.0.2: ARP asking for the service's MAC, or a
/// TCP SYN to its port 80 (checksums left zero: the service does not check
/// the guest's).
fn mmds_frame(arp: bool) -> Vec<u8> {
    let guest_mac = [6, 0, 0xa9, 0xfe, 0, 2];
    let guest_ip = [169, 254, 0, 2];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&guest_mac);
    if arp {
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&guest_mac);
        f.extend_from_slice(&guest_ip);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&crate::mmds::ADDRESS);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&guest_ip);
        f.extend_from_slice(&crate::mmds::ADDRESS);
        // Ports 40000 -> 80, sequence 1, SYN, a 64 KiB window.
        f.extend_from_slice(&[
            0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ]);
        f.extend_from_slice(&[0; 4]);
    }
    f
}

fn mmds_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seed = |flags: u8, request: &str, frames: &[bool]| {
        let mut w = Writer::new();
        w.u8(flags).chunk(request.as_bytes());
        for &arp in frames {
            w.chunk(&mmds_frame(arp)).u8(0);
        }
        w.finish()
    };
    vec![
        (
            "v2-token-then-arp",
            seed(
                1,
                "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
                &[true],
            ),
        ),
        (
            "v1-get-then-syn",
            seed(0, "GET /latest/meta-data/ HTTP/1.1\r\n\r\n", &[true, false]),
        ),
        (
            "imds-compat-json",
            seed(
                2,
                "GET /latest/meta-data/n HTTP/1.1\r\nAccept: application/json\r\n\r\n",
                &[],
            ),
        ),
    ]
}

fn text_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let api: &[(&str, &str)] = &[
        ("instance-info", "GET\n/\n"),
        ("machine-config", "PUT\n/machine-config\n{\"vcpu_count\": 2, \"mem_size_mib\": 256, \"smt\": false, \"track_dirty_pages\": true}"),
        ("patch-machine-config", "PATCH\n/machine-config\n{\"mem_size_mib\": 512, \"cpu_template\": \"None\"}"),
        ("boot-source", "PUT\n/boot-source\n{\"kernel_image_path\": \"guest.elf\", \"initrd_path\": \"initrd.cpio\", \"boot_args\": \"console=ttyS0 reboot=k panic=1 pci=off\"}"),
        ("drive", "PUT\n/drives/rootfs\n{\"drive_id\": \"rootfs\", \"path_on_host\": \"disk.img\", \"is_root_device\": true, \"is_read_only\": false, \"cache_type\": \"Writeback\", \"io_engine\": \"Sync\", \"rate_limiter\": null}"),
        ("patch-drive", "PATCH\n/drives/rootfs\n{\"drive_id\": \"rootfs\", \"path_on_host\": \"other.img\"}"),
        ("start", "PUT\n/actions\n{\"action_type\": \"InstanceStart\"}"),
        ("pause", "PATCH\n/vm\n{\"state\": \"Paused\"}"),
        ("vsock", "PUT\n/vsock\n{\"guest_cid\": 3, \"uds_path\": \"/tmp/v.sock\", \"vsock_id\": \"vsock0\"}"),
        ("function", "PUT\n/function\n{\"vsock_port\": 1024, \"timeout_ms\": 5000, \"max_concurrent_invocations\": 8}"),
        ("logger", "PUT\n/logger\n{\"log_path\": \"/tmp/log\", \"level\": \"Debug\", \"show_level\": true, \"show_log_origin\": true, \"module\": \"ember\"}"),
        ("snapshot-create", "PUT\n/snapshot/create\n{\"snapshot_type\": \"Diff\", \"snapshot_path\": \"fn.snap\", \"mem_file_path\": \"fn.mem\"}"),
        ("snapshot-load", "PUT\n/snapshot/load\n{\"snapshot_path\": \"fn.snap\", \"resume_vm\": true, \"mem_backend\": {\"backend_type\": \"Uffd\", \"backend_path\": \"/run/uffd.sock\"}, \"vsock_override\": {\"uds_path\": \"/tmp/v2.sock\"}, \"track_dirty_pages\": true}"),
        ("invocation", "POST\n/invocations\n\u{0}payload"),
        ("not-yet", "PUT\n/network-interfaces/eth0\n{}"),
        ("mmds-put", "PUT\n/mmds\n{\"latest\": {\"meta-data\": {\"instance-id\": \"i-1\", \"tags\": [\"a\", 1, null]}}}"),
        ("mmds-patch", "PATCH\n/mmds\n{\"latest\": {\"user-data\": \"x\", \"meta-data\": null}}"),
    ];
    let config: &[(&str, &str)] = &[
        (
            "function-vm",
            r#"{
  "boot-source": {"kernel_image_path": "echo.elf", "boot_args": "console=ttyS0"},
  "drives": [{"drive_id": "rootfs", "path_on_host": "disk.img", "is_root_device": true, "is_read_only": true}],
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "track_dirty_pages": false},
  "logger": {"level": "Info", "show_level": true},
  "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
  "function": {"vsock_port": 1024, "timeout_ms": 30000}
}"#,
        ),
        ("minimal", r#"{"boot-source": {"kernel_image_path": "k"}}"#),
        (
            "firecracker-sections",
            r#"{"boot-source": {"kernel_image_path": "vmlinux", "initrd_path": null}, "drives": [], "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}], "balloon": null, "metrics": {"metrics_path": "m"}, "mmds-config": null, "entropy": null, "cpu-config": null}"#,
        ),
        (
            "invalid-values",
            r#"{"machine-config": {"vcpu_count": 0, "mem_size_mib": 1048577, "smt": true, "huge_pages": "2M"}, "drives": [{"drive_id": "a b", "is_root_device": false, "socket": "/s", "io_engine": "Async"}], "vsock": {"guest_cid": 2, "uds_path": ""}, "function": {"timeout_ms": 0, "max_concurrent_invocations": 5000}}"#,
        ),
    ];
    let cli: &[(&str, &str)] = &[
        (
            "api",
            "--api-sock\0/tmp/ember.sock\0--id\0fn-1\0--level\0Debug",
        ),
        (
            "config-file",
            "--no-api\0--config-file\0vm.json\0--no-seccomp\0--boot-timer",
        ),
        (
            "logging",
            "--log-path=/tmp/log\0--show-level\0--show-log-origin\0--level=warning",
        ),
        (
            "seccomp",
            "--seccomp-filter\0filters.json\0--seccomp-selftest\0vcpu",
        ),
        ("version", "--version"),
        ("help", "--id\0x\0--help"),
    ];
    let jailer: &[(&str, &str)] = &[
        ("jail", "--id\0fn-1\0--exec-file\0/tmp/ember-fuzz-jailer/ember\0--uid\x00123\x00--gid\x00100\x00--cgroup\0pids.max=10\0--resource-limit\0no-file=1024\0--\0--api-sock\0/run/api.sock"),
        ("all-flags", "--id=fn-2\0--exec-file=/tmp/ember-fuzz-jailer/ember\0--uid=0\0--gid=0\0--chroot-base-dir\0/srv/jail\0--netns\0/var/run/netns/fn\0--cgroup-version\x002\0--parent-cgroup\0ember/fns\0--cgroup\0cpu.weight=100\0--resource-limit\0fsize=1048576\0--daemonize\0--new-pid-ns"),
        ("bad", "--id\0a/b\0--exec-file\0/bin/sh\0--uid\0x\0--gid\0-1\0--cgroup\0../x=1\0--resource-limit\0stack=1"),
        ("help", "-h"),
    ];
    let mut seeds = Vec::new();
    for (target, list) in [
        ("api_route", api),
        ("config_file", config),
        ("ember_cli", cli),
        ("jailer_cli", jailer),
    ] {
        for (name, text) in list {
            seeds.push((target, *name, text.as_bytes().to_vec()));
        }
    }
    seeds
}

#[test]
#[ignore = "writes fuzz/corpus; run with --ignored to refresh the seeds"]
fn write_seeds() {
    let mut all: Vec<(&str, &str, Vec<u8>)> = text_seeds();
    let binary = [
        ("vsock_tx", vsock_tx_seeds()),
        ("vsock_rx", vsock_rx_seeds()),
        ("block_request", block_seeds()),
        ("mmio_transport", mmio_seeds()),
        ("snapshot_state", snapshot_seeds()),
        ("memory_merge", memory_seeds()),
        ("invocation_framing", invocation_seeds()),
        ("uffd_handshake", uffd_seeds()),
        ("rt_server", rt_server_seeds()),
        ("rt_framing", rt_framing_seeds()),
        ("mmds_guest", mmds_seeds()),
    ];
    for (target, seeds) in binary {
        for (name, data) in seeds {
            all.push((target, name, data));
        }
    }
    for (target, name, data) in all {
        write(target, name, &data);
    }
}

#[test]
fn vsock_seeds_reach_established_connections() {
    let seeds = vsock_tx_seeds();
    for (name, data) in &seeds {
        let mut h = Harness::new().unwrap();
        h.run(&mut Reader::new(data));
        let (hosts, accepted) = h.connections();
        match *name {
            "guest-connects" | "credit" => assert_eq!(accepted, 1, "{name}"),
            "host-connects" => assert_eq!(hosts, 0, "{name}: the host hung up"),
            _ => {}
        }
    }
    let mut h = Harness::new().unwrap();
    assert!(h.establish_host(1024));
    assert!(h.establish_guest(2000, 5000));
}

#[test]
fn vsock_rx_seeds_deliver_host_data_to_the_guest() {
    use ember::devices::virtio::vsock::packet::{Header, HEADER_LEN};
    use vm_memory::{Bytes, GuestAddress};
    let seeds = vsock_rx_seeds();
    let (_, data) = seeds.iter().find(|(n, _)| *n == "both-ways").unwrap();
    let mut h = Harness::new().unwrap();
    let mut r = Reader::new(data);
    h.rx_setup(&mut r);
    assert_eq!(h.connections(), (1, 1));
    h.run(&mut r);
    // The unusable buffers were used empty; the next ones carry the data.
    // Control packets first (the muxer's REQUEST, its RESPONSE), then one
    // buffer per connection in turn; the unusable buffers were used empty.
    // The guest-initiated connection gets data on the credit its REQUEST
    // announced, without a credit update.
    let got: Vec<(Option<Op>, u32)> = [0x8000, 0x9000, HIGH_START, 0xa000]
        .into_iter()
        .map(|at| {
            let mut bytes = [0u8; HEADER_LEN];
            h.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
            let header = Header::decode(&bytes).unwrap();
            (header.op, header.len)
        })
        .collect();
    assert_eq!(
        got,
        [
            (Some(Op::Request), 0),
            (Some(Op::Response), 0),
            (Some(Op::Rw), 26),
            (Some(Op::Rw), 3000)
        ]
    );
}

#[test]
fn rt_server_seeds_serve_invocations_and_clients() {
    use rt::function::framing::Request;
    let seeds: std::collections::HashMap<_, _> = rt_server_seeds().into_iter().collect();
    let run = |name: &str| crate::guest_runtime::run(&seeds[name]);

    let invocation = run("invocation");
    assert_eq!(invocation.requests, [Request::Data(b"hello".to_vec())]);
    assert_eq!(invocation.body_bytes_sent, 5);
    let pipelined = run("pipelined");
    assert_eq!(pipelined.requests.len(), 2);
    assert_eq!(pipelined.body_bytes_sent, 6);
    assert_eq!(run("too-large").requests, [Request::TooLarge(20)]);
    assert_eq!(run("client").body_bytes_sent, 100);
    let lost = run("transport-reset");
    assert_eq!(lost.requests.len(), 1);
    assert_eq!(lost.body_bytes_sent, 0);
}

#[test]
fn mmds_seeds_get_the_service_talking() {
    for (name, data) in mmds_seeds() {
        let answers = crate::mmds::run(&mut Reader::new(&data));
        let expected = match name {
            // The ARP reply, then the SYN's SYN-ACK.
            "v1-get-then-syn" => 2,
            "v2-token-then-arp" => 1,
            _ => 0,
        };
        assert_eq!(answers, expected, "{name}");
    }
}

#[test]
fn state_file_helper_matches_the_format() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct S(u32, String);
    let payload = postcard::to_stdvec(&S(7, "x".into())).unwrap();
    let file = crate::state_file(
        ember_snapshot::format::FORMAT_VERSION,
        ember_snapshot::format::ARCH.as_bytes(),
        None,
        &payload,
    );
    let mut saved = Vec::new();
    ember_snapshot::format::save(&mut saved, &S(7, "x".into())).unwrap();
    assert_eq!(file, saved);
    let state = state_file_seed();
    ember_snapshot::format::load::<ember::persist::MicrovmState, _>(&state[..])
        .expect("the seed state file loads as ember's state");
}
