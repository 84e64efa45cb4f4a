//! Microsoft Graph sendMail: the HTTP mechanics of sending one prepared message as a mailbox.
//!
//! Owns: the HTTPS client (rustls with the trust the caller hands over; `HTTPS_PROXY`,
//! `NO_PROXY` honoured by reqwest; the settings it shares with auth's token requests are
//! `http::builder`, its errors are worded by `http::error_chain`); the requests — `POST
//! /users/{mailbox}/sendMail` with the MIME message base64-encoded as `text/plain` when it
//! fits one request (Graph takes at most 4 MB per request) and a copy in Sent Items is
//! wanted; otherwise a draft created from MIME (`POST /users/{mailbox}/messages`), its large
//! parts attached (a `POST` on `attachments` under 3 MiB, an upload session of `PUT`s of at
//! most 3.2 MB each from 3 MiB, decoded from the spool file while the previous one uploads),
//! optionally marked not to be kept (PR_DELETE_AFTER_SUBMIT), then `POST .../send`;
//! Retry-After on 429 and 503 (one retry loop for every request, resending the same body,
//! never a copy of it), Graph's error bodies, and the duplicate check after an ambiguous
//! send (a 504 or a lost answer on the draft's `send`: the draft is deleted; if it is
//! already gone, Exchange took it, and the message counts as sent). The recipients are the
//! envelope's: see `mime`.
//! Must not: read argv or the configuration file (it takes [`Settings`]), acquire tokens
//! (it is handed one), decide exit codes or word explanations, or log a token or an upload
//! URL (which carries a credential).

pub mod mime;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

/// Largest raw MIME message sent in one request: its base64 form stays under Graph's 4 MB.
pub const ONE_REQUEST_LIMIT: u64 = 3_000_000;
/// Parts at least this large (decoded) go through an upload session; smaller ones through one
/// `POST` (Graph refuses upload sessions under 3 MB: ErrorAttachmentSizeShouldNotBeLessThanMinimumSize).
pub const UPLOAD_SESSION_MIN: u64 = 3 * 1024 * 1024;
/// Bytes per upload `PUT` (a multiple of 320 KiB, under 4 MB).
pub const UPLOAD_CHUNK: usize = 10 * 320 * 1024;
/// Longest Retry-After honoured in-process; a longer one is left to the queue.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// Requests retried after a 429/503 with Retry-After, per request.
const THROTTLE_RETRIES: u32 = 3;
/// The most read of a successful answer (a draft's JSON holds its body; an attachment's, its
/// bytes in base64): beyond it the rest is not read.
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// The most read of an error answer (Graph's are a few hundred bytes).
pub const MAX_ERROR_ANSWER: usize = 64 * 1024;

/// Where a line of the (redacted) transcript goes.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// What the Graph client needs, as plain values.
#[derive(Clone)]
pub struct Settings {
    /// Host name (or IP literal) of the Graph endpoint.
    pub host: String,
    pub port: u16,
    /// The mailbox that sends (`/users/{mailbox}`).
    pub mailbox: String,
    /// Keep a copy in Sent Items.
    pub save_to_sent_items: bool,
    /// TLS trust (system roots plus any configured CA file).
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    /// Per request.
    pub request_timeout: Duration,
    /// -v transcript.
    pub log: Option<Log>,
}

/// How a message goes through Graph, by size and settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// One `sendMail` request with the MIME message.
    SendMail { request_bytes: u64 },
    /// A draft from MIME, `attachments` parts taken out and uploaded, then `send`.
    Draft {
        skeleton_bytes: u64,
        attachments: Vec<(String, u64, bool)>,
    },
}

impl Route {
    /// One line for --dry-run and -v.
    pub fn describe(&self) -> String {
        match self {
            Route::SendMail { request_bytes } => format!(
                "one request: POST sendMail with the MIME message ({request_bytes} bytes base64, limit 4 MB)"
            ),
            Route::Draft {
                skeleton_bytes,
                attachments,
            } => {
                let sessions = attachments.iter().filter(|a| a.2).count();
                format!(
                    "draft from MIME ({skeleton_bytes} bytes) + {} attachment(s) taken out ({} by upload session) + send",
                    attachments.len(),
                    sessions
                )
            }
        }
    }
}

