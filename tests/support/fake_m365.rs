//! An in-process fake Microsoft 365 SMTP server for tests (tokio + tokio-rustls, rcgen
//! certificates). Listens on 127.0.0.1 with an ephemeral port; never anything else.
//!
//! Use it from a test file with
//! `#[path = "support/fake_m365.rs"] mod fake_m365;` and
//!
//! ```ignore
//! let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", "tok")).await;
//! // client side: host "127.0.0.1" (or "localhost"), port server.port(),
//! // profile.tls.ca_file = Some(server.ca_file().into())
//! let msgs = server.messages();          // what was delivered (envelope + un-stuffed bytes)
//! let conns = server.connections();      // every byte and read boundary, per connection
//! ```
//!
//! What it does, like Microsoft 365 (see BRIEF.md):
//! - greeting `220 ... Microsoft ESMTP MAIL Service ready`;
//! - EHLO lists exactly as BRIEF.md: before TLS `SIZE 157286400 PIPELINING DSN
//!   ENHANCEDSTATUSCODES STARTTLS 8BITMIME BINARYMIME CHUNKING SMTPUTF8`; after STARTTLS
//!   `STARTTLS` is replaced by `AUTH LOGIN XOAUTH2` (submission flavour) or dropped (MX);
//! - STARTTLS → `220 2.0.0 SMTP server ready`; AUTH XOAUTH2 / LOGIN checked against the
//!   configured users (token or password), `235 2.7.0 Authentication successful` or
//!   `535 5.7.3 Authentication unsuccessful`; MAIL without AUTH on the submission flavour →
//!   `530 5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM`;
//! - DATA (un-stuffed on receipt) and BDAT; RSET; QUIT.
//!
//! Scripting: `Rule`s say what to answer (or to hang, or to drop the connection) at a
//! phase, optionally only for a sender/recipient/user containing a string, optionally only
//! the first N times (so "451 then success on retry" is one rule with `times(1)`).
//!
//! Limits, as Postfix and Exchange Online enforce them: `max_recipients(n)` answers
//! `452 4.5.3 Too many recipients` to every RCPT after n accepted in one transaction, and
//! `error_limit(n)` answers the next command after n error replies on a connection with
//! `421 4.7.0 ... Error: too many errors` and closes (Postfix's smtpd_hard_error_limit).
//!
//! Recording: per connection, every read as received (after TLS decryption) — one entry per
//! read, so tests can prove pipelining (MAIL+RCPTs+DATA in one read) — and every flight
//! (all the client sent between two of the server's writes, whatever the reads), plus the
//! decoded AUTH strings, whether a client certificate was presented, the TLS version; and
//! per delivered message the envelope, the parameters, and the un-stuffed bytes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Which Microsoft endpoint to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// smtp.office365.com:587: AUTH LOGIN XOAUTH2 after STARTTLS, MAIL needs AUTH.
    Submission,
    /// The tenant MX endpoint (relay, direct send): no AUTH.
    Mx,
}

/// TLS versions the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersions {
    Both,
    Only12,
    Only13,
}

/// A protocol phase a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Ehlo,
    StartTls,
    /// Final AUTH reply (matching on the user).
    Auth,
    /// MAIL FROM (matching on the sender).
    Mail,
    /// RCPT TO (matching on the recipient).
    Rcpt,
    /// The DATA command itself, or the first BDAT (answered after its octets), matching on
    /// the sender.
    Data,
    /// After the first piece of message data was received (Drop here = drop mid-DATA; with
    /// BDAT, after the first BDAT command line).
    MidData,
    /// After the whole message (end of DATA or BDAT LAST), matching on the sender.
    DataEnd,
    Rset,
}

/// What to do when a rule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply (one or more lines separated by "\r\n", without the final CRLF).
    Reply(String),
    /// Never answer (keep the connection open).
    Hang,
    /// Close the connection without a word.
    Drop,
    /// Send this reply, then close the connection (as Microsoft does after some refusals).
    ReplyAndClose(String),
    /// Hold the reply until the client has sent this (e.g. the next message's "MAIL FROM"),
    /// at most 2 s, then answer as the next matching rule or the default says;
    /// `ConnRecord::holds` says whether it came first. Put it before the rule it delays.
    HoldUntil(String),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub phase: Phase,
    /// Fire only when the sender / recipient / AUTH user contains this (case-insensitive).
    pub matching: Option<String>,
    pub action: Action,
    /// Fire at most this many times (None: always).
    pub times: Option<usize>,
}

