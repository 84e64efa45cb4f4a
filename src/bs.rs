//! The server side of SMTP, shared by `sendmail -bs` (stdin/stdout) and `m365send serve`
//! (a socket).
//!
//! Owns: the dialogue with a client (symfony/mailer, swaks, a printer...): greeting, EHLO/HELO,
//! MAIL, RCPT, DATA (un-dot-stuffed into a CRLF temporary file), RSET, NOOP, VRFY, HELP, QUIT,
//! and, when the caller enables them, STARTTLS (server side, tokio-rustls) and AUTH PLAIN/LOGIN
//! (the SASL exchange; the caller's [`Hooks`] decide who may log in and send); the limits, and
//! the reply to each command. Each accepted message goes to the caller's hooks (the normal
//! delivery path, or the spool) whose outcome becomes the reply to the end of data. Must not:
//! deliver, parse the message's headers, verify a password itself, or panic on any input.
//!
//! One implementation, two drivers: [`serve_with`] is async over any `AsyncRead + AsyncWrite`
//! stream (the socket of `serve`); [`serve`] drives the same session over a blocking
//! `BufRead`/`Write` pair (-bs on stdin/stdout, tests) by polling it with a no-op waker — the
//! blocking adapters never return `Pending`, and without a timeout, TLS or shutdown signal the
//! session awaits nothing else.
//!
//! Decisions:
//! - EHLO advertises 8BITMIME, PIPELINING, SIZE n, ENHANCEDSTATUSCODES, SMTPUTF8, then
//!   STARTTLS (when a certificate is configured and TLS is not active yet) and `AUTH PLAIN
//!   LOGIN` (when the hooks offer it on this connection), and HELP.
//!   Non-ASCII addresses are accepted only in a transaction whose MAIL carried SMTPUTF8
//!   (else `553 5.6.7`, RFC 6531); the delivery path sees them in the envelope. No CHUNKING,
//!   no DSN: BDAT and the others get `502 5.5.1` (not advertised, so not "temporarily
//!   unavailable" 454); so do STARTTLS and AUTH when not enabled; unknown parameters get
//!   `555 5.5.4`.
//! - AUTH that the hooks would offer only over TLS gets `538 5.7.11` before STARTTLS
//!   (RFC 4954). Bytes pipelined after STARTTLS are discarded (the STARTTLS injection
//!   attack), and the TLS session starts from scratch: no EHLO, no AUTH, no transaction.
//! - MAIL is accepted without a prior EHLO/HELO (as Postfix does by default); `MAIL FROM:addr`
//!   without angle brackets is accepted too. Sequence errors (RCPT before MAIL, DATA before RCPT,
//!   nested MAIL) get `503 5.5.1`; syntax errors `501 5.5.4`; unknown commands `500 5.5.2`.
//! - Command lines longer than `max_command_line` bytes (default 1000, RFC 5321's text line
//!   limit; its 512 for commands is too tight with parameters) get `500 5.5.2 Line too long`.
//! - Data lines of any length are accepted and streamed to the file in pieces (memory stays
//!   bounded): refusing a long line would lose the whole message, and the stdin path does not
//!   refuse them either. Bare LF in data becomes CRLF; bare CR is kept.
//! - Only `<CR><LF>.<CR><LF>` ends the data (as Postfix's `smtpd_forbid_bare_newline`): a "."
//!   line ended by a bare LF, or following a line ended by a bare LF (`<LF>.<LF>`,
//!   `<LF>.<CR><LF>`, `<CR><LF>.<LF>`), is data, kept as a line holding ".". Otherwise text
//!   a web form put into a message could end it early and have the rest run as SMTP commands
//!   (SMTP smuggling: a second MAIL FROM of the attacker's choosing). The DATA command line
//!   counts as ended by CRLF. Commands may still end with a bare LF.
//! - A message over `max_size` (SIZE= in MAIL, or counted while reading) gets
//!   `552 5.3.4`; the data is read to its end so the dialogue stays in step.
//! - More than `max_recipients` RCPTs get `452 4.5.3` each (RFC 5321 §4.5.3.1.10).
//! - After `max_errors` error replies the session ends with `421 4.7.0`.
//! - Replies are flushed one by one: correct with and without client pipelining, since a reply
//!   is never held back waiting for more input.
//! - End of input without QUIT ends the session quietly; a message whose data was cut off is
//!   not handed over. A client silent for longer than `Options::idle_timeout` gets
//!   `421 4.4.2`; when the caller signals shutdown, a client between transactions gets
//!   `421 4.3.2` while one in a transaction may finish it first.

use std::future::Future;
use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};

use crate::exit::{Exit, Failure};
use crate::message::{Body, Envelope};
use crate::secret::Secret;
use crate::starttls::Upgradable;
use crate::status::{EnhancedCode, Reply};

