//! Reads the MMDS at 169.254.169.254:80, as Firecracker guests do. Input: a path such
//! as `/latest/meta-data/foo` (or `/`), read the V2 way (a session token from
//! `PUT /latest/api/token`, then a GET with it); `v1:<path>` reads without a token,
//! `token:<token>:<path>` with the given one (a wrong one, say), and
//! `new-token:<seconds>` answers a fresh token of that lifetime. The MMDS answers
//! in its IMDS text form (values as they are, keys one per line). Output: the body;
//! a status other than 200 fails with `mmds: <code> <reason>[: <body>]`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::borrow::ToOwned;
use alloc::vec::Vec;
use core::time::Duration;

use rt::function::Error;
use rt::net::mmds;

rt::function!(metadata);

/// How long connecting and each wait for the MMDS may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session token lives, in seconds.
const TOKEN_TTL: u32 = 60;

fn metadata(input: &[u8]) -> Result<Vec<u8>, Error> {
    let input = core::str::from_utf8(input)
        .map_err(|_| Error::new("metadata: the input is not UTF-8"))?
        .trim();
    if let Some(ttl) = input.strip_prefix("new-token:") {
        let ttl = ttl
            .parse()
            .map_err(|_| Error::new("metadata: new-token:<seconds>"))?;
        return Ok(mmds::token(ttl, TIMEOUT)?.into_bytes());
    }
    let (token, path) = if let Some(path) = input.strip_prefix("v1:") {
        (None, path)
    } else if let Some(rest) = input.strip_prefix("token:") {
        let (token, path) = rest
            .split_once(':')
            .ok_or(Error::new("metadata: token:<token>:<path>"))?;
        (Some(token.to_owned()), path)
    } else {
        (Some(mmds::token(TOKEN_TTL, TIMEOUT)?), input)
    };
    let path = if path.is_empty() { "/" } else { path };
    let response = match &token {
        Some(token) => mmds::request("GET", path, &[(mmds::TOKEN_HEADER, token)], TIMEOUT),
        None => mmds::request("GET", path, &[], TIMEOUT),
    };
    Ok(mmds::body(response)?)
}
