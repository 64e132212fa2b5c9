//! A network namespace the shim makes for a task whose spec asks for a new one
//! (no path), as runc would. `ctr run --cni` (and other clients that run CNI
//! themselves) configure it between create and start through
//! `/proc/<task pid>/ns/net`, so at create the task's pid is a holder process
//! that sits in the new namespace; the namespace is also bind-mounted at
//! `<bundle>/netns`, which keeps it after the holder is gone. At start the VM
//! joins it through that path and the holder ends; delete unmounts it.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

/// Set in the holder's environment: the shim binary then only waits.
pub const HOLDER_ENV: &str = "EMBER_SHIM_NETNS_HOLDER";

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
    /// The holder's stdin: it lives until this end closes, which happens
    /// when the shim ends too, however it ends.
    lifeline: ChildStdin,
}

impl Holder {
    /// Makes the namespace: a holder process in it (the shim's own binary,
    /// which [`hold`]s), and the bind mount at [`path`].
    pub fn create(bundle: &Path) -> Result<Holder, Error> {
        let exe = std::env::current_exe().map_err(Error::Holder)?;
        let mut command = Command::new(exe);
        command
            .env(HOLDER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec the child makes one system call, which
        // allocates nothing and takes no lock.
        unsafe {
            command.pre_exec(|| match libc::unshare(libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        // Spawn returns once the child has exec'd, so it is in the namespace.
        let mut child = command.spawn().map_err(Error::Holder)?;
        let Some(lifeline) = child.stdin.take() else {
            return Err(Error::Holder(std::io::ErrorKind::BrokenPipe.into()));
        };
        let holder = Holder {
            pid: child.id(),
            lifeline,
        };
        let target = path(bundle);
        let source = PathBuf::from(format!("/proc/{}/ns/net", holder.pid));
        let mounted = std::fs::File::create(&target).and_then(|_| bind_mount(&source, &target));
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

/// The holder's whole life: waiting until the shim closes its stdin, or kills it.
pub fn hold() -> ! {
    let mut byte = [0u8; 1];
    while matches!(std::io::stdin().read(&mut byte), Ok(1..)) {}
    std::process::exit(0)
}
