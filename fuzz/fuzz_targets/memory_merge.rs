//! Memory files (`ember_snapshot::memory`): `merge` of a diff file onto a
//! base, and the `write_full` / `write_diff` / `merge` round trip a Diff
//! snapshot makes. Files are small (up to 16 pages), with sizes, contents
//! and holes from the input.
//!
//! Input: a mode byte, then
//! - even: base size, diff size (each in pages, plus an optional partial
//!   page), then each page of the base and of the diff: a hole, zeros,
//!   a fill byte, or zeros with a chunk at an offset. `merge` must refuse
//!   files of different sizes and leave the base as it was; otherwise the
//!   base must become itself with the diff's written pages copied over
//!   (checked where the file system keeps holes page by page).
//! - odd: up to three regions (pages, or an unaligned length), their pages
//!   before, and which pages were then dirtied with what (plus stray bitmap
//!   bits or a wrong bitmap length); a full file of the old memory merged
//!   with a diff file of the new must equal the new memory.

#![no_main]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use ember_fuzz::bytes::Reader;
use ember_fuzz::scratch;
use ember_snapshot::memory::{self, DirtyRegion, Error, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;

const PAGE: usize = PAGE_SIZE as usize;
const MAX_PAGES: u8 = 16;

/// One page's contents, or `None` for a hole (a page never written).
fn read_page(r: &mut Reader, len: usize) -> Option<Vec<u8>> {
    match r.u8() % 4 {
        0 => None,
        1 => Some(vec![0; len]),
        2 => Some(vec![r.u8(); len]),
        _ => {
            let mut page = vec![0; len];
            let at = usize::from(r.u16()) % (len + 1);
            let chunk = r.chunk(64);
            let n = chunk.len().min(len - at);
            page[at..at + n].copy_from_slice(&chunk[..n]);
            Some(page)
        }
    }
}

/// A file size: whole pages, and sometimes a partial one.
fn read_size(r: &mut Reader) -> usize {
    let pages = usize::from(r.u8() % (MAX_PAGES + 1));
    let tail = if r.bool() {
        usize::from(r.u16()) % PAGE
    } else {
        0
    };
    pages * PAGE + tail
}

fn open(name: &str) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(scratch::fresh(name))
        .expect("cannot create a scratch memory file")
}

/// Writes the pages of a file of `size` bytes (holes where `None`); returns
/// what it holds and the byte ranges written.
fn fill(r: &mut Reader, file: &File, size: usize) -> (Vec<u8>, Vec<(u64, u64)>) {
    file.set_len(size as u64)
        .expect("cannot size a scratch file");
    let mut content = vec![0u8; size];
    let mut written = Vec::new();
    for start in (0..size).step_by(PAGE) {
        let len = PAGE.min(size - start);
        if let Some(page) = read_page(r, len) {
            file.write_all_at(&page, start as u64)
                .expect("cannot write a scratch file");
            content[start..start + len].copy_from_slice(&page);
            written.push((start as u64, (start + len) as u64));
        }
    }
    (content, written)
}

/// The file's data extents, page by page as the file system reports them.
fn data_pages(file: &File, size: usize) -> Vec<(u64, u64)> {
    let mut pages = Vec::new();
    for start in (0..size).step_by(PAGE) {
        // SAFETY: lseek on an fd we own, no pointers.
        let at = unsafe { libc::lseek(file.as_raw_fd(), start as libc::off_t, libc::SEEK_DATA) };
        if at == start as libc::off_t {
            pages.push((start as u64, (start + PAGE.min(size - start)) as u64));
        }
    }
    pages
}

fn contents(file: &File) -> Vec<u8> {
    let mut out = Vec::new();
    let mut f = file;
    f.read_to_end(&mut out).expect("cannot read a scratch file");
    out
}

fn merge_files(r: &mut Reader) {
    let base_size = read_size(r);
    let diff_size = if r.bool() { base_size } else { read_size(r) };
    let base = open("base.mem");
    let diff = open("diff.mem");
    let (before, _) = fill(r, &base, base_size);
    let (diff_content, written) = fill(r, &diff, diff_size);
    let result = memory::merge(&base, &diff);
    let after = contents(&base);
    if base_size != diff_size {
        assert!(matches!(result, Err(Error::WrongSize { .. })), "{result:?}");
        assert!(after == before, "a refused merge changed the base");
        return;
    }
    let copied = result.expect("merge of files of one size failed");
    if data_pages(&diff, diff_size) != written {
        return; // This file system keeps holes coarser than a page.
    }
    let mut expected = before;
    for &(start, end) in &written {
        let (start, end) = (start as usize, end as usize);
        expected[start..end].copy_from_slice(&diff_content[start..end]);
    }
    assert!(
        after == expected,
        "merge did not apply exactly the diff's pages"
    );
    let written_len: u64 = written.iter().map(|(s, e)| e - s).sum();
    assert_eq!(copied, written_len);
}

fn round_trip(r: &mut Reader) {
    let count = 1 + usize::from(r.u8() % 3);
    let mut old = Vec::new();
    let mut new = Vec::new();
    let mut bitmaps = Vec::new();
    let mut malformed = false;
    for _ in 0..count {
        let pages = usize::from(r.u8() % 9);
        let len = if r.u8() == 0xff {
            malformed = true;
            pages * PAGE + 1 + usize::from(r.u16()) % (PAGE - 1)
        } else {
            pages * PAGE
        };
        let mut before = vec![0u8; len];
        for start in (0..len).step_by(PAGE) {
            let n = PAGE.min(len - start);
            if let Some(page) = read_page(r, n) {
                before[start..start + n].copy_from_slice(&page);
            }
        }
        let mut after = before.clone();
        let mut bitmap = vec![0u64; pages.div_ceil(64)];
        for page in 0..pages {
            if r.bool() {
                bitmap[page / 64] |= 1 << (page % 64);
                let start = page * PAGE;
                after[start..start + PAGE]
                    .copy_from_slice(&read_page(r, PAGE).unwrap_or_else(|| vec![0; PAGE]));
            }
        }
        match r.u8() {
            0xfe => {
                // A bit past the region's pages.
                malformed = true;
                match bitmap.last_mut() {
                    Some(word) => *word |= 1 << 63,
                    None => bitmap.push(1),
                }
            }
            0xfd => {
                malformed = true;
                bitmap.push(0);
            }
            _ => {}
        }
        old.push(before);
        new.push(after);
        bitmaps.push(bitmap);
    }
    let base = open("base.mem");
    let diff = open("diff.mem");
    let old_slices: Vec<&[u8]> = old.iter().map(Vec::as_slice).collect();
    let full = memory::write_full(&base, &old_slices);
    let regions: Vec<DirtyRegion> = new
        .iter()
        .zip(&bitmaps)
        .map(|(data, bitmap)| DirtyRegion { data, bitmap })
        .collect();
    let diffed = memory::write_diff(&diff, &regions);
    if malformed {
        assert!(
            full.is_err() || diffed.is_err(),
            "malformed regions were written"
        );
        return;
    }
    let offsets = full.expect("write_full of whole pages failed");
    let diff_offsets = match diffed {
        Ok(offsets) => offsets,
        Err(Error::HolesNotKept { .. }) => return,
        Err(e) => panic!("write_diff of whole pages failed: {e}"),
    };
    assert_eq!(offsets, diff_offsets);
    memory::merge(&base, &diff).expect("merge of a diff onto its base failed");
    assert!(
        contents(&base) == new.concat(),
        "base + diff is not the new memory"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    if r.u8() & 1 == 0 {
        merge_files(&mut r);
    } else {
        round_trip(&mut r);
    }
});
