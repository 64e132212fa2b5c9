//! `ember-jailer`: puts one ember process in its own chroot, namespaces and
//! cgroups, with resource limits and no privileges, then execs it
//! (Firecracker's jailer flags; see README.md for the steps).

mod args;
mod cell;
mod cleanup;
mod dir;
mod env;
mod error;
mod watcher;

use std::path::PathBuf;

const USAGE: &str = "\
usage: ember-jailer --id <id> --exec-file <path> --uid <uid> --gid <gid>
         [--chroot-base-dir <dir>] [--cgroup <file>=<value>]...
         [--cgroup-version 1|2] [--parent-cgroup <path>]
         [--resource-limit no-file=<n>|fsize=<n>]...
         [--netns <path>] [--daemonize] [--new-pid-ns] [--allow-root]
         [-- <ember args>...]

Runs <exec-file> as uid:gid in <chroot-base>/<exec-name>/<id>/root, as
'/<exec-name> --id <id> <ember args>', in its own mount namespace (and PID
namespace with --new-pid-ns), in cgroups <parent-cgroup or exec-name>/<id>,
with /dev/kvm, /dev/net/tun and /dev/userfaultfd, and no capabilities.
uid or gid 0 needs --allow-root. Any failure prints one line naming the step and path, exits non-zero and
removes what the run created.
";

fn main() {
    let cmd = match args::parse(std::env::args_os().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ember-jailer: {e}");
            eprintln!("try 'ember-jailer --help'");
            std::process::exit(2);
        }
    };
    let jail = match cmd {
        args::Command::Help => {
            print!("{USAGE}");
            return;
        }
        args::Command::Jail(j) => j,
    };
    // What the jailer makes is its own and ember's alone, whatever the caller's umask.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o077) };
    // Descriptors 0 to 2 are stdio: a caller that closed one would see the
    // next file the jailer opens (a directory of the jail, say) take its
    // place, and ember inherit it.
    // SAFETY: fcntl probes a descriptor number; open returns the lowest free one.
    unsafe {
        while libc::fcntl(2, libc::F_GETFD) < 0 {
            if libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) < 0 {
                eprintln!("ember-jailer: cannot open /dev/null");
                std::process::exit(1);
            }
        }
    }
    let mut created = cleanup::Created::default();
    let cgroup_root = match jail.cgroup_version {
        args::CgroupVersion::V1 => PathBuf::from(env::CGROUP_ROOT),
        args::CgroupVersion::V2 => std::fs::read_to_string("/proc/mounts")
            .ok()
            .and_then(|m| env::cgroup2_mount(&m))
            .unwrap_or_else(|| PathBuf::from(env::CGROUP_ROOT)),
    };
    // Host-side steps: on failure the jailer cleans up itself.
    let prepared = env::run(&jail, &cgroup_root, &mut created).and_then(|root| {
        let dev_null = std::fs::File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(error::JailError::io("daemonize", "open", "/dev/null"))?;
        let report = watcher::spawn(&mut created)?;
        Ok((root, dev_null, report))
    });
    let (root, dev_null, report) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            created.undo();
            eprintln!("ember-jailer: {e}");
            std::process::exit(1);
        }
    };
    // From here on the host is out of reach: the watcher cleans up.
    let entered = (|| {
        cell::pivot_into(root.path())?;
        if jail.daemonize {
            cell::daemonize(&dev_null)?;
        }
        drop(dev_null);
        cell::write_pid_file(&jail, &root)?;
        drop(root);
        cell::close_inherited_fds(report.fd())?;
        cell::drop_privileges(jail.uid, jail.gid)
    })();
    let error = match entered {
        Ok(()) => cell::exec(&jail),
        Err(e) => e,
    };
    report.fail(&error)
}
