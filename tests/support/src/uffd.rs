//! `ember-snapshot handler`, the userfaultfd page-fault handler, as a child process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::artifacts::ember_snapshot_bin;

/// A running `ember-snapshot handler`, killed when dropped.
pub struct UffdHandler {
    child: Child,
    pub socket: PathBuf,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl UffdHandler {
    /// Serves `mem_file` on `socket`, with an optional working-set file.
    pub fn start(socket: &Path, mem_file: &Path, working_set: Option<&Path>) -> Self {
        let mut command = Command::new(ember_snapshot_bin());
        command
            .arg("handler")
            .arg("--socket")
            .arg(socket)
            .arg("--mem-file")
            .arg(mem_file);
        if let Some(set) = working_set {
            command.arg("--working-set").arg(set);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ember-snapshot handler");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(line);
                cv.notify_all();
            }
        });
        let handler = UffdHandler {
            child,
            socket: socket.to_path_buf(),
            lines,
        };
        handler.expect_line("listening on", Duration::from_secs(10));
        handler
    }

    /// Waits for an output line starting with `prefix`.
    pub fn expect_line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.lines;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|l| l.starts_with(prefix)) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "the handler printed no line starting with {prefix:?}; it printed:\n{}",
                lines.join("\n")
            );
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// The numbers in a `vm N: prefetched P pages, served F faults (Z zero)` line.
    pub fn vm_stats(&self, vm: usize) -> (u64, u64) {
        let line = self.expect_line(&format!("vm {vm}: prefetched"), Duration::from_secs(10));
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|w| w.parse().ok())
            .collect();
        (numbers[1], numbers[2])
    }
}

impl Drop for UffdHandler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
