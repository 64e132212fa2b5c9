//! Just enough ACPI to find PCI: the RSDP in the BIOS area, the XSDT it points
//! at, and the MCFG table's configuration space (ECAM) base. Every table is in
//! RAM, so the walk costs no VM exit.

/// Where the BIOS area scan for the RSDP runs (ACPI 6.5 §5.2.5.1), 16-byte steps.
const BIOS_AREA: core::ops::Range<usize> = 0xe_0000..0x10_0000;
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// Bytes of a table header, after which the XSDT's entries and the MCFG's
/// reserved field start.
const HEADER: usize = 36;

/// The ECAM base of PCI segment 0, bus 0, as the MCFG table gives it. `read`
/// returns the `len` bytes at a guest-physical address, or `None` where there is
/// no memory to read.
pub fn ecam_base<'a>(read: impl Fn(usize, usize) -> Option<&'a [u8]>) -> Option<u64> {
    let rsdp = BIOS_AREA
        .step_by(16)
        .find_map(|at| read(at, 36).filter(|b| b.starts_with(RSDP_SIGNATURE)))?;
    let xsdt = usize::try_from(u64_at(rsdp, 24)?).ok()?;
    let xsdt_len = usize::try_from(u32_at(read(xsdt, HEADER)?, 4)?).ok()?;
    let entries = read(xsdt, xsdt_len)?.get(HEADER..)?;
    entries.chunks_exact(8).find_map(|entry| {
        let table = usize::try_from(u64_at(entry, 0)?).ok()?;
        let header = read(table, HEADER)?;
        if !header.starts_with(b"MCFG") {
            return None;
        }
        // The first allocation: base (8 bytes), segment, start and end bus.
        let allocation = read(table + HEADER + 8, 16)?;
        let (segment, start_bus) = (allocation.get(8..10)?, *allocation.get(10)?);
        (segment == [0, 0] && start_bus == 0).then(|| u64_at(allocation, 0))?
    })
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Reads guest memory through the identity map.
#[cfg(not(any(test, feature = "hosted")))]
pub fn identity_read(address: usize, len: usize) -> Option<&'static [u8]> {
    if address < BIOS_AREA.start || address.checked_add(len)? > 1 << 32 {
        return None;
    }
    // SAFETY: the identity map covers the first 4 GiB and the address is not null;
    // ember writes its ACPI tables into RAM, which nothing writes afterwards.
    Some(unsafe { core::slice::from_raw_parts(address as *const u8, len) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Memory from 0xe0000 with an RSDP, an XSDT listing a FACP and an MCFG.
    fn tables(mcfg_base: u64) -> Vec<u8> {
        let mut mem = vec![0u8; 0x1000];
        mem[0x40..0x48].copy_from_slice(RSDP_SIGNATURE);
        mem[0x40 + 24..0x40 + 32].copy_from_slice(&0xe0100u64.to_le_bytes());
        let xsdt = 0x100;
        mem[xsdt..xsdt + 4].copy_from_slice(b"XSDT");
        mem[xsdt + 4..xsdt + 8].copy_from_slice(&52u32.to_le_bytes());
        mem[xsdt + 36..xsdt + 44].copy_from_slice(&0xe0200u64.to_le_bytes());
        mem[xsdt + 44..xsdt + 52].copy_from_slice(&0xe0300u64.to_le_bytes());
        mem[0x200..0x204].copy_from_slice(b"FACP");
        mem[0x300..0x304].copy_from_slice(b"MCFG");
        mem[0x300 + 44..0x300 + 52].copy_from_slice(&mcfg_base.to_le_bytes());
        mem
    }

    fn reader<'a>(mem: &'a [u8]) -> impl Fn(usize, usize) -> Option<&'a [u8]> {
        move |at, len| mem.get(at.checked_sub(0xe0000)?..at - 0xe0000 + len)
    }

    #[test]
    fn finds_the_ecam_through_the_xsdt() {
        let mem = tables(0xe000_0000);
        assert_eq!(ecam_base(reader(&mem)), Some(0xe000_0000));
    }

    #[test]
    fn no_rsdp_or_no_mcfg_is_no_pci() {
        let mut mem = tables(0xe000_0000);
        mem[0x300] = b'X';
        assert_eq!(ecam_base(reader(&mem)), None);
        let mem = vec![0u8; 0x1000];
        assert_eq!(ecam_base(reader(&mem)), None);
        // An XSDT that claims to run past memory.
        let mut mem = tables(0xe000_0000);
        mem[0x104..0x108].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(ecam_base(reader(&mem)), None);
    }
}