/// Limits for one session.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Our name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Longest command line, CRLF included.
    pub max_command_line: usize,
    /// Largest message in bytes (CRLF, not dot-stuffed); advertised as SIZE.
    pub max_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Error replies before the session is closed with 421.
    pub max_errors: u32,
    /// Directory for the message's temporary file (default: the system's temp directory).
    pub temp_dir: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hostname: "localhost".to_owned(),
            max_command_line: 1000,
            max_size: 35 * 1024 * 1024,
            max_recipients: 500,
            max_errors: 10,
            temp_dir: None,
        }
    }
}

impl Limits {
    /// The defaults, with this host's name and the profile's size limit.
    pub fn for_profile(profile: &crate::config::Profile) -> Limits {
        Limits {
            hostname: local_hostname(),
            max_size: profile.max_size(),
            ..Limits::default()
        }
    }
}

/// This host's name, or "localhost" when it has none.
pub fn local_hostname() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    }
}

/// What the session may do beyond plain SMTP, and when it must stop.
#[derive(Clone)]
pub struct Options {
    /// The greeting after our host name.
    pub banner: String,
    /// STARTTLS with this server configuration (None: not offered).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A client silent for this long gets `421 4.4.2` (None: wait for ever, as -bs does).
    pub idle_timeout: Option<Duration>,
    /// Becomes true when the server stops: a client between transactions gets `421 4.3.2`.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            banner: "ESMTP m365send (sendmail -bs) ready".to_owned(),
            tls: None,
            idle_timeout: None,
            shutdown: None,
        }
    }
}

/// What became of a message handed over at the end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BsOutcome {
    /// Delivered now: `250 2.0.0 Message accepted for delivery`.
    Delivered,
    /// Put in the queue: `250 2.0.0 Message queued for later delivery`.
    Queued,
    /// Durably in the queue under this id: `250 2.0.0 Ok: queued as ID`.
    QueuedAs(String),
    /// Not taken: this reply is given as is (use a 4xx reply when the client may retry).
    Failed(Reply),
}

impl BsOutcome {
    /// A failure from the delivery path as the reply to the end of data: a temporary failure
    /// becomes `451 4.3.0`, anything else `554 5.3.0`; the text is the message's first line.
    pub fn failure(exit: Exit, message: &str) -> BsOutcome {
        let first = message.lines().next().unwrap_or("delivery failed");
        let (code, enh) = if exit == Exit::TempFail {
            (451, EnhancedCode::new(4, 3, 0))
        } else {
            (554, EnhancedCode::new(5, 3, 0))
        };
        BsOutcome::Failed(Reply {
            code,
            enhanced: Some(enh),
            lines: vec![format!("{enh} {first}")],
        })
    }

    /// The reply a client gets for a message the delivery path did not take: the class
    /// follows the exit code (75, and the local system's 71, 73, 74 — a full disk, a spool
    /// that cannot be written — → 451 4.3.0: they pass, and the client keeps the message
    /// meanwhile; 67 → 550 5.1.1, 77 → 550 5.7.1, 65 → 554 5.6.0, 68 → 550 5.4.4, else
    /// 554 5.3.0), the text is the first line the user would have read.
    pub fn from_failure(f: &Failure) -> BsOutcome {
        let (code, enhanced) = match f.exit {
            Exit::TempFail | Exit::OsErr | Exit::CantCreat | Exit::IoErr => {
                (451, EnhancedCode::new(4, 3, 0))
            }
            Exit::NoUser => (550, EnhancedCode::new(5, 1, 1)),
            Exit::NoPerm => (550, EnhancedCode::new(5, 7, 1)),
            Exit::DataErr => (554, EnhancedCode::new(5, 6, 0)),
            Exit::NoHost => (550, EnhancedCode::new(5, 4, 4)),
            _ => (554, EnhancedCode::new(5, 3, 0)),
        };
        let first = f.message.lines().next().unwrap_or("delivery failed");
        // A reply line must stay a line: no control characters from a server's text.
        let first: String = first.chars().filter(|c| !c.is_control()).collect();
        BsOutcome::Failed(Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![format!("{enhanced} {first}")],
        })
    }
}

/// The handler the lead wires to the delivery path (the blocking driver, [`serve`]).
pub type Handler<'h> = dyn FnMut(Envelope, Body) -> BsOutcome + 'h;

/// Whether AUTH is available on this connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOffer {
    /// Not at all: AUTH gets `502 5.5.1` and is not advertised.
    No,
    /// Only after STARTTLS: AUTH gets `538 5.7.11` and is not advertised yet.
    AfterTls,
    /// Advertised as `AUTH PLAIN LOGIN`.
    Yes,
}

/// A decision of the hooks about a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Give this reply (counted as an error) and go on.
    Refuse(Reply),
    /// Give this reply and close the connection.
    RefuseAndClose(Reply),
}

