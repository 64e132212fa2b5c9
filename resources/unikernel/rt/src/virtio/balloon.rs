//! virtio-balloon driver (virtio 1.2 §5.5), for Firecracker's balloon: the host
//! sets a target (`num_pages`, 4 KiB pages) in the config space; the driver takes
//! that much memory from the heap and lists its pages on the inflate queue, so the
//! host can take them back, or lists held pages on the deflate queue and returns
//! them to the heap, then writes what it holds to `actual`.
//!
//! Memory goes in 1 MiB chunks (one buffer of 256 page numbers each), a batch of
//! chunks per notification. Chunks are allocated, never touched: pages the guest
//! never wrote cost the host nothing to give up. When the heap has no chunk left
//! the balloon stops short of its target until the next one. The driver does not
//! negotiate statistics or deflate-on-OOM.

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::vec::Vec;
use core::ptr::NonNull;

use super::queue::desc_len;
use super::{
    Buffer, DeviceTransport, Error, F_VERSION_1, INTERRUPT_CONFIG, Queue, Transport, device_memory,
};

/// Device ID of a memory balloon.
pub const DEVICE_ID: u32 = 5;

const INFLATEQ: u32 = 0;
const DEFLATEQ: u32 = 1;
const CONFIG_NUM_PAGES: usize = 0;
const CONFIG_ACTUAL: usize = 4;

const PAGE_SHIFT: u32 = 12;
/// Pages in one chunk, and page numbers in one buffer.
pub const CHUNK_PAGES: usize = 256;
const CHUNK: Layout = match Layout::from_size_align(CHUNK_PAGES << PAGE_SHIFT, 1 << PAGE_SHIFT) {
    Ok(layout) => layout,
    Err(_) => panic!("a chunk is a valid layout"),
};
/// Chunks per batch: 32 MiB per notification.
const BATCH: usize = 32;
const PFN_BYTES: u32 = desc_len(CHUNK_PAGES * 4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Inflate,
    Deflate,
}

/// A balloon after initialization.
pub struct Balloon<T: Transport = DeviceTransport> {
    transport: T,
    inflate: Queue,
    deflate: Queue,
    /// Chunks the device holds.
    held: Vec<NonNull<u8>>,
    /// The chunks of the batch the device has, and which way they go.
    batch: Vec<NonNull<u8>>,
    direction: Direction,
    /// Buffers of the batch not returned yet.
    outstanding: usize,
    /// The host's target, in chunks.
    target: usize,
    /// The config space may hold a new target.
    config_changed: bool,
    /// The heap had no chunk for the last inflate: wait for a new target.
    stalled: bool,
    /// [`BATCH`] lists of [`CHUNK_PAGES`] page numbers (leaked: the device may
    /// hold them for good).
    pfns: NonNull<u32>,
}

impl<T: Transport> Balloon<T> {
    /// Initializes the balloon behind `transport` (already probed as one); it
    /// reads its first target at the first [`Balloon::poll`].
    pub fn new(transport: T) -> Result<Balloon<T>, Error> {
        transport.negotiate(F_VERSION_1, 0)?;
        let mut inflate = Queue::new()?;
        let mut deflate = Queue::new()?;
        transport.setup_queue(INFLATEQ, &mut inflate)?;
        transport.setup_queue(DEFLATEQ, &mut deflate)?;
        if usize::from(inflate.size().min(deflate.size())) < BATCH {
            return Err(Error::QueueTooSmall(INFLATEQ));
        }
        transport.driver_ok();
        Ok(Balloon {
            transport,
            inflate,
            deflate,
            held: Vec::new(),
            batch: Vec::with_capacity(BATCH),
            direction: Direction::Inflate,
            outstanding: 0,
            target: 0,
            config_changed: true,
            stalled: false,
            pfns: device_memory(BATCH * CHUNK_PAGES * 4).cast(),
        })
    }

    /// The memory the balloon holds, in bytes.
    pub fn held_bytes(&self) -> usize {
        self.held.len() * CHUNK.size()
    }

