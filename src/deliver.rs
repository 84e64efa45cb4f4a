//! Delivery: from a prepared message and an endpoint to an outcome the user can act on.
//!
//! Owns: trying hosts in order, in-process retries with backoff and jitter, the 5.7.3
//! re-authentication with a replacement token (once per connector), per-recipient results, the exit code, the
//! explanation printed on stderr, the dead letter and the per-message log line (through
//! `report`). Must not: parse replies itself (smtp does) or word explanations (explain does).
//!
//! # API for callers
//!
//! * `deliver(config, profile, message, endpoint, opts) -> Result<(), Failure>` — the
//!   sendmail path: `attempt`, the per-message log line, then on failure write the dead
//!   letter and return a `Failure` whose message is the user-facing report (one line quoting
//!   the server reply, then the explanation, then who did and did not get the message).
//! * `log_outcome(config, profile, message, &outcome, exit, verbose)` — the per-message log
//!   line (`report::log_line`: syslog, `log.file`, or stderr at -v). `deliver` calls it; a
//!   caller of `attempt` that decides the final outcome itself (queueing a temporary failure,
//!   the queue runner) calls it once per message with the exit code it reports.
//! * `attempt(config, profile, message, endpoint, opts) -> Outcome` — the same delivery with
//!   in-process retries, but nothing printed (except the `-v` transcript and the basic-auth
//!   warning) and nothing written. The queue runner and the `-bs` server use it:
//!   `outcome.is_success()`, `outcome.is_transient()` (→ keep it in the queue instead of a
//!   dead letter), `outcome.exit()`, `outcome.report(..)`, `outcome.final_reply()` (the
//!   real server reply to relay to an SMTP client).
//! * `Connector` — opens authenticated sessions (hosts in order, credentials, and after
//!   535 5.7.3 on a cached token one replacement through `auth::credentials_replacing`, so
//!   many processes refused at once make one token request) so the queue runner can reuse
//!   one `smtp::Session` for several messages: `c.last_session()` gives TLS and the AUTH
//!   mechanism for the log line (`outcome.tls`, `outcome.auth`);
//!   `let mut c = Connector::new(config, profile, endpoint, opts).await?;`
//!   `let (mut session, host) = c.open_any().await?;` then for each message
//!   `let r = session.send_message(&envelope, &body, flags).await;` and
//!   `outcome.apply(&result, &host)` on `Ok(result)`, `outcome.fail(Problem::session(&e,
//!   &host))` on `Err(e)` (then drop the session and reconnect), finally `session.quit()`.
//!   `Outcome::new(&envelope.recipients)` starts one; `outcome.pending` says who is left.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt as _;

use crate::auth::{self, Credentials};
use crate::config::{Config, Profile};
use crate::exit::{Exit, Failure};
use crate::explain::{self, Context};
use crate::message::Prepared;
use crate::route::{AuthKind, Endpoint, Host};
use crate::smtp::{
    MessageFlags, MessageResult, Reply, Session, SessionConfig, SessionError, Sink, Step,
    TlsFailure, TlsSettings, client_config, hello_name, is_microsoft_host,
};

/// Options for one delivery.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// -v: print the (redacted) SMTP transcript.
    pub verbose: u8,
    /// Where the transcript and warnings go (None: stderr). Tests capture them here.
    pub stderr: Option<Sink>,
}

