//! One function VM: a jailed ember started by `ember-jailer` from a jail the
//! shim prepares in the task's bundle, and everything it leaves on the host.
//!
//! The bundle (`<bundle>/jail/ember/<jail id>/root`) holds the jail, so the
//! task's files live and die with it; the unikernel is copied in from the
//! image (resolved inside the image's root, so a symlink in a hostile image
//! cannot reach host files), with the VM's config file beside it. Each VM runs
//! as a uid and gid of its own, leased from [`UID_BASE`] upwards, so that one
//! VMM cannot touch another's files or processes.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Seek, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cache::{self, Cache, Claim};
use crate::function::Function;
use crate::network::{self, Attached, PodNetwork};

/// The first uid (and gid) the shim gives a VM.
pub const UID_BASE: u32 = 1_000_000;
/// How many VMs can run at once on a host.
const UID_RANGE: u32 = 1 << 20;
/// Where the leases of uids live (one file per uid in use).
const UID_DIR: &str = "/run/ember-shim/uids";
/// The guest's vsock CID and the socket's path inside the jail.
const GUEST_CID: u32 = 3;
pub const VSOCK_PATH: &str = "/run/v.sock";
/// ember's API socket inside the jail.
pub const API_PATH: &str = "/run/api.sock";
/// The unikernel's and the config file's names in the jail.
const KERNEL_NAME: &str = "function";
const CONFIG_NAME: &str = "vm.json";
/// The MMDS data a VM on a pod network starts with.
const METADATA_NAME: &str = "metadata.json";
/// Where in the jail the first VM of a function writes its snapshot.
pub const SNAPSHOT_DIR: &str = "snapshot";
/// Where a jail's cgroup goes when the spec names none (or a systemd slice).
const DEFAULT_CGROUP_PARENT: &str = "ember";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot find {what} ('{path}'): install it next to the shim or set {var}")]
    Binary {
        what: &'static str,
        path: PathBuf,
        var: &'static str,
    },
    #[error("the image has no unikernel at '{path}': {source}")]
    Kernel {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no free uid between {UID_BASE} and {}", UID_BASE + UID_RANGE)]
    NoUid,
    #[error("snapshot cache: {0}")]
    Cache(#[from] cache::Error),
    #[error("pod network: {0}")]
    Network(#[from] network::Error),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// The programs a VM needs: `ember-jailer` and the statically linked `ember`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub jailer: PathBuf,
    pub ember: PathBuf,
}

impl Binaries {
    /// `$EMBER_SHIM_JAILER` and `$EMBER_SHIM_EMBER`, or the files next to the shim.
    pub fn find() -> Result<Binaries, Error> {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_default();
        let find = |var: &'static str, name: &str, what: &'static str| {
            let path = std::env::var_os(var).map_or_else(|| beside.join(name), PathBuf::from);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Binary { what, path, var })
            }
        };
        Ok(Binaries {
            jailer: find("EMBER_SHIM_JAILER", "ember-jailer", "ember-jailer")?,
            ember: find("EMBER_SHIM_EMBER", "ember", "ember")?,
        })
    }
}

/// A uid (and the gid of the same number) leased to one VM until dropped.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    file: PathBuf,
}

impl UidLease {
    /// Leases a free uid, starting from a hash of `key` so that tasks rarely
    /// probe each other's.
    pub fn take(key: &str) -> Result<UidLease, Error> {
        std::fs::create_dir_all(UID_DIR).map_err(io("cannot create", Path::new(UID_DIR)))?;
        let start = key.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        for probe in 0..UID_RANGE {
            let uid = UID_BASE + (start.wrapping_add(probe) % UID_RANGE);
            let file = Path::new(UID_DIR).join(uid.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&file) {
                Ok(_) => return Ok(UidLease { uid, file }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("cannot lease a uid at", &file)(e)),
            }
        }
        Err(Error::NoUid)
    }

