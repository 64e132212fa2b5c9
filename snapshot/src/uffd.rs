//! A page-fault handler that serves the memory of restored microVMs from one
//! memory file, over userfaultfd.
//!
//! It speaks Firecracker's handshake: each VM connects to the handler's Unix
//! socket and sends its userfaultfd (SCM_RIGHTS) with a JSON list of its
//! guest memory regions. Each VM then gets a thread that copies pages in:
//!
//! - on demand, the faulting page only;
//! - with a working set, first the pages an earlier restore touched, in one
//!   batch of contiguous runs, then on demand for the rest.
//!
//! The handler learns a working set by recording which pages the first VM it
//! serves faults in, from restore until that VM goes away: run it for the
//! invocations that matter (typically one) and stop it.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use userfaultfd::{Event, Uffd};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const PAGE: u64 = 4096;
/// The huge page size a region may have besides [`PAGE`].
const HUGE_PAGE: u64 = 2 << 20;
/// How often a VM hears of the faults served, at most.
const REPORT_EVERY: Duration = Duration::from_millis(10);
/// What a zero-filled huge page is copied from (one [`HUGE_PAGE`]): hugetlb
/// memory has no UFFDIO_ZEROPAGE.
static ZEROS: [u8; 2 << 20] = [0; 2 << 20];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or mapping the memory file or the working set, or a socket operation.
    #[error("cannot {what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A VM whose handshake is not the regions JSON with a userfaultfd, or whose regions do not fit.
    #[error("the VM's handshake is malformed: {0}")]
    Handshake(String),
    /// A working-set file line that is not two page numbers.
    #[error("working set '{path}' line {line}: expected '<offset> <length>' in pages")]
    WorkingSet { path: PathBuf, line: usize },
    /// A handler thread panicked while holding the shared working sets.
    #[error("the shared working-set lock is poisoned")]
    Poisoned,
}

pub use ember_proto::uffd::Region;

/// How serde reads `ember_proto`'s `Region` (the protocol crate has no
/// dependencies); the compiler checks the fields against it.
#[derive(Deserialize)]
#[serde(remote = "Region")]
struct RegionDef {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    /// Handshakes that name no page size are of 4 KiB pages.
    #[serde(default = "small_pages")]
    page_size: u64,
}

fn small_pages() -> u64 {
    4096
}

/// One element of the handshake's region list.
#[derive(Deserialize)]
struct RegionIn(#[serde(with = "RegionDef")] Region);

/// The memory file, mapped read-only once and shared by every VM's thread.
pub struct MemoryFile {
    base: *const u8,
    len: u64,
}

// SAFETY: the mapping is read-only and lives until the handler exits; threads
// only read from it.
unsafe impl Send for MemoryFile {}
// SAFETY: as above: shared read-only access.
unsafe impl Sync for MemoryFile {}

impl MemoryFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let io_err = |what| {
            move |source| Error::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let file = File::open(path).map_err(io_err("open"))?;
        let len = file.metadata().map_err(io_err("read"))?.len();
        let size = usize::try_from(len)
            .map_err(|_| io_err("map")(std::io::ErrorKind::FileTooLarge.into()))?;
        if len == 0 {
            return Ok(MemoryFile {
                base: std::ptr::null(),
                len,
            });
        }
        // SAFETY: a fresh read-only private mapping of a file we opened; the
        // result is checked before use and never unmapped.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io_err("map")(std::io::Error::last_os_error()));
        }
        Ok(MemoryFile {
            base: base.cast(),
            len,
        })
    }

    /// The file's bytes at `offset..offset + len`, if the file has them.
    fn at(&self, offset: u64, len: u64) -> Option<*const u8> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // Below the mapping's length, itself a `usize`.
        let offset = usize::try_from(offset).ok()?;
        // SAFETY: in bounds of the mapping, checked just above.
        Some(unsafe { self.base.add(offset) })
    }
}

/// `len` bytes at host `addr` as the length a uffd call takes; `None`, after
/// saying so, when this host cannot address that much.
fn host_len(addr: u64, len: u64) -> Option<usize> {
    let host = usize::try_from(len).ok();
    if host.is_none() {
        eprintln!("ember-snapshot: serving {addr:#x}: {len} bytes is more than this host can map");
    }
    host
}

/// Runs of pages, as `(first page, page count)` in memory-file pages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    pub runs: Vec<(u64, u64)>,
}

