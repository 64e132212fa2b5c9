//! Returns its input.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use rt::function::Error;

rt::function!(echo);

fn echo(input: &[u8]) -> Result<Vec<u8>, Error> {
    Ok(input.to_vec())
}
