//! The delivery seam: a prepared message and its envelope in, per-recipient results out.
//!
//! Owns: the [`Transport`] trait (an open, ready-to-send connection to one host of an
//! endpoint), the [`Connector`] trait (opens transports for one profile and endpoint:
//! credentials and TLS set up once, hosts tried in order), the transport-neutral [`Problem`]
//! and [`Options`], and the one place that picks the implementation for an endpoint
//! ([`connector`]). Each implementation is one file: [`smtp`] (our SMTP session) and
//! [`graph`] (Microsoft Graph sendMail, and the `fallback = "graph"` wrapper of smtp);
//! [`batch`] splits a message's recipients into transactions for every caller of the seam.
//! Must not: retry across rounds, queue, write files, decide exit codes for the user or word
//! explanations (deliver, the queue runner and explain do), or read argv or the config file
//! beyond the `Profile`/`Config` values it is handed.
//!
//! # Use
//!
//! ```ignore
//! let mut c = transport::connector(config, profile, &endpoint, &opts, &sender).await?;
//! let mut t = transport::open_any(c.as_mut(), &endpoint).await?;   // or c.open(host)
//! let result = t.send(&message, &message.envelope).await?;         // MessageResult
//! t.close().await;
//! ```
//!
//! Between two messages on one transport call `reset` (a no-op where nothing needs resetting).
//! After `send` or `reset` returned an error, `is_open` says whether the transport can still be
//! used; if not, drop it and open another. A caller with several messages for one connection
//! may `start` the next before the last one's answers are read and `finish` them in order
//! (the queue runner keeps two in flight); `send` only when none is started.

pub mod batch;
pub mod graph;
pub mod smtp;

use std::future::Future;
use std::pin::Pin;

use crate::config::{Config, Fallback, Mode, Profile};
use crate::exit::{Exit, Failure};
use crate::explain;
use crate::message::{Envelope, Prepared};
use crate::route::{Endpoint, Host};
use crate::smtp::Sink;
use crate::status::{Reply, Step};

pub use crate::status::MessageResult;

/// A boxed future the transports return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Options for one delivery.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// -v: print the (redacted) transcript.
    pub verbose: u8,
    /// Where the transcript and warnings go (None: stderr). Tests capture them here.
    pub stderr: Option<Sink>,
}

impl Options {
    /// Where warnings go.
    pub fn sink(&self) -> Sink {
        self.stderr.clone().unwrap_or_else(Sink::stderr)
    }
    /// Where the transcript goes at -v (None without -v).
    pub fn transcript(&self) -> Option<Sink> {
        (self.verbose > 0).then(|| self.sink())
    }
}

/// Something that stopped the message (not a single recipient) from being delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Worth retrying (connection trouble, timeout, 4xx).
    pub transient: bool,
    /// The exit code this problem means when it is final.
    pub exit: Exit,
    /// Where in the dialogue it happened.
    pub step: Option<Step>,
    /// The host involved.
    pub host: Option<String>,
    /// The server's reply, when there was one.
    pub reply: Option<Reply>,
    /// One line for the user (without the "m365send: " prefix), quoting the reply.
    pub what: String,
    /// A line shown after the explanation, e.g. what a refused OAuth token says about its
    /// permissions. Never a secret.
    pub note: Option<String>,
}

impl Problem {
    /// A local failure (credentials, configuration).
    pub fn local(f: Failure) -> Problem {
        Problem {
            transient: f.exit == Exit::TempFail,
            exit: f.exit,
            step: None,
            host: None,
            reply: None,
            what: f.message,
            note: None,
        }
    }

    /// A server reply refusing `step` (for a recipient: `subject` is the address).
    pub fn reply(step: Step, reply: &Reply, host: &str, subject: Option<&str>) -> Problem {
        let transient = reply.is_transient();
        let what = match step {
            Step::Mail => format!(
                "the sender{}",
                subject.map(|s| format!(" <{s}>")).unwrap_or_default()
            ),
            Step::Rcpt => format!(
                "recipient{}",
                subject.map(|s| format!(" <{s}>")).unwrap_or_default()
            ),
            Step::Auth => "the login".to_owned(),
            Step::Data | Step::DataEnd => "the message".to_owned(),
            Step::Greeting | Step::Ehlo | Step::Connect => "the connection".to_owned(),
            other => other.to_string(),
        };
        let verb = if transient {
            "temporarily refused"
        } else {
            "refused"
        };
        Problem {
            transient,
            exit: explain::exit_for(reply),
            step: Some(step),
            host: Some(host.to_owned()),
            reply: Some(reply.clone()),
            what: format!("{} {verb} {what} ({reply})", server_name(host)),
            note: None,
        }
    }
}

