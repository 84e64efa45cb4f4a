//! Recipient batches: a message with more recipients than a server takes in one transaction
//! goes out in several transactions, each recipient once. Used by both callers of the seam
//! (`deliver` for messages sent now, the queue's deliverer), so the rule lives here once.
//!
//! Owns: the recipient limit per host (`max_recipients`, default 500 for Microsoft 365 hosts
//! and 1000 for others, lowered by what a server answers), splitting the envelope into
//! batches, sending the recipients a server defers with `452 4.5.3` (too many recipients) in
//! further transactions, and learning the server's limit from how many RCPTs it accepted
//! before the first 452, or before it closed the connection (Postfix answers
//! `421 4.7.0 too many errors` after a run of 452s), so that a failed transaction is never
//! repeated identically. Must not: retry a failed try (the callers do, with the results
//! given back), word anything for the user, or know a transport by name.

use std::collections::BTreeMap;

use crate::exit::Exit;
use crate::message::{Envelope, Prepared};
use crate::status::{EnhancedCode, MessageResult, Reply, Step};

use super::{Problem, Transport, server_name};

/// Most recipients per transaction for Microsoft 365 hosts: Exchange Online's default per
/// message (a tenant may raise it to 1000).
pub const MICROSOFT_MAX_RECIPIENTS: usize = 500;
/// Most recipients per transaction for other servers: Postfix's default
/// (`smtpd_recipient_limit`); RFC 5321 §4.5.3.1.8 asks every server for at least 100.
pub const OTHER_MAX_RECIPIENTS: usize = 1000;
/// Recipients every server must take in one transaction (RFC 5321 §4.5.3.1.8). A last
/// transaction with more may be partly deferred (452), so QUIT does not go with it: the
/// deferred recipients then follow on the same connection.
pub const SURELY_ACCEPTED: usize = 100;

/// The recipient limits learned from servers, by host. One per delivery (`deliver`) or per
/// queue run (the queue's deliverer), so that what one transaction taught holds for the
/// next transactions and connections.
#[derive(Debug, Clone, Default)]
pub struct RecipientLimits {
    learned: BTreeMap<String, usize>,
}

impl RecipientLimits {
    pub fn new() -> RecipientLimits {
        RecipientLimits::default()
    }

    /// The most recipients for one transaction with `host`: the configured
    /// `max_recipients` (0: no limit of our own) or the default for the host, lowered to
    /// what the host taught.
    pub fn get(&self, configured: Option<usize>, host: &str) -> usize {
        let own = match configured {
            Some(0) => usize::MAX,
            Some(n) => n,
            None if microsoft(host) => MICROSOFT_MAX_RECIPIENTS,
            None => OTHER_MAX_RECIPIENTS,
        };
        self.learned
            .get(&host.to_ascii_lowercase())
            .map_or(own, |&l| own.min(l))
    }

    /// The server took at most `n` recipients; true when that lowers the limit.
    fn lower(&mut self, host: &str, n: usize, current: usize) -> bool {
        let n = n.max(1);
        if n >= current {
            return false;
        }
        self.learned.insert(host.to_ascii_lowercase(), n);
        true
    }
}

/// What `send_in_batches` did.
pub struct Batches {
    /// Each transaction's answers, in order, for the caller to merge (`Outcome::apply`). A
    /// recipient deferred with 452 4.5.3 and sent again appears only with its final answer;
    /// a recipient in no result was not sent (it stays to be delivered).
    pub results: Vec<MessageResult>,
    /// The failure that stopped the rest, if any.
    pub problem: Option<Problem>,
    /// The server taught a lower recipient limit and the connection is gone (it closed it
    /// over the limit, or QUIT had gone with what was planned as the last batch): open
    /// another connection now — this is not a failed try, and the next transaction differs.
    pub reconnect: bool,
    /// The transport, while it is still open.
    pub transport: Option<Box<dyn Transport>>,
}

