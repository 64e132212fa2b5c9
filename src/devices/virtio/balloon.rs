//! virtio-balloon (device id 5), Firecracker's balloon: the host sets a
//! target in the configuration space, the guest hands that many 4 KiB pages
//! to the device (inflate) or takes them back (deflate), and the device gives
//! inflated pages back to the host with `MADV_DONTNEED`. The guest may also
//! report memory statistics on a queue the device polls on a timer, report
//! pages it freed, and hint free pages during a run the host starts; reported
//! and hinted pages go back to the host the same way.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::timerfd::TimerFd;

use super::{read_config_space, Activity, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::metrics::METRICS;
use crate::vstate::memory::GuestMemoryMmap;

pub const VIRTIO_ID_BALLOON: u32 = 5;
const F_STATS_VQ: u32 = 1;
const F_DEFLATE_ON_OOM: u32 = 2;
const F_FREE_PAGE_HINT: u32 = 3;
const F_FREE_PAGE_REPORTING: u32 = 5;
const QUEUE_SIZE: u16 = 256;
/// Balloon pages are 4 KiB whatever the guest's page size (virtio 1.2 §5.5.6).
const PAGE_SHIFT: u32 = 12;
/// Bytes of one balloon page.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Balloon pages in one MiB, the unit of the API's sizes.
pub const PAGES_PER_MIB: u32 = 256;
const _: () = assert!((1 << 20) / PAGE_SIZE == 256);
/// Pages given back per wake-up (256 MiB): the rest waits for a rerun, so a
/// guest posting huge page lists still lets the event loop serve the others.
const PAGES_PER_WAKE_UP: usize = 65536;
/// Descriptors one chain may have: an indirect table could make one 65535 long.
const MAX_DESCRIPTORS: usize = 64;
/// Statistics one buffer may carry: virtio defines 16 tags, Linux sends them all.
const MAX_STATS: usize = 32;
/// One statistic: a 16-bit tag and a 64-bit value, packed.
const STAT_LEN: usize = 10;
/// Configuration space: `num_pages` (the target), `actual`, then
/// `free_page_hint_cmd_id`.
const CONFIG_ACTUAL: u64 = 4;
/// Hinting command ids with a fixed meaning: the guest ends a run with STOP,
/// the host lets the guest use hinted pages again with DONE. Runs take ids
/// from 2 up.
pub const HINT_STOP: u32 = 0;
pub const HINT_DONE: u32 = 1;
/// A hint's command id travels in a 4-byte device-readable buffer.
const HINT_CMD_LEN: u32 = 4;

/// The guest's memory statistics by virtio tag (swap_in = 0 ... direct_reclaim = 15).
pub type Stats = [Option<u64>; 16];

/// What the balloon shares with the controller: the target it sets, what
/// the guest says it holds, the statistics it last reported, and where a
/// free page hinting run stands.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BalloonStatus {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub stats: Stats,
    pub hinting: Hinting,
}

/// A free page hinting run: the command the host last gave, the one the
/// guest last sent, and whether the guest's STOP ends the run by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hinting {
    pub host_cmd: u32,
    pub guest_cmd: Option<u32>,
    pub last_run: u32,
    pub acknowledge_on_stop: bool,
}

impl Default for Hinting {
    fn default() -> Self {
        Hinting {
            host_cmd: HINT_STOP,
            guest_cmd: None,
            last_run: HINT_DONE,
            acknowledge_on_stop: true,
        }
    }
}

impl Hinting {
    /// Starts a run under a fresh command id; the guest hears of it from the
    /// configuration space.
    pub fn start(&mut self, acknowledge_on_stop: bool) {
        self.last_run = self.last_run.wrapping_add(1).max(HINT_DONE + 1);
        self.host_cmd = self.last_run;
        self.acknowledge_on_stop = acknowledge_on_stop;
    }

    /// Ends the run: the guest may use the hinted pages again.
    pub fn stop(&mut self) {
        self.host_cmd = HINT_DONE;
    }

