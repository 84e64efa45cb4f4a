//! One SMTP client connection: connect, greeting, EHLO, STARTTLS, EHLO, AUTH, then any number
//! of messages (the transactions are in `transaction.rs`), then `quit`; and the wire helpers
//! they share: one write per flight (reading the server's replies meanwhile, so a large
//! pipelined flight never deadlocks), reply parsing with secrets redacted.
//!
//! The session never decides whether to retry or what to tell the user: it reports each
//! reply (per recipient) and each failure with the step it happened in. `deliver` and the
//! queue runner decide.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use super::caps::Capabilities;
use super::reply::{Reply, ReplyParser};
use super::transcript::Sink;
use crate::auth::Credentials;
use crate::route::TlsPolicy;
use crate::starttls::Upgradable;
pub use crate::status::{MessageResult, Step};

/// Longest reply line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Replies buffered while a flight is being written; beyond this the write waits (a server
/// that sends this much unasked is hostile, and the command timeout ends it).
const MAX_UNREAD: usize = 4 * 1024 * 1024;

/// How to open one connection.
#[derive(Clone)]
pub struct SessionConfig {
    /// Host name (or IP literal) to connect to; the certificate must match it.
    pub host: String,
    pub port: u16,
    /// Addresses of `host` already resolved (by the route, through the DNS server that gave
    /// the MX record), tried in order. Empty: `host` is resolved by the system resolver.
    pub addrs: Vec<std::net::IpAddr>,
    /// EHLO name (see `hello_name`).
    pub helo: String,
    pub tls: TlsPolicy,
    /// From `tls::client_config`; build it once and share it between connections.
    pub tls_config: Arc<ClientConfig>,
    pub connect_timeout: Duration,
    /// Timeout for every reply except the one after the message data.
    pub command_timeout: Duration,
    /// Timeout for the reply after the end of the message data.
    pub data_end_timeout: Duration,
    /// Use BDAT when the server offers CHUNKING.
    pub chunking: bool,
    /// Where the `-v` transcript goes (None: nowhere).
    pub transcript: Option<Sink>,
}

impl fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("helo", &self.helo)
            .field("tls", &self.tls)
            .field("chunking", &self.chunking)
            .finish_non_exhaustive()
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server's certificate is not valid for the host (name, issuer, dates).
    Certificate,
    /// No common protocol version or cipher (a server with only TLS 1.0/1.1, also when it
    /// hangs up on our hello instead of answering), or the server refused our (missing)
    /// client certificate: a configuration mismatch, not worth retrying.
    Protocol,
    /// The connection broke during the handshake in another way (a timeout, an I/O error):
    /// transient.
    Io,
}

/// A failure of the session. Refusals of individual recipients are not errors (see
/// `MessageResult`); a refusal that stops the whole session is `Rejected`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("no reply within {secs} s ({step})")]
    Timeout { step: Step, secs: u64 },
    #[error("the server closed the connection ({step})")]
    Closed { step: Step },
    #[error("connection error ({step}): {reason}")]
    Io { step: Step, reason: String },
    #[error("the server refused {step} ({reply})")]
    Rejected { step: Step, reply: Reply },
    #[error("malformed reply from the server ({step}): {detail}")]
    Protocol { step: Step, detail: String },
    #[error(
        "the server does not offer STARTTLS and this mode requires TLS: stopped before sending anything else (no AUTH, no MAIL)"
    )]
    StartTlsNotOffered,
    #[error("TLS with {host} failed: {reason}; nothing else was sent")]
    Tls {
        host: String,
        reason: String,
        kind: TlsFailure,
    },
    #[error("the server does not offer AUTH {wanted} (it offers: {})", if offered.is_empty() { "no AUTH at all".to_owned() } else { offered.join(" ") })]
    AuthNotOffered {
        wanted: &'static str,
        offered: Vec<String>,
    },
    #[error("refusing to send credentials over a connection without TLS")]
    AuthWithoutTls,
    #[error(
        "the message needs SMTPUTF8 (non-ASCII addresses or headers) but the server does not offer it"
    )]
    Smtputf8NotOffered,
    #[error("the message is {size} bytes; the server accepts at most {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read the message body: {0}")]
    Body(String),
}

