//! What this run created, so a failure can remove it again.

use std::fs;
use std::path::PathBuf;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    File(PathBuf),
    /// A directory others may share (the chroot base, `<exec-name>`):
    /// removed only if it is empty.
    SharedDir(PathBuf),
    /// A directory of this jail alone: removed with whatever it holds.
    Tree(PathBuf),
}

/// Everything to undo on failure, in creation order.
#[derive(Debug, Default)]
pub struct Created {
    pub paths: Vec<Made>,
    pub cgroups: Vec<CreatedCgroup>,
}

impl Created {
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
                Made::File(p) => fs::remove_file(p),
                Made::SharedDir(p) => fs::remove_dir(p),
                Made::Tree(p) => fs::remove_dir_all(p),
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