impl Options {
    fn sink(&self) -> Sink {
        self.stderr.clone().unwrap_or_else(Sink::stderr)
    }
    fn transcript(&self) -> Option<Sink> {
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

    /// A session failure on `host`.
    pub fn session(e: &SessionError, host: &str) -> Problem {
        if let SessionError::Rejected { step, reply } = e {
            return Problem::reply(*step, reply, host, None);
        }
        let exit = match e {
            SessionError::Resolve { .. } => Exit::NoHost,
            _ if e.is_transient() => Exit::TempFail,
            SessionError::StartTlsNotOffered => Exit::Unavailable,
            SessionError::Tls { kind, .. } => match kind {
                TlsFailure::Io => Exit::TempFail,
                TlsFailure::Certificate | TlsFailure::Protocol => Exit::Unavailable,
            },
            SessionError::AuthNotOffered { .. } | SessionError::AuthWithoutTls => Exit::Config,
            SessionError::Smtputf8NotOffered | SessionError::TooLarge { .. } => Exit::DataErr,
            SessionError::Body(_) => Exit::IoErr,
            _ => Exit::Unavailable,
        };
        // A DNS "try again" is transient; "no such host" is not.
        let transient = match e {
            SessionError::Resolve { reason, .. } => {
                reason.contains("Temporary failure") || reason.contains("timed out")
            }
            _ => e.is_transient(),
        };
        let exit = if transient { Exit::TempFail } else { exit };
        Problem {
            transient,
            exit,
            step: e.step(),
            host: Some(host.to_owned()),
            reply: None,
            what: format!("{host}: {e}"),
            note: None,
        }
    }
}

fn server_name(host: &str) -> String {
    if is_microsoft_host(host) {
        "Microsoft 365".to_owned()
    } else {
        format!("the server {host}")
    }
}

/// The result of delivering one message (possibly after several tries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Recipients that got the message.
    pub delivered: Vec<String>,
    /// Recipients refused for good at RCPT, with the reply.
    pub refused: Vec<(String, Reply)>,
    /// Recipients still without the message; `problem` says why.
    pub pending: Vec<String>,
    /// The last problem that stopped the message (or pending recipients).
    pub problem: Option<Problem>,
    /// The host that accepted the message, or the last one tried.
    pub host: Option<String>,
    /// The server's reply after the message data, when the message was accepted.
    pub accepted_reply: Option<Reply>,
    /// Connections tried.
    pub attempts: u32,
    /// Time spent in `attempt` (for the per-message log line).
    pub elapsed: Duration,
    /// The last session used TLS (for the log line).
    pub tls: bool,
    /// The AUTH mechanism of the last session ("XOAUTH2", "PLAIN", "LOGIN"), None without AUTH.
    pub auth: Option<String>,
}

impl Outcome {
    pub fn new(recipients: &[String]) -> Outcome {
        Outcome {
            pending: recipients.to_vec(),
            ..Outcome::default()
        }
    }

    /// Every recipient got the message.
    pub fn is_success(&self) -> bool {
        self.pending.is_empty() && self.refused.is_empty()
    }

    /// Recipients are left and the reason is temporary: queue the message (for `pending`)
    /// rather than write a dead letter.
    pub fn is_transient(&self) -> bool {
        !self.pending.is_empty() && self.problem.as_ref().is_none_or(|p| p.transient)
    }

    /// The exit code (sysexits): 0 when all delivered; 75 when recipients are left for a
    /// temporary reason; else the class of the problem, or of the first refused recipient.
    pub fn exit(&self) -> Exit {
        if self.is_success() {
            return Exit::Ok;
        }
        if !self.pending.is_empty() {
            return match &self.problem {
                Some(p) if !p.transient => p.exit,
                _ => Exit::TempFail,
            };
        }
        self.refused
            .first()
            .map(|(_, r)| explain::exit_for(r))
            .unwrap_or(Exit::Software)
    }

    /// The reply that decided the outcome: the problem's reply, else the first refusal,
    /// else the reply accepting the message. For the `-bs` server.
    /// One line for logs and the dead letter's failure header: the problem as worded for the
    /// user, else the final reply.
    pub fn summary_line(&self) -> String {
        match (&self.problem, self.final_reply()) {
            (Some(p), _) => p.what.clone(),
            (None, Some(r)) => r.to_string(),
            (None, None) => "not delivered".to_owned(),
        }
    }

