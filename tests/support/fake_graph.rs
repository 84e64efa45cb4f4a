//! A fake Microsoft Graph for tests: HTTPS on 127.0.0.1 (ephemeral port) with a certificate
//! from a test CA made by rcgen (point `tls.ca_file` at `ca_file()`; nothing disables
//! certificate checks), HTTP/1.1 with keep-alive, recording every request.
//!
//! What it does, like Graph (see src/graph/mod.rs for the sources):
//! - `POST /v1.0/users/{m}/sendMail` with a `text/plain` base64 MIME body → 202, the message
//!   "sent" to the To/Cc/Bcc of its headers; with a JSON message without any recipient →
//!   400 ErrorInvalidRecipients (what doctor's probe expects);
//! - `POST .../messages` (MIME) → 201 `{"id": ...}` (a draft); `PATCH .../messages/{id}` →
//!   200; `POST .../messages/{id}/attachments` → 201; `.../attachments/createUploadSession` →
//!   201 `{"uploadUrl": "https://127.0.0.1:PORT/upload/ID?authtoken=..."}` (refused under
//!   3 MiB as Graph does); `PUT /upload/ID` with Content-Range → 200, 201 for the last range
//!   (401 if an Authorization header is sent: the URL is pre-authenticated);
//!   `POST .../messages/{id}/send` → 202; `DELETE .../messages/{id}` → 204, or 404 once the
//!   draft was sent;
//! - any request body over 4 MiB → 413; a bearer token other than the accepted one → 401
//!   InvalidAuthenticationToken.
//!
//! Scripting: `Rule`s answer an error (optionally with Retry-After, optionally the first N
//! times, optionally after carrying the request out: a 504 that still sent).
//!
//! Requests are read by support/http.rs, which the test file includes beside this one.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The largest request body Graph takes.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// One request as received. The bearer token is kept for assertions; never print it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// Bodies up to 64 KiB (JSON), else empty.
    pub small_body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn bearer(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
    }
    /// "POST sendMail", "PUT upload", ... : method and the last path segment (ids elided).
    pub fn short(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("");
        let last = path.rsplit('/').next().unwrap_or("");
        let kind = if path.starts_with("/upload/") {
            "upload"
        } else if last.starts_with("draft-") {
            "message"
        } else {
            last
        };
        format!("{} {kind}", self.method)
    }
}

/// An uploaded or posted attachment.
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub received: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    pub is_inline: bool,
    pub content_id: Option<String>,
    pub by_session: bool,
    hasher: Option<Hasher>,
}

/// A running SHA-256 of an upload.
#[derive(Clone)]
struct Hasher(Arc<Mutex<ring::digest::Context>>);

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

/// A message Graph "sent".
#[derive(Debug, Clone, Default)]
pub struct Sent {
    /// The MIME Graph received (sendMail, or the draft's).
    pub mime: Vec<u8>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub attachments: Vec<Attachment>,
    pub via_draft: bool,
    /// PR_DELETE_AFTER_SUBMIT was set (no copy in Sent Items).
    pub delete_after_submit: bool,
}

impl Sent {
    /// Every recipient, lower case, sorted.
    pub fn recipients(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|a| a.to_ascii_lowercase())
            .collect();
        v.sort();
        v
    }
}

#[derive(Debug, Clone, Default)]
struct Draft {
    mime: Vec<u8>,
    attachments: Vec<Attachment>,
    delete_after_submit: bool,
    sent: bool,
}

/// An error to answer.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Matches `Request::short()` ("POST sendMail", "POST send", "PUT upload", ...).
    pub request: String,
    pub status: u16,
    pub code: String,
    pub message: String,
    pub retry_after: Option<u64>,
    pub times: Option<usize>,
    /// Carry the request out, then answer the error anyway (a 504 after sending).
    pub carry_out: bool,
    /// A `Location:` header (for a 3xx).
    pub location: Option<String>,
}

impl Rule {
    pub fn error(request: &str, status: u16, code: &str, message: &str) -> Rule {
        Rule {
            request: request.to_owned(),
            status,
            code: code.to_owned(),
            message: message.to_owned(),
            retry_after: None,
            times: None,
            carry_out: false,
            location: None,
        }
    }
    /// Answer with this `Location:` (make `status` a 3xx).
    pub fn location(mut self, url: &str) -> Rule {
        self.location = Some(url.to_owned());
        self
    }
    pub fn retry_after(mut self, secs: u64) -> Rule {
        self.retry_after = Some(secs);
        self
    }
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
    pub fn carry_out(mut self) -> Rule {
        self.carry_out = true;
        self
    }
}

