//! virtio-rng (device id 4), Firecracker's entropy device: each buffer the
//! driver posts comes back filled from the host's `getrandom`.

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use std::os::fd::RawFd;

use super::{Activity, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::rate_limiter::RateLimiter;
use crate::metrics::METRICS;
use crate::vstate::memory::GuestMemoryMmap;

pub const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 256;
/// Bytes one buffer gets at most (a longer one is filled this far).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Bytes handed out per wake-up: a guest asking without pause still lets the
/// event loop serve everything else, and costs ember a bounded slice of CPU.
const BYTES_PER_WAKE_UP: usize = 256 * 1024;
/// Descriptors one buffer may have: an indirect table could make a chain
/// 65535 long.
const MAX_DESCRIPTORS: usize = 64;

pub struct Rng {
    /// Random bytes for one request, reused.
    scratch: Vec<u8>,
    limiter: RateLimiter,
    queue_sizes: [u16; 1],
}

/// One request's writable buffers, and the bytes it gets.
struct Request {
    buffers: Vec<(GuestAddress, usize)>,
    total: usize,
}

impl Rng {
    pub fn new(limiter: RateLimiter) -> Self {
        Rng {
            scratch: vec![0; MAX_REQUEST_BYTES],
            limiter,
            queue_sizes: [QUEUE_SIZE],
        }
    }

    /// Fills one request's buffers; returns the bytes written (0 if the host
    /// had no randomness to give).
    fn fill(&mut self, mem: &GuestMemoryMmap, request: Request) -> usize {
        let Request { buffers, total } = request;
        let Some(random) = self.scratch.get_mut(..total) else {
            return 0;
        };
        if crate::random::fill(random).is_err() {
            METRICS.entropy.host_rng_fails.inc();
            log::warn!("entropy: the host's getrandom failed");
            return 0;
        }
        let mut written = 0;
        for (addr, len) in buffers {
            let n = len.min(total - written);
            if n == 0
                || mem
                    .write_slice(&self.scratch[written..written + n], addr)
                    .is_err()
            {
                break;
            }
            written += n;
        }
        written
    }
}

/// A chain's writable buffers; an empty request for a chain that is not a
/// valid one.
fn parse(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Request {
    let mut buffers: Vec<(GuestAddress, usize)> = Vec::new();
    for desc in chain.take(MAX_DESCRIPTORS + 1) {
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let valid = desc.is_write_only() && mem.check_range(desc.addr(), len, Permissions::Write);
        if !valid || buffers.len() == MAX_DESCRIPTORS {
            buffers.clear();
            break;
        }
        buffers.push((desc.addr(), len));
    }
    let total = buffers
        .iter()
        .map(|b| b.1)
        .sum::<usize>()
        .min(MAX_REQUEST_BYTES);
    Request { buffers, total }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn process_queue(&mut self, _: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> Activity {
        let Some(queue) = queues.first_mut() else {
            return Activity::default();
        };
        METRICS.entropy.entropy_event_count.inc();
        let (mut used, mut given) = (false, 0usize);
        while given < BYTES_PER_WAKE_UP {
            if self.limiter.is_waiting() {
                // The limiter's timer brings the device back.
                return Activity { used, rerun: None };
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Activity { used, rerun: None };
            };
            let head = chain.head_index();
            let request = parse(mem, chain);
            let bytes = u64::try_from(request.total).unwrap_or(u64::MAX);
            if !self.limiter.consume(bytes) {
                // The request waits in the ring for its tokens.
                METRICS.entropy.entropy_rate_limiter_throttled.inc();
                queue.go_to_previous_position();
                return Activity { used, rerun: None };
            }
            let written = self.fill(mem, request);
            METRICS.entropy.entropy_bytes.add(written as u64);
            // Even an empty answer counts against the budget: the walk cost something.
            given += written.max(1024);
            let len = u32::try_from(written).unwrap_or(0);
            used |= queue.add_used(mem, head, len).is_ok();
        }
        Activity {
            used,
            rerun: Some(0),
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.limiter.timer_fd()]
    }

    /// The rate limiter's timer: requests it held back may go now.
    fn process_backend(
        &mut self,
        _index: usize,
        queues: Option<&mut [Queue]>,
        mem: &GuestMemoryMmap,
    ) -> Activity {
        self.limiter.on_timer();
        METRICS.entropy.rate_limiter_event_count.inc();
        queues.map_or_else(Activity::default, |q| self.process_queue(0, q, mem))
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::config::{RateLimiterConfig, TokenBucketConfig};
    use crate::devices::virtio::test_utils::{desc, guest_memory, used_lens, NEXT, WRITE};

    fn unlimited() -> Rng {
        Rng::new(RateLimiter::new(None).unwrap())
    }

    #[test]
    fn buffers_come_back_full_of_different_random_bytes() {
        let mem = guest_memory(0x100000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    desc(0x1000, 32, WRITE, 0),
                    desc(0x2000, 16, WRITE | NEXT, 2),
                    desc(0x3000, 16, WRITE, 0),
                    desc(0x10000, 0x20000, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        let mut rng = unlimited();
        let activity = rng.process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert!(activity.used);
        assert_eq!(activity.rerun, None);
        let max = u32::try_from(MAX_REQUEST_BYTES).unwrap();
        assert_eq!(used_lens(&queue, 3), vec![32, 32, max]);
        let read = |addr: u64| {
            let mut bytes = [0u8; 16];
            mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            bytes
        };
        assert_ne!(read(0x1000), read(0x2000));
        assert_ne!(
            read(0x3000),
            [0; 16],
            "the second buffer of a chain is filled too"
        );
    }

    #[test]
    fn requests_that_are_no_buffers_get_nothing() {
        let mem = guest_memory(0x100000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    // Read-only, outside guest memory, and at the top of the address space.
                    desc(0x1000, 32, 0, 0),
                    desc(0x40_0000_0000, 32, WRITE, 0),
                    desc(0xffff_ffff_ffff_fff0, 32, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        unlimited().process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert_eq!(used_lens(&queue, 3), vec![0, 0, 0]);
    }

    #[test]
    fn a_full_ring_is_served_a_budget_at_a_time() {
        let mem = guest_memory(0x200000);
        let queue = MockSplitQueue::new(&mem, 16);
        let descs: Vec<_> = (0..16u64)
            .map(|i| desc(0x10000 + i * 0x10000, 0x10000, WRITE, 0))
            .collect();
        queue.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        let mut rng = unlimited();
        let first = rng.process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert_eq!(first.rerun, Some(0), "stopped at its budget");
        let served = BYTES_PER_WAKE_UP / MAX_REQUEST_BYTES;
        assert_eq!(q.next_avail(), u16::try_from(served).unwrap());
        for _ in 0..16 {
            rng.process_queue(0, std::slice::from_mut(&mut q), &mem);
        }
        assert_eq!(q.next_avail(), 16);
    }

    #[test]
    fn a_rate_limited_request_waits_in_the_ring() {
        let mem = guest_memory(0x100000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(&[desc(0x1000, 64, WRITE, 0), desc(0x2000, 64, WRITE, 0)], 0)
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        // 64 bytes a minute.
        let limits = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 64,
                one_time_burst: None,
                refill_time: 60_000,
            }),
            ops: None,
        };
        let mut rng = Rng::new(RateLimiter::new(Some(&limits)).unwrap());
        let activity = rng.process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert_eq!(
            activity.rerun, None,
            "the timer, not a rerun, brings it back"
        );
        assert_eq!(q.next_avail(), 1, "the second request is left in the ring");
        assert_eq!(used_lens(&queue, 1), vec![64]);
    }
}