    pub fn final_reply(&self) -> Option<&Reply> {
        if !self.pending.is_empty()
            && let Some(r) = self.problem.as_ref().and_then(|p| p.reply.as_ref())
        {
            return Some(r);
        }
        if self.delivered.is_empty()
            && let Some((_, r)) = self.refused.first()
        {
            return Some(r);
        }
        self.accepted_reply.as_ref()
    }

    /// Merge the server's answers for one try (to the recipients in `pending`).
    pub fn apply(&mut self, result: &MessageResult, host: &str) {
        self.host = Some(host.to_owned());
        if let Some((step, reply)) = result.message_failure() {
            self.problem = Some(Problem::reply(step, reply, host, None));
            // A refused sender says nothing about recipients; keep them pending.
            if step == Step::Mail {
                return;
            }
        }
        let delivered = result.delivered();
        let mut still = Vec::new();
        for (addr, reply) in &result.recipients {
            if reply.is_positive() {
                if delivered {
                    self.delivered.push(addr.clone());
                } else {
                    still.push(addr.clone());
                }
            } else if reply.is_permanent() {
                self.refused.push((addr.clone(), reply.clone()));
            } else {
                still.push(addr.clone());
                self.problem = Some(Problem::reply(Step::Rcpt, reply, host, Some(addr)));
            }
        }
        // Recipients not in this try stay pending as they were.
        let tried: Vec<&String> = result.recipients.iter().map(|(a, _)| a).collect();
        let untouched: Vec<String> = self
            .pending
            .iter()
            .filter(|a| !tried.contains(a))
            .cloned()
            .collect();
        still.extend(untouched);
        self.pending = still;
        if delivered {
            self.accepted_reply = result.data.as_ref().map(|(_, r)| r.clone());
            if self.pending.is_empty() {
                self.problem = None;
            }
        }
    }

    /// Record a failure of the whole try.
    pub fn fail(&mut self, problem: Problem) {
        if let Some(h) = &problem.host {
            self.host = Some(h.clone());
        }
        self.problem = Some(problem);
    }

    /// The report for the user: the first line says what happened quoting the reply, then
    /// the explanation, then who did and did not get the message. No "m365send: " prefix.
    pub fn report(&self, profile: &Profile, message: &Prepared) -> String {
        let mut out: Vec<String> = Vec::new();
        let explain = |out: &mut Vec<String>, reply: &Reply, c: Context<'_>| {
            if let Some(e) = explain::explain_reply(reply, &c) {
                out.push(format!("  {}", e.meaning));
                out.push(format!("  {}", e.advice));
            }
        };
        if let Some(p) = self.problem.as_ref().filter(|_| !self.pending.is_empty()) {
            let mut first = p.what.clone();
            if p.step == Some(Step::Mail) && p.reply.is_some() {
                first = first.replacen(
                    "the sender (",
                    &format!("the sender <{}> (", message.envelope.sender),
                    1,
                );
            }
            out.push(first);
            if let Some(r) = &p.reply {
                explain(&mut out, r, context(profile, message, p.host.as_deref()));
            }
            if let Some(n) = &p.note {
                out.push(format!("  {n}"));
            }
            if p.transient {
                out.push(format!(
                    "  still failing after {} attempt{}",
                    self.attempts,
                    if self.attempts == 1 { "" } else { "s" }
                ));
            }
        }
        for (i, (addr, reply)) in self.refused.iter().enumerate() {
            let host = self.host.as_deref().unwrap_or("the server");
            if out.is_empty() && i == 0 {
                out.push(format!(
                    "{} refused recipient <{addr}> ({reply})",
                    server_name(host)
                ));
            } else {
                out.push(format!("  refused recipient <{addr}> ({reply})"));
            }
            let mut c = context(profile, message, Some(host));
            c.recipient = Some(addr);
            explain(&mut out, reply, c);
        }
        if !self.delivered.is_empty() && !self.is_success() {
            out.push(format!("  delivered to: {}", self.delivered.join(", ")));
        }
        let not: Vec<&str> = self
            .pending
            .iter()
            .map(String::as_str)
            .chain(self.refused.iter().map(|(a, _)| a.as_str()))
            .collect();
        if !not.is_empty() && !self.delivered.is_empty() {
            out.push(format!("  NOT delivered to: {}", not.join(", ")));
        }
        if out.is_empty() {
            // Never "delivered" for a message that was not: say so even without a reason.
            out.push(if self.is_success() {
                "delivered".to_owned()
            } else {
                format!("not delivered: {}", self.summary_line())
            });
        }
        out.join("\n")
    }
}

