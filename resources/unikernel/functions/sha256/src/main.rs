//! Returns the 32-byte SHA-256 digest of its input.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use rt::function::Error;
use sha2::{Digest, Sha256};

rt::function!(sha256);

fn sha256(input: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(Sha256::digest(input).to_vec())
}
