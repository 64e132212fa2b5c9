//! Requests to the MMDS ([`MMDS_ADDR`], port 80) for functions, and the V2
//! session tokens they carry.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use super::http::{Request, Response, SMALL_BUFFER};
use super::{MMDS_ADDR, NetError, SocketAddrV4};

/// The header a V2 request shows its token in.
pub const TOKEN_HEADER: &str = "X-metadata-token";
/// The header a token request gives the token's lifetime in, in seconds.
pub const TTL_HEADER: &str = "X-metadata-token-ttl-seconds";

/// Sends `method path` with `headers` to the MMDS; any status comes back.
pub fn request(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Response, NetError> {
    let request = Request {
        method,
        host: "169.254.169.254",
        path,
        headers,
        body: &[],
    };
    // The MMDS's answers are short: small buffers touch few pages.
    request.send_sized(SocketAddrV4::new(MMDS_ADDR, 80), timeout, SMALL_BUFFER)
}

/// A V2 session token living `ttl_seconds`.
pub fn token(ttl_seconds: u32, timeout: Duration) -> Result<String, String> {
    let ttl = format!("{ttl_seconds}");
    let body = body(request(
        "PUT",
        "/latest/api/token",
        &[(TTL_HEADER, &ttl)],
        timeout,
    ))?;
    let token =
        String::from_utf8(body).map_err(|_| String::from("mmds: the token is not UTF-8"))?;
    Ok(String::from(token.trim()))
}

/// The body of a 200 answer; otherwise `mmds: <code> <reason>[: <body>]`.
pub fn body(response: Result<Response, NetError>) -> Result<Vec<u8>, String> {
    let response = response.map_err(|err| format!("mmds: {err}"))?;
    if response.status == 200 {
        return Ok(response.body);
    }
    let reason = response
        .status_line
        .splitn(3, ' ')
        .nth(2)
        .unwrap_or_default();
    let mut message = format!("mmds: {} {reason}", response.status);
    let text = String::from_utf8_lossy(&response.body);
    if !text.trim().is_empty() {
        message += &format!(": {}", text.trim());
    }
    Err(message)
}
