//! The jail steps, one function each, in the order `run` calls them.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{fchown, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::args::{CgroupVersion, JailArgs, Resource, ResourceLimit};
use crate::cleanup::{create_dirs, Created, CreatedCgroup, Made};
use crate::dir::Dir;
use crate::error::{JailError, Result};

/// Where cgroup hierarchies are mounted on the host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// `no-file` bound when `--resource-limit no-file=` is not given (Firecracker).
pub const DEFAULT_NO_FILE: u64 = 2048;

/// The mount point of the cgroup v2 hierarchy in `/proc/mounts` text
/// (`/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid).
pub fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

/// Step 2: makes `<base>/<exec-name>/<id>/root` and puts the exec file in
/// it. The root may exist already, holding what the platform put there for
/// the VM (kernel, drives, snapshot), as with Firecracker's jailer; the id is
/// taken if the exec file is already in it. Returns the root, open, and still
/// root's own (mode 0700) until [`hand_over`] gives it to the jailed user:
/// until then no process of that user can add, swap or remove anything in it.
pub fn setup_chroot(args: &JailArgs, created: &mut Created) -> Result<Rc<Dir>> {
    const STEP: &str = "chroot";
    let made = create_dirs(&args.chroot_base).map_err(JailError::io(
        STEP,
        "create directory",
        &args.chroot_base,
    ))?;
    created.paths.extend(made.into_iter().map(Made::SharedDir));
    // The base is the operator's; resolved once, everything below it is
    // reached one component at a time through open directories.
    let base = fs::canonicalize(&args.chroot_base)
        .and_then(|path| Dir::open(&path))
        .map_err(JailError::io(STEP, "open directory", &args.chroot_base))?;
    let exec_name = args.exec_file_name();
    let (exec_dir, made) = base.make_dir(exec_name, 0o700).map_err(JailError::io(
        STEP,
        "create directory",
        base.join(exec_name),
    ))?;
    if made {
        created
            .paths
            .push(Made::SharedDir(exec_dir.path().to_owned()));
    } else if !exec_dir.is_roots_alone().unwrap_or(false) {
        // Whoever else could write in it could swap `<id>` as it is made.
        return Err(JailError::Invalid {
            step: STEP,
            what: "not root's alone (owned by root, writable by no one else)",
            path: exec_dir.path().to_owned(),
        });
    }
    let exec_dir = Rc::new(exec_dir);
    let (jail_dir, made) = exec_dir.make_dir(&args.id, 0o700).map_err(JailError::io(
        STEP,
        "create directory",
        exec_dir.join(&args.id),
    ))?;
    if made {
        created.entry(&exec_dir, &args.id);
    } else {
        // Whoever could write here could swap `root` itself.
        jail_dir
            .set_owner_and_mode(0, 0, 0o700)
            .map_err(JailError::io(STEP, "take back", jail_dir.path()))?;
    }
    let jail_dir = Rc::new(jail_dir);
    let (root, made) = jail_dir.make_dir("root", 0o700).map_err(JailError::io(
        STEP,
        "create directory",
        jail_dir.join("root"),
    ))?;
    let root = Rc::new(root);
    if made {
        created.entry(&jail_dir, "root");
    } else {
        take_prepared_root(args, &root)?;
    }
    put_exec_file(args, &root, created)?;
    Ok(root)
}

/// Takes a root the platform prepared (or a jail left behind) back from the
/// jailed user before working in it, and refuses one that already holds the
/// exec file (a jail that may be running: left alone) or whose entries, looked
/// at once no one else can change them, are symbolic links. A PID file left
/// behind goes: until step 10 writes the new one, none is there to mislead.
fn take_prepared_root(args: &JailArgs, root: &Dir) -> Result<()> {
    const STEP: &str = "chroot";
    let exec_name = args.exec_file_name();
    if root.contains(exec_name) {
        return Err(JailError::Invalid {
            step: STEP,
            what: "id already in use, the jail already holds",
            path: root.join(exec_name),
        });
    }
    root.set_owner_and_mode(0, 0, 0o700)
        .map_err(JailError::io(STEP, "take back", root.path()))?;
    let links = root
        .symlinks()
        .map_err(JailError::io(STEP, "list", root.path()))?;
    if let Some(link) = links.first() {
        return Err(JailError::Invalid {
            step: STEP,
            what: "the prepared root holds a symbolic link",
            path: root.join(link),
        });
    }
    let pid_file = args.pid_file_name();
    match root.remove_file(&pid_file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(JailError::io(STEP, "remove", root.join(&pid_file))(e))
        }
        _ => Ok(()),
    }
}