    /// Whether a hinted range belongs to the run in progress.
    fn accepts_hints(&self) -> bool {
        self.host_cmd > HINT_DONE && self.guest_cmd == Some(self.host_cmd)
    }
}

/// The controller's handle on a running balloon.
pub struct BalloonHandle {
    pub status: Arc<Mutex<BalloonStatus>>,
    stats_timer: Arc<Mutex<TimerFd>>,
}

impl BalloonHandle {
    /// Polls statistics every `seconds` from now on, the first time at once.
    pub fn set_stats_interval(&self, seconds: u16) -> std::io::Result<()> {
        let mut timer = self
            .stats_timer
            .lock()
            .map_err(|_| std::io::Error::other("the balloon's timer lock is poisoned"))?;
        arm(&mut timer, seconds, Duration::from_nanos(1))
    }
}

/// Sets `timer` to fire after `first` then every `seconds`; 0 stops it.
fn arm(timer: &mut TimerFd, seconds: u16, first: Duration) -> std::io::Result<()> {
    let result = if seconds == 0 {
        timer.clear()
    } else {
        timer.reset(first, Some(Duration::from_secs(u64::from(seconds))))
    };
    result.map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// What each queue the driver set up is for: the inflate and deflate queues
/// always, then the statistics and reporting queues if negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Hinting,
    Reporting,
}

pub struct Balloon {
    status: Arc<Mutex<BalloonStatus>>,
    features: u64,
    stats_timer: Arc<Mutex<TimerFd>>,
    stats_timer_fd: RawFd,
    roles: Vec<Role>,
    queue_sizes: Vec<u16>,
    /// The statistics buffer the device holds until the next poll.
    held_stats: Option<u16>,
    /// Page numbers of one inflate buffer, reused.
    pfns: Vec<u32>,
    /// One descriptor's page numbers as guest memory holds them (little-endian), reused.
    pfn_bytes: Vec<u8>,
    /// The device ended a hinting run itself: the guest must hear of it.
    config_changed: bool,
}

impl Balloon {
    /// A balloon whose target is `target_pages`, with statistics polled
    /// every `stats_interval` seconds (0: no statistics queue).
    pub fn new(
        target_pages: u32,
        deflate_on_oom: bool,
        stats_interval: u16,
        free_page_hinting: bool,
        free_page_reporting: bool,
    ) -> std::io::Result<(Self, BalloonHandle)> {
        let mut features = 1 << VIRTIO_F_VERSION_1;
        if deflate_on_oom {
            features |= 1 << F_DEFLATE_ON_OOM;
        }
        if stats_interval > 0 {
            features |= 1 << F_STATS_VQ;
        }
        if free_page_hinting {
            features |= 1 << F_FREE_PAGE_HINT;
        }
        if free_page_reporting {
            features |= 1 << F_FREE_PAGE_REPORTING;
        }
        let status = Arc::new(Mutex::new(BalloonStatus {
            target_pages,
            ..BalloonStatus::default()
        }));
        let mut timer = crate::devices::nonblocking_timer()?;
        // Armed now, on the thread that builds the device: the driver becomes
        // ready on a vCPU thread, whose seccomp filter has no timer calls.
        let interval = Duration::from_secs(u64::from(stats_interval));
        arm(&mut timer, stats_interval, interval)?;
        let stats_timer_fd = timer.as_raw_fd();
        let stats_timer = Arc::new(Mutex::new(timer));
        let balloon = Balloon {
            status: status.clone(),
            features,
            stats_timer: stats_timer.clone(),
            stats_timer_fd,
            roles: Vec::new(),
            queue_sizes: vec![QUEUE_SIZE; Balloon::roles_for(features).len()],
            held_stats: None,
            pfns: Vec::new(),
            pfn_bytes: Vec::new(),
            config_changed: false,
        };
        let handle = BalloonHandle {
            status,
            stats_timer,
        };
        Ok((balloon, handle))
    }

