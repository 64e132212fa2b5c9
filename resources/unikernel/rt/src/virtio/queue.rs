//! Split virtqueue with one request in flight at a time: enough for a polled driver,
//! and the descriptors never need a free list.

use core::cell::UnsafeCell;
use core::ptr::{NonNull, addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicUsize, Ordering, fence};

use super::{Error, Transport};

/// Descriptors per queue: a request uses at most three.
const QUEUE_SIZE: usize = 16;
/// Ring pages in the static pool: queues live for the whole run, never freed.
const POOL_QUEUES: usize = 8;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// Asks the device not to interrupt: we poll.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

#[repr(C)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE],
    used_event: u16,
}

#[repr(C)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE],
    avail_event: u16,
}

/// The three rings of one queue in one page (alignment 16/2/4 holds by layout).
#[repr(C, align(4096))]
struct Rings {
    desc: [Desc; QUEUE_SIZE],
    avail: Avail,
    used: Used,
}

/// Zeroed ring pages in .bss; `NEXT` hands each out once.
struct Pool(UnsafeCell<[Rings; POOL_QUEUES]>);

// SAFETY: each element is handed out at most once (atomic `NEXT`), so no two users
// ever share one.
unsafe impl Sync for Pool {}

// SAFETY: all-zero bytes are valid for the plain-integer ring structures.
static POOL: Pool = Pool(UnsafeCell::new(unsafe { core::mem::zeroed() }));
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A buffer in a descriptor chain, by guest-physical (= virtual) address.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    /// The device writes it (device-readable otherwise).
    pub device_writes: bool,
}

/// One virtqueue's rings and the driver's indices.
pub struct Queue {
    /// Only accessed through volatile reads/writes: the device shares the memory.
    rings: NonNull<Rings>,
    size: u16,
    next_avail: u16,
    last_used: u16,
}

impl Queue {
    /// A queue with fresh rings from the static pool.
    pub fn new() -> Result<Queue, Error> {
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        if index >= POOL_QUEUES {
            return Err(Error::OutOfQueues);
        }
        // SAFETY: `index` is in bounds and handed out only once, so this queue owns
        // the element exclusively.
        let rings = unsafe { NonNull::new_unchecked((POOL.0.get() as *mut Rings).add(index)) };
        let queue = Queue {
            rings,
            size: QUEUE_SIZE as u16,
            next_avail: 0,
            last_used: 0,
        };
        // SAFETY: the rings are ours and not yet shown to any device.
        unsafe {
            write_volatile(
                addr_of_mut!((*rings.as_ptr()).avail.flags),
                AVAIL_F_NO_INTERRUPT,
            )
        }
        Ok(queue)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Shrinks the queue to the device's maximum, keeping a power of two.
    pub(super) fn limit_size(&mut self, max: u16) {
        if max < self.size {
            self.size = 1 << max.ilog2();
        }
    }

    /// Addresses of the descriptor table, driver (avail) and device (used) rings.
    pub(super) fn addresses(&self) -> (u64, u64, u64) {
        let rings = self.rings.as_ptr();
        // SAFETY: only computes field addresses inside our ring page.
        unsafe {
            (
                addr_of!((*rings).desc) as u64,
                addr_of!((*rings).avail) as u64,
                addr_of!((*rings).used) as u64,
            )
        }
    }

    /// Publishes `chain` as one request on queue `index` of `transport`, waits until
    /// the device has used it, and returns the length the device reports written.
    /// Hangs if the device never completes the request.
    ///
    /// # Safety
    /// Every buffer must stay valid (and writable where `device_writes`) until this
    /// returns.
    pub unsafe fn submit_and_wait(
        &mut self,
        transport: &Transport,
        index: u32,
        chain: &[Buffer],
    ) -> u32 {
        assert!(!chain.is_empty() && chain.len() <= usize::from(self.size));
        let rings = self.rings.as_ptr();
        let slot = |i: u16| usize::from(i % self.size);
        // SAFETY: the rings are ours; the device reads descriptors and the avail ring
        // only after the avail index is published behind the fence, and writes the
        // used ring, which we only read volatilely after seeing its index move.
        unsafe {
            for (i, buf) in chain.iter().enumerate() {
                let mut flags = if buf.device_writes { DESC_F_WRITE } else { 0 };
                if i + 1 < chain.len() {
                    flags |= DESC_F_NEXT;
                }
                let desc = addr_of_mut!((*rings).desc[i]);
                write_volatile(
                    desc,
                    Desc {
                        addr: buf.addr,
                        len: buf.len,
                        flags,
                        next: i as u16 + 1,
                    },
                );
            }
            write_volatile(addr_of_mut!((*rings).avail.ring[slot(self.next_avail)]), 0);
            self.next_avail = self.next_avail.wrapping_add(1);
            fence(Ordering::SeqCst);
            write_volatile(addr_of_mut!((*rings).avail.idx), self.next_avail);
            fence(Ordering::SeqCst);
            transport.notify(index);
            while read_volatile(addr_of!((*rings).used.idx)) == self.last_used {
                core::hint::spin_loop();
            }
            fence(Ordering::SeqCst);
            let len = read_volatile(addr_of!((*rings).used.ring[slot(self.last_used)].len));
            self.last_used = self.last_used.wrapping_add(1);
            transport.ack_interrupt();
            len
        }
    }
}