/// Puts the exec file (the canonical `--exec-file`) in the root: hard-linked
/// when nothing in the jail can change it, else copied.
fn put_exec_file(args: &JailArgs, root: &Rc<Dir>, created: &mut Created) -> Result<()> {
    const STEP: &str = "chroot";
    let name = args.exec_file_name();
    let dest = root.join(name);
    let taken = |e: io::Error| match e.kind() {
        io::ErrorKind::AlreadyExists => JailError::Invalid {
            step: STEP,
            what: "id already in use, the jail already holds",
            path: dest.clone(),
        },
        _ => JailError::io(STEP, "copy exec file to", &dest)(e),
    };
    // A link shares the host binary's inode with the jail, which is safe only
    // if no one in the jail can change that inode: it is root's, writable by
    // root alone, without set-id bits, and the jailed user is not root (who
    // would own it), and has no capability left to override its mode. The
    // jailed user can then only run it or unlink its own name for it. A link
    // takes microseconds where a copy takes milliseconds.
    let mut source = fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&args.exec_source)
        .map_err(JailError::io(STEP, "open exec file", &args.exec_source))?;
    let shareable = args.uid != 0
        && source
            .metadata()
            .is_ok_and(|m| m.uid() == 0 && m.mode() & 0o7022 == 0 && m.mode() & 0o005 == 0o005);
    if shareable {
        match root.link(&source, name) {
            Ok(()) => {
                created.entry(root, name);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(taken(e)),
            // Another file system: copy.
            Err(_) => {}
        }
    }
    let mut copy = root.create_file(name, 0o700).map_err(taken)?;
    created.entry(root, name);
    io::copy(&mut source, &mut copy).map_err(JailError::io(STEP, "copy exec file to", &dest))?;
    let links = copy
        .metadata()
        .map_err(JailError::io(STEP, "check", &dest))?
        .nlink();
    if links != 1 {
        return Err(JailError::Invalid {
            step: STEP,
            what: "the exec file's copy gained another link",
            path: dest,
        });
    }
    // Read and run by the jailed user alone; not writable even by it.
    fchown(&copy, Some(args.uid), Some(args.gid)).map_err(JailError::io(STEP, "chown", &dest))?;
    copy.set_permissions(fs::Permissions::from_mode(0o500))
        .map_err(JailError::io(STEP, "chmod", &dest))
}

/// The device nodes ember may need, by their host path; only `/dev/kvm` must exist.
const DEVICES: [(&str, bool); 3] = [
    ("/dev/kvm", true),
    ("/dev/net/tun", false),
    ("/dev/userfaultfd", false),
];

/// A directory of the root for ember: made, or one already there taken back
/// (root-owned, 0700) until [`hand_over`].
fn jail_dir(parent: &Rc<Dir>, name: &str, created: &mut Created) -> Result<Rc<Dir>> {
    const STEP: &str = "dev";
    let (dir, made) = parent.make_dir(name, 0o700).map_err(JailError::io(
        STEP,
        "create directory",
        parent.join(name),
    ))?;
    if made {
        created.entry(parent, name);
    } else {
        dir.set_owner_and_mode(0, 0, 0o700).map_err(JailError::io(
            STEP,
            "take back",
            dir.path(),
        ))?;
    }
    Ok(Rc::new(dir))
}

/// Step 3: creates the jail's `/dev` nodes, with the host's device numbers,
/// owned by uid:gid and readable and writable by them only, and `/run` for
/// ember's sockets. Returns the directories to hand over.
pub fn create_dev_nodes(
    args: &JailArgs,
    root: &Rc<Dir>,
    created: &mut Created,
) -> Result<Vec<Rc<Dir>>> {
    const STEP: &str = "dev";
    let dev = jail_dir(root, "dev", created)?;
    let net = jail_dir(&dev, "net", created)?;
    for (host, required) in DEVICES {
        let rdev = match fs::metadata(host) {
            Ok(m) if m.file_type().is_char_device() => m.rdev(),
            Ok(_) => {
                return Err(JailError::Invalid {
                    step: STEP,
                    what: "not a character device",
                    path: host.into(),
                })
            }
            Err(_) if !required => continue,
            Err(e) => return Err(JailError::io(STEP, "find device", host)(e)),
        };
        let (dir, name) = match host.strip_prefix("/dev/net/") {
            Some(name) => (&net, name),
            None => (&dev, host.trim_start_matches("/dev/")),
        };
        dir.make_char_device(name, 0o600, rdev)
            .map_err(JailError::io(STEP, "mknod", dir.join(name)))?;
        created.entry(dir, name);
        // The directory is root's until the hand-over: `name` is the node just made.
        dir.chown_entry(name, args.uid, args.gid)
            .map_err(JailError::io(STEP, "chown", dir.join(name)))?;
    }
    let run = jail_dir(root, "run", created)?;
    Ok(vec![net, dev, run])
}