/// What the explanation may say about this user's situation.
fn context<'c>(profile: &'c Profile, message: &'c Prepared, host: Option<&'c str>) -> Context<'c> {
    Context {
        sender: Some(message.envelope.sender.as_str()),
        host,
        ..auth::explain_context(profile)
    }
}

/// Opens authenticated sessions for one profile and endpoint (see the module doc).
pub struct Connector<'a> {
    config: &'a Config,
    profile: &'a Profile,
    endpoint: &'a Endpoint,
    opts: &'a Options,
    tls: Arc<rustls::ClientConfig>,
    creds: Credentials,
    helo: String,
    refreshed: bool,
    warned: bool,
    /// The last session: TLS on, and the AUTH mechanism tried (for the log line).
    last_tls: bool,
    last_auth: Option<&'static str>,
}

impl<'a> Connector<'a> {
    /// Credentials and the TLS configuration, once. `sender` picks the EHLO name when the
    /// profile has none and the host name is not qualified.
    pub async fn new(
        config: &'a Config,
        profile: &'a Profile,
        endpoint: &'a Endpoint,
        opts: &'a Options,
        sender: &str,
    ) -> Result<Connector<'a>, Problem> {
        // The route decides whether this endpoint authenticates at all (relay and direct
        // send do not, whatever the profile's auth settings say).
        let creds = if endpoint.auth == AuthKind::None {
            Credentials::None
        } else {
            auth::credentials(config, profile, false)
                .await
                .map_err(Problem::local)?
        };
        let tls = client_config(&TlsSettings {
            min_version: endpoint.tls_min,
            ca_file: endpoint.ca_file.clone(),
            client_cert: endpoint.client_cert.clone(),
        })
        .map_err(|e| Problem::local(Failure::config(e.to_string())))?;
        Ok(Connector {
            config,
            profile,
            endpoint,
            opts,
            tls,
            creds,
            helo: hello_name(profile.helo.as_deref(), sender),
            refreshed: false,
            warned: false,
            last_tls: false,
            last_auth: None,
        })
    }

    /// Connect to one host and authenticate.
    pub async fn open(&mut self, host: &Host) -> Result<Session, Problem> {
        let t = &self.profile.timeouts;
        let cfg = SessionConfig {
            host: host.name.clone(),
            port: host.port,
            helo: self.helo.clone(),
            tls: self.endpoint.tls,
            tls_config: self.tls.clone(),
            connect_timeout: t.connect(),
            command_timeout: t.command(),
            data_end_timeout: t.data_end(),
            chunking: self.profile.chunking.enabled(),
            transcript: self.opts.transcript(),
        };
        if !self.warned
            && let Some(w) = basic_auth_warning(&self.creds, &host.name, &self.profile.name)
        {
            self.warned = true;
            self.opts.sink().line(&w);
        }
        self.last_tls = false;
        self.last_auth = None;
        let mut session = Session::connect(cfg)
            .await
            .map_err(|e| Problem::session(&e, &host.name))?;
        self.last_tls = session.is_tls();
        self.last_auth = self.auth_mechanism(&session);
        match session.authenticate(&self.creds).await {
            Ok(_) => Ok(session),
            Err(e) if needs_fresh_token(&self.creds, &e) && !self.refreshed => {
                // A cached token refused with 5.7.3: replace it once. `credentials_replacing`
                // takes a token another process already fetched after the same refusal, so
                // 50 processes refused at once make one token request.
                self.refreshed = true;
                let rejected = match &self.creds {
                    Credentials::XOAuth2 { token, .. } => token.clone(),
                    _ => return Err(Problem::session(&e, &host.name)),
                };
                tracing::debug!(host = %host.name, "535 5.7.3 with a cached token; getting another");
                self.creds = auth::credentials_replacing(self.config, self.profile, &rejected)
                    .await
                    .map_err(Problem::local)?;
                match session.authenticate(&self.creds).await {
                    Ok(_) => Ok(session),
                    Err(e) => Err(self.auth_problem(&e, &host.name)),
                }
            }
            Err(e) => Err(self.auth_problem(&e, &host.name)),
        }
    }

    /// The problem for a failed AUTH; for a refused OAuth token, what the token says about its
    /// permissions goes with it (the catalogue's causes come with the report).
    fn auth_problem(&self, e: &SessionError, host: &str) -> Problem {
        let mut p = Problem::session(e, host);
        if let Credentials::XOAuth2 { token, .. } = &self.creds
            && e.step() == Some(Step::Auth)
        {
            p.note = auth::token_permission_note(token);
        }
        p
    }

    /// The AUTH mechanism `open` used on `session` (None: no AUTH), for the log line.
    pub fn auth_mechanism(&self, session: &Session) -> Option<&'static str> {
        match &self.creds {
            Credentials::None => None,
            Credentials::XOAuth2 { .. } => Some("XOAUTH2"),
            Credentials::Password { .. } if session.capabilities().has_auth("PLAIN") => {
                Some("PLAIN")
            }
            Credentials::Password { .. } => Some("LOGIN"),
        }
    }

    /// Whether the last session `open` made used TLS, and the AUTH mechanism it tried
    /// (also when `open` failed at AUTH), for the log line.
    pub fn last_session(&self) -> (bool, Option<&'static str>) {
        (self.last_tls, self.last_auth)
    }

    /// The first host (in endpoint order) that connects and authenticates. On failure, the
    /// problem of the last host tried (permanent problems stop at once).
    pub async fn open_any(&mut self) -> Result<(Session, String), Problem> {
        let mut last = None;
        for host in &self.endpoint.hosts {
            match self.open(host).await {
                Ok(s) => return Ok((s, host.name.clone())),
                Err(p) if p.transient => last = Some(p),
                Err(p) => return Err(p),
            }
        }
        Err(last
            .unwrap_or_else(|| Problem::local(Failure::new(Exit::NoHost, "no host to connect to"))))
    }
}

