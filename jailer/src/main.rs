//! `ember-jailer`: puts an ember process in its own chroot and cgroups
//! (Firecracker's jailer flags). First cut: see README.md for which steps
//! exist; after them it stops with "exec: not implemented yet" and removes
//! what it created, rather than pretend to jail anything.

mod args;
mod cleanup;
mod env;
mod error;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;

const USAGE: &str = "\
usage: ember-jailer --id <id> --exec-file <path> --uid <uid> --gid <gid>
         [--chroot-base-dir <dir>] [--cgroup <file>=<value>]...
         [--cgroup-version 1|2] [--parent-cgroup <path>]
         [--resource-limit no-file=<n>|fsize=<n>]...
         [--netns <path>] [--daemonize] [--new-pid-ns] [-- <ember args>...]
         (--daemonize and --new-pid-ns are accepted, not applied yet)

Steps implemented so far, in order:
  1. validate arguments (id, exec file, uid/gid, cgroups, limits)
  2. create <chroot-base>/<exec-name>/<id>/root, copy the exec file in
  3. create cgroups <parent-cgroup or exec-name>/<id>, write values, join
  4. setrlimit (no-file defaults to 2048)
  5. join --netns (setns)
Not implemented yet (the jailer stops with an error, after removing what
it created): mount namespace + pivot_root, /dev nodes,
--new-pid-ns, --daemonize, dropping privileges, exec.
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
    let mut created = cleanup::Created::default();
    let cgroup_root = match jail.cgroup_version {
        args::CgroupVersion::V1 => PathBuf::from(env::CGROUP_ROOT),
        args::CgroupVersion::V2 => std::fs::read_to_string("/proc/mounts")
            .ok()
            .and_then(|m| env::cgroup2_mount(&m))
            .unwrap_or_else(|| PathBuf::from(env::CGROUP_ROOT)),
    };
    if let Err(e) = env::run(&jail, &cgroup_root, &mut created) {
        created.undo();
        eprintln!("ember-jailer: {e}");
        std::process::exit(1);
    }
}
