//! What a running task left on the host, written into its bundle, so that
//! containerd's `shim delete` can clean up after a shim that died: the VM's
//! process (named by pid and start time, so a reused pid is left alone), its
//! jail and cgroups, and its uid lease.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::vm::{self, Layout, Prepared, UidLease};

const FILE_NAME: &str = "ember-task.json";

#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pid: u32,
    /// The process's start time in clock ticks (`/proc/<pid>/stat`, field 22).
    started: Option<u64>,
    uid: u32,
    layout: Layout,
}

fn path(bundle: &Path) -> PathBuf {
    bundle.join(FILE_NAME)
}

/// When process `pid` started, in clock ticks since boot; None once it is
/// gone or a zombie (which only waits for its new parent to reap it).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl Record {
    pub fn new(pid: u32, prepared: &Prepared) -> Record {
        Record {
            pid,
            started: start_time(pid),
            uid: prepared.uid.uid,
            layout: prepared.layout.clone(),
        }
    }

    pub fn save(&self, bundle: &Path) {
        let file = path(bundle);
        let written = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&file, bytes));
        if let Err(e) = written {
            warn!("cannot write {}: {e}", file.display());
        }
    }

    pub fn load(bundle: &Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(path(bundle)).ok()?).ok()
    }

    pub fn remove(bundle: &Path) {
        let _ = std::fs::remove_file(path(bundle));
    }

    /// Kills the VM if it still runs, waits (up to 2 s) for it to go, then
    /// removes its jail, cgroups, uid lease and this record.
    pub fn kill_and_clean_up(self) {
        let ours = || self.started.is_some() && start_time(self.pid) == self.started;
        if ours() {
            if let Ok(pid) = libc::pid_t::try_from(self.pid) {
                // SAFETY: kill has no memory-safety preconditions; the start time
                // shows the pid still names the VM.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while ours() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Err(e) = vm::clean_up(&self.layout) {
            warn!("{e}");
        }
        drop(UidLease::reclaim(self.uid));
        if let Some(bundle) = self.layout.base.parent() {
            Record::remove(bundle);
        }
    }
}
