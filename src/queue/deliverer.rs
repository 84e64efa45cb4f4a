//! The real [`Deliverer`]: the queue runner's messages go out through the transport seam
//! (`transport::connector`), one open transport per group of entries.
//!
//! Owns: mapping a transport's answers to [`MessageOutcome`] (per recipient, with the reply,
//! the error in words and the explanation from `explain`; one outcome for a message sent in
//! several transactions by `transport::batch`), keeping the transport open across
//! messages (reset between them — nothing on the wire after a clean transaction — and close
//! at the end), and which messages may be started behind others on it (one transaction's
//! worth of recipients; the transport decides the rest). Knows no transport by name.
//! Must not: retry (the runner backs off), decide bounces (the runner does), or touch the
//! spool.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{Config, Profile};
use crate::exit::Exit;
use crate::explain::{self, Context};
use crate::message::{Envelope, Prepared};
use crate::report::LogRecord;
use crate::status::{MessageResult, Reply, Step};
use crate::transport::{self, Transport, batch};

use super::runner::{BoxFuture, Deliverer, MessageOutcome, Problem, RecipientResult};

/// Delivers queue entries through the transport seam. One connection serves every message of
/// a group (same profile and endpoint).
pub struct TransportDeliverer {
    verbose: u8,
    transport: Option<Box<dyn Transport>>,
    host: String,
    /// The profile of the open session (for explanations).
    profile: Option<Profile>,
    /// A route problem that is the message's fault (sender outside the accepted domains,
    /// direct send to an outside recipient), with the routing envelope it was found for:
    /// it fails that message; another message of the group gets its own route.
    refused: Option<(Envelope, Problem)>,
    /// The configuration of the open session (for the per-message log line).
    config: Option<Config>,
    /// The AUTH mechanism of the open connection, for the log line.
    auth: Option<&'static str>,
    /// The open connection uses TLS, for the log line.
    tls: bool,
    /// Recipient limits the servers taught during this run.
    limits: batch::RecipientLimits,
    /// When each message `start`ed and not finished was started, oldest first (for the
    /// log line's duration).
    started: VecDeque<Instant>,
}

impl TransportDeliverer {
    /// `verbose` > 0 prints the (redacted) transcript on stderr.
    pub fn new(verbose: u8) -> TransportDeliverer {
        TransportDeliverer {
            verbose,
            transport: None,
            host: String::new(),
            profile: None,
            refused: None,
            config: None,
            auth: None,
            tls: false,
            limits: batch::RecipientLimits::new(),
            started: VecDeque::new(),
        }
    }

    /// The per-message log line (syslog / `log.file`, as for messages sent at once).
    fn log(&self, message: &Prepared, outcome: &MessageOutcome, duration: Duration) {
        let (Some(config), Some(profile)) = (&self.config, &self.profile) else {
            return;
        };
        if !config.log.syslog && config.log.file.is_none() {
            return;
        }
        let exit_of = |p: &Problem, transient: bool| {
            if transient {
                Exit::TempFail
            } else {
                p.reply
                    .as_ref()
                    .map(explain::exit_for)
                    .unwrap_or(Exit::Unavailable)
            }
        };
        let (reply, error, exit) = match outcome {
            MessageOutcome::Delivered => (None, None, Exit::Ok),
            MessageOutcome::Transient(p) => {
                (p.reply.clone(), Some(p.error.clone()), exit_of(p, true))
            }
            MessageOutcome::Permanent(p) => {
                (p.reply.clone(), Some(p.error.clone()), exit_of(p, false))
            }
            MessageOutcome::Recipients(list) => {
                let first = list.iter().find_map(|(_, r)| match r {
                    RecipientResult::Delivered => None,
                    RecipientResult::Transient(p) => Some((p, true)),
                    RecipientResult::Permanent(p) => Some((p, false)),
                });
                match first {
                    Some((p, t)) => (p.reply.clone(), Some(p.error.clone()), exit_of(p, t)),
                    None => (None, None, Exit::Ok),
                }
            }
        };
        let rec = LogRecord {
            time: chrono::Local::now(),
            profile: profile.name.clone(),
            mode: profile.mode,
            host: (!self.host.is_empty()).then(|| self.host.clone()),
            tls: self.tls,
            auth: self.auth.map(str::to_owned),
            from: message.envelope.sender.clone(),
            recipients: message.envelope.recipients.clone(),
            size: message.size,
            reply,
            error: error.filter(|e| !e.is_empty()),
            duration,
            exit,
        };
        crate::report::log_line(config, false, &rec);
    }

