//! The receive queue: buffers go back to the device in batches, and a frame the
//! device spread over several buffers is copied together.

use alloc::vec::Vec;
use core::ptr::NonNull;

use super::{HEADER_LEN, MAX_FRAME};
use crate::virtio::queue::QUEUE_SIZE;
use crate::virtio::{Buffer, Queue, device_memory};

/// Receive buffers are at least this long: with merged buffers a 64 KiB (TSO)
/// frame takes five, and the ring (64 buffers, 1 MiB) holds a dozen.
const MIN_BUFFER_LEN: usize = 16 * 1024;
/// Where `num_buffers` lies in the header.
const NUM_BUFFERS: usize = 10;
// One bit per buffer in `Rx::held`.
const _: () = assert!(QUEUE_SIZE <= u64::BITS as usize);

/// The receive queue and its buffers.
pub(crate) struct Rx {
    pub(super) queue: Queue,
    /// `buffers` buffers of `buffer_len` bytes back to back (the device owns them
    /// for the rest of the run).
    memory: NonNull<u8>,
    buffer_len: usize,
    buffers: usize,
    /// Buffers handled but not posted again, one bit each.
    held: u64,
    /// Buffers posted since the device was last notified.
    pub(super) unnotified: bool,
    /// The device returned buffers since [`super::Net::ack_interrupt`] last looked.
    pub(super) returned: bool,
    merged: bool,
    /// A frame spread over several buffers, copied together (capacity
    /// [`MAX_FRAME`], allocated up front).
    assembly: Vec<u8>,
    /// Buffers that frame still lacks.
    missing: u16,
    /// That frame is longer than [`MAX_FRAME`]: the rest of its buffers are dropped.
    oversized: bool,
}

/// A received frame, valid until [`Rx::release`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// In receive buffer `index`, which the device wrote `len` bytes of (header
    /// included).
    InPlace { index: u32, len: u32 },
    /// In the assembly buffer.
    Assembled,
}

impl Rx {
    /// Sizes the buffers and posts them all: each takes `unmerged` bytes of frame
    /// (without merged buffers, the largest frame), and half of them a whole
    /// [`MAX_FRAME`]: Firecracker's device takes a frame from its TAP only once the
    /// buffers posted can hold the longest, and up to half may be held back (see
    /// [`Rx::refill`]).
    pub(super) fn new(queue: Queue, merged: bool, unmerged: usize) -> Rx {
        let buffers = usize::from(queue.size());
        let buffer_len = MIN_BUFFER_LEN
            .max(HEADER_LEN + unmerged)
            .max((2 * (HEADER_LEN + MAX_FRAME)).div_ceil(buffers));
        let mut rx = Rx {
            queue,
            memory: device_memory(buffers * buffer_len),
            buffer_len,
            buffers,
            held: 0,
            unnotified: false,
            returned: false,
            merged,
            assembly: Vec::with_capacity(MAX_FRAME),
            missing: 0,
            oversized: false,
        };
        for index in (0..).take(buffers) {
            rx.post(index);
        }
        rx
    }

    fn post(&mut self, index: u32) {
        let buffer = Buffer {
            // SAFETY: `index` < `buffers`, inside the receive memory.
            addr: unsafe { self.memory.add(index as usize * self.buffer_len) }.as_ptr() as u64,
            len: u32::try_from(self.buffer_len).expect("receive buffers are under 4 GiB"),
            device_writes: true,
        };
        // SAFETY: the receive memory is leaked, so valid forever, and only read
        // between the device returning a buffer and its being posted again.
        unsafe { self.queue.push(&[buffer], index) }.expect("a returned buffer fits");
        self.unnotified = true;
    }

    /// The first `len` bytes of buffer `index`.
    ///
    /// # Safety
    /// The device must have returned the buffer with `len` bytes written (no more
    /// than the buffer holds), and it must not be posted again while the bytes are
    /// in use.
    unsafe fn bytes<'a>(&self, index: u32, len: u32) -> &'a [u8] {
        // SAFETY: as the caller guarantees; the memory is never freed.
        unsafe {
            core::slice::from_raw_parts(
                self.memory.add(index as usize * self.buffer_len).as_ptr(),
                len as usize,
            )
        }
    }

    /// Whether the device has returned buffers not yet looked at.
    pub(crate) fn has_used(&self) -> bool {
        self.queue.has_used()
    }

    /// The next whole frame the device has returned. Dropped instead: buffers too
    /// short for a header or whose header claims no buffers, and frames longer
    /// than [`MAX_FRAME`]. A frame whose later buffers have not come back yet is
    /// finished at a later call.
    pub(crate) fn next(&mut self) -> Option<Frame> {
        while let Some((index, len)) = self.queue.pop_used() {
            self.returned = true;
            // SAFETY: the device returned buffer `index` with `len` bytes written
            // (the queue bounds `len` by the buffer); it goes back only once
            // released or held, and the bytes are copied before that.
            let bytes = unsafe { self.bytes(index, len) };
            if self.missing > 0 {
                self.missing -= 1;
                self.append(bytes);
                self.hold(index);
                if self.missing == 0 && !self.oversized {
                    return Some(Frame::Assembled);
                }
                continue;
            }
            let count = match bytes.get(..HEADER_LEN) {
                Some(header) if self.merged => {
                    u16::from_le_bytes([header[NUM_BUFFERS], header[NUM_BUFFERS + 1]])
                }
                Some(_) => 1,
                None => 0,
            };
            match count {
                0 => self.hold(index),
                1 => return Some(Frame::InPlace { index, len }),
                _ => {
                    self.assembly.clear();
                    self.oversized = false;
                    self.append(&bytes[HEADER_LEN..]);
                    self.missing = count - 1;
                    self.hold(index);
                }
            }
        }
        None
    }

    /// Adds `bytes` to the frame being assembled, unless that makes it too long.
    fn append(&mut self, bytes: &[u8]) {
        self.oversized |= self.assembly.len() + bytes.len() > MAX_FRAME;
        if !self.oversized {
            self.assembly.extend_from_slice(bytes);
        }
    }

    /// The bytes of `frame`, from its Ethernet header on.
    pub(crate) fn frame(&self, frame: &Frame) -> &[u8] {
        match *frame {
            Frame::InPlace { index, len } => {
                // SAFETY: `next` returned the buffer with `len` bytes written, at
                // least a header, and it is not posted again before `release`.
                let bytes = unsafe { self.bytes(index, len) };
                &bytes[HEADER_LEN..]
            }
            Frame::Assembled => &self.assembly,
        }
    }

    /// Done with `frame`: its buffer may go back to the device.
    pub(crate) fn release(&mut self, frame: &Frame) {
        if let Frame::InPlace { index, .. } = *frame {
            self.hold(index);
        }
    }

    fn hold(&mut self, index: u32) {
        self.held |= 1 << index;
    }

    /// Posts the held buffers again once at most half of them are left with the
    /// device, all at once, so that a small exchange costs no notification while a
    /// stream never runs dry (as Linux's driver does).
    pub(super) fn refill(&mut self) {
        let held = self.held.count_ones() as usize;
        if held > 0 && 2 * held >= self.buffers {
            while self.held != 0 {
                let index = self.held.trailing_zeros();
                self.held &= !(1 << index);
                self.post(index);
            }
        }
    }
}
