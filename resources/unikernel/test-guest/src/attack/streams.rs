//! Attacks on the vsock device's connection handling: a reset under an open
//! connection, a flood of connections to a host port that never accepts, and a
//! guest that never answers nor closes.

use rt::println;
use rt::virtio::vsock::packet::{Header, Op};

use super::Error;
use super::vsock::{SERVICE_PORT, Vsock, is_request_for};

const FLOOD_REQUESTS: u32 = 2000;
const FLOOD_FIRST_PORT: u32 = 20000;
const FLOOD_HOST_PORT: u32 = 5000;
/// REQUESTs vsock-silent waits for before it connects itself.
const SILENT_INCOMING: u32 = 1000;
const SILENT_OUTGOING: u32 = 1100;
const SILENT_FIRST_PORT: u32 = 30000;
const SILENT_HOST_PORT: u32 = 5001;

/// `vsock-reset`: accepts the host's first connection to port 1024, waits until
/// the device has taken the RESPONSE, then resets the device (STATUS = 0)
/// without a RST or SHUTDOWN.
pub fn vsock_reset(cmdline: &[u8]) -> Result<(), Error> {
    let mut vsock = Vsock::open(cmdline)?;
    vsock.post_rx();
    vsock.kick();
    println!("attack: vsock-reset start");
    println!("attack: vsock-reset listening");
    let request = loop {
        match vsock.recv() {
            Some(header) if is_request_for(&header, SERVICE_PORT) => break header,
            Some(_) => {}
            None => vsock.wait(),
        }
    };
    vsock.send(&vsock.accept(&request));
    loop {
        vsock.reclaim();
        if !vsock.sending() {
            break;
        }
        vsock.wait();
    }
    println!("attack: vsock-reset connected");
    vsock.device.reset();
    println!("attack: vsock-reset done");
    Ok(())
}

/// `vsock-connect-flood`: 2000 REQUESTs from guest ports 20000.. to host port
/// 5000, as fast as the transmit queue takes them; every RESPONSE gets a RST
/// back. Ends once all are sent, answered RESPONSEs reset, and the device has
/// taken every packet; answers still to come are not waited for.
pub fn connect_flood(cmdline: &[u8]) -> Result<(), Error> {
    let mut vsock = Vsock::open(cmdline)?;
    vsock.post_rx();
    vsock.kick();
    println!("attack: vsock-connect-flood start");
    let mut owed = Ports::default();
    let (mut sent, mut rst, mut response) = (0, 0, 0);
    loop {
        while let Some(header) = vsock.recv() {
            match header.op {
                Some(Op::Rst) => rst += 1,
                Some(Op::Response) => {
                    response += 1;
                    if let Some(i) = port_index(&header, FLOOD_FIRST_PORT, FLOOD_REQUESTS) {
                        owed.insert(i);
                    }
                }
                _ => {}
            }
        }
        vsock.reclaim();
        while vsock.can_send() {
            let (op, i) = match owed.pop() {
                Some(i) => (Op::Rst, i),
                None if sent < FLOOD_REQUESTS => {
                    sent += 1;
                    (Op::Request, sent - 1)
                }
                None => break,
            };
            vsock.send(&vsock.packet(op, FLOOD_FIRST_PORT + i, FLOOD_HOST_PORT));
        }
        if sent == FLOOD_REQUESTS && owed.is_empty() && !vsock.sending() {
            break;
        }
        vsock.wait();
    }
    println!("attack: vsock-connect-flood done sent={sent} rst={rst} response={response}");
    Ok(())
}

/// Packets received by `vsock-silent`, by kind.
#[derive(Default)]
struct Counts {
    requests: u32,
    responses: u32,
    shutdowns: u32,
    rsts: u32,
}

impl Counts {
    fn count(&mut self, header: &Header) {
        match header.op {
            Some(Op::Request) => self.requests += 1,
            Some(Op::Response) => self.responses += 1,
            Some(Op::Shutdown) => self.shutdowns += 1,
            Some(Op::Rst) => self.rsts += 1,
            _ => {}
        }
    }
}

/// `vsock-silent`: answers nothing, ever. Phase A reads packets until 1000
/// REQUESTs have come (the host's connections to port 1024); phase B sends 1100
/// REQUESTs from guest ports 30000.. to host port 5001 and reads on until each
/// of those connections got a SHUTDOWN or a RST.
pub fn silent(cmdline: &[u8]) -> Result<(), Error> {
    let mut vsock = Vsock::open(cmdline)?;
    vsock.post_rx();
    vsock.kick();
    println!("attack: vsock-silent start");
    println!("attack: vsock-silent listening");
    let mut counts = Counts::default();
    while counts.requests < SILENT_INCOMING {
        match vsock.recv() {
            Some(header) => counts.count(&header),
            None => vsock.wait(),
        }
    }
    println!("attack: vsock-silent connecting");
    let mut closed = Ports::default();
    let mut sent = 0;
    loop {
        while let Some(header) = vsock.recv() {
            counts.count(&header);
            if matches!(header.op, Some(Op::Shutdown | Op::Rst))
                && let Some(i) = port_index(&header, SILENT_FIRST_PORT, SILENT_OUTGOING)
            {
                closed.insert(i);
            }
        }
        vsock.reclaim();
        while sent < SILENT_OUTGOING && vsock.can_send() {
            let request = vsock.packet(Op::Request, SILENT_FIRST_PORT + sent, SILENT_HOST_PORT);
            vsock.send(&request);
            sent += 1;
        }
        if sent == SILENT_OUTGOING && closed.len() == SILENT_OUTGOING && !vsock.sending() {
            break;
        }
        vsock.wait();
    }
    let Counts {
        requests,
        responses,
        shutdowns,
        rsts,
    } = counts;
    println!(
        "attack: vsock-silent done requests={requests} responses={responses} \
         shutdowns={shutdowns} rsts={rsts}"
    );
    Ok(())
}

/// Which of `count` guest ports from `first` the packet is addressed to.
fn port_index(header: &Header, first: u32, count: u32) -> Option<u32> {
    header.dst_port.checked_sub(first).filter(|&i| i < count)
}

/// A set of port indices below 2048.
#[derive(Default)]
struct Ports([u64; 32]);

impl Ports {
    fn insert(&mut self, i: u32) {
        self.0[i as usize / 64] |= 1 << (i % 64);
    }

    /// Removes and returns the lowest index.
    fn pop(&mut self) -> Option<u32> {
        let (word, bits) = (0u32..)
            .zip(self.0.iter_mut())
            .find(|(_, bits)| **bits != 0)?;
        let bit = bits.trailing_zeros();
        *bits &= !(1 << bit);
        Some(word * 64 + bit)
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&bits| bits == 0)
    }

    fn len(&self) -> u32 {
        self.0.iter().map(|bits| bits.count_ones()).sum()
    }
}