/// What Graph did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub route: Route,
    /// Graph's final status (202).
    pub status: u16,
    /// The send's answer was lost, but the draft had left Drafts: Exchange took it.
    pub confirmed_after_ambiguity: bool,
    /// Requests made.
    pub requests: u32,
}

/// Why a message did not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphError {
    /// Graph answered with an error status.
    Status {
        status: u16,
        /// Graph's error code (`ErrorSendAsDenied`), or the HTTP reason when there was none.
        code: String,
        message: String,
        retry_after: Option<Duration>,
        /// The request, e.g. "POST sendMail".
        request: String,
        /// The message may have been sent anyway (a 504 on the final request).
        maybe_sent: bool,
    },
    /// No answer: connection, TLS or timeout.
    Transport {
        what: String,
        request: String,
        /// The request may have reached Graph and been carried out.
        maybe_sent: bool,
    },
    /// The spool file could not be read or split.
    Io(String),
    /// The client could not be set up.
    Setup(String),
}

impl GraphError {
    pub fn is_transient(&self) -> bool {
        match self {
            GraphError::Status { status, code, .. } => {
                matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
                    || code == "ErrorItemNotFound"
                    || code == "MailboxStoreUnavailable"
                    || code == "ErrorMailboxStoreUnavailable"
            }
            GraphError::Transport { .. } => true,
            GraphError::Io(_) | GraphError::Setup(_) => false,
        }
    }
    pub fn maybe_sent(&self) -> bool {
        matches!(
            self,
            GraphError::Status {
                maybe_sent: true,
                ..
            } | GraphError::Transport {
                maybe_sent: true,
                ..
            }
        )
    }
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GraphError::Status {
                status,
                code,
                message,
                request,
                ..
            } => write!(f, "{request}: HTTP {status} {code}: {message}"),
            GraphError::Transport { what, request, .. } => write!(f, "{request}: {what}"),
            GraphError::Io(e) => write!(f, "reading the message: {e}"),
            GraphError::Setup(e) => write!(f, "HTTP client: {e}"),
        }
    }
}

/// Graph's error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}
#[derive(Deserialize)]
struct ErrorInner {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct Created {
    id: String,
}

#[derive(Deserialize)]
struct UploadSession {
    #[serde(rename = "uploadUrl")]
    upload_url: String,
}

/// A request body.
enum Payload {
    None,
    Text(Vec<u8>),
    Json(serde_json::Value),
}

/// A client for one mailbox.
pub struct Client {
    s: Settings,
    http: reqwest::Client,
    base: reqwest::Url,
    requests: u32,
}

impl Client {
    pub fn new(s: Settings) -> Result<Client, GraphError> {
        let http = crate::http::builder(s.connect_timeout, s.request_timeout)
            .use_preconfigured_tls((*s.tls).clone())
            .https_only(true)
            .build()
            .map_err(|e| GraphError::Setup(e.to_string()))?;
        let host = if s.host.contains(':') {
            format!("[{}]", s.host)
        } else {
            s.host.clone()
        };
        let base = reqwest::Url::parse(&format!("https://{host}:{}/v1.0/", s.port))
            .map_err(|e| GraphError::Setup(format!("Graph host {host}: {e}")))?;
        Ok(Client {
            s,
            http,
            base,
            requests: 0,
        })
    }

