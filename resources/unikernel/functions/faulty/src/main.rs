//! Exercises the runtime's failure paths and host connections: input `panic`
//! panics, `error` fails, `hang` spins forever in ring 3 (for the VMM's timeout),
//! `dial:<port>:<message>` sends the message to host port `<port>` and returns
//! what the host answers until it closes; anything else comes back reversed.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;

use rt::function::{Error, HostStream};

rt::function!(faulty);

fn faulty(input: &[u8]) -> Result<Vec<u8>, Error> {
    match input {
        b"panic" => panic!("faulty: asked to panic"),
        b"error" => Err(Error::new("faulty: asked to fail")),
        b"hang" => loop {
            core::hint::spin_loop();
        },
        _ => match input.strip_prefix(b"dial:") {
            Some(rest) => dial(rest),
            None => Ok(input.iter().rev().copied().collect()),
        },
    }
}

/// `<port>:<message>`: sends the message to the host port, returns the answer.
fn dial(request: &[u8]) -> Result<Vec<u8>, Error> {
    let (port, message) = request
        .iter()
        .position(|&b| b == b':')
        .map(|at| (&request[..at], &request[at + 1..]))
        .ok_or(Error::new("faulty: dial:<port>:<message>"))?;
    let port = core::str::from_utf8(port)
        .ok()
        .and_then(|p| p.parse().ok())
        .ok_or(Error::new("faulty: bad port"))?;
    let mut stream = HostStream::connect(port)?;
    stream.write_all(message)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}