    /// The queues a driver that accepted `features` sets up, in order: a
    /// queue whose feature is not negotiated takes no index.
    fn roles_for(features: u64) -> Vec<Role> {
        let has = |bit: u32| features & (1 << bit) != 0;
        let mut roles = vec![Role::Inflate, Role::Deflate];
        if has(F_STATS_VQ) {
            roles.push(Role::Stats);
        }
        if has(F_FREE_PAGE_HINT) {
            roles.push(Role::Hinting);
        }
        if has(F_FREE_PAGE_REPORTING) {
            roles.push(Role::Reporting);
        }
        roles
    }

    fn with_status<R>(&self, f: impl FnOnce(&mut BalloonStatus) -> R) -> Option<R> {
        self.status.lock().ok().map(|mut s| f(&mut s))
    }

    /// Gives the pages an inflate buffer names back to the host; returns how
    /// many it named.
    fn inflate(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> usize {
        self.pfns.clear();
        for desc in chain.take(MAX_DESCRIPTORS) {
            if desc.is_write_only() {
                continue;
            }
            let room = PAGES_PER_WAKE_UP.saturating_sub(self.pfns.len());
            let count = (desc.len() as usize / 4).min(room);
            self.pfn_bytes.resize(count * 4, 0);
            if mem.read_slice(&mut self.pfn_bytes, desc.addr()).is_ok() {
                let words = self.pfn_bytes.chunks_exact(4);
                self.pfns
                    .extend(words.map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]])));
            }
        }
        let mut pfns = std::mem::take(&mut self.pfns);
        pfns.sort_unstable();
        let mut runs = pfns.iter().peekable();
        while let Some(&first) = runs.next() {
            let mut last = first;
            while let Some(&&next) = runs.peek() {
                if next != last.wrapping_add(1) && next != last {
                    break;
                }
                last = next;
                runs.next();
            }
            let pages = u64::from(last - first) + 1;
            discard(mem, u64::from(first) << PAGE_SHIFT, pages * PAGE_SIZE);
        }
        let named = pfns.len();
        self.pfns = pfns;
        named
    }

    /// Gives the ranges a free page report names back to the host, as far
    /// as the wake-up's budget (`pages` spent of [`PAGES_PER_WAKE_UP`]) goes.
    fn report(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        pages: &mut usize,
    ) {
        for desc in chain.take(MAX_DESCRIPTORS) {
            match discard_within(mem, desc.addr().0, desc.len(), pages) {
                Some(bytes) => METRICS.balloon.free_page_report_freed.add(bytes),
                None => METRICS.balloon.free_page_report_fails.inc(),
            }
        }
        METRICS.balloon.free_page_report_count.inc();
    }

    /// A chain on the hinting queue: a command id from the guest (a run's
    /// start, or STOP at its end), or free ranges of the run in progress,
    /// which go back to the host.
    fn hint(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        pages: &mut usize,
    ) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        for desc in chain.take(MAX_DESCRIPTORS) {
            if !desc.is_write_only() {
                let mut cmd = [0u8; 4];
                if desc.len() != HINT_CMD_LEN || mem.read_slice(&mut cmd, desc.addr()).is_err() {
                    METRICS.balloon.free_page_hint_fails.inc();
                    continue;
                }
                let cmd = u32::from_le_bytes(cmd);
                status.hinting.guest_cmd = Some(cmd);
                if cmd == HINT_STOP && status.hinting.acknowledge_on_stop {
                    status.hinting.stop();
                    self.config_changed = true;
                }
            } else if status.hinting.accepts_hints() {
                METRICS.balloon.free_page_hint_count.inc();
                match discard_within(mem, desc.addr().0, desc.len(), pages) {
                    Some(bytes) => METRICS.balloon.free_page_hint_freed.add(bytes),
                    None => METRICS.balloon.free_page_hint_fails.inc(),
                }
            }
        }
    }

    /// Reads the statistics a buffer carries (up to [`MAX_STATS`]).
    fn read_stats(&self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        let Some(desc) = chain.take(1).find(|d| !d.is_write_only()) else {
            METRICS.balloon.stats_update_fails.inc();
            return;
        };
        let len = (desc.len() as usize).min(MAX_STATS * STAT_LEN) / STAT_LEN * STAT_LEN;
        let mut bytes = [0u8; MAX_STATS * STAT_LEN];
        if mem.read_slice(&mut bytes[..len], desc.addr()).is_err() {
            METRICS.balloon.stats_update_fails.inc();
            return;
        }
        let mut stats = Stats::default();
        for entry in bytes[..len].chunks_exact(STAT_LEN) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..]);
            if let Some(slot) = stats.get_mut(usize::from(tag)) {
                *slot = Some(u64::from_le_bytes(value));
            }
        }
        self.with_status(|s| s.stats = stats);
        METRICS.balloon.stats_updates_count.inc();
    }
}

