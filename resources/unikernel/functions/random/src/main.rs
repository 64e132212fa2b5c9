//! Random bytes: input a decimal byte count n from 0 to 1048576 (whitespace around
//! it ignored), output n bytes from the host's entropy device. They come through
//! the `getrandom` crate, as any crate's randomness would (rt is its backend).
//! Without an entropy device it fails with `no entropy device: PUT /entropy before
//! InstanceStart`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use rt::function::Error;

rt::function!(random);

/// The most bytes one invocation returns.
const MAX: usize = 1 << 20;

fn random(input: &[u8]) -> Result<Vec<u8>, Error> {
    let n = count(input)
        .ok_or_else(|| Error::new(format!("random: input a byte count from 0 to {MAX}")))?;
    let mut bytes = vec![0; n];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

/// The decimal number in `input`, if it is at most [`MAX`].
fn count(input: &[u8]) -> Option<usize> {
    let digits = core::str::from_utf8(input).ok()?.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n <= MAX)
}
