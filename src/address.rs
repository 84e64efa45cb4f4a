//! Addresses as the envelope sees them: parsing address lists (mail-parser), splitting local
//! part and domain, qualifying bare names, and deciding whether an address is "local" to this
//! host (root, root@host.localdomain).
//!
//! Owns: those small rules, shared by message and route. Must not: do I/O except asking the
//! OS for the host name (`LocalHost::current`).

use mail_parser::{HeaderValue, MessageParser};

/// The host we run on, for "is this address local?" decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalHost {
    /// The host name as the OS reports it (possibly fully qualified), lower case.
    pub fqdn: String,
}

impl LocalHost {
    /// The current host (gethostname).
    pub fn current() -> LocalHost {
        LocalHost::named(&gethostname::gethostname().to_string_lossy())
    }

    pub fn named(name: &str) -> LocalHost {
        LocalHost {
            fqdn: name.trim().trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// True when `domain` names this host itself: its FQDN, its short name, `localhost`,
    /// `localdomain`, or anything under `.localdomain` / `.localhost`.
    pub fn is_own_host(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let short = self.fqdn.split('.').next().unwrap_or("");
        (!self.fqdn.is_empty() && d == self.fqdn)
            || (!short.is_empty() && d == short)
            || d == "localhost"
            || d == "localdomain"
            || d.ends_with(".localdomain")
            || d.ends_with(".localhost")
    }

    /// The domain part of the FQDN (`host.example.net` → `example.net`), if any.
    pub fn domain_part(&self) -> Option<&str> {
        self.fqdn
            .split_once('.')
            .map(|(_, d)| d)
            .filter(|d| d.contains('.') || *d == "localdomain")
    }

    /// True when `domain` is the host's own domain: the host itself, or the domain part of its
    /// FQDN unless that domain is one of the tenant's accepted domains.
    pub fn is_own_domain(&self, domain: &str, accepted: &[String]) -> bool {
        if self.is_own_host(domain) {
            return true;
        }
        match self.domain_part() {
            Some(part) => domain.eq_ignore_ascii_case(part) && !is_accepted(domain, accepted),
            None => false,
        }
    }
}

/// `local@domain` → (`local`, Some(`domain`)); `root` → (`root`, None).
pub fn split(addr: &str) -> (&str, Option<&str>) {
    match addr.rsplit_once('@') {
        Some((l, d)) if !d.is_empty() => (l, Some(d)),
        _ => (addr, None),
    }
}

pub fn domain_of(addr: &str) -> Option<&str> {
    split(addr).1
}

/// True when `domain` is in `accepted` (case-insensitive). An empty list accepts nothing.
pub fn is_accepted(domain: &str, accepted: &[String]) -> bool {
    let d = domain.trim_end_matches('.');
    accepted
        .iter()
        .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(d))
}

/// Key for removing duplicates: the domain in lower case; the local part as given (RFC 5321
/// §2.4: only the destination may fold its case) or, with `fold_local`, in lower case too (a
/// destination known to compare addresses without case: Exchange).
pub fn dedup_key(addr: &str, fold_local: bool) -> String {
    let (l, d) = split(addr);
    let l = if fold_local {
        l.to_lowercase()
    } else {
        l.to_owned()
    };
    match d {
        Some(d) => format!("{l}@{}", d.to_ascii_lowercase()),
        None => l,
    }
}

/// Append `domain` to a bare local name.
pub fn qualify(addr: &str, domain: Option<&str>) -> String {
    match (split(addr).1, domain) {
        (None, Some(d)) if !d.is_empty() => format!("{addr}@{d}"),
        _ => addr.to_owned(),
    }
}

/// The addresses in an address-list value (`a@x, "B" <b@y>, Team: c@z;`), as mail-parser
/// reads a To header: groups, comments, quoted local parts and encoded words included.
pub fn parse_list(value: &str) -> Vec<String> {
    let raw = format!("To: {value}\r\n\r\n");
    let mut out = Vec::new();
    if let Some(msg) = MessageParser::default().parse_headers(raw.as_bytes()) {
        for h in msg.headers() {
            if let HeaderValue::Address(list) = &h.value {
                out.extend(list.iter().filter_map(addr_of));
            }
        }
    }
    out.retain(|a| !a.is_empty());
    out
}

/// The address of a parsed mailbox. mail-parser 0.11 reads a quoted local part
/// (`"odd local"@contoso.com`) as a display name plus `@contoso.com`: put it back together.
/// It also reads a bare local name (`To: root`, `From: www-data`, as cron and local programs
/// write them) as a display name without an address: that word is the address.
pub fn addr_of(a: &mail_parser::Addr<'_>) -> Option<String> {
    let Some(addr) = a.address() else {
        return a
            .name()
            .map(str::trim)
            .filter(|n| is_bare_local(n))
            .map(str::to_owned);
    };
    let addr = clean(addr);
    if let Some(domain) = addr.strip_prefix('@')
        && let Some(local) = a.name()
    {
        let local = local.replace('\\', "\\\\").replace('"', "\\\"");
        return Some(format!("\"{local}\"@{domain}"));
    }
    Some(addr).filter(|a| !a.is_empty())
}

/// The display name of a parsed mailbox: none when mail-parser's "name" is really (part of)
/// the address (a bare local name, a quoted local part; see [`addr_of`]).
pub fn display_name_of(a: &mail_parser::Addr<'_>) -> Option<String> {
    let addr = a.address()?;
    if clean(addr).starts_with('@') {
        return None;
    }
    a.name().map(str::to_owned).filter(|n| !n.is_empty())
}

/// A local name written alone (`root`, `www-data`), not a display name (`Root User`, or a
/// decoded `=?utf-8?q?J=C3=B6rg?=`): user names are ASCII.
fn is_bare_local(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !"<>@,;:\"()[]\\".contains(c))
}

