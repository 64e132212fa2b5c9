//! Guest memory files, as plain byte files independent of KVM and vm-memory.
//!
//! A memory file holds the guest's regions back to back, in the order given,
//! each starting at the offset returned by [`write_full`] / [`write_diff`];
//! the snapshot records `(guest_addr, size, file_offset)` per region from
//! those offsets. Region sizes must be whole 4 KiB pages so that every page
//! of every region sits at a page-aligned file offset.
//!
//! A diff file has the same size and layout as the full file but holds only
//! the pages dirtied since the last snapshot; every other page is a hole.
//! The holes are what [`merge`] relies on to tell changed pages from
//! untouched ones, so a diff file must not be copied with a tool that turns
//! zero-filled ranges into holes (e.g. `cp --sparse=always`): a page the
//! guest zeroed would then be lost.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The page size of KVM's dirty log on the architectures ember supports.
pub const PAGE_SIZE: u64 = PAGE_BYTES as u64;
/// [`PAGE_SIZE`] as a length in memory.
const PAGE_BYTES: usize = 4096;
const COPY_CHUNK: usize = 1 << 20;

/// What is wrong with a memory file or the regions written to one. Messages
/// read well after a prefix such as "memory file 'x': ".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guest memory region that is not whole pages.
    #[error("region {index} is {len} bytes, not a multiple of the {PAGE_SIZE}-byte page")]
    UnalignedRegion { index: usize, len: usize },
    /// A dirty bitmap that does not cover its region exactly.
    #[error(
        "dirty bitmap of region {index} has {words} words, but its {pages} pages need {expected}"
    )]
    BitmapLength {
        index: usize,
        words: usize,
        pages: u64,
        expected: u64,
    },
    /// A dirty bitmap marking a page its region does not have.
    #[error("dirty bitmap of region {index} marks page {page}, past the region's {pages} pages")]
    BitPastRegion { index: usize, page: u64, pages: u64 },
    /// A memory file of the wrong size for the guest memory.
    #[error("wrong size: {found} bytes, expected {expected}")]
    WrongSize { found: u64, expected: u64 },
    /// A file system that filled the holes of a sparse memory file.
    #[error(
        "this file system does not keep a diff file's holes page by page (first data extent \
         {found:x?}, first dirty range {expected:x?}), so merging it would lose or zero pages"
    )]
    HolesNotKept {
        found: Option<Range<u64>>,
        expected: Option<Range<u64>>,
    },
    /// Reading, writing or sizing a memory file.
    #[error("{op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// One guest region for [`write_diff`]: its memory and KVM's dirty bitmap
/// for it (bit `i % 64` of word `i / 64` set when page `i` was written).
pub struct DirtyRegion<'a> {
    pub data: &'a [u8],
    pub bitmap: &'a [u64],
}

/// Replaces the contents of `file` with `regions` back to back and returns
/// the file offset of each.
///
/// Pages of zeros are left as holes: most of a function's guest memory was
/// never touched, so the file is written (and later read) at the size of
/// what the guest used, not of what it was given.
pub fn write_full(file: &File, regions: &[&[u8]]) -> Result<Vec<u64>, Error> {
    let (offsets, total) = layout(regions.iter().map(|r| r.len()))?;
    file.set_len(0)
        .and_then(|()| file.set_len(total))
        .map_err(io_error("sizing the memory file"))?;
    let page = PAGE_BYTES;
    for (region, &offset) in regions.iter().zip(&offsets) {
        let mut at = 0;
        while at < region.len() {
            if is_zero(&region[at..at + page]) {
                at += page;
                continue;
            }
            let start = at;
            while at < region.len() && !is_zero(&region[at..at + page]) {
                at += page;
            }
            file.write_all_at(&region[start..at], offset + start as u64)
                .map_err(io_error("writing the memory file"))?;
        }
    }
    Ok(offsets)
}

/// Whether `page` is all zeros: one OR-fold over the page, which the compiler
/// vectorizes, and one test at the end. Most pages of a function's memory are
/// zero and are read to the end anyway; testing every few vectors (reducing
/// to one byte costs as much as the folding) made a Full snapshot of 256 MiB
/// take twice as long.
fn is_zero(page: &[u8]) -> bool {
    page.iter().fold(0u8, |acc, &b| acc | b) == 0
}