/// How a host is named to the user: "Microsoft 365" for Microsoft's own hosts.
pub fn server_name(host: &str) -> String {
    if crate::smtp::is_microsoft_host(host) || is_graph_host(host) {
        "Microsoft 365".to_owned()
    } else {
        format!("the server {host}")
    }
}

/// Microsoft Graph's hosts (global, US Government, 21Vianet).
fn is_graph_host(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    [
        "graph.microsoft.com",
        "graph.microsoft.us",
        "microsoftgraph.chinacloudapi.cn",
    ]
    .iter()
    .any(|d| h == *d || h.ends_with(&format!(".{d}")))
}

/// An open connection to one host, ready to send messages.
pub trait Transport: Send {
    /// The host this transport talks to (for reports and the log line).
    fn host(&self) -> &str;
    /// Whether the connection can still be used (after an error of `send` or `reset`).
    fn is_open(&self) -> bool;
    /// Send `message` to `envelope`'s recipients (the message's own envelope, or the part of
    /// it still to be delivered). `Ok` carries the server's answer per recipient, including
    /// refusals; `Err` is a failure of the whole try (connection lost, timeout, a check
    /// before anything was sent).
    fn send<'a>(
        &'a mut self,
        message: &'a Prepared,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<MessageResult, Problem>>;
    /// `send` for the connection's last message, then `close`: a transport that can end the
    /// connection in the same round trip as the message does so (SMTP pipelines QUIT).
    fn send_and_close<'a>(
        self: Box<Self>,
        message: &'a Prepared,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<MessageResult, Problem>>
    where
        Self: 'a,
    {
        Box::pin(async move {
            let mut t = self;
            let r = t.send(message, envelope).await;
            t.close().await;
            r
        })
    }
    /// Start sending `message` to `envelope`'s recipients without waiting for the answers to
    /// the messages started before it, where the connection can (SMTP with PIPELINING and
    /// CHUNKING, a body small enough for one flight). `false`: nothing was sent — `finish`
    /// the started messages, then `send` this one. Default: never.
    fn start<'a>(
        &'a mut self,
        _message: &'a Prepared,
        _envelope: &'a Envelope,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
    /// The answers to the oldest message `start`ed, as `send` gives them.
    fn finish(&mut self) -> BoxFuture<'_, Result<MessageResult, Problem>> {
        Box::pin(async {
            Err(Problem::local(Failure::new(
                Exit::Software,
                "no message was started on this connection",
            )))
        })
    }
    /// Make the transport ready for the next message. An error closes it.
    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>>;
    /// End the connection politely; errors are ignored.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Opens transports for one profile and endpoint.
pub trait Connector: Send {
    /// Connect to one host of the endpoint and authenticate.
    fn open<'a>(&'a mut self, host: &'a Host)
    -> BoxFuture<'a, Result<Box<dyn Transport>, Problem>>;
    /// Whether the last `open` used TLS, and the authentication it used or tried (also when
    /// `open` failed at authentication), for the log line.
    fn last_session(&self) -> (bool, Option<&'static str>);
}

/// Start loading what every transport needs and takes a while to read (the system's CA
/// certificates) on another thread, so that it overlaps with reading the message.
pub fn preload() {
    crate::smtp::preload_system_roots();
}

/// The connector for `endpoint`: credentials and TLS settings once. `sender` is the envelope
/// sender the route was resolved for (it may pick the EHLO name).
pub async fn connector<'a>(
    config: &'a Config,
    profile: &'a Profile,
    endpoint: &'a Endpoint,
    opts: &'a Options,
    sender: &str,
) -> Result<Box<dyn Connector + 'a>, Problem> {
    if endpoint.mode == Mode::Graph {
        let c = graph::GraphConnector::new(
            config,
            profile,
            opts,
            endpoint.tls_min,
            endpoint.ca_file.clone(),
        )?;
        return Ok(Box::new(c));
    }
    let c = smtp::SmtpConnector::new(config, profile, endpoint, opts, sender).await?;
    if endpoint.mode == Mode::Submit && profile.fallback == Fallback::Graph {
        let f = graph::FallbackConnector::new(c, config, profile, endpoint, opts)?;
        return Ok(Box::new(f));
    }
    Ok(Box::new(c))
}

/// The first host (in endpoint order) that connects and authenticates. On failure, the
/// problem of the last host tried (a permanent problem stops at once).
pub async fn open_any(
    connector: &mut dyn Connector,
    endpoint: &Endpoint,
) -> Result<Box<dyn Transport>, Problem> {
    let mut last = None;
    for host in &endpoint.hosts {
        match connector.open(host).await {
            Ok(t) => return Ok(t),
            Err(p) if p.transient => last = Some(p),
            Err(p) => return Err(p),
        }
    }
    Err(last.unwrap_or_else(|| {
        Problem::local(Failure::new(
            Exit::NoHost,
            format!("no host to connect to ({})", endpoint.source),
        ))
    }))
}
