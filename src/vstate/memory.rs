//! Guest memory: anonymous, lazily populated mappings laid out around the MMIO gap.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot map {size_mib} MiB of guest memory: {source}")]
    Map {
        size_mib: u64,
        source: vm_memory::mmap::FromRangesError,
    },
}

/// Maps `size_mib` MiB of guest RAM. Pages are only touched when the guest
/// (or a loader) first uses them, so the cost does not grow with the size.
pub fn create(size_mib: u64) -> Result<GuestMemoryMmap, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size_mib << 20)
        .into_iter()
        .map(|(start, len)| (GuestAddress(start), len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Map { size_mib, source })
}

#[cfg(test)]
mod tests {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

    use super::*;

    #[test]
    fn memory_has_the_requested_size_around_the_gap() {
        let mem = create(128).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.iter().map(|r| r.len()).sum::<u64>(), 128 << 20);
    }
}