/// Step 3, last: gives the jail's directories, the root last, to uid:gid, mode 0700.
pub fn hand_over(args: &JailArgs, root: &Dir, dirs: &[Rc<Dir>]) -> Result<()> {
    for dir in dirs.iter().map(Rc::as_ref).chain([root]) {
        dir.set_owner_and_mode(args.uid, args.gid, 0o700)
            .map_err(JailError::io("chroot", "chown", dir.path()))?;
    }
    Ok(())
}

/// Step 4: for each controller named by `--cgroup`, creates
/// `<parent-cgroup or exec-name>/<id>` under its hierarchy in `cgroup_root`,
/// writes the values, then moves this process in (`tasks` for v1,
/// `cgroup.procs` for v2). `cgroup_root` is `CGROUP_ROOT` outside tests.
pub fn setup_cgroups(args: &JailArgs, cgroup_root: &Path, created: &mut Created) -> Result<()> {
    if args.cgroups.is_empty() {
        return Ok(());
    }
    match args.cgroup_version {
        CgroupVersion::V1 => setup_cgroups_v1(args, cgroup_root, created),
        CgroupVersion::V2 => setup_cgroups_v2(args, cgroup_root, created),
    }
}

fn write_file(step: &'static str, path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(JailError::io(step, "write", path))
}

/// Creates `leaf` (failing if it exists) and records it for cleanup.
fn create_cgroup(step: &'static str, leaf: &Path, created: &mut Created) -> Result<usize> {
    let parent = leaf.parent().unwrap_or(leaf);
    let parents = create_dirs(parent).map_err(JailError::io(step, "create cgroup", parent))?;
    if let Err(e) = fs::create_dir(leaf) {
        for p in parents.iter().rev() {
            let _ = fs::remove_dir(p);
        }
        return Err(JailError::io(step, "create cgroup", leaf)(e));
    }
    created.cgroups.push(CreatedCgroup {
        leaf: leaf.to_owned(),
        parents,
        moved_in: None,
    });
    Ok(created.cgroups.len() - 1)
}

fn setup_cgroups_v1(args: &JailArgs, root: &Path, created: &mut Created) -> Result<()> {
    const STEP: &str = "cgroup";
    let rel = args.cgroup_rel();
    // One directory per hierarchy, in first-mention order. Controllers may
    // share a hierarchy (`cpu` and `cpuacct` -> `cpu,cpuacct`), so group
    // them by the canonical mount path.
    let mut hierarchies: Vec<PathBuf> = Vec::new();
    let mut files: Vec<(usize, &str, &str)> = Vec::new();
    for c in &args.cgroups {
        let base = root.join(c.controller());
        let canon = match fs::canonicalize(&base) {
            Ok(p) if p.is_dir() => p,
            _ => {
                return Err(JailError::Invalid {
                    step: STEP,
                    what: "cgroup v1 controller not mounted at",
                    path: base,
                })
            }
        };
        let h = match hierarchies.iter().position(|p| *p == canon) {
            Some(h) => h,
            None => {
                hierarchies.push(canon);
                hierarchies.len() - 1
            }
        };
        files.push((h, &c.file, &c.value));
    }
    let mut made = Vec::new();
    for base in &hierarchies {
        let leaf = base.join(&rel);
        made.push(create_cgroup(STEP, &leaf, created)?);
    }
    for (h, file, value) in files {
        write_file(STEP, &hierarchies[h].join(&rel).join(file), value)?;
    }
    let pid = std::process::id().to_string();
    for (idx, base) in made.into_iter().zip(&hierarchies) {
        let leaf = created.cgroups[idx].leaf.clone();
        created.cgroups[idx].moved_in = Some(base.join("tasks"));
        write_file(STEP, &leaf.join("tasks"), &pid)?;
    }
    Ok(())
}

