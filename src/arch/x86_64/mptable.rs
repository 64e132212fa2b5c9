//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
//! learns how many vCPUs it has and how the IOAPIC pins are wired.
//!
//! No rust-vmm crate builds one, so ember does, as bytes: the table is written
//! once at boot and the byte layout is what the spec defines.

use super::layout::{APIC_START, IOAPIC_START, IRQ_MAX};

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6, as a generic modern x86 CPU signature.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature bits the table advertises: FPU and APIC.
const CPU_FEATURES: u32 = 1 | (1 << 9);

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// Most vCPUs one table can describe in the 1 KiB EBDA window.
pub const MAX_CPUS: u8 = 32;

/// Why a table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// More vCPUs than the MP table has entries for.
    #[error("the MP table supports 1 to {MAX_CPUS} vCPUs, not {0}")]
    TooManyCpus(u8),
    /// A value the layout guarantees to fit, found not to.
    #[error("{what} ({value:#x}) does not fit its MP table field")]
    FieldOverflow { what: &'static str, value: u64 },
}

/// `value` as the (narrower) table field it goes in.
fn field<T: TryFrom<u64>>(what: &'static str, value: u64) -> Result<T, Error> {
    T::try_from(value).map_err(|_| Error::FieldOverflow { what, value })
}

/// The floating pointer followed by the configuration table, for a table
/// placed at guest-physical `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, Error> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let config_base = base + FLOATING_POINTER_LEN as u64;

    let mut entries = Vec::new();
    let mut entry_count: u16 = 0;
    for cpu in 0..num_cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&field::<u32>("IOAPIC address", IOAPIC_START)?.to_le_bytes());
    entry_count += 2;
    for irq in 0..=field::<u8>("last IOAPIC pin", u64::from(IRQ_MAX))? {
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        entry_count += 1;
    }
    // LINT0 of every local APIC takes the PIC's ExtINT; LINT1 is NMI.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = HEADER_LEN + entries.len();
    let mut table = Vec::with_capacity(FLOATING_POINTER_LEN + table_len);

    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&field::<u32>("table address", config_base)?.to_le_bytes());
    table.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table[..FLOATING_POINTER_LEN]);

    let header_at = table.len();
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&field::<u16>("table length", table_len as u64)?.to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"EMBER   ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&field::<u32>("local APIC address", APIC_START)?.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[header_at + 7] = checksum(&table[header_at..]);
    Ok(table)
}

/// The byte that makes `bytes` sum to zero (its own slot must hold 0).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROCESSOR_ENTRY_LEN: usize = 20;
    const SMALL_ENTRY_LEN: usize = 8;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Parses a table the way a guest does and returns the enabled CPUs' APIC ids.
    fn guest_view(table: &[u8], base: u64) -> Vec<u8> {
        assert_eq!(&table[..4], b"_MP_");
        assert_eq!(sum(&table[..16]), 0, "floating pointer checksum");
        let config = u64::from(u32::from_le_bytes(table[4..8].try_into().unwrap()));
        let header = &table[usize::try_from(config - base).expect("table is in memory")..];
        assert_eq!(&header[..4], b"PCMP");
        let len = u16::from_le_bytes([header[4], header[5]]) as usize;
        assert_eq!(sum(&header[..len]), 0, "configuration table checksum");
        let count = u16::from_le_bytes([header[34], header[35]]);
        let mut at = HEADER_LEN;
        let mut cpus = Vec::new();
        for _ in 0..count {
            match header[at] {
                ENTRY_PROCESSOR => {
                    if header[at + 3] & CPU_ENABLED != 0 {
                        cpus.push(header[at + 1]);
                    }
                    at += PROCESSOR_ENTRY_LEN;
                }
                _ => at += SMALL_ENTRY_LEN,
            }
        }
        assert_eq!(at, len, "entries fill the table exactly");
        cpus
    }

    #[test]
    fn guest_sees_every_vcpu_with_its_apic_id() {
        for cpus in [1u8, 2, 7, 32] {
            let table = build(cpus, 0x9fc00).unwrap();
            assert_eq!(guest_view(&table, 0x9fc00), (0..cpus).collect::<Vec<_>>());
        }
    }

    #[test]
    fn largest_table_fits_in_the_ebda_kilobyte() {
        assert!(build(MAX_CPUS, 0x9fc00).unwrap().len() <= 1024);
    }

    #[test]
    fn out_of_range_cpu_counts_are_refused() {
        assert_eq!(build(0, 0), Err(Error::TooManyCpus(0)));
        assert_eq!(build(33, 0), Err(Error::TooManyCpus(33)));
    }
}
