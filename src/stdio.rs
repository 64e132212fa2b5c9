//! ember's standard streams. A pipe or socket that nobody drains must not stall
//! a thread that writes the guest's console or a log line, so those are made
//! non-blocking and what does not fit is dropped. Terminals and files are left
//! alone: they do not fill up, and a terminal's flags are shared with the shell.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Makes writes to `fd` fail with `WouldBlock` instead of blocking, if it is a
/// pipe or a socket.
pub fn never_block(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: an all-zero stat is a valid value for fstat to overwrite.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, writable stat; `raw` is open while `fd` lives.
    if unsafe { libc::fstat(raw, &mut stat) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return Ok(());
    }
    // SAFETY: F_GETFL and F_SETFL take no pointers; `raw` is open while `fd` lives.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