/// Every mailbox of an address-list value (groups flattened): (display name, address).
pub fn parse_mailboxes(value: &str) -> Vec<(Option<String>, String)> {
    let raw = format!("To: {value}\r\n\r\n");
    let mut out = Vec::new();
    if let Some(msg) = MessageParser::default().parse_headers(raw.as_bytes()) {
        for h in msg.headers() {
            if let HeaderValue::Address(list) = &h.value {
                for a in list.iter() {
                    if let Some(addr) = addr_of(a) {
                        out.push((display_name_of(a), addr));
                    }
                }
            }
        }
    }
    out
}

/// The first mailbox of an address-list value: (display name, address).
pub fn parse_mailbox(value: &str) -> Option<(Option<String>, String)> {
    let raw = format!("From: {value}\r\n\r\n");
    let msg = MessageParser::default().parse_headers(raw.as_bytes())?;
    let h = msg.headers().first()?;
    match &h.value {
        HeaderValue::Address(list) => {
            let a = list.first()?;
            let addr = addr_of(a)?;
            Some((display_name_of(a), addr))
        }
        _ => None,
    }
}

/// An address as given by a caller on the command line: `a@x`, `<a@x>`, `Name <a@x>`.
pub fn from_arg(arg: &str) -> Option<String> {
    let t = arg.trim();
    if t.is_empty() {
        return None;
    }
    if !t.contains(['<', '(', '"', ',', ':']) {
        return Some(t.to_owned());
    }
    parse_mailbox(t).map(|(_, a)| a)
}

/// Why `addr` (qualified: `local@domain`) cannot go into `MAIL FROM:<...>` or
/// `RCPT TO:<...>`, if it cannot: a space or bracket would end the path early and let the rest
/// be read as SMTP parameters. A quoted local part (`"odd local"@x`) may hold spaces, but must
/// be one RFC 5321 Quoted-string: `"`, then printable ASCII other than `"` and `\` (or
/// non-ASCII text, RFC 6531) or a backslash and one printable ASCII character, then `"`.
pub fn path_problem(addr: &str) -> Option<&'static str> {
    if addr.chars().any(char::is_control) {
        return Some("contains a control character");
    }
    let (local, domain) = addr.rsplit_once('@')?;
    if local.is_empty() {
        return Some("has nothing before the @");
    }
    if local.starts_with('"') {
        if !is_quoted_string(local) {
            return Some(
                "has a malformed quoted local part (a quote not closed at the @, or a \
                 character not allowed between quotes)",
            );
        }
    } else if local.contains(|c: char| c.is_whitespace() || "<>()[],;:\"\\".contains(c)) {
        return Some("has a space or one of <>()[],;:\"\\ in its local part");
    }
    if domain.is_empty()
        || domain.starts_with('.')
        || domain.contains("..")
        || domain.contains(|c: char| c.is_whitespace() || "<>()\",;:@\\".contains(c))
    {
        return Some("has an invalid domain");
    }
    None
}