impl WorkingSet {
    /// The set of `pages` (file page numbers), as runs.
    pub fn from_pages(pages: &BTreeSet<u64>) -> Self {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &page in pages {
            match runs.last_mut() {
                Some((start, count)) if *start + *count == page => *count += 1,
                _ => runs.push((page, 1)),
            }
        }
        WorkingSet { runs }
    }

    pub fn pages(&self) -> u64 {
        self.runs
            .iter()
            .fold(0, |total: u64, &(_, count)| total.saturating_add(count))
    }

    /// Reads a working set file: one `<first page> <count>` run per line.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let runs = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, line)| {
                let mut fields = line.split_whitespace().map(str::parse::<u64>);
                match (fields.next(), fields.next(), fields.next()) {
                    (Some(Ok(start)), Some(Ok(count)), None) => Ok((start, count)),
                    _ => Err(Error::WorkingSet {
                        path: path.to_path_buf(),
                        line: i + 1,
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(WorkingSet { runs })
    }

    /// Writes the set aside (see [`crate::aside`]), then renames it in place.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text: String = self
            .runs
            .iter()
            .map(|(start, count)| format!("{start} {count}\n"))
            .collect();
        crate::aside::Aside::create(path)
            .and_then(|aside| {
                aside.file().write_all(text.as_bytes())?;
                aside.commit()
            })
            .map_err(|source| Error::Io {
                what: "write",
                path: path.to_path_buf(),
                source,
            })
    }
}

/// What serving one VM took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VmStats {
    /// Pages copied in before the VM asked, from the working set.
    pub prefetched: u64,
    /// Page faults served by copying a page of the memory file.
    pub faults: u64,
    /// Page faults served with zeros (pages the guest gave back, e.g. to a balloon).
    pub zero_faults: u64,
}

/// One VM's userfaultfd and regions.
pub struct Vm {
    uffd: Uffd,
    regions: Vec<Region>,
    /// Where the VM ends: its socket closes when the VMM exits.
    peer: UnixStream,
    /// Host ranges the guest gave back: they read as zeros from now on.
    removed: Vec<(u64, u64)>,
}

impl Vm {
    /// Accepts a VM's handshake on `stream`: its regions as JSON, with the uffd attached.
    pub fn handshake(stream: UnixStream) -> Result<Self, Error> {
        let mut buf = vec![0u8; 64 * 1024];
        let (len, file) = stream
            .recv_with_fd(&mut buf)
            .map_err(|e| Error::Handshake(format!("receive: {e}")))?;
        let file = file.ok_or_else(|| Error::Handshake("no userfaultfd attached".into()))?;
        let regions: Vec<Region> = serde_json::from_slice::<Vec<RegionIn>>(&buf[..len])
            .map_err(|e| Error::Handshake(format!("regions: {e}")))?
            .into_iter()
            .map(|RegionIn(region)| region)
            .collect();
        // Address and offset arithmetic below relies on regions ending in range.
        if let Some(r) = regions.iter().find(|r| {
            r.base_host_virt_addr.checked_add(r.size).is_none()
                || r.offset.checked_add(r.size).is_none()
        }) {
            return Err(Error::Handshake(format!(
                "region {r:?} runs past the end of the address space"
            )));
        }
        // Faults are served a page at a time, so a region is whole pages.
        if let Some(r) = regions.iter().find(|r| {
            ![PAGE, HUGE_PAGE].contains(&r.page_size)
                || [r.base_host_virt_addr, r.size, r.offset]
                    .iter()
                    .any(|v| !v.is_multiple_of(r.page_size))
        }) {
            return Err(Error::Handshake(format!(
                "region {r:?} is not whole pages of 4 KiB or 2 MiB"
            )));
        }
        // SAFETY: the fd arrived with SCM_RIGHTS and is ours alone; the VMM sends a userfaultfd.
        let uffd = unsafe { Uffd::from_raw_fd(file.into_raw_fd()) };
        Ok(Vm {
            uffd,
            regions,
            peer: stream,
            removed: Vec::new(),
        })
    }

    /// The page holding host address `addr`: its address, where it lives
    /// in the memory file, and its size.
    fn page_at(&self, addr: u64) -> Option<(u64, u64, u64)> {
        self.regions
            .iter()
            .find(|r| addr >= r.base_host_virt_addr && addr - r.base_host_virt_addr < r.size)
            .map(|r| {
                let page = addr & !(r.page_size - 1);
                let offset = r.offset + (page - r.base_host_virt_addr);
                (page, offset, r.page_size)
            })
    }

