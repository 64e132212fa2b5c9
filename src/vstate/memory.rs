//! Guest memory: lazily populated mappings laid out around the MMIO gap,
//! anonymous for a fresh boot and private file mappings for a restore, or
//! 2 MiB huge pages (hugetlb) for either when the machine asks for them.
//!
//! Every region carries a dirty-page bitmap that vm-memory sets on each write
//! ember's devices make, so a diff snapshot also holds the pages KVM's own
//! dirty log cannot see.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use ember_proto::uffd::{Region, RegionsJson};
use userfaultfd::{FeatureFlags, Uffd, UffdBuilder};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::arch::x86_64::layout::ram_ranges;

/// Guest memory with dirty-page tracking of the VMM's own writes.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;
type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

pub const PAGE_SIZE: usize = 4096;
const PAGE: NonZeroUsize = match NonZeroUsize::new(PAGE_SIZE) {
    Some(page) => page,
    None => unreachable!(),
};

/// The pages guest RAM is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// The host's 4 KiB pages, populated as the guest touches them.
    Small,
    /// 2 MiB huge pages from the host's hugetlb pool, reserved at once.
    Huge,
}

impl Pages {
    pub fn size(self) -> usize {
        match self {
            Pages::Small => PAGE_SIZE,
            Pages::Huge => HUGE_PAGE_SIZE,
        }
    }

    /// The flags of an anonymous mapping of these pages. Huge pages are
    /// reserved when mapped (no MAP_NORESERVE), so a host without enough of
    /// them fails here instead of at a guest's page fault.
    fn anonymous_flags(self) -> i32 {
        let private = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        match self {
            Pages::Small => private | libc::MAP_NORESERVE,
            Pages::Huge => private | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
        }
    }
}

pub const HUGE_PAGE_SIZE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The host's hugetlb pool has too few free 2 MiB pages.
    #[error(
        "the host has fewer free 2 MiB huge pages than {size_mib} MiB of guest memory need: \
         reserve more in /proc/sys/vm/nr_hugepages"
    )]
    NoHugePages { size_mib: u64 },
    /// Reading a memory file into huge pages failed.
    #[error("cannot read the memory file into guest memory: {0}")]
    Fill(std::io::Error),
    /// A memory file region cannot be mapped.
    #[error("cannot map guest memory at {start:#x}: {source}")]
    Region { start: u64, source: MmapRegionError },
    /// vm-memory refused the region layout: a layout bug.
    #[error("guest memory regions overlap or are empty")]
    Layout,
    /// A memory size whose byte count overflows the host's address space.
    #[error("{size_mib} MiB of guest memory do not fit in the host's address space")]
    TooLarge { size_mib: u64 },
    /// The userfaultfd cannot be created or a region registered.
    #[error("cannot create a userfaultfd: {0}")]
    Uffd(userfaultfd::Error),
    /// The page-fault handler cannot be reached or refused the handshake.
    #[error("cannot reach the page-fault handler at '{path}': {source}")]
    Handler {
        path: String,
        source: std::io::Error,
    },
}