impl SessionError {
    /// Worth trying again later (or on another host): connection trouble and 4xx replies.
    pub fn is_transient(&self) -> bool {
        match self {
            SessionError::Connect { .. }
            | SessionError::Timeout { .. }
            | SessionError::Closed { .. }
            | SessionError::Io { .. }
            | SessionError::Protocol { .. } => true,
            SessionError::Tls { kind, .. } => *kind == TlsFailure::Io,
            SessionError::Rejected { reply, .. } => reply.is_transient(),
            _ => false,
        }
    }
    /// The server reply this error is about, if any.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SessionError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }
    /// The step it happened in, when known.
    pub fn step(&self) -> Option<Step> {
        match self {
            SessionError::Resolve { .. } | SessionError::Connect { .. } => Some(Step::Connect),
            SessionError::Timeout { step, .. }
            | SessionError::Closed { step }
            | SessionError::Io { step, .. }
            | SessionError::Rejected { step, .. }
            | SessionError::Protocol { step, .. } => Some(*step),
            SessionError::StartTlsNotOffered => Some(Step::StartTls),
            SessionError::Tls { .. } => Some(Step::TlsHandshake),
            SessionError::AuthNotOffered { .. } | SessionError::AuthWithoutTls => Some(Step::Auth),
            SessionError::Smtputf8NotOffered | SessionError::TooLarge { .. } => Some(Step::Mail),
            SessionError::Body(_) => Some(Step::Data),
        }
    }
}

/// The connection to the server: plain, then TLS after STARTTLS.
type Stream = Upgradable<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// One line to send, with what the transcript shows instead when it carries a secret.
pub(super) struct Line {
    text: String,
    shown: Option<String>,
}

impl Line {
    pub(super) fn plain(text: impl Into<String>) -> Line {
        Line {
            text: text.into(),
            shown: None,
        }
    }
    fn secret(text: String, shown: impl Into<String>) -> Line {
        Line {
            text,
            shown: Some(shown.into()),
        }
    }
}

