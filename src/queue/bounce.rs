//! Bounces: an RFC 3464 delivery status notification for a queued message that failed.
//!
//! `multipart/report; report-type=delivery-status` with a human-readable part (what failed,
//! the server's reply, the explanation), a `message/delivery-status` part, and the original as
//! `message/rfc822` (or `text/rfc822-headers` when it is large or the sender asked RET=HDRS),
//! marked `Auto-Submitted: auto-replied`.
//!
//! # Who a bounce is from ([`bounce_sender`])
//!
//! RFC 5321 §4.5.5 wants the null sender (`MAIL FROM:<>`) on a delivery status notification,
//! but Microsoft 365 takes a message only from a sender it can attribute, so a bounce with
//! `<>` would itself be refused and end in the dead letter, the sender never told:
//!
//! * mailbox logins (submit, hve, acs, graph): Microsoft lets a mailbox send only as itself or as an
//!   address it has Send As rights for; anything else, `<>` included, is 5.7.60. The bounce's
//!   envelope sender and From are the mailbox that logs in (`auth.user`, else `mailbox`), which
//!   can always send as itself; a profile without one falls back to `sender`.
//! * relay and direct send: Microsoft 365 attributes a connection without a login by the
//!   sender's domain (a null sender through an IP connector is 5.7.64 TenantAttribution), and
//!   direct send takes only senders in an accepted domain, whose SPF record names this host.
//!   The bounce comes from the profile's `sender` (an accepted-domain address) when it has
//!   one; only a profile without `sender` keeps the null sender (and From MAILER-DAEMON@ the
//!   original sender's domain), which a certificate connector may still accept.
//!
//! A bounce is never bounced: the queue marks its entry `is_bounce` (its envelope sender is
//! no longer empty, so that is the only mark), and a bounce that fails goes to the dead
//! letter. With a real sender it also asks for `NOTIFY=NEVER`, so that a server further on
//! does not answer an undeliverable bounce with a notice of its own.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::config::Profile;
use crate::message::Ret;

use super::runner::Problem;
use super::{Entry, read_header_block};

/// Longest line we put in a header field or report line (RFC 5322 allows 998).
const MAX_LINE: usize = 900;

fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_LINE {
        let mut cut = MAX_LINE;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

fn domain_of(addr: &str) -> Option<&str> {
    addr.rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>'))
        .filter(|d| !d.is_empty())
}

/// The envelope sender of a bounce sent through `profile`: empty for the null sender. See
/// the module documentation for why it is not always `<>`.
pub fn bounce_sender(profile: &Profile) -> String {
    let nonempty = |s: Option<&str>| {
        s.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let found = if profile.mode.sends_as_mailbox() {
        nonempty(profile.login_user()).or_else(|| nonempty(profile.sender.as_deref()))
    } else {
        nonempty(profile.sender.as_deref())
    };
    found.unwrap_or_default()
}

/// The From address of a bounce: its envelope sender, or for the null sender
/// MAILER-DAEMON at the original sender's domain.
fn bounce_from(profile: &Profile, original_sender: &str) -> String {
    let sender = bounce_sender(profile);
    if !sender.is_empty() {
        return sender;
    }
    let domain = domain_of(original_sender).unwrap_or("localhost");
    format!("MAILER-DAEMON@{domain}")
}

/// The enhanced status for the report: the reply's when it has a 5.x.x one.
fn status(p: &Problem, expired: bool) -> String {
    if expired {
        return "5.4.7".into();
    }
    match &p.reply {
        Some(r) => match r.enhanced {
            Some(e) if e.class == 5 => e.to_string(),
            Some(e) => format!("5.{}.{}", e.subject, e.detail),
            None => "5.0.0".into(),
        },
        None => "5.0.0".into(),
    }
}

fn rfc2822(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.to_rfc2822())
        .unwrap_or_default()
}

/// Build the bounce for `entry` (body at `body_path`) whose `failures` failed permanently.
pub fn build_bounce(
    profile: &Profile,
    entry: &Entry,
    body_path: &Path,
    failures: &[(String, Problem)],
    expired: bool,
    attach_max: u64,
) -> io::Result<Vec<u8>> {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    let now = super::now_unix();
    let r: u64 = rand::random();
    let boundary = format!("=_m365send-bounce-{r:016x}");
    let from = bounce_from(profile, &entry.envelope.sender);
    let whole = entry.size <= attach_max && entry.envelope.dsn.ret != Some(Ret::Hdrs);

    let mut m = String::new();
    let crlf = "\r\n";
    let _ = write!(m, "From: Mail Delivery System <{from}>{crlf}");
    let _ = write!(m, "To: <{}>{crlf}", one_line(&entry.envelope.sender));
    let _ = write!(
        m,
        "Subject: Undelivered Mail Returned to Sender{crlf}Date: {}{crlf}",
        rfc2822(now)
    );
    let _ = write!(
        m,
        "Message-ID: <{}.{r:016x}.bounce@{host}>{crlf}Auto-Submitted: auto-replied{crlf}",
        entry.id
    );
    let _ = write!(
        m,
        "MIME-Version: 1.0{crlf}Content-Type: multipart/report; \
         report-type=delivery-status;{crlf}\tboundary=\"{boundary}\"{crlf}{crlf}"
    );
    let _ = write!(m, "This is a MIME-encapsulated message.{crlf}{crlf}");

    // 1. Human-readable part.
    let _ = write!(
        m,
        "--{boundary}{crlf}Content-Type: text/plain; charset=utf-8{crlf}\
         Content-Transfer-Encoding: 8bit{crlf}{crlf}"
    );
    let _ = write!(
        m,
        "This is m365send on {host}. Your message could not be delivered to the{crlf}\
         following recipient(s). It was queued at {} and tried {} time(s).{crlf}{crlf}",
        rfc2822(entry.created),
        entry.attempts + u32::from(!expired)
    );
    for (rcpt, p) in failures {
        let _ = write!(m, "<{}>:{crlf}", one_line(rcpt));
        if let Some(reply) = &p.reply {
            let _ = write!(
                m,
                "    The server replied: {}{crlf}",
                one_line(&reply.to_string())
            );
        }
        if !p.error.is_empty() {
            let _ = write!(m, "    {}{crlf}", one_line(&p.error));
        }
        for line in p.explanation.lines().filter(|l| !l.trim().is_empty()) {
            let _ = write!(m, "    {}{crlf}", one_line(line.trim()));
        }
        m.push_str(crlf);
    }
    if !whole {
        let _ = write!(
            m,
            "Only the headers of your message are attached.{crlf}{crlf}"
        );
    }

    // 2. message/delivery-status.
    let _ = write!(
        m,
        "--{boundary}{crlf}Content-Type: message/delivery-status{crlf}{crlf}"
    );
    let _ = write!(m, "Reporting-MTA: dns; {host}{crlf}");
    let _ = write!(m, "X-M365send-Queue-ID: {}{crlf}", entry.id);
    if let Some(envid) = &entry.envelope.dsn.envid {
        let _ = write!(m, "Original-Envelope-Id: {}{crlf}", one_line(envid));
    }
    let _ = write!(m, "Arrival-Date: {}{crlf}", rfc2822(entry.created));
    for (rcpt, p) in failures {
        let _ = write!(m, "{crlf}Final-Recipient: rfc822; {}{crlf}", one_line(rcpt));
        let _ = write!(
            m,
            "Action: failed{crlf}Status: {}{crlf}",
            status(p, expired)
        );
        match &p.reply {
            Some(reply) => {
                let _ = write!(
                    m,
                    "Diagnostic-Code: smtp; {}{crlf}",
                    one_line(&reply.to_string())
                );
            }
            None if !p.error.is_empty() => {
                let _ = write!(
                    m,
                    "Diagnostic-Code: X-m365send; {}{crlf}",
                    one_line(&p.error)
                );
            }
            None => {}
        }
        let _ = write!(m, "Last-Attempt-Date: {}{crlf}", rfc2822(now));
    }
    m.push_str(crlf);

    // 3. The original (or its headers).
    let mut out = m.into_bytes();
    if whole {
        out.extend_from_slice(
            format!("--{boundary}{crlf}Content-Type: message/rfc822{crlf}{crlf}").as_bytes(),
        );
        let mut body = Vec::with_capacity(entry.size as usize);
        File::open(body_path)?.read_to_end(&mut body)?;
        out.extend_from_slice(&body);
        if !body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    } else {
        out.extend_from_slice(
            format!("--{boundary}{crlf}Content-Type: text/rfc822-headers{crlf}{crlf}").as_bytes(),
        );
        let headers = read_header_block(body_path)?;
        out.extend_from_slice(headers.as_bytes());
        if !headers.ends_with("\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("{crlf}--{boundary}--{crlf}").as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn profile(mode: Mode, sender: Option<&str>, mailbox: Option<&str>) -> Profile {
        Profile {
            mode,
            sender: sender.map(str::to_owned),
            mailbox: mailbox.map(str::to_owned),
            ..Profile::default()
        }
    }

    #[test]
    fn a_bounce_comes_from_whom_microsoft_365_accepts_in_each_mode() {
        // A mailbox login: the mailbox (auth.user first), even when `sender` is another
        // address it may send as.
        for mode in [Mode::Submit, Mode::Hve, Mode::Acs, Mode::Graph] {
            let mut p = profile(mode, Some("alerts@contoso.com"), Some("app@contoso.com"));
            assert_eq!(bounce_sender(&p), "app@contoso.com", "{mode:?}");
            p.auth.user = Some("shared@contoso.com".into());
            assert_eq!(bounce_sender(&p), "shared@contoso.com", "{mode:?}");
            let p = profile(mode, Some("alerts@contoso.com"), None);
            assert_eq!(bounce_sender(&p), "alerts@contoso.com", "{mode:?}");
        }
        // Relay and direct send: the profile's accepted-domain sender, else the null sender.
        for mode in [Mode::Relay, Mode::Direct] {
            let p = profile(mode, Some("alerts@contoso.com"), Some("app@contoso.com"));
            assert_eq!(bounce_sender(&p), "alerts@contoso.com", "{mode:?}");
            assert_eq!(bounce_from(&p, "cron@contoso.com"), "alerts@contoso.com");
            let p = profile(mode, None, Some("app@contoso.com"));
            assert_eq!(bounce_sender(&p), "", "{mode:?}");
            assert_eq!(
                bounce_from(&p, "cron@contoso.com"),
                "MAILER-DAEMON@contoso.com"
            );
        }
    }
}
