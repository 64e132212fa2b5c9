//! A small HTTP/1.1 client for functions: one request per connection
//! (`Connection: close`), response bodies by Content-Length, chunked, or up to the
//! end of the stream. No TLS, no redirects.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::NetError;

/// Bytes read from the connection at a time.
const CHUNK: usize = 64 * 1024;
/// The longest status, header or chunk-size line taken (it fits the buffer).
const MAX_LINE: usize = 8 * 1024;
const _: () = assert!(MAX_LINE < CHUNK);
/// The smallest buffer [`Request::send_sized`] takes: a line must fit.
pub const SMALL_BUFFER: usize = 2 * MAX_LINE;
/// The most header lines taken.
const MAX_HEADERS: usize = 128;

/// An `http://host[:port][/path]` URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Url<'a> {
    /// `host[:port]` as written: the `Host` header.
    pub authority: &'a str,
    /// A name or a dotted IPv4 address.
    pub host: &'a str,
    pub port: u16,
    /// From the `/` on (`/` if the URL has none), query included.
    pub path: &'a str,
}

impl<'a> Url<'a> {
    pub fn parse(url: &'a str) -> Result<Url<'a>, NetError> {
        let rest = url
            .strip_prefix("http://")
            .ok_or(NetError::Http("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(at) if rest[at..].starts_with('/') => (&rest[..at], &rest[at..]),
            Some(_) => return Err(NetError::Http("the path must start with /")),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().map_err(|_| NetError::Http("bad port"))?),
            None => (authority, 80),
        };
        if host.is_empty() || host.contains(['@', '[']) {
            return Err(NetError::Http("bad host"));
        }
        Ok(Url {
            authority,
            host,
            port,
            path,
        })
    }
}

/// A request: `method path`, a `Host`, `headers` and `body`.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header's value: `host[:port]`.
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl Request<'_> {
    /// The request's bytes, with `Connection: close` and, unless a GET without a
    /// body, `Content-Length`.
    pub fn encode(&self) -> Result<Vec<u8>, NetError> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n",
            self.method, self.path, self.host
        );
        for (name, value) in self.headers {
            head += &format!("{name}: {value}\r\n");
        }
        if self.method != "GET" || !self.body.is_empty() {
            head += &format!("Content-Length: {}\r\n", self.body.len());
        }
        head += "Connection: close\r\n\r\n";
        // A line break smuggled into a field (or a space into the path) would make
        // other headers, or another request.
        let fields = [self.method, self.host, self.path]
            .into_iter()
            .chain(self.headers.iter().flat_map(|&(name, value)| [name, value]));
        if fields.flat_map(str::chars).any(|c| c.is_ascii_control()) || self.path.contains(' ') {
            return Err(NetError::Http("bad character in the request"));
        }
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body);
        Ok(bytes)
    }

    /// Sends the request to `peer` and reads the response; `timeout` bounds the
    /// connection and each wait for the peer.
    #[cfg(not(any(test, feature = "hosted")))]
    pub fn send(
        &self,
        peer: core::net::SocketAddrV4,
        timeout: core::time::Duration,
    ) -> Result<Response, NetError> {
        self.send_sized(peer, timeout, CHUNK)
    }

    /// As [`Request::send`], with socket buffers and a read buffer of `buffer`
    /// bytes (at least [`SMALL_BUFFER`]): a small one for a short exchange, such
    /// as the MMDS's, touches fewer pages.
    #[cfg(not(any(test, feature = "hosted")))]
    pub fn send_sized(
        &self,
        peer: core::net::SocketAddrV4,
        timeout: core::time::Duration,
        buffer: usize,
    ) -> Result<Response, NetError> {
        let buffer = buffer.max(SMALL_BUFFER);
        let bytes = self.encode()?;
        let mut stream = super::TcpStream::connect_sized(*peer.ip(), peer.port(), timeout, buffer)?;
        stream.set_timeout(Some(timeout));
        stream.write_all(&bytes)?;
        read_response_with(|buf| stream.read(buf), buffer)
    }
}

/// A response: its status and body (headers are not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The whole first line, such as `HTTP/1.1 404 Not Found`.
    pub status_line: String,
    pub body: Vec<u8>,
}