    fn explain(&self, reply: &Reply, sender: &str, recipient: Option<&str>) -> String {
        let profile = self.profile.as_ref();
        let ctx = Context {
            mode: profile.map(|p| p.mode),
            profile: profile.map(|p| p.name.as_str()),
            mailbox: profile.and_then(|p| p.login_user()),
            sender: Some(sender),
            recipient,
            host: Some(&self.host),
            ..Default::default()
        };
        explain::explain_reply(reply, &ctx)
            .map(|x| format!("{} {}", x.meaning, x.advice))
            .unwrap_or_default()
    }

    fn reply_problem(&self, reply: &Reply, sender: &str, recipient: Option<&str>) -> Problem {
        Problem::reply(reply.clone(), self.explain(reply, sender, recipient))
    }

    /// The answers for one transaction → the runner's outcome.
    #[cfg(test)]
    fn outcome(&self, result: &MessageResult, message: &Prepared) -> MessageOutcome {
        self.merge(std::slice::from_ref(result), None, message)
    }

    /// The answers of every transaction of one message (a message with many recipients goes
    /// in batches), and the problem that stopped the rest, if any → one outcome for the
    /// message. A recipient's last answer counts.
    fn merge(
        &self,
        results: &[MessageResult],
        problem: Option<MessageOutcome>,
        message: &Prepared,
    ) -> MessageOutcome {
        let sender = message.envelope.sender.as_str();
        let mut answers: HashMap<&str, RecipientResult> = HashMap::new();
        // What holds for the recipients without an answer of their own.
        let mut rest = None;
        for result in results {
            match self.recipient_results(result, sender) {
                Ok(list) => {
                    for (addr, r) in list {
                        answers.insert(addr, r);
                    }
                }
                Err(whole) => rest = Some(whole),
            }
        }
        if problem.is_some() {
            rest = problem;
        }
        if answers.is_empty()
            && let Some(whole) = rest
        {
            return whole;
        }
        let mut list = Vec::with_capacity(message.envelope.recipients.len());
        for addr in &message.envelope.recipients {
            let r = match (answers.remove(addr.as_str()), &rest) {
                (Some(r), _) => r,
                (None, Some(MessageOutcome::Transient(p))) => RecipientResult::Transient(p.clone()),
                (None, Some(MessageOutcome::Permanent(p))) => RecipientResult::Permanent(p.clone()),
                (None, _) => continue,
            };
            list.push((addr.clone(), r));
        }
        if list.len() == message.envelope.recipients.len()
            && list
                .iter()
                .all(|(_, r)| matches!(r, RecipientResult::Delivered))
        {
            MessageOutcome::Delivered
        } else {
            MessageOutcome::Recipients(list)
        }
    }

    /// One transaction's answers per recipient; `Err` with the outcome for all of them when
    /// the sender was refused.
    fn recipient_results<'r>(
        &self,
        result: &'r MessageResult,
        sender: &str,
    ) -> Result<Vec<(&'r str, RecipientResult)>, MessageOutcome> {
        if let Some((Step::Mail, reply)) = result.message_failure() {
            let p = self.reply_problem(reply, sender, None);
            return Err(if reply.is_transient() {
                MessageOutcome::Transient(p)
            } else {
                MessageOutcome::Permanent(p)
            });
        }
        let delivered = result.delivered();
        let data_failure = result.message_failure();
        let mut list = Vec::new();
        for (addr, reply) in &result.recipients {
            let r = if !reply.is_positive() {
                let p = self.reply_problem(reply, sender, Some(addr));
                if reply.is_transient() {
                    RecipientResult::Transient(p)
                } else {
                    RecipientResult::Permanent(p)
                }
            } else if delivered {
                RecipientResult::Delivered
            } else if let Some((_, reply)) = data_failure {
                let p = self.reply_problem(reply, sender, None);
                if reply.is_transient() {
                    RecipientResult::Transient(p)
                } else {
                    RecipientResult::Permanent(p)
                }
            } else {
                RecipientResult::Transient(Problem::error("the server did not take the message"))
            };
            list.push((addr.as_str(), r));
        }
        Ok(list)
    }
}

