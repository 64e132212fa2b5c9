//! `POST /invocations`: one function invocation over the guest's vsock.
//!
//! The API thread is just another host client of the hybrid vsock socket: it
//! connects, asks for the function's port with `CONNECT`, then speaks ember's
//! framing. Request: a little-endian u32 length and the payload. Response: a
//! status byte (0 ok, 1 the function failed, 2 it panicked), a little-endian
//! u32 length and the output or the error message. A connection carries any
//! number of invocations in turn, so idle ones are kept for the next call,
//! which then skips the handshake and its trip through the guest.

use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::controller::InvocationTarget;

/// Largest response ember accepts from a function.
pub const MAX_OUTPUT_BYTES: u32 = 64 << 20;
/// Idle connections kept per ember process.
const MAX_IDLE: usize = 8;

const STATUS_OK: u8 = 0;
const STATUS_FAILED: u8 = 1;
const STATUS_PANICKED: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the function did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the function on vsock port {port}: {reason}")]
    Unreachable { port: u32, reason: String },
    #[error("the function failed: {0}")]
    Failed(String),
    #[error("the function panicked: {0}")]
    Panicked(String),
    #[error("the guest broke the invocation protocol: {0}")]
    Protocol(String),
}

struct Connection {
    uds_path: String,
    port: u32,
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

/// Idle connections to functions.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    fn take(&self, target: &InvocationTarget) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        let at = idle
            .iter()
            .position(|c| c.port == target.port && c.uds_path == target.uds_path)?;
        Some(idle.swap_remove(at))
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
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
    let sent = async {
        conn.write.write_all(&len.to_le_bytes()).await?;
        conn.write.write_all(payload).await
    };
    if let Err(e) = sent.await {
        return Outcome::Stale(Error::Protocol(format!("cannot send the request: {e}")));
    }
    let mut head = [0u8; 5];
    if let Err(e) = conn.read.read_exact(&mut head).await {
        return Outcome::Stale(Error::Protocol(format!(
            "the connection ended before a response: {e}"
        )));
    }
    let out_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if out_len > MAX_OUTPUT_BYTES {
        return Outcome::Broken(Error::Protocol(format!(
            "a {out_len}-byte response exceeds ember's limit of {MAX_OUTPUT_BYTES}"
        )));
    }
    let mut output = vec![0u8; out_len as usize];
    if let Err(e) = conn.read.read_exact(&mut output).await {
        return Outcome::Broken(Error::Protocol(e.to_string()));
    }
    let result = match head[0] {
        STATUS_OK => Ok(output),
        STATUS_FAILED => Err(Error::Failed(String::from_utf8_lossy(&output).into_owned())),
        STATUS_PANICKED => Err(Error::Panicked(
            String::from_utf8_lossy(&output).into_owned(),
        )),
        other => return Outcome::Broken(Error::Protocol(format!("unknown status {other}"))),
    };
    pool.give_back(conn);
    Outcome::Answered(result)
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
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
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
        }
    }

    fn framed(status: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![status];
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
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
}
