//! The jailer's error type: every message names the step and, where there is
//! one, the path, so `main` can print one line and exit.

use std::io;
use std::path::PathBuf;

/// A failed jail step.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The command line is malformed.
    #[error("args: {0}")]
    Args(String),
    /// A path-related check failed (no OS error behind it).
    #[error("{step}: {what} '{path}'")]
    Invalid {
        step: &'static str,
        what: &'static str,
        path: PathBuf,
    },
    /// A system call on a path failed.
    #[error("{step}: {what} '{path}': {source}")]
    Io {
        step: &'static str,
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// A system call without a path failed.
    #[error("{step}: {what}: {source}")]
    Sys {
        step: &'static str,
        what: &'static str,
        source: io::Error,
    },
}

impl JailError {
    /// Builds a `map_err` closure for an I/O failure on `path`.
    pub fn io(
        step: &'static str,
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> JailError {
        let path = path.into();
        move |source| JailError::Io {
            step,
            what,
            path,
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, JailError>;