/// A problem of the transport (connection, authentication, a refusal) in the runner's terms.
fn from_transport(p: transport::Problem, explanation: String) -> Problem {
    Problem {
        error: if p.reply.is_some() {
            String::new()
        } else {
            p.what
        },
        reply: p.reply,
        explanation,
    }
}

/// The envelope that decides the route: a bounce (null sender) goes where its recipient's
/// domain points, as the original message's sender domain did.
fn route_envelope(envelope: &Envelope) -> Envelope {
    let mut e = envelope.clone();
    if e.sender.is_empty()
        && let Some(r) = e.recipients.first()
    {
        e.sender = r.clone();
    }
    e
}

impl Deliverer for TransportDeliverer {
    fn endpoint_key(&self, profile: &Profile, envelope: &Envelope) -> String {
        super::default_endpoint_key(profile, &route_envelope(envelope))
    }

    fn open<'a>(
        &'a mut self,
        config: &'a Config,
        profile: &'a Profile,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), Problem>> {
        Box::pin(async move {
            if let Some(t) = self.transport.take() {
                t.close().await;
            }
            self.refused = None;
            self.profile = Some(profile.clone());
            self.config = Some(config.clone());
            let route = route_envelope(envelope);
            let endpoint = match crate::route::resolve(profile, &route, None).await {
                Ok(e) => e,
                // The message's own fault (outside the accepted domains, or an outside
                // recipient for direct send): fail the messages, not the connection.
                Err(f) if matches!(f.exit, Exit::NoPerm | Exit::NoUser) => {
                    self.refused = Some((route, Problem::error(f.message)));
                    return Ok(());
                }
                Err(f) => return Err(Problem::error(f.message)),
            };
            let opts = transport::Options {
                verbose: self.verbose,
                ..Default::default()
            };
            let mut connector =
                transport::connector(config, profile, &endpoint, &opts, &route.sender)
                    .await
                    .map_err(|p| from_transport(p, String::new()))?;
            let opened = transport::open_any(connector.as_mut(), &endpoint).await;
            let (tls, auth) = connector.last_session();
            self.tls = tls;
            self.auth = auth;
            match opened {
                Ok(t) => {
                    self.host = t.host().to_owned();
                    self.transport = Some(t);
                    Ok(())
                }
                Err(p) => {
                    let explanation = p
                        .reply
                        .as_ref()
                        .map(|r| self.explain(r, &route.sender, None))
                        .unwrap_or_default();
                    Err(from_transport(p, explanation))
                }
            }
        })
    }

    fn send<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, MessageOutcome> {
        Box::pin(async move {
            let started = Instant::now();
            let outcome = self.send_one(message).await;
            self.log(message, &outcome, started.elapsed());
            outcome
        })
    }

    /// Only a message for the open connection's route, in one transaction (recipients
    /// within the limit and the ones every server takes: a message needing batches, or
    /// whose recipients a server may defer with 452, is sent alone).
    fn start<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            if self.refused.is_some() {
                return false;
            }
            let configured = self.profile.as_ref().and_then(|p| p.max_recipients);
            let limit = self
                .limits
                .get(configured, &self.host)
                .min(batch::SURELY_ACCEPTED);
            if message.envelope.recipients.len() > limit {
                return false;
            }
            let Some(t) = self.transport.as_mut() else {
                return false;
            };
            let started = t.start(message, &message.envelope).await;
            if started {
                self.started.push_back(Instant::now());
            }
            started
        })
    }

    fn finish<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, MessageOutcome> {
        Box::pin(async move {
            let began = self.started.pop_front().unwrap_or_else(Instant::now);
            let answer = match self.transport.as_mut() {
                Some(t) => t.finish().await,
                None => Err(transport::Problem::local(crate::exit::Failure::new(
                    Exit::TempFail,
                    "not connected",
                ))),
            };
            let outcome = match answer {
                Ok(result) => self.merge(std::slice::from_ref(&result), None, message),
                Err(p) => {
                    let o = self.problem_outcome(p, &message.envelope.sender);
                    self.merge(&[], Some(o), message)
                }
            };
            self.log(message, &outcome, began.elapsed());
            outcome
        })
    }

    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async move {
            if self.refused.is_some() {
                return Ok(());
            }
            let Some(t) = self.transport.as_mut() else {
                return Err(Problem::error("the connection was closed"));
            };
            match t.reset().await {
                Ok(()) => Ok(()),
                Err(p) => {
                    self.transport = None;
                    Err(from_transport(p, String::new()))
                }
            }
        })
    }

    /// One more connection for the same group: what this one learned about recipient
    /// limits goes with it.
    fn fork(&self) -> Option<Box<dyn Deliverer>> {
        let mut d = TransportDeliverer::new(self.verbose);
        d.limits = self.limits.clone();
        Some(Box::new(d))
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(t) = self.transport.take() {
                t.close().await;
            }
            self.refused = None;
        })
    }
}