/// RFC 5321 `Quoted-string` (with RFC 6531's UTF-8): the whole of `s`.
fn is_quoted_string(s: &str) -> bool {
    let Some(inner) = s.strip_prefix('"') else {
        return false;
    };
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            // quoted-pairSMTP: a backslash and one printable ASCII character (or space).
            '\\' => match chars.next() {
                Some(' '..='~') => {}
                _ => return false,
            },
            // The closing quote must end the local part.
            '"' => return chars.next().is_none(),
            // qtextSMTP: printable ASCII but `"` and `\`, and space.
            ' ' | '!' | '#'..='[' | ']'..='~' => {}
            c if !c.is_ascii() && !c.is_control() => {}
            _ => return false,
        }
    }
    false
}

fn clean(a: &str) -> String {
    a.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_qualifies() {
        assert_eq!(split("a@b.c"), ("a", Some("b.c")));
        assert_eq!(split("root"), ("root", None));
        assert_eq!(qualify("root", Some("contoso.com")), "root@contoso.com");
        assert_eq!(qualify("a@b", Some("contoso.com")), "a@b");
        assert_eq!(dedup_key("Ab@CONTOSO.com", false), "Ab@contoso.com");
        assert_eq!(dedup_key("Ab@CONTOSO.com", true), "ab@contoso.com");
        assert_eq!(dedup_key("Ærø@x.dk", true), "ærø@x.dk");
    }

    #[test]
    fn own_host() {
        let h = LocalHost::named("web1.example.net");
        assert!(h.is_own_host("web1.example.net"));
        assert!(h.is_own_host("WEB1"));
        assert!(h.is_own_host("host.localdomain"));
        assert!(h.is_own_domain("example.net", &[]));
        assert!(!h.is_own_domain("example.net", &["example.net".into()]));
        assert!(!h.is_own_domain("contoso.com", &[]));
    }

    #[test]
    fn lists() {
        assert_eq!(parse_list("Undisclosed recipients:;"), Vec::<String>::new());
        assert_eq!(
            parse_list("a@x.y, \"B, b\" <b@y.z> (c), Team: c@z.w, d@z.w;"),
            vec!["a@x.y", "b@y.z", "c@z.w", "d@z.w"]
        );
        assert_eq!(from_arg("Ops <ops@x.y>").as_deref(), Some("ops@x.y"));
        assert_eq!(from_arg("root").as_deref(), Some("root"));
    }

    #[test]
    fn path_problems() {
        for ok in [
            "a@b.c",
            "\"odd local\"@contoso.com",
            "j\u{f6}rg@m\u{fc}ller.de",
            "x@[10.0.0.1]",
            "\"a\\\"b\"@contoso.com",
            "\"a\\\\\"@contoso.com",
            "\"<a> NOTIFY=x\"@contoso.com",
            "\"j\u{f6}rg m\"@m\u{fc}ller.de",
            "\"\"@contoso.com",
        ] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        // Quoted local parts that are not one Quoted-string.
        for bad in [
            "\"a\"b\"@contoso.com",
            "\"a\\\"@contoso.com",
            "\"a\"x@contoso.com",
            "\"abc@contoso.com",
            "\"a\\\u{e9}\"@contoso.com",
            "\"\"\"@contoso.com",
            "a\\b@contoso.com",
            "\"@contoso.com",
        ] {
            let p = path_problem(bad);
            assert!(p.is_some(), "{bad}");
        }
        for bad in [
            "@contoso.com",
            "a b@contoso.com",
            "x@contoso.com> NOTIFY=SUCCESS",
            "x>@contoso.com",
            "x@contoso com",
            "x@",
            "x@.contoso.com",
        ] {
            assert!(path_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn bare_local_names_are_addresses() {
        // mail-parser reads `root` as a display name without an address.
        assert_eq!(parse_list("root"), vec!["root"]);
        assert_eq!(
            parse_list("root, www-data, a@x.y"),
            vec!["root", "www-data", "a@x.y"]
        );
        assert_eq!(parse_list("Team: root, a@x.y;"), vec!["root", "a@x.y"]);
        // A display name alone is not an address.
        assert_eq!(parse_list("Root User"), Vec::<String>::new());
        assert_eq!(parse_list("=?utf-8?q?J=C3=B6rg?="), Vec::<String>::new());
        assert_eq!(parse_mailbox("root"), Some((None, "root".to_owned())));
        assert_eq!(
            parse_mailbox("root (Cron Daemon)"),
            Some((Some("Cron Daemon".to_owned()), "root".to_owned()))
        );
    }
}
