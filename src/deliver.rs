//! Delivery: from a prepared message and an endpoint to an outcome the user can act on.
//!
//! Owns: trying hosts in order, in-process retries with backoff and jitter, per-recipient
//! results, the exit code, the explanation printed on stderr, the dead letter and the
//! per-message log line (through `report`). Knows no transport by name: it opens connections
//! through the seam (`transport::connector`). Must not: parse replies itself (smtp does),
//! word explanations (explain does), or speak a protocol.
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
//!   in-process retries, but nothing printed (except the `-v` transcript and warnings) and
//!   nothing written. The queue runner and the `-bs` server use it: `outcome.is_success()`,
//!   `outcome.is_transient()` (→ keep it in the queue instead of a dead letter),
//!   `outcome.exit()`, `outcome.report(..)`, `outcome.final_reply()` (the real server reply to
//!   relay to an SMTP client).
//! * `Outcome::new(&envelope.recipients)` starts one; `outcome.apply(&result, host)` merges a
//!   transport's `MessageResult` (one per transaction: a message with many recipients goes in
//!   batches, `transport::batch`), `outcome.fail(problem)` a failure of the whole try;
//!   `outcome.pending` says who is left. One outcome for the whole message.

use std::time::Duration;

use rand::RngExt as _;

use crate::auth;
use crate::config::{Config, Profile};
use crate::exit::{Exit, Failure};
use crate::explain::{self, Context};
use crate::message::Prepared;
use crate::route::Endpoint;
use crate::status::{MessageResult, Reply, Step};
use crate::transport::{self, batch, server_name};

pub use crate::transport::{Options, Problem};

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
        let tried: std::collections::HashSet<&String> =
            result.recipients.iter().map(|(a, _)| a).collect();
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
            // Nothing sent (the token endpoint or the route failed first): no count to give.
            if p.transient && self.attempts > 0 {
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
        // A temporary failure goes to the queue unless the profile never queues.
        retried_by_queue: Some(profile.queue != crate::config::QueuePolicy::Never),
        ..auth::explain_context(profile)
    }
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
        match transport::connector(config, profile, endpoint, opts, &message.envelope.sender).await
        {
            Ok(c) => c,
            Err(p) => {
                outcome.fail(p);
                return outcome;
            }
        };
    let mut limits = batch::RecipientLimits::new();
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
            // Again at once (not a failed try) when the server taught a lower recipient
            // limit by closing the connection: the next transactions are smaller.
            let mut reconnect = true;
            while std::mem::take(&mut reconnect) {
                outcome.attempts += 1;
                let opened = connector.open(host).await;
                let (tls, auth) = connector.last_session();
                outcome.tls = tls;
                outcome.auth = auth.map(str::to_owned);
                let transport = match opened {
                    Ok(t) => t,
                    Err(p) => {
                        let transient = p.transient;
                        outcome.fail(p);
                        if transient {
                            continue;
                        }
                        return outcome;
                    }
                };
                let host_name = transport.host().to_owned();
                let mut envelope = message.envelope.clone();
                envelope.recipients = outcome.pending.clone();
                // The message in as many transactions as the recipients need, QUIT
                // pipelined behind the last.
                let sent = batch::send_in_batches(
                    transport,
                    message,
                    &envelope,
                    profile.max_recipients,
                    &mut limits,
                    true,
                )
                .await;
                for result in &sent.results {
                    outcome.apply(result, &host_name);
                }
                if let Some(p) = sent.problem {
                    outcome.fail(p);
                }
                if let Some(t) = sent.transport {
                    t.close().await;
                }
                if outcome.pending.is_empty() || !outcome.is_transient() {
                    return outcome;
                }
                reconnect = sent.reconnect;
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
        // A temporary failure that ends here was not queued: say so, and where the message is,
        // so that nobody waits for a retry that will not come.
        let not_queued = outcome.is_transient().then(|| {
            if profile.queue == crate::config::QueuePolicy::Never {
                format!(
                    "not queued (profile \"{}\" has queue = \"never\"); ",
                    profile.name
                )
            } else {
                "not queued; ".to_owned()
            }
        });
        match (
            crate::report::dead_letter(config, profile, message, &reason),
            not_queued,
        ) {
            (Ok(path), Some(nq)) => text.push_str(&format!(
                "\n  {nq}message saved to {}: send it again later",
                path.display()
            )),
            (Ok(path), None) => text.push_str(&format!("\n  message saved to {}", path.display())),
            (Err(e), nq) => text.push_str(&format!(
                "\n  {}could not save the message: {}",
                nq.unwrap_or_default(),
                e.message
            )),
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