    /// The lease of `uid` that a shim now gone recorded.
    pub fn reclaim(uid: u32) -> UidLease {
        UidLease {
            uid,
            file: Path::new(UID_DIR).join(uid.to_string()),
        }
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Where a task's jail lives.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// `--chroot-base-dir`: `<bundle>/jail`.
    pub base: PathBuf,
    /// `--id`.
    pub jail_id: String,
    /// The cgroup hierarchy version of the host, and the jail's parent cgroup.
    pub cgroup_v2: bool,
    pub cgroup_parent: String,
    /// The pod network the VM joined, if any: undone with the jail.
    pub network: Option<Attached>,
}

impl Layout {
    pub fn new(bundle: &Path, task_id: &str, cgroups_path: Option<&str>) -> Layout {
        Layout {
            base: bundle.join("jail"),
            jail_id: jail_id(task_id),
            cgroup_v2: Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            cgroup_parent: cgroup_parent(cgroups_path),
            network: None,
        }
    }

    /// `<base>/ember/<id>`: what the jailer makes and the shim removes.
    pub fn jail_dir(&self) -> PathBuf {
        self.base.join("ember").join(&self.jail_id)
    }

    pub fn root(&self) -> PathBuf {
        self.jail_dir().join("root")
    }

    /// ember's API socket as the host reaches it.
    pub fn api_socket(&self) -> PathBuf {
        self.root().join(API_PATH.trim_start_matches('/'))
    }

    /// The jail's cgroup directories, one per hierarchy the jailer writes to.
    pub fn cgroups(&self) -> Vec<PathBuf> {
        let roots: &[&str] = if self.cgroup_v2 {
            &["/sys/fs/cgroup"]
        } else {
            &[
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/cpu",
                "/sys/fs/cgroup/cpuacct",
                "/sys/fs/cgroup/pids",
            ]
        };
        roots
            .iter()
            .map(|root| {
                Path::new(root)
                    .join(&self.cgroup_parent)
                    .join(&self.jail_id)
            })
            .collect()
    }

    /// The jailer's `--cgroup` values: the container's memory limit, and a
    /// value for each controller whose usage `Stats` reports.
    fn cgroup_settings(&self, memory_limit: Option<u64>) -> Vec<String> {
        let limit = memory_limit.map(|l| l.to_string());
        if self.cgroup_v2 {
            vec![
                format!("memory.max={}", limit.as_deref().unwrap_or("max")),
                "cpu.weight=100".into(),
                "pids.max=max".into(),
            ]
        } else {
            vec![
                format!("memory.limit_in_bytes={}", limit.as_deref().unwrap_or("-1")),
                "cpu.shares=1024".into(),
                "cpuacct.usage=0".into(),
                "pids.max=max".into(),
            ]
        }
    }
}

/// The jailer's `--id` for a task: the task id where the jailer takes it (up to
/// 64 alphanumerics and dashes), else a hash of it.
fn jail_id(task_id: &str) -> String {
    let fits = (1..=64).contains(&task_id.len())
        && task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if fits {
        return task_id.to_owned();
    }
    let hash = task_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("task-{hash:016x}")
}

/// The VM's TAP in the pod's namespace: unique per jail, within Linux's 15
/// characters.
fn tap_name(jail_id: &str) -> String {
    let hash = jail_id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("ember{hash:08x}")
}

/// The parent cgroup for the jail: the directory of a cgroupfs-style
/// `cgroupsPath` (`/default/echo` -> `default`), else ember's own.
fn cgroup_parent(cgroups_path: Option<&str>) -> String {
    let Some(path) = cgroups_path.filter(|p| p.starts_with('/') && !p.contains(':')) else {
        return DEFAULT_CGROUP_PARENT.into();
    };
    let parent = Path::new(path).parent().unwrap_or(Path::new("/"));
    let parts: Vec<_> = parent
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => p.to_str(),
            _ => None,
        })
        .collect();
    if parts.is_empty()
        || parent
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        DEFAULT_CGROUP_PARENT.into()
    } else {
        parts.join("/")
    }
}

/// How a VM comes up.
#[derive(Debug)]
pub enum Start {
    /// It boots; with the claim, its snapshot is taken once the function is ready.
    Boot(Option<Claim>),
    /// It loads the function's snapshot from the cache.
    Restore,
}

