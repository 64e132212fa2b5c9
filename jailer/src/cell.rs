//! The last steps, inside the jail: a mount namespace rooted at the chroot,
//! optionally a PID namespace, daemonizing, closing inherited descriptors,
//! dropping privileges, and exec'ing ember.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use crate::args::JailArgs;
use crate::error::{JailError, Result};

fn c_path(step: &'static str, path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| JailError::Invalid {
        step,
        what: "path has a NUL byte",
        path: path.to_owned(),
    })
}

fn sys(step: &'static str, what: &'static str, ret: libc::c_int) -> Result<()> {
    if ret < 0 {
        return Err(JailError::Sys {
            step,
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Step 6: a private mount namespace whose root is `root`; the host's file
/// system is unmounted from it, so nothing outside the chroot is reachable.
pub fn pivot_into(root: &Path) -> Result<()> {
    const STEP: &str = "pivot_root";
    let c_root = c_path(STEP, root)?;
    let none = std::ptr::null::<libc::c_char>();
    // SAFETY: plain syscalls on NUL-terminated strings that outlive each
    // call; a null fs type and data are allowed for these mount flags.
    unsafe {
        sys(
            STEP,
            "unshare the mount namespace",
            libc::unshare(libc::CLONE_NEWNS),
        )?;
        // Mounts made in here must not propagate back to the host.
        sys(
            STEP,
            "make mounts private",
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_PRIVATE | libc::MS_REC,
                none.cast(),
            ),
        )?;
        // pivot_root needs the new root to be a mount point.
        sys(
            STEP,
            "bind-mount the chroot",
            libc::mount(
                c_root.as_ptr(),
                c_root.as_ptr(),
                none,
                libc::MS_BIND | libc::MS_REC,
                none.cast(),
            ),
        )?;
        sys(STEP, "enter the chroot", libc::chdir(c_root.as_ptr()))?;
        // Stacking the old root on the new one (pivot_root(".", ".")) needs no
        // directory for it inside the jail.
        sys(
            STEP,
            "pivot_root",
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
        )?;
        sys(
            STEP,
            "unmount the host's root",
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
        )?;
        sys(STEP, "enter the new root", libc::chdir(c"/".as_ptr()))
    }
}

/// Step 8a: `--new-pid-ns`: forks a child that is PID 1 of a new PID
/// namespace and carries on; the parent writes the child's host PID to
/// `<chroot>/<exec-name>.pid` and exits, as Firecracker's jailer does.
pub fn enter_pid_namespace(args: &JailArgs, root: &Path) -> Result<()> {
    const STEP: &str = "new-pid-ns";
    // SAFETY: unshare only affects children created afterwards.
    sys(STEP, "unshare the PID namespace", unsafe {
        libc::unshare(libc::CLONE_NEWPID)
    })?;
    // SAFETY: the jailer is single-threaded, so the child may run any code.
    let child = unsafe { libc::fork() };
    sys(STEP, "fork", child)?;
    if child == 0 {
        return Ok(());
    }
    let pid_file = root.join(format!("{}.pid", args.exec_file_name()));
    let written = std::fs::write(&pid_file, child.to_string());
    std::process::exit(match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ember-jailer: {STEP}: write '{}': {e}", pid_file.display());
            1
        }
    });
}

/// Step 8b: `--daemonize`: a session of its own and stdio on /dev/null
/// (opened before the pivot, as `dev_null`).
pub fn daemonize(dev_null: &File) -> Result<()> {
    const STEP: &str = "daemonize";
    // SAFETY: setsid and dup2 on descriptors this process owns.
    unsafe {
        sys(STEP, "setsid", libc::setsid())?;
        for fd in 0..3 {
            sys(
                STEP,
                "redirect stdio to /dev/null",
                libc::dup2(dev_null.as_raw_fd(), fd),
            )?;
        }
    }
    Ok(())
}

/// Step 9: closes every descriptor above stdio except `keep`, which is
/// close-on-exec and reports failures to the watcher until the exec.
pub fn close_inherited_fds(keep: RawFd) -> Result<()> {
    const STEP: &str = "close fds";
    let keep = keep as libc::c_uint;
    // SAFETY: closes descriptors only; none is used by Rust objects still alive
    // here except `keep`, which is left open.
    unsafe {
        if keep > 3 {
            sys(STEP, "close_range", libc::close_range(3, keep - 1, 0))?;
        }
        sys(
            STEP,
            "close_range",
            libc::close_range(keep + 1, libc::c_uint::MAX, 0),
        )
    }
}

/// Step 10: becomes uid:gid with no supplementary groups; with a non-root
/// uid no capability survives. `no_new_privs` keeps it that way across exec.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    const STEP: &str = "drop privileges";
    // SAFETY: credential syscalls with plain integer arguments.
    unsafe {
        sys(STEP, "setgroups", libc::setgroups(0, std::ptr::null()))?;
        sys(STEP, "setresgid", libc::setresgid(gid, gid, gid))?;
        sys(STEP, "setresuid", libc::setresuid(uid, uid, uid))?;
        sys(
            STEP,
            "set no_new_privs",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )
    }
}

/// Step 11: execs `/<exec-name> --id <id> <args after -->` with an empty
/// environment. Returns only on failure.
pub fn exec(args: &JailArgs) -> JailError {
    const STEP: &str = "exec";
    let path = Path::new("/").join(args.exec_file_name());
    let argv: Vec<CString> = [path.as_os_str(), OsStr::new("--id"), OsStr::new(&args.id)]
        .into_iter()
        .chain(args.extra_args.iter().map(|a| a.as_os_str()))
        .filter_map(|a| CString::new(a.as_encoded_bytes()).ok())
        .collect();
    if argv.len() != 3 + args.extra_args.len() {
        return JailError::Invalid {
            step: STEP,
            what: "an argument has a NUL byte, for",
            path,
        };
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let env = [std::ptr::null::<libc::c_char>()];
    // SAFETY: `ptrs` and `env` are NULL-terminated arrays of pointers to
    // NUL-terminated strings, all alive for the call; execve only returns on error.
    unsafe { libc::execve(ptrs[0], ptrs.as_ptr(), env.as_ptr()) };
    JailError::io(STEP, "execve", path)(io::Error::last_os_error())
}
