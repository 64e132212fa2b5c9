//! Split virtqueue: descriptor chains go out with a caller's token and come back
//! with it once the device has used them. Polled drivers ask the device not to
//! interrupt; interrupt-driven ones turn interrupts on. What the device writes to
//! the used ring is checked against what the driver published, never trusted.

use core::ptr::{NonNull, addr_of, addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

use super::{Error, Transport};

/// Descriptors per queue (the device may allow fewer).
pub const QUEUE_SIZE: usize = MAX_SIZE as usize;
/// [`QUEUE_SIZE`] in the type of ring indices.
const MAX_SIZE: u16 = 64;

pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;
/// Asks the device not to interrupt after using buffers.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// The device asks not to be notified of new buffers.
const USED_F_NO_NOTIFY: u16 = 1;

/// The split-ring layout (virtio 1.2 §2.7), public for guests that drive raw
/// rings (the test guest's attacks).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A zeroed ring page that no one else uses, never to be freed: a device may
/// write it until the end. A guest may have no heap, so they come from a static
/// pool in .bss.
#[cfg(not(test))]
fn ring_page() -> Result<NonNull<Rings>, Error> {
    use core::cell::UnsafeCell;
    use core::sync::atomic::AtomicUsize;

    /// Ring pages in the pool: queues live for the whole run.
    const POOL_QUEUES: usize = 10;
    struct Pool(UnsafeCell<[Rings; POOL_QUEUES]>);
    // SAFETY: each element is handed out at most once (atomic `NEXT`), so no two
    // users ever share one.
    unsafe impl Sync for Pool {}
    // SAFETY: all-zero bytes are valid for the plain-integer ring structures.
    static POOL: Pool = Pool(UnsafeCell::new(unsafe { core::mem::zeroed() }));
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    let index = NEXT.fetch_add(1, Ordering::Relaxed);
    if index >= POOL_QUEUES {
        return Err(Error::OutOfQueues);
    }
    // SAFETY: `index` is in bounds and handed out only once, so the caller owns the
    // element exclusively.
    Ok(unsafe { NonNull::new_unchecked(POOL.0.get().cast::<Rings>().add(index)) })
}

/// Unit tests, running side by side, would use up the static pool: each queue
/// gets a page of its own from the heap instead.
#[cfg(test)]
fn ring_page() -> Result<NonNull<Rings>, Error> {
    // SAFETY: all-zero bytes are valid for the plain-integer ring structures.
    let page: alloc::boxed::Box<Rings> = alloc::boxed::Box::new(unsafe { core::mem::zeroed() });
    Ok(NonNull::from(alloc::boxed::Box::leak(page)))
}

/// A buffer in a descriptor chain, by guest-physical (= virtual) address.
#[derive(Clone, Copy)]
pub struct Buffer {
    pub addr: u64,
    pub len: u32,
    /// The device writes it (device-readable otherwise).
    pub device_writes: bool,
}

/// `len`, a length fixed at build time, as a descriptor's length. Meant for
/// constants (`const { desc_len(..) }`): one that does not fit stops the build.
pub const fn desc_len(len: usize) -> u32 {
    assert!(len <= u32::MAX as usize, "longer than a descriptor");
    // Checked just above.
    #[allow(clippy::cast_possible_truncation)]
    let len = len as u32;
    len
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
    /// Per chain head: the caller's token, the chain's length (0 for a head not
    /// in flight) and how many bytes of it the device may write.
    token: [u32; QUEUE_SIZE],
    chain_len: [u16; QUEUE_SIZE],
    writable: [u32; QUEUE_SIZE],
}

impl Queue {
    /// A queue with fresh rings from the static pool, with device interrupts off.
    pub fn new() -> Result<Queue, Error> {
        let mut queue = Queue {
            rings: ring_page()?,
            size: 0,
            next_avail: 0,
            last_used: 0,
            free_head: 0,
            num_free: 0,
            next: [0; QUEUE_SIZE],
            token: [0; QUEUE_SIZE],
            chain_len: [0; QUEUE_SIZE],
            writable: [0; QUEUE_SIZE],
        };
        queue.set_size(MAX_SIZE);
        queue.set_avail_flags(AVAIL_F_NO_INTERRUPT);
        Ok(queue)
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    /// Lets the device interrupt whenever it uses buffers. The fence orders this
    /// before the driver's next look at the used ring, so that buffers the device
    /// uses after that look raise an interrupt.
    pub fn enable_interrupts(&mut self) {
        self.set_avail_flags(0);
        fence(Ordering::SeqCst);
    }

    /// Asks the device not to interrupt when it uses buffers (a hint it may ignore).
    pub fn disable_interrupts(&mut self) {
        self.set_avail_flags(AVAIL_F_NO_INTERRUPT);
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
        let Some(count) = u16::try_from(chain.len())
            .ok()
            .filter(|&count| count != 0 && count <= self.num_free)
        else {
            return Err(QueueFull);
        };
        let rings = self.rings.as_ptr();
        let head = self.free_head;
        let mut id = head;
        let mut writable = 0u32;
        for (i, buf) in chain.iter().enumerate() {
            if buf.device_writes {
                writable = writable.saturating_add(buf.len);
            }
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
        self.num_free -= count;
        self.token[usize::from(head)] = token;
        self.chain_len[usize::from(head)] = count;
        self.writable[usize::from(head)] = writable;
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
    pub fn notify(&self, transport: &impl Transport, index: u32) {
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
    ///
    /// A used entry naming no chain in flight is skipped: freeing what it names
    /// would corrupt the free list. A length beyond what the chain lets the device
    /// write comes back as 0, as nothing written there can be trusted.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        let rings = self.rings.as_ptr();
        loop {
            // SAFETY: the used ring is device-written: read volatilely, and its
            // entries only after seeing the index move (the fence orders the reads).
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
            let Some(head) = u16::try_from(id)
                .ok()
                .filter(|&h| h < self.size && self.chain_len[usize::from(h)] != 0)
            else {
                continue;
            };
            let count = core::mem::take(&mut self.chain_len[usize::from(head)]);
            let mut last = head;
            for _ in 1..count {
                last = self.next[usize::from(last)];
            }
            self.next[usize::from(last)] = self.free_head;
            self.free_head = head;
            self.num_free += count;
            let len = if len <= self.writable[usize::from(head)] {
                len
            } else {
                0
            };
            return Some((self.token[usize::from(head)], len));
        }
    }

    /// Publishes `chain` as the only request on queue `index` of `transport`, waits
    /// until the device has used it, and returns the length the device reports
    /// written. Hangs if the device never completes the request; panics if the
    /// chain is longer than the queue (which stays idle between requests).
    ///
    /// # Safety
    /// Every buffer must stay valid (and writable where `device_writes`) until this
    /// returns.
    pub unsafe fn submit_and_wait(
        &mut self,
        transport: &impl Transport,
        index: u32,
        chain: &[Buffer],
    ) -> u32 {
        // SAFETY: forwarded to the caller; we wait for the chain to come back.
        unsafe { self.push(chain, 0) }.expect("request fits the idle queue");
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

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTransport;
    use super::*;

    /// A queue of at most `max` descriptors, live on a fake device's queue 0.
    fn live_queue(max: u32) -> (FakeTransport, Queue) {
        let fake = FakeTransport::new(0, &[max], &[]);
        let mut queue = Queue::new().unwrap();
        fake.setup_queue(0, &mut queue).unwrap();
        (fake, queue)
    }

    fn readable(buf: &[u8]) -> Buffer {
        Buffer {
            addr: buf.as_ptr() as u64,
            len: u32::try_from(buf.len()).unwrap(),
            device_writes: false,
        }
    }

    fn writable(buf: &mut [u8]) -> Buffer {
        Buffer {
            addr: buf.as_mut_ptr() as u64,
            len: u32::try_from(buf.len()).unwrap(),
            device_writes: true,
        }
    }

    #[test]
    fn returns_chains_with_their_tokens_as_the_device_uses_them() {
        let (fake, mut queue) = live_queue(8);
        let (request, mut reply, mut status) = ([1u8; 16], [0u8; 32], [0u8; 1]);
        let chain = [
            readable(&request),
            writable(&mut reply),
            writable(&mut status),
        ];
        let single = [1u8; 4];
        // SAFETY: the buffers outlive the test, which pops both chains.
        unsafe {
            queue.push(&chain, 7).unwrap();
            queue.push(&[readable(&single)], 8).unwrap();
        }
        assert_eq!(queue.free_descriptors(), 4);
        assert!(queue.in_flight());
        assert!(!queue.has_used());

        let first = fake.pop_avail(0).unwrap();
        let flags: Vec<u16> = first.descs.iter().map(|d| d.flags).collect();
        assert_eq!(
            flags,
            [DESC_F_NEXT, DESC_F_NEXT | DESC_F_WRITE, DESC_F_WRITE]
        );
        let lens: Vec<u32> = first.descs.iter().map(|d| d.len).collect();
        assert_eq!(lens, [16, 32, 1]);
        assert_eq!(first.descs[1].addr, reply.as_ptr() as u64);
        assert_eq!(first.read(0), request);
        let second = fake.pop_avail(0).unwrap();
        assert_eq!((second.descs.len(), second.descs[0].flags), (1, 0));
        assert!(fake.pop_avail(0).is_none());

        // Completed out of order, returned in the order used.
        fake.complete(0, &second, 0);
        fake.complete(0, &first, 33);
        assert!(queue.has_used());
        assert_eq!(queue.pop_used(), Some((8, 0)));
        assert_eq!(queue.pop_used(), Some((7, 33)));
        assert_eq!(queue.pop_used(), None);
        assert!(!queue.has_used());
        assert_eq!(queue.free_descriptors(), 8);
        assert!(!queue.in_flight());
    }

    #[test]
    fn wraps_around_the_ring_and_its_indices() {
        let (fake, mut queue) = live_queue(4);
        let data = [0u8; 8];
        let chain = [readable(&data), readable(&data)];
        // Past u16::MAX, with two chains in flight at a time.
        for round in 0..70_000u32 {
            // SAFETY: `data` outlives the test, which pops every chain.
            unsafe { queue.push(&chain, round) }.unwrap();
            let posted = fake.pop_avail(0).unwrap();
            assert_eq!(posted.descs.len(), 2);
            if round > 0 {
                assert_eq!(queue.pop_used(), Some((round - 1, 0)));
            }
            fake.complete(0, &posted, 0);
        }
        assert_eq!(queue.pop_used(), Some((69_999, 0)));
        assert_eq!(queue.pop_used(), None);
        assert_eq!(queue.free_descriptors(), 4);
    }

    #[test]
    fn refuses_chains_that_do_not_fit() {
        let (fake, mut queue) = live_queue(4);
        let data = [0u8; 8];
        let one = [readable(&data)];
        // SAFETY: `data` outlives the test, which never has the chains used.
        unsafe {
            assert_eq!(queue.push(&[], 0), Err(QueueFull));
            assert_eq!(queue.push(&[one[0]; 5], 0), Err(QueueFull));
            queue.push(&[one[0]; 3], 0).unwrap();
            assert_eq!(queue.push(&[one[0]; 2], 1), Err(QueueFull));
            queue.push(&one, 1).unwrap();
            assert_eq!(queue.push(&one, 2), Err(QueueFull));
        }
        assert_eq!(queue.free_descriptors(), 0);
        let first = fake.pop_avail(0).unwrap();
        fake.complete(0, &first, 0);
        assert_eq!(queue.pop_used(), Some((0, 0)));
        // SAFETY: as above.
        unsafe { queue.push(&[one[0]; 3], 2) }.unwrap();
    }

    #[test]
    fn skips_used_entries_for_chains_not_in_flight() {
        let (fake, mut queue) = live_queue(8);
        let data = [0u8; 8];
        // SAFETY: `data` outlives the test.
        unsafe {
            queue.push(&[readable(&data); 3], 1).unwrap();
            queue.push(&[readable(&data)], 2).unwrap();
        }
        let three = fake.pop_avail(0).unwrap();
        let one = fake.pop_avail(0).unwrap();
        let middle = three.descs[0].next;
        // Beyond the queue, beyond u16, a descriptor inside a chain, a free one.
        for bogus in [8, 1 << 16, u32::from(middle), 5] {
            fake.push_used(0, bogus, 0);
        }
        assert_eq!(queue.pop_used(), None);
        assert!(!queue.has_used());
        assert_eq!(queue.free_descriptors(), 4);

        fake.complete(0, &one, 0);
        // The same chain twice.
        fake.complete(0, &one, 0);
        fake.complete(0, &three, 0);
        assert_eq!(queue.pop_used(), Some((2, 0)));
        assert_eq!(queue.pop_used(), Some((1, 0)));
        assert_eq!(queue.pop_used(), None);
        assert_eq!(queue.free_descriptors(), 8);
        // The free list came through whole: every descriptor can be used again.
        // SAFETY: as above.
        unsafe { queue.push(&[readable(&data); 8], 3) }.unwrap();
        assert_eq!(fake.pop_avail(0).unwrap().descs.len(), 8);
    }

    #[test]
    fn distrusts_lengths_beyond_what_the_device_may_write() {
        let (fake, mut queue) = live_queue(8);
        let (request, mut reply) = ([0u8; 100], [0u8; 50]);
        for (token, len, reported) in [(0, 50, 50), (1, 51, 0), (2, u32::MAX, 0)] {
            // SAFETY: the buffers outlive the test, which pops the chain.
            unsafe { queue.push(&[readable(&request), writable(&mut reply)], token) }.unwrap();
            let chain = fake.pop_avail(0).unwrap();
            fake.complete(0, &chain, len);
            assert_eq!(queue.pop_used(), Some((token, reported)));
        }
        // SAFETY: as above.
        unsafe { queue.push(&[readable(&request)], 3) }.unwrap();
        let chain = fake.pop_avail(0).unwrap();
        fake.complete(0, &chain, 1);
        assert_eq!(queue.pop_used(), Some((3, 0)));
    }

    #[test]
    fn interrupts_and_notifies_as_asked() {
        let (fake, mut queue) = live_queue(8);
        assert_eq!(fake.avail_flags(0), AVAIL_F_NO_INTERRUPT);
        queue.enable_interrupts();
        assert_eq!(fake.avail_flags(0), 0);

        queue.notify(&fake, 0);
        assert_eq!(fake.take_notified(), [0]);
        fake.set_used_flags(0, USED_F_NO_NOTIFY);
        queue.notify(&fake, 0);
        assert!(fake.take_notified().is_empty());
    }

    #[test]
    fn waits_for_a_submitted_request() {
        let (fake, mut queue) = live_queue(8);
        fake.on_notify(|device, index| {
            let chain = device.pop_avail(index).unwrap();
            chain.write(0, b"done");
            device.complete(index, &chain, 4);
            device.raise_interrupt(1);
        });
        let mut reply = [0u8; 8];
        // SAFETY: `reply` outlives the call, which waits for the device.
        let len = unsafe { queue.submit_and_wait(&fake, 0, &[writable(&mut reply)]) };
        assert_eq!((len, &reply[..4]), (4, &b"done"[..]));
        assert_eq!(
            fake.ack_interrupt(),
            1,
            "the interrupt was acknowledged: one read, no ack"
        );
        assert!(!queue.in_flight());
    }
}