/// The caller's part of a session: who may log in, which senders are allowed, and what becomes
/// of a message. Only [`Hooks::message`] is required; the rest default to plain `-bs`.
pub trait Hooks {
    /// A whole message (its data in a CRLF temporary file). `user` is the AUTH identity.
    fn message(
        &mut self,
        envelope: Envelope,
        body: Body,
        user: Option<&str>,
    ) -> impl Future<Output = BsOutcome>;

    /// Whether AUTH is offered; `tls`: STARTTLS is done.
    fn auth_offer(&self, _tls: bool) -> AuthOffer {
        AuthOffer::No
    }

    /// Check a user name and password (AUTH PLAIN or LOGIN).
    fn authenticate(&mut self, _user: &str, _password: Secret) -> impl Future<Output = Verdict> {
        std::future::ready(Verdict::Refuse(reply(
            535,
            "5.7.8 Authentication credentials invalid",
        )))
    }

    /// May this sender start a transaction (`user`: the AUTH identity, if any)?
    fn mail(&mut self, _sender: &str, _user: Option<&str>) -> Verdict {
        Verdict::Accept
    }

    /// A trace header field (`Received: ...`, without the final CRLF) put before the data.
    fn trace(&self, _helo: &str, _tls: bool, _user: Option<&str>) -> Option<String> {
        None
    }
}

/// The blocking driver's hooks: the handler closure, nothing else.
struct ClosureHooks<'a, 'h>(&'a mut Handler<'h>);

impl Hooks for ClosureHooks<'_, '_> {
    fn message(
        &mut self,
        envelope: Envelope,
        body: Body,
        _user: Option<&str>,
    ) -> impl Future<Output = BsOutcome> {
        std::future::ready((self.0)(envelope, body))
    }
}

/// Run one SMTP session on blocking input and output (-bs): greeting, commands until QUIT,
/// end of input or too many errors. Errors are I/O errors of `output` (or of `input` other
/// than its end).
pub fn serve<R: BufRead + Unpin, W: Write + Unpin>(
    input: R,
    output: W,
    limits: &Limits,
    handler: &mut Handler<'_>,
) -> io::Result<()> {
    let mut hooks = ClosureHooks(handler);
    let options = Options::default();
    let session = serve_with(Blocking { input, output }, limits, &options, &mut hooks);
    let mut session = std::pin::pin!(session);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match session.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r,
        // Blocking I/O is always ready and nothing else is awaited without a timeout, TLS or a
        // shutdown signal: a pending session would be a bug, reported rather than spun on.
        Poll::Pending => Err(io::Error::other(
            "-bs session waited on something not ready",
        )),
    }
}

/// Run one SMTP session on an async stream (a TCP connection of `serve`).
pub async fn serve_with<S, H>(
    stream: S,
    limits: &Limits,
    options: &Options,
    hooks: &mut H,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Hooks,
{
    let mut s = Session {
        io: BufReader::with_capacity(IO_BUFFER, Conn::Plain(stream)),
        limits,
        options,
        shutdown: options.shutdown.clone(),
        hooks,
        errors: 0,
        greeted: false,
        helo: String::new(),
        sender: None,
        recipients: Vec::new(),
        utf8: false,
        tls: false,
        user: None,
        line: Vec::with_capacity(1024),
    };
    match s.run().await {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            // Best effort: the client may be gone.
            let _ = s.reply(421, "4.4.2 Timeout, closing connection").await;
            Ok(())
        }
        other => other,
    }
}

const IO_BUFFER: usize = 64 * 1024;
/// Longest SASL response line (RFC 4954 §4: 12288 octets).
const MAX_SASL_LINE: usize = 12288;

/// Blocking input and output as an async stream that is always ready.
struct Blocking<R, W> {
    input: R,
    output: W,
}