impl Response {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Reads a response from `read` (which fills a buffer, 0 at the end).
pub fn read_response(
    read: impl FnMut(&mut [u8]) -> Result<usize, NetError>,
) -> Result<Response, NetError> {
    read_response_with(read, CHUNK)
}

/// As [`read_response`], reading `chunk` bytes (more than [`MAX_LINE`]) at a time.
fn read_response_with(
    read: impl FnMut(&mut [u8]) -> Result<usize, NetError>,
    chunk: usize,
) -> Result<Response, NetError> {
    let mut reader = Reader {
        read,
        buf: alloc::vec![0; chunk],
        start: 0,
        end: 0,
    };
    // Interim (1xx) responses come before the real one.
    let (status, status_line) = loop {
        let line = reader.line()?;
        let status = status(&line).ok_or(NetError::Http("bad status line"))?;
        if !(100..200).contains(&status) {
            break (status, String::from_utf8_lossy(&line).into_owned());
        }
        while !reader.line()?.is_empty() {}
    };
    let framing = reader.headers()?;
    let mut body = Vec::new();
    if !matches!(status, 204 | 304) {
        match framing {
            Framing::Chunked => reader.chunked(&mut body)?,
            Framing::Length(len) => reader.exactly(&mut body, len)?,
            Framing::ToEnd => while reader.some(&mut body, usize::MAX)? > 0 {},
        }
    }
    Ok(Response {
        status,
        status_line,
        body,
    })
}

/// The code of a status line (`HTTP/1.x <3 digits> <reason>`).
fn status(line: &[u8]) -> Option<u16> {
    let line = core::str::from_utf8(line).ok()?;
    let (version, rest) = line.split_once(' ')?;
    let code = rest.get(..3)?;
    let valid = version.starts_with("HTTP/1.")
        && code.bytes().all(|b| b.is_ascii_digit())
        && rest[3..].chars().next().is_none_or(|c| c == ' ');
    valid.then(|| code.parse().ok()).flatten()
}

/// How the body's end is found.
enum Framing {
    Chunked,
    Length(usize),
    ToEnd,
}

/// The response's bytes, read into a buffer.
struct Reader<F> {
    read: F,
    buf: Vec<u8>,
    /// The bytes read but not consumed: `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<F: FnMut(&mut [u8]) -> Result<usize, NetError>> Reader<F> {
    /// Reads more into the buffer (moving what is left to its start when it has
    /// no room at the end); false at the end of the stream.
    fn fill(&mut self) -> Result<bool, NetError> {
        if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = (self.read)(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n > 0)
    }

