//! Reading SMTP replies off the wire: the incremental parser and its limits. The reply types
//! themselves live in the leaf `crate::status`.

pub use crate::status::{EnhancedCode, Reply};

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
    fn malformed() {
        assert!(Reply::parse("hello").is_err());
        assert!(Reply::parse("250-a\r\n251 b").is_err());
        assert!(Reply::parse("250x").is_err());
        assert!(Reply::parse("250-a").is_err());
    }
}
