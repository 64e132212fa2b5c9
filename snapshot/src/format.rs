//! The on-disk snapshot state file.
//!
//! Layout, all integers little-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `EMBERSNP` |
//! | 2 | format version (`u16`, currently 2) |
//! | 16 | architecture the snapshot was taken on, ASCII, NUL-padded |
//! | 8 | payload length (`u64`) |
//! | n | payload: the state, encoded with postcard |
//! | 8 | CRC-64/XZ over every byte before it |
//!
//! The version sits right after the magic so that a later format may change
//! everything behind it and still be told apart.
//!
//! The payload is encoded with [postcard]: its wire format is specified and
//! frozen since 1.0, it is compact (varint integers), and it is maintained;
//! bincode, the other common choice, ceased development in 2025
//! (RUSTSEC-2025-0141). postcard does not support `deserialize_any`, so state
//! types must not use `#[serde(untagged)]`, `flatten` or
//! `skip_serializing_if`.

use std::io::{self, Read, Write};

use crc::{Crc, CRC_64_XZ};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// First bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"EMBERSNP";
/// The format version this build writes and the only one it reads.
pub const FORMAT_VERSION: u16 = 4;
/// The architecture recorded in snapshots taken here: register and device
/// state of one architecture means nothing on another.
pub const ARCH: &str = std::env::consts::ARCH;

const ARCH_LEN: usize = 16;
const VERSION_END: usize = MAGIC.len() + 2;
const ARCH_END: usize = VERSION_END + ARCH_LEN;
/// Length of the fixed header in front of the payload.
pub const HEADER_LEN: usize = ARCH_END + 8;
const CHECKSUM_LEN: usize = 8;

const _: () = assert!(ARCH.len() <= ARCH_LEN);

static CRC64: Crc<u64> = Crc::<u64>::new(&CRC_64_XZ);

/// What is wrong with a snapshot file. Messages read well after a prefix
/// such as "snapshot file 'x': ".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file that does not start with the magic.
    #[error("not an ember snapshot (it starts with {found:02x?}, not \"EMBERSNP\")")]
    NotASnapshot { found: Vec<u8> },
    /// A state file of a format this build does not read.
    #[error("unsupported snapshot format version {found} (this build reads version {supported})")]
    UnsupportedVersion { found: u16, supported: u16 },
    /// A snapshot from another architecture.
    #[error("taken on {found}, but this host is {expected}")]
    WrongArch {
        found: String,
        expected: &'static str,
    },
    /// A file shorter than its own lengths say.
    #[error("truncated: the {part} needs {needed} bytes but only {available} remain")]
    Truncated {
        part: &'static str,
        needed: u64,
        available: u64,
    },
    /// A payload whose CRC-64 does not match: the file was damaged.
    #[error("corrupted: checksum mismatch (stored {stored:#018x}, computed {computed:#018x})")]
    ChecksumMismatch { stored: u64, computed: u64 },
    /// Bytes after the checksum: the file is not what was written.
    #[error("corrupted: unexpected data after the checksum")]
    TrailingData,
    /// A payload that is not the state this build saves.
    #[error("payload does not decode as the expected state: {0}")]
    Decode(#[source] postcard::Error),
    /// A payload with bytes the state does not account for.
    #[error(
        "payload has {0} bytes left over after the expected state: it holds a different state type"
    )]
    UnusedPayload(usize),
    /// The state cannot be encoded.
    #[error("state cannot be encoded: {0}")]
    Encode(#[source] postcard::Error),
    /// Reading or writing the file.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// The fixed header of a snapshot file, readable without decoding (or
/// checksumming) the payload, e.g. to describe a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u16,
    /// Architecture the snapshot was taken on (lossily decoded).
    pub arch: String,
    pub payload_len: u64,
}

/// Writes `state` as a snapshot file for this host's architecture, flushing
/// `out` so that write errors are not lost in a buffer.
pub fn save<T: Serialize, W: Write>(mut out: W, state: &T) -> Result<(), Error> {
    let payload = postcard::to_stdvec(state).map_err(Error::Encode)?;
    let mut header = [0u8; HEADER_LEN];
    header[..MAGIC.len()].copy_from_slice(&MAGIC);
    header[MAGIC.len()..VERSION_END].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[VERSION_END..ARCH_END].copy_from_slice(&arch_field(ARCH));
    // usize -> u64 is lossless on every target Rust supports.
    header[ARCH_END..].copy_from_slice(&(payload.len() as u64).to_le_bytes());

    let mut digest = CRC64.digest();
    digest.update(&header);
    digest.update(&payload);
    out.write_all(&header)?;
    out.write_all(&payload)?;
    out.write_all(&digest.finalize().to_le_bytes())?;
    out.flush()?;
    Ok(())
}