/// Maps `size_mib` MiB of anonymous guest RAM of `pages`. Pages are only
/// touched when the guest (or a loader) first uses them, so the cost does not
/// grow with the size.
pub fn create(size_mib: u64, pages: Pages) -> Result<GuestMemoryMmap, Error> {
    let regions = ram_ranges(size_mib << 20)
        .into_iter()
        .map(|(start, len)| {
            let len = host_len(size_mib, len)?;
            let mapping = MmapRegionBuilder::new_with_bitmap(len, bitmap(len))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(pages.anonymous_flags())
                .build()
                .map_err(|source| match source {
                    MmapRegionError::Mmap(e)
                        if pages == Pages::Huge && e.raw_os_error() == Some(libc::ENOMEM) =>
                    {
                        Error::NoHugePages { size_mib }
                    }
                    source => Error::Region { start, source },
                })?;
            GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(Error::Layout)
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|_| Error::Layout)
}

/// Huge-page guest RAM holding `file`'s contents, region `i` read from
/// `offsets[i]`: a private mapping of a file cannot be of huge pages, so
/// the file's data (not its holes, which are zeros) is read in at once.
pub fn huge_from_file(
    file: &File,
    size_mib: u64,
    offsets: &[u64],
) -> Result<GuestMemoryMmap, Error> {
    let mem = create(size_mib, Pages::Huge)?;
    let mut reader = file;
    for (region, &offset) in mem.iter().zip(offsets) {
        let len = region.len();
        for (start, end) in data_ranges(file, offset, offset.saturating_add(len))? {
            let at = region.start_addr().unchecked_add(start - offset);
            let count = usize::try_from(end - start).map_err(|_| Error::TooLarge { size_mib })?;
            reader
                .seek(SeekFrom::Start(start))
                .and_then(|_| {
                    mem.read_exact_volatile_from(at, &mut reader, count)
                        .map_err(std::io::Error::other)
                })
                .map_err(Error::Fill)?;
        }
    }
    // Loading is not the VMM writing guest memory: no diff snapshot needs it.
    take_vmm_dirty(&mem);
    Ok(mem)
}

/// The ranges of `start..end` in `file` that hold data, as SEEK_DATA and
/// SEEK_HOLE find them; a file system without holes reports one range.
fn data_ranges(file: &File, start: u64, end: u64) -> Result<Vec<(u64, u64)>, Error> {
    let seek = |from: u64, whence| -> Result<Option<u64>, Error> {
        let from =
            libc::off_t::try_from(from).map_err(|_| Error::Fill(ErrorKind::InvalidInput.into()))?;
        // SAFETY: lseek on an fd this function borrows; no memory is passed.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from, whence) };
        if at >= 0 {
            return Ok(u64::try_from(at).ok());
        }
        match std::io::Error::last_os_error() {
            // No data after `from`.
            e if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
            e => Err(Error::Fill(e)),
        }
    };
    let mut ranges = Vec::new();
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)?.filter(|&d| d < end) else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        ranges.push((data, hole));
        at = hole;
    }
    Ok(ranges)
}

/// Maps guest RAM privately from `file`, region `i` at `offsets[i]`: clones of
/// one snapshot share its page cache and copy a page only when they write it.
pub fn from_file(file: &File, size_mib: u64, offsets: &[u64]) -> Result<GuestMemoryMmap, Error> {
    let regions = ram_ranges(size_mib << 20)
        .into_iter()
        .zip(offsets)
        .map(|((start, len), &offset)| {
            let len = host_len(size_mib, len)?;
            let file = file.try_clone().map_err(|e| Error::Region {
                start,
                source: MmapRegionError::Mmap(e),
            })?;
            let mapping = MmapRegionBuilder::new_with_bitmap(len, bitmap(len))
                .with_file_offset(FileOffset::new(file, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|source| Error::Region { start, source })?;
            GuestRegionMmap::new(mapping, GuestAddress(start)).ok_or(Error::Layout)
        })
        .collect::<Result<Vec<_>, _>>()?;
    GuestMemoryMmap::from_regions(regions).map_err(|_| Error::Layout)
}

/// The length of a region of `size_mib` MiB of guest memory, as a host mapping's.
fn host_len(size_mib: u64, len: u64) -> Result<usize, Error> {
    usize::try_from(len).map_err(|_| Error::TooLarge { size_mib })
}

fn bitmap(len: usize) -> AtomicBitmap {
    AtomicBitmap::new(len, PAGE)
}

/// Per region, the pages ember's devices wrote since the last call (one bit
/// per page, KVM's dirty-log layout); reading clears them.
pub fn take_vmm_dirty(mem: &GuestMemoryMmap) -> Vec<Vec<u64>> {
    mem.iter()
        .map(|region| std::ops::Deref::deref(region).bitmap().get_and_reset())
        .collect()
}

/// Marks the pages of `bitmaps` (one per region, as [`take_vmm_dirty`]
/// returns them) dirty again, for a snapshot that could not be written.
pub fn mark_dirty(mem: &GuestMemoryMmap, bitmaps: &[Vec<u64>]) {
    for (region, bitmap) in mem.iter().zip(bitmaps) {
        let dirty = std::ops::Deref::deref(region).bitmap();
        for (word_index, &word) in bitmap.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = word_index * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                dirty.set_addr_range(page * PAGE_SIZE, PAGE_SIZE);
            }
        }
    }
}

/// What keeps userfaultfd-served memory alive: the uffd itself (so if the
/// handler dies the guest stalls rather than reading zeros) and the socket to
/// the handler, whose closing tells it this VM is gone.
pub struct MemoryBackend {
    _uffd: Uffd,
    _handler: UnixStream,
}

