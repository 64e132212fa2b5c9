//! A minimal HTTP/1.1 client over a Unix socket, as the tests need it: one
//! request per connection, with or without a time limit, or a connection
//! kept open as platform clients keep theirs.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One request that gives up after `timeout` instead of waiting for ever:
/// (status, body), or what went wrong.
pub fn try_http(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body))
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("no answer within {timeout:?}: {e}"))?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// A minimal HTTP/1.1 client for one request over a Unix socket.
pub fn http(socket: &Path, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let (status, body) = http_bytes(socket, method, path, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends one request and hangs up without reading the answer, as a client
/// that gives up (or a launcher that fires and forgets) does.
pub fn send_and_hang_up(socket: &Path, method: &str, path: &str, body: &str) {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
}

/// One request whose response body may be binary.
pub fn http_bytes(socket: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = UnixStream::connect(socket).expect("connect to the API socket");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (and close) before reading an oversized body.
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP header end in {:?}",
                String::from_utf8_lossy(&response)
            )
        });
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    (status, response[split + 4..].to_vec())
}

/// An HTTP/1.1 client that keeps its connection open between requests, as
/// platform HTTP clients do.
pub struct KeepAlive<S = UnixStream> {
    reader: BufReader<S>,
    writer: S,
}

impl KeepAlive<UnixStream> {
    pub fn connect(socket: &Path) -> Self {
        let writer = UnixStream::connect(socket).expect("connect to the API socket");
        let reader = BufReader::new(writer.try_clone().expect("clone the API stream"));
        KeepAlive { reader, writer }
    }
}

impl KeepAlive<std::net::TcpStream> {
    /// Over a TCP connection: to a function's own HTTP server, say.
    pub fn tcp(writer: std::net::TcpStream) -> Self {
        let reader = BufReader::new(writer.try_clone().expect("clone the TCP stream"));
        KeepAlive { reader, writer }
    }
}

impl<S: Read + Write> KeepAlive<S> {
    pub fn request(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.writer.write_all(head.as_bytes()).unwrap();
        self.writer.write_all(body).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP status in {status_line:?}"));
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}
