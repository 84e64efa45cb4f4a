//! The HTTPS client settings that Microsoft Graph (`graph`) and the identity platform's token
//! requests (`auth`) share, the one-line wording of a failed request, and a bounded read of an answer.
//!
//! Owns: [`builder`] — redirects never followed (every request carries a token, a client
//! secret, an assertion or a message, and a redirect would carry it wherever the answer
//! points; Graph and the token endpoint do not redirect, so each caller reports a 3xx as an
//! error), the timeouts, our User-Agent — [`error_chain`] and [`read_body`]. Must not: choose the TLS
//! trust or whether plain HTTP is allowed (the caller does), or import anything from the
//! crate.

use std::time::Duration;

/// A client builder with the shared settings; the caller adds its TLS configuration.
pub fn builder(connect_timeout: Duration, request_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .user_agent(concat!("m365send/", env!("CARGO_PKG_VERSION")))
}

/// An HTTP client error as one line, without its URL (an upload URL carries a credential;
/// so may a token endpoint's query): what failed, then each cause not already said.
pub fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// The body of `resp`, at most `limit` bytes: the rest is not read (the connection goes with
/// the answer), so a huge or endless answer costs no more memory than that.
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> reqwest::Result<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit.saturating_sub(body.len());
        if chunk.len() >= room {
            body.extend_from_slice(&chunk[..room]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
