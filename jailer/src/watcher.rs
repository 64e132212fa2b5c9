//! Cleanup after a failure inside the jail.
//!
//! Once the jailer has pivoted into the chroot and dropped its privileges it
//! can neither reach nor remove what it created on the host. So before those
//! steps it leaves a watcher behind: a detached, still privileged process in
//! the host's mount namespace, holding the read end of a close-on-exec pipe.
//! A successful exec closes the pipe without a word and the watcher exits; a
//! failing step writes its error line first, and the watcher removes the
//! jail directory and cgroups, prints the line and exits.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::cleanup::Created;
use crate::error::{JailError, Result};

/// The jailer's end: where a failing step reports before it exits.
pub struct Report(File);

impl Report {
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }

    /// Hands `error` to the watcher, which prints it and cleans up, and exits 1.
    pub fn fail(mut self, error: &JailError) -> ! {
        if self.0.write_all(error.to_string().as_bytes()).is_err() {
            eprintln!("ember-jailer: {error}");
        }
        std::process::exit(1);
    }
}

fn sys(what: &'static str, ret: libc::c_int) -> Result<libc::c_int> {
    if ret < 0 {
        return Err(JailError::Sys {
            step: "watcher",
            what,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(ret)
}

/// Starts the watcher for `created` and returns the report end of its pipe.
/// The watcher is a grandchild, reaped by init, so ember never inherits a child.
pub fn spawn(created: &mut Created) -> Result<Report> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    sys("pipe", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    })?;
    // SAFETY: pipe2 just returned these two descriptors, owned by no one else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the jailer is single-threaded, so a child may run any code.
    let middle = sys("fork", unsafe { libc::fork() })?;
    if middle == 0 {
        drop(write);
        // SAFETY: as above.
        match unsafe { libc::fork() } {
            0 => watch(File::from(read), std::mem::take(created)),
            // SAFETY: leaves without running the parent's destructors or
            // atexit hooks; 1 tells the jailer there is no watcher.
            pid => unsafe { libc::_exit(i32::from(pid < 0)) },
        }
    }
    let mut status = 0;
    // SAFETY: waits for the intermediate child this process just forked.
    sys("wait", unsafe { libc::waitpid(middle, &mut status, 0) })?;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(JailError::Sys {
            step: "watcher",
            what: "fork",
            source: std::io::Error::from_raw_os_error(libc::EAGAIN),
        });
    }
    drop(read);
    // Cleanup is the watcher's job from here on.
    *created = Created::default();
    Ok(Report(File::from(write)))
}

/// The watcher: waits for the verdict, cleans up after a failure.
fn watch(mut verdict: File, mut created: Created) -> ! {
    // Out of the jail's cgroups, which must empty before they can go.
    for cgroup in &created.cgroups {
        if let Some(back) = &cgroup.moved_in {
            let _ = std::fs::write(back, std::process::id().to_string());
        }
    }
    // Keeps stderr for the error line, the pipe, and the directories the
    // cleanup works in; nothing else of the jailer's.
    let mut keep = created.fds();
    keep.push(verdict.as_raw_fd());
    keep.sort_unstable();
    // SAFETY: closes stdin, stdout and descriptors above stderr not in `keep`,
    // which no live Rust object of this process uses.
    unsafe {
        libc::close(0);
        libc::close(1);
        let mut from = 3;
        for fd in keep
            .into_iter()
            .filter_map(|fd| libc::c_uint::try_from(fd).ok())
            .filter(|&fd| fd >= 3)
        {
            if fd > from {
                libc::close_range(from, fd - 1, 0);
            }
            from = from.max(fd + 1);
        }
        libc::close_range(from, libc::c_uint::MAX, 0);
    }
    // Read until every write end is gone: at exec (close-on-exec) or at the
    // failing process's exit, after its message.
    let mut message = String::new();
    let _ = verdict.read_to_string(&mut message);
    if !message.is_empty() {
        undo_when_gone(&mut created);
        eprintln!("ember-jailer: {message}");
    }
    // SAFETY: leaves without running destructors the jailer's process owns.
    unsafe { libc::_exit(0) }
}

/// The failed process closed the pipe as it exited; its cgroups may take a
/// moment to notice it is gone, so a busy cgroup is tried again, briefly.
fn undo_when_gone(created: &mut Created) {
    for _ in 0..1000 {
        let busy = created.cgroups.iter().any(|cg| {
            matches!(std::fs::remove_dir(&cg.leaf), Err(e) if e.raw_os_error() == Some(libc::EBUSY))
        });
        if !busy {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    created.undo();
}
