//! Group 2, DNS of the sender domain, through the profile's resolver (`endpoint.dns_server`,
//! else the system's; built by `route::build_resolver`, the MX lookup is `route::lookup_mx`):
//! the MX pointing at Microsoft 365, SPF including Microsoft's, the DKIM selector CNAMEs and
//! DMARC. Each with the record text seen. Must not: ask any server but the profile's
//! resolver, or build a resolver of its own.

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::{Check, Ctx};
use crate::config::{Cloud, Mode};
use crate::exit::Exit;

/// The DNS checks, or one skipped check when the profile has no sender domain.
pub async fn checks(ctx: &Ctx<'_>) -> Vec<Check> {
    let Some(domain) = ctx.domain() else {
        return vec![Check::skipped(
            "dns",
            "no sender domain to look up: set `sender` (or `mailbox`) in the profile",
        )];
    };
    let server = ctx.profile.endpoint.dns_server;
    let resolver = match crate::route::build_resolver(server) {
        Ok(r) => r,
        Err(f) => {
            return vec![Check::from_failure(
                "dns.resolver",
                &f,
                "Fix /etc/resolv.conf, or set endpoint.dns_server = \"IP:PORT\" in the profile.",
            )];
        }
    };
    vec![
        mx(ctx, &domain).await,
        spf(ctx, &resolver, &domain).await,
        dkim(&resolver, &domain).await,
        dmarc(&resolver, &domain).await,
    ]
}

/// The MX host suffixes of Microsoft 365 (every cloud, and the newer `*.mx.microsoft`).
const MICROSOFT_MX: &[&str] = &[
    ".mail.protection.outlook.com",
    ".mx.microsoft",
    ".mail.protection.office365.us",
    ".mail.protection.partner.outlook.cn",
];

fn is_microsoft_mx(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    MICROSOFT_MX.iter().any(|s| h.ends_with(s))
}

fn example_mx(cloud: Cloud, domain: &str) -> String {
    let dashed = domain.replace('.', "-");
    match cloud {
        Cloud::Global => format!("{dashed}.mail.protection.outlook.com"),
        Cloud::Usgov => format!("{dashed}.mail.protection.office365.us"),
        Cloud::China => format!("{dashed}.mail.protection.partner.outlook.cn"),
    }
}

/// `dns.mx`: does the domain's mail go to Microsoft 365? For relay and direct send that route
/// by the MX, an MX elsewhere is a failure: the message would go to the wrong place.
async fn mx(ctx: &Ctx<'_>, domain: &str) -> Check {
    const NAME: &str = "dns.mx";
    let p = ctx.profile;
    let mx_domain = p
        .endpoint
        .mx_domain
        .clone()
        .unwrap_or_else(|| domain.to_owned());
    let relay_like = matches!(p.mode, Mode::Relay | Mode::Direct);
    let routed_by_mx = relay_like && p.endpoint.mx_host.is_none() && p.endpoint.host.is_none();
    let example = example_mx(p.cloud, &mx_domain);
    let fix = format!(
        "Relay and direct send go to the tenant's Microsoft 365 endpoint, which the domain's MX \
         names (e.g. {example}; the Microsoft 365 admin center shows it under Settings → \
         Domains → DNS records). Point the MX of {mx_domain} there, or set endpoint.mx_host to \
         that endpoint when the MX must name a mail gateway."
    );
    match crate::route::lookup_mx(&mx_domain, p.endpoint.dns_server).await {
        Ok(hosts) => {
            let seen = hosts
                .iter()
                .map(|(pref, h)| format!("{pref} {h}"))
                .collect::<Vec<_>>()
                .join(", ");
            let evidence = format!("MX of {mx_domain}: {seen}");
            if hosts.iter().any(|(_, h)| is_microsoft_mx(h)) {
                Check::passed(NAME, format!("{evidence} (Microsoft 365)"))
            } else if routed_by_mx {
                Check::failed(
                    NAME,
                    Exit::NoHost,
                    format!("{evidence}: not Microsoft 365"),
                    fix,
                )
            } else if relay_like {
                Check::warning(
                    NAME,
                    format!("{evidence}: not Microsoft 365"),
                    format!(
                        "This profile relays to its configured host, so sending works; but mail to \
                         {mx_domain} does not reach Microsoft 365 directly. If that is not meant, \
                         point the MX at the tenant's endpoint (e.g. {example})."
                    ),
                )
            } else {
                Check::passed(
                    NAME,
                    format!(
                        "{evidence} (not Microsoft 365; mode {} does not use the MX)",
                        p.mode.as_str()
                    ),
                )
            }
        }
        Err(f) if routed_by_mx => Check::failed(NAME, f.exit, first_line(&f.message), fix),
        Err(f) => Check::warning(
            NAME,
            first_line(&f.message),
            format!(
                "Mail to {mx_domain} cannot be delivered without an MX record; publish the \
                 tenant's endpoint (e.g. {example}). This profile does not route by the MX."
            ),
        ),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_owned()
}

/// The result of a TXT or CNAME lookup.
enum Found {
    /// The records' text.
    Records(Vec<String>),
    /// The name does not exist, or has no record of that type.
    None(&'static str),
    /// The lookup failed (timeout, SERVFAIL...).
    Error(String),
}

fn no_records(e: &NetError) -> Option<&'static str> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(nr)) => {
            Some(if nr.response_code == ResponseCode::NXDomain {
                "the name does not exist"
            } else {
                "no record"
            })
        }
        _ => None,
    }
}