    /// The region holding file offset `offset`.
    fn region_of(&self, offset: u64) -> Option<&Region> {
        self.regions
            .iter()
            .find(|r| offset >= r.offset && offset - r.offset < r.size)
    }

    /// Copies `len` bytes of the file at `offset` to host `addr`. False when
    /// the VM is gone.
    fn copy(&self, mem: &MemoryFile, offset: u64, addr: u64, len: u64) -> bool {
        let Some(src) = mem.at(offset, len) else {
            eprintln!(
                "ember-snapshot: page {offset:#x} is past the memory file's end: serving zeros"
            );
            return self.zero(addr, len);
        };
        let Some(len) = host_len(addr, len) else {
            return false;
        };
        // SAFETY: `src..src+len` is inside the file mapping; `addr..addr+len`
        // is inside a region this VM registered with the uffd, and UFFDIO_COPY
        // only fills pages that are missing there.
        let result = unsafe { self.uffd.copy(src.cast(), addr as *mut _, len, true) };
        self.settle(result, addr, len)
    }

    fn zero(&self, addr: u64, len: u64) -> bool {
        let huge = self
            .page_at(addr)
            .is_some_and(|(_, _, size)| size == HUGE_PAGE);
        let Some(len) = host_len(addr, len) else {
            return false;
        };
        let result = if huge {
            // Huge pages are served one at a time, each at most ZEROS long.
            let len = len.min(ZEROS.len());
            // SAFETY: `addr..addr+len` is inside a region this VM registered,
            // and ZEROS holds `len` bytes.
            unsafe {
                self.uffd
                    .copy(ZEROS.as_ptr().cast(), addr as *mut _, len, true)
            }
        } else {
            // SAFETY: `addr..addr+len` is inside a region this VM registered.
            unsafe { self.uffd.zeropage(addr as *mut _, len, true) }
        };
        self.settle(result, addr, len)
    }

    /// A page someone else filled first only needs its waiters woken; a VM
    /// that exited cannot take pages any more.
    fn settle(&self, result: userfaultfd::Result<usize>, addr: u64, len: usize) -> bool {
        use userfaultfd::Error as E;
        let errno = match result {
            Ok(_) => return true,
            Err(E::CopyFailed(errno) | E::ZeropageFailed(errno)) => errno as i32,
            Err(E::PartiallyCopied(_)) => libc::EEXIST,
            Err(e) => {
                eprintln!("ember-snapshot: serving {addr:#x}: {e}");
                return false;
            }
        };
        match errno {
            libc::EEXIST => self.uffd.wake(addr as *mut _, len).is_ok(),
            libc::ESRCH | libc::ENOENT => false,
            _ => {
                eprintln!("ember-snapshot: serving {addr:#x}: errno {errno}");
                false
            }
        }
    }

    /// Copies in every page of `set`, in as few copies as its runs allow
    /// (a run in a region of huge pages grows to whole huge pages). Returns
    /// the 4 KiB pages copied.
    fn prefetch(&self, mem: &MemoryFile, set: &WorkingSet) -> Option<u64> {
        let mut pages = 0;
        // File offsets below this are copied already (runs come in order).
        let mut done = 0;
        for &(start, count) in &set.runs {
            // A run whose bytes are past any file's end is in no region.
            let mut offset = start.checked_mul(PAGE)?;
            let end = offset.checked_add(count.checked_mul(PAGE)?)?;
            // A run may cross regions: copy each part where it is mapped.
            while offset < end {
                let region = self.region_of(offset)?;
                let size = region.page_size;
                let from = (offset & !(size - 1)).max(done);
                let region_end = region.offset + region.size;
                let to = end.div_ceil(size).saturating_mul(size).min(region_end);
                if from < to {
                    let addr = region.base_host_virt_addr + (from - region.offset);
                    if !self.copy(mem, from, addr, to - from) {
                        return None;
                    }
                    pages += (to - from) / PAGE;
                    done = to;
                }
                offset = to;
            }
        }
        Some(pages)
    }