/// One report of ember's own handler on the handshake socket: faults served
/// and pages prefetched so far, two little-endian `u64`s. (Firecracker's
/// handlers send nothing, and then there is nothing to read.)
const REPORT_LEN: usize = 16;
/// Bytes read per refresh at most: a handler that reports faster than
/// metrics are read costs ember a bounded read, and the newest report wins.
const REPORTS_READ: usize = 64 * REPORT_LEN;

/// Reads the handler's newest report (nonblocking) into ember's metrics.
fn read_reports(handler: &UnixStream, metrics: &crate::metrics::Metrics) {
    let mut buf = [0u8; REPORTS_READ];
    let mut newest = None;
    // Each report is one 16-byte write, and a read of a multiple of 16 bytes
    // takes whole ones; a full read means more may wait.
    while let Ok(len) = (&*handler).read(&mut buf) {
        if let Some(report) = buf[..len].chunks_exact(REPORT_LEN).last() {
            newest = Some(<[u8; REPORT_LEN]>::try_from(report).unwrap_or([0; REPORT_LEN]));
        }
        if len < buf.len() {
            break;
        }
    }
    if let Some(report) = newest {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&report[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        metrics.ember.page_faults_served.set(word(0));
        metrics.ember.pages_prefetched.set(word(8));
    }
}

/// Hands `mem`'s page faults to the handler listening at `socket`, as
/// Firecracker does: a userfaultfd registered over every region, sent with a
/// JSON list of where each region lives in the memory file (`offsets`).
pub fn serve_with_uffd(
    mem: &GuestMemoryMmap,
    pages: Pages,
    offsets: &[u64],
    socket: &Path,
) -> Result<MemoryBackend, Error> {
    let uffd = UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(false)
        .require_features(FeatureFlags::EVENT_REMOVE)
        .create()
        .map_err(Error::Uffd)?;
    let mut regions = Vec::with_capacity(offsets.len());
    for ((host, len), &offset) in host_ranges(mem).into_iter().zip(offsets) {
        uffd.register(host.cast(), len).map_err(Error::Uffd)?;
        regions.push(Region {
            base_host_virt_addr: host as u64,
            size: len as u64,
            offset,
            page_size: pages.size() as u64,
        });
    }
    let handler_err = |source| Error::Handler {
        path: socket.display().to_string(),
        source,
    };
    let handler = UnixStream::connect(socket).map_err(handler_err)?;
    let body = RegionsJson(&regions).to_string();
    handler
        .send_with_fd(body.as_bytes(), uffd.as_raw_fd())
        .map_err(|e| handler_err(std::io::Error::from_raw_os_error(e.errno())))?;
    // ember's own handler reports what it served on the same socket.
    handler.set_nonblocking(true).map_err(handler_err)?;
    let reports = handler.try_clone().map_err(handler_err)?;
    crate::metrics::METRICS.on_refresh(Box::new(move |metrics| read_reports(&reports, metrics)));
    Ok(MemoryBackend {
        _uffd: uffd,
        _handler: handler,
    })
}

/// Each region's host mapping, as `(host address, length)`.
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(*mut u8, usize)> {
    mem.iter()
        .map(|r| {
            let host = mem
                .get_host_address(r.start_addr())
                .unwrap_or(std::ptr::null_mut());
            (host, std::ops::Deref::deref(r).size())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use vm_memory::{Bytes, GuestMemoryRegion};

    use super::*;

    #[test]
    fn memory_has_the_requested_size_around_the_gap() {
        let mem = create(128, Pages::Small).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 128 << 20);
    }

    #[test]
    fn file_backed_memory_reads_the_file_and_never_writes_it() {
        let dir = vmm_sys_util::tempdir::TempDir::new().expect("a temporary directory");
        let path = dir.as_path().join("memory");
        let mut file = File::create(&path).unwrap();
        file.write_all(&vec![7u8; 2 << 20]).unwrap();
        let file = File::open(&path).unwrap();
        let mem = from_file(&file, 2, &[0]).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1234)).unwrap(), 7);
        mem.write_obj(9u8, GuestAddress(0x1234)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1234)).unwrap(), 9);
        assert_eq!(std::fs::read(&path).unwrap()[0x1234], 7, "private mapping");
        let dirty = take_vmm_dirty(&mem);
        assert_eq!(
            dirty[0][0],
            1 << 1,
            "the VMM's write is in the dirty bitmap"
        );
        assert_eq!(take_vmm_dirty(&mem)[0][0], 0, "reading clears it");
        mark_dirty(&mem, &dirty);
        assert_eq!(take_vmm_dirty(&mem), dirty, "marked again");
    }
}