impl<R: BufRead + Unpin, W: Unpin> AsyncRead for Blocking<R, W> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let input = &mut self.get_mut().input;
        loop {
            match input.fill_buf() {
                Ok(avail) => {
                    let n = avail.len().min(buf.remaining());
                    buf.put_slice(&avail[..n]);
                    input.consume(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<R: Unpin, W: Write + Unpin> AsyncWrite for Blocking<R, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(self.get_mut().output.write(buf))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().output.flush())
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The connection: plain, or after STARTTLS; `Gone` after a failed TLS handshake.
type Conn<S> = Upgradable<S, tokio_rustls::server::TlsStream<S>>;

struct Session<'l, S, H> {
    io: BufReader<Conn<S>>,
    limits: &'l Limits,
    options: &'l Options,
    shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    hooks: &'l mut H,
    errors: u32,
    greeted: bool,
    /// The EHLO/HELO argument (for the trace header).
    helo: String,
    /// Some during a transaction (after MAIL).
    sender: Option<String>,
    recipients: Vec<String>,
    /// The transaction's MAIL carried SMTPUTF8.
    utf8: bool,
    /// STARTTLS is done.
    tls: bool,
    /// The AUTH identity.
    user: Option<String>,
    line: Vec<u8>,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Split "FROM:<a@b> SIZE=10" after the keyword: Some((address, params)).
fn parse_path_arg<'a>(arg: &'a str, keyword: &str) -> Option<(String, Vec<&'a str>)> {
    let kw_len = keyword.len();
    if arg.len() < kw_len || !arg.is_char_boundary(kw_len) {
        return None;
    }
    let (kw, rest) = arg.split_at(kw_len);
    if !kw.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = rest.trim_start();
    let (path, params) = if let Some(inner) = rest.strip_prefix('<') {
        let end = inner.find('>')?;
        (&inner[..end], &inner[end + 1..])
    } else {
        match rest.find(' ') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        }
    };
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    // A source route (@a,@b:user@c) is ignored (RFC 5321 §4.1.2).
    let addr = match path.strip_prefix('@') {
        Some(_) => path.split_once(':').map(|(_, a)| a)?,
        None => path,
    };
    if addr
        .chars()
        .any(|c| c.is_control() || c == ' ' || c == '<' || c == '>')
    {
        return None;
    }
    if !addr.is_empty() {
        // local@domain, or a bare local name (postmaster, root): no empty parts.
        if let Some((local, domain)) = addr.rsplit_once('@')
            && (local.is_empty() || domain.is_empty())
        {
            return None;
        }
    }
    Some((addr.to_owned(), params.split_whitespace().collect()))
}

/// `fut`, failing with `io::ErrorKind::TimedOut` after `timeout` (None: no limit, and no
/// timer: the blocking driver has no runtime).
async fn limited<T>(
    timeout: Option<Duration>,
    fut: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match timeout {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into())),
    }
}

