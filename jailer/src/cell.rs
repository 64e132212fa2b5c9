//! The last steps, inside the jail: a mount namespace rooted at the chroot,
//! daemonizing, the PID file (and a PID namespace), closing inherited
//! descriptors, dropping privileges, and exec'ing ember.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use crate::args::JailArgs;
use crate::dir::Dir;
use crate::error::{JailError, Result};

fn c_path(step: &'static str, path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| JailError::Invalid {
        step,
        what: "path has a NUL byte",
        path: path.to_owned(),
    })
}

fn sys(step: &'static str, what: &'static str, ret: impl Into<libc::c_long>) -> Result<()> {
    if ret.into() < 0 {
        return Err(JailError::Sys {
            step,
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Step 8: a private mount namespace whose root is `root`; the host's file
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
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()),
        )?;
        sys(
            STEP,
            "unmount the host's root",
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
        )?;
        sys(STEP, "enter the new root", libc::chdir(c"/".as_ptr()))
    }
}

/// Step 9: `--daemonize`, as Firecracker's jailer does it: forks twice, the
/// second child, in a session of its own but not its leader, carrying on
/// with stdio on /dev/null (opened before the pivot, as `dev_null`); it can
/// never acquire a controlling terminal. The first process exits 0 once the
/// daemon has written the PID file (or failed): it waits for the end of a
/// pipe that the daemon holds until step 11 closes it, so a caller that reads
/// the PID file when the jailer returns reads ember's.
pub fn daemonize(dev_null: &File) -> Result<()> {
    const STEP: &str = "daemonize";
    let mut done = [0; 2];
    // SAFETY: `done` has room for the two descriptors pipe2 writes; the
    // jailer is single-threaded, so each child may run any code; the parents
    // leave with _exit, running nothing of the jailer's.
    unsafe {
        sys(
            STEP,
            "pipe",
            libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC),
        )?;
        let first = libc::fork();
        sys(STEP, "fork", first)?;
        if first > 0 {
            libc::close(done[1]);
            let mut byte = 0u8;
            while libc::read(done[0], (&mut byte as *mut u8).cast(), 1) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
            libc::_exit(0);
        }
        libc::close(done[0]);
        sys(STEP, "setsid", libc::setsid())?;
        let second = libc::fork();
        sys(STEP, "fork", second)?;
        if second > 0 {
            libc::_exit(0);
        }
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

/// Step 10: writes `<exec-name>.pid` in the jail's root: ember's PID as the
/// host sees it. With `--new-pid-ns` this process first forks a child that is
/// PID 1 of a new PID namespace and carries on, while the parent writes the
/// child's PID and exits, as Firecracker's jailer does. The file is root's,
/// 0600, created afresh: whatever the jailed user left under that name is
/// removed (never followed), and one planted meanwhile makes the run fail.
pub fn write_pid_file(args: &JailArgs, root: &Dir) -> Result<()> {
    const STEP: &str = "pid file";
    let name = args.pid_file_name();
    let write = |pid: libc::pid_t| -> Result<()> {
        let path = root.join(&name);
        match root.remove_file(&name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(JailError::io(STEP, "remove", path)(e))
            }
            _ => {}
        }
        let mut file = root
            .create_file(&name, 0o600)
            .map_err(JailError::io(STEP, "create", &path))?;
        file.write_all(pid.to_string().as_bytes())
            .map_err(JailError::io(STEP, "write", &path))
    };
    if !args.new_pid_ns {
        // PIDs stay below the kernel's pid_max (at most 2^22), so this fits.
        let pid = libc::pid_t::try_from(std::process::id()).map_err(|_| JailError::Sys {
            step: STEP,
            what: "read our PID",
            source: io::ErrorKind::InvalidData.into(),
        })?;
        return write(pid);
    }
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
    if let Err(e) = write(child) {
        // SAFETY: kill has no memory-safety preconditions; the child is ours.
        unsafe { libc::kill(child, libc::SIGKILL) };
        return Err(e);
    }
    // SAFETY: leaves without running destructors the child still relies on.
    unsafe { libc::_exit(0) }
}