/// Send `message` to `envelope`'s recipients over `transport`, in transactions of at most
/// the limit (`configured`: the profile's `max_recipients`). With `close_after`, the last
/// planned transaction ends the connection in the same round trip (`send_and_close`) when
/// it has at most `SURELY_ACCEPTED` recipients; otherwise the transport comes back open
/// for the caller to close.
pub async fn send_in_batches(
    transport: Box<dyn Transport>,
    message: &Prepared,
    envelope: &Envelope,
    configured: Option<usize>,
    limits: &mut RecipientLimits,
    close_after: bool,
) -> Batches {
    let host = transport.host().to_owned();
    let mut out = Batches {
        results: Vec::new(),
        problem: None,
        reconnect: false,
        transport: Some(transport),
    };
    let mut todo: Vec<String> = envelope.recipients.clone();
    while !todo.is_empty() {
        let Some(mut t) = out.transport.take() else {
            break;
        };
        let limit = limits.get(configured, &host);
        let batch: Vec<String> = todo.drain(..limit.min(todo.len())).collect();
        let mut env = envelope.clone();
        env.recipients = batch;
        let sent = if close_after && todo.is_empty() && env.recipients.len() <= SURELY_ACCEPTED {
            t.send_and_close(message, &env).await
        } else {
            let r = t.send(message, &env).await;
            if t.is_open() {
                out.transport = Some(t);
            } else {
                t.close().await;
            }
            r
        };
        let result = match sent {
            Ok(r) => r,
            Err(p) => {
                out.problem = Some(p);
                break;
            }
        };
        let lesson = Lesson::of(&result);
        let lowered = lesson
            .accepted_before_cut
            .is_some_and(|n| limits.lower(&host, n, limit));
        let progress = result.delivered()
            || lowered
            || result
                .recipients
                .iter()
                .any(|(_, r)| r.is_permanent() && !too_many(r));
        let failure = result.message_failure().is_some();
        // The server stopped answering part-way (it closed the connection).
        let cut = result.recipients.len() < env.recipients.len();
        let (kept, again) = if progress {
            split(result, &env.recipients, lowered)
        } else {
            // Nothing moved (every recipient deferred again): give the answers back as
            // they are; the recipients stay to be delivered, with the reply as the reason.
            (result, Vec::new())
        };
        if !kept.recipients.is_empty() || kept.message_failure().is_some() {
            out.results.push(kept);
        }
        if !again.is_empty() {
            todo.splice(0..0, again);
        }
        // The connection is gone (the server closed it, or QUIT went with what was planned
        // as the last transaction) with recipients left. A refused sender or content is the
        // news, unless it came of the server's limit (421 after the 452s): then the next
        // connection sends smaller transactions.
        let closed = out.transport.is_none();
        if closed && (!todo.is_empty() || cut) && (!failure || lowered) {
            out.reconnect = lowered;
            out.problem = Some(closed_problem(&host, lesson.closing.as_ref(), lowered));
        }
        // A refused sender or content holds for the other batches too.
        if closed || !progress || (failure && !lowered) {
            break;
        }
    }
    out
}

/// Microsoft 365's SMTP hosts and Microsoft Graph's (Exchange Online's limit per message holds
/// for both).
fn microsoft(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    crate::smtp::is_microsoft_host(&h)
        || [
            "graph.microsoft.com",
            "graph.microsoft.us",
            "microsoftgraph.chinacloudapi.cn",
        ]
        .iter()
        .any(|g| h == *g || h.ends_with(&format!(".{g}")) || h.ends_with(&format!("-{g}")))
}

/// The recipients of `recipients` that no result settles (delivered, or refused for good):
/// those to send on the next connection.
pub fn unsettled(recipients: &[String], results: &[MessageResult]) -> Vec<String> {
    let mut settled = std::collections::HashSet::new();
    for r in results.iter().filter(|r| r.mail.is_positive()) {
        let delivered = r.delivered();
        for (addr, reply) in &r.recipients {
            if reply.is_permanent() || (delivered && reply.is_positive()) {
                settled.insert(addr.as_str());
            }
        }
    }
    recipients
        .iter()
        .filter(|a| !settled.contains(a.as_str()))
        .cloned()
        .collect()
}

/// What one transaction's answers say about the server's recipient limit.
struct Lesson {
    /// The RCPTs accepted before the first `452 4.5.3` or the connection's end, when there
    /// was one of those.
    accepted_before_cut: Option<usize>,
    /// The reply the server closed the connection with (421), if any.
    closing: Option<Reply>,
}

impl Lesson {
    fn of(result: &MessageResult) -> Lesson {
        let mut accepted = 0;
        let mut cut = false;
        let mut closing = None;
        for (_, r) in &result.recipients {
            if r.code == 421 {
                closing = Some(r.clone());
                cut = true;
                break;
            }
            if too_many(r) {
                cut = true;
                break;
            }
            if r.is_positive() {
                accepted += 1;
            }
        }
        // A connection that just broke off (no 421) teaches nothing: that is trouble, not
        // a limit.
        Lesson {
            accepted_before_cut: (cut && accepted > 0).then_some(accepted),
            closing,
        }
    }
}

/// `452 4.5.3` (RFC 5321 §4.5.3.1.10, and Exchange's "Too many recipients"); a 452 without
/// an enhanced code that says so.
fn too_many(r: &Reply) -> bool {
    match r.enhanced {
        Some(c) => c == EnhancedCode::new(4, 5, 3),
        None => {
            r.code == 452
                && r.text()
                    .to_ascii_lowercase()
                    .contains("too many recipients")
        }
    }
}

/// The answers to keep (for the caller) and the recipients to send again: those deferred
/// with 452 4.5.3, those the server closed the connection on (421, or no answer), and —
/// when the content did not go through in a transaction the server cut short over its
/// limit — the ones it had accepted.
fn split(
    mut result: MessageResult,
    sent: &[String],
    lowered: bool,
) -> (MessageResult, Vec<String>) {
    let undelivered = !result.delivered();
    let answered = result.recipients.len();
    let mut again = Vec::new();
    result.recipients.retain(|(addr, r)| {
        let retry = too_many(r) || r.code == 421 || (lowered && undelivered && r.is_positive());
        if retry {
            again.push(addr.clone());
        }
        !retry
    });
    again.extend(sent.iter().skip(answered).cloned());
    if lowered && undelivered {
        // The content was refused or never answered because of the cut: not a verdict on
        // the message, and the recipients go again in smaller transactions.
        result.data = None;
    }
    (result, again)
}

