//! The host side of an invocation (`api::invoke::invoke`) against a fake
//! guest on a Unix socket that answers the hybrid-vsock handshake and then
//! writes the input as its response, on a current-thread tokio runtime as
//! the API thread runs it, with a 20 ms time limit on a paused tokio clock
//! (it jumps ahead whenever every task waits, so the limit costs no real
//! time and the target runs at full speed). The client must come
//! back with an error or an output no longer than what the guest sent,
//! whatever the bytes (bad status, lengths past the limit, short frames,
//! stray bytes after a frame, no `OK` line).
//!
//! Input: a flags byte (bit 0: the guest skips the `OK` line, so the input
//! is the handshake answer too; bit 2: a second invocation on the same pool,
//! which may reuse the connection; bit 3: the guest writes its response twice
//! per connection; bits 1, 4 and 5 all set: the guest keeps its end open
//! instead of closing it after writing, so a short response runs into the
//! time limit), a chunk
//! that is the request payload, then the guest's response.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use ember::api::invoke::{invoke, Pool};
use ember::controller::InvocationTarget;
use ember_fuzz::bytes::Reader;
use ember_fuzz::scratch;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::runtime::Runtime;

const SKIP_OK: u8 = 1;
const STAY_OPEN: u8 = 0x32;
const TWO_CALLS: u8 = 4;
const TWICE: u8 = 8;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("cannot build a tokio runtime")
    })
}

/// Answers every connection: reads the `CONNECT` line, writes `OK` (unless
/// told not to) and the response, then takes whatever the host sends.
async fn fake_guest(listener: UnixListener, flags: u8, reply: Vec<u8>) {
    let mut drains = tokio::task::JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = Vec::new();
        let _ = (&mut read).take(64).read_until(b'\n', &mut line).await;
        if flags & SKIP_OK == 0 {
            let _ = write.write_all(b"OK 1073741824\n").await;
        }
        let _ = write.write_all(&reply).await;
        if flags & TWICE != 0 {
            let _ = write.write_all(&reply).await;
        }
        if flags & STAY_OPEN != STAY_OPEN {
            let _ = write.shutdown().await;
        }
        // Reading on means closing never resets the host's end under it.
        drains.spawn(async move {
            let mut sink = Vec::new();
            let _ = read.read_to_end(&mut sink).await;
            drop(write);
        });
    }
}

fuzz_target!(|data: &[u8]| {
    ember_fuzz::ignore_sigpipe();
    let mut r = Reader::new(data);
    let flags = r.u8();
    let payload = r.chunk(64).to_vec();
    let reply = r.rest().to_vec();
    let sent = reply.len() * if flags & TWICE != 0 { 2 } else { 1 };
    let path = scratch::fresh("guest.sock");
    let target = InvocationTarget {
        uds_path: path.to_string_lossy().into_owned(),
        port: 1024,
        timeout: Duration::from_millis(20),
        max_concurrent: 2,
    };
    runtime().block_on(async {
        let Ok(listener) = UnixListener::bind(&path) else {
            return;
        };
        let guest = tokio::spawn(fake_guest(listener, flags, reply));
        let pool = Pool::default();
        let calls = if flags & TWO_CALLS != 0 { 2 } else { 1 };
        for _ in 0..calls {
            if let Ok(output) = invoke(&pool, &target, &payload).await {
                assert!(output.len() <= sent, "more output than the guest sent");
            }
        }
        drop(pool);
        guest.abort();
        let _ = guest.await;
    });
    let _ = std::fs::remove_file(&path);
});