/// A jail ready for the jailer: the unikernel or snapshot, and the config file.
pub struct Prepared {
    pub layout: Layout,
    pub uid: UidLease,
    /// The digest that names the function's snapshot.
    pub key: String,
    pub start: Start,
    args: Vec<String>,
}

/// Fills the jail for `function`, whose image is mounted at `rootfs`: with
/// the function's snapshot if `cache` has it, else with its unikernel. On a pod
/// network the VM gets a TAP joined to the pod's interface first, since a VM with
/// a network has another snapshot than one without.
pub fn prepare(
    mut layout: Layout,
    function: &Function,
    netns: Option<&str>,
    rootfs: &Path,
    binaries: &Binaries,
    cache: &Cache,
) -> Result<Prepared, Error> {
    let root = layout.root();
    std::fs::create_dir_all(&root).map_err(io("cannot create the jail", &root))?;
    // The bundle's `ember.sock` leads to ember's API (a short path for clients:
    // a socket's own path may not exceed 107 bytes).
    let link = layout.base.with_file_name("ember.sock");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(layout.api_socket(), &link)
        .map_err(io("cannot link ember's API socket at", &link))?;
    let uid = UidLease::take(&root.to_string_lossy())?;
    if let Some(netns) = netns {
        let tap = tap_name(&layout.jail_id);
        if let Some(pod) = network::attach(netns, &tap, uid.uid)? {
            layout.network = Some(Attached {
                netns: netns.to_owned(),
                pod,
            });
        }
    }
    let pod = layout.network.as_ref().map(|attached| &attached.pod);
    let (key, start) = match fill_jail(&root, &uid, function, pod, rootfs, binaries, cache) {
        Ok(filled) => filled,
        Err(e) => {
            if let Some(attached) = &layout.network {
                network::detach(&attached.netns, &attached.pod);
            }
            return Err(e);
        }
    };
    let mut args: Vec<String> = vec![
        "--id".into(),
        layout.jail_id.clone(),
        "--exec-file".into(),
        binaries.ember.to_string_lossy().into_owned(),
        "--uid".into(),
        uid.uid.to_string(),
        "--gid".into(),
        uid.uid.to_string(),
        "--chroot-base-dir".into(),
        layout.base.to_string_lossy().into_owned(),
        "--cgroup-version".into(),
        if layout.cgroup_v2 { "2" } else { "1" }.into(),
        "--parent-cgroup".into(),
        layout.cgroup_parent.clone(),
    ];
    for setting in layout.cgroup_settings(function.memory_limit) {
        args.extend(["--cgroup".into(), setting]);
    }
    if let Some(netns) = netns {
        args.extend(["--netns".into(), netns.to_owned()]);
    }
    args.extend(
        [
            "--",
            "--api-sock",
            API_PATH,
            "--config-file",
            &format!("/{CONFIG_NAME}"),
        ]
        .map(String::from),
    );
    if layout.network.is_some() {
        args.extend(["--metadata".into(), format!("/{METADATA_NAME}")]);
    }
    Ok(Prepared {
        layout,
        uid,
        key,
        start,
        args,
    })
}