    /// Serves the VM until it goes away; returns what it took, and the file
    /// pages it faulted in when `record`.
    pub fn serve(
        mut self,
        mem: &MemoryFile,
        working_set: Option<&WorkingSet>,
        record: bool,
    ) -> (VmStats, BTreeSet<u64>) {
        let mut stats = VmStats::default();
        let mut touched = BTreeSet::new();
        if let Some(set) = working_set {
            match self.prefetch(mem, set) {
                Some(pages) => stats.prefetched = pages,
                None => return (stats, touched),
            }
        }
        let _ = self.peer.set_nonblocking(true);
        self.report(&stats);
        let mut reported = stats;
        let mut reported_at = Instant::now();
        loop {
            // Unreported faults are reported within REPORT_EVERY, even if no more come.
            let timeout = if stats == reported {
                -1
            } else {
                let left = REPORT_EVERY.saturating_sub(reported_at.elapsed());
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1)
            };
            let mut fds = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.peer.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `fds` is a valid array of two pollfds for the call's duration.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
            if ready < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            if fds[0].revents & libc::POLLIN != 0
                && !self.drain_events(mem, &mut stats, record, &mut touched)
            {
                break;
            }
            if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
                || self.peer_gone(fds[1].revents)
            {
                break;
            }
            if stats != reported && reported_at.elapsed() >= REPORT_EVERY {
                self.report(&stats);
                (reported, reported_at) = (stats, Instant::now());
            }
        }
        (stats, touched)
    }

    /// Tells ember what this VM has been served so far: faults (from the file
    /// or zeros), then pages prefetched, two little-endian `u64`s in one
    /// 16-byte write. The socket is nonblocking and Linux writes so small a
    /// record to a Unix stream whole or not at all, so a VMM that never reads
    /// (Firecracker) only fills its buffer, and ember reads the newest.
    fn report(&self, stats: &VmStats) {
        let mut record = [0u8; 16];
        record[..8].copy_from_slice(&(stats.faults + stats.zero_faults).to_le_bytes());
        record[8..].copy_from_slice(&stats.prefetched.to_le_bytes());
        let _ = (&self.peer).write(&record);
    }

    fn peer_gone(&mut self, revents: i16) -> bool {
        if revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            return true;
        }
        if revents & libc::POLLIN == 0 {
            return false;
        }
        let mut byte = [0u8; 64];
        matches!(self.peer.read(&mut byte), Ok(0))
    }

    /// Handles every queued event; false once the VM is gone.
    fn drain_events(
        &mut self,
        mem: &MemoryFile,
        stats: &mut VmStats,
        record: bool,
        touched: &mut BTreeSet<u64>,
    ) -> bool {
        loop {
            let event = match self.uffd.read_event() {
                Ok(Some(event)) => event,
                Ok(None) => return true,
                Err(_) => return false,
            };
            match event {
                Event::Pagefault { addr, .. } => {
                    let addr = addr as u64;
                    let served = match self.page_at(addr) {
                        Some((page, _, size))
                            if self.removed.iter().any(|&(s, e)| page >= s && page < e) =>
                        {
                            stats.zero_faults += 1;
                            self.zero(page, size)
                        }
                        Some((page, offset, size)) => {
                            stats.faults += 1;
                            if record {
                                touched.extend((offset / PAGE)..((offset + size) / PAGE));
                            }
                            self.copy(mem, offset, page, size)
                        }
                        None => {
                            eprintln!("ember-snapshot: fault at {addr:#x} outside every region");
                            false
                        }
                    };
                    if !served {
                        return false;
                    }
                }
                Event::Remove { start, end } | Event::Unmap { start, end } => {
                    self.removed.push((start as u64, end as u64));
                }
                _ => {}
            }
        }
    }
}

