//! virtio-blk backed by a host file: read, write, flush and `GET_ID`.

pub mod request;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::vstate::memory::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use self::request::{Request, RequestType, ID_BYTES, SECTOR_SIZE};
use super::{narrow, read_config_space, Activity, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::devices::rate_limiter::SharedRateLimiter;
use crate::metrics::BlockMetrics;

pub const VIRTIO_ID_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;
/// Request statuses, as the byte the device writes.
const STATUS_OK: u8 = narrow::to_u8(VIRTIO_BLK_S_OK);
const STATUS_IOERR: u8 = narrow::to_u8(VIRTIO_BLK_S_IOERR);
const STATUS_UNSUPP: u8 = narrow::to_u8(VIRTIO_BLK_S_UNSUPP);
/// Requests served per wake-up: a guest that refills its ring as fast as
/// ember empties it still lets the event loop serve everything else.
const WORK_BUDGET: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A drive file that cannot be opened with the access the drive asks for.
    #[error("cannot open drive file '{path}': {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

/// How the guest's flushes reach the disk, as Firecracker's `cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheType {
    /// Flush requests are acknowledged without syncing (and FLUSH is not offered).
    Unsafe,
    /// FLUSH is offered and each flush syncs the file.
    Writeback,
}

/// The host file behind a drive. Shared with the VMM so a running drive can
/// be pointed at another file.
pub struct Disk {
    file: File,
    sectors: u64,
    id: [u8; ID_BYTES],
    read_only: bool,
}