/// The problem for recipients left when the connection ended before they were sent.
fn closed_problem(host: &str, closing: Option<&Reply>, lowered: bool) -> Problem {
    let why = match (closing, lowered) {
        (Some(r), _) => format!("closed the connection ({r})"),
        (None, true) => "took fewer recipients than were sent".to_owned(),
        (None, false) => "closed the connection".to_owned(),
    };
    Problem {
        transient: true,
        exit: Exit::TempFail,
        step: Some(Step::Rcpt),
        host: Some(host.to_owned()),
        reply: closing.cloned(),
        what: format!("{} {why}", server_name(host)),
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(s: &str) -> Reply {
        Reply::parse(s).unwrap()
    }

    #[test]
    fn limits_by_host_configuration_and_lesson() {
        let mut l = RecipientLimits::new();
        assert_eq!(l.get(None, "smtp.office365.com"), 500);
        assert_eq!(l.get(None, "contoso-com.mail.protection.outlook.com"), 500);
        assert_eq!(l.get(None, "127.0.0.1"), 1000);
        assert_eq!(l.get(None, "graph.microsoft.com"), 500);
        assert_eq!(l.get(None, "dod-graph.microsoft.us"), 500);
        assert_eq!(l.get(Some(0), "127.0.0.1"), usize::MAX);
        assert_eq!(l.get(Some(50), "smtp.office365.com"), 50);
        assert!(l.lower("127.0.0.1", 300, 1000));
        assert!(
            !l.lower("127.0.0.1", 300, 300),
            "not lower: nothing learned"
        );
        assert_eq!(l.get(None, "127.0.0.1"), 300);
        assert_eq!(l.get(Some(0), "127.0.0.1"), 300);
        assert_eq!(l.get(Some(100), "127.0.0.1"), 100);
        assert_eq!(l.get(None, "other"), 1000);
    }

    #[test]
    fn too_many_recipients_is_4_5_3() {
        assert!(too_many(&reply("452 4.5.3 Too many recipients")));
        assert!(too_many(&reply("452 Error: too many recipients")));
        assert!(!too_many(&reply("452 4.3.1 Insufficient system storage")));
        assert!(!too_many(&reply("451 4.7.500 try later")));
    }

    fn result(rcpts: &[(&str, &str)], data: Option<&str>) -> MessageResult {
        MessageResult {
            mail: reply("250 ok"),
            recipients: rcpts
                .iter()
                .map(|(a, r)| (a.to_string(), reply(r)))
                .collect(),
            data: data.map(|d| (Step::DataEnd, reply(d))),
        }
    }

    #[test]
    fn lessons() {
        let sent = ["a", "b", "c", "d"];
        // Two accepted, then 452s: the limit is 2, the deferred go again.
        let r = result(
            &[
                ("a", "250 ok"),
                ("b", "250 ok"),
                ("c", "452 4.5.3 Too many recipients"),
                ("d", "452 4.5.3 Too many recipients"),
            ],
            Some("250 queued"),
        );
        assert_eq!(Lesson::of(&r).accepted_before_cut, Some(2));
        let sent: Vec<String> = sent.iter().map(|s| s.to_string()).collect();
        let (kept, again) = split(r, &sent, true);
        assert!(kept.delivered());
        assert_eq!(kept.recipients.len(), 2);
        assert_eq!(again, ["c", "d"]);
        // Closed after one accepted and a 421: nothing delivered, everyone goes again.
        let r = result(
            &[
                ("a", "250 ok"),
                ("b", "550 5.1.1 unknown"),
                ("c", "421 4.7.0 Error: too many errors"),
            ],
            None,
        );
        let lesson = Lesson::of(&r);
        assert_eq!(lesson.accepted_before_cut, Some(1));
        assert_eq!(lesson.closing.map(|r| r.code), Some(421));
        let (kept, again) = split(r, &sent, true);
        assert_eq!(again, ["a", "c", "d"]);
        assert_eq!(kept.recipients.len(), 1, "the 550 stays a refusal");
        assert_eq!(kept.recipients[0].0, "b");
        // Nothing cut: nothing learned.
        let r = result(&[("a", "250 ok"), ("b", "250 ok")], Some("250 queued"));
        assert_eq!(Lesson::of(&r).accepted_before_cut, None);
        // Who is left: not the delivered, not the refused for good.
        let done = result(
            &[("a", "250 ok"), ("b", "550 5.1.1 unknown")],
            Some("250 ok"),
        );
        let cut = result(&[("c", "250 ok"), ("d", "452 4.5.3 Too many")], None);
        assert_eq!(unsettled(&sent, &[done, cut]), ["c", "d"]);
    }
}