/// An open SMTP session, after EHLO (and STARTTLS + EHLO when used).
pub struct Session {
    pub(super) cfg: SessionConfig,
    stream: Stream,
    /// Bytes received and not yet parsed as replies (also filled while writing a flight).
    pub(super) rbuf: Vec<u8>,
    /// What we sent that must not come back to the user: AUTH payloads, the token and the
    /// password. A server that echoes them in a reply (in an error text) gets them replaced.
    secrets: Vec<String>,
    pub(super) caps: Capabilities,
    tls: bool,
    greeting: Reply,
    /// A transaction was started and not finished cleanly: RSET before the next message.
    pub(super) dirty: bool,
    /// QUIT was sent, or the connection failed: no more commands.
    pub(super) closed: bool,
    /// Flights written by `start_transaction` whose replies are not read yet.
    pub(super) unread: usize,
    /// A transaction ended in a failure of the connection (not a refusal): the replies of
    /// any flight behind it can no longer be matched to its commands.
    pub(super) broken: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("host", &self.cfg.host)
            .field("tls", &self.tls)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Connect (each resolved address in order, with the connect timeout), read the
    /// greeting, EHLO, and STARTTLS + EHLO when offered (and required or opportunistic).
    /// With `TlsPolicy::Required`, a missing STARTTLS or a failed handshake ends here,
    /// before anything else is sent; with `Opportunistic`, a refused STARTTLS goes on in
    /// clear text. A server that does not know EHLO gets HELO (no extensions, so no TLS).
    pub async fn connect(cfg: SessionConfig) -> Result<Session, SessionError> {
        let host = cfg.host.clone();
        let lookup = if cfg.addrs.is_empty() {
            timeout(
                cfg.connect_timeout,
                tokio::net::lookup_host((host.clone(), cfg.port)),
            )
            .await
            .map(|r| r.map(|a| a.collect::<Vec<_>>()))
        } else {
            // Resolved already: the name stays for SNI, the certificate and the transcript.
            Ok(Ok(cfg
                .addrs
                .iter()
                .map(|ip| std::net::SocketAddr::new(*ip, cfg.port))
                .collect()))
        };
        let addrs: Vec<_> = match lookup {
            Err(_) => {
                return Err(SessionError::Resolve {
                    host,
                    reason: "DNS lookup timed out".into(),
                });
            }
            Ok(Err(e)) => {
                return Err(SessionError::Resolve {
                    host,
                    reason: e.to_string(),
                });
            }
            Ok(Ok(a)) => a,
        };
        if addrs.is_empty() {
            return Err(SessionError::Resolve {
                host,
                reason: "no addresses".into(),
            });
        }
        let mut errors = Vec::new();
        let mut tcp = None;
        let shown = format!("{host}:{}", cfg.port);
        // Each address is named when the host had several, or is a name: not "cannot connect
        // to 127.0.0.1:25: 127.0.0.1:25: Connection refused".
        let name_each =
            addrs.len() > 1 || addrs.first().map(|a| a.to_string()) != Some(shown.clone());
        for addr in &addrs {
            let at = if name_each {
                format!("{addr}: ")
            } else {
                String::new()
            };
            match timeout(cfg.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => errors.push(format!("{at}{e}")),
                Err(_) => errors.push(format!(
                    "{at}timed out after {} s",
                    cfg.connect_timeout.as_secs_f32()
                )),
            }
        }
        let Some(tcp) = tcp else {
            return Err(SessionError::Connect {
                host: shown,
                reason: errors.join("; "),
            });
        };
        let _ = tcp.set_nodelay(true);
        if let Some(t) = &cfg.transcript {
            t.line(&format!(
                "-- connected to {host}:{} ({})",
                cfg.port,
                tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default()
            ));
        }
        let mut s = Session {
            cfg,
            stream: Stream::Plain(tcp),
            rbuf: Vec::with_capacity(4096),
            secrets: Vec::new(),
            caps: Capabilities::default(),
            tls: false,
            greeting: Reply::new(220, Vec::new()),
            dirty: false,
            closed: false,
            unread: 0,
            broken: false,
        };
        let greeting = s.read_reply(Step::Greeting, s.cfg.command_timeout).await?;
        s.greeting = expect(Step::Greeting, greeting, |c| c == 220)?;
        s.ehlo().await?;
        if s.caps.starttls {
            match s.starttls().await {
                Ok(()) => s.ehlo().await?,
                // RFC 3207 §4: after a refused STARTTLS the client may go on without TLS.
                // Where TLS is only opportunistic (direct send), a server that cannot do it
                // now must not hold the message back.
                Err(SessionError::Rejected { reply, .. })
                    if s.cfg.tls == TlsPolicy::Opportunistic =>
                {
                    if let Some(t) = &s.cfg.transcript {
                        t.line(&format!(
                            "-- STARTTLS refused ({reply}); going on without TLS (TLS is optional in this mode)"
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        } else if s.cfg.tls == TlsPolicy::Required {
            s.quit_quietly().await;
            return Err(SessionError::StartTlsNotOffered);
        }
        Ok(s)
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    pub fn host(&self) -> &str {
        &self.cfg.host
    }
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    pub fn greeting(&self) -> &Reply {
        &self.greeting
    }
    /// False once QUIT was sent or the connection failed: the session takes no more messages.
    pub fn is_open(&self) -> bool {
        !self.closed
    }

    async fn ehlo(&mut self) -> Result<(), SessionError> {
        let r = self
            .command(Line::plain(format!("EHLO {}", self.cfg.helo)), Step::Ehlo)
            .await?;
        if matches!(r.code, 500 | 502) && !self.tls {
            // RFC 5321 §3.2: a server without the extensions (an old relay given with
            // --server) does not know EHLO; HELO starts a plain session without any.
            if let Some(t) = &self.cfg.transcript {
                t.line("-- EHLO not recognised; trying HELO");
            }
            let h = self
                .command(Line::plain(format!("HELO {}", self.cfg.helo)), Step::Ehlo)
                .await?;
            expect(Step::Ehlo, h, |c| c == 250)?;
            self.caps = Capabilities::default();
            return Ok(());
        }
        let r = expect(Step::Ehlo, r, |c| c == 250)?;
        self.caps = Capabilities::from_ehlo(&r);
        Ok(())
    }

    async fn starttls(&mut self) -> Result<(), SessionError> {
        let r = self
            .command(Line::plain("STARTTLS"), Step::StartTls)
            .await?;
        expect(Step::StartTls, r, |c| c == 220)?;
        if !self.rbuf.is_empty() {
            // Anything after the 220 was sent in plain text before TLS: an injection attempt.
            return Err(SessionError::Protocol {
                step: Step::StartTls,
                detail: "data received after the STARTTLS reply before TLS started".into(),
            });
        }
        let host = self.cfg.host.clone();
        let name = ServerName::try_from(host.clone()).map_err(|e| SessionError::Tls {
            host: host.clone(),
            reason: format!("invalid host name for TLS: {e}"),
            kind: TlsFailure::Protocol,
        })?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(SessionError::Protocol {
                step: Step::StartTls,
                detail: "STARTTLS on a TLS connection".into(),
            });
        };
        let connector = tokio_rustls::TlsConnector::from(self.cfg.tls_config.clone());
        let tls = match timeout(self.cfg.command_timeout, connector.connect(name, tcp)).await {
            Err(_) => {
                return Err(SessionError::Timeout {
                    step: Step::TlsHandshake,
                    secs: self.cfg.command_timeout.as_secs(),
                });
            }
            Ok(Err(e)) => {
                let (kind, reason) = classify_tls_error(&e);
                if let Some(t) = &self.cfg.transcript {
                    t.line(&format!("-- TLS handshake failed: {reason}"));
                }
                return Err(SessionError::Tls { host, reason, kind });
            }
            Ok(Ok(t)) => t,
        };
        if let Some(t) = &self.cfg.transcript {
            let (_, conn) = tls.get_ref();
            t.line(&format!(
                "-- TLS established: {}, {}",
                conn.protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default(),
                conn.negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default()
            ));
        }
        self.stream = Stream::Tls(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    /// Authenticate. XOAUTH2 for a token; PLAIN (preferred) or LOGIN for a password.
    /// Returns the final reply (235) or `Rejected { step: Auth, .. }`. Credentials are never
    /// sent without TLS.
    pub async fn authenticate(
        &mut self,
        creds: &Credentials,
    ) -> Result<Option<Reply>, SessionError> {
        let offered = || self.caps.auth.clone();
        let reply = match creds {
            Credentials::None => return Ok(None),
            _ if !self.tls => return Err(SessionError::AuthWithoutTls),
            Credentials::XOAuth2 { user, token, .. } => {
                self.secrets.push(token.expose().to_owned());
                if !self.caps.has_auth("XOAUTH2") {
                    return Err(SessionError::AuthNotOffered {
                        wanted: "XOAUTH2",
                        offered: offered(),
                    });
                }
                let sasl = format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose());
                let line = Line::secret(
                    format!("AUTH XOAUTH2 {}", B64.encode(sasl.as_bytes())),
                    "AUTH XOAUTH2 <redacted>",
                );
                let r = self.command(line, Step::Auth).await?;
                if r.code == 334 {
                    // The challenge carries the error as base64 JSON; an empty line ends the
                    // exchange and the server sends the final reply.
                    self.command(Line::plain(""), Step::Auth).await?
                } else {
                    r
                }
            }
            Credentials::Password { user, password } => {
                self.secrets.push(password.expose().to_owned());
                if self.caps.has_auth("PLAIN") {
                    let sasl = format!("\0{user}\0{}", password.expose());
                    let line = Line::secret(
                        format!("AUTH PLAIN {}", B64.encode(sasl.as_bytes())),
                        "AUTH PLAIN <redacted>",
                    );
                    self.command(line, Step::Auth).await?
                } else if self.caps.has_auth("LOGIN") {
                    let r = self.command(Line::plain("AUTH LOGIN"), Step::Auth).await?;
                    if r.code != 334 {
                        r
                    } else {
                        let r = self
                            .command(
                                Line::secret(B64.encode(user.as_bytes()), "<redacted>"),
                                Step::Auth,
                            )
                            .await?;
                        if r.code != 334 {
                            r
                        } else {
                            self.command(
                                Line::secret(
                                    B64.encode(password.expose().as_bytes()),
                                    "<redacted>",
                                ),
                                Step::Auth,
                            )
                            .await?
                        }
                    }
                } else {
                    return Err(SessionError::AuthNotOffered {
                        wanted: "PLAIN or LOGIN",
                        offered: offered(),
                    });
                }
            }
        };
        expect(Step::Auth, reply, |c| c == 235).map(Some)
    }

    /// RSET: abandon the current transaction (the session stays usable).
    pub async fn rset(&mut self) -> Result<Reply, SessionError> {
        let r = self.command(Line::plain("RSET"), Step::Rset).await?;
        let r = expect(Step::Rset, r, |c| c == 250)?;
        self.dirty = false;
        Ok(r)
    }

    /// QUIT and close. Errors are reported but harmless: the messages are already decided.
    /// The reply is awaited at most 5 seconds (a server that hangs here must not hold up a
    /// cron job once the message is delivered). Nothing is sent when the session is already
    /// closed (QUIT went with the last message).
    pub async fn quit(mut self) -> Result<(), SessionError> {
        if self.closed {
            self.shutdown().await;
            return Ok(());
        }
        self.closed = true;
        let r = match self.send(&[Line::plain("QUIT")], Step::Quit).await {
            Ok(()) => self.read_reply(Step::Quit, self.quit_timeout()).await,
            Err(e) => Err(e),
        };
        self.shutdown().await;
        r.map(|_| ())
    }

    pub(super) async fn quit_quietly(&mut self) {
        self.closed = true;
        if self.send(&[Line::plain("QUIT")], Step::Quit).await.is_ok() {
            let _ = self.read_reply(Step::Quit, self.quit_timeout()).await;
        }
    }

    /// How long the reply to QUIT is awaited.
    pub(super) fn quit_timeout(&self) -> Duration {
        self.cfg.command_timeout.min(Duration::from_secs(5))
    }

    /// Close our side of the connection (TLS close_notify, then FIN); at most 5 seconds.
    pub(super) async fn shutdown(&mut self) {
        self.closed = true;
        let _ = timeout(Duration::from_secs(5), self.stream.shutdown()).await;
    }

    // ---- wire helpers -------------------------------------------------------------------

    pub(super) async fn command(&mut self, line: Line, step: Step) -> Result<Reply, SessionError> {
        self.send(std::slice::from_ref(&line), step).await?;
        self.read_reply(step, self.cfg.command_timeout).await
    }

    /// Write the lines in one write (one flight) and log them.
    pub(super) async fn send(&mut self, lines: &[Line], step: Step) -> Result<(), SessionError> {
        let mut buf = Vec::new();
        self.encode(lines, &mut buf);
        self.write_raw(&buf, step).await
    }

    /// Append the lines to `buf` (each with CRLF) and log them in the transcript.
    pub(super) fn encode(&mut self, lines: &[Line], buf: &mut Vec<u8>) {
        for l in lines {
            if let Some(t) = &self.cfg.transcript {
                t.line(&format!("C: {}", l.shown.as_deref().unwrap_or(&l.text)));
            }
            if l.shown.is_some()
                && let Some(payload) = l.text.rsplit(' ').next()
            {
                self.secrets.push(payload.to_owned());
            }
            buf.extend_from_slice(l.text.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
    }

    /// Write all of `bytes`, reading whatever the server sends meanwhile into `rbuf`. A
    /// pipelined flight can be large (thousands of RCPTs, a body): a server that answers
    /// each command as it reads it must never block on us while we block on it (RFC 2920
    /// §3.1 deadlock), and replies that arrive before the server closes the connection are
    /// kept for `read_reply` even when the write then fails.
    pub(super) async fn write_raw(&mut self, bytes: &[u8], step: Step) -> Result<(), SessionError> {
        let t = self.cfg.command_timeout;
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        let mut written = 0;
        let mut reading = true;
        let fut = std::future::poll_fn(|cx| {
            loop {
                if reading && rbuf.len() < MAX_UNREAD {
                    let mut chunk = [0u8; 4096];
                    let mut rb = ReadBuf::new(&mut chunk);
                    match Pin::new(&mut *stream).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                            rbuf.extend_from_slice(rb.filled());
                            continue;
                        }
                        // End of stream or an error: the write below reports it.
                        Poll::Ready(_) => reading = false,
                        Poll::Pending => {}
                    }
                }
                if written == bytes.len() {
                    return Pin::new(&mut *stream).poll_flush(cx);
                }
                match Pin::new(&mut *stream).poll_write(cx, &bytes[written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero)));
                    }
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        match timeout(t, fut).await {
            Err(_) => Err(SessionError::Timeout {
                step,
                secs: t.as_secs(),
            }),
            Ok(Err(e)) => Err(self.io_error(step, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    pub(super) async fn read_reply(
        &mut self,
        step: Step,
        wait: Duration,
    ) -> Result<Reply, SessionError> {
        let deadline = Instant::now() + wait;
        let mut parser = ReplyParser::default();
        loop {
            let mut line = self.read_line(step, deadline, wait).await?;
            // Only the text after "NNN-" / "NNN ": whatever the secret, the code stays.
            if line.len() > 4 && line.is_char_boundary(4) {
                let mut text = line.split_off(4);
                for secret in self.secrets.iter().filter(|s| s.len() >= 4) {
                    if text.contains(secret.as_str()) {
                        text = text.replace(secret.as_str(), "<redacted>");
                    }
                }
                line.push_str(&text);
            }
            if let Some(t) = &self.cfg.transcript {
                t.line(&format!("S: {line}"));
            }
            match parser.line(&line) {
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => {
                    return Err(SessionError::Protocol {
                        step,
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    async fn read_line(
        &mut self,
        step: Step,
        deadline: Instant,
        wait: Duration,
    ) -> Result<String, SessionError> {
        loop {
            if let Some(pos) = self.rbuf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.rbuf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                // The text reaches the user's terminal, logs and bounces: no control
                // characters (escape sequences, CR, NUL) from the server get through.
                return Ok(String::from_utf8_lossy(&line)
                    .chars()
                    .map(|c| {
                        if c.is_control() && c != '\t' {
                            '\u{FFFD}'
                        } else {
                            c
                        }
                    })
                    .collect());
            }
            if self.rbuf.len() > MAX_LINE {
                return Err(SessionError::Protocol {
                    step,
                    detail: "reply line too long".into(),
                });
            }
            let mut chunk = [0u8; 4096];
            let n = match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => {
                    return Err(SessionError::Timeout {
                        step,
                        secs: wait.as_secs(),
                    });
                }
                Ok(Err(e)) => return Err(self.io_error(step, e)),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                return Err(SessionError::Closed { step });
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// What a TLS connection negotiated (for `doctor`).
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The protocol version as rustls names it, e.g. "TLSv1_3".
    pub version: String,
    /// The cipher suite as rustls names it, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The server's certificate chain, leaf first (DER).
    pub peer_certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl TlsInfo {
    /// What a rustls client connection negotiated.
    pub fn of(conn: &rustls::ClientConnection) -> TlsInfo {
        TlsInfo {
            version: conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher: conn
                .negotiated_cipher_suite()
                .map(|c| format!("{:?}", c.suite()))
                .unwrap_or_default(),
            peer_certificates: conn
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        }
    }
}

/// The replies to a probe that sends no message (see [`Session::probe`]).
#[derive(Debug, Clone)]
pub struct ProbeReplies {
    pub mail: Reply,
    /// None when no recipient was given or the sender was refused.
    pub rcpt: Option<Reply>,
    /// The reply to the closing RSET; None when it could not be sent (the server hung up).
    pub rset: Option<Reply>,
}

/// Accessors and the no-message probe, for `doctor`.
impl Session {
    /// The negotiated TLS version, cipher suite and server certificates (None without TLS).
    pub fn tls_info(&self) -> Option<TlsInfo> {
        let Stream::Tls(s) = &self.stream else {
            return None;
        };
        Some(TlsInfo::of(s.get_ref().1))
    }

    /// Ask the server about a sender, and a recipient, without sending a message: `MAIL
    /// FROM:<sender>`, then `RCPT TO:<rcpt>` when one is given and the sender was accepted,
    /// then RSET. Never DATA or BDAT; one command per write. `Err` means the session failed.
    pub async fn probe(
        &mut self,
        sender: &str,
        rcpt: Option<&str>,
    ) -> Result<ProbeReplies, SessionError> {
        if self.dirty {
            self.rset().await?;
        }
        self.dirty = true;
        let mail = self
            .command(Line::plain(format!("MAIL FROM:<{sender}>")), Step::Mail)
            .await
            .and_then(|r| final_reply(Step::Mail, r))?;
        let rcpt = match rcpt {
            Some(r) if mail.is_positive() => Some(
                self.command(Line::plain(format!("RCPT TO:<{r}>")), Step::Rcpt)
                    .await
                    .and_then(|r| final_reply(Step::Rcpt, r))?,
            ),
            _ => None,
        };
        // A server may hang up after a refusal: the refusal is the news, not the lost RSET.
        let rset = self.rset().await.ok();
        Ok(ProbeReplies { mail, rcpt, rset })
    }
}

impl Session {
    /// A read/write error. After TLS 1.3 the server's verdict on our client certificate
    /// arrives as an alert on the first read: report it as a TLS failure, not a broken
    /// connection.
    fn io_error(&self, step: Step, e: io::Error) -> SessionError {
        if self.tls
            && let Some(inner) = e.get_ref()
            && inner.downcast_ref::<rustls::Error>().is_some()
        {
            let (kind, reason) = classify_tls_error(&e);
            return SessionError::Tls {
                host: self.cfg.host.clone(),
                reason,
                kind,
            };
        }
        io_error(step, e)
    }
}

/// A positive reply that is not the one the step expects (250 to DATA, a greeting of 250, 334
/// after the last AUTH line): the server and we are out of step. Never a success.
pub(super) fn out_of_step(step: Step, reply: &Reply) -> SessionError {
    SessionError::Protocol {
        step,
        detail: format!(
            "unexpected reply \"{reply}\" (the server is out of step with the dialogue)"
        ),
    }
}

/// `reply` when `ok(code)`; a refusal as `Rejected`; any other positive reply `out_of_step`.
pub(super) fn expect(
    step: Step,
    reply: Reply,
    ok: impl Fn(u16) -> bool,
) -> Result<Reply, SessionError> {
    if ok(reply.code) {
        Ok(reply)
    } else if reply.is_positive() {
        Err(out_of_step(step, &reply))
    } else {
        Err(SessionError::Rejected { step, reply })
    }
}

/// A reply that ends a command (MAIL, RCPT, end of data): an intermediate 3xx is out of step
/// (it would otherwise count as acceptance).
pub(super) fn final_reply(step: Step, reply: Reply) -> Result<Reply, SessionError> {
    if (300..400).contains(&reply.code) {
        Err(out_of_step(step, &reply))
    } else {
        Ok(reply)
    }
}

fn io_error(step: Step, e: io::Error) -> SessionError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => SessionError::Closed { step },
        _ => SessionError::Io {
            step,
            reason: e.to_string(),
        },
    }
}

fn classify_tls_error(e: &io::Error) -> (TlsFailure, String) {
    if let Some(inner) = e.get_ref()
        && let Some(err) = inner.downcast_ref::<rustls::Error>()
    {
        let kind = match err {
            rustls::Error::InvalidCertificate(_) => TlsFailure::Certificate,
            _ => TlsFailure::Protocol,
        };
        let reason = match err {
            rustls::Error::InvalidCertificate(c) => {
                format!("the server's certificate was not accepted ({c:?})")
            }
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                "the server requires a TLS client certificate (set tls.client_cert and tls.client_key)"
                    .to_owned()
            }
            rustls::Error::AlertReceived(
                a @ (rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA
                | rustls::AlertDescription::CertificateUnknown),
            ) => format!("the server did not accept our client certificate ({a:?})"),
            rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion) => {
                format!(
                    "no TLS version in common with the server: it offers no TLS 1.2 or later, \
                     most likely {TLS_TOO_OLD} (with tls.min_version = \"1.3\", a server \
                     offering at most TLS 1.2 fails the same way)"
                )
            }
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13,
            ) => format!("the server offers {TLS_TOO_OLD}"),
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig,
            ) => "the server offers TLS 1.2 at most, and tls.min_version is \"1.3\"".to_owned(),
            rustls::Error::AlertReceived(a) => format!("the server ended the handshake ({a:?})"),
            other => other.to_string(),
        };
        return (kind, reason);
    }
    // The server hung up on our hello (TLS 1.2/1.3) without a word, after a whole SMTP
    // dialogue on the same connection: what a server without TLS 1.2 does, not a network
    // hiccup. Trying again would meet the same server: permanent.
    if matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
    ) {
        return (
            TlsFailure::Protocol,
            format!(
                "the server closed the connection when our TLS 1.2/1.3 hello arrived, \
                 without answering: most likely it offers {TLS_TOO_OLD}"
            ),
        );
    }
    (TlsFailure::Io, e.to_string())
}

/// The cause of a handshake refused for its TLS version, said the same way everywhere.
const TLS_TOO_OLD: &str = "only TLS 1.0 or 1.1, while m365send requires TLS 1.2 or later, as \
    Microsoft 365 does (it refuses older TLS with 421 4.7.66): the server (or a proxy in front of \
    it) must be upgraded";

/// The EHLO name: `configured` when set, else this host's name when it is a fully qualified
/// domain name, else the domain of `sender`, else "localhost.localdomain".
pub fn hello_name(configured: Option<&str>, sender: &str) -> String {
    if let Some(h) = configured.filter(|h| !h.is_empty()) {
        return h.to_owned();
    }
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    if host.contains('.') && is_domain(&host) {
        return host.trim_end_matches('.').to_owned();
    }
    if let Some((_, d)) = sender.rsplit_once('@')
        && d.contains('.')
        && is_domain(d)
    {
        return d.to_owned();
    }
    "localhost.localdomain".to_owned()
}

fn is_domain(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// True for Microsoft's SMTP host names (where basic authentication is being retired).
pub fn is_microsoft_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    [
        "office365.com",
        "outlook.com",
        "office365.us",
        "outlook.cn",
        "mx.microsoft",
        "azurecomm.net",
    ]
    .iter()
    .any(|d| h == *d || h.ends_with(&format!(".{d}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_hosts() {
        assert!(is_microsoft_host("smtp.office365.com"));
        assert!(is_microsoft_host("contoso-com.mail.protection.outlook.com"));
        assert!(is_microsoft_host("contoso-com.b-v1.mx.microsoft"));
        assert!(is_microsoft_host("smtp.azurecomm.net"));
        assert!(!is_microsoft_host("notoffice365.com"));
        assert!(!is_microsoft_host("127.0.0.1"));
    }

    #[test]
    fn hello_names() {
        assert_eq!(
            hello_name(Some("mx.example.org"), "a@b.c"),
            "mx.example.org"
        );
        let h = hello_name(None, "root@contoso.com");
        assert!(is_domain(&h), "{h}");
        assert!(is_domain("a-b.example"));
        assert!(!is_domain("a_b.example"));
    }
}