/// Puts the snapshot or the unikernel into the jail at `root`, with the VM's
/// config file and, on a pod network, its MMDS data: the container's environment
/// (`/ember/env`) and the pod's address (`/ember/network`), which a clone takes
/// after its restore. Returns the snapshot's key and how the VM comes up.
fn fill_jail(
    root: &Path,
    uid: &UidLease,
    function: &Function,
    pod: Option<&PodNetwork>,
    rootfs: &Path,
    binaries: &Binaries,
    cache: &Cache,
) -> Result<(String, Start), Error> {
    let kernel_error = |source| Error::Kernel {
        path: function.kernel.clone(),
        source,
    };
    let mut kernel = open_in_root(rootfs, &function.kernel).map_err(kernel_error)?;
    let http_port = pod.map(|_| function.http_port);
    let key =
        cache::key(&mut kernel, function, http_port, &binaries.ember).map_err(kernel_error)?;
    let cached = function.snapshot.then(|| cache.lookup(&key)).flatten();
    let (config, start) = match cached {
        Some(entry) => {
            entry.place_into(root)?;
            let mut load = serde_json::json!({
                "snapshot_path": format!("/{}", cache::STATE_FILE),
                "mem_backend": {"backend_type": "File", "backend_path": format!("/{}", cache::MEMORY_FILE)},
                "resume_vm": true,
            });
            if let Some(pod) = pod {
                load["network_overrides"] =
                    serde_json::json!([{"iface_id": "eth0", "host_dev_name": pod.tap}]);
            }
            (serde_json::json!({"snapshot-load": load}), Start::Restore)
        }
        None => {
            kernel.rewind().map_err(kernel_error)?;
            let inside = root.join(KERNEL_NAME);
            let mut copy = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&inside)
                .map_err(io("cannot create", &inside))?;
            std::io::copy(&mut kernel, &mut copy)
                .map_err(io("cannot copy the unikernel to", &inside))?;
            let claim = match function.snapshot {
                true => cache.claim(&key)?,
                false => None,
            };
            if claim.is_some() {
                let dir = root.join(SNAPSHOT_DIR);
                std::fs::create_dir(&dir).map_err(io("cannot create", &dir))?;
                std::os::unix::fs::chown(&dir, Some(uid.uid), Some(uid.uid))
                    .map_err(io("cannot hand over", &dir))?;
            }
            let mut boot_args = String::from("console=ttyS0");
            for arg in &function.args {
                boot_args.push(' ');
                boot_args.push_str(arg);
            }
            if let (Some(pod), Some(port)) = (pod, http_port) {
                boot_args += &format!(" {} ember.http={port} ember.net=mmds", pod.boot_arg());
            }
            let mut config = serde_json::json!({
                "boot-source": {"kernel_image_path": format!("/{KERNEL_NAME}"), "boot_args": boot_args},
                "machine-config": {"vcpu_count": function.vcpus, "mem_size_mib": function.memory_mib},
                "vsock": {"guest_cid": GUEST_CID, "uds_path": VSOCK_PATH},
                "function": {"vsock_port": function.port},
            });
            if let Some(pod) = pod {
                config["network-interfaces"] = serde_json::json!([
                    {"iface_id": "eth0", "host_dev_name": pod.tap, "guest_mac": pod.mac}
                ]);
                config["mmds-config"] =
                    serde_json::json!({"network_interfaces": ["eth0"], "version": "V2"});
            }
            (config, Start::Boot(claim))
        }
    };
    let config_path = root.join(CONFIG_NAME);
    std::fs::write(&config_path, config.to_string())
        .map_err(io("cannot write the VM's config to", &config_path))?;
    if let Some(pod) = pod {
        let env: serde_json::Map<String, serde_json::Value> = function
            .env
            .iter()
            .map(|(name, value)| (name.clone(), value.clone().into()))
            .collect();
        let metadata = serde_json::json!({"ember": {
            "env": env,
            "network": format!("{} mac={}", pod.boot_arg(), pod.mac),
        }});
        // Only the VM reads it: the environment may hold secrets.
        let path = root.join(METADATA_NAME);
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .and_then(|mut file| file.write_all(metadata.to_string().as_bytes()))
            .and_then(|()| std::os::unix::fs::chown(&path, Some(uid.uid), Some(uid.uid)))
            .map_err(io("cannot write the VM's metadata to", &path))?;
    }
    Ok((key, start))
}

impl Prepared {
    /// Starts the jailer, which becomes ember (same pid) once the jail is up;
    /// the console goes to `stdout`, ember's log to `stderr`.
    pub fn spawn(&self, jailer: &Path, stdout: File, stderr: File) -> Result<Child, Error> {
        Command::new(jailer)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(io("cannot start", jailer))
    }
}