    /// `https://HOST/v1.0/users/{mailbox}/...segments`, each segment escaped.
    pub fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().push("users").push(&self.s.mailbox);
            for s in segments {
                p.push(s);
            }
        }
        u
    }

    fn log(&self, line: &str) {
        if let Some(l) = &self.s.log {
            l(line);
        }
    }

    /// The plan for `path` (a message of `size` bytes) to `envelope`: the rewritten headers,
    /// the route and, for the draft route, the split.
    pub fn plan(
        path: &Path,
        envelope: &[String],
        save_to_sent_items: bool,
    ) -> Result<(mime::Headers, Route, Option<mime::Split>), GraphError> {
        let io = |e: std::io::Error| GraphError::Io(e.to_string());
        let mut file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        let block = mime::read_header_block(&mut file).map_err(io)?;
        let headers = mime::rewrite_headers(&block, envelope);
        let body = size.saturating_sub(headers.original_len);
        let total = headers.block.len() as u64 + body;
        if total <= ONE_REQUEST_LIMIT && save_to_sent_items {
            let request_bytes = total.div_ceil(3) * 4;
            return Ok((headers, Route::SendMail { request_bytes }, None));
        }
        if total <= ONE_REQUEST_LIMIT {
            let route = Route::Draft {
                skeleton_bytes: total,
                attachments: Vec::new(),
            };
            return Ok((headers, route, None));
        }
        let root = mime::scan(path).map_err(io)?;
        let limit = ONE_REQUEST_LIMIT.saturating_sub(headers.block.len() as u64);
        let split = mime::split(path, root, headers.original_len, limit).map_err(io)?;
        let attachments = split
            .extracted
            .iter()
            .map(|e| (e.name.clone(), e.size, e.size >= UPLOAD_SESSION_MIN))
            .collect();
        let route = Route::Draft {
            skeleton_bytes: headers.block.len() as u64 + split.skeleton_estimate,
            attachments,
        };
        Ok((headers, route, Some(split)))
    }

    /// Send the message in `path` to exactly `envelope`'s recipients, with `token`.
    pub async fn send(
        &mut self,
        token: &str,
        path: &Path,
        envelope: &[String],
    ) -> Result<Sent, GraphError> {
        self.requests = 0;
        let (headers, route, split) = Self::plan(path, envelope, self.s.save_to_sent_items)?;
        self.log(&format!(
            "graph: {} recipient(s) ({} To, {} Cc, {} Bcc); {}",
            headers.recipients.count(),
            headers.recipients.to.len(),
            headers.recipients.cc.len(),
            headers.recipients.bcc.len(),
            route.describe()
        ));
        let io = |e: std::io::Error| GraphError::Io(e.to_string());
        match &route {
            Route::SendMail { .. } => {
                let mut mime = headers.block.clone();
                append_body(path, headers.original_len, &mut mime).map_err(io)?;
                let b64 = base64::engine::general_purpose::STANDARD.encode(&mime);
                drop(mime);
                let status = self
                    .request(
                        token,
                        reqwest::Method::POST,
                        self.url(&["sendMail"]),
                        "POST sendMail",
                        Payload::Text(b64.into_bytes()),
                        true,
                    )
                    .await?
                    .0;
                Ok(Sent {
                    route,
                    status,
                    confirmed_after_ambiguity: false,
                    requests: self.requests,
                })
            }
            Route::Draft { .. } => {
                let mut mime = Vec::new();
                match &split {
                    Some(sp) => mime::write_skeleton(path, &headers, sp, &mut mime).map_err(io)?,
                    None => {
                        mime.extend_from_slice(&headers.block);
                        append_body(path, headers.original_len, &mut mime).map_err(io)?;
                    }
                }
                let b64 = base64::engine::general_purpose::STANDARD.encode(&mime);
                drop(mime);
                let (_, body) = self
                    .request(
                        token,
                        reqwest::Method::POST,
                        self.url(&["messages"]),
                        "POST messages (draft from MIME)",
                        Payload::Text(b64.into_bytes()),
                        false,
                    )
                    .await?;
                let id = serde_json::from_slice::<Created>(&body)
                    .map_err(|_| GraphError::Status {
                        status: 502,
                        code: "BadDraftAnswer".into(),
                        message: "the draft was created but Graph's answer has no id".into(),
                        retry_after: None,
                        request: "POST messages".into(),
                        maybe_sent: false,
                    })?
                    .id;
                match self.finish_draft(token, path, &id, split.as_ref()).await {
                    Ok(status) => Ok(Sent {
                        route,
                        status,
                        confirmed_after_ambiguity: false,
                        requests: self.requests,
                    }),
                    Err(e) if e.maybe_sent() => {
                        // Did Exchange take the draft? Delete it: gone already means sent.
                        match self.delete_draft(token, &id).await {
                            Some(404) => {
                                self.log("graph: the draft is no longer in Drafts: Exchange took the message; not sending it again");
                                Ok(Sent {
                                    route,
                                    status: 202,
                                    confirmed_after_ambiguity: true,
                                    requests: self.requests,
                                })
                            }
                            Some(s) if (200..300).contains(&s) => {
                                self.log("graph: the draft was still in Drafts and is deleted: the message was not sent");
                                Err(not_sent(e))
                            }
                            _ => Err(e),
                        }
                    }
                    Err(e) => {
                        let _ = self.delete_draft(token, &id).await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Ask Graph whether this mailbox may send, without sending anything (for `doctor`):
    /// `POST sendMail` with a message that has no recipient and no copy to keep. Graph
    /// checks the token, the mailbox and the right to send from it before the message, so
    /// `400 ErrorInvalidRecipients` ("At least one recipient is required") is the healthy
    /// answer; 401, 403 and 404 say what is wrong. A message without a recipient cannot be
    /// delivered to anyone.
    pub async fn probe(&mut self, token: &str) -> Result<u16, GraphError> {
        let body = serde_json::json!({
            "message": {
                "subject": "m365send doctor probe (no recipient: never delivered)",
                "body": {"contentType": "Text", "content": ""},
                "toRecipients": [],
            },
            "saveToSentItems": false,
        });
        self.request(
            token,
            reqwest::Method::POST,
            self.url(&["sendMail"]),
            "POST sendMail (probe without recipients)",
            Payload::Json(body),
            false,
        )
        .await
        .map(|(status, _)| status)
    }

    /// Attach the extracted parts, mark the draft, send it. The final status.
    async fn finish_draft(
        &mut self,
        token: &str,
        path: &Path,
        id: &str,
        split: Option<&mime::Split>,
    ) -> Result<u16, GraphError> {
        if let Some(sp) = split {
            for e in &sp.extracted {
                self.attach(token, path, id, e).await?;
            }
        }
        if !self.s.save_to_sent_items {
            // PR_DELETE_AFTER_SUBMIT (0x0E01, boolean): Exchange deletes the message once
            // submitted instead of moving it to Sent Items.
            let body = serde_json::json!({
                "singleValueExtendedProperties": [
                    {"id": "Boolean 0x0E01", "value": "true"}
                ]
            });
            self.request(
                token,
                reqwest::Method::PATCH,
                self.url(&["messages", id]),
                "PATCH message (not kept in Sent Items)",
                Payload::Json(body),
                false,
            )
            .await?;
        }
        let (status, _) = self
            .request(
                token,
                reqwest::Method::POST,
                self.url(&["messages", id, "send"]),
                "POST send",
                Payload::None,
                true,
            )
            .await?;
        Ok(status)
    }

    /// Attach one extracted part: one POST, or an upload session.
    async fn attach(
        &mut self,
        token: &str,
        path: &Path,
        id: &str,
        e: &mime::Extracted,
    ) -> Result<(), GraphError> {
        let io = |e: std::io::Error| GraphError::Io(e.to_string());
        let content_type = e.part.content_type.clone();
        if e.size < UPLOAD_SESSION_MIN {
            let mut bytes = Vec::with_capacity(e.size as usize);
            mime::decode(path, &e.part, &mut |b| {
                bytes.extend_from_slice(b);
                Ok(())
            })
            .map_err(io)?;
            let mut body = serde_json::json!({
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": e.name,
                "contentType": content_type,
                "contentBytes": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "isInline": e.part.inline,
            });
            if let Some(cid) = &e.part.content_id {
                body["contentId"] = serde_json::Value::String(cid.clone());
            }
            drop(bytes);
            self.request(
                token,
                reqwest::Method::POST,
                self.url(&["messages", id, "attachments"]),
                "POST attachments",
                Payload::Json(body),
                false,
            )
            .await?;
            return Ok(());
        }
        let mut item = serde_json::json!({
            "attachmentType": "file",
            "name": e.name,
            "size": e.size,
            "contentType": content_type,
            "isInline": e.part.inline,
        });
        if let Some(cid) = &e.part.content_id {
            item["contentId"] = serde_json::Value::String(cid.clone());
        }
        let (_, body) = self
            .request(
                token,
                reqwest::Method::POST,
                self.url(&["messages", id, "attachments", "createUploadSession"]),
                "POST createUploadSession",
                Payload::Json(serde_json::json!({ "AttachmentItem": item })),
                false,
            )
            .await?;
        let session: UploadSession =
            serde_json::from_slice(&body).map_err(|_| GraphError::Status {
                status: 502,
                code: "BadUploadSession".into(),
                message: "Graph's answer to createUploadSession has no uploadUrl".into(),
                retry_after: None,
                request: "POST createUploadSession".into(),
                maybe_sent: false,
            })?;
        let url = reqwest::Url::parse(&session.upload_url).map_err(|_| GraphError::Status {
            status: 502,
            code: "BadUploadSession".into(),
            message: "the upload URL Graph gave is not a URL".into(),
            retry_after: None,
            request: "POST createUploadSession".into(),
            maybe_sent: false,
        })?;
        if url.scheme() != "https" {
            return Err(GraphError::Setup(
                "the upload URL Graph gave is not https".into(),
            ));
        }
        // The part is decoded on a blocking thread into chunks of UPLOAD_CHUNK bytes while
        // the previous one uploads: one being filled, one waiting, one in flight (its body
        // shared by the retries of `exchange`), whatever the part's size.
        let mut offset = 0u64;
        let total = e.size;
        let mut err: Option<GraphError> = None;
        let path_owned = path.to_path_buf();
        let part = e.part.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1);
        let reader = tokio::task::spawn_blocking(move || {
            let mut buf: Vec<u8> = Vec::with_capacity(UPLOAD_CHUNK);
            let r = mime::decode(&path_owned, &part, &mut |b| {
                let mut b = b;
                while !b.is_empty() {
                    let room = UPLOAD_CHUNK - buf.len();
                    let take = room.min(b.len());
                    buf.extend_from_slice(&b[..take]);
                    b = &b[take..];
                    if buf.len() == UPLOAD_CHUNK {
                        let full = std::mem::replace(&mut buf, Vec::with_capacity(UPLOAD_CHUNK));
                        tx.blocking_send(Ok(full)).map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "upload stopped")
                        })?;
                    }
                }
                Ok(())
            });
            match r {
                Ok(()) => {
                    if !buf.is_empty() {
                        let _ = tx.blocking_send(Ok(buf));
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                }
            }
        });
        while let Some(next) = rx.recv().await {
            let chunk = match next {
                Ok(c) => c,
                Err(e) => {
                    err = Some(GraphError::Io(e.to_string()));
                    break;
                }
            };
            let end = offset + chunk.len() as u64;
            if end > total {
                err = Some(GraphError::Io(
                    "the attachment decoded to more bytes than counted".into(),
                ));
                break;
            }
            let range = format!("bytes {}-{}/{}", offset, end - 1, total);
            if let Err(e) = self.put_chunk(&url, &range, chunk).await {
                err = Some(e);
                break;
            }
            offset = end;
        }
        drop(rx);
        let _ = reader.await;
        if let Some(e) = err {
            return Err(e);
        }
        if offset != total {
            return Err(GraphError::Io(format!(
                "the attachment {} decoded to {offset} bytes, not {total}",
                e.name
            )));
        }
        Ok(())
    }

    /// One upload `PUT` (no Authorization header: the upload URL is pre-authenticated).
    async fn put_chunk(
        &mut self,
        url: &reqwest::Url,
        range: &str,
        data: Vec<u8>,
    ) -> Result<(), GraphError> {
        let req = self
            .http
            .put(url.clone())
            .header(reqwest::header::CONTENT_RANGE, range)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data);
        self.exchange(
            req,
            &format!("PUT upload session {range}"),
            &format!("graph> PUT <upload URL> Content-Range: {range}"),
            false,
        )
        .await
        .map(|_| ())
    }

    /// DELETE the draft; the status, or None when there was no answer.
    async fn delete_draft(&mut self, token: &str, id: &str) -> Option<u16> {
        match self
            .request(
                token,
                reqwest::Method::DELETE,
                self.url(&["messages", id]),
                "DELETE draft",
                Payload::None,
                false,
            )
            .await
        {
            Ok((s, _)) => Some(s),
            Err(GraphError::Status { status, .. }) => Some(status),
            Err(_) => None,
        }
    }

    /// One Graph request with the bearer token (see [`Client::exchange`]). `last`: the
    /// request that sends (a 504 or a lost answer may mean it was carried out).
    async fn request(
        &mut self,
        token: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        what: &str,
        payload: Payload,
        last: bool,
    ) -> Result<(u16, Vec<u8>), GraphError> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json");
        let described = match payload {
            Payload::None => {
                req = req.header(reqwest::header::CONTENT_LENGTH, "0");
                String::new()
            }
            Payload::Text(b) => {
                let n = b.len();
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(b);
                format!(" (text/plain, {n} bytes of base64 MIME)")
            }
            Payload::Json(v) => {
                let b = serde_json::to_vec(&v).unwrap_or_default();
                let n = b.len();
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b);
                format!(" (application/json, {n} bytes)")
            }
        };
        let line = format!(
            "graph> {method} {}{described} Authorization: Bearer <redacted>",
            url.path()
        );
        self.exchange(req, what, &line, last).await
    }

    /// Send `req` (logged as `line`) and read the answer; after a 429/503 whose Retry-After
    /// is at most [`MAX_RETRY_AFTER`], wait and send it again, up to [`THROTTLE_RETRIES`]
    /// times. Every attempt sends the same body: it is shared, never copied, so an upload
    /// chunk is in memory once however often it is retried. `what` names the request in
    /// errors; `last`: the request that sends (a 504 or a lost answer may mean it was
    /// carried out). The status and body of a 2xx answer.
    async fn exchange(
        &mut self,
        req: reqwest::RequestBuilder,
        what: &str,
        line: &str,
        last: bool,
    ) -> Result<(u16, Vec<u8>), GraphError> {
        let req = req
            .build()
            .map_err(|e| GraphError::Setup(format!("{what}: {}", crate::http::error_chain(e))))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.requests += 1;
            // A body of bytes always clones (a reference count, not a copy).
            let this = req.try_clone().ok_or_else(|| {
                GraphError::Setup(format!("{what}: the request body cannot be sent again"))
            })?;
            self.log(line);
            let resp = match self.http.execute(this).await {
                Ok(r) => r,
                Err(e) => {
                    // A request whose body went out and whose answer did not come back may
                    // have been carried out.
                    let maybe_sent = last && !e.is_connect();
                    let what_failed = crate::http::error_chain(e);
                    self.log(&format!("graph< no answer: {what_failed}"));
                    return Err(GraphError::Transport {
                        what: what_failed,
                        request: what.to_owned(),
                        maybe_sent,
                    });
                }
            };
            let status = resp.status().as_u16();
            let retry_after = retry_after(resp.headers());
            let limit = if (200..300).contains(&status) {
                MAX_ANSWER
            } else {
                MAX_ERROR_ANSWER
            };
            let body = crate::http::read_body(resp, limit)
                .await
                .unwrap_or_default();
            // Only an error answer is read for Graph's error code: a 2xx one may be a draft
            // of megabytes.
            let ok = (200..300).contains(&status);
            let parsed = if ok { None } else { error_body(&body) };
            self.log(&format!(
                "graph< {status}{}",
                parsed
                    .as_ref()
                    .map(|(code, message)| format!(" {code}: {message}"))
                    .unwrap_or_default()
            ));
            if ok {
                return Ok((status, body));
            }
            let e = error_of(status, parsed, retry_after, what, last && status == 504);
            match throttle_wait(&e, attempt) {
                Some(wait) => {
                    self.log(&format!(
                        "graph: HTTP {status}; waiting {} s as Retry-After asks",
                        wait.as_secs()
                    ));
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e),
            }
        }
    }
}

