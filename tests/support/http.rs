//! Reading HTTP/1.1 requests off a stream, for the fake servers (fake_graph.rs,
//! token_server.rs): the request line, the headers and a `Content-Length` body. A test file
//! that includes either of them includes this too, beside it:
//! `#[path = "support/http.rs"] mod http;`.
#![allow(dead_code)]

use tokio::io::{AsyncRead, AsyncReadExt};

/// One request as it arrived.
pub struct Head {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Read the next request. `buf` holds what was read past the previous request (keep-alive)
/// and keeps what is read past this one. None when the client closes the connection, before
/// a request or in the middle of one.
pub async fn read_request<S: AsyncRead + Unpin>(
    sock: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Head>> {
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf.split_off(head_end + 4);
    buf.clear();
    while body.len() < len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if body.len() > len {
        *buf = body.split_off(len);
    }
    Ok(Some(Head {
        method,
        path,
        headers,
        body,
    }))
}