impl Rule {
    pub fn reply(phase: Phase, reply: &str) -> Rule {
        Rule {
            phase,
            matching: None,
            action: Action::Reply(reply.to_owned()),
            times: None,
        }
    }
    pub fn hang(phase: Phase) -> Rule {
        Rule {
            phase,
            matching: None,
            action: Action::Hang,
            times: None,
        }
    }
    pub fn reply_and_close(phase: Phase, reply: &str) -> Rule {
        Rule {
            phase,
            matching: None,
            action: Action::ReplyAndClose(reply.to_owned()),
            times: None,
        }
    }
    pub fn drop(phase: Phase) -> Rule {
        Rule {
            phase,
            matching: None,
            action: Action::Drop,
            times: None,
        }
    }
    pub fn hold_until(phase: Phase, needle: &str) -> Rule {
        Rule {
            phase,
            matching: None,
            action: Action::HoldUntil(needle.to_owned()),
            times: None,
        }
    }
    pub fn matching(mut self, s: &str) -> Rule {
        self.matching = Some(s.to_ascii_lowercase());
        self
    }
    pub fn times(mut self, n: usize) -> Rule {
        self.times = Some(n);
        self
    }
}

/// Server configuration. Start from `submission()` or `mx()` and adjust.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub flavour: Flavour,
    /// Advertise and accept STARTTLS.
    pub starttls: bool,
    /// Names (DNS or IP) in the server certificate.
    pub cert_names: Vec<String>,
    pub tls_versions: TlsVersions,
    /// Refuse the TLS handshake without a client certificate signed by the test CA.
    pub require_client_cert: bool,
    /// (user, secret): the secret is the XOAUTH2 token or the LOGIN/PLAIN password.
    pub users: Vec<(String, String)>,
    /// Answer a failed XOAUTH2 with a 334 JSON challenge first (as RFC 7628 servers do).
    pub xoauth2_challenge: bool,
    /// Replace the EHLO keyword lines (after the first line) entirely, before / after TLS.
    pub ehlo_before_tls: Option<Vec<String>>,
    pub ehlo_after_tls: Option<Vec<String>>,
    pub rules: Vec<Rule>,
    /// Accepted RCPTs per transaction; later ones get `452 4.5.3 Too many recipients`.
    pub max_recipients: Option<usize>,
    /// Error replies (4xx/5xx) a connection may get; the next command gets 421 and the
    /// connection is closed.
    pub error_limit: Option<usize>,
    /// After AUTH, accept only the authenticated user as the sender (the null sender
    /// included): anything else is `550 5.7.60`, as Microsoft 365 answers a mailbox login.
    pub send_as_only: bool,
}