/// The error as "not sent" (after the duplicate check found the draft unsent).
fn not_sent(e: GraphError) -> GraphError {
    match e {
        GraphError::Status {
            status,
            code,
            message,
            retry_after,
            request,
            ..
        } => GraphError::Status {
            status,
            code,
            message,
            retry_after,
            request,
            maybe_sent: false,
        },
        GraphError::Transport { what, request, .. } => GraphError::Transport {
            what,
            request,
            maybe_sent: false,
        },
        other => other,
    }
}

/// How long to wait before retrying a throttled request, if it is to be retried here.
fn throttle_wait(e: &GraphError, attempt: u32) -> Option<Duration> {
    match e {
        GraphError::Status {
            status: 429 | 503,
            retry_after: Some(wait),
            ..
        } if *wait <= MAX_RETRY_AFTER && attempt <= THROTTLE_RETRIES => Some(*wait),
        _ => None,
    }
}

/// `Retry-After` in seconds (an HTTP date is not used by Graph).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Graph's error code and message, made safe to show: the code is an identifier (letters,
/// digits, `_.-`; at most 100), the message one line of at most 400 characters with unsafe
/// characters escaped. An answer may come from a proxy or a wrong host, not Graph.
fn error_body(body: &[u8]) -> Option<(String, String)> {
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    let code: String = e
        .error
        .code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c))
        .take(100)
        .collect();
    // Graph's messages may hold line breaks: spaces, one line.
    let flat: String = e
        .error
        .message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let message = crate::printable::excerpt(&flat, 400);
    (!code.is_empty()).then_some((code, message))
}