/// Which bearer tokens the fake takes.
#[derive(Debug, Clone)]
pub enum Accept {
    /// Exactly this token.
    Token(String),
    /// A JWT whose `aud` is https://graph.microsoft.com (as Graph checks the audience).
    GraphAudience,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    sent: Vec<Sent>,
    drafts: HashMap<String, Draft>,
    /// upload id → (draft id, attachment index)
    uploads: HashMap<String, (String, usize)>,
    fired: HashMap<usize, usize>,
    next: usize,
    connections: usize,
}

pub struct FakeGraph {
    port: u16,
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    ca_pem: String,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The query parameter of upload URLs that stands for Graph's credential in them.
pub const UPLOAD_SECRET: &str = "upload-secret-5ee2d1";

struct Config {
    accept: Accept,
    rules: Vec<Rule>,
    port: u16,
}

impl FakeGraph {
    pub fn start(accept: Accept, rules: Vec<Rule>) -> FakeGraph {
        let dir = tempfile::tempdir().unwrap();
        // A test CA and a leaf for 127.0.0.1 / localhost.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Fake Microsoft Graph Test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "graph.test");
        let issuer = Issuer::from_params(&ca, &ca_key);
        let leaf_cert = leaf.signed_by(&key, &issuer).unwrap();
        let ca_file = dir.path().join("graph-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let cfg = Arc::new(Config {
            accept,
            rules,
            port,
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let acceptor = acceptor.clone();
                        let st = st.clone();
                        let cfg = cfg.clone();
                        st.lock().unwrap().connections += 1;
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(sock).await {
                                let _ = serve(tls, st, cfg).await;
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = stop_rx => {}
                    _ = accept => {}
                }
            });
        });
        FakeGraph {
            port,
            _dir: dir,
            ca_file,
            ca_pem: ca_cert.pem(),
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    /// `127.0.0.1:PORT`, for `graph_host`, `endpoint.host`/`port` or `--server`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
    /// The requests as "METHOD kind", in order.
    pub fn shorts(&self) -> Vec<String> {
        self.requests().iter().map(Request::short).collect()
    }
    pub fn sent(&self) -> Vec<Sent> {
        self.state.lock().unwrap().sent.clone()
    }
    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }
    /// Drafts still in Drafts.
    pub fn drafts_left(&self) -> usize {
        self.state
            .lock()
            .unwrap()
            .drafts
            .values()
            .filter(|d| !d.sent)
            .count()
    }
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn addresses(mime: &[u8]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let Some(m) = mail_parser::MessageParser::default().parse_headers(mime) else {
        return Default::default();
    };
    let list = |a: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        a.map(|a| {
            a.iter()
                .filter_map(|x| x.address.as_deref().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
    };
    (list(m.to()), list(m.cc()), list(m.bcc()))
}

fn jwt_aud(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v["aud"].as_str().map(str::to_owned)
}

struct Answer {
    status: u16,
    body: String,
    retry_after: Option<u64>,
    location: Option<String>,
}

fn json(status: u16, v: serde_json::Value) -> Answer {
    Answer {
        status,
        body: v.to_string(),
        retry_after: None,
        location: None,
    }
}

fn error(status: u16, code: &str, message: &str) -> Answer {
    json(
        status,
        serde_json::json!({"error": {"code": code, "message": message,
            "innerError": {"date": "2026-01-01T00:00:00", "request-id": "00000000-0000-0000-0000-000000000000"}}}),
    )
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut sock: S,
    st: Arc<Mutex<State>>,
    cfg: Arc<Config>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(crate::http::Head {
        method,
        path,
        headers,
        body,
    }) = crate::http::read_request(&mut sock, &mut buf).await?
    {
        let req = Request {
            method,
            path,
            headers,
            body_len: body.len(),
            small_body: if body.len() <= 64 * 1024 {
                body.clone()
            } else {
                Vec::new()
            },
        };
        let answer = handle(&req, &body, &st, &cfg);
        drop(body);
        let mut resp = format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            answer.status,
            answer.body.len()
        );
        if let Some(r) = answer.retry_after {
            resp.push_str(&format!("Retry-After: {r}\r\n"));
        }
        if let Some(l) = answer.location {
            resp.push_str(&format!("Location: {l}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&answer.body);
        sock.write_all(resp.as_bytes()).await?;
        sock.flush().await?;
    }
    Ok(())
}

fn handle(req: &Request, body: &[u8], st: &Arc<Mutex<State>>, cfg: &Config) -> Answer {
    let mut s = st.lock().unwrap();
    s.requests.push(req.clone());
    if body.len() > MAX_BODY {
        return error(
            413,
            "RequestEntityTooLarge",
            "The maximum request length supported is 4MB.",
        );
    }
    let short = req.short();
    let is_upload = req.path.starts_with("/upload/");
    // Authentication: upload URLs are pre-authenticated and take no Authorization header.
    if is_upload {
        if req.header("authorization").is_some() {
            return error(
                401,
                "InvalidAuthenticationToken",
                "Authorization header not expected on an upload URL.",
            );
        }
        if !req.path.contains(UPLOAD_SECRET) {
            return error(
                401,
                "InvalidAuthenticationToken",
                "Upload URL credential missing.",
            );
        }
    } else {
        let ok = match (&cfg.accept, req.bearer()) {
            (Accept::Token(t), Some(b)) => t == b,
            (Accept::GraphAudience, Some(b)) => {
                jwt_aud(b).as_deref() == Some("https://graph.microsoft.com")
            }
            _ => false,
        };
        if !ok {
            return error(
                401,
                "InvalidAuthenticationToken",
                "Access token validation failure. Invalid audience.",
            );
        }
    }
    // Scripted errors.
    let mut carry_then: Option<Answer> = None;
    for (i, r) in cfg.rules.iter().enumerate() {
        if r.request != short {
            continue;
        }
        let n = s.fired.get(&i).copied().unwrap_or(0);
        if r.times.is_some_and(|t| n >= t) {
            continue;
        }
        s.fired.insert(i, n + 1);
        let mut a = error(r.status, &r.code, &r.message);
        a.retry_after = r.retry_after;
        a.location = r.location.clone();
        if r.carry_out {
            carry_then = Some(a);
            break;
        }
        return a;
    }
    let answer = carry_out(req, body, &mut s, cfg);
    carry_then.unwrap_or(answer)
}

fn segments(path: &str) -> Vec<String> {
    path.split('?')
        .next()
        .unwrap_or("")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.to_owned())
        .collect()
}

fn decode_mime(body: &[u8]) -> Option<Vec<u8>> {
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn carry_out(req: &Request, body: &[u8], s: &mut State, cfg: &Config) -> Answer {
    let seg = segments(&req.path);
    let segs: Vec<&str> = seg.iter().map(String::as_str).collect();
    match (req.method.as_str(), segs.as_slice()) {
        ("POST", ["v1.0", "users", _, "sendMail"]) => {
            // A JSON message without any recipient (doctor's probe): refused, as Graph does.
            if req
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
            {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
                let none = ["toRecipients", "ccRecipients", "bccRecipients"]
                    .iter()
                    .all(|k| v["message"][k].as_array().is_none_or(|a| a.is_empty()));
                if none {
                    return error(
                        400,
                        "ErrorInvalidRecipients",
                        "At least one recipient is required, but none were found.",
                    );
                }
            }
            if !req
                .header("content-type")
                .is_some_and(|c| c.starts_with("text/plain"))
            {
                return error(400, "ErrorInvalidRequest", "expected text/plain MIME");
            }
            let Some(mime) = decode_mime(body) else {
                return error(
                    400,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                );
            };
            let (to, cc, bcc) = addresses(&mime);
            s.sent.push(Sent {
                mime,
                to,
                cc,
                bcc,
                ..Sent::default()
            });
            json(202, serde_json::json!({}))
        }
        ("POST", ["v1.0", "users", _, "messages"]) => {
            let Some(mime) = decode_mime(body) else {
                return error(
                    400,
                    "ErrorMimeContentInvalidBase64String",
                    "Invalid base64 string for MIME content.",
                );
            };
            s.next += 1;
            let id = format!("draft-{}", s.next);
            s.drafts.insert(
                id.clone(),
                Draft {
                    mime,
                    ..Draft::default()
                },
            );
            json(201, serde_json::json!({"id": id, "isDraft": true}))
        }
        ("PATCH", ["v1.0", "users", _, "messages", id]) => {
            let Some(d) = s.drafts.get_mut(*id).filter(|d| !d.sent) else {
                return error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                );
            };
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let Some(props) = v["singleValueExtendedProperties"].as_array() {
                d.delete_after_submit = props.iter().any(|p| {
                    p["id"].as_str() == Some("Boolean 0x0E01")
                        && p["value"].as_str() == Some("true")
                });
            }
            json(200, serde_json::json!({"id": id}))
        }
        ("DELETE", ["v1.0", "users", _, "messages", id]) => match s.drafts.get(*id) {
            Some(d) if !d.sent => {
                s.drafts.remove(*id);
                Answer {
                    status: 204,
                    body: String::new(),
                    retry_after: None,
                    location: None,
                }
            }
            _ => error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            ),
        },
        ("POST", ["v1.0", "users", _, "messages", id, "attachments"]) => {
            let Some(d) = s.drafts.get_mut(*id).filter(|d| !d.sent) else {
                return error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                );
            };
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v["contentBytes"].as_str().unwrap_or(""))
                .unwrap_or_default();
            let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
            d.attachments.push(Attachment {
                name: v["name"].as_str().unwrap_or("").to_owned(),
                content_type: v["contentType"].as_str().unwrap_or("").to_owned(),
                size: bytes.len() as u64,
                received: bytes.len() as u64,
                sha256: hex(digest.as_ref()),
                is_inline: v["isInline"].as_bool().unwrap_or(false),
                content_id: v["contentId"].as_str().map(str::to_owned),
                by_session: false,
                hasher: None,
            });
            json(201, serde_json::json!({"id": "att"}))
        }
        (
            "POST",
            [
                "v1.0",
                "users",
                _,
                "messages",
                id,
                "attachments",
                "createUploadSession",
            ],
        ) => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let item = &v["AttachmentItem"];
            let size = item["size"].as_u64().unwrap_or(0);
            if size < 3 * 1024 * 1024 {
                return error(
                    400,
                    "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                    "Attachment size must be greater than the minimum size.",
                );
            }
            let id = (*id).to_owned();
            let Some(d) = s.drafts.get_mut(&id).filter(|d| !d.sent) else {
                return error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                );
            };
            d.attachments.push(Attachment {
                name: item["name"].as_str().unwrap_or("").to_owned(),
                content_type: item["contentType"].as_str().unwrap_or("").to_owned(),
                size,
                is_inline: item["isInline"].as_bool().unwrap_or(false),
                content_id: item["contentId"].as_str().map(str::to_owned),
                by_session: true,
                hasher: Some(Hasher(Arc::new(Mutex::new(ring::digest::Context::new(
                    &ring::digest::SHA256,
                ))))),
                ..Attachment::default()
            });
            let index = d.attachments.len() - 1;
            s.next += 1;
            let upload = format!("up{}", s.next);
            s.uploads.insert(upload.clone(), (id, index));
            json(
                201,
                serde_json::json!({
                    "uploadUrl": format!("https://127.0.0.1:{}/upload/{upload}?authtoken={UPLOAD_SECRET}", cfg.port),
                    "expirationDateTime": "2026-01-01T00:15:00Z",
                    "nextExpectedRanges": ["0-"],
                }),
            )
        }
        ("PUT", ["upload", upload]) => {
            let Some((draft, index)) = s.uploads.get(*upload).cloned() else {
                return error(404, "ErrorItemNotFound", "no such upload session");
            };
            let range = req.header("content-range").unwrap_or("").to_owned();
            let Some(d) = s.drafts.get_mut(&draft) else {
                return error(404, "ErrorItemNotFound", "draft gone");
            };
            let a = &mut d.attachments[index];
            // "bytes FROM-TO/TOTAL": the next expected range only.
            let parsed = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('/'))
                .and_then(|(r, t)| {
                    let (f, to) = r.split_once('-')?;
                    Some((
                        f.parse::<u64>().ok()?,
                        to.parse::<u64>().ok()?,
                        t.parse::<u64>().ok()?,
                    ))
                });
            match parsed {
                Some((f, to, t))
                    if f == a.received && t == a.size && to + 1 - f == body.len() as u64 =>
                {
                    if let Some(h) = &a.hasher {
                        h.0.lock().unwrap().update(body);
                    }
                    a.received = to + 1;
                    if a.received == a.size {
                        if let Some(h) = a.hasher.take() {
                            let ctx = h.0.lock().unwrap().clone();
                            a.sha256 = hex(ctx.finish().as_ref());
                        }
                        let mut ans = json(201, serde_json::json!({}));
                        ans.location = Some("https://graph.example/attachments('x')".into());
                        ans
                    } else {
                        json(
                            200,
                            serde_json::json!({"nextExpectedRanges": [format!("{}-", a.received)]}),
                        )
                    }
                }
                _ => error(
                    416,
                    "InvalidRange",
                    "The Content-Range is not the next expected range.",
                ),
            }
        }
        ("POST", ["v1.0", "users", _, "messages", id, "send"]) => {
            let id = (*id).to_owned();
            let Some(d) = s.drafts.get_mut(&id).filter(|d| !d.sent) else {
                return error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                );
            };
            if d.attachments.iter().any(|a| a.received != a.size) {
                return error(400, "ErrorInvalidRequest", "an upload is incomplete");
            }
            d.sent = true;
            let d = d.clone();
            let (to, cc, bcc) = addresses(&d.mime);
            s.sent.push(Sent {
                mime: d.mime,
                to,
                cc,
                bcc,
                attachments: d.attachments,
                via_draft: true,
                delete_after_submit: d.delete_after_submit,
            });
            json(202, serde_json::json!({}))
        }
        _ => error(
            405,
            "ErrorInvalidRequest",
            "The OData request is not supported.",
        ),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