/// Wait until the watched flag is true (never, when the sender is gone).
pub async fn flagged(rx: &mut tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: Hooks> Session<'_, S, H> {
    /// Fill the read buffer; returns how many bytes it holds (0: end of input). A silent
    /// client past the idle timeout is an `io::ErrorKind::TimedOut` error.
    async fn fill(&mut self) -> io::Result<usize> {
        let io = &mut self.io;
        let read = async { io.fill_buf().await.map(|b| b.len()) };
        limited(self.options.idle_timeout, read).await
    }

    /// Before a command: wait for input; true when the server is stopping and the client is
    /// between transactions (the caller then says 421 and closes).
    async fn wait_for_command(&mut self) -> io::Result<bool> {
        if self.sender.is_some() {
            return Ok(false);
        }
        let Some(rx) = self.shutdown.as_mut() else {
            return Ok(false);
        };
        if *rx.borrow() {
            return Ok(true);
        }
        if !self.io.buffer().is_empty() {
            return Ok(false);
        }
        let io = &mut self.io;
        let read = async { io.fill_buf().await.map(|b| b.len()) };
        let read = limited(self.options.idle_timeout, read);
        tokio::select! {
            r = read => r.map(|_| false),
            () = flagged(rx) => Ok(true),
        }
    }

    /// Read up to `max` bytes, stopping after an LF. Returns false at end of input with
    /// nothing read. The caller sees a complete line when `buf` ends with LF.
    async fn read_piece(&mut self, buf: &mut Vec<u8>, max: usize) -> io::Result<bool> {
        buf.clear();
        loop {
            let n = match self.fill().await {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok(!buf.is_empty());
            }
            let avail = self.io.buffer();
            let room = max.saturating_sub(buf.len()).max(1);
            let take = avail.len().min(room);
            if let Some(i) = avail[..take].iter().position(|&b| b == b'\n') {
                buf.extend_from_slice(&avail[..=i]);
                Pin::new(&mut self.io).consume(i + 1);
                return Ok(true);
            }
            buf.extend_from_slice(&avail[..take]);
            Pin::new(&mut self.io).consume(take);
            if buf.len() >= max {
                return Ok(true);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let out = self.io.get_mut();
        let write = async {
            out.write_all(bytes).await?;
            out.flush().await
        };
        limited(self.options.idle_timeout, write).await
    }

    async fn reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        self.send(format!("{code} {text}\r\n").as_bytes()).await
    }

    /// An error reply; counts towards the cut-off. Returns Close when the cut-off is reached.
    async fn error(&mut self, code: u16, text: &str) -> io::Result<Next> {
        self.reply(code, text).await?;
        self.count_error().await
    }

    async fn count_error(&mut self) -> io::Result<Next> {
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            self.reply(421, "4.7.0 Too many errors, closing connection")
                .await?;
            return Ok(Next::Close);
        }
        Ok(Next::Continue)
    }

    /// A refusal from the hooks.
    async fn verdict(&mut self, v: Verdict) -> io::Result<Option<Next>> {
        match v {
            Verdict::Accept => Ok(None),
            Verdict::Refuse(r) => {
                self.write_reply(&r).await?;
                self.count_error().await.map(Some)
            }
            Verdict::RefuseAndClose(r) => {
                self.write_reply(&r).await?;
                Ok(Some(Next::Close))
            }
        }
    }

    fn reset(&mut self) {
        self.utf8 = false;
        self.sender = None;
        self.recipients.clear();
    }

    async fn run(&mut self) -> io::Result<()> {
        let greeting = format!(
            "{} {}",
            clean(&self.limits.hostname),
            clean(&self.options.banner)
        );
        self.reply(220, &greeting).await?;
        let max = self.limits.max_command_line.max(16);
        loop {
            if self.wait_for_command().await? {
                self.reply(421, "4.3.2 Service shutting down, closing connection")
                    .await?;
                return Ok(());
            }
            let mut line = std::mem::take(&mut self.line);
            let got = self.read_piece(&mut line, max).await?;
            if !got {
                self.line = line;
                return Ok(());
            }
            if !line.ends_with(b"\n") && line.len() >= max {
                // Too long: skip to the end of the line.
                let mut rest = Vec::new();
                loop {
                    if !self.read_piece(&mut rest, 64 * 1024).await? {
                        break;
                    }
                    if rest.ends_with(b"\n") {
                        break;
                    }
                }
                self.line = line;
                if let Next::Close = self.error(500, "5.5.2 Line too long").await? {
                    return Ok(());
                }
                continue;
            }
            let text = String::from_utf8_lossy(strip_eol(&line)).into_owned();
            self.line = line;
            if let Next::Close = self.command(&text).await? {
                return Ok(());
            }
        }
    }

    async fn command(&mut self, text: &str) -> io::Result<Next> {
        let (verb, arg) = match text.find(' ') {
            Some(i) => (&text[..i], text[i + 1..].trim()),
            None => (text, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if arg.is_empty() || arg.contains(char::is_whitespace) {
                    return self
                        .error(501, &format!("5.5.4 Syntax: {verb} hostname"))
                        .await;
                }
                self.reset();
                self.greeted = true;
                self.helo = clean(arg);
                let host = clean(&self.limits.hostname);
                if verb == "HELO" {
                    self.reply(250, &host).await?;
                } else {
                    let mut extra = String::new();
                    if self.options.tls.is_some() && !self.tls {
                        extra.push_str("250-STARTTLS\r\n");
                    }
                    if self.hooks.auth_offer(self.tls) == AuthOffer::Yes {
                        extra.push_str("250-AUTH PLAIN LOGIN\r\n");
                    }
                    let text = format!(
                        "250-{host} greets {}\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n{extra}250 HELP\r\n",
                        self.helo, self.limits.max_size
                    );
                    self.send(text.as_bytes()).await?;
                }
                Ok(Next::Continue)
            }
            "MAIL" => self.mail(arg).await,
            "RCPT" => self.rcpt(arg).await,
            "DATA" => {
                if !arg.is_empty() {
                    return self.error(501, "5.5.4 Syntax: DATA").await;
                }
                if self.sender.is_none() {
                    return self.error(503, "5.5.1 Error: need MAIL command").await;
                }
                if self.recipients.is_empty() {
                    return self.error(503, "5.5.1 Error: need RCPT command").await;
                }
                self.data().await
            }
            "RSET" => {
                if !arg.is_empty() {
                    return self.error(501, "5.5.4 Syntax: RSET").await;
                }
                self.reset();
                self.reply(250, "2.0.0 OK").await?;
                Ok(Next::Continue)
            }
            "NOOP" => {
                self.reply(250, "2.0.0 OK").await?;
                Ok(Next::Continue)
            }
            "QUIT" => {
                self.reply(221, "2.0.0 Bye").await?;
                Ok(Next::Close)
            }
            "VRFY" => {
                if arg.is_empty() {
                    return self.error(501, "5.5.4 Syntax: VRFY address").await;
                }
                self.reply(252, "2.5.0 Cannot VRFY user, but will accept message")
                    .await?;
                Ok(Next::Continue)
            }
            "HELP" => {
                self.reply(
                    214,
                    "2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
                )
                .await?;
                Ok(Next::Continue)
            }
            "STARTTLS" if self.options.tls.is_some() => self.starttls(arg).await,
            "AUTH" if self.hooks.auth_offer(self.tls) != AuthOffer::No => self.auth(arg).await,
            "AUTH" | "STARTTLS" | "BDAT" | "EXPN" | "ETRN" | "TURN" | "ATRN" | "SAML" | "SOML"
            | "SEND" => self.error(502, "5.5.1 Command not implemented").await,
            "" => self.error(500, "5.5.2 Error: bad syntax").await,
            _ => self.error(500, "5.5.2 Error: command not recognized").await,
        }
    }

    async fn starttls(&mut self, arg: &str) -> io::Result<Next> {
        if self.tls {
            return self.error(503, "5.5.1 Error: TLS already active").await;
        }
        if !arg.is_empty() {
            return self.error(501, "5.5.4 Syntax: STARTTLS").await;
        }
        let Some(acceptor) = self.options.tls.clone() else {
            return self.error(502, "5.5.1 Command not implemented").await;
        };
        self.reply(220, "2.0.0 Ready to start TLS").await?;
        // Whatever the client pipelined after STARTTLS was sent in the clear: drop it.
        let pending = self.io.buffer().len();
        Pin::new(&mut self.io).consume(pending);
        let io = std::mem::replace(
            &mut self.io,
            BufReader::with_capacity(IO_BUFFER, Conn::Gone),
        );
        let Conn::Plain(plain) = io.into_inner() else {
            return Ok(Next::Close);
        };
        let handshake = acceptor.accept(plain);
        let stream = limited(self.options.idle_timeout, handshake).await;
        match stream {
            Ok(tls) => {
                self.io = BufReader::with_capacity(IO_BUFFER, Conn::Tls(Box::new(tls)));
                self.tls = true;
                // RFC 3207 §4.2: forget everything learnt before TLS.
                self.reset();
                self.greeted = false;
                self.helo.clear();
                self.user = None;
                Ok(Next::Continue)
            }
            Err(e) => {
                tracing::debug!(error = %e, "TLS handshake with the client failed");
                Ok(Next::Close)
            }
        }
    }

    /// One SASL response line, base64-decoded. Err(reply) when the client cancelled or sent
    /// something undecodable; Ok(None) at end of input.
    async fn sasl_response(&mut self) -> io::Result<Option<Result<Vec<u8>, Next>>> {
        let mut line = Vec::new();
        if !self.read_piece(&mut line, MAX_SASL_LINE).await? {
            return Ok(None);
        }
        if !line.ends_with(b"\n") {
            // Too long: skip the rest of it.
            let mut rest = Vec::new();
            while self.read_piece(&mut rest, 64 * 1024).await? && !rest.ends_with(b"\n") {}
            return Ok(Some(Err(self
                .error(500, "5.5.6 Authentication Exchange line is too long")
                .await?)));
        }
        let text = strip_eol(&line);
        if text == b"*" {
            return Ok(Some(Err(self
                .error(501, "5.7.0 Authentication cancelled")
                .await?)));
        }
        match B64.decode(text) {
            Ok(bytes) => Ok(Some(Ok(bytes))),
            Err(_) => Ok(Some(Err(self
                .error(501, "5.5.2 Cannot decode the response")
                .await?))),
        }
    }

    async fn auth(&mut self, arg: &str) -> io::Result<Next> {
        if self.hooks.auth_offer(self.tls) == AuthOffer::AfterTls {
            return self
                .error(
                    538,
                    "5.7.11 Encryption required for requested authentication mechanism: \
                     issue STARTTLS first",
                )
                .await;
        }
        if self.user.is_some() {
            return self.error(503, "5.5.1 Error: already authenticated").await;
        }
        if self.sender.is_some() {
            return self
                .error(
                    503,
                    "5.5.1 Error: AUTH not permitted during a mail transaction",
                )
                .await;
        }
        let mut words = arg.split_whitespace();
        let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
        let initial = words.next();
        if words.next().is_some() {
            return self
                .error(501, "5.5.4 Syntax: AUTH mechanism [initial-response]")
                .await;
        }
        // `=` is an empty initial response (RFC 4954 §4).
        let initial = match initial {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(b) => match B64.decode(b) {
                Ok(v) => Some(v),
                Err(_) => return self.error(501, "5.5.2 Cannot decode the response").await,
            },
        };
        let (user, password) = match mechanism.as_str() {
            "PLAIN" => {
                let raw = match initial {
                    Some(v) => v,
                    None => {
                        self.reply(334, "").await?;
                        match self.sasl_response().await? {
                            None => return Ok(Next::Close),
                            Some(Err(next)) => return Ok(next),
                            Some(Ok(v)) => v,
                        }
                    }
                };
                // authzid NUL authcid NUL passwd
                let mut parts = raw.split(|&b| b == 0);
                let (Some(authz), Some(authc), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.error(501, "5.5.2 Malformed PLAIN response").await;
                };
                if !authz.is_empty() && authz != authc {
                    // Acting for another identity is not supported.
                    return self
                        .error(535, "5.7.8 Authentication credentials invalid")
                        .await;
                }
                (authc.to_vec(), pass.to_vec())
            }
            "LOGIN" => {
                let user = match initial {
                    Some(v) => v,
                    None => {
                        self.reply(334, "VXNlcm5hbWU6").await?;
                        match self.sasl_response().await? {
                            None => return Ok(Next::Close),
                            Some(Err(next)) => return Ok(next),
                            Some(Ok(v)) => v,
                        }
                    }
                };
                self.reply(334, "UGFzc3dvcmQ6").await?;
                let pass = match self.sasl_response().await? {
                    None => return Ok(Next::Close),
                    Some(Err(next)) => return Ok(next),
                    Some(Ok(v)) => v,
                };
                (user, pass)
            }
            "" => return self.error(501, "5.5.4 Syntax: AUTH mechanism").await,
            _ => {
                return self
                    .error(504, "5.5.4 Unrecognized authentication type")
                    .await;
            }
        };
        let (Ok(user), Ok(password)) = (String::from_utf8(user), String::from_utf8(password))
        else {
            return self
                .error(535, "5.7.8 Authentication credentials invalid")
                .await;
        };
        let verdict = self.hooks.authenticate(&user, Secret::new(password)).await;
        if let Some(next) = self.verdict(verdict).await? {
            return Ok(next);
        }
        self.user = Some(user);
        self.reply(235, "2.7.0 Authentication successful").await?;
        Ok(Next::Continue)
    }

    async fn mail(&mut self, arg: &str) -> io::Result<Next> {
        if self.sender.is_some() {
            return self.error(503, "5.5.1 Error: nested MAIL command").await;
        }
        let Some((addr, params)) = parse_path_arg(arg, "FROM:") else {
            return self.error(501, "5.5.4 Syntax: MAIL FROM:<address>").await;
        };
        let mut utf8 = false;
        for p in params {
            let (key, value) = p.split_once('=').unwrap_or((p, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.limits.max_size => {
                        return self
                            .error(552, "5.3.4 Message size exceeds fixed maximum message size")
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => return self.error(501, "5.5.4 Bad SIZE parameter").await,
                },
                "BODY" => {
                    if !value.eq_ignore_ascii_case("7BIT")
                        && !value.eq_ignore_ascii_case("8BITMIME")
                    {
                        return self.error(501, "5.5.4 Bad BODY parameter").await;
                    }
                }
                "SMTPUTF8" if value.is_empty() && !p.contains('=') => utf8 = true,
                // RFC 4954 §5: the AUTH= parameter is accepted and ignored.
                "AUTH" if self.user.is_some() => {}
                _ => return self.error(555, "5.5.4 Unsupported parameter").await,
            }
        }
        if !utf8 && !addr.is_ascii() {
            return self
                .error(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
                .await;
        }
        let verdict = self.hooks.mail(&addr, self.user.as_deref());
        if let Some(next) = self.verdict(verdict).await? {
            return Ok(next);
        }
        self.utf8 = utf8;
        self.sender = Some(addr);
        self.recipients.clear();
        self.reply(250, "2.1.0 Sender OK").await?;
        Ok(Next::Continue)
    }

    async fn rcpt(&mut self, arg: &str) -> io::Result<Next> {
        if self.sender.is_none() {
            return self.error(503, "5.5.1 Error: need MAIL command").await;
        }
        let Some((addr, params)) = parse_path_arg(arg, "TO:") else {
            return self.error(501, "5.5.4 Syntax: RCPT TO:<address>").await;
        };
        if addr.is_empty() {
            return self.error(501, "5.1.3 Bad recipient address syntax").await;
        }
        if !params.is_empty() {
            return self.error(555, "5.5.4 Unsupported parameter").await;
        }
        if !self.utf8 && !addr.is_ascii() {
            return self
                .error(553, "5.6.7 Non-ASCII address needs SMTPUTF8")
                .await;
        }
        if self.recipients.len() >= self.limits.max_recipients {
            // Not counted as an error: the client is to send the rest in another message.
            self.reply(452, "4.5.3 Too many recipients").await?;
            return Ok(Next::Continue);
        }
        if !self.recipients.contains(&addr) {
            self.recipients.push(addr);
        }
        self.reply(250, "2.1.5 Recipient OK").await?;
        Ok(Next::Continue)
    }

    async fn data(&mut self) -> io::Result<Next> {
        let temp = match &self.limits.temp_dir {
            Some(dir) => tempfile::NamedTempFile::new_in(dir),
            None => tempfile::NamedTempFile::new(),
        };
        let temp = temp.ok();
        let mut writer = temp
            .as_ref()
            .map(|t| io::BufWriter::with_capacity(64 * 1024, t.as_file()));
        self.reply(354, "End data with <CR><LF>.<CR><LF>").await?;

        let mut size: u64 = 0;
        let mut too_big = false;
        let mut write_failed = temp.is_none();
        if let Some(trace) = self.hooks.trace(&self.helo, self.tls, self.user.as_deref())
            && let Some(w) = writer.as_mut()
            && w.write_all(format!("{trace}\r\n").as_bytes()).is_err()
        {
            write_failed = true;
        }
        let mut at_line_start = true;
        let mut prev_cr = false;
        // The previous line ended with CRLF (the DATA command line counts as one).
        let mut prev_crlf = true;
        let mut piece = Vec::with_capacity(64 * 1024);
        let mut out = Vec::with_capacity(64 * 1024 + 2);
        let complete = loop {
            if !self.read_piece(&mut piece, 64 * 1024).await? {
                break false;
            }
            let mut data: &[u8] = &piece;
            if at_line_start {
                if prev_crlf && data == b".\r\n" {
                    break true;
                }
                // A lone "." that does not end the data is never the product of dot-stuffing
                // (which adds a dot only in front of text): keep it as it is.
                if data.first() == Some(&b'.') && data != b".\r\n" && data != b".\n" {
                    data = &data[1..];
                }
            }
            out.clear();
            if let Some(body) = data.strip_suffix(b"\n") {
                let cr_before = match body.last() {
                    Some(&b) => b == b'\r',
                    None => prev_cr,
                };
                out.extend_from_slice(body);
                if !cr_before {
                    out.push(b'\r');
                }
                out.push(b'\n');
                at_line_start = true;
                prev_crlf = cr_before;
                prev_cr = false;
            } else {
                out.extend_from_slice(data);
                at_line_start = false;
                prev_cr = match data.last() {
                    Some(&b) => b == b'\r',
                    None => prev_cr,
                };
            }
            size += out.len() as u64;
            if size > self.limits.max_size {
                too_big = true;
            }
            if !too_big
                && !write_failed
                && let Some(w) = writer.as_mut()
                && w.write_all(&out).is_err()
            {
                write_failed = true;
            }
        };
        if let Some(mut w) = writer.take()
            && w.flush().is_err()
        {
            write_failed = true;
        }
        drop(writer);
        if !complete {
            // End of input in the middle of the data: nothing to hand over, nobody to tell.
            return Ok(Next::Close);
        }
        let sender = self.sender.take().unwrap_or_default();
        let recipients = std::mem::take(&mut self.recipients);
        if too_big {
            self.reply(552, "5.3.4 Message size exceeds fixed maximum message size")
                .await?;
            return Ok(Next::Continue);
        }
        let body = match temp {
            Some(t) if !write_failed => Body::temporary(t.into_temp_path()),
            _ => {
                self.reply(451, "4.3.0 Local error: cannot store the message")
                    .await?;
                return Ok(Next::Continue);
            }
        };
        let envelope = Envelope {
            sender,
            recipients,
            ..Envelope::default()
        };
        match self
            .hooks
            .message(envelope, body, self.user.as_deref())
            .await
        {
            BsOutcome::Delivered => {
                self.reply(250, "2.0.0 Message accepted for delivery")
                    .await?
            }
            BsOutcome::Queued => {
                self.reply(250, "2.0.0 Message queued for later delivery")
                    .await?
            }
            BsOutcome::QueuedAs(id) => {
                self.reply(250, &format!("2.0.0 Ok: queued as {}", clean(&id)))
                    .await?
            }
            BsOutcome::Failed(r) => self.write_reply(&r).await?,
        }
        Ok(Next::Continue)
    }

    async fn write_reply(&mut self, r: &Reply) -> io::Result<()> {
        let code = if (200..600).contains(&r.code) {
            r.code
        } else {
            554
        };
        let lines: Vec<String> = if r.lines.is_empty() {
            vec!["Delivery failed".to_owned()]
        } else {
            r.lines.iter().map(|l| clean(l)).collect()
        };
        let last = lines.len() - 1;
        let mut text = String::new();
        for (i, l) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            text.push_str(&format!("{code}{sep}{l}\r\n"));
        }
        self.send(text.as_bytes()).await
    }
}

/// A one-line reply, e.g. `reply(553, "5.7.1 Sender not allowed")`.
pub fn reply(code: u16, text: &str) -> Reply {
    Reply::new(code, vec![text.to_owned()])
}

/// Text safe inside one reply line.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding (medium): a message that could not be stored for a local reason (a full disk:
    /// exit 73, 74, 71) was refused for good (554 5.3.0), so a client dropped it; it is a
    /// temporary 451 4.3.0, as Postfix answers when its queue file cannot be written.
    #[test]
    fn a_local_failure_to_store_is_temporary() {
        for exit in [Exit::CantCreat, Exit::IoErr, Exit::OsErr, Exit::TempFail] {
            let f = Failure::new(
                exit,
                "cannot write to the mail queue: No space left on device",
            );
            match BsOutcome::from_failure(&f) {
                BsOutcome::Failed(r) => {
                    assert_eq!(r.code, 451, "{exit:?}");
                    assert_eq!(
                        r.to_string(),
                        "451 4.3.0 cannot write to the mail queue: No space left on device"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let f = Failure::new(Exit::DataErr, "bad");
        assert!(matches!(BsOutcome::from_failure(&f), BsOutcome::Failed(r) if r.code == 554));
    }
}
