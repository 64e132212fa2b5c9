//! Hostile receive queues: buffers with no room for any payload, and payloads
//! (or whole buffers) outside guest RAM. The guest accepts the host's
//! connections on them and keeps handing the same buffers back while the host
//! writes data that can never be delivered.

use rt::println;
use rt::virtio::queue::desc_len;
use rt::virtio::vsock::packet::{HEADER_LEN, Header};

use super::Error;
use super::ring::{Desc, F_NEXT, F_WRITE, Shared, addr};
use super::vsock::{QUEUE_SIZE, SERVICE_PORT, Vsock, is_request_for};

/// Returned receive buffers after which the attack ends.
const RETURNS: u32 = 2000;
/// Payload (address, length) of rx-outside-ram's two-descriptor buffers: beyond
/// RAM (256 GiB), in the last page (address + offset overflows), across the top.
const PAYLOADS: [(u64, u32); 3] = [
    (0x40_0000_0000, 4096),
    (0xffff_ffff_ffff_f000, 4096),
    (0xffff_ffff_ffff_ffd4, 100),
];
/// rx-outside-ram's single-descriptor buffers: the header itself outside RAM.
const BUFFER_OUTSIDE: u64 = 0xffff_ffff_ffff_ff00;

/// The payload room of rx-outside-ram's one valid buffer, posted until the
/// host's connection is accepted (the REQUEST needs a buffer in RAM).
static HANDSHAKE_PAYLOAD: Shared<[u8; 4096]> = Shared::new([0; 4096]);

/// The header part of every receive buffer, one per descriptor at most.
static HEADERS: Shared<[[u8; HEADER_LEN]; QUEUE_SIZE as usize]> =
    Shared::new([[0; HEADER_LEN]; QUEUE_SIZE as usize]);

/// How an attack shapes its receive buffers.
trait Layout {
    /// Whether `head` starts one of its chains.
    fn owns(&self, head: u16) -> bool;
    /// Which of [`HEADERS`] chain `head` starts with, if its header is in RAM.
    fn header(&self, head: u16) -> Option<usize>;
    /// Writes chain `head` (afresh: it may change shape) and posts it.
    fn post(&mut self, vsock: &mut Vsock, head: u16);
    /// The host's connection was accepted.
    fn connected(&mut self) {}
}

/// `rx-header-only`: sixteen buffers of exactly one 44-byte header each.
pub fn header_only(cmdline: &[u8]) -> Result<(), Error> {
    serve(Vsock::open(cmdline)?, "rx-header-only", &mut HeaderOnly)
}

struct HeaderOnly;

impl Layout for HeaderOnly {
    fn owns(&self, head: u16) -> bool {
        head < QUEUE_SIZE
    }

    fn header(&self, head: u16) -> Option<usize> {
        Some(usize::from(head))
    }

    fn post(&mut self, vsock: &mut Vsock, head: u16) {
        let header = Desc {
            addr: addr(HEADERS.at(usize::from(head))),
            len: const { desc_len(HEADER_LEN) },
            flags: F_WRITE,
            next: 0,
        };
        vsock.rx.set_desc(head, header);
        vsock.post(head);
    }
}

/// `rx-outside-ram`: eight buffers (heads 0, 2, ..., 14). Of every three posted,
/// two are a valid header followed by one of [`PAYLOADS`] in turn, and one is a
/// single descriptor at [`BUFFER_OUTSIDE`]; until the host's connection is
/// accepted, head 0 is a wholly valid buffer, so the REQUEST can arrive.
pub fn outside_ram(cmdline: &[u8]) -> Result<(), Error> {
    let mut layout = OutsideRam {
        posted: 0,
        payloads: 0,
        has_header: [false; QUEUE_SIZE as usize / 2],
        connected: false,
    };
    serve(Vsock::open(cmdline)?, "rx-outside-ram", &mut layout)
}

struct OutsideRam {
    posted: usize,
    payloads: usize,
    /// Per slot (head / 2): whether its buffer starts with a header in RAM.
    has_header: [bool; QUEUE_SIZE as usize / 2],
    connected: bool,
}

impl Layout for OutsideRam {
    fn owns(&self, head: u16) -> bool {
        head.is_multiple_of(2) && head < QUEUE_SIZE
    }

    fn header(&self, head: u16) -> Option<usize> {
        let slot = usize::from(head / 2);
        self.has_header[slot].then_some(slot)
    }

    fn connected(&mut self) {
        self.connected = true;
    }

    fn post(&mut self, vsock: &mut Vsock, head: u16) {
        let slot = usize::from(head / 2);
        let handshake = slot == 0 && !self.connected;
        self.has_header[slot] = handshake || self.posted % 3 != 2;
        self.posted += 1;
        if self.has_header[slot] {
            let (payload, len) = if handshake {
                (addr(HANDSHAKE_PAYLOAD.at(0)), 4096)
            } else {
                self.payloads += 1;
                PAYLOADS[self.payloads % PAYLOADS.len()]
            };
            self.payloads += 1;
            let header = Desc {
                addr: addr(HEADERS.at(slot)),
                len: const { desc_len(HEADER_LEN) },
                flags: F_WRITE | F_NEXT,
                next: head + 1,
            };
            vsock.rx.set_desc(head, header);
            let payload = Desc {
                addr: payload,
                len,
                flags: F_WRITE,
                next: 0,
            };
            vsock.rx.set_desc(head + 1, payload);
        } else {
            let outside = Desc {
                addr: BUFFER_OUTSIDE,
                len: 4096,
                flags: F_WRITE,
                next: 0,
            };
            vsock.rx.set_desc(head, outside);
        }
        vsock.post(head);
    }
}

/// Posts every buffer of `layout`, then counts the buffers the device returns
/// until [`RETURNS`]: each is posted again at once and notified, and the guest
/// sleeps until the next interrupt when none is back. A REQUEST for port 1024
/// found in a header in RAM is accepted.
fn serve(mut vsock: Vsock, mode: &str, layout: &mut impl Layout) -> Result<(), Error> {
    for head in 0..QUEUE_SIZE {
        if layout.owns(head) {
            layout.post(&mut vsock, head);
        }
    }
    vsock.kick();
    println!("attack: {mode} start");
    println!("attack: {mode} listening");
    let (mut returned, mut connected) = (0, false);
    while returned < RETURNS {
        let mut any = false;
        while returned < RETURNS {
            let Some((id, len)) = vsock.rx.pop_used() else {
                break;
            };
            returned += 1;
            any = true;
            let Some(head) = u16::try_from(id).ok().filter(|&h| layout.owns(h)) else {
                continue;
            };
            let request = layout
                .header(head)
                .filter(|_| len as usize >= HEADER_LEN)
                .and_then(|i| Header::decode(&HEADERS.read(i)))
                .filter(|header| is_request_for(header, SERVICE_PORT));
            layout.post(&mut vsock, head);
            if let Some(request) = request
                && vsock.can_send()
            {
                vsock.send(&vsock.accept(&request));
                if !connected {
                    connected = true;
                    layout.connected();
                    println!("attack: {mode} connected");
                }
            }
        }
        vsock.reclaim();
        if any {
            vsock.kick();
        } else {
            vsock.wait();
        }
    }
    println!("attack: {mode} done returned={returned}");
    Ok(())
}