/// [`discard`] of at most what is left of the wake-up's budget (`pages`
/// spent of [`PAGES_PER_WAKE_UP`]), which it charges at least a page: a guest
/// naming its whole memory over and over costs ember a bounded slice of time.
/// The bytes given back, or `None` for a range that is not guest RAM.
fn discard_within(mem: &GuestMemoryMmap, addr: u64, len: u32, pages: &mut usize) -> Option<u64> {
    let left = PAGES_PER_WAKE_UP.saturating_sub(*pages) as u64 * PAGE_SIZE;
    let len = u64::from(len).min(left);
    *pages += usize::try_from(len / PAGE_SIZE)
        .unwrap_or(usize::MAX)
        .max(1);
    (len == 0 || discard(mem, addr, len)).then_some(len)
}

/// Gives `len` bytes of guest memory at `addr` back to the host: the host
/// frees them, and the guest reads zeros (or the snapshot's file) after.
/// False for a range that is not wholly inside one region of guest RAM.
fn discard(mem: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
    let Some(region) = mem.find_region(GuestAddress(addr)) else {
        return false;
    };
    let offset = addr - region.start_addr().0;
    let Some(end) = offset.checked_add(len).filter(|&end| end <= region.len()) else {
        return false;
    };
    let (Ok(host), Ok(len)) = (
        region.get_host_address(vm_memory::MemoryRegionAddress(offset)),
        usize::try_from(end - offset),
    ) else {
        return false;
    };
    // SAFETY: the range lies inside one mapping of guest memory, which the
    // guest gave up; dropping its pages cannot touch ember's own memory.
    let done = unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) } == 0;
    if !done {
        log::warn!(
            "balloon: cannot give back guest memory: {}",
            std::io::Error::last_os_error()
        );
    }
    done
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let (target, actual, hint) = self
            .with_status(|s| (s.target_pages, s.actual_pages, s.hinting.host_cmd))
            .unwrap_or_default();
        let mut config = [0u8; 16];
        config[..4].copy_from_slice(&target.to_le_bytes());
        config[4..8].copy_from_slice(&actual.to_le_bytes());
        config[8..12].copy_from_slice(&hint.to_le_bytes());
        read_config_space(&config, offset, data);
    }

    /// The driver says how many pages it holds; the rest is read-only.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let (CONFIG_ACTUAL, Ok(bytes)) = (offset, <[u8; 4]>::try_from(data)) {
            self.with_status(|s| s.actual_pages = u32::from_le_bytes(bytes));
        }
    }

    fn process_queue(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Activity {
        let (Some(&role), Some(queue)) = (self.roles.get(index), queues.get_mut(index)) else {
            return Activity::default();
        };
        let (mut used, mut pages) = (false, 0usize);
        while pages < PAGES_PER_WAKE_UP {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Activity { used, rerun: None };
            };
            let head = chain.head_index();
            match role {
                Role::Inflate => {
                    pages += self.inflate(mem, chain).max(1);
                    METRICS.balloon.inflate_count.inc();
                }
                Role::Deflate => {
                    // Deflated pages come back to the guest when it touches them.
                    pages += 1;
                    METRICS.balloon.deflate_count.inc();
                }
                Role::Reporting => {
                    self.report(mem, chain, &mut pages);
                    pages += 1;
                }
                Role::Hinting => {
                    self.hint(mem, chain, &mut pages);
                    pages += 1;
                }
                Role::Stats => {
                    self.read_stats(mem, chain);
                    // A newer buffer replaces one held: give the old one back.
                    if let Some(old) = self.held_stats.replace(head) {
                        used |= queue.add_used(mem, old, 0).is_ok();
                    }
                    pages += 1;
                    continue;
                }
            }
            used |= queue.add_used(mem, head, 0).is_ok();
        }
        Activity {
            used,
            rerun: Some(index),
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.stats_timer_fd]
    }

    /// The statistics timer: the guest gets its buffer back, to fill anew.
    fn process_backend(
        &mut self,
        _index: usize,
        queues: Option<&mut [Queue]>,
        mem: &GuestMemoryMmap,
    ) -> Activity {
        if let Ok(mut timer) = self.stats_timer.lock() {
            // Non-blocking: a timer re-armed since it fired has nothing to read.
            let _ = timer.wait();
        }
        let stats_queue = self.roles.iter().position(|&r| r == Role::Stats);
        let (Some(queues), Some(index)) = (queues, stats_queue) else {
            return Activity::default();
        };
        let (Some(queue), Some(head)) = (queues.get_mut(index), self.held_stats.take()) else {
            return Activity::default();
        };
        Activity {
            used: queue.add_used(mem, head, 0).is_ok(),
            rerun: None,
        }
    }

    fn take_config_change(&mut self) -> bool {
        std::mem::take(&mut self.config_changed)
    }

    fn activate(&mut self, acked_features: u64) {
        self.roles = Balloon::roles_for(acked_features & self.features);
    }

    fn reset(&mut self) {
        self.roles.clear();
        self.held_stats = None;
        // The target and the host's hinting command are the host's: a driver
        // that starts over reads them again.
        self.with_status(|s| {
            s.actual_pages = 0;
            s.stats = Stats::default();
            s.hinting.guest_cmd = None;
        });
    }

    /// `actual`, the held statistics buffer (`u16::MAX`: none), then the
    /// hinting run: host command, guest command (with a flag), last run id
    /// and whether STOP acknowledges. 20 bytes, little-endian.
    fn save_device(&self) -> Vec<u8> {
        let (actual, hinting) = self
            .with_status(|s| (s.actual_pages, s.hinting))
            .unwrap_or_default();
        let mut state = Vec::with_capacity(STATE_LEN);
        state.extend_from_slice(&actual.to_le_bytes());
        state.extend_from_slice(&self.held_stats.unwrap_or(u16::MAX).to_le_bytes());
        state.extend_from_slice(&hinting.host_cmd.to_le_bytes());
        state.extend_from_slice(&hinting.guest_cmd.unwrap_or_default().to_le_bytes());
        state.push(u8::from(hinting.guest_cmd.is_some()));
        state.extend_from_slice(&hinting.last_run.to_le_bytes());
        state.push(u8::from(hinting.acknowledge_on_stop));
        state
    }

    fn restore_device(&mut self, state: &[u8]) -> Result<(), &'static str> {
        let state: &[u8; STATE_LEN] = state
            .try_into()
            .map_err(|_| "a balloon's state is 20 bytes")?;
        let u32_at = |at: usize| {
            u32::from_le_bytes([state[at], state[at + 1], state[at + 2], state[at + 3]])
        };
        let held = u16::from_le_bytes([state[4], state[5]]);
        let held = (held != u16::MAX).then_some(held);
        if held.is_some_and(|h| h >= QUEUE_SIZE) {
            return Err("the held statistics buffer is outside the queue");
        }
        let hinting = Hinting {
            host_cmd: u32_at(6),
            guest_cmd: (state[14] != 0).then(|| u32_at(10)),
            last_run: u32_at(15),
            acknowledge_on_stop: state[19] != 0,
        };
        self.held_stats = held;
        self.with_status(|s| {
            s.actual_pages = u32_at(0);
            s.hinting = hinting;
        });
        Ok(())
    }
}

