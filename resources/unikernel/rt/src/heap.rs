//! The global allocator: talc over the usable RAM between the end of the image and
//! 4 GiB (the end of the identity map).

use crate::bootinfo::MemRegion;

const IDENTITY_MAP_END: u64 = 1 << 32;
const PAGE: u64 = 4096;
/// The e820/PVH type of usable RAM.
const USABLE: u32 = 1;

#[cfg(not(any(test, feature = "hosted")))]
#[global_allocator]
static HEAP: talc::TalcLock<spinning_top::RawSpinlock, talc::source::Manual> =
    talc::TalcLock::new(talc::source::Manual);

/// The page-aligned `(start, end)` ranges of usable RAM in `[floor, 4 GiB)`.
pub fn usable_ranges(
    regions: impl Iterator<Item = MemRegion>,
    floor: u64,
) -> impl Iterator<Item = (u64, u64)> {
    regions.filter(|r| r.kind == USABLE).filter_map(move |r| {
        let start = r.start.max(floor).checked_next_multiple_of(PAGE)?;
        let end = r.start.saturating_add(r.size).min(IDENTITY_MAP_END) / PAGE * PAGE;
        (start < end).then_some((start, end))
    })
}

/// Gives the allocator the usable RAM above the image; returns how many bytes.
///
/// # Safety
/// `regions` must be the VMM's memory map, nothing in the usable RAM above the image
/// may be in use (the boot structures must have been read), and this must be
/// called once.
#[cfg(not(any(test, feature = "hosted")))]
pub unsafe fn init(regions: impl Iterator<Item = MemRegion>) -> usize {
    unsafe extern "C" {
        /// End of the loaded image (`.bss` included), from the linker script.
        static ember_image_end: u8;
    }
    let floor = (&raw const ember_image_end) as u64;
    let mut total = 0;
    let mut heap = HEAP.lock();
    for (start, end) in usable_ranges(regions, floor) {
        // A range no pointer can span is left out, like RAM above the identity map.
        let Ok(len) = usize::try_from(end - start) else {
            continue;
        };
        // SAFETY: the caller guarantees the range is unused RAM, identity-mapped
        // below 4 GiB, and handed over only once.
        if unsafe { heap.claim(start as *mut u8, len) }.is_some() {
            total += len;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(start: u64, size: u64, kind: u32) -> MemRegion {
        MemRegion { start, size, kind }
    }

    #[test]
    fn keeps_usable_ram_above_the_image_and_below_4_gib() {
        let map = [
            region(0, 0x9fc00, 1),
            region(0x9fc00, 0x400, 2),
            region(0x10_0000, 0xcff0_0000, 1),
            region(0xfec0_0000, 0x1000, 2),
            region(0x1_0000_0000, 0x4000_0000, 1),
        ];
        let ranges: Vec<_> = usable_ranges(map.into_iter(), 0x21_2345).collect();
        assert_eq!(ranges, [(0x21_3000, 0xd000_0000)]);
    }

    #[test]
    fn aligns_and_drops_slivers() {
        let map = [region(0x40_0800, 0x1000, 1), region(0x50_0000, 0x2800, 1)];
        let ranges: Vec<_> = usable_ranges(map.into_iter(), 0).collect();
        assert_eq!(ranges, [(0x50_0000, 0x50_2000)]);
    }
}