async fn txt(resolver: &TokioResolver, name: &str) -> Found {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match resolver.txt_lookup(fqdn.as_str()).await {
        Ok(l) => Found::Records(
            l.answers()
                .iter()
                .filter_map(|r| match &r.data {
                    // A TXT record of several strings is one text (RFC 7208 §3.3).
                    RData::TXT(t) => Some(
                        t.txt_data
                            .iter()
                            .map(|s| String::from_utf8_lossy(s).into_owned())
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect(),
        ),
        Err(e) => match no_records(&e) {
            Some(why) => Found::None(why),
            None => Found::Error(e.to_string()),
        },
    }
}

async fn cname(resolver: &TokioResolver, name: &str) -> Found {
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match resolver.lookup(fqdn.as_str(), RecordType::CNAME).await {
        Ok(l) => {
            let targets: Vec<String> = l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::CNAME(c) => Some(c.0.to_ascii().trim_end_matches('.').to_owned()),
                    _ => None,
                })
                .collect();
            if targets.is_empty() {
                Found::None("no record")
            } else {
                Found::Records(targets)
            }
        }
        Err(e) => match no_records(&e) {
            Some(why) => Found::None(why),
            None => Found::Error(e.to_string()),
        },
    }
}

/// Microsoft 365's SPF include of the profile's cloud.
fn spf_include(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "spf.protection.outlook.com",
        Cloud::Usgov => "spf.protection.office365.us",
        Cloud::China => "spf.protection.partner.outlook.cn",
    }
}

fn spf_records(found: Vec<String>) -> Vec<String> {
    found
        .into_iter()
        .filter(|t| {
            let l = t.trim_start().to_ascii_lowercase();
            l == "v=spf1" || l.starts_with("v=spf1 ")
        })
        .collect()
}

/// The domains an SPF record delegates to (`include:` and `redirect=`).
fn spf_targets(record: &str) -> Vec<String> {
    record
        .split_whitespace()
        .filter_map(|term| {
            let t = term
                .trim_start_matches(['+', '-', '~', '?'])
                .to_ascii_lowercase();
            t.strip_prefix("include:")
                .or_else(|| t.strip_prefix("redirect="))
                .map(|d| d.trim_end_matches('.').to_owned())
        })
        .collect()
}

