//! Reading SMTP replies off the wire: the incremental parser and its limits. The reply types
//! themselves live in the leaf `crate::status`.

use std::fmt;

pub use crate::status::{EnhancedCode, Reply};

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A line that does not start with a three-digit code.
    Malformed(String),
    /// Continuation lines with different codes.
    CodeMismatch,
    /// More than [`MAX_REPLY_LINES`] lines in one reply.
    TooLong,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Malformed(m) => write!(f, "unexpected line {m:?}"),
            ParseError::CodeMismatch => f.write_str("reply lines with different codes"),
            ParseError::TooLong => write!(
                f,
                "the server's reply was too long (more than {MAX_REPLY_LINES} lines)"
            ),
        }
    }
}

/// Incremental parser: feed it lines (without CRLF) until it returns a complete reply.
///
/// What it keeps of a reply is capped ([`MAX_KEPT_LINES`] lines, [`MAX_KEPT_LINE`] bytes per
/// line, [`MAX_KEPT_BYTES`] in all): a reply is quoted in errors, log lines, queue metadata
/// and bounces, and a server may send 512 lines of 64 KB. The code and the first line (with
/// the enhanced status code) are always kept; a cut reply ends with a line saying how much
/// was left out.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
    /// Lines received in this reply (kept or not).
    seen: usize,
    kept_bytes: usize,
    dropped_lines: usize,
    dropped_bytes: usize,
}

/// Most lines a single reply may have (a hostile server must not grow memory without bound).
pub const MAX_REPLY_LINES: usize = 512;
/// Most lines of a reply kept.
pub const MAX_KEPT_LINES: usize = 32;
/// Most bytes of one line kept.
pub const MAX_KEPT_LINE: usize = 1024;
/// Most bytes of line text kept for one reply.
pub const MAX_KEPT_BYTES: usize = 4096;

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
        if self.seen >= MAX_REPLY_LINES {
            return Err(ParseError::TooLong);
        }
        self.seen += 1;
        self.keep(text);
        if !last {
            return Ok(None);
        }
        let mut lines = std::mem::take(&mut self.lines);
        if self.dropped_lines > 0 || self.dropped_bytes > 0 {
            lines.push(format!(
                "[reply cut: {} more lines and {} more bytes not kept]",
                self.dropped_lines, self.dropped_bytes
            ));
        }
        *self = ReplyParser::default();
        Ok(Some(Reply::new(code, lines)))
    }

    /// Keep (the start of) a line's text within the caps, counting what is left out. The
    /// first line always has room (MAX_KEPT_LINE < MAX_KEPT_BYTES).
    fn keep(&mut self, text: &str) {
        let room = MAX_KEPT_BYTES
            .saturating_sub(self.kept_bytes)
            .min(MAX_KEPT_LINE);
        if self.lines.len() >= MAX_KEPT_LINES || room == 0 {
            self.dropped_lines += 1;
            self.dropped_bytes += text.len();
            return;
        }
        let mut cut = text.len().min(room);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        self.dropped_bytes += text.len() - cut;
        self.kept_bytes += cut;
        self.lines.push(text[..cut].to_owned());
    }
}

impl Reply {
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
    fn huge_reply_is_kept_capped_with_its_codes() {
        let long = "x".repeat(60_000);
        let mut text = String::new();
        for _ in 0..511 {
            text.push_str(&format!("550-5.7.60 {long}\r\n"));
        }
        text.push_str("550 5.7.60 last\r\n");
        let r = Reply::parse(&text).unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 7, 60)));
        assert!(r.lines[0].starts_with("5.7.60 xxx"));
        let kept: usize = r.lines.iter().map(String::len).sum();
        assert!(kept <= MAX_KEPT_BYTES + 100, "{kept}");
        let marker = r.lines.last().unwrap();
        assert!(marker.starts_with("[reply cut: "), "{marker}");
        assert!(marker.contains(" more lines and "), "{marker}");
        // Short replies are untouched, and the parser is ready for the next reply.
        let mut p = ReplyParser::default();
        for l in text.lines() {
            let _ = p.line(l).unwrap();
        }
        assert_eq!(
            p.line("250 2.0.0 OK").unwrap().unwrap().lines,
            vec!["2.0.0 OK"]
        );
        // Multi-byte text is cut at a character boundary.
        let wide = format!("550 5.0.0 {}", "\u{e9}".repeat(2000));
        let r = Reply::parse(&wide).unwrap();
        assert!(r.lines[0].len() <= MAX_KEPT_LINE);
    }

    #[test]
    fn too_many_lines_reads_as_a_sentence() {
        let mut p = ReplyParser::default();
        for _ in 0..MAX_REPLY_LINES {
            assert_eq!(p.line("250-x"), Ok(None));
        }
        let e = p.line("250 x").unwrap_err();
        assert_eq!(e, ParseError::TooLong);
        assert_eq!(
            e.to_string(),
            "the server's reply was too long (more than 512 lines)"
        );
    }

    #[test]
    fn malformed() {
        assert!(Reply::parse("hello").is_err());
        assert!(Reply::parse("250-a\r\n251 b").is_err());
        assert!(Reply::parse("250x").is_err());
        assert!(Reply::parse("250-a").is_err());
    }
}
