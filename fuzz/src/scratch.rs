//! A directory of this process's own for the files and sockets targets create.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// `$TMPDIR/ember-fuzz-<pid>`, created on first use and removed when the
/// process exits normally (a crash leaves it behind).
pub fn dir() -> &'static Path {
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ember-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        // SAFETY: registers a plain function with no arguments.
        unsafe { libc::atexit(remove_dir) };
        dir
    })
}

extern "C" fn remove_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A path in the scratch directory, with nothing there yet: `name` and the
/// calling thread's id, so that tests running side by side never share one
/// while a fuzz target, on one thread, reuses it from input to input.
pub fn fresh(name: &str) -> PathBuf {
    // SAFETY: gettid has no preconditions.
    let thread = unsafe { libc::gettid() };
    let path = dir().join(format!("{name}.{thread}"));
    let _ = std::fs::remove_file(&path);
    path
}