/// Whether `record` reaches `target` through its includes (at most 10 lookups, as SPF allows).
async fn spf_reaches(resolver: &TokioResolver, record: &str, target: &str) -> bool {
    let mut queue = spf_targets(record);
    let mut lookups = 0;
    while let Some(d) = queue.pop() {
        if d == target {
            return true;
        }
        lookups += 1;
        if lookups > 10 {
            return false;
        }
        if let Found::Records(r) = txt(resolver, &d).await {
            for rec in spf_records(r) {
                queue.extend(spf_targets(&rec));
            }
        }
    }
    false
}

/// `dns.spf`: the domain's SPF record includes Microsoft 365's.
async fn spf(ctx: &Ctx<'_>, resolver: &TokioResolver, domain: &str) -> Check {
    const NAME: &str = "dns.spf";
    let p = ctx.profile;
    let include = spf_include(p.cloud);
    // Relay by IP and direct send: the message enters Microsoft 365 from this host's address.
    let by_ip = match p.mode {
        Mode::Relay => p.tls.client_cert.is_none(),
        Mode::Direct => true,
        _ => false,
    };
    let ip_note = if by_ip {
        format!(
            " This host's public IP must be in it too (ip4:ADDRESS), as {} by IP.",
            if p.mode == Mode::Relay {
                "the connector recognises this host"
            } else {
                "direct send sends"
            }
        )
    } else {
        String::new()
    };
    let wanted = format!(
        "v=spf1 include:{include}{} -all",
        if by_ip { " ip4:ADDRESS" } else { "" }
    );
    match txt(resolver, domain).await {
        Found::Error(e) => Check::warning(
            NAME,
            format!("cannot look up the TXT records of {domain}: {e}"),
            "Check the DNS resolver (endpoint.dns_server or /etc/resolv.conf), then run doctor \
             again.",
        ),
        Found::None(why) => Check::warning(
            NAME,
            format!("no SPF record at {domain} ({why})"),
            format!(
                "Publish a TXT record at {domain}: \"{wanted}\". Without it receivers may treat \
                 mail from {domain} as spoofed.{ip_note}"
            ),
        ),
        Found::Records(all) => {
            let records = spf_records(all);
            match records.as_slice() {
                [] => Check::warning(
                    NAME,
                    format!("no SPF record at {domain} (TXT records, none v=spf1)"),
                    format!("Publish a TXT record at {domain}: \"{wanted}\".{ip_note}"),
                ),
                [record] => {
                    let evidence = format!("{domain}: \"{record}\"");
                    if !spf_reaches(resolver, record, include).await {
                        return Check::warning(
                            NAME,
                            format!("{evidence}: no include:{include}"),
                            format!(
                                "Add include:{include} to the SPF record of {domain} (e.g. \
                                 \"{wanted}\"): Microsoft 365's servers send the mail out, and \
                                 receivers check them against SPF.{ip_note}"
                            ),
                        );
                    }
                    let has_ip = record.split_whitespace().any(|t| {
                        let t = t.trim_start_matches(['+', '~', '?']).to_ascii_lowercase();
                        t.starts_with("ip4:")
                            || t.starts_with("ip6:")
                            || t == "a"
                            || t.starts_with("a:")
                    });
                    if by_ip && !has_ip {
                        Check::warning(
                            NAME,
                            format!("{evidence}: includes {include}, lists no IP address"),
                            format!(
                                "Add this host's public IP (ip4:ADDRESS) to the SPF record of \
                                 {domain}.{ip_note} Doctor does not contact the internet to \
                                 learn that address."
                            ),
                        )
                    } else if by_ip {
                        Check::passed(
                            NAME,
                            format!(
                                "{evidence}: includes {include}; this host's public IP must be \
                                 one of its ip4:/ip6: entries"
                            ),
                        )
                    } else {
                        Check::passed(NAME, format!("{evidence}: includes {include}"))
                    }
                }
                _ => Check::warning(
                    NAME,
                    format!(
                        "{domain} has {} SPF records: {}",
                        records.len(),
                        records
                            .iter()
                            .map(|r| format!("\"{r}\""))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    format!(
                        "Keep exactly one v=spf1 record (several make SPF fail with a permanent \
                         error): merge them into \"{wanted}\"."
                    ),
                ),
            }
        }
    }
}

/// `dns.dkim`: the selector1/selector2 CNAMEs Microsoft 365 signs with.
async fn dkim(resolver: &TokioResolver, domain: &str) -> Check {
    const NAME: &str = "dns.dkim";
    let mut seen = Vec::new();
    let mut missing = Vec::new();
    for sel in ["selector1", "selector2"] {
        let name = format!("{sel}._domainkey.{domain}");
        match cname(resolver, &name).await {
            Found::Records(t) => seen.push(format!("{name} → {}", t.join(", "))),
            Found::None(why) => missing.push(format!("{name} ({why})")),
            Found::Error(e) => missing.push(format!("{name} (cannot look it up: {e})")),
        }
    }
    let fix = format!(
        "Publish the CNAMEs selector1._domainkey.{domain} and selector2._domainkey.{domain} that \
         the Microsoft Defender portal shows (Email & collaboration → Policies → Email \
         authentication settings → DKIM), then enable DKIM signing for {domain}. Until then \
         Microsoft 365 signs with the onmicrosoft.com domain, which DMARC does not align with \
         {domain}."
    );
    if missing.is_empty() {
        Check::passed(NAME, seen.join("; "))
    } else {
        let mut evidence = seen;
        evidence.push(format!("missing: {}", missing.join(", ")));
        Check::warning(NAME, evidence.join("; "), fix)
    }
}

/// `dns.dmarc`: a DMARC record and its policy.
async fn dmarc(resolver: &TokioResolver, domain: &str) -> Check {
    const NAME: &str = "dns.dmarc";
    let name = format!("_dmarc.{domain}");
    let fix = format!(
        "Publish a TXT record at {name}, e.g. \"v=DMARC1; p=none; rua=mailto:dmarc@{domain}\", \
         and move p= to quarantine or reject once the reports show only your own mail."
    );
    match txt(resolver, &name).await {
        Found::Error(e) => Check::warning(
            NAME,
            format!("cannot look up {name}: {e}"),
            "Check the DNS resolver, then run doctor again.",
        ),
        Found::None(why) => Check::warning(NAME, format!("no DMARC record at {name} ({why})"), fix),
        Found::Records(all) => {
            let rec: Vec<&String> = all
                .iter()
                .filter(|t| t.trim_start().to_ascii_lowercase().starts_with("v=dmarc1"))
                .collect();
            let Some(record) = rec.first() else {
                return Check::warning(NAME, format!("no v=DMARC1 record at {name}"), fix);
            };
            let policy = record
                .split(';')
                .filter_map(|t| t.trim().split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("p"))
                .map(|(_, v)| v.trim().to_ascii_lowercase())
                .unwrap_or_else(|| "(none given)".to_owned());
            let note = if policy == "none" {
                " (monitoring only)"
            } else {
                ""
            };
            Check::passed(NAME, format!("{name}: \"{record}\": policy {policy}{note}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microsoft_mx_names() {
        assert!(is_microsoft_mx("contoso-com.mail.protection.outlook.com."));
        assert!(is_microsoft_mx("contoso-com.b-v1.mx.microsoft"));
        assert!(!is_microsoft_mx("mx1.mimecast.com"));
    }

    #[test]
    fn spf_terms() {
        assert_eq!(
            spf_targets(
                "v=spf1 ip4:192.0.2.1 include:spf.protection.outlook.com ~include:_spf.Contoso.com. redirect=x.org -all"
            ),
            vec!["spf.protection.outlook.com", "_spf.contoso.com", "x.org"]
        );
        assert_eq!(
            spf_records(vec![
                "v=spf1 -all".into(),
                "google-site-verification=x".into(),
                "V=SPF1 a".into()
            ]),
            vec!["v=spf1 -all", "V=SPF1 a"]
        );
    }
}
