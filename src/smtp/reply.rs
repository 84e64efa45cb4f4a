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
