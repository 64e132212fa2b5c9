//! `POST /invocations`: one function invocation over the guest's vsock.
//!
//! The API thread is just another host client of the hybrid vsock socket: it
//! connects, asks for the function's port with `CONNECT`, then speaks ember's
//! framing. Request: a little-endian u32 length and the payload. Response: a
//! status byte (0 ok, 1 the function failed, 2 it panicked), a little-endian
//! u32 length and the output or the error message. A connection carries any
//! number of invocations in turn, so idle ones are kept for the next call,
//! which then skips the handshake and its trip through the guest.

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ember_proto::invocation::{parse_response_prefix, request_prefix, Status, RESPONSE_PREFIX_LEN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::controller::InvocationTarget;

/// Largest response ember accepts from a function.
pub const MAX_OUTPUT_BYTES: u32 = 64 << 20;
/// Idle connections kept per ember process.
const MAX_IDLE: usize = 8;
/// Response bytes reserved before any arrive; past this, memory grows with
/// what the guest actually sent, whatever length it announced.
const OUTPUT_PREALLOC: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The whole call ran out of `timeout_ms` (a 504).
    #[error("the function did not answer within {0:?}")]
    Timeout(Duration),
    /// No vsock socket, or the guest refused the port (a 502).
    #[error("cannot reach the function on vsock port {port}: {reason}")]
    Unreachable { port: u32, reason: String },
    /// The function returned an error; its message is the body (a 502).
    #[error("the function failed: {0}")]
    Failed(String),
    /// The function panicked; its message is the body (a 502).
    #[error("the function panicked: {0}")]
    Panicked(String),
    /// The guest answered with something that is not ember's framing (a 502).
    #[error("the guest broke the invocation protocol: {0}")]
    Protocol(String),
    /// `max_concurrent_invocations` are already in progress (a 429).
    #[error("too many invocations in progress: the limit is {0} (max_concurrent_invocations)")]
    TooMany(usize),
}