impl TransportDeliverer {
    async fn send_one(&mut self, message: &Prepared) -> MessageOutcome {
        if let Some((route, p)) = &self.refused {
            if *route == route_envelope(&message.envelope) {
                return MessageOutcome::Permanent(p.clone());
            }
            // The refusal was about another message's envelope (the group shares the
            // profile, not the sender and recipients): route and connect for this one.
            let (Some(config), Some(profile)) = (self.config.clone(), self.profile.clone()) else {
                return MessageOutcome::Transient(Problem::error("not connected"));
            };
            if let Err(p) = self.open(&config, &profile, &message.envelope).await {
                return MessageOutcome::Transient(p);
            }
            if let Some((_, p)) = &self.refused {
                return MessageOutcome::Permanent(p.clone());
            }
        }
        let configured = self.profile.as_ref().and_then(|p| p.max_recipients);
        let mut envelope = message.envelope.clone();
        let mut results = Vec::new();
        // At most a few lessons: each one lowers the limit.
        for _ in 0..8 {
            let Some(t) = self.transport.take() else {
                let p = Problem::error("not connected");
                return self.merge(&results, Some(MessageOutcome::Transient(p)), message);
            };
            // As many transactions as the recipients need; the connection stays open for
            // the next message.
            let sent =
                batch::send_in_batches(t, message, &envelope, configured, &mut self.limits, false)
                    .await;
            self.transport = sent.transport;
            results.extend(sent.results);
            let problem = sent
                .problem
                .map(|p| self.problem_outcome(p, &message.envelope.sender));
            envelope.recipients = batch::unsettled(&envelope.recipients, &results);
            if !sent.reconnect || envelope.recipients.is_empty() {
                return self.merge(&results, problem, message);
            }
            // The server closed the connection over its recipient limit, which is now
            // known: again at once, in smaller transactions.
            let (Some(config), Some(profile)) = (self.config.clone(), self.profile.clone()) else {
                return self.merge(&results, problem, message);
            };
            if let Err(p) = self.open(&config, &profile, &message.envelope).await {
                return self.merge(&results, Some(MessageOutcome::Transient(p)), message);
            }
        }
        let p = Problem::error("the server kept closing the connection over its recipient limit");
        self.merge(&results, Some(MessageOutcome::Transient(p)), message)
    }

