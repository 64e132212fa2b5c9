//! Snapshots of booted functions, kept per function so that a scale-out is a
//! restore, not a boot.
//!
//! A function is named by a digest of everything its snapshot depends on: the
//! unikernel's bytes, the VM's settings, and the ember binary that takes and
//! loads it (its size and modification time, so an upgrade starts afresh).
//! The first task of a function boots and, holding the function's lock, has its
//! snapshot taken once the function is ready; later tasks restore from it.
//! Entries live in a directory of their own (`$EMBER_SHIM_SNAPSHOT_DIR`, by
//! default under `/run`, beside containerd's state, so that a restore's files
//! are hard links rather than copies); they outlive the shims, and a changed
//! function or ember simply has another digest.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::function::Function;

const DEFAULT_DIR: &str = "/run/ember-shim/snapshots";
/// The files of an entry, as the jail sees them too.
pub const STATE_FILE: &str = "vm.snap";
pub const MEMORY_FILE: &str = "vm.mem";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} '{path}': {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// The digest that names a function's snapshot, reading its unikernel from `kernel`.
pub fn key(
    mut kernel: impl std::io::Read,
    function: &Function,
    http_port: Option<u16>,
    ember: &Path,
) -> std::io::Result<String> {
    let mut hash = Sha256::new();
    hash.update(b"ember-shim snapshot 1\0");
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match kernel.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => hash.update(&buffer[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let settings = serde_json::json!({
        "args": function.args,
        "vcpus": function.vcpus,
        "memory_mib": function.memory_mib,
        "port": function.port,
        "http_port": http_port,
    });
    hash.update(settings.to_string().as_bytes());
    if let Ok(meta) = std::fs::metadata(ember) {
        hash.update(meta.len().to_le_bytes());
        hash.update(meta.mtime().to_le_bytes());
        hash.update(meta.mtime_nsec().to_le_bytes());
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// A function's snapshot in the cache.
#[derive(Debug)]
pub struct Entry {
    dir: PathBuf,
}

/// The right to take a function's snapshot: one task at a time holds it (an
/// advisory lock, released by the kernel if the shim dies).
#[derive(Debug)]
pub struct Claim {
    entry: PathBuf,
    _lock: File,
}

impl Cache {
    pub fn from_env() -> Cache {
        Cache {
            dir: std::env::var_os("EMBER_SHIM_SNAPSHOT_DIR")
                .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from),
        }
    }

    pub fn lookup(&self, key: &str) -> Option<Entry> {
        let dir = self.dir.join(key);
        (dir.join(STATE_FILE).is_file() && dir.join(MEMORY_FILE).is_file()).then_some(Entry { dir })
    }

    /// The claim on `key`'s snapshot, unless another task holds it.
    pub fn claim(&self, key: &str) -> Result<Option<Claim>, Error> {
        std::fs::create_dir_all(&self.dir).map_err(io("cannot create", &self.dir))?;
        let path = self.dir.join(format!("{key}.lock"));
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        // SAFETY: flock on a descriptor `lock` owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                ErrorKind::WouldBlock => Ok(None),
                _ => Err(io("cannot lock", &path)(e)),
            };
        }
        Ok(Some(Claim {
            entry: self.dir.join(key),
            _lock: lock,
        }))
    }
}

impl Entry {
    /// Puts the snapshot's files into the jail at `root`: hard links where the
    /// cache shares the jail's filesystem (the memory file's pages are then
    /// shared by every clone), copies where it does not.
    pub fn place_into(&self, root: &Path) -> Result<(), Error> {
        for name in [STATE_FILE, MEMORY_FILE] {
            let (from, to) = (self.dir.join(name), root.join(name));
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(io("cannot copy the snapshot to", &to))?;
            }
        }
        Ok(())
    }
}

impl Claim {
    /// Moves a snapshot just taken (`STATE_FILE` and `MEMORY_FILE` in `taken`)
    /// into the cache, whole or not at all.
    pub fn store(self, taken: &Path) -> Result<(), Error> {
        let staging = self.entry.with_extension("new");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(io("cannot create", &staging))?;
        for name in [STATE_FILE, MEMORY_FILE] {
            let (from, to) = (taken.join(name), staging.join(name));
            if std::fs::rename(&from, &to).is_err() {
                std::fs::copy(&from, &to).map_err(io("cannot copy the snapshot to", &to))?;
                let _ = std::fs::remove_file(&from);
            }
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o444))
                .map_err(io("cannot protect", &to))?;
        }
        let _ = std::fs::remove_dir_all(&self.entry);
        std::fs::rename(&staging, &self.entry).map_err(io("cannot store", &self.entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::function::{Network, DEFAULT_HTTP_PORT, DEFAULT_MEMORY_MIB, DEFAULT_PORT};

    fn function() -> Function {
        Function {
            kernel: "/function".into(),
            args: vec![],
            vcpus: 1,
            memory_mib: DEFAULT_MEMORY_MIB,
            port: DEFAULT_PORT,
            http_port: DEFAULT_HTTP_PORT,
            snapshot: true,
            env: vec![],
            network: Network::Host,
            cgroups_path: None,
            memory_limit: None,
        }
    }

    #[test]
    fn the_key_changes_with_anything_the_snapshot_depends_on() {
        let ember = std::env::current_exe().unwrap();
        let key = |kernel: &[u8], function: &Function, ember: &Path| {
            key(kernel, function, None, ember).unwrap()
        };
        let base = key(b"kernel", &function(), &ember);
        assert_eq!(base, key(b"kernel", &function(), &ember));
        assert_eq!(base.len(), 64);
        let mut more_memory = function();
        more_memory.memory_mib += 1;
        let mut args = function();
        args.args.push("x=1".into());
        let mut env = function();
        env.env.push(("NAME".into(), "v".into()));
        assert_ne!(base, key(b"kernel2", &function(), &ember));
        assert_ne!(base, key(b"kernel", &more_memory, &ember));
        assert_ne!(base, key(b"kernel", &args, &ember));
        assert_ne!(base, key(b"kernel", &function(), Path::new("/bin/sh")));
        let networked = super::key(&b"kernel"[..], &function(), Some(8080), &ember).unwrap();
        assert_ne!(base, networked, "a VM with a network interface");
        // The environment reaches the function at run time, not in the snapshot.
        assert_eq!(base, key(b"kernel", &env, &ember));
    }

    #[test]
    fn one_claim_at_a_time_and_a_stored_snapshot_is_found() {
        let dir = std::env::temp_dir().join(format!("ember-shim-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = Cache {
            dir: dir.join("cache"),
        };
        assert!(cache.lookup("k").is_none());
        let claim = cache.claim("k").unwrap().expect("free");
        assert!(cache.claim("k").unwrap().is_none(), "held");
        let taken = dir.join("taken");
        std::fs::create_dir_all(&taken).unwrap();
        std::fs::write(taken.join(STATE_FILE), "state").unwrap();
        std::fs::write(taken.join(MEMORY_FILE), "memory").unwrap();
        claim.store(&taken).unwrap();
        assert!(cache.claim("k").unwrap().is_some(), "released");
        let entry = cache.lookup("k").expect("stored");
        let jail = dir.join("jail");
        std::fs::create_dir_all(&jail).unwrap();
        entry.place_into(&jail).unwrap();
        assert_eq!(std::fs::read(jail.join(MEMORY_FILE)).unwrap(), b"memory");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
