//! Guest memory and split virtqueues whose descriptors come from fuzz input.
//!
//! Memory has two regions with a hole between them, so buffers can straddle
//! a region's end. The rings of up to four queues sit at the bottom of the
//! first region (one page each); buffers go above them, in the second region,
//! across the hole, or anywhere the input says, near `u64::MAX` included.

use ember::vstate::memory::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::bytes::Reader;

/// End of the first region, which starts at 0.
pub const LOW_END: u64 = 0x10000;
/// The second region.
pub const HIGH_START: u64 = 0x20000;
pub const HIGH_LEN: u64 = 0x4000;
/// Buffers built by the harnesses start here, above the rings.
pub const DATA_START: u64 = 0x4000;
/// Size of every queue the harnesses set up.
pub const QSIZE: u16 = 16;

pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = VRING_DESC_F_WRITE as u16;

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH_START), HIGH_LEN as usize),
    ])
    .expect("cannot map the fuzz guest memory")
}

/// Where the rings of queue `index` live.
pub fn ring_base(index: usize) -> u64 {
    index as u64 * 0x1000
}

/// A guest address: mostly inside memory, sometimes past a region's end,
/// near the top of the address space or anything at all.
pub fn read_addr(r: &mut Reader) -> u64 {
    match r.u8() % 8 {
        0..=3 => DATA_START + u64::from(r.u16()) % (LOW_END - DATA_START),
        4 => HIGH_START + u64::from(r.u16()) % HIGH_LEN,
        5 => LOW_END - u64::from(r.u8()),
        6 => u64::MAX - u64::from(r.u16()),
        _ => r.u64(),
    }
}

/// A buffer length: small, medium, near `u32::MAX` or anything.
pub fn read_len(r: &mut Reader) -> u32 {
    match r.u8() % 4 {
        0 => u32::from(r.u8()),
        1 => u32::from(r.u16()),
        2 => u32::MAX - u32::from(r.u8()),
        _ => r.u32(),
    }
}

/// One descriptor; `next: None` links it to the following table slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: Option<u16>,
}

/// A chain of one to four descriptors. Each is either well-formed (linked to
/// the next, device-writable when the device writes, unless the input flips
/// that) or entirely raw: flags and `next` from the input.
pub fn read_chain(r: &mut Reader, device_writes: bool) -> Vec<Desc> {
    let n = 1 + usize::from(r.u8() % 4);
    (0..n)
        .map(|i| {
            let mode = r.u8();
            let addr = read_addr(r);
            let len = read_len(r);
            if mode & 0x80 != 0 {
                return Desc {
                    addr,
                    len,
                    flags: r.u16(),
                    next: Some(r.u16()),
                };
            }
            let mut flags = 0;
            if i + 1 < n {
                flags |= NEXT;
            }
            if device_writes != (mode & 1 == 1) {
                flags |= WRITE;
            }
            Desc {
                addr,
                len,
                flags,
                next: None,
            }
        })
        .collect()
}

/// The driver's side of one split queue (virtio 1.2 §2.7): the descriptor
/// table at `base`, the available ring right after it, the used ring after
/// that at the next 4-byte boundary. Descriptors are written to the table
/// in turn, heads published in the available ring; writes where there is
/// no memory are dropped (a driver may put its rings anywhere).
///
/// virtio-queue's `mock::MockSplitQueue` is not used for this: it places the
/// used ring inside the available ring (its ring `end()` counts entries,
/// not bytes), so the device's used index would overwrite published heads,
/// and each `MockSplitQueue` made over the rings zeroes their indices.
pub struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_slot: u16,
    avail_idx: u16,
}

impl Ring {
    /// A queue of `size` entries at `base`, its rings' flags and indices zeroed.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let size = size.max(1);
        let n = u64::from(size);
        let avail = base.wrapping_add(16 * n);
        let used = avail.wrapping_add(6 + 2 * n).wrapping_add(3) & !3;
        for at in [avail, avail.wrapping_add(2), used, used.wrapping_add(2)] {
            let _ = mem.write_obj(0u16, GuestAddress(at));
        }
        Ring {
            desc: base,
            avail,
            used,
            size,
            next_slot: 0,
            avail_idx: 0,
        }
    }

    /// The device's view of this queue, ready, at its first entry. `size`
    /// must be a valid one.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("the fuzz queue size is valid");
        q.set_size(self.size);
        q.set_ready(true);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q
    }

    /// Guest addresses of the descriptor table, available and used rings.
    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// Writes `descs` to the next table slots and makes the chain available.
    pub fn add(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> u16 {
        let size = usize::from(self.size);
        let head = self.next_slot;
        for (i, d) in descs.iter().enumerate() {
            let slot = ((usize::from(head) + i) % size) as u16;
            let next = d.next.unwrap_or(((usize::from(slot) + 1) % size) as u16);
            let raw = RawDescriptor::from(Descriptor::new(d.addr, d.len, d.flags, next));
            let at = self.desc.wrapping_add(16 * u64::from(slot));
            let _ = mem.write_obj(raw, GuestAddress(at));
        }
        self.next_slot = ((usize::from(head) + descs.len()) % size) as u16;
        self.publish(mem, head);
        head
    }

    /// Puts `head` (any value) in the available ring and bumps its index.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let entry = 4 + 2 * u64::from(self.avail_idx % self.size);
        let _ = mem.write_obj(head, GuestAddress(self.avail.wrapping_add(entry)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail.wrapping_add(2)));
    }
}
