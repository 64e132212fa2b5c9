//! The guest's side of MMDS: HTTP/1.1 requests from the guest, and their
//! answers, as Firecracker gives them (EC2 IMDS's paths and headers).

use std::time::Instant;

use serde_json::Value;

use super::Mmds;
use crate::config::MmdsVersion;

/// Largest request (line, headers and body) a connection may send: MMDS
/// requests are a line and a few headers.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Headers parsed per request; more are a bad request.
const MAX_HEADERS: usize = 32;
const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["x-metadata-token", "x-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "x-metadata-token-ttl-seconds",
    "x-aws-ec2-metadata-token-ttl-seconds",
];

/// What a connection's buffered bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Incomplete,
    /// A whole request of `consumed` bytes, and the answer to send.
    Answer { consumed: usize, response: Vec<u8> },
    /// Bytes that are no HTTP request: answer and close.
    Bad(Vec<u8>),
}

/// Parses the first request in `buf` and answers it from `mmds` at `now`.
pub fn handle(buf: &[u8], mmds: &mut Mmds, now: Instant) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => {
            return Parsed::Incomplete
        }
        _ => return Parsed::Bad(response(400, "text/plain", b"Bad request.")),
    };
    let header = |names: &[&str]| {
        request
            .headers
            .iter()
            .find(|h| names.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let body_len = header(&["content-length"]).map_or(Some(0), |v| v.trim().parse().ok());
    let Some(consumed) = body_len.and_then(|b: usize| head_len.checked_add(b)) else {
        return Parsed::Bad(response(400, "text/plain", b"Bad request."));
    };
    if consumed > buf.len() {
        return if consumed <= MAX_REQUEST_BYTES {
            Parsed::Incomplete
        } else {
            Parsed::Bad(response(400, "text/plain", b"Request too large."))
        };
    }
    let wants_json = header(&["accept"]).is_some_and(|a| a.contains("application/json"));
    let request = Request {
        method: request.method.unwrap_or_default(),
        path: request.path.unwrap_or_default(),
        token: header(&TOKEN_HEADERS),
        ttl: header(&TTL_HEADERS),
        forwarded: header(&["x-forwarded-for"]).is_some(),
        wants_json,
    };
    Parsed::Answer {
        consumed,
        response: answer(&request, mmds, now),
    }
}

/// The parts of a request MMDS looks at.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    token: Option<&'a str>,
    ttl: Option<&'a str>,
    forwarded: bool,
    wants_json: bool,
}

fn answer(request: &Request, mmds: &mut Mmds, now: Instant) -> Vec<u8> {
    let text = |status, message: &str| response(status, "text/plain", message.as_bytes());
    let path = sanitize(request.path);
    let path = path.as_str();
    match request.method {
        "PUT" if path.trim_end_matches('/') == TOKEN_PATH => {
            if request.forwarded {
                // A request forwarded by a proxy in the guest is not the guest's own.
                return text(
                    400,
                    "Invalid header. Reason: Unsupported header name. Key: X-Forwarded-For",
                );
            }
            let Some(ttl) = request.ttl else {
                return text(400, "Token time to live value not found. Use `X-metadata-token-ttl-seconds` header to specify the token's lifetime.");
            };
            match mmds.tokens.generate(ttl, now) {
                Ok(token) => text(200, &token),
                Err(e) => text(400, &e.to_string()),
            }
        }
        "GET" => {
            if mmds.version == MmdsVersion::V2 {
                match request.token {
                    None => return text(401, "No MMDS token provided. Use `X-metadata-token` header to specify the session token."),
                    Some(t) if !mmds.tokens.is_valid(t, now) => {
                        return text(401, "MMDS token not valid.")
                    }
                    Some(_) => {}
                }
            }
            let pointer = path.trim_end_matches('/');
            let Some(value) = mmds.store.data().and_then(|d| d.pointer(pointer)) else {
                return text(404, &format!("Resource not found: {path}."));
            };
            if request.wants_json && !mmds.imds_compat {
                let body = serde_json::to_vec(value).unwrap_or_default();
                return response(200, "application/json", &body);
            }
            match imds_text(value) {
                Some(body) => text(200, &body),
                None => text(
                    501,
                    "Cannot retrieve value. The value has an unsupported type.",
                ),
            }
        }
        "PUT" => text(404, &format!("Resource not found: {path}.")),
        _ => text(405, "Not allowed HTTP method."),
    }
}

/// The path of a request target, as Firecracker reads it: without a scheme
/// and host (an absolute-form target), a query, or repeated slashes.
fn sanitize(target: &str) -> String {
    let path = target
        .strip_prefix("http://")
        .map_or(target, |rest| rest.find('/').map_or("/", |at| &rest[at..]));
    let path = path.split('?').next().unwrap_or_default();
    let mut clean = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && clean.ends_with('/')) {
            clean.push(c);
        }
    }
    clean
}

/// EC2's plain-text form: an object lists its keys, one per line, with a
/// `/` after those that hold objects; a string is itself; nothing else has one.
fn imds_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| match v {
                    Value::Object(_) => format!("{k}/"),
                    _ => k.clone(),
                })
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Not Implemented",
    }
}

fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: ember\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn mmds(version: MmdsVersion) -> Mmds {
        let mut mmds = Mmds {
            version,
            ..Default::default()
        };
        mmds.store
            .put(json!({"latest": {"meta-data": {"id": "i-1", "n": 7, "net": {}}}}))
            .expect("a small document");
        mmds
    }

    /// The status and body of the answer to `request`.
    fn ask(mmds: &mut Mmds, request: &str, now: Instant) -> (u16, String) {
        let Parsed::Answer { consumed, response } = handle(request.as_bytes(), mmds, now) else {
            panic!("no answer to {request:?}");
        };
        assert_eq!(consumed, request.len());
        let text = String::from_utf8(response).expect("a text answer");
        let status = text[9..12].parse().expect("a status code");
        let body = text.split_once("\r\n\r\n").expect("a head").1.to_string();
        (status, body)
    }

    #[test]
    fn v1_answers_without_a_token_in_imds_text_or_json() {
        let mut m = mmds(MmdsVersion::V1);
        let now = Instant::now();
        let get = |path: &str, accept: &str| format!("GET {path} HTTP/1.1\r\n{accept}\r\n");
        assert_eq!(
            ask(&mut m, &get("/latest/meta-data/", ""), now),
            (200, "id\nn\nnet/".into())
        );
        assert_eq!(
            ask(&mut m, &get("/latest/meta-data/id", ""), now),
            (200, "i-1".into())
        );
        assert_eq!(
            ask(
                &mut m,
                &get("/latest/meta-data/n", "Accept: application/json\r\n"),
                now
            ),
            (200, "7".into())
        );
        assert_eq!(ask(&mut m, &get("/latest/meta-data/n", ""), now).0, 501);
        assert_eq!(ask(&mut m, &get("/nope", ""), now).0, 404);
        m.imds_compat = true;
        assert_eq!(
            ask(
                &mut m,
                &get("/latest/meta-data/id", "Accept: application/json\r\n"),
                now
            ),
            (200, "i-1".into())
        );
    }

    #[test]
    fn v2_needs_a_live_token_from_a_put() {
        let mut m = mmds(MmdsVersion::V2);
        let now = Instant::now();
        let get = "GET /latest/meta-data/id HTTP/1.1\r\n\r\n";
        assert_eq!(ask(&mut m, get, now).0, 401);
        let (status, token) = ask(
            &mut m,
            "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n",
            now,
        );
        assert_eq!(status, 200);
        let with =
            |t: &str| format!("GET /latest/meta-data/id HTTP/1.1\r\nX-metadata-token: {t}\r\n\r\n");
        assert_eq!(ask(&mut m, &with(&token), now), (200, "i-1".into()));
        assert_eq!(ask(&mut m, &with("bogus"), now).0, 401);
        let later = now + Duration::from_secs(5);
        assert_eq!(ask(&mut m, &with(&token), later).0, 401, "expired");
    }

    #[test]
    fn token_requests_need_a_valid_ttl_and_no_proxy() {
        let mut m = mmds(MmdsVersion::V2);
        let now = Instant::now();
        let put = |headers: &str| format!("PUT /latest/api/token HTTP/1.1\r\n{headers}\r\n");
        assert_eq!(ask(&mut m, &put(""), now).0, 400);
        assert_eq!(
            ask(&mut m, &put("X-metadata-token-ttl-seconds: 0\r\n"), now).0,
            400
        );
        assert_eq!(
            ask(
                &mut m,
                &put("X-metadata-token-ttl-seconds: 60\r\nX-Forwarded-For: 1.2.3.4\r\n"),
                now
            )
            .0,
            400
        );
        assert_eq!(ask(&mut m, "DELETE / HTTP/1.1\r\n\r\n", now).0, 405);
        assert_eq!(ask(&mut m, "PUT /latest HTTP/1.1\r\n\r\n", now).0, 404);
    }

    #[test]
    fn targets_are_read_as_firecracker_reads_them() {
        let mut m = mmds(MmdsVersion::V1);
        let now = Instant::now();
        for target in [
            "http://169.254.169.254/latest/meta-data/id",
            "/latest//meta-data///id",
            "/latest/meta-data/id?x=1",
        ] {
            let get = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert_eq!(ask(&mut m, &get, now), (200, "i-1".into()), "{target}");
        }
    }

    #[test]
    fn partial_oversized_and_garbage_requests() {
        let mut m = mmds(MmdsVersion::V1);
        let now = Instant::now();
        assert_eq!(
            handle(b"GET / HTTP/1.1\r\n", &mut m, now),
            Parsed::Incomplete
        );
        let body = b"PUT /latest/api/token HTTP/1.1\r\nContent-Length: 3\r\n\r\nab";
        assert_eq!(handle(body, &mut m, now), Parsed::Incomplete);
        let huge = b"PUT / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n";
        assert!(matches!(handle(huge, &mut m, now), Parsed::Bad(_)));
        assert!(matches!(
            handle(b"\x00\x01garbage\r\n\r\n", &mut m, now),
            Parsed::Bad(_)
        ));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert!(matches!(
            handle(long.as_bytes(), &mut m, now),
            Parsed::Bad(_)
        ));
    }
}