/// Replaces the contents of `file` with a sparse diff of `regions`: the full
/// layout's size, with only the dirty pages written. Returns each region's
/// file offset, which is the same as in the full file.
///
/// Fails with [`Error::HolesNotKept`] where the file system would make the
/// diff unmergeable (holes coarser than a page, or written zeros dropped).
pub fn write_diff(file: &File, regions: &[DirtyRegion]) -> Result<Vec<u64>, Error> {
    let (offsets, total) = layout(regions.iter().map(|r| r.data.len()))?;
    let dirty_runs = regions
        .iter()
        .enumerate()
        .map(|(index, region)| dirty_pages(index, region))
        .collect::<Result<Vec<_>, _>>()?;

    // Dropping the old length first turns everything into holes, whatever
    // the file held before.
    file.set_len(0)
        .and_then(|()| file.set_len(total))
        .map_err(io_error("sizing the diff file"))?;
    let mut written: Vec<Range<u64>> = Vec::new();
    for ((region, runs), &offset) in regions.iter().zip(&dirty_runs).zip(&offsets) {
        for pages in runs {
            let start = pages.start * PAGE_BYTES;
            let end = pages.end * PAGE_BYTES;
            // In bounds: `dirty_pages` checked every page against the
            // region's length.
            let data = &region.data[start..end];
            let (start, end) = (offset + start as u64, offset + end as u64);
            file.write_all_at(data, start)
                .map_err(io_error("writing the diff file"))?;
            push_range(&mut written, start..end);
        }
    }

    let found = data_extents(file)?;
    if found != written {
        let at = found
            .iter()
            .zip(&written)
            .position(|(f, w)| f != w)
            .unwrap_or(found.len().min(written.len()));
        return Err(Error::HolesNotKept {
            found: found.get(at).cloned(),
            expected: written.get(at).cloned(),
        });
    }
    Ok(offsets)
}

/// Copies the written pages of `diff` over `base`, so that `base` becomes
/// the memory at the time of the diff. Returns how many bytes were copied.
///
/// Moves the file position of `diff` (it is found with `lseek`).
pub fn merge(base: &File, diff: &File) -> Result<u64, Error> {
    let diff_len = file_len(diff)?;
    check_size(base, diff_len)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut copied = 0;
    for extent in data_extents(diff)? {
        let mut pos = extent.start;
        while pos < extent.end {
            let n = usize::try_from(extent.end - pos).map_or(COPY_CHUNK, |n| n.min(COPY_CHUNK));
            diff.read_exact_at(&mut buf[..n], pos)
                .map_err(io_error("reading the diff file"))?;
            base.write_all_at(&buf[..n], pos)
                .map_err(io_error("writing the base memory file"))?;
            pos += n as u64;
        }
        copied += extent.end - extent.start;
    }
    Ok(copied)
}

/// Checks that a memory file has the size its snapshot expects, before any
/// of it is mapped into a guest.
pub fn check_size(file: &File, expected_len: u64) -> Result<(), Error> {
    let found = file_len(file)?;
    if found != expected_len {
        return Err(Error::WrongSize {
            found,
            expected: expected_len,
        });
    }
    Ok(())
}

/// File offsets of regions laid back to back, and the total length.
fn layout(sizes: impl Iterator<Item = usize>) -> Result<(Vec<u64>, u64), Error> {
    let mut offsets = Vec::new();
    let mut total = 0u64;
    for (index, len) in sizes.enumerate() {
        if !(len as u64).is_multiple_of(PAGE_SIZE) {
            return Err(Error::UnalignedRegion { index, len });
        }
        offsets.push(total);
        total += len as u64;
    }
    Ok((offsets, total))
}

/// Runs of consecutive dirty pages of one region, as page indices.
fn dirty_pages(index: usize, region: &DirtyRegion) -> Result<Vec<Range<usize>>, Error> {
    let pages = region.data.len() / PAGE_BYTES;
    let expected = pages.div_ceil(64);
    if region.bitmap.len() != expected {
        return Err(Error::BitmapLength {
            index,
            words: region.bitmap.len(),
            pages: pages as u64,
            expected: expected as u64,
        });
    }
    let mut runs = Vec::new();
    for (word_index, &word) in region.bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = word_index * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if page >= pages {
                return Err(Error::BitPastRegion {
                    index,
                    page: page as u64,
                    pages: pages as u64,
                });
            }
            push_range(&mut runs, page..page + 1);
        }
    }
    Ok(runs)
}

/// Appends `range`, extending the last range instead when they touch.
fn push_range<T: PartialEq>(ranges: &mut Vec<Range<T>>, range: Range<T>) {
    match ranges.last_mut() {
        Some(last) if last.end == range.start => last.end = range.end,
        _ => ranges.push(range),
    }
}