/// A cached token refused with 535 5.7.3 may just be stale (revoked, permissions changed):
/// worth one retry with a freshly acquired token.
fn needs_fresh_token(creds: &Credentials, e: &SessionError) -> bool {
    matches!(
        creds,
        Credentials::XOAuth2 {
            from_cache: true,
            ..
        }
    ) && e.step() == Some(Step::Auth)
        && e.reply()
            .and_then(|r| r.enhanced)
            .is_some_and(|c| c == crate::smtp::EnhancedCode::new(5, 7, 3))
}

/// The one-line warning for a password used against a Microsoft host.
fn basic_auth_warning(creds: &Credentials, host: &str, profile: &str) -> Option<String> {
    (matches!(creds, Credentials::Password { .. }) && is_microsoft_host(host)).then(|| {
        format!(
            "m365send: warning: profile \"{profile}\" uses a password (basic auth) with {host}: Microsoft disables basic authentication for SMTP AUTH by default from the end of December 2026; switch to OAuth (auth.method = \"oauth\")"
        )
    })
}

/// Deliver with in-process retries; nothing printed but the transcript and warnings, nothing
/// written. See the module doc.
pub async fn attempt(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    endpoint: &Endpoint,
    opts: &Options,
) -> Outcome {
    let started = std::time::Instant::now();
    let mut outcome = attempt_inner(config, profile, message, endpoint, opts).await;
    outcome.elapsed = started.elapsed();
    outcome
}

