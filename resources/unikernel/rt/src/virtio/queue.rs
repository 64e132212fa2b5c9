//! Split virtqueue: descriptor chains go out with a caller's token and come back
//! with it once the device has used them. Polled drivers ask the device not to
//! interrupt; interrupt-driven ones turn interrupts on.

use core::cell::UnsafeCell;
use core::ptr::{NonNull, addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicUsize, Ordering, fence};

use super::{Error, Transport};

/// Descriptors per queue (the device may allow fewer).
pub const QUEUE_SIZE: usize = 64;
/// Ring pages in the static pool: queues live for the whole run, never freed.
const POOL_QUEUES: usize = 8;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// Asks the device not to interrupt after using buffers.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// The device asks not to be notified of new buffers.
const USED_F_NO_NOTIFY: u16 = 1;

/// The split-ring layout (virtio 1.2 §2.7), public for guests that drive raw
/// rings (the test guest's attacks).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[repr(C)]
pub struct Avail {
    pub flags: u16,
    pub idx: u16,
    pub ring: [u16; QUEUE_SIZE],
    pub used_event: u16,
}

#[repr(C)]
pub struct UsedElem {
    pub id: u32,
    pub len: u32,
}

#[repr(C)]
pub struct Used {
    pub flags: u16,
    pub idx: u16,
    pub ring: [UsedElem; QUEUE_SIZE],
    pub avail_event: u16,
}

/// The three rings of one queue in one page (alignment 16/2/4 holds by layout).
#[repr(C, align(4096))]
pub struct Rings {
    pub desc: [Desc; QUEUE_SIZE],
    pub avail: Avail,
    pub used: Used,
}

const _: () = assert!(size_of::<Rings>() == 4096);

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

/// Not enough free descriptors for the chain.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

/// One virtqueue's rings and the driver's bookkeeping. The free list and tokens
/// live outside the shared page, so a device cannot corrupt them.
pub struct Queue {
    /// Only accessed through volatile reads/writes: the device shares the memory.
    rings: NonNull<Rings>,
    size: u16,
    next_avail: u16,
    last_used: u16,
    free_head: u16,
    num_free: u16,
    /// Free-list links, by descriptor.
    next: [u16; QUEUE_SIZE],
    /// Per chain head: the caller's token and the chain's length.
    token: [u32; QUEUE_SIZE],
    chain_len: [u16; QUEUE_SIZE],
}