/// Reads a snapshot file, checks that it is intact and was taken on this
/// architecture, and decodes its state.
pub fn load<T: DeserializeOwned, R: Read>(mut input: R) -> Result<T, Error> {
    let (raw_header, header) = read_header_bytes(&mut input)?;

    let mut payload = Vec::new();
    // `take` bounds the read by the file itself: a corrupted length cannot
    // make us allocate more than the file holds.
    (&mut input)
        .take(header.payload_len)
        .read_to_end(&mut payload)?;
    if (payload.len() as u64) < header.payload_len {
        return Err(Error::Truncated {
            part: "payload",
            needed: header.payload_len,
            available: payload.len() as u64,
        });
    }
    let mut stored = [0u8; CHECKSUM_LEN];
    let got = read_full(&mut input, &mut stored)?;
    if got < CHECKSUM_LEN {
        return Err(Error::Truncated {
            part: "checksum",
            needed: CHECKSUM_LEN as u64,
            available: got as u64,
        });
    }
    let stored = u64::from_le_bytes(stored);
    let mut digest = CRC64.digest();
    digest.update(&raw_header);
    digest.update(&payload);
    let computed = digest.finalize();
    if stored != computed {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    if read_full(&mut input, &mut [0u8; 1])? != 0 {
        return Err(Error::TrailingData);
    }
    // Checked after the checksum so that a flipped byte here reads as
    // corruption, not as a snapshot from elsewhere.
    if raw_header[VERSION_END..ARCH_END] != arch_field(ARCH) {
        return Err(Error::WrongArch {
            found: header.arch,
            expected: ARCH,
        });
    }

    let (state, rest) = postcard::take_from_bytes(&payload).map_err(Error::Decode)?;
    if !rest.is_empty() {
        return Err(Error::UnusedPayload(rest.len()));
    }
    Ok(state)
}

/// Reads only the header: checks the magic and version, nothing else.
pub fn read_header<R: Read>(mut input: R) -> Result<Header, Error> {
    read_header_bytes(&mut input).map(|(_, header)| header)
}

fn read_header_bytes<R: Read>(input: &mut R) -> Result<([u8; HEADER_LEN], Header), Error> {
    let mut raw = [0u8; HEADER_LEN];
    let got = read_full(input, &mut raw)?;
    let truncated = || Error::Truncated {
        part: "header",
        needed: HEADER_LEN as u64,
        available: got as u64,
    };

    let magic_got = got.min(MAGIC.len());
    if raw[..magic_got] != MAGIC[..magic_got] {
        return Err(Error::NotASnapshot {
            found: raw[..magic_got].to_vec(),
        });
    }
    if got < VERSION_END {
        return Err(truncated());
    }
    // Checked before the rest of the header is needed: another version may
    // lay it out differently.
    let version = u16::from_le_bytes([raw[MAGIC.len()], raw[MAGIC.len() + 1]]);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if got < HEADER_LEN {
        return Err(truncated());
    }

    let arch = &raw[VERSION_END..ARCH_END];
    let arch_end = arch.iter().position(|&b| b == 0).unwrap_or(ARCH_LEN);
    let mut len = [0u8; 8];
    len.copy_from_slice(&raw[ARCH_END..]);
    let header = Header {
        version,
        arch: String::from_utf8_lossy(&arch[..arch_end]).into_owned(),
        payload_len: u64::from_le_bytes(len),
    };
    Ok((raw, header))
}

fn arch_field(arch: &str) -> [u8; ARCH_LEN] {
    let mut field = [0u8; ARCH_LEN];
    field[..arch.len()].copy_from_slice(arch.as_bytes());
    field
}

/// Like `read_exact`, but a short input is not an error: returns how many
/// bytes were read, so that truncation can be reported with its size.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Device {
        Serial { base: u16, irq: u32 },
        Block(Option<String>, Vec<u8>),
        Balloon,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Vcpu {
        regs: [u64; 4],
        msrs: Vec<(u32, u64)>,
        pending: Option<u8>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        name: String,
        vcpus: Vec<Vcpu>,
        devices: Vec<Device>,
        clock: Option<i128>,
        nothing: Option<Box<State>>,
    }

    fn sample() -> State {
        State {
            name: "vm-1".into(),
            vcpus: vec![
                Vcpu {
                    regs: [0, 1, u64::MAX, 0xdead_beef],
                    msrs: vec![(0x10, 12345), (0xc000_0080, 0xd01)],
                    pending: Some(32),
                },
                Vcpu {
                    regs: [7; 4],
                    msrs: Vec::new(),
                    pending: None,
                },
            ],
            devices: vec![
                Device::Serial {
                    base: 0x3f8,
                    irq: 4,
                },
                Device::Block(Some("rootfs".into()), vec![1, 2, 3]),
                Device::Block(None, Vec::new()),
                Device::Balloon,
            ],
            clock: Some(-42),
            nothing: None,
        }
    }

    fn saved(state: &State) -> Vec<u8> {
        let mut out = Vec::new();
        save(&mut out, state).unwrap();
        out
    }

    /// Recomputes the trailing checksum after a deliberate header edit.
    fn reseal(bytes: &mut [u8]) {
        let body = bytes.len() - CHECKSUM_LEN;
        let crc = CRC64.checksum(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }

    fn load_state(bytes: &[u8]) -> Result<State, Error> {
        load(bytes)
    }

    #[test]
    fn round_trip_nested_state() {
        let bytes = saved(&sample());
        assert_eq!(&bytes[..8], b"EMBERSNP");
        assert_eq!(load_state(&bytes).unwrap(), sample());
    }

    #[test]
    fn header_describes_the_file() {
        let bytes = saved(&sample());
        let header = read_header(&bytes[..]).unwrap();
        assert_eq!(header.version, FORMAT_VERSION);
        assert_eq!(header.arch, ARCH);
        assert_eq!(
            header.payload_len,
            (bytes.len() - HEADER_LEN - CHECKSUM_LEN) as u64
        );
        // The header alone is enough.
        assert_eq!(read_header(&bytes[..HEADER_LEN]).unwrap(), header);
    }

    #[test]
    fn wrong_magic_is_not_a_snapshot() {
        let mut bytes = saved(&sample());
        bytes[0] = b'X';
        assert!(matches!(
            load_state(&bytes),
            Err(Error::NotASnapshot { found }) if found[0] == b'X'
        ));
        assert!(matches!(
            load_state(b"#!/bin/sh\necho hello\n"),
            Err(Error::NotASnapshot { .. })
        ));
        // Too short to hold the magic, and not a prefix of it.
        assert!(matches!(
            read_header(&b"EMBX"[..]),
            Err(Error::NotASnapshot { .. })
        ));
    }

    #[test]
    fn other_versions_are_refused() {
        for version in [
            0u16,
            1,
            FORMAT_VERSION - 1,
            FORMAT_VERSION + 1,
            0x0100,
            u16::MAX,
        ] {
            let mut bytes = saved(&sample());
            bytes[8..10].copy_from_slice(&version.to_le_bytes());
            match load_state(&bytes) {
                Err(Error::UnsupportedVersion { found, supported }) => {
                    assert_eq!((found, supported), (version, FORMAT_VERSION));
                }
                other => panic!("version {version}: {other:?}"),
            }
            // A future version's header may be shorter than ours.
            assert!(matches!(
                read_header(&bytes[..10]),
                Err(Error::UnsupportedVersion { .. })
            ));
        }
    }

    #[test]
    fn other_architecture_is_refused() {
        let other = if ARCH == "x86_64" {
            "aarch64"
        } else {
            "x86_64"
        };
        let mut bytes = saved(&sample());
        bytes[VERSION_END..ARCH_END].copy_from_slice(&arch_field(other));
        reseal(&mut bytes);
        assert_eq!(read_header(&bytes[..]).unwrap().arch, other);
        match load_state(&bytes) {
            Err(Error::WrongArch { found, expected }) => {
                assert_eq!((found.as_str(), expected), (other, ARCH));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncation_is_reported_with_its_part() {
        let bytes = saved(&sample());
        let len = bytes.len();
        let cases = [
            (0, "header"),
            (4, "header"),
            (8, "header"),
            (9, "header"),
            (20, "header"),
            (HEADER_LEN - 1, "header"),
            (HEADER_LEN, "payload"),
            (HEADER_LEN + 1, "payload"),
            (len - CHECKSUM_LEN - 1, "payload"),
            (len - CHECKSUM_LEN, "checksum"),
            (len - 1, "checksum"),
        ];
        for (at, expected_part) in cases {
            match load_state(&bytes[..at]) {
                Err(Error::Truncated {
                    part,
                    needed,
                    available,
                }) => {
                    assert_eq!(part, expected_part, "cut at {at}");
                    assert!(available < needed, "cut at {at}");
                }
                other => panic!("cut at {at}: {other:?}"),
            }
        }
    }

    #[test]
    fn flipped_bytes_are_caught() {
        let bytes = saved(&sample());
        let len = bytes.len();
        let flip = |at: usize| {
            let mut b = bytes.clone();
            b[at] ^= 0x01;
            load_state(&b)
        };
        assert!(matches!(flip(3), Err(Error::NotASnapshot { .. })));
        assert!(matches!(flip(8), Err(Error::UnsupportedVersion { .. })));
        // Arch bytes are covered by the checksum, which is checked first.
        assert!(matches!(
            flip(VERSION_END),
            Err(Error::ChecksumMismatch { .. })
        ));
        let with_payload_len = |n: u64| {
            let mut b = bytes.clone();
            b[ARCH_END..HEADER_LEN].copy_from_slice(&n.to_le_bytes());
            load_state(&b)
        };
        let real = (len - HEADER_LEN - CHECKSUM_LEN) as u64;
        // One byte longer: the payload eats into the checksum.
        assert!(matches!(
            with_payload_len(real + 1),
            Err(Error::Truncated {
                part: "checksum",
                needed: 8,
                available: 7
            })
        ));
        assert!(matches!(
            with_payload_len(real - 1),
            Err(Error::ChecksumMismatch { .. })
        ));
        // A huge length is bounded by the file, not allocated up front.
        assert!(matches!(
            with_payload_len(1 << 62),
            Err(Error::Truncated {
                part: "payload",
                ..
            })
        ));
        for at in [HEADER_LEN, HEADER_LEN + 5, len - CHECKSUM_LEN - 1] {
            assert!(
                matches!(flip(at), Err(Error::ChecksumMismatch { .. })),
                "payload byte {at}"
            );
        }
        for at in len - CHECKSUM_LEN..len {
            assert!(
                matches!(flip(at), Err(Error::ChecksumMismatch { .. })),
                "checksum byte {at}"
            );
        }
    }

    #[test]
    fn data_after_the_checksum_is_refused() {
        let mut bytes = saved(&sample());
        bytes.push(0);
        assert!(matches!(load_state(&bytes), Err(Error::TrailingData)));
    }

    #[test]
    fn payload_of_another_type_is_refused() {
        // Intact file, but a `u8` is not a `State`.
        let mut bytes = Vec::new();
        save(&mut bytes, &7u8).unwrap();
        assert!(matches!(load_state(&bytes), Err(Error::Decode(_))));

        let mut bytes = Vec::new();
        save(&mut bytes, &(1u8, 2u8)).unwrap();
        assert!(matches!(
            load::<u8, _>(&bytes[..]),
            Err(Error::UnusedPayload(1))
        ));
    }

    #[test]
    fn unencodable_state_is_an_error() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let mut out = Vec::new();
        assert!(matches!(save(&mut out, &Refuses), Err(Error::Encode(_))));
        assert!(out.is_empty(), "nothing is written for a failed encode");
    }

    #[test]
    fn write_errors_surface() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(matches!(save(Full, &sample()), Err(Error::Io(_))));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let e = Error::Truncated {
            part: "payload",
            needed: 100,
            available: 40,
        };
        assert_eq!(
            e.to_string(),
            "truncated: the payload needs 100 bytes but only 40 remain"
        );
        let e = Error::UnsupportedVersion {
            found: 2,
            supported: 1,
        };
        assert_eq!(
            e.to_string(),
            "unsupported snapshot format version 2 (this build reads version 1)"
        );
    }

    /// xorshift64: enough randomness to scatter corruptions, no extra crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).expect("below n, a usize")
        }
    }

    #[test]
    fn random_damage_is_always_rejected() {
        let bytes = saved(&sample());
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..3000 {
            // Any single-byte change is detected: CRC-64 catches every burst
            // of up to 64 bits, and the unchecked fields fail on their own.
            let mut b = bytes.clone();
            let at = rng.below(b.len());
            let mask = u8::try_from(rng.below(255) + 1).expect("1 to 255");
            b[at] ^= mask;
            assert!(load_state(&b).is_err(), "byte {at} ^ {mask:#x} accepted");
            let _ = read_header(&b[..]);

            let cut = rng.below(bytes.len());
            assert!(load_state(&bytes[..cut]).is_err(), "cut at {cut} accepted");
        }
    }

    #[test]
    fn random_files_with_a_valid_header_never_panic() {
        let mut rng = Rng(42);
        for _ in 0..2000 {
            let len = rng.below(200);
            let mut b: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            let keep = b.len().min(VERSION_END);
            b[..keep].copy_from_slice(&[&MAGIC[..], &[1, 0]].concat()[..keep]);
            if b.len() > HEADER_LEN + CHECKSUM_LEN && rng.below(2) == 0 {
                // Make the length and checksum agree so that decoding runs.
                let n = (b.len() - HEADER_LEN - CHECKSUM_LEN) as u64;
                b[VERSION_END..ARCH_END].copy_from_slice(&arch_field(ARCH));
                b[ARCH_END..HEADER_LEN].copy_from_slice(&n.to_le_bytes());
                reseal(&mut b);
            }
            let _ = load_state(&b);
        }
    }
}
