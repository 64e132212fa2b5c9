//! Hostile virtio-net traffic: transmit chains no device may take whole
//! (device-writable, outside RAM, across the top of the address space,
//! longer than any frame, shorter than a header, looping, with bogus offload
//! headers) among a flood of valid frames, and receive buffers that can
//! never hold a frame (read-only, outside RAM, a byte long) posted again as
//! soon as they come back, while the host floods the TAP.

use rt::println;

use super::Error;
use super::device::{self, NET};
use super::ring::{Desc, F_NEXT, F_WRITE, RawQueue, Shared, addr};

const RX: u32 = 0;
const TX: u32 = 1;
const QUEUE_SIZE: u16 = 16;
/// Transmit chains sent in all.
const TX_CHAINS: u32 = 20_000;
/// Descriptors each transmit chain may use: chain `k` of a batch owns
/// descriptors `4k..4k + 4`.
const DESCS_PER_CHAIN: u16 = 4;
const BATCH: u16 = QUEUE_SIZE / DESCS_PER_CHAIN;
/// A valid frame: the virtio-net header, then Ethernet to the broadcast
/// address with an ethertype for local experiments, which hosts ignore.
const FRAME_LEN: usize = 12 + 60;
/// Receive buffers returned after which the attack ends, if the host floods.
const RX_RETURNS: u32 = 2_000;

static FRAME: Shared<[u8; FRAME_LEN]> = Shared::new(frame(false));
/// A frame whose header asks for TSO with offsets past its end.
static BAD_OFFLOAD: Shared<[u8; FRAME_LEN]> = Shared::new(frame(true));
/// Room for "frames" longer than any the device takes.
static BIG: Shared<[u8; 0x8000]> = Shared::new([0; 0x8000]);
static RX_BYTE: Shared<[u8; 64]> = Shared::new([0; 64]);

const fn frame(bad_offload: bool) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    if bad_offload {
        f[0] = 1; // NEEDS_CSUM
        f[1] = 1; // GSO_TCPV4
        f[2] = 0xff; // hdr_len
        f[4] = 0x40; // gso_size
        f[6] = 0xf0; // csum_start
        f[7] = 0xff;
    }
    let mut i = 12;
    while i < 18 {
        f[i] = 0xff;
        i += 1;
    }
    f[12 + 6] = 0x02; // a locally administered source MAC
    f[12 + 12] = 0x88;
    f[12 + 13] = 0xb5;
    f
}

/// The descriptors of hostile transmit chain `shape`, starting at `first`.
fn tx_shape(shape: u32, first: u16) -> ([Desc; DESCS_PER_CHAIN as usize], usize) {
    let d = |addr, len, flags, next| Desc {
        addr,
        len,
        flags,
        next,
    };
    let none = d(0, 0, 0, 0);
    let frame = addr(FRAME.at(0));
    let big = addr(BIG.at(0));
    match shape % 8 {
        0 => ([d(frame, 72, F_WRITE, 0), none, none, none], 1),
        1 => ([d(0x40_0000_0000, 72, 0, 0), none, none, none], 1),
        2 => ([d(0xffff_ffff_ffff_ffd4, 100, 0, 0), none, none, none], 1),
        3 => (
            [
                d(big, 0x8000, F_NEXT, first + 1),
                d(big, 0x8000, F_NEXT, first + 2),
                d(big, 0x8000, F_NEXT, first + 3),
                d(big, 0xffff_ffff, 0, 0),
            ],
            4,
        ),
        4 => ([d(frame, 12, 0, 0), none, none, none], 1),
        5 => (
            [
                d(frame, 12, F_NEXT, first + 1),
                d(frame + 12, 60, F_NEXT, first),
                none,
                none,
            ],
            2,
        ),
        6 => ([d(addr(BAD_OFFLOAD.at(0)), 72, 0, 0), none, none, none], 1),
        _ => ([d(frame, 72, 0, 0), none, none, none], 1),
    }
}

/// Receive buffer `head`: read-only, outside RAM, or a single byte, in turn.
fn rx_shape(head: u16) -> Desc {
    let (addr, len, flags) = match head % 3 {
        0 => (addr(RX_BYTE.at(0)), 64, 0),
        1 => (0x40_0000_0000, 4096, F_WRITE),
        _ => (addr(RX_BYTE.at(0)), 1, F_WRITE),
    };
    Desc {
        addr,
        len,
        flags,
        next: 0,
    }
}

/// `net-garbage`: see the module's description. Ends once every transmit
/// chain came back, and the device returned [`RX_RETURNS`] receive buffers
/// or left them all posted with the transmit side done.
pub fn garbage(cmdline: &[u8]) -> Result<(), Error> {
    let device = device::find(cmdline, NET)?;
    let queue = || RawQueue::new(QUEUE_SIZE).ok_or("out of ring pages");
    let (mut rx, mut tx) = (queue()?, queue()?);
    device.init([&rx, &tx])?;
    for head in 0..QUEUE_SIZE {
        rx.set_desc(head, rx_shape(head));
        rx.publish(head);
    }
    device.notify(RX);
    println!("attack: net-garbage start");
    let (mut sent, mut tx_returned, mut rx_returned) = (0u32, 0u32, 0u32);
    while sent < TX_CHAINS {
        for k in 0..BATCH {
            let first = k * DESCS_PER_CHAIN;
            let (descs, used) = tx_shape(sent, first);
            for (i, desc) in (first..).zip(descs.iter().take(used)) {
                tx.set_desc(i, *desc);
            }
            tx.publish(first);
            sent += 1;
        }
        device.notify(TX);
        while tx.outstanding() > 0 {
            while tx.pop_used().is_some() {
                tx_returned += 1;
            }
            rx_returned += repost(&mut rx, &device);
            if tx.outstanding() > 0 {
                device.sleep();
            }
        }
    }
    for _ in 0..1_000 {
        if rx_returned >= RX_RETURNS {
            break;
        }
        rx_returned += repost(&mut rx, &device);
        device.sleep();
    }
    println!("attack: net-garbage done tx={tx_returned} rx={rx_returned}");
    Ok(())
}

/// Posts every returned receive buffer again; returns how many came back.
fn repost(rx: &mut RawQueue, device: &device::Device) -> u32 {
    let mut returned = 0;
    while let Some((id, _)) = rx.pop_used() {
        returned += 1;
        if let Ok(head) = u16::try_from(id)
            && head < QUEUE_SIZE
        {
            rx.set_desc(head, rx_shape(head));
            rx.publish(head);
        }
    }
    if returned > 0 {
        device.notify(RX);
    }
    returned
}