impl Queue {
    /// A queue with fresh rings from the static pool, with device interrupts off.
    pub fn new() -> Result<Queue, Error> {
        let index = NEXT.fetch_add(1, Ordering::Relaxed);
        if index >= POOL_QUEUES {
            return Err(Error::OutOfQueues);
        }
        // SAFETY: `index` is in bounds and handed out only once, so this queue owns
        // the element exclusively.
        let rings = unsafe { NonNull::new_unchecked((POOL.0.get() as *mut Rings).add(index)) };
        let mut queue = Queue {
            rings,
            size: 0,
            next_avail: 0,
            last_used: 0,
            free_head: 0,
            num_free: 0,
            next: [0; QUEUE_SIZE],
            token: [0; QUEUE_SIZE],
            chain_len: [0; QUEUE_SIZE],
        };
        queue.set_size(QUEUE_SIZE as u16);
        queue.set_avail_flags(AVAIL_F_NO_INTERRUPT);
        Ok(queue)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Lets the device interrupt whenever it uses buffers.
    pub fn enable_interrupts(&mut self) {
        self.set_avail_flags(0);
    }

    /// Descriptors not in any published chain.
    pub fn free_descriptors(&self) -> u16 {
        self.num_free
    }

    /// Whether the device holds chains it has not returned yet.
    pub fn in_flight(&self) -> bool {
        self.num_free < self.size
    }

    fn set_avail_flags(&mut self, flags: u16) {
        // SAFETY: the avail flags belong to the driver; the device only reads them.
        unsafe { write_volatile(addr_of_mut!((*self.rings.as_ptr()).avail.flags), flags) }
    }

    /// Shrinks the queue to the device's maximum, keeping a power of two.
    pub(super) fn limit_size(&mut self, max: u16) {
        if max < self.size {
            self.set_size(1 << max.ilog2());
        }
    }

    /// Resizes an idle queue and chains every descriptor into the free list.
    fn set_size(&mut self, size: u16) {
        self.size = size;
        self.num_free = size;
        self.free_head = 0;
        for i in 0..size {
            self.next[usize::from(i)] = i + 1;
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

    /// Publishes `chain` to the device (without notifying it); `token` comes back
    /// from [`Queue::pop_used`] when the device is done with it.
    ///
    /// # Safety
    /// Every buffer must stay valid (and writable where `device_writes`) until the
    /// chain comes back from `pop_used`.
    pub unsafe fn push(&mut self, chain: &[Buffer], token: u32) -> Result<(), QueueFull> {
        if chain.is_empty() || chain.len() > usize::from(self.num_free) {
            return Err(QueueFull);
        }
        let rings = self.rings.as_ptr();
        let head = self.free_head;
        let mut id = head;
        for (i, buf) in chain.iter().enumerate() {
            let next = self.next[usize::from(id)];
            let mut flags = if buf.device_writes { DESC_F_WRITE } else { 0 };
            if i + 1 < chain.len() {
                flags |= DESC_F_NEXT;
            }
            let desc = Desc {
                addr: buf.addr,
                len: buf.len,
                flags,
                next,
            };
            // SAFETY: `id` is a free descriptor below `size`, so the device does not
            // read it until the chain is published below.
            unsafe { write_volatile(addr_of_mut!((*rings).desc[usize::from(id)]), desc) };
            if i + 1 < chain.len() {
                id = next;
            }
        }
        self.free_head = self.next[usize::from(id)];
        self.num_free -= chain.len() as u16;
        self.token[usize::from(head)] = token;
        self.chain_len[usize::from(head)] = chain.len() as u16;
        let slot = usize::from(self.next_avail % self.size);
        self.next_avail = self.next_avail.wrapping_add(1);
        // SAFETY: the avail ring belongs to the driver; the fence orders the
        // descriptor and ring writes before the index that publishes them.
        unsafe {
            write_volatile(addr_of_mut!((*rings).avail.ring[slot]), head);
            fence(Ordering::SeqCst);
            write_volatile(addr_of_mut!((*rings).avail.idx), self.next_avail);
        }
        Ok(())
    }

    /// Tells the device (through queue `index` of `transport`) about new chains,
    /// unless it said it does not need to hear.
    pub fn notify(&self, transport: &Transport, index: u32) {
        fence(Ordering::SeqCst);
        // SAFETY: the used flags are device-written; a volatile read sees them.
        let flags = unsafe { read_volatile(addr_of!((*self.rings.as_ptr()).used.flags)) };
        if flags & USED_F_NO_NOTIFY == 0 {
            transport.notify(index);
        }
    }

    /// Whether the device has used chains that [`Queue::pop_used`] has not returned.
    pub fn has_used(&self) -> bool {
        // SAFETY: the used index is device-written; a volatile read sees it.
        unsafe { read_volatile(addr_of!((*self.rings.as_ptr()).used.idx)) != self.last_used }
    }

    /// The next chain the device has used: its token and the length written.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let rings = self.rings.as_ptr();
        // SAFETY: the used ring is device-written: read volatilely, and its entries
        // only after seeing the index move (the fence orders the two reads).
        let (id, len) = unsafe {
            if read_volatile(addr_of!((*rings).used.idx)) == self.last_used {
                return None;
            }
            fence(Ordering::SeqCst);
            let elem = addr_of!((*rings).used.ring[usize::from(self.last_used % self.size)]);
            (
                read_volatile(addr_of!((*elem).id)),
                read_volatile(addr_of!((*elem).len)),
            )
        };
        self.last_used = self.last_used.wrapping_add(1);
        // A device returning an id it was not given would corrupt the free list.
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size && self.chain_len[usize::from(h)] != 0)
            .expect("virtio device returned an unknown descriptor");
        let count = core::mem::take(&mut self.chain_len[usize::from(head)]);
        let mut last = head;
        for _ in 1..count {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += count;
        Some((self.token[usize::from(head)], len))
    }

    /// Publishes `chain` as the only request on queue `index` of `transport`, waits
    /// until the device has used it, and returns the length the device reports
    /// written. Hangs if the device never completes the request.
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
        // SAFETY: forwarded to the caller; we wait for the chain to come back.
        unsafe { self.push(chain, 0) }.expect("request fits an idle queue");
        self.notify(transport, index);
        let len = loop {
            if let Some((_, len)) = self.pop_used() {
                break len;
            }
            core::hint::spin_loop();
        };
        transport.ack_interrupt();
        len
    }
}