impl FakeConfig {
    pub fn submission() -> FakeConfig {
        FakeConfig {
            flavour: Flavour::Submission,
            starttls: true,
            cert_names: vec!["localhost".into(), "127.0.0.1".into()],
            tls_versions: TlsVersions::Both,
            require_client_cert: false,
            users: Vec::new(),
            xoauth2_challenge: false,
            ehlo_before_tls: None,
            ehlo_after_tls: None,
            rules: Vec::new(),
            max_recipients: None,
            error_limit: None,
            send_as_only: false,
        }
    }
    pub fn mx() -> FakeConfig {
        FakeConfig {
            flavour: Flavour::Mx,
            ..FakeConfig::submission()
        }
    }
    pub fn user(mut self, user: &str, secret: &str) -> Self {
        self.users.push((user.to_owned(), secret.to_owned()));
        self
    }
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }
    pub fn max_recipients(mut self, n: usize) -> Self {
        self.max_recipients = Some(n);
        self
    }
    pub fn error_limit(mut self, n: usize) -> Self {
        self.error_limit = Some(n);
        self
    }
    pub fn send_as_only(mut self) -> Self {
        self.send_as_only = true;
        self
    }
    pub fn no_starttls(mut self) -> Self {
        self.starttls = false;
        self
    }
    pub fn cert_names(mut self, names: &[&str]) -> Self {
        self.cert_names = names.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn tls_versions(mut self, v: TlsVersions) -> Self {
        self.tls_versions = v;
        self
    }
    pub fn require_client_cert(mut self) -> Self {
        self.require_client_cert = true;
        self
    }
    /// Remove these keywords (e.g. "PIPELINING", "CHUNKING", "DSN") from both EHLO lists.
    pub fn without(mut self, keywords: &[&str]) -> Self {
        let strip = |list: Vec<String>| -> Vec<String> {
            list.into_iter()
                .filter(|l| {
                    let kw = l.split_whitespace().next().unwrap_or("");
                    !keywords.iter().any(|k| k.eq_ignore_ascii_case(kw))
                })
                .collect()
        };
        let before = self
            .ehlo_before_tls
            .take()
            .unwrap_or_else(|| self.default_ehlo(false));
        let after = self
            .ehlo_after_tls
            .take()
            .unwrap_or_else(|| self.default_ehlo(true));
        self.ehlo_before_tls = Some(strip(before));
        self.ehlo_after_tls = Some(strip(after));
        self
    }

    /// The EHLO keyword lines of BRIEF.md for this flavour and TLS state.
    pub fn default_ehlo(&self, tls: bool) -> Vec<String> {
        let mut v: Vec<String> = vec!["SIZE 157286400", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES"]
            .into_iter()
            .map(String::from)
            .collect();
        if !tls && self.starttls {
            v.push("STARTTLS".into());
        }
        if tls && self.flavour == Flavour::Submission {
            v.push("AUTH LOGIN XOAUTH2".into());
        }
        for k in ["8BITMIME", "BINARYMIME", "CHUNKING", "SMTPUTF8"] {
            v.push(k.into());
        }
        v
    }
}

/// Test PKI: a CA, and certificates it signs.
pub struct Pki {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "Fake Microsoft 365 Test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            ca_params: p,
            ca_key,
        }
    }

    /// A leaf certificate for these names (DNS or IP), as (cert PEM, key PEM, cert DER, key DER).
    pub fn leaf(
        &self,
        names: &[String],
        cn: &str,
    ) -> (
        String,
        String,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.to_vec()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (cert.pem(), key.serialize_pem(), cert.der().clone(), key_der)
    }
}

/// Everything received on one connection.
#[derive(Debug, Clone, Default)]
pub struct ConnRecord {
    /// Every read, in order, as received (plain text; after STARTTLS, decrypted).
    pub reads: Vec<Vec<u8>>,
    /// Every flight: the bytes received between two writes of the server (one round trip
    /// of the client's), in order.
    pub flights: Vec<Vec<u8>>,
    /// Index into `reads` of the first read after the TLS handshake (None: no TLS).
    pub tls_from_read: Option<usize>,
    /// Index into `flights` of the first flight after the TLS handshake.
    pub tls_from_flight: Option<usize>,
    pub tls_version: Option<String>,
    /// The TLS handshake failed (reason).
    pub tls_error: Option<String>,
    /// A client certificate was presented (its subject common name is not parsed; its DER).
    pub client_cert: Option<Vec<u8>>,
    pub helo: Vec<String>,
    /// Decoded AUTH payloads, e.g. "user=a@b\x01auth=Bearer tok\x01\x01", or "LOGIN user pass".
    pub auth: Vec<String>,
    pub authenticated: Option<String>,
    /// Command lines received (body data excluded), in order.
    pub commands: Vec<String>,
    /// Per `Action::HoldUntil` fired: whether what it waited for arrived before the reply.
    pub holds: Vec<bool>,
}

impl ConnRecord {
    /// All bytes received, concatenated.
    pub fn bytes(&self) -> Vec<u8> {
        self.reads.concat()
    }
    /// The flight that contains `needle` (e.g. "MAIL FROM"), as text.
    pub fn flight_containing(&self, needle: &str) -> Option<String> {
        self.flights
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .find(|r| r.contains(needle))
    }
    /// The flights after the TLS handshake (all without TLS), as text.
    pub fn flights_after_tls(&self) -> Vec<String> {
        self.flights[self.tls_from_flight.unwrap_or(0)..]
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }
    /// The read that contains `needle` (e.g. "MAIL FROM"), as text.
    pub fn read_containing(&self, needle: &str) -> Option<String> {
        self.reads
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .find(|r| r.contains(needle))
    }
}

/// A message the server accepted (or at least received in full).
#[derive(Debug, Clone, Default)]
pub struct Received {
    pub connection: usize,
    pub sender: String,
    /// Parameters after MAIL FROM:<...>, e.g. "SIZE=123 BODY=8BITMIME".
    pub mail_params: String,
    /// Accepted recipients.
    pub recipients: Vec<String>,
    /// Parameters of each accepted RCPT.
    pub rcpt_params: Vec<String>,
    /// The message as the client meant it: DATA un-stuffed (without the final "." line), or
    /// the BDAT chunks concatenated.
    pub data: Vec<u8>,
    pub via_bdat: bool,
    pub bdat_chunks: Vec<usize>,
    /// The reply the server gave at the end (2xx: accepted).
    pub final_reply: String,
}

