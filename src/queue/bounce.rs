//! Bounces: an RFC 3464 delivery status notification for a queued message that failed.
//!
//! `multipart/report; report-type=delivery-status` with a human-readable part (what failed,
//! the server's reply, the explanation), a `message/delivery-status` part, and the original as
//! `message/rfc822` (or `text/rfc822-headers` when it is large or the sender asked RET=HDRS).
//! Sent from MAILER-DAEMON (the profile's sender address for submission, which must send as
//! itself) with the null envelope sender.

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

/// The From address of a bounce.
fn bounce_from(profile: &Profile, original_sender: &str) -> String {
    let own = profile.sender.as_deref().or(profile.mailbox.as_deref());
    match profile.mode {
        // Submission sends only as the mailbox (or one it may send as).
        m if m.sends_as_mailbox() && own.is_some() => own.unwrap_or_default().into(),
        _ => {
            let domain = own
                .and_then(domain_of)
                .or_else(|| domain_of(original_sender))
                .unwrap_or("localhost");
            format!("MAILER-DAEMON@{domain}")
        }
    }
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