/// Serves every VM that connects to `listener`, each on its own thread.
///
/// With `working_set` pointing at an existing file, each VM gets that set
/// prefetched; pointing at a missing one, the first VM's faults are recorded
/// there when it goes away, and later VMs get them prefetched.
pub fn run(
    listener: UnixListener,
    mem: MemoryFile,
    working_set: Option<PathBuf>,
) -> Result<(), Error> {
    let mem = Arc::new(mem);
    let known: Arc<Mutex<Option<Arc<WorkingSet>>>> = Arc::new(Mutex::new(None));
    let mut recording = false;
    if let Some(path) = &working_set {
        if path.exists() {
            let set = WorkingSet::load(path)?;
            println!(
                "working set: {} pages in {} runs",
                set.pages(),
                set.runs.len()
            );
            *known.lock().map_err(|_| Error::Poisoned)? = Some(Arc::new(set));
        } else {
            recording = true;
        }
    }
    for (index, stream) in listener.incoming().enumerate() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ember-snapshot: accept: {e}");
                continue;
            }
        };
        let vm = match Vm::handshake(stream) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("ember-snapshot: VM {index}: {e}");
                continue;
            }
        };
        let set = known.lock().ok().and_then(|s| s.clone());
        let record = recording && set.is_none();
        recording &= !record;
        let (mem, known, path) = (mem.clone(), known.clone(), working_set.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("uffd-vm{index}"))
            .spawn(move || {
                let (stats, touched) = vm.serve(&mem, set.as_deref(), record);
                println!(
                    "vm {index}: prefetched {} pages, served {} faults ({} zero)",
                    stats.prefetched, stats.faults, stats.zero_faults
                );
                let _ = std::io::stdout().flush();
                if let (true, Some(path)) = (record, path) {
                    let set = WorkingSet::from_pages(&touched);
                    match set.save(&path) {
                        Ok(()) => {
                            println!(
                                "vm {index}: recorded a working set of {} pages",
                                set.pages()
                            );
                            if let Ok(mut known) = known.lock() {
                                *known = Some(Arc::new(set));
                            }
                        }
                        Err(e) => eprintln!("ember-snapshot: {e}"),
                    }
                }
            });
        if let Err(e) = spawned {
            eprintln!("ember-snapshot: VM {index}: cannot start its thread: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_set_runs_coalesce_and_round_trip_through_a_file() {
        let pages: BTreeSet<u64> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        let set = WorkingSet::from_pages(&pages);
        assert_eq!(set.runs, vec![(1, 3), (7, 1), (9, 2)]);
        assert_eq!(set.pages(), 6);
        let path = std::env::temp_dir().join(format!("ember-ws-{}", std::process::id()));
        set.save(&path).unwrap();
        assert_eq!(WorkingSet::load(&path).unwrap(), set);
        std::fs::write(&path, "1 2\nbad\n").unwrap();
        assert!(matches!(
            WorkingSet::load(&path),
            Err(Error::WorkingSet { line: 2, .. })
        ));
        std::fs::remove_file(path).unwrap();
    }

    /// What a VM sends at its handshake: `regions` and an fd (an eventfd
    /// standing in for its userfaultfd).
    fn handshake(regions: &str) -> Result<Vm, Error> {
        let (vm_end, handler_end) = UnixStream::pair().unwrap();
        let fd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
        vm_end
            .send_with_fd(regions.as_bytes(), fd.as_raw_fd())
            .unwrap();
        Vm::handshake(handler_end)
    }

    // Found by the uffd_handshake fuzz target: each of these overflowed.

    #[test]
    fn a_working_sets_page_count_saturates() {
        let set = WorkingSet {
            runs: vec![(1, u64::MAX), (1, 1)],
        };
        assert_eq!(set.pages(), u64::MAX);
    }

    #[test]
    fn regions_past_the_end_of_the_address_space_are_refused() {
        let ok = r#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 0}]"#;
        assert!(handshake(ok).is_ok());
        for bad in [
            r#"[{"base_host_virt_addr": 18446744073709547520, "size": 8192, "offset": 0}]"#,
            r#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 18446744073709547520}]"#,
        ] {
            assert!(
                matches!(handshake(bad), Err(Error::Handshake(m)) if m.contains("past the end")),
                "{bad}"
            );
        }
    }

    #[test]
    fn regions_must_be_whole_pages_of_a_size_the_handler_serves() {
        let huge = r#"[{"base_host_virt_addr": 2097152, "size": 4194304, "offset": 0, "page_size": 2097152}]"#;
        assert!(handshake(huge).is_ok());
        for bad in [
            r#"[{"base_host_virt_addr": 4096, "size": 4194304, "offset": 0, "page_size": 2097152}]"#,
            r#"[{"base_host_virt_addr": 2097152, "size": 4096, "offset": 0, "page_size": 2097152}]"#,
            r#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 0, "page_size": 65536}]"#,
            r#"[{"base_host_virt_addr": 4096, "size": 8192, "offset": 0, "page_size": 0}]"#,
        ] {
            assert!(
                matches!(handshake(bad), Err(Error::Handshake(m)) if m.contains("whole pages")),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_working_set_past_any_file_is_not_prefetched() {
        let path = std::env::temp_dir().join(format!("ember-ws-mem-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let mem = MemoryFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let vm =
            handshake(r#"[{"base_host_virt_addr": 4096, "size": 4096, "offset": 0}]"#).unwrap();
        for runs in [vec![(1 << 52, 1)], vec![(0, 1 << 52)]] {
            assert_eq!(vm.prefetch(&mem, &WorkingSet { runs }), None);
        }
    }
}
