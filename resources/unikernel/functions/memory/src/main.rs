//! Memory use on demand: input a decimal MiB count n from 0 to 1024 (whitespace
//! around it ignored); the function allocates n MiB, writes every 4 KiB page of
//! it, frees it and answers `touched <n> MiB`. The pages stay backed on the host
//! after the free, which is what a balloon gives back. It fails with `out of
//! memory` when the heap has no n MiB in one piece (say while a balloon holds it).
#![no_std]
#![no_main]

extern crate alloc;

use alloc::alloc::{Layout, alloc, dealloc};
use alloc::format;
use alloc::vec::Vec;

use rt::function::Error;

rt::function!(memory);

/// The most MiB one invocation touches.
const MAX_MIB: usize = 1024;
const PAGE: usize = 4096;

fn memory(input: &[u8]) -> Result<Vec<u8>, Error> {
    let mib = mib(input)
        .ok_or_else(|| Error::new(format!("memory: input a MiB count from 0 to {MAX_MIB}")))?;
    if mib > 0 {
        let layout =
            Layout::from_size_align(mib << 20, PAGE).map_err(|_| Error::new("memory: bad size"))?;
        // SAFETY: the layout's size is not zero.
        let block = unsafe { alloc(layout) };
        if block.is_null() {
            return Err(Error::new("out of memory"));
        }
        for page in (0..layout.size()).step_by(PAGE) {
            // SAFETY: inside the block just allocated; volatile so the write stays.
            unsafe { block.add(page).write_volatile(1) };
        }
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(block, layout) };
    }
    Ok(format!("touched {mib} MiB").into_bytes())
}

/// The decimal number in `input`, if it is at most [`MAX_MIB`].
fn mib(input: &[u8]) -> Option<usize> {
    let digits = core::str::from_utf8(input).ok()?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n <= MAX_MIB)
}
