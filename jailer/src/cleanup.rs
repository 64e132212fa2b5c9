//! What this run created, so a failure can remove it again.

use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;

use crate::dir::Dir;

/// A cgroup this run created and maybe moved itself into.
#[derive(Debug)]
pub struct CreatedCgroup {
    /// The `<id>` directory itself.
    pub leaf: PathBuf,
    /// Parent directories this run created, outermost first.
    pub parents: Vec<PathBuf>,
    /// If our pid was written into `leaf`: the file to write it to move
    /// back out (the hierarchy root's `tasks` / `cgroup.procs`).
    pub moved_in: Option<PathBuf>,
}

/// A file or directory this run created.
#[derive(Debug)]
pub enum Made {
    /// A directory of the host's that others may share (the chroot base and
    /// its parents, `<exec-name>`): removed only if it is empty. Its path is
    /// the operator's and root's alone, so it is safe to resolve again.
    SharedDir(PathBuf),
    /// Entry `name` of the open directory `dir`, in or above the jail: removed
    /// with whatever it holds, never following a symbolic link, so nothing the
    /// jailed user swapped in meanwhile leads the removal out of the jail.
    Entry { dir: Rc<Dir>, name: OsString },
}

/// Everything to undo on failure, in creation order.
#[derive(Debug, Default)]
pub struct Created {
    pub paths: Vec<Made>,
    pub cgroups: Vec<CreatedCgroup>,
}

impl Created {
    /// Records that this run made entry `name` of `dir`.
    pub fn entry(&mut self, dir: &Rc<Dir>, name: impl Into<OsString>) {
        self.paths.push(Made::Entry {
            dir: dir.clone(),
            name: name.into(),
        });
    }

    /// The descriptors of the directories the undo works in.
    pub fn fds(&self) -> Vec<RawFd> {
        self.paths
            .iter()
            .filter_map(|made| match made {
                Made::Entry { dir, .. } => Some(dir.as_raw_fd()),
                Made::SharedDir(_) => None,
            })
            .collect()
    }

    /// Removes what this run created, newest first. Best effort: errors are
    /// ignored, since we are already reporting the first failure.
    pub fn undo(&mut self) {
        for cg in self.cgroups.drain(..).rev() {
            if let Some(back) = &cg.moved_in {
                let _ = fs::write(back, std::process::id().to_string());
            }
            // A real cgroupfs directory goes with rmdir despite its control
            // files; a plain directory (tests) needs remove_dir_all.
            if fs::remove_dir(&cg.leaf).is_err() {
                let _ = fs::remove_dir_all(&cg.leaf);
            }
            for p in cg.parents.iter().rev() {
                // Only if empty: another jail may have started using it.
                let _ = fs::remove_dir(p);
            }
        }
        for made in self.paths.drain(..).rev() {
            let _ = match made {
                Made::SharedDir(p) => fs::remove_dir(p),
                Made::Entry { dir, name } => dir.remove_tree(name),
            };
        }
    }
}

/// Creates every missing directory of `path` (like `mkdir -p`), returning
/// the ones it created, outermost first.
pub fn create_dirs(path: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_owned());
        cur = p.parent();
    }
    missing.reverse();
    let mut created = Vec::new();
    for p in missing {
        match fs::create_dir(&p) {
            Ok(()) => created.push(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                for c in created.iter().rev() {
                    let _ = fs::remove_dir(c);
                }
                return Err(e);
            }
        }
    }
    Ok(created)
}