    /// Whether the device returned buffers not yet looked at.
    pub fn has_used(&self) -> bool {
        self.outstanding > 0 && self.queue().has_used()
    }

    /// Whether [`Balloon::poll`] has something to do now.
    pub fn has_work(&self) -> bool {
        self.config_changed
            || self.has_used()
            || (self.outstanding == 0 && !self.stalled && self.held.len() != self.target)
    }

    /// Looks at the interrupt status after a wake-up nothing else explains: a
    /// changed target is announced only there. Returns the VM exits it took.
    pub fn ack_interrupt(&mut self) -> u64 {
        let status = self.transport.take_interrupt();
        self.config_changed |= status & INTERRUPT_CONFIG != 0;
        1 + u64::from(status != 0)
    }

    fn queue(&self) -> &Queue {
        match self.direction {
            Direction::Inflate => &self.inflate,
            Direction::Deflate => &self.deflate,
        }
    }

    /// Moves toward the target: finishes the batch the device returned, reads a
    /// new target, starts the next batch. Costs no VM exit when there is nothing
    /// to do.
    pub fn poll(&mut self) {
        if self.outstanding > 0 {
            let queue = match self.direction {
                Direction::Inflate => &mut self.inflate,
                Direction::Deflate => &mut self.deflate,
            };
            while queue.pop_used().is_some() {
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            if self.outstanding > 0 {
                return;
            }
            self.finish_batch();
        }
        if self.config_changed {
            self.config_changed = false;
            self.stalled = false;
            self.target = self.transport.config_u32(CONFIG_NUM_PAGES) as usize / CHUNK_PAGES;
        }
        if !self.stalled && self.held.len() != self.target {
            self.start_batch();
        }
    }

    fn finish_batch(&mut self) {
        match self.direction {
            Direction::Inflate => self.held.append(&mut self.batch),
            Direction::Deflate => {
                for chunk in self.batch.drain(..) {
                    // SAFETY: the chunk came from `alloc` with this layout, and the
                    // device has given it back.
                    unsafe { dealloc(chunk.as_ptr(), CHUNK) };
                }
            }
        }
        let actual = u32::try_from(self.held.len() * CHUNK_PAGES).unwrap_or(u32::MAX);
        self.transport.set_config_u32(CONFIG_ACTUAL, actual);
    }

    fn start_batch(&mut self) {
        if self.held.len() < self.target {
            self.direction = Direction::Inflate;
            let wanted = (self.target - self.held.len()).min(BATCH);
            while self.batch.len() < wanted {
                // SAFETY: the layout's size is not zero.
                match NonNull::new(unsafe { alloc(CHUNK) }) {
                    Some(chunk) => self.batch.push(chunk),
                    None => {
                        self.stalled = true;
                        break;
                    }
                }
            }
        } else {
            self.direction = Direction::Deflate;
            let count = (self.held.len() - self.target).min(BATCH);
            let from = self.held.len() - count;
            self.batch.extend(self.held.drain(from..));
        }
        if self.batch.is_empty() {
            return;
        }
        let (queue, index) = match self.direction {
            Direction::Inflate => (&mut self.inflate, INFLATEQ),
            Direction::Deflate => (&mut self.deflate, DEFLATEQ),
        };
        for (i, chunk) in self.batch.iter().enumerate() {
            // SAFETY: list `i` of the leaked page-number lists, which the device
            // does not hold (no batch is outstanding).
            let list = unsafe { self.pfns.add(i * CHUNK_PAGES) };
            // The heap lies below 4 GiB (the identity map), so page numbers fit
            // 32 bits; the mask only matters to unit tests, whose heap is the host's.
            let pfn = (chunk.as_ptr() as u64 >> PAGE_SHIFT) & u64::from(u32::MAX);
            let first = u32::try_from(pfn).unwrap_or_default();
            let pfns = (0u32..)
                .take(CHUNK_PAGES)
                .map(|page| first.wrapping_add(page));
            for (page, pfn) in pfns.enumerate() {
                // SAFETY: inside list `i`, as above.
                unsafe { list.add(page).write(pfn) };
            }
            let buffer = Buffer {
                addr: list.as_ptr() as u64,
                len: PFN_BYTES,
                device_writes: false,
            };
            // SAFETY: the lists are leaked, so valid forever; a batch is at most
            // BATCH buffers and the queue has room for that many.
            if unsafe { queue.push(&[buffer], 0) }.is_ok() {
                self.outstanding += 1;
            }
        }
        queue.notify(&self.transport, index);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Chain, FakeTransport};
    use super::*;

    /// Pages in `chunks` chunks, as the config space counts them.
    fn pages(chunks: usize) -> u32 {
        u32::try_from(chunks * CHUNK_PAGES).unwrap()
    }

    /// Firecracker's balloon: two queues of 256, a config space of two u32s.
    fn device(target_pages: u32) -> (FakeTransport, Balloon<FakeTransport>) {
        let mut config = [0u8; 8];
        config[..4].copy_from_slice(&target_pages.to_le_bytes());
        let fake = FakeTransport::new(F_VERSION_1 | 1 << 2, &[256, 256], &config);
        let balloon = Balloon::new(fake.clone()).unwrap();
        (fake, balloon)
    }

    fn posted(fake: &FakeTransport, queue: u32) -> Vec<Chain> {
        core::iter::from_fn(|| fake.pop_avail(queue)).collect()
    }

    fn pfns(chain: &Chain) -> Vec<u32> {
        chain
            .read(0)
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn actual(fake: &FakeTransport) -> u32 {
        fake.config_u32(CONFIG_ACTUAL)
    }

    #[test]
    fn inflates_to_the_target_in_batches_then_reports_it() {
        let (fake, mut balloon) = device(pages(40));
        assert_eq!(fake.accepted(), F_VERSION_1, "no deflate-on-OOM");
        assert!(balloon.has_work());
        balloon.poll();
        let first = posted(&fake, INFLATEQ);
        assert_eq!(first.len(), BATCH);
        assert_eq!(fake.take_notified(), [INFLATEQ]);
        let list = pfns(&first[0]);
        assert_eq!(list.len(), CHUNK_PAGES);
        assert!(
            list.windows(2).all(|w| w[1] == w[0] + 1),
            "a chunk's pages in order"
        );
        assert!(!balloon.has_work(), "waits for the device");
        for chain in &first {
            fake.complete(INFLATEQ, chain, 0);
        }
        assert!(balloon.has_work());
        balloon.poll();
        assert_eq!(actual(&fake), pages(BATCH));
        let second = posted(&fake, INFLATEQ);
        assert_eq!(second.len(), 40 - BATCH);
        for chain in &second {
            fake.complete(INFLATEQ, chain, 0);
        }
        balloon.poll();
        assert_eq!(actual(&fake), pages(40));
        assert_eq!(balloon.held_bytes(), 40 << 20);
        assert!(!balloon.has_work());
    }

    #[test]
    fn hears_of_a_new_target_through_the_interrupt_and_deflates() {
        let (fake, mut balloon) = device(pages(4));
        balloon.poll();
        let chains = posted(&fake, INFLATEQ);
        let inflated: Vec<Vec<u32>> = chains.iter().map(pfns).collect();
        for chain in &chains {
            fake.complete(INFLATEQ, chain, 0);
        }
        balloon.poll();
        assert_eq!(actual(&fake), pages(4));

        fake.set_config(CONFIG_NUM_PAGES, &(pages(1)).to_le_bytes());
        assert!(!balloon.has_work(), "not told yet");
        fake.raise_interrupt(INTERRUPT_CONFIG);
        assert_eq!(balloon.ack_interrupt(), 2);
        balloon.poll();
        let back = posted(&fake, DEFLATEQ);
        assert_eq!(back.len(), 3);
        assert!(
            back.iter().all(|c| inflated.contains(&pfns(c))),
            "held pages go back"
        );
        for chain in &back {
            fake.complete(DEFLATEQ, chain, 0);
        }
        balloon.poll();
        assert_eq!(actual(&fake), pages(1));
        assert_eq!(balloon.held_bytes(), 1 << 20);
    }
}