/// Bytes of [`Balloon::save_device`]'s state.
const STATE_LEN: usize = 20;

#[cfg(test)]
mod tests {
    use virtio_queue::mock::MockSplitQueue;

    use super::*;
    use crate::devices::virtio::test_utils::{desc, used_lens, NEXT, WRITE};
    use virtio_queue::desc::RawDescriptor;

    fn balloon(stats: u16) -> Balloon {
        let (mut balloon, _) = Balloon::new(0, false, stats, false, true).unwrap();
        balloon.activate(balloon.features);
        balloon
    }

    /// Anonymous private guest memory, as ember maps it, with every page written.
    fn touched_memory(size: usize) -> GuestMemoryMmap {
        let mem = crate::devices::virtio::test_utils::guest_memory(size);
        for page in (0..size).step_by(4096) {
            let addr = GuestAddress(u64::try_from(page).unwrap());
            mem.write_obj(0xabu8, addr).unwrap();
        }
        mem
    }

    fn byte_at(mem: &GuestMemoryMmap, addr: u64) -> u8 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    #[test]
    fn inflated_pages_go_back_to_the_host_and_others_stay() {
        let mem = touched_memory(0x100000);
        // Pages 0x20-0x21 and 0x40, listed out of order, with a repeat.
        let pfns: [u32; 4] = [0x21, 0x40, 0x20, 0x21];
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(0x1000)).unwrap();
        let queue = MockSplitQueue::new(&mem, 16);
        queue.add_desc_chains(&[desc(0x1000, 16, 0, 0)], 0).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        let mut b = balloon(0);
        let activity = b.process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert!(activity.used);
        for page in [0x20u64, 0x21, 0x40] {
            assert_eq!(
                byte_at(&mem, page << PAGE_SHIFT),
                0,
                "page {page:#x} was discarded"
            );
        }
        assert_eq!(
            byte_at(&mem, 0x22 << PAGE_SHIFT),
            0xab,
            "its neighbour stays"
        );
        assert_eq!(byte_at(&mem, 0x1f << PAGE_SHIFT), 0xab);
    }

    #[test]
    fn hostile_page_lists_cost_a_bounded_amount() {
        let mem = touched_memory(0x100000);
        // Pages past the end of memory, a huge length and a write-only buffer.
        let bytes: Vec<u8> = [u32::MAX, 0x1_0000]
            .iter()
            .flat_map(|p| p.to_le_bytes())
            .collect();
        mem.write_slice(&bytes, GuestAddress(0x1000)).unwrap();
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(
                &[
                    desc(0x1000, 8, 0, 0),
                    desc(0xf_0000, u32::MAX, 0, 0),
                    desc(0x3000, 64, WRITE, 0),
                ],
                0,
            )
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        let mut b = balloon(0);
        b.process_queue(0, std::slice::from_mut(&mut q), &mem);
        assert_eq!(
            used_lens(&queue, 3),
            vec![0, 0, 0],
            "every buffer comes back"
        );
        assert!(b.pfns.capacity() <= PAGES_PER_WAKE_UP);
        assert!(b.pfn_bytes.capacity() <= 4 * PAGES_PER_WAKE_UP);
        for page in [0x80000, 0xf_f000] {
            assert_eq!(byte_at(&mem, page), 0xab, "nothing real was named");
        }
    }

    #[test]
    fn the_driver_writes_actual_and_reads_the_target() {
        let (mut b, handle) = Balloon::new(256, true, 0, false, false).unwrap();
        assert_ne!(b.features() & (1 << F_DEFLATE_ON_OOM), 0);
        assert_eq!(
            b.queue_max_sizes().len(),
            2,
            "no statistics queue without polling"
        );
        let mut config = [0u8; 4];
        b.read_config(0, &mut config);
        assert_eq!(u32::from_le_bytes(config), 256);
        b.write_config(CONFIG_ACTUAL, &200u32.to_le_bytes());
        b.write_config(0, &1u32.to_le_bytes());
        let status = handle.status.lock().unwrap().clone();
        assert_eq!((status.target_pages, status.actual_pages), (256, 200));
        let state = b.save_device();
        let (mut restored, handle) = Balloon::new(256, true, 0, false, false).unwrap();
        restored.restore_device(&state).unwrap();
        assert_eq!(handle.status.lock().unwrap().actual_pages, 200);
        assert!(restored.restore_device(&[1, 2, 3]).is_err());
        let mut bad_head = state.clone();
        bad_head[4..6].copy_from_slice(&QUEUE_SIZE.to_le_bytes());
        assert!(restored.restore_device(&bad_head).is_err());
    }

    #[test]
    fn statistics_are_read_and_the_buffer_held_until_the_timer() {
        let mem = touched_memory(0x100000);
        let mut stats = Vec::new();
        for (tag, value) in [(4u16, 1000u64), (5, 4096), (99, 7)] {
            stats.extend_from_slice(&tag.to_le_bytes());
            stats.extend_from_slice(&value.to_le_bytes());
        }
        mem.write_slice(&stats, GuestAddress(0x1000)).unwrap();
        let queue = MockSplitQueue::new(&mem, 16);
        queue.add_desc_chains(&[desc(0x1000, 30, 0, 0)], 0).unwrap();
        let mut q: Vec<Queue> = (0..4).map(|_| queue.create_queue().unwrap()).collect();
        let mut b = balloon(1);
        assert_eq!(
            b.roles,
            [Role::Inflate, Role::Deflate, Role::Stats, Role::Reporting]
        );
        let activity = b.process_queue(2, &mut q, &mem);
        assert!(!activity.used, "the buffer is held");
        let status = b.status.lock().unwrap().clone();
        assert_eq!(status.stats[4], Some(1000));
        assert_eq!(status.stats[5], Some(4096));
        assert_eq!(status.stats[0], None);
        let activity = b.process_backend(0, Some(&mut q), &mem);
        assert!(activity.used, "the timer gives the buffer back");
        assert_eq!(b.held_stats, None);
    }

    /// A hinting chain: the command id (device-readable), then free ranges.
    fn hint_chain(mem: &GuestMemoryMmap, cmd: u32, ranges: &[(u64, u32)]) -> Vec<RawDescriptor> {
        mem.write_obj(cmd, GuestAddress(0x1000)).unwrap();
        let mut descs = vec![desc(0x1000, 4, NEXT, 1)];
        for (i, &(addr, len)) in ranges.iter().enumerate() {
            let last = i + 1 == ranges.len();
            let flags = if last { WRITE } else { WRITE | NEXT };
            descs.push(desc(addr, len, flags, u16::try_from(i + 2).unwrap()));
        }
        descs
    }

    #[test]
    fn hinted_pages_go_back_during_a_run_and_its_stop_is_acknowledged() {
        let mem = touched_memory(0x100000);
        let (mut b, handle) = Balloon::new(0, false, 0, true, false).unwrap();
        b.activate(b.features);
        assert_eq!(b.roles, [Role::Inflate, Role::Deflate, Role::Hinting]);
        let cmd_in_config = |b: &Balloon| {
            let mut bytes = [0u8; 4];
            b.read_config(8, &mut bytes);
            u32::from_le_bytes(bytes)
        };
        assert_eq!(cmd_in_config(&b), HINT_STOP, "no run yet");
        handle.status.lock().unwrap().hinting.start(true);
        let run = cmd_in_config(&b);
        assert!(run > HINT_DONE, "a run has an id of its own: {run}");
        // A driver that resets (as a guest bringing its driver up late does)
        // finds the run's command still there.
        b.reset();
        b.activate(b.features);
        assert_eq!(cmd_in_config(&b), run);

        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(&hint_chain(&mem, run - 1, &[(0x20000, 0x1000)]), 0)
            .unwrap();
        let mut q: Vec<Queue> = (0..3).map(|_| queue.create_queue().unwrap()).collect();
        b.process_queue(2, &mut q, &mem);
        assert_eq!(
            byte_at(&mem, 0x20000),
            0xab,
            "a stale run's hint is ignored"
        );

        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(&hint_chain(&mem, run, &[(0x40000, 0x2000)]), 0)
            .unwrap();
        let mut q: Vec<Queue> = (0..3).map(|_| queue.create_queue().unwrap()).collect();
        b.process_queue(2, &mut q, &mem);
        assert_eq!(byte_at(&mem, 0x40000), 0);
        assert_eq!(byte_at(&mem, 0x41000), 0);
        assert_eq!(byte_at(&mem, 0x42000), 0xab);
        assert!(!b.take_config_change());

        let queue = MockSplitQueue::new(&mem, 16);
        queue.add_desc_chains(&[desc(0x1000, 4, 0, 0)], 0).unwrap();
        mem.write_obj(HINT_STOP, GuestAddress(0x1000)).unwrap();
        let mut q: Vec<Queue> = (0..3).map(|_| queue.create_queue().unwrap()).collect();
        b.process_queue(2, &mut q, &mem);
        let hinting = handle.status.lock().unwrap().hinting;
        assert_eq!(
            (hinting.host_cmd, hinting.guest_cmd),
            (HINT_DONE, Some(HINT_STOP))
        );
        assert!(
            b.take_config_change(),
            "the guest hears that the run is done"
        );

        let state = b.save_device();
        let (mut restored, restored_handle) = Balloon::new(0, false, 0, true, false).unwrap();
        restored.restore_device(&state).unwrap();
        assert_eq!(restored_handle.status.lock().unwrap().hinting, hinting);
        restored_handle.status.lock().unwrap().hinting.start(true);
        assert_eq!(
            cmd_in_config(&restored),
            run + 1,
            "run ids go on after a restore"
        );
    }

    #[test]
    fn reports_stop_at_the_wake_ups_budget() {
        let mem = touched_memory(0x100000);
        let queue = MockSplitQueue::new(&mem, 16);
        let chain = queue
            .build_desc_chain(&[desc(0x40000, 0x2000, WRITE, 0)])
            .unwrap();
        let mut b = balloon(1);
        let mut pages = PAGES_PER_WAKE_UP - 1;
        b.report(&mem, chain, &mut pages);
        assert_eq!(pages, PAGES_PER_WAKE_UP);
        assert_eq!(byte_at(&mem, 0x40000), 0, "the page the budget had left");
        assert_eq!(byte_at(&mem, 0x41000), 0xab, "past the budget");
    }

    #[test]
    fn reported_free_pages_go_back_to_the_host() {
        let mem = touched_memory(0x100000);
        let queue = MockSplitQueue::new(&mem, 16);
        queue
            .add_desc_chains(&[desc(0x40000, 0x2000, WRITE, 0)], 0)
            .unwrap();
        let mut q: Vec<Queue> = (0..4).map(|_| queue.create_queue().unwrap()).collect();
        let mut b = balloon(1);
        b.process_queue(3, &mut q, &mem);
        assert_eq!(byte_at(&mem, 0x40000), 0);
        assert_eq!(byte_at(&mem, 0x41000), 0);
        assert_eq!(byte_at(&mem, 0x42000), 0xab);
    }
}