impl Received {
    pub fn accepted(&self) -> bool {
        self.final_reply.starts_with('2')
    }
}

#[derive(Default)]
struct State {
    connections: Vec<ConnRecord>,
    messages: Vec<Received>,
    rules: Vec<(Rule, usize)>,
}

/// A running fake server. Dropping it stops accepting (the task ends with the runtime).
pub struct FakeM365 {
    addr: SocketAddr,
    pub pki: Arc<Pki>,
    state: Arc<Mutex<State>>,
    dir: tempfile::TempDir,
    ca_file: PathBuf,
}

impl FakeM365 {
    pub async fn start(cfg: FakeConfig) -> FakeM365 {
        Self::start_with_pki(cfg, Arc::new(Pki::new())).await
    }

    pub async fn start_with_pki(cfg: FakeConfig, pki: Arc<Pki>) -> FakeM365 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let state = Arc::new(Mutex::new(State {
            rules: cfg.rules.iter().cloned().map(|r| (r, 0)).collect(),
            ..State::default()
        }));
        let tls = Arc::new(server_tls(&cfg, &pki));
        let cfg = Arc::new(cfg);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let _ = sock.set_nodelay(true);
                let idx = {
                    let mut s = st.lock().unwrap();
                    s.connections.push(ConnRecord::default());
                    s.connections.len() - 1
                };
                let conn = Conn {
                    io: Io::Plain(sock),
                    buf: Vec::new(),
                    replied: true,
                    errors: 0,
                    last_sent: None,
                    idx,
                    state: st.clone(),
                    cfg: cfg.clone(),
                    tls_acceptor: tls.clone(),
                };
                tokio::spawn(conn.run());
            }
        });
        FakeM365 {
            addr,
            pki,
            state,
            dir,
            ca_file,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// PEM file of the CA that signed the server certificate (for `profile.tls.ca_file`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
    /// Write a client certificate signed by the test CA; returns (cert path, key path).
    pub fn client_cert_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key, _, _) = self.pki.leaf(&[name.to_owned()], name);
        let c = self.dir.path().join(format!("{name}.crt"));
        let k = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }
    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().unwrap().messages.clone()
    }
    /// Messages with a 2xx final reply.
    pub fn accepted(&self) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.accepted())
            .collect()
    }
    pub fn connections(&self) -> Vec<ConnRecord> {
        self.state.lock().unwrap().connections.clone()
    }
    pub fn add_rule(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push((rule, 0));
    }
}

fn server_tls(cfg: &FakeConfig, pki: &Pki) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.tls_versions {
        TlsVersions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Only12 => &[&rustls::version::TLS12],
        TlsVersions::Only13 => &[&rustls::version::TLS13],
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    );
    let verifier = if cfg.require_client_cert {
        verifier.build().unwrap()
    } else {
        verifier.allow_unauthenticated().build().unwrap()
    };
    let (_, _, cert, key) = pki.leaf(&cfg.cert_names, "fake.outlook.office365.com");
    rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .unwrap()
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
            Io::Gone => Ok(0),
        }
    }
    async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Plain(s) => write_flush(s, buf).await,
            Io::Tls(s) => write_flush(s.as_mut(), buf).await,
            Io::Gone => Ok(()),
        }
    }
}

async fn write_flush<S: AsyncWrite + AsyncRead + Unpin>(
    s: &mut S,
    b: &[u8],
) -> std::io::Result<()> {
    s.write_all(b).await?;
    s.flush().await
}

struct Conn {
    io: Io,
    buf: Vec<u8>,
    /// The server wrote since the last read: the next read starts a new flight.
    replied: bool,
    /// Error replies sent on this connection.
    errors: usize,
    /// The last reply sent.
    last_sent: Option<String>,
    idx: usize,
    state: Arc<Mutex<State>>,
    cfg: Arc<FakeConfig>,
    tls_acceptor: Arc<rustls::ServerConfig>,
}

/// Why a connection loop stopped.
enum Stop {
    Closed,
    Hang,
}

