//! The transmit queue: frames are written into slots (header and frame in one
//! descriptor) and queued; the device hears about them at the next kick.

use alloc::vec::Vec;
use core::ptr::NonNull;

use super::HEADER_LEN;
use crate::virtio::queue::QUEUE_SIZE;
use crate::virtio::{Buffer, Queue, device_memory};

/// The slots share about this much memory (one slot at least, one per descriptor
/// at most): 64 slots at an MTU of 1500 (100 KiB), 16 at 65520.
const TX_MEMORY: usize = 1024 * 1024;
// One bit per slot in `Tx::free`.
const _: () = assert!(QUEUE_SIZE <= u64::BITS as usize);

/// The transmit queue and its slots.
pub(crate) struct Tx {
    pub(super) queue: Queue,
    /// Slots of `slot_len` bytes back to back (the device may read them until the
    /// end of the run).
    memory: NonNull<u8>,
    slot_len: usize,
    /// Free slots, one bit each.
    free: u64,
    /// Slots zeroed once: the memory is not zeroed up front, so that only the pages
    /// frames reach fault in. Headers stay zero from then on.
    zeroed: u64,
    /// Frames queued since the device was last notified.
    pub(super) unnotified: bool,
    /// The device returned slots since [`super::Net::ack_interrupt`] last looked.
    pub(super) returned: bool,
    /// Where a frame goes that no slot can take, to be dropped.
    scratch: Vec<u8>,
}

impl Tx {
    /// Slots for frames of up to `largest` bytes.
    pub(super) fn new(queue: Queue, largest: usize) -> Tx {
        let slot_len = HEADER_LEN + largest;
        let slots = (TX_MEMORY / slot_len).clamp(1, usize::from(queue.size()));
        Tx {
            queue,
            memory: device_memory(slots * slot_len),
            slot_len,
            free: u64::MAX >> (u64::BITS as usize - slots),
            zeroed: 0,
            unnotified: false,
            returned: false,
            scratch: Vec::with_capacity(largest),
        }
    }

    /// Whether a slot is free.
    pub(crate) fn can_send(&self) -> bool {
        self.free != 0
    }

    /// Whether the device has returned slots not yet reclaimed.
    pub(crate) fn has_used(&self) -> bool {
        self.queue.has_used()
    }

    /// Sends the `len`-byte frame that `fill` writes: queued in a free slot, or,
    /// without one (or if longer than the MTU), dropped as a NIC with a full queue
    /// drops it.
    pub(crate) fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        let total = HEADER_LEN + len;
        let fits = self.can_send() && total <= self.slot_len;
        let Some(desc_len) = u32::try_from(total).ok().filter(|_| fits) else {
            self.scratch.clear();
            self.scratch.resize(len, 0);
            return fill(&mut self.scratch);
        };
        let index = self.free.trailing_zeros();
        let bit = 1 << index;
        // SAFETY: `index` names a slot (free bits do), inside the memory.
        let slot = unsafe { self.memory.add(index as usize * self.slot_len) }.as_ptr();
        if self.zeroed & bit == 0 {
            // SAFETY: the slot is free, so the device does not read it.
            unsafe { slot.write_bytes(0, self.slot_len) };
            self.zeroed |= bit;
        }
        // SAFETY: the slot is free and initialized (zeroed once, then only written).
        let bytes = unsafe { core::slice::from_raw_parts_mut(slot, self.slot_len) };
        let result = fill(&mut bytes[HEADER_LEN..total]);
        let buffer = Buffer {
            addr: slot as u64,
            len: desc_len,
            device_writes: false,
        };
        // SAFETY: the slot stays taken until the device returns the chain.
        if unsafe { self.queue.push(&[buffer], index) }.is_ok() {
            self.free &= !bit;
            self.unnotified = true;
        }
        result
    }

    /// Frees the slots of frames the device has sent; returns whether there were any.
    pub(super) fn reclaim(&mut self) -> bool {
        let mut any = false;
        while let Some((index, _)) = self.queue.pop_used() {
            self.free |= 1 << index;
            any = true;
        }
        self.returned |= any;
        any
    }
}
