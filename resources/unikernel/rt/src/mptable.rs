//! CPU count from the Intel MultiProcessor table, which Firecracker-style VMMs write
//! instead of ACPI tables.

use core::fmt;

/// The table was found but is unusable.
#[derive(Debug, PartialEq, Eq)]
pub enum MpError {
    /// The floating pointer names no table (an MP "default configuration").
    NoConfigTable,
    BadSignature,
    BadChecksum,
    /// The table's length field is shorter than its header.
    BadLength,
    /// An entry of unknown type or one running past the table's length.
    BadEntry(u8),
}

impl fmt::Display for MpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MpError::NoConfigTable => f.write_str("no configuration table"),
            MpError::BadSignature => f.write_str("bad PCMP signature"),
            MpError::BadChecksum => f.write_str("bad checksum"),
            MpError::BadLength => f.write_str("bad table length"),
            MpError::BadEntry(kind) => write!(f, "bad entry of type {kind}"),
        }
    }
}

/// Where the MP spec says the floating pointer may be: the first KiB of the EBDA,
/// the last KiB of base memory, and the BIOS ROM area.
fn search_areas() -> [(usize, usize); 3] {
    // SAFETY: 0x40e (the BIOS data area's EBDA segment) is identity-mapped low RAM.
    let ebda_segment = unsafe { core::ptr::read_unaligned(0x40e as *const u16) };
    let ebda = match usize::from(ebda_segment) << 4 {
        0 => 0x9fc00,
        ebda => ebda,
    };
    [(ebda, 1024), (0x9fc00, 1024), (0xf0000, 0x10000)]
}

/// Counts the enabled processors in the guest's MP table; `None` if there is none.
pub fn count_cpus() -> Result<Option<u32>, MpError> {
    for (start, len) in search_areas() {
        // SAFETY: the search areas are identity-mapped low memory that the VMM backs
        // with RAM (or ROM) and nothing else writes.
        let area = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
        let Some(table) = find_floating_pointer(area)? else {
            continue;
        };
        // SAFETY: the checksummed floating pointer names the table's address; its
        // header holds the length read next, and both are identity-mapped.
        let table = unsafe {
            let header = core::slice::from_raw_parts(table as *const u8, HEADER_LEN);
            if &header[..4] != b"PCMP" {
                return Err(MpError::BadSignature);
            }
            let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
            core::slice::from_raw_parts(table as *const u8, len.max(HEADER_LEN))
        };
        return count_enabled_processors(table).map(Some);
    }
    Ok(None)
}

const HEADER_LEN: usize = 44;

/// The configuration table address from the first valid `_MP_` structure in `area`.
fn find_floating_pointer(area: &[u8]) -> Result<Option<usize>, MpError> {
    for fp in area.chunks_exact(16) {
        if &fp[..4] != b"_MP_" {
            continue;
        }
        // Byte 8 is the structure's length in 16-byte units (always 1 in practice).
        if fp[8] != 1 || checksum(fp) != 0 {
            continue;
        }
        return match u32::from_le_bytes([fp[4], fp[5], fp[6], fp[7]]) {
            0 => Err(MpError::NoConfigTable),
            table => Ok(Some(table as usize)),
        };
    }
    Ok(None)
}

/// Counts processor entries with the enabled flag in a complete configuration table.
pub fn count_enabled_processors(table: &[u8]) -> Result<u32, MpError> {
    if table.len() < HEADER_LEN || &table[..4] != b"PCMP" {
        return Err(MpError::BadSignature);
    }
    let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
    let table = table
        .get(..len)
        .filter(|t| t.len() >= HEADER_LEN)
        .ok_or(MpError::BadLength)?;
    if checksum(table) != 0 {
        return Err(MpError::BadChecksum);
    }
    // Entries run to the table's length; like Linux, ignore the entry count field,
    // which some firmware (qboot) leaves at zero.
    let mut at = HEADER_LEN;
    let mut cpus = 0;
    while let Some(&kind) = table.get(at) {
        let size = match kind {
            0 => 20,
            1..=4 => 8,
            _ => return Err(MpError::BadEntry(kind)),
        };
        let entry = table.get(at..at + size).ok_or(MpError::BadEntry(kind))?;
        if kind == 0 && entry[3] & 1 != 0 {
            cpus += 1;
        }
        at += size;
    }
    Ok(cpus)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix_checksum(bytes: &mut [u8], at: usize) {
        bytes[at] = 0;
        bytes[at] = 0u8.wrapping_sub(checksum(bytes));
    }

    /// A table with processors enabled as given, plus a bus and an I/O APIC entry.
    fn table(enabled: &[bool]) -> Vec<u8> {
        let mut t = vec![0u8; HEADER_LEN];
        t[..4].copy_from_slice(b"PCMP");
        for (i, &on) in enabled.iter().enumerate() {
            let mut cpu = [0u8; 20];
            cpu[1] = u8::try_from(i).unwrap();
            cpu[3] = u8::from(on);
            t.extend_from_slice(&cpu);
        }
        t.extend_from_slice(&[1, 0, b'I', b'S', b'A', 0, 0, 0]);
        t.extend_from_slice(&[2, 3, 0x11, 1, 0, 0, 0xc0, 0xfe]);
        let len = u16::try_from(t.len()).unwrap();
        t[4..6].copy_from_slice(&len.to_le_bytes());
        fix_checksum(&mut t, 7);
        t
    }

    #[test]
    fn counts_enabled_processors() {
        assert_eq!(
            count_enabled_processors(&table(&[true, false, true])),
            Ok(2)
        );
        let mut bad = table(&[true]);
        bad[10] ^= 1;
        assert_eq!(count_enabled_processors(&bad), Err(MpError::BadChecksum));
        let mut cut = table(&[true]);
        cut.pop();
        cut[4] -= 1;
        fix_checksum(&mut cut, 7);
        assert_eq!(count_enabled_processors(&cut), Err(MpError::BadEntry(2)));
        let mut unknown = table(&[true]);
        unknown[HEADER_LEN + 20] = 9;
        fix_checksum(&mut unknown, 7);
        assert_eq!(
            count_enabled_processors(&unknown),
            Err(MpError::BadEntry(9))
        );
    }

    #[test]
    fn finds_floating_pointer() {
        let mut area = vec![0u8; 64];
        let fp = &mut area[32..48];
        fp[..4].copy_from_slice(b"_MP_");
        fp[4..8].copy_from_slice(&0x9fc10u32.to_le_bytes());
        fp[8] = 1;
        fix_checksum(fp, 10);
        assert_eq!(find_floating_pointer(&area), Ok(Some(0x9fc10)));
        area[33] = b'X';
        assert_eq!(find_floating_pointer(&area), Ok(None));
    }
}
