//! Network benchmarks, run from the host (addresses are dotted IPv4). Times come
//! from the TSC, in nanoseconds.
//!
//! - `send:<ip>:<port>:<bytes>`: connects, writes `bytes` bytes, shuts down, waits for
//!   the peer's close; answers `bytes=<n> ns=<from connected to the peer's close>`.
//! - `recv:<ip>:<port>`: connects, reads to the end; answers
//!   `bytes=<n> ns=<from connected to the end>`.
//! - `rr:<ip>:<port>:<size>:<rounds>`: connects, then `rounds` times writes `size`
//!   bytes and reads `size` bytes back (the host echoes); answers `ns=<p50>,<p99>`
//!   of the rounds.
//! - `conn:<ip>:<port>:<count>`: `count` connections one after another, each closed
//!   once open; answers `ns=<total>`.
//! - `mmds:<rounds>`: `rounds` times a V2 token (`PUT /latest/api/token`) and a
//!   `GET /` with it; answers `ns=<p50>,<p99>` of the rounds.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use rt::function::Error;
use rt::net::{Ipv4Addr, SocketAddrV4, TcpStream, mmds};
use rt::time;

rt::function!(netbench);

/// How long connecting and each wait for the peer may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes written or read per call.
const CHUNK: usize = 64 * 1024;

fn netbench(input: &[u8]) -> Result<Vec<u8>, Error> {
    let input = core::str::from_utf8(input).map_err(|_| Error::new("netbench: bad input"))?;
    let fields: Vec<&str> = input.trim().split(':').collect();
    let answer = match fields[..] {
        ["send", ip, port, bytes] => send(peer(ip, port)?, number(bytes)?),
        ["recv", ip, port] => recv(peer(ip, port)?),
        ["rr", ip, port, size, rounds] => rr(peer(ip, port)?, number(size)?, number(rounds)?),
        ["conn", ip, port, count] => conn(peer(ip, port)?, number(count)?),
        ["mmds", rounds] => mmds(number(rounds)?),
        _ => Err(Error::new(
            "netbench: send:<ip>:<port>:<bytes>, recv:<ip>:<port>, \
             rr:<ip>:<port>:<size>:<rounds>, conn:<ip>:<port>:<count> or mmds:<rounds>",
        )),
    }?;
    Ok(answer.into_bytes())
}

fn peer(ip: &str, port: &str) -> Result<SocketAddrV4, Error> {
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| Error::new("netbench: bad IPv4 address"))?;
    let port = port.parse().map_err(|_| Error::new("netbench: bad port"))?;
    Ok(SocketAddrV4::new(ip, port))
}

fn number(text: &str) -> Result<usize, Error> {
    text.parse()
        .map_err(|_| format!("netbench: bad number {text}").into())
}

fn connect(peer: SocketAddrV4) -> Result<TcpStream, Error> {
    let mut stream = TcpStream::connect(*peer.ip(), peer.port(), TIMEOUT)?;
    stream.set_timeout(Some(TIMEOUT));
    Ok(stream)
}

fn send(peer: SocketAddrV4, bytes: usize) -> Result<String, Error> {
    let mut stream = connect(peer)?;
    let start = time::now();
    let data = vec![0x5a; CHUNK.min(bytes)];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(data.len());
        stream.write_all(&data[..n])?;
        left -= n;
    }
    stream.shutdown()?;
    let mut sink = vec![0; CHUNK];
    while stream.read(&mut sink)? > 0 {}
    Ok(format!("bytes={bytes} ns={}", time::elapsed_nanos(start)))
}

fn recv(peer: SocketAddrV4) -> Result<String, Error> {
    let mut stream = connect(peer)?;
    let start = time::now();
    let mut buf = vec![0; CHUNK];
    let mut bytes = 0;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => bytes += n,
        }
    }
    Ok(format!("bytes={bytes} ns={}", time::elapsed_nanos(start)))
}

fn rr(peer: SocketAddrV4, size: usize, rounds: usize) -> Result<String, Error> {
    let mut stream = connect(peer)?;
    let request = vec![0x5a; size];
    let mut reply = vec![0; size];
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = time::now();
        stream.write_all(&request)?;
        let mut got = 0;
        while got < size {
            match stream.read(&mut reply[got..])? {
                0 => return Err(Error::new("netbench: the peer closed mid-round")),
                n => got += n,
            }
        }
        times.push(time::elapsed_nanos(start));
    }
    percentiles(times)
}

fn conn(peer: SocketAddrV4, count: usize) -> Result<String, Error> {
    let start = time::now();
    for _ in 0..count {
        drop(connect(peer)?);
    }
    Ok(format!("ns={}", time::elapsed_nanos(start)))
}

fn mmds(rounds: usize) -> Result<String, Error> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = time::now();
        let token = mmds::token(60, TIMEOUT)?;
        mmds::body(mmds::request(
            "GET",
            "/",
            &[(mmds::TOKEN_HEADER, &token)],
            TIMEOUT,
        ))?;
        times.push(time::elapsed_nanos(start));
    }
    percentiles(times)
}

/// `ns=<p50>,<p99>` of `times`.
fn percentiles(mut times: Vec<u64>) -> Result<String, Error> {
    if times.is_empty() {
        return Err(Error::new("netbench: no rounds"));
    }
    times.sort_unstable();
    let at = |percent: usize| times[(times.len() * percent / 100).min(times.len() - 1)];
    Ok(format!("ns={},{}", at(50), at(99)))
}