#[derive(Default)]
struct Txn {
    sender: Option<String>,
    mail_params: String,
    recipients: Vec<String>,
    rcpt_params: Vec<String>,
    bdat: Vec<u8>,
    bdat_chunks: Vec<usize>,
}

impl Conn {
    fn rec<R>(&self, f: impl FnOnce(&mut ConnRecord) -> R) -> R {
        let mut s = self.state.lock().unwrap();
        f(&mut s.connections[self.idx])
    }

    /// The action of the first matching rule for this phase (and count it).
    fn rule(&self, phase: Phase, subject: &str) -> Option<Action> {
        let mut s = self.state.lock().unwrap();
        let subject = subject.to_ascii_lowercase();
        for (r, used) in s.rules.iter_mut() {
            if r.phase != phase {
                continue;
            }
            if let Some(m) = &r.matching
                && !subject.contains(m.as_str())
            {
                continue;
            }
            if let Some(t) = r.times
                && *used >= t
            {
                continue;
            }
            *used += 1;
            return Some(r.action.clone());
        }
        None
    }

    async fn more(&mut self) -> Result<(), Stop> {
        let mut chunk = vec![0u8; 65536];
        let n = self.io.read(&mut chunk).await.map_err(|_| Stop::Closed)?;
        if n == 0 {
            return Err(Stop::Closed);
        }
        chunk.truncate(n);
        self.buf.extend_from_slice(&chunk);
        let new_flight = std::mem::take(&mut self.replied);
        self.rec(|r| {
            match r.flights.last_mut() {
                Some(f) if !new_flight => f.extend_from_slice(&chunk),
                _ => r.flights.push(chunk.clone()),
            }
            r.reads.push(chunk)
        });
        Ok(())
    }