fn setup_cgroups_v2(args: &JailArgs, root: &Path, created: &mut Created) -> Result<()> {
    const STEP: &str = "cgroup";
    let avail_path = root.join("cgroup.controllers");
    let avail =
        fs::read_to_string(&avail_path).map_err(JailError::io(STEP, "read", &avail_path))?;
    let avail: Vec<&str> = avail.split_whitespace().collect();
    let mut controllers: Vec<&str> = Vec::new();
    for c in &args.cgroups {
        let ctrl = c.controller();
        if !avail.contains(&ctrl) {
            return Err(JailError::Invalid {
                step: STEP,
                what: "cgroup v2 controller not available, see",
                path: avail_path,
            });
        }
        if !controllers.contains(&ctrl) {
            controllers.push(ctrl);
        }
    }
    let rel = args.cgroup_rel();
    let leaf = root.join(&rel);
    let idx = create_cgroup(STEP, &leaf, created)?;
    // Enable the controllers from the root down to the leaf's parent.
    let enable: String = controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut dir = root.to_owned();
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    write_file(STEP, &dir.join("cgroup.subtree_control"), &enable)?;
    for comp in parent_rel.components() {
        dir.push(comp);
        write_file(STEP, &dir.join("cgroup.subtree_control"), &enable)?;
    }
    for c in &args.cgroups {
        write_file(STEP, &leaf.join(&c.file), &c.value)?;
    }
    created.cgroups[idx].moved_in = Some(root.join("cgroup.procs"));
    write_file(
        STEP,
        &leaf.join("cgroup.procs"),
        &std::process::id().to_string(),
    )
}

/// The limits step 5 applies: the given ones, plus `no-file` = 2048 when
/// it is not given.
pub fn effective_limits(given: &[ResourceLimit]) -> Vec<ResourceLimit> {
    let mut v = given.to_vec();
    if !v.iter().any(|l| l.resource == Resource::NoFile) {
        v.push(ResourceLimit {
            resource: Resource::NoFile,
            value: DEFAULT_NO_FILE,
        });
    }
    v
}