    /// The next line, without its CRLF (or LF).
    fn line(&mut self) -> Result<Vec<u8>, NetError> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(at) = pending.iter().position(|&b| b == b'\n') {
                let line = pending[..at].strip_suffix(b"\r").unwrap_or(&pending[..at]);
                let line = line.to_vec();
                self.start += at + 1;
                return Ok(line);
            }
            if pending.len() > MAX_LINE {
                return Err(NetError::Http("line too long"));
            }
            if !self.fill()? {
                return Err(NetError::Http("response ended early"));
            }
        }
    }

    /// The header section up to its empty line: how the body is framed.
    fn headers(&mut self) -> Result<Framing, NetError> {
        let mut framing = Framing::ToEnd;
        for _ in 0..MAX_HEADERS {
            let line = self.line()?;
            if line.is_empty() {
                return Ok(framing);
            }
            let line = String::from_utf8_lossy(&line);
            let (name, value) = line.split_once(':').ok_or(NetError::Http("bad header"))?;
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                if value.to_ascii_lowercase().ends_with("chunked") {
                    framing = Framing::Chunked;
                }
            } else if name.eq_ignore_ascii_case("content-length")
                && !matches!(framing, Framing::Chunked)
            {
                let len = value
                    .parse()
                    .map_err(|_| NetError::Http("bad content-length"))?;
                framing = Framing::Length(len);
            }
        }
        Err(NetError::Http("too many headers"))
    }

    /// Appends up to `max` bytes to `out`: how many, 0 at the end of the stream.
    fn some(&mut self, out: &mut Vec<u8>, max: usize) -> Result<usize, NetError> {
        if self.start == self.end && !self.fill()? {
            return Ok(0);
        }
        let n = (self.end - self.start).min(max);
        out.extend_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }

    /// Appends exactly `len` bytes to `out`.
    fn exactly(&mut self, out: &mut Vec<u8>, mut len: usize) -> Result<(), NetError> {
        while len > 0 {
            match self.some(out, len)? {
                0 => return Err(NetError::Http("body ended early")),
                n => len -= n,
            }
        }
        Ok(())
    }

    /// Appends a chunked body to `out`, trailers skipped.
    fn chunked(&mut self, out: &mut Vec<u8>) -> Result<(), NetError> {
        loop {
            let line = self.line()?;
            let size = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = core::str::from_utf8(size)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or(NetError::Http("bad chunk size"))?;
            if size == 0 {
                while !self.line()?.is_empty() {}
                return Ok(());
            }
            self.exactly(out, size)?;
            if !self.line()?.is_empty() {
                return Err(NetError::Http("chunk longer than its size"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that delivers `bytes`, at most `step` at a time.
    fn source(bytes: &[u8], step: usize) -> impl FnMut(&mut [u8]) -> Result<usize, NetError> {
        let mut rest = bytes.to_vec();
        move |buf| {
            let n = step.min(buf.len()).min(rest.len());
            buf[..n].copy_from_slice(&rest[..n]);
            rest.drain(..n);
            Ok(n)
        }
    }

    /// The response in `bytes`, which must read the same whether they come all at
    /// once or a byte at a time.
    fn parse(bytes: &[u8]) -> Result<Response, NetError> {
        let whole = read_response(source(bytes, usize::MAX));
        assert_eq!(read_response(source(bytes, 1)), whole);
        whole
    }

    fn body(bytes: &[u8]) -> Vec<u8> {
        parse(bytes).unwrap().body
    }

    #[test]
    fn reads_bodies_however_they_are_framed() {
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more";
        assert_eq!(body(sized), b"hello");
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\
            Content-Length: 3\r\n\r\n5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n\
            0\r\nTrailer: x\r\n\r\n";
        assert_eq!(body(chunked), b"hello, world!!!");
        assert_eq!(
            body(b"HTTP/1.0 200 OK\nServer: x\n\nto the end"),
            b"to the end"
        );
        let empty = parse(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n").unwrap();
        assert_eq!((empty.status, empty.body.len(), empty.ok()), (204, 0, true));
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\n\r\ngone";
        let response = parse(interim).unwrap();
        assert_eq!(response.status_line, "HTTP/1.1 404 Not Found");
        assert_eq!(
            (response.status, response.ok(), &response.body[..]),
            (404, false, &b"gone"[..])
        );
    }

    #[test]
    fn reads_large_bodies() {
        let data: Vec<u8> = (0..=255u8).cycle().take(3 * CHUNK + 17).collect();
        let mut sized =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", data.len()).into_bytes();
        sized.extend_from_slice(&data);
        assert_eq!(read_response(source(&sized, 1000)).unwrap().body, data);
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in data.chunks(CHUNK - 1) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(read_response(source(&chunked, 7000)).unwrap().body, data);
    }

    #[test]
    fn refuses_responses_it_cannot_read() {
        let long_line = [b"HTTP/1.1 200 OK\r\nX: ".to_vec(), vec![b'x'; MAX_LINE + 1]].concat();
        for (bytes, what) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"[..],
                "body ended early",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "bad status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "bad content-length",
            ),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header"),
            (b"HTTP/1.1 200 OK\r\nContent-Len", "response ended early"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
                "chunk longer than its size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
                "bad chunk size",
            ),
            (&long_line, "line too long"),
        ] {
            assert_eq!(
                parse(bytes),
                Err(NetError::Http(what)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        let failing = |_: &mut [u8]| Err(NetError::Reset);
        assert_eq!(read_response(failing), Err(NetError::Reset));
    }

    #[test]
    fn encodes_requests() {
        let get = Request {
            method: "GET",
            host: "example.com:8080",
            path: "/a?b=c",
            headers: &[("Accept", "*/*")],
            body: b"",
        };
        assert_eq!(
            get.encode().unwrap(),
            b"GET /a?b=c HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let put = Request {
            method: "PUT",
            path: "/t",
            headers: &[],
            ..get
        };
        assert_eq!(
            put.encode().unwrap(),
            b"PUT /t HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        for bad in [
            Request {
                path: "/a b",
                ..get
            },
            Request {
                path: "/\r\nX: y",
                ..get
            },
            Request {
                headers: &[("X", "1\r\n\r\nGET / HTTP/1.1")],
                ..get
            },
        ] {
            assert_eq!(
                bad.encode(),
                Err(NetError::Http("bad character in the request"))
            );
        }
    }

    #[test]
    fn parses_urls() {
        let url = Url::parse("http://example.com:8080/x/y?z").unwrap();
        assert_eq!(
            url,
            Url {
                authority: "example.com:8080",
                host: "example.com",
                port: 8080,
                path: "/x/y?z"
            }
        );
        let url = Url::parse("http://10.0.0.1").unwrap();
        assert_eq!((url.host, url.port, url.path), ("10.0.0.1", 80, "/"));
        for (bad, what) in [
            ("https://example.com/", "only http:// URLs are supported"),
            ("http://example.com:http/", "bad port"),
            ("http://example.com:70000/", "bad port"),
            ("http:///path", "bad host"),
            ("http://user@example.com/", "bad host"),
            ("http://example.com?q", "the path must start with /"),
        ] {
            assert_eq!(Url::parse(bad), Err(NetError::Http(what)), "{bad}");
        }
    }
}