struct Connection {
    uds_path: String,
    port: u32,
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Connection {
    /// Whether nothing arrived since the last answer: bytes there would belong
    /// to no call, and an end of file means the guest dropped the connection.
    fn is_quiet(&self) -> bool {
        if !self.read.buffer().is_empty() {
            return false;
        }
        let fd = self.read.get_ref().as_ref().as_raw_fd();
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into `byte`, which outlives the call; `fd`
        // is open while `self` lives.
        let peeked = unsafe {
            libc::recv(
                fd,
                std::ptr::addr_of_mut!(byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        peeked < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

/// Idle connections to functions, and the count of invocations in progress.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Connection>>,
    in_flight: AtomicUsize,
}

impl Pool {
    /// An idle connection to `target` with nothing unexpected on it; any other
    /// is closed.
    fn take(&self, target: &InvocationTarget) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(at) = idle
            .iter()
            .position(|c| c.port == target.port && c.uds_path == target.uds_path)
        {
            let conn = idle.swap_remove(at);
            if conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, conn: Connection) {
        // Bytes read past the answer belong to no call: such a connection is closed.
        if !conn.read.buffer().is_empty() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

/// An invocation's place among those in progress, given back when it ends.
struct Slot<'p>(&'p AtomicUsize);

impl<'p> Slot<'p> {
    fn take(in_flight: &'p AtomicUsize, limit: usize) -> Option<Self> {
        in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(in_flight))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How one exchange on a connection ended.
enum Outcome {
    /// The function answered (whatever its status); the connection is reusable.
    Answered(Result<Vec<u8>, Error>),
    /// The connection died before any answer: an idle one the guest dropped.
    Stale(Error),
    /// The connection is unusable after a partial exchange.
    Broken(Error),
}

/// Runs one invocation, bounded by the target's timeout.
pub async fn invoke(
    pool: &Pool,
    target: &InvocationTarget,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let Some(_slot) = Slot::take(&pool.in_flight, target.max_concurrent) else {
        return Err(Error::TooMany(target.max_concurrent));
    };
    let call = async {
        if let Some(conn) = pool.take(target) {
            match exchange(pool, conn, payload).await {
                // A pooled connection may have been dropped by the guest (a
                // restore resets its transport): retry once on a fresh one.
                Outcome::Stale(_) => {}
                Outcome::Answered(result) => return result,
                Outcome::Broken(e) => return Err(e),
            }
        }
        let conn = connect(target).await?;
        match exchange(pool, conn, payload).await {
            Outcome::Answered(result) => result,
            Outcome::Stale(e) | Outcome::Broken(e) => Err(e),
        }
    };
    match tokio::time::timeout(target.timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(target.timeout)),
    }
}

/// Opens a connection to the function's port through the hybrid vsock handshake.
async fn connect(target: &InvocationTarget) -> Result<Connection, Error> {
    let unreachable = |reason: String| Error::Unreachable {
        port: target.port,
        reason,
    };
    let stream = UnixStream::connect(&target.uds_path)
        .await
        .map_err(|e| unreachable(format!("cannot connect to '{}': {e}", target.uds_path)))?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    write
        .write_all(format!("CONNECT {}\n", target.port).as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut line = String::new();
    read.read_line(&mut line)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !line.starts_with("OK ") {
        return Err(unreachable("the guest refused the connection".into()));
    }
    Ok(Connection {
        uds_path: target.uds_path.clone(),
        port: target.port,
        read,
        write,
    })
}

async fn exchange(pool: &Pool, mut conn: Connection, payload: &[u8]) -> Outcome {
    let Ok(len) = u32::try_from(payload.len()) else {
        return Outcome::Answered(Err(Error::Protocol(
            "the request is larger than 4 GiB".into(),
        )));
    };
    if let Err(e) = write_request(&mut conn.write, &request_prefix(len), payload).await {
        return Outcome::Stale(Error::Protocol(format!("cannot send the request: {e}")));
    }
    let mut head = [0u8; RESPONSE_PREFIX_LEN];
    if let Err(e) = conn.read.read_exact(&mut head).await {
        return Outcome::Stale(Error::Protocol(format!(
            "the connection ended before a response: {e}"
        )));
    }
    let (status, out_len) = parse_response_prefix(head);
    if out_len > MAX_OUTPUT_BYTES {
        return Outcome::Broken(Error::Protocol(format!(
            "a {out_len}-byte response exceeds ember's limit of {MAX_OUTPUT_BYTES}"
        )));
    }
    let output = match read_output(&mut conn.read, out_len as usize).await {
        Ok(output) => output,
        Err(e) => return Outcome::Broken(Error::Protocol(e)),
    };
    let result = match status {
        Some(Status::Ok) => Ok(output),
        Some(Status::Error) => Err(Error::Failed(String::from_utf8_lossy(&output).into_owned())),
        Some(Status::Panic) => Err(Error::Panicked(
            String::from_utf8_lossy(&output).into_owned(),
        )),
        None => {
            return Outcome::Broken(Error::Protocol(format!("unknown status {}", head[0])));
        }
    };
    pool.give_back(conn);
    Outcome::Answered(result)
}

/// Writes the request's prefix and payload with as few writes as the socket
/// allows: a prefix sent alone could reach the guest as a packet (and an
/// interrupt) of its own.
async fn write_request(
    write: &mut OwnedWriteHalf,
    prefix: &[u8],
    payload: &[u8],
) -> std::io::Result<()> {
    let mut parts = [IoSlice::new(prefix), IoSlice::new(payload)];
    let mut parts = &mut parts[..];
    while !parts.is_empty() {
        let n = write.write_vectored(parts).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut parts, n);
    }
    Ok(())
}

/// Reads a `len`-byte output as it arrives. Memory follows the bytes received,
/// doubling as they come, so a length the guest announces but never sends
/// costs nothing; each read goes straight into the output, past the reader's
/// own buffer.
async fn read_output(read: &mut BufReader<OwnedReadHalf>, len: usize) -> Result<Vec<u8>, String> {
    let mut output = Vec::with_capacity(len.min(OUTPUT_PREALLOC));
    while output.len() < len {
        if output.len() == output.capacity() {
            output.reserve_exact(output.len().min(len - output.len()));
        }
        let room = (output.capacity() - output.len()).min(len - output.len());
        match (&mut *read).take(room as u64).read_buf(&mut output).await {
            Ok(0) => {
                return Err(format!(
                    "the connection ended after {} of {len} response bytes",
                    output.len()
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    use super::*;

    /// A fake hybrid-vsock socket whose "guest" answers with `reply`.
    async fn fake_guest(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ember-invoke-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let bound = path.clone();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = std::fs::remove_file(bound);
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            write.write_all(b"OK 1073741824\n").await.unwrap();
            let mut len = [0u8; 4];
            read.read_exact(&mut len).await.unwrap();
            let mut request = vec![0u8; u32::from_le_bytes(len) as usize];
            read.read_exact(&mut request).await.unwrap();
            if reply.is_empty() {
                // A guest that never answers.
                std::future::pending::<()>().await;
            }
            write.write_all(&reply).await.unwrap();
            request
        });
        (path.to_string_lossy().into_owned(), task)
    }

    /// A guest that takes `connections` connections in turn and answers
    /// `per_connection` invocations on each by echoing them.
    async fn echo_guest(connections: usize, per_connection: usize) -> String {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("ember-echo-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let bound = path.clone();
        tokio::spawn(async move {
            for _ in 0..connections {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let mut line = String::new();
                read.read_line(&mut line).await.unwrap();
                write.write_all(b"OK 1073741824\n").await.unwrap();
                for _ in 0..per_connection {
                    let mut len = [0u8; 4];
                    read.read_exact(&mut len).await.unwrap();
                    let mut request = vec![0u8; u32::from_le_bytes(len) as usize];
                    read.read_exact(&mut request).await.unwrap();
                    write.write_all(&framed(0, &request)).await.unwrap();
                }
            }
            let _ = std::fs::remove_file(bound);
            std::future::pending::<()>().await;
        });
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn idle_connections_are_reused_and_stale_ones_replaced() {
        runtime().block_on(async {
            // One connection for three calls: a second connect would never be accepted.
            let pool = Pool::default();
            let t = target(echo_guest(1, 3).await);
            for word in [&b"one"[..], b"two", b"three"] {
                assert_eq!(invoke(&pool, &t, word).await, Ok(word.to_vec()));
            }
            // The guest drops each connection after one call: the pooled one is stale.
            let pool = Pool::default();
            let t = target(echo_guest(2, 1).await);
            assert_eq!(invoke(&pool, &t, b"a").await, Ok(b"a".to_vec()));
            assert_eq!(invoke(&pool, &t, b"b").await, Ok(b"b".to_vec()));
        });
    }

    fn target(uds_path: String) -> InvocationTarget {
        InvocationTarget {
            uds_path,
            port: 1024,
            timeout: Duration::from_secs(5),
            max_concurrent: 64,
        }
    }

    fn framed(status: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![status];
        let len = u32::try_from(body.len()).expect("small test bodies");
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(body);
        v
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn request_is_framed_and_output_returned() {
        runtime().block_on(async {
            let (path, guest) = fake_guest(framed(0, b"output")).await;
            assert_eq!(
                invoke(&Pool::default(), &target(path), b"input").await,
                Ok(b"output".to_vec())
            );
            assert_eq!(guest.await.unwrap(), b"input");
        });
    }

    #[test]
    fn guest_failures_and_panics_carry_its_message() {
        runtime().block_on(async {
            let (path, _) = fake_guest(framed(1, b"bad input")).await;
            assert_eq!(
                invoke(&Pool::default(), &target(path), b"x").await,
                Err(Error::Failed("bad input".into()))
            );
            let (path, _) = fake_guest(framed(2, b"oops")).await;
            assert_eq!(
                invoke(&Pool::default(), &target(path), b"x").await,
                Err(Error::Panicked("oops".into()))
            );
        });
    }

    #[test]
    fn a_silent_guest_times_out_and_a_missing_socket_is_unreachable() {
        runtime().block_on(async {
            let (path, _) = fake_guest(Vec::new()).await;
            let mut t = target(path);
            t.timeout = Duration::from_millis(50);
            assert_eq!(
                invoke(&Pool::default(), &t, b"x").await,
                Err(Error::Timeout(Duration::from_millis(50)))
            );
            let missing = target("/nonexistent/ember.sock".into());
            assert!(matches!(
                invoke(&Pool::default(), &missing, b"x").await,
                Err(Error::Unreachable { .. })
            ));
        });
    }

    #[test]
    fn a_pooled_connection_with_unexpected_bytes_is_never_reused() {
        runtime().block_on(async {
            let path = unique_path("extra");
            let listener = UnixListener::bind(&path).unwrap();
            tokio::spawn(async move {
                // First connection: answers, then sends a frame nobody asked for.
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let request = handshake_and_request(&mut read, &mut write).await;
                write.write_all(&framed(0, &request)).await.unwrap();
                write.write_all(&framed(0, b"stale")).await.unwrap();
                // Second connection: an honest echo.
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                let request = handshake_and_request(&mut read, &mut write).await;
                write.write_all(&framed(0, &request)).await.unwrap();
                std::future::pending::<()>().await;
            });
            let pool = Pool::default();
            let t = target(path.to_string_lossy().into_owned());
            assert_eq!(invoke(&pool, &t, b"a").await, Ok(b"a".to_vec()));
            // Let the stray frame arrive before the next call looks at the pool.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(invoke(&pool, &t, b"b").await, Ok(b"b".to_vec()));
        });
    }

    #[test]
    fn invocations_past_the_limit_are_refused_and_slots_come_back() {
        runtime().block_on(async {
            let (path, _) = fake_guest(Vec::new()).await;
            let pool = std::sync::Arc::new(Pool::default());
            let mut t = target(path);
            t.max_concurrent = 1;
            t.timeout = Duration::from_millis(300);
            let first = tokio::spawn({
                let (pool, t) = (pool.clone(), t.clone());
                async move { invoke(&pool, &t, b"x").await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(invoke(&pool, &t, b"y").await, Err(Error::TooMany(1)));
            assert_eq!(first.await.unwrap(), Err(Error::Timeout(t.timeout)));
            assert_eq!(pool.in_flight.load(Ordering::SeqCst), 0);
        });
    }

    #[test]
    fn a_response_shorter_than_announced_is_a_protocol_error() {
        runtime().block_on(async {
            let mut reply = vec![0u8];
            reply.extend_from_slice(&MAX_OUTPUT_BYTES.to_le_bytes());
            reply.extend_from_slice(b"only this");
            let path = unique_path("short");
            let listener = UnixListener::bind(&path).unwrap();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                handshake_and_request(&mut read, &mut write).await;
                write.write_all(&reply).await.unwrap();
            });
            let t = target(path.to_string_lossy().into_owned());
            let result = invoke(&Pool::default(), &t, b"x").await;
            assert!(
                matches!(&result, Err(Error::Protocol(m)) if m.contains("after 9 of 67108864")),
                "{result:?}"
            );
        });
    }

    fn unique_path(tag: &str) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("ember-{tag}-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    /// The guest's side of a handshake and of one request.
    async fn handshake_and_request(
        read: &mut BufReader<OwnedReadHalf>,
        write: &mut OwnedWriteHalf,
    ) -> Vec<u8> {
        let mut line = String::new();
        read.read_line(&mut line).await.unwrap();
        write.write_all(b"OK 1073741824\n").await.unwrap();
        let mut len = [0u8; 4];
        read.read_exact(&mut len).await.unwrap();
        let mut request = vec![0u8; u32::from_le_bytes(len) as usize];
        read.read_exact(&mut request).await.unwrap();
        request
    }
}