/// Step 5: sets soft and hard limits with setrlimit.
pub fn set_resource_limits(given: &[ResourceLimit]) -> Result<()> {
    for l in effective_limits(given) {
        let (res, what) = match l.resource {
            Resource::NoFile => (libc::RLIMIT_NOFILE, "setrlimit no-file"),
            Resource::Fsize => (libc::RLIMIT_FSIZE, "setrlimit fsize"),
        };
        let lim = libc::rlimit {
            rlim_cur: l.value as libc::rlim_t,
            rlim_max: l.value as libc::rlim_t,
        };
        // SAFETY: `lim` is a valid rlimit that outlives the call.
        if unsafe { libc::setrlimit(res, &lim) } != 0 {
            return Err(JailError::Sys {
                step: "rlimit",
                what,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Step 6: joins the network namespace at `--netns` (setns), if given.
pub fn join_netns(netns: Option<&Path>) -> Result<()> {
    const STEP: &str = "netns";
    let Some(path) = netns else {
        return Ok(());
    };
    let f = fs::File::open(path).map_err(JailError::io(STEP, "open", path))?;
    // SAFETY: `f` is an open file descriptor for the duration of the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(JailError::io(STEP, "join network namespace", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Runs the steps that act on the host, in order; returns the chroot
/// directory. The caller undoes `created` on error.
pub fn run(args: &JailArgs, cgroup_root: &Path, created: &mut Created) -> Result<Rc<Dir>> {
    let root = setup_chroot(args, created)?;
    // Written after the pivot (step 10), where nothing more can be recorded;
    // a PID file left in a prepared root is replaced then anyway.
    created.entry(&root, args.pid_file_name());
    let dirs = create_dev_nodes(args, &root, created)?;
    hand_over(args, &root, &dirs)?;
    setup_cgroups(args, cgroup_root, created)?;
    set_resource_limits(&args.resource_limits)?;
    join_netns(args.netns.as_deref())?;
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::CgroupSetting;
    use std::os::unix::fs::MetadataExt;
    use vmm_sys_util::tempdir::TempDir;

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    /// Args for a jail under `dir`: exec file `dir/bin/ember`, chroot base
    /// `dir/base`; uid/gid are ours unless we are root.
    fn args(dir: &Path, id: &str) -> JailArgs {
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).unwrap();
        let exec = bin.join("ember");
        fs::write(&exec, b"#!/bin/true\n").unwrap();
        fs::set_permissions(&exec, fs::Permissions::from_mode(0o700)).unwrap();
        let (uid, gid) = if is_root() {
            (123, 100)
        } else {
            // SAFETY: getuid/getgid have no preconditions.
            unsafe { (libc::getuid(), libc::getgid()) }
        };
        JailArgs {
            id: id.into(),
            exec_source: exec.clone(),
            exec_file: exec,
            uid,
            gid,
            chroot_base: dir.join("base"),
            netns: None,
            daemonize: false,
            new_pid_ns: false,
            cgroups: Vec::new(),
            cgroup_version: CgroupVersion::V1,
            parent_cgroup: None,
            resource_limits: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    fn cg(file: &str, value: &str) -> CgroupSetting {
        CgroupSetting {
            file: file.into(),
            value: value.into(),
        }
    }

    fn mode_and_owner(path: &Path) -> (u32, u32, u32) {
        let m = fs::symlink_metadata(path).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    }

    #[test]
    fn chroot_created_with_exec_copy_and_undone() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-1");
        let mut created = Created::default();
        let root = setup_chroot(&a, &mut created).unwrap();
        assert_eq!(root.path(), t.as_path().join("base/ember/vm-1/root"));
        // Root's own until the hand-over.
        assert_eq!(mode_and_owner(root.path()).0, 0o700);
        let copy = root.path().join("ember");
        assert_eq!(mode_and_owner(&copy), (0o500, a.uid, a.gid));
        assert_eq!(fs::read(&copy).unwrap(), b"#!/bin/true\n");
        // The original is a separate file, untouched.
        let orig = fs::metadata(&a.exec_file).unwrap();
        assert_ne!(orig.ino(), fs::metadata(&copy).unwrap().ino());
        assert_eq!(orig.mode() & 0o7777, 0o700);
        hand_over(&a, &root, &[]).unwrap();
        assert_eq!(mode_and_owner(root.path()), (0o700, a.uid, a.gid));

        created.undo();
        // base/ and base/ember/ were made by this run: all gone.
        assert!(!t.as_path().join("base").exists());
    }

    #[test]
    fn a_symlinked_exec_file_puts_the_file_itself_in_the_jail() {
        let t = TempDir::new().expect("a temporary directory");
        let mut a = args(t.as_path(), "vm-l");
        let link = t.as_path().join("bin/ember-link");
        std::os::unix::fs::symlink(&a.exec_file, &link).unwrap();
        a.exec_source = crate::args::validate_exec_file(&link).unwrap();
        a.exec_file = link;
        let mut created = Created::default();
        let root = setup_chroot(&a, &mut created).unwrap();
        let inside = root.path().join("ember-link");
        assert!(fs::symlink_metadata(&inside).unwrap().is_file());
        assert_eq!(fs::read(&inside).unwrap(), b"#!/bin/true\n");
        created.undo();
    }

    #[test]
    fn root_owned_world_executable_binary_is_linked_not_copied() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-link");
        fs::set_permissions(&a.exec_file, fs::Permissions::from_mode(0o755)).unwrap();
        let orig = fs::metadata(&a.exec_file).unwrap();
        let mut created = Created::default();
        let root = setup_chroot(&a, &mut created).unwrap();
        let inside = fs::metadata(root.path().join("ember")).unwrap();
        // Only a root-owned original is shared, with a jailed user other than
        // root; the tests may run as another user.
        assert_eq!(inside.ino() == orig.ino(), orig.uid() == 0 && a.uid != 0);
        let after = fs::metadata(&a.exec_file).unwrap();
        assert_eq!(
            (after.uid(), after.mode() & 0o7777),
            (orig.uid(), 0o755),
            "the original is untouched"
        );
        created.undo();
        assert!(fs::metadata(&a.exec_file).is_ok());
    }

    #[test]
    fn taken_id_fails_and_keeps_the_existing_jail() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-1");
        let existing = t.as_path().join("base/ember/vm-1/root/ember");
        fs::create_dir_all(existing.parent().unwrap()).unwrap();
        fs::write(&existing, b"running").unwrap();
        let before = mode_and_owner(existing.parent().unwrap());
        let mut created = Created::default();
        let e = setup_chroot(&a, &mut created).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "chroot: id already in use, the jail already holds '{}'",
                existing.display()
            )
        );
        created.undo();
        assert_eq!(fs::read(&existing).unwrap(), b"running");
        assert_eq!(mode_and_owner(existing.parent().unwrap()), before);
    }

    #[test]
    fn a_root_the_platform_prepared_is_used_and_only_our_additions_undone() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-2");
        let root = t.as_path().join("base/ember/vm-2/root");
        fs::create_dir_all(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(root.join("kernel.elf"), b"kernel").unwrap();
        let mut created = Created::default();
        let dir = setup_chroot(&a, &mut created).unwrap();
        assert_eq!(dir.path(), root);
        // Taken back from everyone until the hand-over.
        assert_eq!(mode_and_owner(&root).0, 0o700);
        assert!(root.join("ember").exists());
        created.undo();
        assert!(!root.join("ember").exists());
        assert_eq!(fs::read(root.join("kernel.elf")).unwrap(), b"kernel");
    }

    #[test]
    fn a_prepared_root_with_a_symbolic_link_is_refused_untouched() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-s");
        let host = t.as_path().join("host-etc");
        fs::create_dir(&host).unwrap();
        let root = t.as_path().join("base/ember/vm-s/root");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&host, root.join("run")).unwrap();
        let before = mode_and_owner(&host);
        let mut created = Created::default();
        let e = setup_chroot(&a, &mut created).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "chroot: the prepared root holds a symbolic link '{}'",
                root.join("run").display()
            )
        );
        created.undo();
        assert_eq!(mode_and_owner(&host), before);
        assert!(fs::symlink_metadata(root.join("run")).unwrap().is_symlink());
    }

    #[test]
    fn undo_removes_through_descriptors_not_through_a_swapped_dev() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-d");
        let root_path = t.as_path().join("base/ember/vm-d/root");
        fs::create_dir_all(&root_path).unwrap();
        let mut created = Created::default();
        let root = setup_chroot(&a, &mut created).unwrap();
        // What step 3 records for `dev/net`, made by hand (mknod needs root).
        let (dev, _) = root.make_dir("dev", 0o700).unwrap();
        let dev = Rc::new(dev);
        created.entry(&root, "dev");
        dev.make_dir("net", 0o700).unwrap();
        created.entry(&dev, "net");
        // The jailed user swaps `dev` for a link to the host's /dev.
        let host_dev = t.as_path().join("host-dev");
        fs::create_dir_all(host_dev.join("net")).unwrap();
        fs::write(host_dev.join("net/tun"), b"host").unwrap();
        fs::rename(root_path.join("dev"), t.as_path().join("moved-dev")).unwrap();
        std::os::unix::fs::symlink(&host_dev, root_path.join("dev")).unwrap();
        created.undo();
        assert_eq!(fs::read(host_dev.join("net/tun")).unwrap(), b"host");
        assert!(!root_path.join("dev").exists(), "the link itself goes");
    }

    #[test]
    fn undo_keeps_preexisting_parents() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-2");
        fs::create_dir_all(t.as_path().join("base/ember/other")).unwrap();
        let mut created = Created::default();
        setup_chroot(&a, &mut created).unwrap();
        created.undo();
        assert!(!t.as_path().join("base/ember/vm-2").exists());
        assert!(t.as_path().join("base/ember/other").is_dir());
    }

    #[test]
    fn cgroups_v1_in_a_fake_hierarchy() {
        let t = TempDir::new().expect("a temporary directory");
        let cgroot = t.as_path().join("cgroup");
        for c in ["cpu", "pids"] {
            fs::create_dir_all(cgroot.join(c)).unwrap();
        }
        let mut a = args(t.as_path(), "vm-3");
        a.cgroups = vec![
            cg("cpu.shares", "512"),
            cg("pids.max", "64"),
            cg("cpu.cfs_quota_us", "5000"),
        ];
        let mut created = Created::default();
        setup_cgroups(&a, &cgroot, &mut created).unwrap();
        let pid = std::process::id().to_string();
        let cpu = cgroot.join("cpu/ember/vm-3");
        assert_eq!(fs::read_to_string(cpu.join("cpu.shares")).unwrap(), "512");
        assert_eq!(
            fs::read_to_string(cpu.join("cpu.cfs_quota_us")).unwrap(),
            "5000"
        );
        assert_eq!(fs::read_to_string(cpu.join("tasks")).unwrap(), pid);
        let pids = cgroot.join("pids/ember/vm-3");
        assert_eq!(fs::read_to_string(pids.join("pids.max")).unwrap(), "64");
        assert_eq!(fs::read_to_string(pids.join("tasks")).unwrap(), pid);
        assert_eq!(created.cgroups.len(), 2);

        created.undo();
        // Moved back to each hierarchy root, our directories gone.
        assert_eq!(fs::read_to_string(cgroot.join("cpu/tasks")).unwrap(), pid);
        assert!(!cgroot.join("cpu/ember").exists());
        assert!(!cgroot.join("pids/ember").exists());
    }

    #[test]
    fn cgroups_v1_shared_hierarchy() {
        let t = TempDir::new().expect("a temporary directory");
        let cgroot = t.as_path().join("cgroup");
        fs::create_dir_all(cgroot.join("cpu,cpuacct")).unwrap();
        for c in ["cpu", "cpuacct"] {
            std::os::unix::fs::symlink("cpu,cpuacct", cgroot.join(c)).unwrap();
        }
        let mut a = args(t.as_path(), "vm-9");
        a.cgroups = vec![cg("cpu.shares", "3"), cg("cpuacct.x", "4")];
        let mut created = Created::default();
        setup_cgroups(&a, &cgroot, &mut created).unwrap();
        assert_eq!(created.cgroups.len(), 1);
        let leaf = cgroot.join("cpu,cpuacct/ember/vm-9");
        assert_eq!(fs::read_to_string(leaf.join("cpu.shares")).unwrap(), "3");
        assert_eq!(fs::read_to_string(leaf.join("cpuacct.x")).unwrap(), "4");
        created.undo();
        assert!(!cgroot.join("cpu,cpuacct/ember").exists());
    }

    #[test]
    fn cgroups_v1_parent_and_missing_controller() {
        let t = TempDir::new().expect("a temporary directory");
        let cgroot = t.as_path().join("cgroup");
        fs::create_dir_all(cgroot.join("cpu/fleet")).unwrap();
        let mut a = args(t.as_path(), "vm-4");
        a.parent_cgroup = Some("fleet/a".into());
        a.cgroups = vec![cg("cpu.shares", "2"), cg("memory.limit_in_bytes", "1")];
        let mut created = Created::default();
        let e = setup_cgroups(&a, &cgroot, &mut created)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "cgroup: cgroup v1 controller not mounted at '{}'",
                cgroot.join("memory").display()
            )
        );
        // Every controller is checked before anything is created.
        assert!(created.cgroups.is_empty());
        assert!(!cgroot.join("cpu/fleet/a").exists());
        created.undo();
        assert!(!cgroot.join("cpu/fleet/a").exists());
        assert!(cgroot.join("cpu/fleet").is_dir());
    }

    #[test]
    fn cgroup_v1_taken_leaf_is_not_removed() {
        let t = TempDir::new().expect("a temporary directory");
        let cgroot = t.as_path().join("cgroup");
        fs::create_dir_all(cgroot.join("cpu/ember/vm-5")).unwrap();
        let mut a = args(t.as_path(), "vm-5");
        a.cgroups = vec![cg("cpu.shares", "2")];
        let mut created = Created::default();
        let e = setup_cgroups(&a, &cgroot, &mut created)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cgroup: create cgroup '"), "{e}");
        created.undo();
        assert!(cgroot.join("cpu/ember/vm-5").is_dir());
    }

    /// A directory laid out like a cgroup v2 mount.
    fn fake_v2(t: &TempDir) -> PathBuf {
        let root = t.as_path().join("unified");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        fs::write(root.join("cgroup.procs"), "").unwrap();
        root
    }

    #[test]
    fn cgroups_v2_in_a_fake_hierarchy() {
        let t = TempDir::new().expect("a temporary directory");
        let root = fake_v2(&t);
        let mut a = args(t.as_path(), "vm-6");
        a.cgroup_version = CgroupVersion::V2;
        a.parent_cgroup = Some("fleet".into());
        a.cgroups = vec![cg("memory.max", "1000000"), cg("cpu.max", "5000 10000")];
        let mut created = Created::default();
        setup_cgroups(&a, &root, &mut created).unwrap();
        let leaf = root.join("fleet/vm-6");
        assert_eq!(
            fs::read_to_string(leaf.join("memory.max")).unwrap(),
            "1000000"
        );
        assert_eq!(
            fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "5000 10000"
        );
        for d in [root.clone(), root.join("fleet")] {
            assert_eq!(
                fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(),
                "+memory +cpu"
            );
        }
        let pid = std::process::id().to_string();
        assert_eq!(fs::read_to_string(leaf.join("cgroup.procs")).unwrap(), pid);
        created.undo();
        assert_eq!(fs::read_to_string(root.join("cgroup.procs")).unwrap(), pid);
        assert!(!leaf.exists());
    }

    #[test]
    fn cgroups_v2_unavailable_controller() {
        let t = TempDir::new().expect("a temporary directory");
        let root = fake_v2(&t);
        let mut a = args(t.as_path(), "vm-7");
        a.cgroup_version = CgroupVersion::V2;
        a.cgroups = vec![cg("hugetlb.2MB.max", "0")];
        let mut created = Created::default();
        let e = setup_cgroups(&a, &root, &mut created)
            .unwrap_err()
            .to_string();
        assert!(e.contains("controller not available"), "{e}");
        assert!(created.cgroups.is_empty());
        assert!(!root.join("ember").exists());
    }

    #[test]
    fn no_cgroups_touches_nothing() {
        let t = TempDir::new().expect("a temporary directory");
        let a = args(t.as_path(), "vm-8");
        let mut created = Created::default();
        setup_cgroups(&a, Path::new("/nonexistent"), &mut created).unwrap();
        assert!(created.cgroups.is_empty());
    }

    #[test]
    fn finds_cgroup2_mount() {
        let m = "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                 cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(m),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn netns_join_and_failures() {
        join_netns(None).unwrap();
        let t = TempDir::new().expect("a temporary directory");
        let missing = t.as_path().join("missing");
        let e = join_netns(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("netns: open '{}': ", missing.display())),
            "{e}"
        );
        // Not a namespace file: setns refuses it.
        let plain = t.as_path().join("plain");
        fs::write(&plain, b"").unwrap();
        let e = join_netns(Some(&plain)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "netns: join network namespace '{}': ",
                plain.display()
            )),
            "{e}"
        );
        if is_root() {
            // Joining the namespace we are already in (this thread only).
            join_netns(Some(Path::new("/proc/self/ns/net"))).unwrap();
        }
    }

    #[test]
    fn default_no_file_limit() {
        let nf = |v| ResourceLimit {
            resource: Resource::NoFile,
            value: v,
        };
        let fs = ResourceLimit {
            resource: Resource::Fsize,
            value: 10,
        };
        assert_eq!(effective_limits(&[]), vec![nf(DEFAULT_NO_FILE)]);
        assert_eq!(effective_limits(&[fs]), vec![fs, nf(DEFAULT_NO_FILE)]);
        assert_eq!(effective_limits(&[nf(7), fs]), vec![nf(7), fs]);
    }

    fn getrlimit(res: libc::__rlimit_resource_t) -> (libc::rlim_t, libc::rlim_t) {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `l` is a valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(res, &mut l) }, 0);
        (l.rlim_cur, l.rlim_max)
    }

    #[test]
    fn setrlimit_applies_and_reports_failure() {
        // Re-apply the current hard limits (harmless to the test process).
        let (_, nofile) = getrlimit(libc::RLIMIT_NOFILE);
        let (_, fsize) = getrlimit(libc::RLIMIT_FSIZE);
        set_resource_limits(&[
            ResourceLimit {
                resource: Resource::NoFile,
                value: nofile,
            },
            ResourceLimit {
                resource: Resource::Fsize,
                value: fsize,
            },
        ])
        .unwrap();
        assert_eq!(getrlimit(libc::RLIMIT_NOFILE), (nofile, nofile));
        assert_eq!(getrlimit(libc::RLIMIT_FSIZE), (fsize, fsize));
        // Above fs.nr_open: refused even for root.
        let e = set_resource_limits(&[ResourceLimit {
            resource: Resource::NoFile,
            value: u64::MAX,
        }])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("rlimit: setrlimit no-file: "), "{e}");
    }
}