async fn attempt_inner(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    endpoint: &Endpoint,
    opts: &Options,
) -> Outcome {
    let mut outcome = Outcome::new(&message.envelope.recipients);
    if endpoint.hosts.is_empty() {
        outcome.fail(Problem::local(Failure::new(
            Exit::NoHost,
            format!("no host to connect to ({})", endpoint.source),
        )));
        return outcome;
    }
    let mut connector =
        match Connector::new(config, profile, endpoint, opts, &message.envelope.sender).await {
            Ok(c) => c,
            Err(p) => {
                outcome.fail(p);
                return outcome;
            }
        };
    let flags = MessageFlags::from(message);
    let rounds = profile.retry.attempts();
    let mut delay = profile.retry.initial_delay();
    for round in 0..rounds {
        if round > 0 {
            let jitter: f64 = rand::rng().random_range(0.5..1.5);
            let wait = delay.mul_f64(jitter);
            if opts.verbose > 0 {
                opts.sink().line(&format!(
                    "-- temporary failure; trying again in {:.1} s",
                    wait.as_secs_f64()
                ));
            }
            tokio::time::sleep(wait).await;
            delay = delay.saturating_mul(2).min(Duration::from_secs(300));
        }
        for host in &endpoint.hosts {
            outcome.attempts += 1;
            let opened = connector.open(host).await;
            let (tls, auth) = connector.last_session();
            outcome.tls = tls;
            outcome.auth = auth.map(str::to_owned);
            let mut session = match opened {
                Ok(s) => s,
                Err(p) => {
                    let transient = p.transient;
                    outcome.fail(p);
                    if transient {
                        continue;
                    }
                    return outcome;
                }
            };
            let mut envelope = message.envelope.clone();
            envelope.recipients = outcome.pending.clone();
            match session.send_message(&envelope, &message.body, flags).await {
                Ok(result) => {
                    outcome.apply(&result, &host.name);
                    let _ = session.quit().await;
                }
                Err(e) => outcome.fail(Problem::session(&e, &host.name)),
            }
            if outcome.pending.is_empty() || !outcome.is_transient() {
                return outcome;
            }
        }
    }
    outcome
}

/// Deliver now. Ok when every recipient accepted the message; otherwise a Failure whose
/// message says what happened (quoting the server), what to do, who got it and who did not,
/// and where the dead letter was written. Writes the message's log line (`report::log_line`)
/// once the outcome is final.
pub async fn deliver(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    endpoint: &Endpoint,
    opts: &Options,
) -> Result<(), Failure> {
    let outcome = attempt(config, profile, message, endpoint, opts).await;
    log_outcome(
        config,
        profile,
        message,
        &outcome,
        outcome.exit(),
        opts.verbose > 0,
    );
    if outcome.is_success() {
        return Ok(());
    }
    Err(failure(config, profile, message, &outcome))
}

/// The Failure for an outcome that is final and not a success: the report for the user, and,
/// when nobody got the message or recipients are left over, a copy in the dead letter (its
/// path, or why it could not be written, ends the message).
pub fn failure(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    outcome: &Outcome,
) -> Failure {
    let mut text = outcome.report(profile, message);
    if outcome.delivered.is_empty() || !outcome.pending.is_empty() {
        let reason = outcome.summary_line();
        match crate::report::dead_letter(config, profile, message, &reason) {
            Ok(path) => text.push_str(&format!("\n  message saved to {}", path.display())),
            Err(e) => text.push_str(&format!("\n  could not save the message: {}", e.message)),
        }
    }
    Failure::new(outcome.exit(), text)
}

