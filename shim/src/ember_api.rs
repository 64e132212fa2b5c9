//! The few calls the shim makes to its VM's ember over the API socket: plain
//! HTTP/1.1, one request per connection.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long one call may take (a snapshot writes the guest's memory).
const TIMEOUT: Duration = Duration::from_secs(60);
/// Longest answer read: ember's errors are a line of JSON.
const MAX_ANSWER: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ember's API: {0}")]
    Io(#[from] std::io::Error),
    #[error("{method} {path} answered: {answer}")]
    Refused {
        method: String,
        path: String,
        answer: String,
    },
}

/// Connects to the socket at `path` through its directory, opened on its own:
/// a socket's path may not exceed 107 bytes, and a jail's is often longer.
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    UnixStream::connect(short)
}

/// Sends one request; Ok if ember answered 2xx.
pub fn call(socket: &Path, method: &str, path: &str, body: &str) -> Result<(), Error> {
    let mut stream = connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.take(MAX_ANSWER).read_to_string(&mut answer)?;
    let ok = answer
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if ok {
        Ok(())
    } else {
        Err(Error::Refused {
            method: method.into(),
            path: path.into(),
            answer: answer.lines().last().unwrap_or_default().into(),
        })
    }
}
