//! What ember's fuzz targets share: a byte reader that turns fuzz input into
//! values (and a writer that produces the same format, for the seed corpus),
//! a scratch directory for files and sockets, guest memory with split queues
//! built from input, the vsock harness both vsock targets drive, and the
//! driver of the guest runtime's invocation server, and the MMDS harness.
//!
//! Input formats are plain and lenient: every read past the end yields zeros,
//! so any byte string is a valid input and the seeds stay readable.

pub mod bytes;
pub mod guest_runtime;
pub mod mmds;
pub mod queue;
pub mod scratch;
pub mod vsock;

#[cfg(test)]
mod seeds;

/// A snapshot state file around `payload` with the given header fields and
/// a correct CRC-64 (the layout `ember_snapshot::format` documents).
/// `declared_len` overrides the payload length in the header.
pub fn state_file(version: u16, arch: &[u8], declared_len: Option<u64>, payload: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(payload.len() + 42);
    file.extend_from_slice(&ember_snapshot::format::MAGIC);
    file.extend_from_slice(&version.to_le_bytes());
    let mut arch_field = [0u8; 16];
    let n = arch.len().min(16);
    arch_field[..n].copy_from_slice(&arch[..n]);
    file.extend_from_slice(&arch_field);
    let len = declared_len.unwrap_or(payload.len() as u64);
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(payload);
    static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
    let crc = CRC64.checksum(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

/// Ignores SIGPIPE, as the Rust runtime does in ember's `main` (a fuzz
/// target has libFuzzer's `main` instead): a write to a socket whose peer is
/// gone is an `EPIPE` error, not the end of the process.
pub fn ignore_sigpipe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: setting a signal's disposition to SIG_IGN involves no handler code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    });
}
