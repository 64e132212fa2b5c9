//! Raw split virtqueues: the attack writes any descriptor (address, length, flags,
//! next), any avail index and ring entry, and reads the used ring. Unlike rt's
//! `Queue` nothing here checks what the device or the attack does: the rings are
//! the weapon.

use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_bytes, write_volatile};
use core::sync::atomic::{AtomicUsize, Ordering, fence};

/// The ring layout is rt's; `CAPACITY` descriptors (and ring entries) a ring
/// page holds, though a queue may be smaller.
pub use rt::virtio::queue::{
    AVAIL_F_NO_INTERRUPT, DESC_F_NEXT as F_NEXT, DESC_F_WRITE as F_WRITE, Desc,
    QUEUE_SIZE as CAPACITY, Rings,
};

/// Ring pages in the static pool: the most any attack uses is one per queue of
/// every device (notify-storm), and a few devices is all a test VM has.
const POOL_PAGES: usize = 16;
/// An indirect table (VIRTIO_F_INDIRECT_DESC, which the attacks never negotiate).
pub const F_INDIRECT: u16 = 4;

/// Memory shared with devices, in `.bss`: the attacks never use the heap, which
/// belongs to the calm phase's function runtime once it starts.
pub struct Shared<T>(UnsafeCell<T>);

// SAFETY: the guest has one thread (ring 3 on one vCPU; interrupt handlers touch no
// memory), and the contents are only reached through raw pointers, mostly with
// volatile accesses, since a device may write them at any time anyway.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    pub const fn new(value: T) -> Shared<T> {
        Shared(UnsafeCell::new(value))
    }

    pub fn get(&self) -> *mut T {
        self.0.get()
    }
}

impl<T, const N: usize> Shared<[T; N]> {
    /// Element `i` (panics when out of bounds).
    pub fn at(&self, i: usize) -> *mut T {
        assert!(i < N, "shared buffer index {i} out of bounds");
        self.get().cast::<T>().wrapping_add(i)
    }
}

impl<T: Copy, const N: usize> Shared<[T; N]> {
    /// Reads element `i` as it is now (a device may have written it).
    pub fn read(&self, i: usize) -> T {
        // SAFETY: `at` checks the bounds; the static is always initialized and
        // only ever holds plain data, so any bytes a device wrote are a valid `T`.
        unsafe { self.at(i).read_volatile() }
    }

    /// Writes element `i` (a device may be reading it: the attacks allow that).
    pub fn write(&self, i: usize, value: T) {
        // SAFETY: `at` checks the bounds; one thread, and no reference into the
        // static exists (only raw pointers).
        unsafe { self.at(i).write_volatile(value) }
    }
}

/// Guest-physical address of guest memory (the identity map makes them equal).
pub fn addr<T>(pointer: *const T) -> u64 {
    pointer as u64
}

// SAFETY: all-zero bytes are valid for the plain-integer ring structures.
static POOL: Shared<[Rings; POOL_PAGES]> = Shared::new(unsafe { core::mem::zeroed() });
static NEXT_PAGE: AtomicUsize = AtomicUsize::new(0);

/// One queue's rings and the attack's view of them.
pub struct RawQueue {
    /// Only accessed through volatile reads and writes: the device shares the page.
    rings: *mut Rings,
    size: u16,
    /// The avail index last written.
    avail: u16,
    /// Used entries returned by [`RawQueue::pop_used`].
    last_used: u16,
}

impl RawQueue {
    /// A queue of `size` (at most [`CAPACITY`]) on a fresh zeroed page, or `None`
    /// when the pool is used up. Pages are never returned: a device may keep
    /// writing a page after the attack moved on.
    pub fn new(size: u16) -> Option<RawQueue> {
        assert!(usize::from(size) <= CAPACITY, "queue size {size} too large");
        let index = NEXT_PAGE.fetch_add(1, Ordering::Relaxed);
        (index < POOL_PAGES).then(|| RawQueue {
            rings: POOL.at(index),
            size,
            avail: 0,
            last_used: 0,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Addresses of the descriptor table, driver (avail) and device (used) rings.
    pub fn addresses(&self) -> (u64, u64, u64) {
        let rings = self.rings;
        // SAFETY: only computes field addresses inside our ring page.
        unsafe {
            (
                addr(&raw const (*rings).desc),
                addr(&raw const (*rings).avail),
                addr(&raw const (*rings).used),
            )
        }
    }

    /// Zeroes the page and the indices, for a device that was reset (and so
    /// forgot the queue) before it is set up again.
    pub fn clear(&mut self) {
        // SAFETY: the page is ours; a reset device no longer uses it.
        unsafe { write_bytes(self.rings, 0, 1) };
        self.avail = 0;
        self.last_used = 0;
    }

    /// Writes descriptor `index` (below [`CAPACITY`], even beyond the queue size).
    pub fn set_desc(&mut self, index: u16, desc: Desc) {
        // SAFETY: the descriptor table is ours; indexing is bounds-checked.
        unsafe { write_volatile(&raw mut (*self.rings).desc[usize::from(index)], desc) }
    }

    /// Puts `head` in the next avail ring slot and publishes it.
    pub fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail % self.size);
        // SAFETY: the avail ring is ours; the fence orders the descriptor and ring
        // writes before the index that publishes them.
        unsafe { write_volatile(&raw mut (*self.rings).avail.ring[slot], head) };
        fence(Ordering::SeqCst);
        self.set_avail_idx(self.avail.wrapping_add(1));
    }

    /// Writes `head` into every avail ring slot without publishing anything.
    pub fn fill_ring(&mut self, head: u16) {
        for slot in 0..usize::from(self.size) {
            // SAFETY: the avail ring is ours; `slot` < size <= CAPACITY.
            unsafe { write_volatile(&raw mut (*self.rings).avail.ring[slot], head) };
        }
    }

    /// Writes the avail index as it is, possible or not.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail = idx;
        // SAFETY: the avail index is ours to write.
        unsafe { write_volatile(&raw mut (*self.rings).avail.idx, idx) };
        fence(Ordering::SeqCst);
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail
    }

    pub fn set_avail_flags(&mut self, flags: u16) {
        // SAFETY: the avail flags are ours to write.
        unsafe { write_volatile(&raw mut (*self.rings).avail.flags, flags) };
    }

    /// Published chains the device has not returned.
    pub fn outstanding(&self) -> u16 {
        self.avail.wrapping_sub(self.last_used)
    }

    /// The next used entry (id, length) as the device wrote it. Never more than
    /// were published, so a device that runs its used index ahead cannot make
    /// [`RawQueue::outstanding`] wrap.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let rings = self.rings;
        // SAFETY: the used ring is device-written: read volatilely, and its entry
        // only after seeing the index move (the fence orders the two reads).
        unsafe {
            if self.outstanding() == 0
                || read_volatile(&raw const (*rings).used.idx) == self.last_used
            {
                return None;
            }
            fence(Ordering::SeqCst);
            let elem = &raw const (*rings).used.ring[usize::from(self.last_used % self.size)];
            self.last_used = self.last_used.wrapping_add(1);
            Some((
                read_volatile(&raw const (*elem).id),
                read_volatile(&raw const (*elem).len),
            ))
        }
    }
}