/// The per-message log line for a final outcome (see `report::log_line` for where it goes).
/// `exit`: the exit code the caller ends with for this message (a caller that queues a
/// temporary failure may log it as it sees fit). `deliver` calls this; callers of `attempt`
/// that decide the final outcome themselves (the queue) call it once per message.
pub fn log_outcome(
    config: &Config,
    profile: &Profile,
    message: &Prepared,
    outcome: &Outcome,
    exit: Exit,
    verbose: bool,
) {
    let reply = outcome.final_reply().cloned();
    // The first line of the problem: what happened, quoting the server or the identity
    // platform; the advice under it is for the user's terminal, not the log.
    let error = match (&reply, &outcome.problem) {
        (None, Some(p)) => Some(p.what.lines().next().unwrap_or_default().to_owned()),
        _ => None,
    };
    let record = crate::report::LogRecord {
        time: chrono::Local::now(),
        profile: profile.name.clone(),
        mode: profile.mode,
        host: outcome.host.clone(),
        tls: outcome.tls,
        auth: outcome.auth.clone(),
        from: message.envelope.sender.clone(),
        recipients: message.envelope.recipients.clone(),
        size: message.size,
        reply,
        error,
        duration: outcome.elapsed,
        exit,
    };
    crate::report::log_line(config, verbose, &record);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn basic_auth_warning_only_for_passwords_to_microsoft() {
        let pw = Credentials::Password {
            user: "u@contoso.com".into(),
            password: Secret::new("hunter2"),
        };
        let w = basic_auth_warning(&pw, "smtp.office365.com", "app").unwrap();
        assert!(w.contains("December 2026") && !w.contains("hunter2") && !w.contains('\n'));
        assert!(basic_auth_warning(&pw, "mail.example.org", "app").is_none());
        let tok = Credentials::XOAuth2 {
            user: "u".into(),
            token: Secret::new("t"),
            from_cache: false,
        };
        assert!(basic_auth_warning(&tok, "smtp.office365.com", "app").is_none());
    }

    #[test]
    fn fresh_token_only_for_cached_token_refused_5_7_3() {
        let cached = Credentials::XOAuth2 {
            user: "u".into(),
            token: Secret::new("t"),
            from_cache: true,
        };
        let refused = |text: &str| SessionError::Rejected {
            step: Step::Auth,
            reply: Reply::parse(text).unwrap(),
        };
        assert!(needs_fresh_token(
            &cached,
            &refused("535 5.7.3 Authentication unsuccessful")
        ));
        assert!(!needs_fresh_token(
            &cached,
            &refused(
                "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"
            )
        ));
        let configured = Credentials::XOAuth2 {
            user: "u".into(),
            token: Secret::new("t"),
            from_cache: false,
        };
        assert!(!needs_fresh_token(
            &configured,
            &refused("535 5.7.3 Authentication unsuccessful")
        ));
    }

    #[test]
    fn host_not_found_is_68_and_connection_trouble_is_75() {
        let e = SessionError::Resolve {
            host: "nx.contoso.com".into(),
            reason: "failed to lookup address information: Name or service not known".into(),
        };
        let p = Problem::session(&e, "nx.contoso.com");
        assert_eq!(p.exit, Exit::NoHost);
        assert!(!p.transient);
        let e = SessionError::Resolve {
            host: "nx.contoso.com".into(),
            reason: "Temporary failure in name resolution".into(),
        };
        assert!(Problem::session(&e, "nx.contoso.com").transient);
        let e = SessionError::Timeout {
            step: Step::DataEnd,
            secs: 300,
        };
        let p = Problem::session(&e, "h");
        assert_eq!((p.exit, p.transient), (Exit::TempFail, true));
        let p = Problem::session(&SessionError::StartTlsNotOffered, "h");
        assert_eq!((p.exit, p.transient), (Exit::Unavailable, false));
        let p = Problem::session(&SessionError::TooLarge { size: 2, limit: 1 }, "h");
        assert_eq!(p.exit, Exit::DataErr);
    }
}