/// Removes what a VM left on the host once its process is gone: the jail and
/// its cgroups. The kernel frees a cgroup a moment after its last process is
/// reaped, so removal retries briefly.
pub fn clean_up(layout: &Layout) -> Result<(), Error> {
    if let Some(attached) = &layout.network {
        network::detach(&attached.netns, &attached.pod);
    }
    let jail = layout.jail_dir();
    match std::fs::remove_dir_all(&jail) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("cannot remove", &jail)(e)),
        _ => {}
    }
    let _ = std::fs::remove_file(layout.base.with_file_name("ember.sock"));
    let _ = std::fs::remove_dir(layout.base.join("ember"));
    let _ = std::fs::remove_dir(&layout.base);
    for cgroup in layout.cgroups() {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match std::fs::remove_dir(&cgroup) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(io("cannot remove the cgroup", &cgroup)(e))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    Ok(())
}

/// Fails as [`prepare`] would if the image has no unikernel where `function`
/// says: for a task whose preparation waits until start.
pub fn check_kernel(function: &Function, rootfs: &Path) -> Result<(), Error> {
    open_in_root(rootfs, &function.kernel)
        .map(drop)
        .map_err(|source| Error::Kernel {
            path: function.kernel.clone(),
            source,
        })
}

/// Opens `path` as if `root` were `/`: `..` and symlinks, absolute or not,
/// cannot leave it.
fn open_in_root(root: &Path, path: &str) -> std::io::Result<File> {
    let dir = File::open(root)?;
    let c_path = CString::new(Path::new(path).as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: open_how is plain integers, for which zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from((libc::O_RDONLY | libc::O_CLOEXEC).unsigned_abs());
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `dir` is an open directory, `c_path` a NUL-terminated string and
    // `how` a valid open_how of the size passed; all outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            c_path.as_ptr(),
            std::ptr::addr_of!(how),
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::from(ErrorKind::InvalidData))?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jail_ids_are_the_task_ids_the_jailer_takes() {
        assert_eq!(jail_id("echo-1"), "echo-1");
        let long = "a".repeat(65);
        for odd in ["with_underscore", "dots.in.it", "", long.as_str()] {
            let id = jail_id(odd);
            assert!(id.starts_with("task-") && id.len() == 21, "{odd} -> {id}");
        }
        assert_ne!(jail_id("a_b"), jail_id("a.b"));
    }

    #[test]
    fn cgroup_parent_follows_a_cgroupfs_path() {
        assert_eq!(cgroup_parent(Some("/default/echo")), "default");
        assert_eq!(
            cgroup_parent(Some("/kubepods/burstable/pod1/abc")),
            "kubepods/burstable/pod1"
        );
        for other in [
            None,
            Some("/echo"),
            Some("system.slice:cri-containerd:abc"),
            Some("relative/path"),
            Some("/a/../b/c"),
        ] {
            assert_eq!(cgroup_parent(other), DEFAULT_CGROUP_PARENT, "{other:?}");
        }
    }

    #[test]
    fn a_symlink_in_the_image_cannot_reach_host_files() {
        let dir = std::env::temp_dir().join(format!("ember-shim-root-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs/bin")).unwrap();
        std::fs::write(dir.join("secret"), "host file").unwrap();
        std::fs::write(dir.join("rootfs/bin/fn"), "unikernel").unwrap();
        let outside = dir.join("secret");
        std::os::unix::fs::symlink(&outside, dir.join("rootfs/abs")).unwrap();
        std::os::unix::fs::symlink("../../secret", dir.join("rootfs/bin/rel")).unwrap();
        let root = dir.join("rootfs");
        let read = |p: &str| {
            open_in_root(&root, p)
                .map(|f| std::io::read_to_string(f).unwrap())
                .map_err(|e| e.kind())
        };
        assert_eq!(read("/bin/fn").as_deref(), Ok("unikernel"));
        assert_eq!(read("bin/../bin/fn").as_deref(), Ok("unikernel"));
        // Both resolve inside the image, where there is no such file.
        assert_eq!(read("/abs"), Err(ErrorKind::NotFound));
        assert_eq!(read("/bin/rel"), Err(ErrorKind::NotFound));
        assert_eq!(read("/../secret"), Err(ErrorKind::NotFound));
        assert_eq!(read("/bin"), Err(ErrorKind::InvalidInput));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