/// Step 11: closes every descriptor above stdio except `keep`, which is
/// close-on-exec and reports failures to the watcher until the exec.
pub fn close_inherited_fds(keep: RawFd) -> Result<()> {
    const STEP: &str = "close fds";
    let keep = libc::c_uint::try_from(keep).map_err(|_| JailError::Sys {
        step: STEP,
        what: "close_range",
        source: io::Error::from_raw_os_error(libc::EBADF),
    })?;
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

/// `struct __user_cap_header_struct` and `__user_cap_data_struct` (three
/// 32-bit words per half of the 64 capabilities) for capget/capset.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `prctl` with unsigned long arguments, as the kernel reads them (the
/// capability calls refuse stray upper bits).
fn prctl(option: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<libc::c_int> {
    let zero: libc::c_ulong = 0;
    // SAFETY: the prctl options used here take plain integers, no pointers.
    let ret = unsafe { libc::prctl(option, a, b, zero, zero) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Runs `per_cap` for capability 0, 1, ... until the kernel says there is no
/// such capability (EINVAL); any other error is a failure.
fn each_capability(mut per_cap: impl FnMut(libc::c_ulong) -> io::Result<bool>) -> io::Result<bool> {
    let mut any = false;
    for cap in 0.. {
        match per_cap(cap) {
            Ok(set) => any |= set,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && cap > 0 => return Ok(any),
            Err(e) => return Err(e),
        }
    }
    Ok(any)
}

/// Step 12: becomes uid:gid with no supplementary groups and no capability
/// in any set (effective, permitted, inheritable, ambient, bounding), which it
/// then checks; `no_new_privs` keeps it that way across exec. The execution
/// domain goes back to plain Linux: an inherited `READ_IMPLIES_EXEC` would make
/// readable mappings executable behind the seccomp filter's back.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<()> {
    const STEP: &str = "drop privileges";
    let fail = |what| {
        move |source| JailError::Sys {
            step: STEP,
            what,
            source,
        }
    };
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: personality with a plain persona value.
    if unsafe { libc::personality(0) } < 0 {
        return Err(fail("reset the execution domain")(
            io::Error::last_os_error(),
        ));
    }
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )
    .map_err(fail("clear the ambient capabilities"))?;
    // Dropping from the bounding set needs CAP_SETPCAP: before the uid.
    each_capability(|cap| prctl(libc::PR_CAPBSET_DROP, cap, 0).map(|_| false))
        .map_err(fail("drop the bounding capabilities"))?;
    // SAFETY: credential syscalls with plain integer arguments, and capset
    // and capget with a valid header and room for the two data words they use.
    unsafe {
        sys(STEP, "setgroups", libc::setgroups(0, std::ptr::null()))?;
        sys(STEP, "setresgid", libc::setresgid(gid, gid, gid))?;
        sys(STEP, "setresuid", libc::setresuid(uid, uid, uid))?;
        // A non-root uid has lost them already; root (--allow-root) has not.
        sys(
            STEP,
            "clear the capabilities",
            libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
        )?;
        sys(
            STEP,
            "read the capabilities",
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
        )?;
    }
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0).map_err(fail("set no_new_privs"))?;
    let bounding = each_capability(|cap| prctl(libc::PR_CAPBSET_READ, cap, 0).map(|r| r > 0))
        .map_err(fail("read the bounding capabilities"))?;
    let ambient = each_capability(|cap| {
        prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET as libc::c_ulong,
            cap,
        )
        .map(|r| r > 0)
    })
    .map_err(fail("read the ambient capabilities"))?;
    let sets = data
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0);
    if sets || bounding || ambient {
        return Err(fail("a capability survived")(io::Error::from_raw_os_error(
            libc::EPERM,
        )));
    }
    Ok(())
}

/// Step 13: execs `/<exec-name> --id <id> <args after -->` with an empty
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
