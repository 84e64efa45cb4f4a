//! SMTP replies: code, enhanced status code (RFC 3463), and the full text kept for the user.

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

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A line that does not start with a three-digit code.
    Malformed(String),
    /// Continuation lines with different codes.
    CodeMismatch,
}

/// Incremental parser: feed it lines (without CRLF) until it returns a complete reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
}

/// Most lines a single reply may have (a hostile server must not grow memory without bound).
pub const MAX_REPLY_LINES: usize = 512;

impl ReplyParser {
    /// Feed one line. `Ok(Some(reply))` when this line ended the reply.
    pub fn line(&mut self, raw: &str) -> Result<Option<Reply>, ParseError> {
        let b = raw.as_bytes();
        if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err(ParseError::Malformed(raw.chars().take(80).collect()));
        }
        let code: u16 = raw[..3]
            .parse()
            .map_err(|_| ParseError::Malformed(raw.chars().take(80).collect()))?;
        if !(200..600).contains(&code) {
            return Err(ParseError::Malformed(raw.chars().take(80).collect()));
        }
        if let Some(c) = self.code
            && c != code
        {
            return Err(ParseError::CodeMismatch);
        }
        self.code = Some(code);
        let (last, text) = match b.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &raw[4..]),
            Some(b'-') => (false, &raw[4..]),
            Some(_) => return Err(ParseError::Malformed(raw.chars().take(80).collect())),
        };
        if self.lines.len() >= MAX_REPLY_LINES {
            return Err(ParseError::Malformed("too many lines in one reply".into()));
        }
        self.lines.push(text.to_owned());
        if !last {
            return Ok(None);
        }
        let lines = std::mem::take(&mut self.lines);
        self.code = None;
        Ok(Some(Reply::new(code, lines)))
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

    /// Parse a complete reply from text (lines separated by CRLF or LF). For tests and tools.
    pub fn parse(text: &str) -> Result<Reply, ParseError> {
        let mut p = ReplyParser::default();
        for l in text.lines() {
            if let Some(r) = p.line(l)? {
                return Ok(r);
            }
        }
        Err(ParseError::Malformed("incomplete reply".into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_with_enhanced_code() {
        let r = Reply::parse("250-smtp.example Hello\r\n250-SIZE 157286400\r\n250 PIPELINING\r\n")
            .unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(
            r.lines,
            vec!["smtp.example Hello", "SIZE 157286400", "PIPELINING"]
        );
        let r = Reply::parse("550 5.7.60 SMTP; Client does not have permissions").unwrap();
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 7, 60)));
        assert_eq!(r.message(), "SMTP; Client does not have permissions");
        assert_eq!(
            r.to_string(),
            "550 5.7.60 SMTP; Client does not have permissions"
        );
        // class must match the code
        assert_eq!(Reply::parse("250 5.0.0 odd").unwrap().enhanced, None);
        assert_eq!(Reply::parse("220").unwrap().lines, vec![""]);
    }

    #[test]
    fn malformed() {
        assert!(Reply::parse("hello").is_err());
        assert!(Reply::parse("250-a\r\n251 b").is_err());
        assert!(Reply::parse("250x").is_err());
        assert!(Reply::parse("250-a").is_err());
    }
}