/// The error of a non-2xx answer; `parsed`: Graph's code and message from its body
/// ([`error_body`]), if it had them.
fn error_of(
    status: u16,
    parsed: Option<(String, String)>,
    retry_after: Option<Duration>,
    request: &str,
    maybe_sent: bool,
) -> GraphError {
    let (code, message) = parsed.unwrap_or_else(|| {
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error");
        (reason.replace(' ', ""), format!("HTTP {status} {reason}"))
    });
    // One line, bounded (error_body made sure): it becomes a reply text.
    GraphError::Status {
        status,
        code,
        message,
        retry_after,
        request: request.to_owned(),
        maybe_sent,
    }
}

/// Append the file's bytes after `from` to `out`.
fn append_body(path: &Path, from: u64, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(from))?;
    f.read_to_end(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_errors_are_parsed_and_bounded() {
        let body = br#"{"error":{"code":"ErrorSendAsDenied","message":"The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.\r\nCannot submit message."}}"#;
        let e = error_of(403, error_body(body), None, "POST sendMail", false);
        match &e {
            GraphError::Status { code, message, .. } => {
                assert_eq!(code, "ErrorSendAsDenied");
                assert!(!message.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.is_transient());
        let e = error_of(
            504,
            error_body(b"<html>gateway</html>"),
            None,
            "POST send",
            true,
        );
        assert!(e.is_transient() && e.maybe_sent());
        let e = error_of(
            429,
            error_body(b"{}"),
            Some(Duration::from_secs(2)),
            "POST sendMail",
            false,
        );
        assert_eq!(throttle_wait(&e, 1), Some(Duration::from_secs(2)));
        assert_eq!(throttle_wait(&e, THROTTLE_RETRIES + 1), None);
        let long = error_of(
            429,
            error_body(b"{}"),
            Some(Duration::from_secs(3600)),
            "x",
            false,
        );
        assert_eq!(throttle_wait(&long, 1), None);
    }
}
