//! The EHLO capability list (RFC 5321 §4.1.1.1 and the extensions Microsoft 365 advertises).

use super::Reply;

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `SIZE n` (None when not advertised; Some(0) means no fixed limit).
    pub size: Option<u64>,
    pub pipelining: bool,
    pub chunking: bool,
    pub binarymime: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub enhanced_status_codes: bool,
    pub starttls: bool,
    /// AUTH mechanisms, upper case, in the server's order.
    pub auth: Vec<String>,
    /// Every keyword line as received (after the greeting line).
    pub raw: Vec<String>,
}

impl Capabilities {
    /// Parse a positive EHLO reply. The first line is the server's greeting, not a keyword.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut c = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            c.raw.push(line.clone());
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "PIPELINING" => c.pipelining = true,
                "CHUNKING" => c.chunking = true,
                "BINARYMIME" => c.binarymime = true,
                "8BITMIME" => c.eight_bit_mime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "DSN" => c.dsn = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                "STARTTLS" => c.starttls = true,
                "AUTH" => {
                    for m in words {
                        let m = m.to_ascii_uppercase();
                        if !c.auth.contains(&m) {
                            c.auth.push(m);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    pub fn has_auth(&self, mech: &str) -> bool {
        self.auth.iter().any(|m| m.eq_ignore_ascii_case(mech))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_submission_lists() {
        let before = Reply::parse(
            "250-SN4PR0201CA0001.outlook.office365.com Hello [192.0.2.1]\r\n250-SIZE 157286400\r\n\
             250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250-8BITMIME\r\n\
             250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n",
        )
        .unwrap();
        let c = Capabilities::from_ehlo(&before);
        assert_eq!(c.size, Some(157_286_400));
        assert!(c.pipelining && c.dsn && c.enhanced_status_codes && c.starttls);
        assert!(c.eight_bit_mime && c.binarymime && c.chunking && c.smtputf8);
        assert!(c.auth.is_empty());
        let after = Reply::parse("250-x Hello\r\n250-AUTH LOGIN XOAUTH2\r\n250 SIZE\r\n").unwrap();
        let c = Capabilities::from_ehlo(&after);
        assert_eq!(c.auth, vec!["LOGIN", "XOAUTH2"]);
        assert!(c.has_auth("xoauth2") && !c.has_auth("PLAIN"));
        assert_eq!(c.size, Some(0));
    }
}