    /// A transport problem as the outcome for the recipients it left without an answer.
    fn problem_outcome(&self, p: transport::Problem, sender: &str) -> MessageOutcome {
        let transient = p.transient;
        let explanation = p
            .reply
            .as_ref()
            .map(|r| self.explain(r, sender, None))
            .unwrap_or_default();
        let p = from_transport(p, explanation);
        if transient {
            MessageOutcome::Transient(p)
        } else {
            MessageOutcome::Permanent(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Body;

    fn reply(s: &str) -> Reply {
        Reply::parse(s).unwrap()
    }

    fn message(rcpts: &[&str]) -> Prepared {
        Prepared {
            envelope: Envelope {
                sender: "a@contoso.com".into(),
                recipients: rcpts.iter().map(|r| r.to_string()).collect(),
                dsn: Default::default(),
            },
            body: Body::at("/nonexistent"),
            size: 1,
            eight_bit: false,
            smtputf8: false,
            header_block: String::new(),
        }
    }

    fn result(mail: &str, rcpts: &[(&str, &str)], data: Option<&str>) -> MessageResult {
        MessageResult {
            mail: reply(mail),
            recipients: rcpts
                .iter()
                .map(|(a, r)| (a.to_string(), reply(r)))
                .collect(),
            data: data.map(|d| (Step::DataEnd, reply(d))),
        }
    }

    #[test]
    fn all_accepted_is_delivered() {
        let d = TransportDeliverer::new(0);
        let r = result("250 ok", &[("x@c.com", "250 ok")], Some("250 2.0.0 OK"));
        assert_eq!(
            d.outcome(&r, &message(&["x@c.com"])),
            MessageOutcome::Delivered
        );
    }

    #[test]
    fn sender_refusal_decides_the_whole_message_with_its_explanation() {
        let d = TransportDeliverer::new(0);
        let r = result(
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            &[],
            None,
        );
        match d.outcome(&r, &message(&["x@c.com"])) {
            MessageOutcome::Permanent(p) => {
                assert_eq!(p.reply.unwrap().code, 550);
                assert!(!p.explanation.is_empty(), "explained");
            }
            o => panic!("{o:?}"),
        }
        let r = result(
            "451 4.7.500 Access denied, please try again later",
            &[],
            None,
        );
        assert!(matches!(
            d.outcome(&r, &message(&["x@c.com"])),
            MessageOutcome::Transient(_)
        ));
    }

    #[test]
    fn per_recipient_results_and_data_refusal() {
        let d = TransportDeliverer::new(0);
        let r = result(
            "250 ok",
            &[
                ("ok@c.com", "250 ok"),
                ("gone@c.com", "550 5.1.10 RESOLVER.ADR.RecipientNotFound"),
                ("later@c.com", "451 4.7.500 try later"),
            ],
            Some("250 2.0.0 OK"),
        );
        let MessageOutcome::Recipients(list) =
            d.outcome(&r, &message(&["ok@c.com", "gone@c.com", "later@c.com"]))
        else {
            panic!()
        };
        assert!(matches!(list[0].1, RecipientResult::Delivered));
        assert!(matches!(list[1].1, RecipientResult::Permanent(_)));
        assert!(matches!(list[2].1, RecipientResult::Transient(_)));

        // The content refused at end of data: every accepted recipient shares the reply.
        let r = result(
            "250 ok",
            &[("ok@c.com", "250 ok")],
            Some("552 5.3.4 Message size exceeds fixed maximum message size"),
        );
        let MessageOutcome::Recipients(list) = d.outcome(&r, &message(&["ok@c.com"])) else {
            panic!()
        };
        match &list[0].1 {
            RecipientResult::Permanent(p) => assert_eq!(p.reply.as_ref().unwrap().code, 552),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn a_bounce_routes_by_its_recipient_domain() {
        let e = Envelope {
            sender: String::new(),
            recipients: vec!["alerts@contoso.com".into()],
            dsn: Default::default(),
        };
        assert_eq!(route_envelope(&e).sender, "alerts@contoso.com");
        let mut p = Profile {
            name: "cron".into(),
            mode: crate::config::Mode::Relay,
            ..Profile::default()
        };
        p.endpoint.mx_domain = None;
        let d = TransportDeliverer::new(0);
        assert_eq!(d.endpoint_key(&p, &e), "cron/contoso.com");
    }
}
