//! Fetches a URL: input `http://host[:port]/path` (host a name, resolved through the
//! DNS server of `ip=`, or a dotted IPv4 address), output exactly the body of an
//! HTTP/1.1 GET of it. A status other than 2xx fails with the status line; so does a
//! server that takes over 5 s to accept or to send the next bytes.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::vec::Vec;
use core::time::Duration;

use rt::function::Error;
use rt::net::http::{Request, Url};
use rt::net::{NetError, SocketAddrV4, resolve};

rt::function!(fetch);

/// How long resolving, connecting and each wait for the server may take: an
/// address nobody answers fails in 5 s, well within the invocation's own limit.
const TIMEOUT: Duration = Duration::from_secs(5);

fn fetch(input: &[u8]) -> Result<Vec<u8>, Error> {
    let url = core::str::from_utf8(input).map_err(|_| Error::new("fetch: the URL is not UTF-8"))?;
    let url = Url::parse(url.trim()).map_err(failed)?;
    let ip = resolve(url.host, TIMEOUT).map_err(failed)?;
    let request = Request {
        method: "GET",
        host: url.authority,
        path: url.path,
        headers: &[],
        body: &[],
    };
    let response = request
        .send(SocketAddrV4::new(ip, url.port), TIMEOUT)
        .map_err(failed)?;
    if !response.ok() {
        return Err(format!("fetch: {}", response.status_line).into());
    }
    Ok(response.body)
}

fn failed(err: NetError) -> Error {
    format!("fetch: {err}").into()
}
