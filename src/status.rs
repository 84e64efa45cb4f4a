//! The leaf status types every layer shares: an SMTP reply with its enhanced status code,
//! the protocol step something happened in, and a transport's answers for one message.
//!
//! Owns: these plain data types and their small accessors. Must not: import anything from the
//! crate (smtp, graph, deliver, explain and auth all import it), do I/O, or word anything for
//! the user (explain does).

use std::fmt;
use std::str::FromStr;

/// An enhanced status code such as 5.7.60.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl FromStr for EnhancedCode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.split('.');
        let class: u8 = it.next().ok_or(())?.parse().map_err(|_| ())?;
        let subject: u16 = it.next().ok_or(())?.parse().map_err(|_| ())?;
        let detail: u16 = it.next().ok_or(())?.parse().map_err(|_| ())?;
        if it.next().is_some() || !(2..=5).contains(&class) || subject > 999 || detail > 999 {
            return Err(());
        }
        Ok(EnhancedCode::new(class, subject, detail))
    }
}

/// A complete (possibly multi-line) reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The enhanced status code of the first line, when present.
    pub enhanced: Option<EnhancedCode>,
    /// Each line's text after the code and separator (the enhanced code left in).
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
    /// All lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    /// `550 5.7.60 SMTP; Client does not have permissions ...` on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

impl Reply {
    /// Build a reply from its code and line texts; the enhanced code is taken from the first
    /// line when its class matches the reply's first digit.
    pub fn new(code: u16, lines: Vec<String>) -> Reply {
        let enhanced = lines
            .first()
            .and_then(|l| l.split_whitespace().next())
            .and_then(|w| w.parse::<EnhancedCode>().ok())
            .filter(|e| u16::from(e.class) == code / 100);
        Reply {
            code,
            enhanced,
            lines,
        }
    }

    /// The text after the enhanced status code (or the whole text when there is none).
    pub fn message(&self) -> String {
        let t = self.text();
        match self.enhanced {
            Some(e) => {
                let p = e.to_string();
                t.strip_prefix(&p)
                    .map(|s| s.trim_start().to_owned())
                    .unwrap_or(t)
            }
            None => t,
        }
    }
}

/// The protocol step something happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    TlsHandshake,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// The reply after the message content (end of DATA, or the last BDAT chunk).
    DataEnd,
    Rset,
    Quit,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Connect => "connect",
            Step::Greeting => "greeting",
            Step::Ehlo => "EHLO",
            Step::StartTls => "STARTTLS",
            Step::TlsHandshake => "TLS handshake",
            Step::Auth => "AUTH",
            Step::Mail => "MAIL FROM",
            Step::Rcpt => "RCPT TO",
            Step::Data => "DATA",
            Step::DataEnd => "end of data",
            Step::Rset => "RSET",
            Step::Quit => "QUIT",
        })
    }
}

/// The server's answers for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageResult {
    /// Reply to MAIL FROM.
    pub mail: Reply,
    /// Each recipient with its RCPT reply, in envelope order. Meaningless (usually 503)
    /// when MAIL was refused.
    pub recipients: Vec<(String, Reply)>,
    /// The reply that decided the content: to end of data / the last BDAT chunk (step
    /// DataEnd), or a refusal of DATA/BDAT itself (step Data). None when no data was sent
    /// because MAIL or every recipient was refused.
    pub data: Option<(Step, Reply)>,
}

impl MessageResult {
    /// The server took responsibility for the message (for the accepted recipients).
    pub fn delivered(&self) -> bool {
        self.mail.is_positive()
            && matches!(&self.data, Some((Step::DataEnd, r)) if r.is_positive())
            && self.recipients.iter().any(|(_, r)| r.is_positive())
    }
    /// Recipients that got the message.
    pub fn accepted(&self) -> Vec<&str> {
        if !self.delivered() {
            return Vec::new();
        }
        self.recipients
            .iter()
            .filter(|(_, r)| r.is_positive())
            .map(|(a, _)| a.as_str())
            .collect()
    }
    /// Recipients refused at RCPT (only when MAIL was accepted).
    pub fn refused(&self) -> Vec<(&str, &Reply)> {
        if !self.mail.is_positive() {
            return Vec::new();
        }
        self.recipients
            .iter()
            .filter(|(_, r)| !r.is_positive())
            .map(|(a, r)| (a.as_str(), r))
            .collect()
    }
    /// A refusal of the whole message (MAIL, DATA or the content), if any. Refusals of
    /// every recipient are not reported here: see `refused`.
    pub fn message_failure(&self) -> Option<(Step, &Reply)> {
        if !self.mail.is_positive() {
            return Some((Step::Mail, &self.mail));
        }
        if !self.recipients.iter().any(|(_, r)| r.is_positive()) {
            return None;
        }
        match &self.data {
            Some((step, r)) if !r.is_positive() => Some((*step, r)),
            _ => None,
        }
    }
}

/// A Microsoft Graph error carried as a reply, so that the queue, the log line, bounces and
/// `-bs` treat it as they treat an SMTP refusal: the SMTP code and enhanced code that mean the
/// same, and the text `Graph <error code> (HTTP <status>): <Graph's message>`.
pub fn graph_reply(
    smtp: u16,
    enhanced: EnhancedCode,
    http: u16,
    code: &str,
    message: &str,
) -> Reply {
    Reply {
        code: smtp,
        enhanced: Some(enhanced),
        lines: vec![format!("{enhanced} Graph {code} (HTTP {http}): {message}")],
    }
}

/// The Graph error a reply carries (see [`graph_reply`]): (HTTP status, error code).
pub fn graph_error(reply: &Reply) -> Option<(u16, String)> {
    let text = reply.message();
    let rest = text.strip_prefix("Graph ")?;
    let (code, rest) = rest.split_once(" (HTTP ")?;
    let (status, _) = rest.split_once(')')?;
    Some((status.parse().ok()?, code.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_error_survives_the_reply_form() {
        let r = graph_reply(
            550,
            EnhancedCode::new(5, 7, 60),
            403,
            "ErrorSendAsDenied",
            "The user account ... does not have the right",
        );
        assert!(r.is_permanent());
        assert_eq!(
            r.to_string(),
            "550 5.7.60 Graph ErrorSendAsDenied (HTTP 403): The user account ... does not have the right"
        );
        assert_eq!(graph_error(&r), Some((403, "ErrorSendAsDenied".to_owned())));
        // As the queue stores it and reads it back.
        let back = Reply::new(550, vec![r.text()]);
        assert_eq!(
            graph_error(&back),
            Some((403, "ErrorSendAsDenied".to_owned()))
        );
        assert_eq!(
            graph_error(&Reply::new(550, vec!["5.7.60 SMTP; no".into()])),
            None
        );
    }
}