/// The byte ranges of `file` that hold data rather than holes.
fn data_extents(file: &File) -> Result<Vec<Range<u64>>, Error> {
    let len = file_len(file)?;
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(start) = seek(file, pos, libc::SEEK_DATA)? else {
            break;
        };
        // End of file counts as a hole, so this only fails to find one if
        // the file shrank meanwhile.
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(len);
        extents.push(start..end);
        pos = end;
    }
    Ok(extents)
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`, which std does not offer; `None`
/// when there is no data (or hole) at or after `offset`.
fn seek(file: &File, offset: u64, whence: libc::c_int) -> Result<Option<u64>, Error> {
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
        .map_err(io_error("finding the data in the diff file"))?;
    // SAFETY: lseek only moves the file position of the descriptor, which
    // `file` keeps open for the whole call; it touches none of our memory.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    // Negative (-1) exactly when it failed.
    let Ok(found) = u64::try_from(found) else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(io_error("finding the data in the diff file")(e));
    };
    Ok(Some(found))
}

fn file_len(file: &File) -> Result<u64, Error> {
    file.metadata()
        .map(|m| m.len())
        .map_err(io_error("reading the memory file's size"))
}

fn io_error(op: &'static str) -> impl Fn(io::Error) -> Error {
    move |source| Error::Io { op, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const P: usize = PAGE_BYTES;

    /// A file in the temp dir, removed when dropped.
    struct Temp {
        path: PathBuf,
        file: File,
    }

    impl Temp {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "ember-snapshot-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            Temp { path, file }
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// `pages` pages, page `i` filled with `seed + i` (never zero).
    fn memory(pages: usize, seed: u8) -> Vec<u8> {
        (0..pages)
            .flat_map(|i| {
                let i = u8::try_from(i % 256).expect("below 256");
                vec![seed.wrapping_add(i).max(1); P]
            })
            .collect()
    }

    fn bitmap(pages: usize, dirty: &[usize]) -> Vec<u64> {
        let mut words = vec![0u64; pages.div_ceil(64)];
        for &p in dirty {
            words[p / 64] |= 1 << (p % 64);
        }
        words
    }

    fn page_ranges(ranges: &[(usize, usize)]) -> Vec<Range<u64>> {
        ranges
            .iter()
            .map(|&(a, b)| (a * P) as u64..(b * P) as u64)
            .collect()
    }

    #[test]
    fn full_file_round_trip() {
        let (r0, r1) = (memory(2, 10), memory(3, 50));
        let t = Temp::new();
        let offsets = write_full(&t.file, &[&r0, &r1]).unwrap();
        assert_eq!(offsets, [0, 2 * PAGE_SIZE]);
        assert_eq!(t.contents(), [r0, r1].concat());
        check_size(&t.file, 5 * PAGE_SIZE).unwrap();
    }

    #[test]
    fn zero_pages_of_a_full_file_are_holes() {
        let mut region = vec![0u8; 6 * P];
        region[P] = 1;
        region[2 * P + 7] = 2;
        region[5 * P - 1] = 3;
        let t = Temp::new();
        write_full(&t.file, &[&region]).unwrap();
        assert_eq!(t.contents(), region);
        assert_eq!(
            data_extents(&t.file).unwrap(),
            page_ranges(&[(1, 3), (4, 5)])
        );
    }

    #[test]
    fn regions_must_be_whole_pages() {
        let (ok, short) = (memory(1, 1), vec![1u8; P - 1]);
        let t = Temp::new();
        assert!(matches!(
            write_full(&t.file, &[&ok, &short]),
            Err(Error::UnalignedRegion { index: 1, len }) if len == P - 1
        ));
        let regions = [DirtyRegion {
            data: &short,
            bitmap: &[1],
        }];
        assert!(matches!(
            write_diff(&t.file, &regions),
            Err(Error::UnalignedRegion { index: 0, .. })
        ));
    }

    #[test]
    fn diff_writes_only_dirty_pages() {
        // 130 pages need three bitmap words; page 129 is the last.
        let (r0, r1) = (memory(130, 1), memory(4, 200));
        let (b0, b1) = (bitmap(130, &[0, 5, 6, 64, 129]), bitmap(4, &[0, 3]));
        let t = Temp::new();
        let regions = [
            DirtyRegion {
                data: &r0,
                bitmap: &b0,
            },
            DirtyRegion {
                data: &r1,
                bitmap: &b1,
            },
        ];
        let offsets = write_diff(&t.file, &regions).unwrap();
        assert_eq!(offsets, [0, 130 * PAGE_SIZE]);
        check_size(&t.file, 134 * PAGE_SIZE).unwrap();

        // Region 0's last page and region 1's first are one extent.
        assert_eq!(
            data_extents(&t.file).unwrap(),
            page_ranges(&[(0, 1), (5, 7), (64, 65), (129, 131), (133, 134)])
        );
        let allocated = t.file.metadata().unwrap().blocks() * 512;
        assert!(allocated < 20 * PAGE_SIZE, "{allocated} bytes allocated");

        let contents = t.contents();
        let page = |p: usize| &contents[p * P..(p + 1) * P];
        assert_eq!(page(5), &r0[5 * P..6 * P]);
        assert_eq!(page(129), &r0[129 * P..]);
        assert_eq!(page(133), &r1[3 * P..]);
        assert!(page(4).iter().all(|&b| b == 0), "clean page is a hole");
    }

    #[test]
    fn diff_replaces_previous_contents() {
        let t = Temp::new();
        write_full(&t.file, &[&memory(10, 1)]).unwrap();
        let r0 = memory(2, 9);
        let b0 = bitmap(2, &[1]);
        let regions = [DirtyRegion {
            data: &r0,
            bitmap: &b0,
        }];
        write_diff(&t.file, &regions).unwrap();
        assert_eq!(data_extents(&t.file).unwrap(), page_ranges(&[(1, 2)]));
        assert_eq!(t.contents(), [vec![0; P], r0[P..].to_vec()].concat());
    }

    #[test]
    fn clean_memory_gives_an_all_hole_diff() {
        let t = Temp::new();
        let r0 = memory(3, 1);
        let regions = [DirtyRegion {
            data: &r0,
            bitmap: &[0],
        }];
        write_diff(&t.file, &regions).unwrap();
        check_size(&t.file, 3 * PAGE_SIZE).unwrap();
        assert!(data_extents(&t.file).unwrap().is_empty());
    }

    #[test]
    fn bad_bitmaps_are_refused() {
        let t = Temp::new();
        let r0 = memory(65, 1);
        let short = [DirtyRegion {
            data: &r0,
            bitmap: &[1],
        }];
        match write_diff(&t.file, &short) {
            Err(e @ Error::BitmapLength { .. }) => assert_eq!(
                e.to_string(),
                "dirty bitmap of region 0 has 1 words, but its 65 pages need 2"
            ),
            other => panic!("{other:?}"),
        }
        let past = [DirtyRegion {
            data: &r0,
            bitmap: &[0, 0b10],
        }];
        assert!(matches!(
            write_diff(&t.file, &past),
            Err(Error::BitPastRegion {
                index: 0,
                page: 65,
                pages: 65
            })
        ));
    }

    #[test]
    fn merge_applies_the_diff_to_the_base() {
        let (mut r0, mut r1) = (memory(70, 1), memory(2, 100));
        let base = Temp::new();
        write_full(&base.file, &[&r0, &r1]).unwrap();

        // Pages 63 and 64 straddle a bitmap word; a page the guest zeroed
        // must be carried too.
        for p in [3, 63, 64] {
            r0[p * P..(p + 1) * P].fill(0xee);
        }
        r1[P..].fill(0);
        let (b0, b1) = (bitmap(70, &[3, 63, 64]), bitmap(2, &[1]));
        let diff = Temp::new();
        let regions = [
            DirtyRegion {
                data: &r0,
                bitmap: &b0,
            },
            DirtyRegion {
                data: &r1,
                bitmap: &b1,
            },
        ];
        write_diff(&diff.file, &regions).unwrap();

        assert_eq!(merge(&base.file, &diff.file).unwrap(), 4 * PAGE_SIZE);
        assert_eq!(base.contents(), [r0, r1].concat());
    }

    #[test]
    fn merge_refuses_a_diff_of_another_size() {
        let base = Temp::new();
        let before = memory(2, 1);
        write_full(&base.file, &[&before]).unwrap();
        let diff = Temp::new();
        let r0 = memory(3, 7);
        let regions = [DirtyRegion {
            data: &r0,
            bitmap: &[0b111],
        }];
        write_diff(&diff.file, &regions).unwrap();
        assert!(matches!(
            merge(&base.file, &diff.file),
            Err(Error::WrongSize {
                found,
                expected
            }) if found == 2 * PAGE_SIZE && expected == 3 * PAGE_SIZE
        ));
        assert_eq!(base.contents(), before);
    }

    #[test]
    fn wrong_size_is_detected() {
        let t = Temp::new();
        write_full(&t.file, &[&memory(2, 1)]).unwrap();
        let e = check_size(&t.file, 3 * PAGE_SIZE).unwrap_err();
        assert_eq!(e.to_string(), "wrong size: 8192 bytes, expected 12288");
    }
}
