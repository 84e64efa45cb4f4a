//! What a certificate says about itself (x509-parser): its names, its issuer and its validity
//! dates, for the configuration's certificates and the server's. Parsing only: trust is
//! rustls's business (the TLS handshake verifies the server; Microsoft verifies ours). Must
//! not: decide whether a certificate is trusted.

use x509_parser::extensions::GeneralName;

/// The facts doctor reports about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The subject, e.g. "CN=mail.contoso.com".
    pub subject: String,
    pub issuer: String,
    /// The DNS names: the SAN entries, else the subject's common names.
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// Parse a DER certificate.
pub fn facts(der: &[u8]) -> Result<Facts, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a readable X.509 certificate ({e})"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
            .collect();
    }
    let v = cert.validity();
    Ok(Facts {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        names,
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// Whole days from `now` to `at` (negative: in the past).
pub fn days_until(at: i64, now: i64) -> i64 {
    (at - now).div_euclid(86_400)
}

/// "expires 2027-03-01 (in 300 days)", "expired 2024-01-01 (12 days ago)".
pub fn expiry(facts: &Facts, now: i64) -> String {
    let date = chrono::DateTime::from_timestamp(facts.not_after, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| facts.not_after.to_string());
    let days = days_until(facts.not_after, now);
    if facts.not_after < now {
        let ago = (now - facts.not_after) / 86_400;
        format!(
            "expired {date} ({ago} day{} ago)",
            if ago == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "expires {date} (in {days} day{})",
            if days == 1 { "" } else { "s" }
        )
    }
}

/// The first name of the certificate that is an accepted domain or a subdomain of one
/// (a wildcard `*.contoso.com` counts as contoso.com's), with that domain.
pub fn accepted_name<'a>(
    names: &'a [String],
    accepted: &'a [String],
) -> Option<(&'a str, &'a str)> {
    for name in names {
        let n = name.trim_end_matches('.').to_ascii_lowercase();
        let n = n.strip_prefix("*.").unwrap_or(&n);
        for a in accepted {
            let d = a.trim_end_matches('.').to_ascii_lowercase();
            if n == d || n.ends_with(&format!(".{d}")) {
                return Some((name.as_str(), a.as_str()));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_domains() {
        let accepted = vec!["contoso.com".to_owned()];
        let names = vec![
            "relay.fabrikam.com".to_owned(),
            "mail.contoso.com".to_owned(),
        ];
        assert_eq!(
            accepted_name(&names, &accepted),
            Some(("mail.contoso.com", "contoso.com"))
        );
        assert!(accepted_name(&["*.contoso.com".to_owned()], &accepted).is_some());
        assert!(accepted_name(&["notcontoso.com".to_owned()], &accepted).is_none());
        assert!(accepted_name(&names[..1], &accepted).is_none());
    }

    #[test]
    fn expiry_words() {
        let f = Facts {
            subject: String::new(),
            issuer: String::new(),
            names: vec![],
            not_before: 0,
            not_after: 1_000 * 86_400,
        };
        assert_eq!(expiry(&f, 990 * 86_400), "expires 1972-09-27 (in 10 days)");
        assert_eq!(
            expiry(&f, 1_012 * 86_400),
            "expired 1972-09-27 (12 days ago)"
        );
        assert_eq!(days_until(0, 1), -1);
    }
}