impl Disk {
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let open_err = |source| Error::Open {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        // Firecracker's id: device, rdev and inode of the file, so it is stable
        // for one file and different for two.
        let text = format!("{}{}{}", meta.dev(), meta.rdev(), meta.ino());
        let mut id = [0u8; ID_BYTES];
        let len = text.len().min(ID_BYTES);
        id[..len].copy_from_slice(&text.as_bytes()[..len]);
        Ok(Disk {
            file,
            sectors: meta.len() / SECTOR_SIZE,
            id,
            read_only,
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }
}

pub struct Block {
    disk: Arc<Mutex<Disk>>,
    limiter: SharedRateLimiter,
    metrics: Arc<BlockMetrics>,
    features: u64,
    cache: CacheType,
    queue_sizes: [u16; 1],
}

impl Block {
    pub fn new(
        disk: Arc<Mutex<Disk>>,
        limiter: SharedRateLimiter,
        metrics: Arc<BlockMetrics>,
        read_only: bool,
        cache: CacheType,
    ) -> Self {
        let mut features = 1u64 << VIRTIO_F_VERSION_1;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if cache == CacheType::Writeback {
            features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        Block {
            disk,
            limiter,
            metrics,
            features,
            cache,
            queue_sizes: [QUEUE_SIZE],
        }
    }

    /// Counts a request that was carried out with `status`.
    fn count(&self, req: &Request, status: u8) {
        let metrics = &self.metrics;
        match (req.kind, status) {
            (_, STATUS_IOERR) => metrics.execute_fails.inc(),
            (RequestType::In, STATUS_OK) => {
                metrics.read_count.inc();
                metrics.read_bytes.add(req.data_len());
            }
            (RequestType::Out, STATUS_OK) => {
                metrics.write_count.inc();
                metrics.write_bytes.add(req.data_len());
            }
            (RequestType::Flush, STATUS_OK) => metrics.flush_count.inc(),
            _ => {}
        }
    }

    /// Carries out one request; returns its status and the bytes written to the guest.
    fn execute(&self, disk: &mut Disk, req: &Request, mem: &GuestMemoryMmap) -> (u8, u32) {
        let ok = STATUS_OK;
        let ioerr = (STATUS_IOERR, 0);
        match req.kind {
            RequestType::In | RequestType::Out => {
                let sectors = req.data_len() / SECTOR_SIZE;
                let in_range = req
                    .sector
                    .checked_add(sectors)
                    .is_some_and(|end| end <= disk.sectors);
                if !in_range || (req.kind == RequestType::Out && disk.read_only) {
                    return ioerr;
                }
                if disk
                    .file
                    .seek(SeekFrom::Start(req.sector * SECTOR_SIZE))
                    .is_err()
                {
                    return ioerr;
                }
                let moved = req.data.iter().try_for_each(|&(addr, len)| match req.kind {
                    RequestType::In => {
                        mem.read_exact_volatile_from(addr, &mut disk.file, len as usize)
                    }
                    _ => mem.write_all_volatile_to(addr, &mut disk.file, len as usize),
                });
                match (moved, req.kind) {
                    (Err(e), _) => {
                        log::warn!("virtio-blk: I/O error: {e}");
                        ioerr
                    }
                    // The used ring counts the bytes read in a u32.
                    (Ok(()), RequestType::In) => {
                        u32::try_from(req.data_len()).map_or(ioerr, |len| (ok, len))
                    }
                    (Ok(()), _) => (ok, 0),
                }
            }
            RequestType::Flush => {
                if self.cache == CacheType::Writeback && disk.file.sync_all().is_err() {
                    return ioerr;
                }
                (ok, 0)
            }
            RequestType::GetId => {
                let Some(&(addr, len)) = req.data.first() else {
                    return ioerr;
                };
                let n = (len as usize).min(ID_BYTES);
                match mem.write_slice(&disk.id[..n], addr) {
                    Ok(()) => u32::try_from(n).map_or(ioerr, |n| (ok, n)),
                    Err(_) => ioerr,
                }
            }
            RequestType::Unsupported(_) => (STATUS_UNSUPP, 0),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // The configuration space is the capacity in sectors; the rest reads as zero.
        let capacity = self
            .disk
            .lock()
            .map(|d| d.sectors)
            .unwrap_or(0)
            .to_le_bytes();
        read_config_space(&capacity, offset, data);
    }

    fn process_queue(
        &mut self,
        _index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Activity {
        let (Some(queue), Ok(mut disk), Ok(mut limiter)) =
            (queues.first_mut(), self.disk.lock(), self.limiter.lock())
        else {
            return Activity::default();
        };
        self.metrics.queue_event_count.inc();
        let mut activity = Activity::default();
        for _ in 0..WORK_BUDGET {
            if limiter.is_waiting() {
                // The limiter's timer brings the device back.
                return activity;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return activity;
            };
            let head = chain.head_index();
            let (status_addr, status, len) = match request::parse(mem, chain) {
                Ok(req) => {
                    if !limiter.consume(req.limited_bytes()) {
                        // The request waits in the ring for its tokens.
                        self.metrics.rate_limiter_throttled_events.inc();
                        queue.go_to_previous_position();
                        return activity;
                    }
                    let (status, len) = self.execute(&mut disk, &req, mem);
                    self.count(&req, status);
                    (Some(req.status), status, len)
                }
                Err(e) => {
                    self.metrics.invalid_reqs_count.inc();
                    log::debug!("virtio-blk: malformed request: {}", e.error);
                    (e.status, STATUS_IOERR, 0)
                }
            };
            // The used length counts the status byte when there was one to write.
            let written = match status_addr {
                Some(addr) if mem.write_obj(status, addr).is_ok() => len + 1,
                _ => len,
            };
            if queue.add_used(mem, head, written).is_err() {
                log::warn!("virtio-blk: cannot add to the used ring");
                return activity;
            }
            activity.used = true;
        }
        activity.rerun = Some(0);
        activity
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.limiter
            .lock()
            .map(|l| vec![l.timer_fd()])
            .unwrap_or_default()
    }

    /// The rate limiter's timer: requests it held back may go now.
    fn process_backend(
        &mut self,
        _index: usize,
        queues: Option<&mut [Queue]>,
        mem: &GuestMemoryMmap,
    ) -> Activity {
        if let Ok(mut limiter) = self.limiter.lock() {
            limiter.on_timer();
        }
        self.metrics.rate_limiter_event_count.inc();
        queues.map_or_else(Activity::default, |q| self.process_queue(0, q, mem))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{ByteValued, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    use super::*;
    use crate::config::{RateLimiterConfig, TokenBucketConfig};
    use crate::devices::rate_limiter::RateLimiter;
    use crate::devices::virtio::test_utils::{desc, guest_memory, NEXT, WRITE};

    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Header {
        kind: u32,
        reserved: u32,
        sector: u64,
    }
    // SAFETY: plain old data without padding.
    unsafe impl ByteValued for Header {}

    struct Fixture {
        _dir: TempDir,
        path: std::path::PathBuf,
        block: Block,
        mem: GuestMemoryMmap,
    }

    fn fixture(read_only: bool) -> Fixture {
        limited_fixture(read_only, None)
    }

    fn limited_fixture(read_only: bool, limits: Option<&RateLimiterConfig>) -> Fixture {
        let dir = TempDir::new().expect("a temporary directory");
        let path = dir.as_path().join("disk.img");
        let mut f = File::create(&path).unwrap();
        let mut content = vec![0u8; 4096];
        content[..6].copy_from_slice(b"sector");
        f.write_all(&content).unwrap();
        let disk = Arc::new(Mutex::new(Disk::open(&path, read_only).unwrap()));
        Fixture {
            _dir: dir,
            path,
            block: Block::new(
                disk,
                RateLimiter::shared(limits).unwrap(),
                Arc::default(),
                read_only,
                CacheType::Writeback,
            ),
            mem: guest_memory(0x10000),
        }
    }

    /// Submits one request and returns (status byte, used length).
    fn submit(
        fx: &mut Fixture,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_writable: bool,
    ) -> (u8, u32) {
        fx.mem
            .write_obj(
                Header {
                    kind,
                    reserved: 0,
                    sector,
                },
                GuestAddress(0x1000),
            )
            .unwrap();
        fx.mem.write_obj(0xffu8, GuestAddress(0x3000)).unwrap();
        let queue = MockSplitQueue::new(&fx.mem, 16);
        let mut descs = vec![desc(0x1000, 16, 0, 0)];
        if data_len > 0 {
            let flags = if data_writable { WRITE } else { 0 };
            descs.push(desc(0x2000, data_len, flags, 0));
        }
        descs.push(desc(0x3000, 1, WRITE, 0));
        queue.build_desc_chain(&descs).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        assert!(
            fx.block
                .process_queue(0, std::slice::from_mut(&mut q), &fx.mem)
                .used
        );
        let used = queue.used().ring().ref_at(0).unwrap().load();
        (fx.mem.read_obj(GuestAddress(0x3000)).unwrap(), used.len())
    }

    #[test]
    fn reads_and_writes_reach_the_file() {
        let mut fx = fixture(false);
        assert_eq!(submit(&mut fx, VIRTIO_BLK_T_IN, 0, 512, true), (0, 513));
        let mut got = [0u8; 6];
        fx.mem.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got, b"sector");

        fx.mem
            .write_slice(b"written", GuestAddress(0x2000))
            .unwrap();
        assert_eq!(submit(&mut fx, VIRTIO_BLK_T_OUT, 2, 512, false).0, 0);
        let mut file = Vec::new();
        File::open(&fx.path)
            .unwrap()
            .read_to_end(&mut file)
            .unwrap();
        assert_eq!(&file[1024..1031], b"written");
    }

    #[test]
    fn read_only_drive_refuses_writes_and_keeps_the_file() {
        let mut fx = fixture(true);
        assert_ne!(fx.block.features() & (1 << VIRTIO_BLK_F_RO), 0);
        fx.mem.write_slice(b"evil", GuestAddress(0x2000)).unwrap();
        assert_eq!(
            submit(&mut fx, VIRTIO_BLK_T_OUT, 0, 512, false).0,
            STATUS_IOERR
        );
        let mut file = Vec::new();
        File::open(&fx.path)
            .unwrap()
            .read_to_end(&mut file)
            .unwrap();
        assert_eq!(&file[..6], b"sector");
    }

    #[test]
    fn out_of_range_and_unknown_requests_get_error_statuses() {
        let mut fx = fixture(false);
        assert_eq!(
            submit(&mut fx, VIRTIO_BLK_T_IN, 8, 512, true).0,
            STATUS_IOERR
        );
        assert_eq!(
            submit(&mut fx, VIRTIO_BLK_T_IN, u64::MAX, 512, true).0,
            STATUS_IOERR
        );
        assert_eq!(submit(&mut fx, 77, 0, 0, false).0, STATUS_UNSUPP);
        // A malformed chain (wrong direction) still gets a status.
        assert_eq!(
            submit(&mut fx, VIRTIO_BLK_T_IN, 0, 512, false).0,
            STATUS_IOERR
        );
    }

    #[test]
    fn get_id_returns_the_files_identity() {
        let mut fx = fixture(false);
        assert_eq!(submit(&mut fx, VIRTIO_BLK_T_GET_ID, 0, 20, true).0, 0);
        let meta = std::fs::metadata(&fx.path).unwrap();
        let expected = format!("{}{}{}", meta.dev(), meta.rdev(), meta.ino());
        let mut id = [0u8; 20];
        fx.mem.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        let n = expected.len().min(20);
        assert_eq!(&id[..n], &expected.as_bytes()[..n]);
    }

    #[test]
    fn capacity_is_in_the_config_space() {
        let fx = fixture(false);
        let mut cap = [0u8; 8];
        fx.block.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
    }

    #[test]
    fn a_full_ring_is_served_a_budget_at_a_time() {
        let mut fx = fixture(false);
        let queue = MockSplitQueue::new(&fx.mem, QUEUE_SIZE);
        fx.mem
            .write_obj(
                Header {
                    kind: VIRTIO_BLK_T_FLUSH,
                    reserved: 0,
                    sector: 0,
                },
                GuestAddress(0x8000),
            )
            .unwrap();
        // Flushes of a header and a status byte each: a ring's worth.
        let descs: Vec<RawDescriptor> = (0..QUEUE_SIZE / 2)
            .flat_map(|i| {
                [
                    desc(0x8000, 16, NEXT, 2 * i + 1),
                    desc(0x9000 + u64::from(i), 1, WRITE, 0),
                ]
            })
            .collect();
        queue.add_desc_chains(&descs, 0).unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        let queues = std::slice::from_mut(&mut q);
        let mut served = Vec::new();
        loop {
            let before = queue.used().idx().load();
            let activity = fx.block.process_queue(0, queues, &fx.mem);
            served.push(queue.used().idx().load() - before);
            if activity.rerun.is_none() {
                break;
            }
            assert_eq!(activity.rerun, Some(0), "the same queue comes back");
        }
        assert_eq!(served, vec![64, 64, 0]);
    }

    #[test]
    fn a_rate_limited_request_waits_in_the_ring_for_the_timer() {
        // One read of 512 bytes per minute.
        let limits = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 512,
                one_time_burst: None,
                refill_time: 60_000,
            }),
            ops: None,
        };
        let mut fx = limited_fixture(false, Some(&limits));
        assert_eq!(submit(&mut fx, VIRTIO_BLK_T_IN, 0, 512, true), (0, 513));
        let queue = MockSplitQueue::new(&fx.mem, 16);
        queue
            .build_desc_chain(&[
                desc(0x1000, 16, 0, 0),
                desc(0x2000, 512, WRITE, 0),
                desc(0x3000, 1, WRITE, 0),
            ])
            .unwrap();
        let mut q: Queue = queue.create_queue().unwrap();
        let queues = std::slice::from_mut(&mut q);
        let activity = fx.block.process_queue(0, queues, &fx.mem);
        assert_eq!(activity, Activity::default());
        assert_eq!(queue.used().idx().load(), 0);
        assert_eq!(queues[0].next_avail(), 0, "the request is left in the ring");
        // Lifting the limit fires the timer; the device then serves it.
        fx.block.limiter.lock().unwrap().update(&RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 0,
                one_time_burst: None,
                refill_time: 0,
            }),
            ops: None,
        });
        let timer = fx.block.backend_fds()[0];
        let mut pollfd = libc::pollfd {
            fd: timer,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        assert_eq!(unsafe { libc::poll(&mut pollfd, 1, 1000) }, 1);
        assert!(fx.block.process_backend(0, Some(queues), &fx.mem).used);
        assert_eq!(queue.used().idx().load(), 1);
    }
}
