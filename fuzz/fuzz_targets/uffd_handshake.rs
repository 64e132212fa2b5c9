//! The page-fault handler's inputs (`ember_snapshot::uffd`): the working-set
//! file it reads at start, and the handshake each VM sends it (the JSON list
//! of its memory regions, with an fd attached), then what the handler does
//! with both before the first fault: prefetching the working set into the
//! VM's regions (`Vm::serve`).
//!
//! Input: a mode byte, then
//! - 0: a working-set file (`WorkingSet::load`, then what `run` does with a
//!   set: its page count; and a save/load round trip);
//! - 1: a flags byte (bit 0: attach an fd) and the handshake message;
//! - 2: a flags byte (bit 0: attach an fd, bit 1: record), a working-set
//!   chunk, a byte choosing the memory file (empty, 3 pages or a sparse
//!   1 GiB), then the handshake message. A VM that shakes hands is served
//!   with that working set. Its fd is a userfaultfd with nothing registered
//!   (an eventfd where the host allows no userfaultfd), so every copy fails
//!   as for a VM that went away: the handler must give up on that VM, not
//!   panic. Its socket is closed first, so the handler never waits.

#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use ember_fuzz::bytes::Reader;
use ember_fuzz::scratch;
use ember_snapshot::uffd::{MemoryFile, Vm, WorkingSet};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

fn working_set(text: &[u8]) -> Option<WorkingSet> {
    let path = scratch::fresh("working-set");
    std::fs::write(&path, text).ok()?;
    WorkingSet::load(&path).ok()
}

/// The fd a VM attaches: a real userfaultfd with nothing registered (so
/// every copy fails with ENOENT, as for a VM that is gone), or an eventfd
/// where the host refuses userfaultfds. (`Uffd::into_raw_fd` closes the fd
/// it returns, in userfaultfd 0.9: the `Uffd` stays the owner here.)
fn vm_fd() -> Option<Box<dyn AsRawFd>> {
    let uffd = userfaultfd::UffdBuilder::new()
        .close_on_exec(true)
        .non_blocking(true)
        .user_mode_only(true)
        .create();
    match uffd {
        Ok(uffd) => Some(Box::new(uffd)),
        Err(_) => {
            // SAFETY: eventfd takes no pointers; the result is checked.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            // SAFETY: a fresh fd that nothing else owns.
            (fd >= 0).then(|| Box::new(unsafe { OwnedFd::from_raw_fd(fd) }) as Box<dyn AsRawFd>)
        }
    }
}

/// Runs `f` with stderr sent to /dev/null: the handler reports each page
/// it cannot serve there, and would flood the fuzzer's output. A panic
/// puts stderr back before it is reported.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    static SAVED: OnceLock<Option<(RawFd, RawFd)>> = OnceLock::new();
    let fds = *SAVED.get_or_init(|| {
        // SAFETY: dup and open take no pointers but a valid C string; results checked.
        let (saved, null) = unsafe {
            (
                libc::dup(2),
                libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC),
            )
        };
        if saved < 0 || null < 0 {
            return None;
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // SAFETY: dup2 between fds this process owns.
            unsafe { libc::dup2(saved, 2) };
            previous(info);
        }));
        Some((saved, null))
    });
    let Some((saved, null)) = fds else {
        return f();
    };
    // SAFETY: dup2 between fds this process owns.
    unsafe { libc::dup2(null, 2) };
    let result = f();
    // SAFETY: as above.
    unsafe { libc::dup2(saved, 2) };
    result
}

/// A VM's handshake as the handler receives it; `None` if it is refused.
fn handshake(message: &[u8], attach_fd: bool) -> Option<Vm> {
    let (vm_end, handler_end) = UnixStream::pair().ok()?;
    let fd = vm_fd()?;
    if attach_fd {
        let _ = vm_end.send_with_fd(message, fd.as_raw_fd());
    } else {
        let _ = std::io::Write::write_all(&mut &vm_end, message);
    }
    // The VM hangs up: the handler reads what was sent, never waits for more.
    drop(vm_end);
    Vm::handshake(handler_end).ok()
}

/// Memory files of 0 bytes, 3 pages and 1 GiB (sparse), mapped once: the
/// handler never unmaps one.
fn memory_files() -> &'static [MemoryFile] {
    static FILES: OnceLock<Vec<MemoryFile>> = OnceLock::new();
    FILES.get_or_init(|| {
        [0u64, 3 * 4096, 1 << 30]
            .iter()
            .filter_map(|&len| {
                let path = scratch::fresh(&format!("memory-{len}"));
                let file = std::fs::File::create(&path).ok()?;
                file.set_len(len).ok()?;
                if len > 0 {
                    std::os::unix::fs::FileExt::write_all_at(&file, &[0x5a; 64], 0).ok()?;
                }
                MemoryFile::open(&path).ok()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    ember_fuzz::ignore_sigpipe();
    let mut r = Reader::new(data);
    match r.u8() % 3 {
        0 => {
            let Some(set) = working_set(r.rest()) else {
                return;
            };
            let _ = set.pages();
            let path = scratch::fresh("working-set.saved");
            set.save(&path).expect("cannot save a working set");
            let again = WorkingSet::load(&path).expect("a saved working set loads");
            assert_eq!(again, set);
        }
        1 => {
            let flags = r.u8();
            let _ = handshake(r.rest(), flags & 1 == 1);
        }
        _ => {
            let flags = r.u8();
            let set = working_set(r.chunk(512)).unwrap_or_default();
            let files = memory_files();
            let Some(mem) = files.get(usize::from(r.u8()) % files.len().max(1)) else {
                return;
            };
            if let Some(vm) = handshake(r.rest(), flags & 1 == 1) {
                quietly(|| vm.serve(mem, Some(&set), flags & 2 != 0));
            }
        }
    }
});