    async fn line(&mut self) -> Result<String, Stop> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let l: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Ok(String::from_utf8_lossy(&l[..p]).into_owned());
            }
            self.more().await?;
        }
    }

    async fn send(&mut self, reply: &str) -> Result<(), Stop> {
        if reply.starts_with(['4', '5']) {
            self.errors += 1;
        }
        self.replied = true;
        self.last_sent = Some(reply.to_owned());
        let mut out = reply.replace("\r\n", "\n").replace('\n', "\r\n");
        out.push_str("\r\n");
        self.io
            .write(out.as_bytes())
            .await
            .map_err(|_| Stop::Closed)
    }

    /// Answer `default` unless a rule says otherwise (an empty default: answer only when a
    /// rule fires). Returns the reply sent.
    async fn answer(&mut self, phase: Phase, subject: &str, default: &str) -> Result<String, Stop> {
        let mut action = self.rule(phase, subject);
        if let Some(Action::HoldUntil(needle)) = &action {
            // Held, then answered as the next rule (or the default) says.
            let arrived = self.wait_for(needle.as_bytes()).await?;
            self.rec(|r| r.holds.push(arrived));
            action = self
                .rule(phase, subject)
                .filter(|a| !matches!(a, Action::HoldUntil(_)));
        }
        match action {
            // No default: nothing to say unless a rule says it.
            None if default.is_empty() => Ok(String::new()),
            None => {
                self.send(default).await?;
                Ok(default.to_owned())
            }
            Some(Action::Reply(r)) => {
                self.send(&r).await?;
                Ok(r)
            }
            Some(Action::Hang) => Err(Stop::Hang),
            Some(Action::Drop) => Err(Stop::Closed),
            Some(Action::ReplyAndClose(r)) => {
                self.send(&r).await?;
                Err(Stop::Closed)
            }
            Some(Action::HoldUntil(_)) => unreachable!("filtered above"),
        }
    }

    /// Read until the unread input contains `needle` (true) or 2 s passed (false).
    async fn wait_for(&mut self, needle: &[u8]) -> Result<bool, Stop> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !self.buf.windows(needle.len()).any(|w| w == needle) {
            match tokio::time::timeout_at(deadline, self.more()).await {
                Ok(r) => r?,
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    async fn run(mut self) {
        match self.session().await {
            Err(Stop::Hang) => {
                // Keep the socket open and never answer.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            _ => {
                self.io = Io::Gone;
            }
        }
    }

    async fn session(&mut self) -> Result<(), Stop> {
        let host = "fake.outlook.office365.com";
        self.answer(
            Phase::Greeting,
            "",
            &format!(
                "220 {host} Microsoft ESMTP MAIL Service ready at Fri, 27 Nov 2026 21:00:00 +0000"
            ),
        )
        .await?;
        let mut tls = false;
        let mut authed: Option<String> = None;
        let mut txn = Txn::default();
        loop {
            let line = self.line().await?;
            self.rec(|r| r.commands.push(line.clone()));
            if self.cfg.error_limit.is_some_and(|n| self.errors >= n) {
                self.send(&format!("421 4.7.0 {host} Error: too many errors"))
                    .await?;
                return Err(Stop::Closed);
            }
            let upper = line.to_ascii_uppercase();
            let verb = upper.split_whitespace().next().unwrap_or("").to_owned();
            match verb.as_str() {
                "EHLO" | "HELO" => {
                    let name = line[4..].trim().to_owned();
                    self.rec(|r| r.helo.push(name.clone()));
                    txn = Txn::default();
                    let kws = if tls {
                        self.cfg
                            .ehlo_after_tls
                            .clone()
                            .unwrap_or_else(|| self.cfg.default_ehlo(true))
                    } else {
                        self.cfg
                            .ehlo_before_tls
                            .clone()
                            .unwrap_or_else(|| self.cfg.default_ehlo(false))
                    };
                    let mut reply = vec![format!("{host} Hello [127.0.0.1]")];
                    reply.extend(kws);
                    let n = reply.len();
                    let text: Vec<String> = reply
                        .into_iter()
                        .enumerate()
                        .map(|(i, l)| format!("250{}{l}", if i + 1 == n { ' ' } else { '-' }))
                        .collect();
                    self.answer(Phase::Ehlo, &name, &text.join("\r\n")).await?;
                }
                "STARTTLS" => {
                    if tls || !self.cfg.starttls {
                        self.send("503 5.5.2 Send hello first / TLS not available")
                            .await?;
                        continue;
                    }
                    let sent = self
                        .answer(Phase::StartTls, "", "220 2.0.0 SMTP server ready")
                        .await?;
                    if !sent.starts_with("220") {
                        // Refused (e.g. 454): the session goes on in clear text.
                        continue;
                    }
                    let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
                        return Err(Stop::Closed);
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(self.tls_acceptor.clone());
                    match acceptor.accept(tcp).await {
                        Ok(s) => {
                            let (_, c) = s.get_ref();
                            let version = c.protocol_version().map(|v| format!("{v:?}"));
                            let cert = c
                                .peer_certificates()
                                .and_then(|cs| cs.first())
                                .map(|c| c.as_ref().to_vec());
                            self.rec(|r| {
                                r.tls_version = version;
                                r.client_cert = cert;
                                r.tls_from_read = Some(r.reads.len());
                                r.tls_from_flight = Some(r.flights.len());
                            });
                            self.io = Io::Tls(Box::new(s));
                            self.buf.clear();
                            tls = true;
                            txn = Txn::default();
                        }
                        Err(e) => {
                            self.rec(|r| r.tls_error = Some(e.to_string()));
                            return Err(Stop::Closed);
                        }
                    }
                }
                "AUTH" => {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let mech = words
                        .get(1)
                        .map(|m| m.to_ascii_uppercase())
                        .unwrap_or_default();
                    let offered = tls && self.cfg.flavour == Flavour::Submission;
                    if !offered {
                        self.send("503 5.5.1 AUTH not available").await?;
                        continue;
                    }
                    let (user, secret, decoded) = match mech.as_str() {
                        "XOAUTH2" => {
                            let ir = match words.get(2) {
                                Some(ir) => ir.to_string(),
                                None => {
                                    self.send("334 ").await?;
                                    self.line().await?
                                }
                            };
                            let raw = B64.decode(ir.trim()).unwrap_or_default();
                            let s = String::from_utf8_lossy(&raw).into_owned();
                            let user = s
                                .split('\x01')
                                .find_map(|p| p.strip_prefix("user="))
                                .unwrap_or("")
                                .to_owned();
                            let tok = s
                                .split('\x01')
                                .find_map(|p| p.strip_prefix("auth=Bearer "))
                                .unwrap_or("")
                                .to_owned();
                            (user, tok, s)
                        }
                        "LOGIN" => {
                            self.send("334 VXNlcm5hbWU6").await?;
                            let u = self.line().await?;
                            self.send("334 UGFzc3dvcmQ6").await?;
                            let p = self.line().await?;
                            let u =
                                String::from_utf8_lossy(&B64.decode(u.trim()).unwrap_or_default())
                                    .into_owned();
                            let p =
                                String::from_utf8_lossy(&B64.decode(p.trim()).unwrap_or_default())
                                    .into_owned();
                            (u.clone(), p.clone(), format!("LOGIN {u} {p}"))
                        }
                        "PLAIN" => {
                            let raw = B64.decode(words.get(2).unwrap_or(&"")).unwrap_or_default();
                            let s = String::from_utf8_lossy(&raw).into_owned();
                            let parts: Vec<&str> = s.split('\0').collect();
                            let u = parts.get(1).unwrap_or(&"").to_string();
                            let p = parts.get(2).unwrap_or(&"").to_string();
                            (u.clone(), p.clone(), format!("PLAIN {u} {p}"))
                        }
                        _ => {
                            self.send("504 5.7.4 Unrecognized authentication type")
                                .await?;
                            continue;
                        }
                    };
                    self.rec(|r| r.auth.push(decoded));
                    let ok = self
                        .cfg
                        .users
                        .iter()
                        .any(|(u, s)| u.eq_ignore_ascii_case(&user) && *s == secret);
                    if !ok && mech == "XOAUTH2" && self.cfg.xoauth2_challenge {
                        self.send("334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIn0=")
                            .await?;
                        let _ = self.line().await?;
                    }
                    let default = if ok {
                        "235 2.7.0 Authentication successful"
                    } else {
                        "535 5.7.3 Authentication unsuccessful [SN4PR0201CA0001.namprd02.prod.outlook.com]"
                    };
                    let sent = self.answer(Phase::Auth, &user, default).await?;
                    if sent.starts_with("235") {
                        authed = Some(user.clone());
                        self.rec(|r| r.authenticated = Some(user));
                    }
                }
                "MAIL" => {
                    let Some((addr, params)) = parse_path(&line, "MAIL FROM:") else {
                        self.send("501 5.5.4 Invalid arguments").await?;
                        continue;
                    };
                    if txn.sender.is_some() {
                        self.send("503 5.5.1 Sender already specified").await?;
                        continue;
                    }
                    let default = if self.cfg.flavour == Flavour::Submission && authed.is_none() {
                        "530 5.7.57 Client not authenticated to send mail. Error: 530 5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM"
                    } else if self.cfg.send_as_only
                        && authed
                            .as_deref()
                            .is_some_and(|u| !u.eq_ignore_ascii_case(&addr))
                    {
                        "550 5.7.60 SMTP; Client does not have permissions to send as this sender"
                    } else {
                        "250 2.1.0 Sender OK"
                    };
                    let sent = self.answer(Phase::Mail, &addr, default).await?;
                    if sent.starts_with('2') {
                        txn.sender = Some(addr);
                        txn.mail_params = params;
                    }
                }
                "RCPT" => {
                    let Some((addr, params)) = parse_path(&line, "RCPT TO:") else {
                        self.send("501 5.5.4 Invalid arguments").await?;
                        continue;
                    };
                    if txn.sender.is_none() {
                        self.send("503 5.5.1 Need mail command").await?;
                        continue;
                    }
                    if self
                        .cfg
                        .max_recipients
                        .is_some_and(|n| txn.recipients.len() >= n)
                    {
                        self.send("452 4.5.3 Too many recipients").await?;
                        continue;
                    }
                    let sent = self
                        .answer(Phase::Rcpt, &addr, "250 2.1.5 Recipient OK")
                        .await?;
                    if sent.starts_with('2') {
                        txn.recipients.push(addr);
                        txn.rcpt_params.push(params);
                    }
                }
                "DATA" => {
                    let sender = txn.sender.clone().unwrap_or_default();
                    if txn.sender.is_none() {
                        self.send("503 5.5.1 Need mail command").await?;
                        continue;
                    }
                    if txn.recipients.is_empty() {
                        self.send("503 5.5.1 Need rcpt command").await?;
                        continue;
                    }
                    let sent = self
                        .answer(
                            Phase::Data,
                            &sender,
                            "354 Start mail input; end with <CRLF>.<CRLF>",
                        )
                        .await?;
                    if !sent.starts_with("354") {
                        continue;
                    }
                    let data = self.read_data(&sender).await?;
                    self.finish(&mut txn, data, false).await?;
                }
                "BDAT" => {
                    let words: Vec<&str> = upper.split_whitespace().collect();
                    let n: usize = words.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                    let last = words.get(2) == Some(&"LAST");
                    let sender = txn.sender.clone().unwrap_or_default();
                    let first = txn.bdat_chunks.is_empty();
                    let valid = txn.sender.is_some() && !txn.recipients.is_empty();
                    if first
                        && valid
                        && let Some(a) = self.rule(Phase::MidData, &sender)
                    {
                        match a {
                            Action::Hang => return Err(Stop::Hang),
                            Action::Drop => return Err(Stop::Closed),
                            Action::Reply(_) | Action::ReplyAndClose(_) | Action::HoldUntil(_) => {}
                        }
                    }
                    // RFC 3030: the octets are read whatever the reply will be.
                    while self.buf.len() < n {
                        self.more().await?;
                    }
                    let chunk: Vec<u8> = self.buf.drain(..n).collect();
                    txn.bdat.extend_from_slice(&chunk);
                    txn.bdat_chunks.push(n);
                    if !valid {
                        let reply = if txn.sender.is_none() {
                            "503 5.5.1 Need mail command"
                        } else {
                            "554 5.5.1 No valid recipients"
                        };
                        self.send(reply).await?;
                        txn = Txn::default();
                        continue;
                    }
                    if first {
                        let sent = self.answer(Phase::Data, &sender, "").await?;
                        if !sent.is_empty() {
                            // The content refused at its first chunk: the transaction ends.
                            txn = Txn::default();
                            continue;
                        }
                    }
                    if last {
                        let data = std::mem::take(&mut txn.bdat);
                        self.finish(&mut txn, data, true).await?;
                    } else {
                        self.send(&format!("250 2.0.0 BDAT chunk of {n} bytes received"))
                            .await?;
                    }
                }
                "RSET" => {
                    txn = Txn::default();
                    self.answer(Phase::Rset, "", "250 2.0.0 Resetting").await?;
                }
                "NOOP" => self.send("250 2.0.0 OK").await?,
                "QUIT" => {
                    self.send("221 2.0.0 Service closing transmission channel")
                        .await?;
                    return Ok(());
                }
                _ => self.send("500 5.3.3 Unrecognized command").await?,
            }
        }
    }

    /// Read DATA up to CRLF.CRLF and un-stuff it (linear in the message size).
    async fn read_data(&mut self, sender: &str) -> Result<Vec<u8>, Stop> {
        let mut out = Vec::new();
        let mut first = true;
        loop {
            let mut pos = 0;
            while let Some(rel) = self.buf[pos..].windows(2).position(|w| w == b"\r\n") {
                let line = &self.buf[pos..pos + rel + 2];
                if line == b".\r\n" {
                    self.buf.drain(..pos + rel + 2);
                    return Ok(out);
                }
                out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                pos += rel + 2;
            }
            self.buf.drain(..pos);
            self.more().await?;
            if first {
                first = false;
                match self.rule(Phase::MidData, sender) {
                    Some(Action::Hang) => return Err(Stop::Hang),
                    Some(Action::Drop) => return Err(Stop::Closed),
                    _ => {}
                }
            }
        }
    }

    async fn finish(&mut self, txn: &mut Txn, data: Vec<u8>, bdat: bool) -> Result<(), Stop> {
        let sender = txn.sender.clone().unwrap_or_default();
        let mut msg = Received {
            connection: self.idx,
            sender: sender.clone(),
            mail_params: txn.mail_params.clone(),
            recipients: txn.recipients.clone(),
            rcpt_params: txn.rcpt_params.clone(),
            data,
            via_bdat: bdat,
            bdat_chunks: txn.bdat_chunks.clone(),
            final_reply: String::new(),
        };
        *txn = Txn::default();
        self.last_sent = None;
        let result = self
            .answer(
                Phase::DataEnd,
                &sender,
                "250 2.0.0 OK <fake@outlook.office365.com> [Hostname=FAKE0001.prod.outlook.com] Queued mail for delivery",
            )
            .await;
        // A reply sent before closing (`ReplyAndClose`) counts.
        msg.final_reply = match &result {
            Ok(r) => r.clone(),
            Err(_) => self.last_sent.take().unwrap_or_else(|| "(no reply)".into()),
        };
        self.state.lock().unwrap().messages.push(msg);
        result.map(|_| ())
    }
}

/// "MAIL FROM:<a@b> SIZE=1" → ("a@b", "SIZE=1").
fn parse_path(line: &str, prefix: &str) -> Option<(String, String)> {
    if line.len() < prefix.len() || !line[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = line[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some((rest[..end].to_owned(), rest[end + 1..].trim().to_owned()))
}
