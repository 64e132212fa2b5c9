//! A network namespace the shim makes for a task whose spec asks for a new one
//! (no path), as runc would. `ctr run --cni` (and other clients that run CNI
//! themselves) configure it between create and start through
//! `/proc/<task pid>/ns/net`, so at create the task's pid is a holder process
//! that sits in the new namespace; the namespace is also bind-mounted at
//! `<bundle>/netns`, which keeps it after the holder is gone. At start the VM
//! joins it through that path and the holder ends; delete unmounts it.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the network namespace's holder: {0}")]
    Holder(std::io::Error),
    #[error("cannot bind-mount the new network namespace at '{path}': {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The namespace's path in a task's bundle.
pub fn path(bundle: &Path) -> PathBuf {
    bundle.join("netns")
}

/// The holder of a new network namespace, until the VM joins it.
#[derive(Debug)]
pub struct Holder {
    pub pid: u32,
    /// The write end of the holder's lifeline: the holder lives until it
    /// reads the end of it, which comes when the shim ends too, however it ends.
    lifeline: OwnedFd,
}

impl Holder {
    /// Makes the namespace: a holder process in it, and the bind mount at
    /// [`path`]. The holder is a fork of the shim that execs nothing (an exec
    /// of the shim's binary cost about 2 ms), so until it exits it only makes
    /// system calls, none of which allocates or takes a lock.
    pub fn create(bundle: &Path) -> Result<Holder, Error> {
        let target = path(bundle);
        let (lifeline_in, lifeline) = pipe().map_err(Error::Holder)?;
        let (ready_in, ready_out) = pipe().map_err(Error::Holder)?;
        // SAFETY: the child runs `hold`, which makes only async-signal-safe
        // system calls on file descriptors made before the fork, and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child, as above.
            unsafe { hold(lifeline_in.as_raw_fd(), ready_out.as_raw_fd()) }
        }
        drop((lifeline_in, ready_out));
        let pid = u32::try_from(pid).map_err(|_| Error::Holder(std::io::Error::last_os_error()))?;
        let holder = Holder { pid, lifeline };
        // One byte once the holder is in its namespace, none if unshare failed.
        let mut ready = [0u8; 1];
        if !matches!(File::from(ready_in).read(&mut ready), Ok(1)) {
            holder.end();
            return Err(Error::Holder(std::io::Error::other(
                "it could not make a network namespace",
            )));
        }
        let source = PathBuf::from(format!("/proc/{}/ns/net", holder.pid));
        let mounted = File::create(&target).and_then(|_| bind_mount(&source, &target));
        if let Err(source) = mounted {
            holder.end();
            let _ = std::fs::remove_file(&target);
            return Err(Error::Mount {
                path: target,
                source,
            });
        }
        Ok(holder)
    }

    /// Ends the holder; the bind mount keeps the namespace. The shim crate's
    /// reaper reaps it.
    pub fn end(self) {
        drop(self.lifeline);
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our
            // child's, which only the reaper reaps, after it has died.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A pipe whose ends close on exec, so that no VM or helper command holds them.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The holder's whole life, in the forked child: a new network namespace, a
/// byte on `ready` to say so, then waiting until `lifeline` ends (or a kill).
/// Descriptors it inherited besides these two are closed first, so that it
/// keeps no other holder's lifeline, nor the shim's sockets, open.
///
/// # Safety
/// Only in the child of a fork: it makes no call but system calls.
unsafe fn hold(lifeline: RawFd, ready: RawFd) -> ! {
    // SAFETY: system calls on descriptors this process owns; `byte` lives
    // on this stack for every read and write.
    unsafe {
        if libc::dup2(lifeline, 0) < 0 || libc::dup2(ready, 1) < 0 {
            libc::_exit(1);
        }
        libc::syscall(libc::SYS_close_range, 2u32, u32::MAX, 0u32);
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            libc::_exit(1);
        }
        let mut byte = 1u8;
        libc::write(1, (&raw const byte).cast(), 1);
        libc::close(1);
        loop {
            match libc::read(0, (&raw mut byte).cast(), 1) {
                1 => {}
                -1 if *libc::__errno_location() == libc::EINTR => {}
                _ => libc::_exit(0),
            }
        }
    }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

fn bind_mount(source: &Path, target: &Path) -> std::io::Result<()> {
    let (source, target) = (c_path(source)?, c_path(target)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call; a
    // bind mount reads no filesystem type or data.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmounts and removes the task's namespace, if the shim made one; the
/// namespace goes once nothing else holds it.
pub fn remove(bundle: &Path) {
    let target = path(bundle);
    if !target.exists() {
        return;
    }
    let unmounted = c_path(&target).and_then(|c| {
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        match unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    if let Err(e) = unmounted {
        log::warn!("cannot unmount {}: {e}", target.display());
    }
    let _ = std::fs::remove_file(&target);
}
