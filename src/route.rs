//! Route: from a profile's mode to the endpoint to connect to.
//!
//! Owns: the host/port/TLS/auth policy of each mode, the MX lookup for relay and direct
//! (hickory-resolver; a configured DNS server for tests) keeping only Microsoft 365's MX hosts
//! (unless `endpoint.allow_any_mx`), the refusal of port 465 for submission, the
//! recipient/sender domain checks of direct send and relay, and whether a profile's mail goes
//! to Microsoft 365 (`goes_to_microsoft`: Exchange compares addresses without case). Must not:
//! open SMTP connections.
//!
//! One resolver: with `endpoint.dns_server` set (split DNS), the MX hosts' addresses (A, then
//! AAAA, each in the order the server gave them) are asked of that same server, and the
//! session connects to those addresses while the MX name stays the name TLS checks and the
//! transcript shows. Without it, MX hosts and configured host names are resolved by the
//! system resolver when connecting (getaddrinfo: /etc/hosts, then DNS). IPv4 comes first: a
//! host whose IPv6 route is broken then loses no connect timeout on a working IPv4 path.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use crate::address;
use crate::config::{AuthMethod, Cloud, Mode, Profile, TlsVersion};
use crate::exit::{Exit, Failure};
use crate::message::Envelope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS must succeed before anything else is sent.
    Required,
    /// STARTTLS when offered (direct send).
    Opportunistic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    None,
    Password,
    OAuth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name (or IP literal) to connect to; also the name the certificate must match.
    pub name: String,
    pub port: u16,
    /// MX preference when the host came from an MX lookup.
    pub preference: Option<u16>,
    /// The addresses to connect to, in order, when the route resolved them (an MX host
    /// asked of `endpoint.dns_server`). Empty: the system resolver resolves `name`.
    pub addrs: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub mode: Mode,
    /// Hosts in the order to try them.
    pub hosts: Vec<Host>,
    pub tls: TlsPolicy,
    pub tls_min: TlsVersion,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<ClientCert>,
    pub auth: AuthKind,
    /// Where the hosts came from, for the user: "MX of contoso.com", "profile endpoint.host",
    /// "--server", "default for submit".
    pub source: String,
}

impl TlsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Required => "STARTTLS required",
            TlsPolicy::Opportunistic => "STARTTLS when offered",
        }
    }
}

impl AuthKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::None => "none",
            AuthKind::Password => "password (AUTH LOGIN)",
            AuthKind::OAuth => "OAuth2 (XOAUTH2)",
        }
    }
}

/// `name:port`, with an IPv6 literal in brackets (`[::1]:25`): what `TcpStream::connect`
/// and the user expect.
impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name.contains(':') {
            write!(f, "[{}]:{}", self.name, self.port)
        } else {
            write!(f, "{}:{}", self.name, self.port)
        }
    }
}

/// The port a mode connects to when none is given: 587 for submission, 25 for relay and direct
/// send, 443 for Graph.
pub fn default_port(mode: Mode) -> u16 {
    match mode {
        Mode::Submit | Mode::Hve | Mode::Acs => 587,
        Mode::Relay | Mode::Direct => 25,
        Mode::Graph => 443,
    }
}

/// The endpoint for this profile and envelope. `server` is `--server HOST[:PORT]`, which
/// overrides the hosts of any mode (keeping its TLS and auth policy).
pub async fn resolve(
    profile: &Profile,
    envelope: &Envelope,
    server: Option<&str>,
) -> Result<Endpoint, Failure> {
    let mode = profile.mode;
    check_domains(profile, envelope)?;
    let ep = &profile.endpoint;
    let default_port = default_port(mode);
    let (hosts, source) = if let Some(s) = server {
        let host = parse_server(s, default_port)?;
        // m365send speaks STARTTLS only: on 465 the server waits for a TLS handshake while
        // we wait for its greeting, and the user would see nothing but a timeout.
        if host.port == 465 && mode != Mode::Graph {
            return Err(Failure::usage(format!(
                "--server {s}: port 465 is implicit TLS, which Microsoft 365 does not offer for \
                 client submission and m365send does not speak; use port 587 (STARTTLS) or 25"
            )));
        }
        (vec![host], "--server".to_owned())
    } else {
        match mode {
            Mode::Graph => {
                let (host, source) = graph_host(profile)?;
                (vec![host], source)
            }
            Mode::Submit | Mode::Hve | Mode::Acs => {
                let port = ep.port.unwrap_or(587);
                if port == 465 {
                    return Err(Failure::config(format!(
                        "profile \"{}\": port 465 (implicit TLS) is not offered by Microsoft 365 \
                         for client submission; use port 587, where m365send starts TLS with \
                         STARTTLS (remove `endpoint.port` or set it to 587)",
                        profile.name
                    )));
                }
                let (name, source) = match &ep.host {
                    Some(h) => (h.clone(), "profile endpoint.host".to_owned()),
                    None => (
                        default_host(mode, profile.cloud).to_owned(),
                        format!("default for {}", mode.as_str()),
                    ),
                };
                (
                    vec![Host {
                        name,
                        port,
                        preference: None,
                        addrs: Vec::new(),
                    }],
                    source,
                )
            }
            Mode::Relay | Mode::Direct => {
                let port = ep.port.unwrap_or(25);
                if port == 465 {
                    return Err(Failure::config(format!(
                        "profile \"{}\": endpoint.port 465 is implicit TLS, which m365send does \
                         not speak; relay and direct send use port 25 with STARTTLS (remove \
                         `endpoint.port`)",
                        profile.name
                    )));
                }
                if let Some(h) = ep.mx_host.as_ref().or(ep.host.as_ref()) {
                    let key = if ep.mx_host.is_some() {
                        "endpoint.mx_host"
                    } else {
                        "endpoint.host"
                    };
                    (
                        vec![Host {
                            name: h.clone(),
                            port,
                            preference: None,
                            addrs: Vec::new(),
                        }],
                        format!("profile {key}"),
                    )
                } else {
                    let domain = match &ep.mx_domain {
                        Some(d) => d.clone(),
                        None => address::domain_of(&envelope.sender)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                Failure::config(format!(
                                    "profile \"{}\": cannot find the MX endpoint: the envelope \
                                     sender has no domain; set `sender` or `endpoint.mx_domain`",
                                    profile.name
                                ))
                            })?,
                    };
                    let resolver = build_resolver(ep.dns_server)?;
                    let mx = lookup_mx_with(&resolver, &domain, ep.dns_server).await?;
                    let mx = if ep.allow_any_mx {
                        mx
                    } else {
                        microsoft_mx_only(mx, profile, &domain)?
                    };
                    let mut hosts: Vec<Host> = mx
                        .into_iter()
                        .map(|(pref, name)| Host {
                            name,
                            port,
                            preference: Some(pref),
                            addrs: Vec::new(),
                        })
                        .collect();
                    if let Some(server) = ep.dns_server {
                        hosts = resolve_addresses(&resolver, hosts, server).await?;
                    }
                    (hosts, format!("MX of {domain}"))
                }
            }
        }
    };
    let tls = match mode {
        Mode::Direct => TlsPolicy::Opportunistic,
        _ => TlsPolicy::Required,
    };
    let auth = match profile.auth_method() {
        AuthMethod::OAuth => AuthKind::OAuth,
        AuthMethod::Password => AuthKind::Password,
        AuthMethod::None | AuthMethod::Auto => AuthKind::None,
    };
    let client_cert = match (&profile.tls.client_cert, &profile.tls.client_key) {
        (Some(c), Some(k)) => Some(ClientCert {
            cert: c.clone(),
            key: k.clone(),
        }),
        (Some(c), None) => Some(ClientCert {
            cert: c.clone(),
            key: c.clone(),
        }),
        _ => None,
    };
    Ok(Endpoint {
        mode,
        hosts,
        tls,
        tls_min: profile.tls.min_version,
        ca_file: profile.tls.ca_file.clone(),
        client_cert,
        auth,
        source,
    })
}

/// Whether this profile's mail goes to Microsoft 365, whose Exchange compares addresses
/// without regard to case (so `Bob@x` and `bob@x` are one recipient): yes for the mode's
/// default host and for an MX lookup (relay and direct send go to the tenant's MX endpoint),
/// and for a host given by a Microsoft name; no for another host given by `--server`,
/// `endpoint.host` or `endpoint.mx_host` (an on-premises relay, a test server), where RFC 5321
/// keeps local parts case-sensitive.
pub fn goes_to_microsoft(profile: &Profile, server: Option<&str>) -> bool {
    let ep = &profile.endpoint;
    let given = match server {
        Some(s) => Some(host_name_of(s, 25)),
        None => match profile.mode {
            Mode::Relay | Mode::Direct => ep.mx_host.clone().or_else(|| ep.host.clone()),
            Mode::Submit | Mode::Hve | Mode::Acs => ep.host.clone(),
            Mode::Graph => ep
                .host
                .clone()
                .or_else(|| profile.graph_host.as_deref().map(|h| host_name_of(h, 443))),
        },
    };
    let graph = |h: &str| {
        [Cloud::Global, Cloud::Usgov, Cloud::China]
            .iter()
            .any(|c| default_graph_host(*c).eq_ignore_ascii_case(h.trim_end_matches('.')))
    };
    given.is_none_or(|h| crate::smtp::is_microsoft_host(&h) || graph(&h))
}

/// The host name in `HOST[:PORT]` (the whole text when it does not parse).
fn host_name_of(s: &str, default_port: u16) -> String {
    parse_server(s, default_port)
        .map(|h| h.name)
        .unwrap_or_else(|_| s.to_owned())
}

/// Host name suffixes of Microsoft 365's MX endpoints in a cloud: the tenant endpoints
/// (`contoso-com.mail.protection.outlook.com`) and, in the global cloud, the newer
/// `contoso-com.a-v1.mx.microsoft` names.
pub fn microsoft_mx_suffixes(cloud: Cloud) -> &'static [&'static str] {
    match cloud {
        Cloud::Global => &[".mail.protection.outlook.com", ".mx.microsoft"],
        Cloud::Usgov => &[".mail.protection.office365.us"],
        Cloud::China => &[".mail.protection.partner.outlook.cn"],
    }
}

/// Keep only the MX hosts under Microsoft 365's MX domains (case-insensitively): an MX record
/// is an unauthenticated DNS answer, and relay and direct send hand a connector's certificate
/// or the organisation's mail only to Microsoft 365. None left: refused (69) with what DNS
/// said and the two ways out (`endpoint.mx_host`, `endpoint.allow_any_mx`).
fn microsoft_mx_only(
    mx: Vec<(u16, String)>,
    profile: &Profile,
    domain: &str,
) -> Result<Vec<(u16, String)>, Failure> {
    let suffixes = microsoft_mx_suffixes(profile.cloud);
    let ours = |name: &str| {
        let name = name.to_ascii_lowercase();
        suffixes
            .iter()
            .any(|s| name.ends_with(s) && name.len() > s.len())
    };
    let (kept, skipped): (Vec<_>, Vec<_>) = mx.into_iter().partition(|(_, h)| ours(h));
    if !skipped.is_empty() {
        tracing::debug!(
            domain,
            skipped = %skipped.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>().join(", "),
            "MX hosts outside Microsoft 365 skipped"
        );
    }
    if kept.is_empty() {
        let seen: Vec<&str> = skipped.iter().map(|(_, h)| h.as_str()).collect();
        let expected: Vec<String> = suffixes.iter().map(|s| format!("*{s}")).collect();
        return Err(Failure::new(
            Exit::Unavailable,
            format!(
                "the MX record of {domain} points at {}, not at Microsoft 365 ({}): {} goes \
                 to the tenant's Microsoft 365 endpoint only, and a DNS answer is not \
                 authenticated. If the domain's mail first passes another gateway, set \
                 `endpoint.mx_host` in profile \"{}\" to the tenant's endpoint (e.g. \
                 contoso-com.mail.protection.outlook.com); to use whatever DNS says, set \
                 `endpoint.allow_any_mx = true`.",
                seen.join(", "),
                expected.join(" or "),
                if profile.mode == Mode::Relay {
                    "relay"
                } else {
                    "direct send"
                },
                profile.name
            ),
        ));
    }
    Ok(kept)
}

/// The Microsoft Graph host of a cloud (global, US Government GCC High, 21Vianet).
pub fn default_graph_host(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "graph.microsoft.com",
        Cloud::Usgov => "graph.microsoft.us",
        Cloud::China => "microsoftgraph.chinacloudapi.cn",
    }
}

/// The Graph host of a profile and where it came from: `endpoint.host` (mode "graph" only;
/// `--server` and the queue's `--server` land there), else `graph_host`, else by cloud.
pub fn graph_host(profile: &Profile) -> Result<(Host, String), Failure> {
    let ep = &profile.endpoint;
    if profile.mode == Mode::Graph
        && let Some(h) = &ep.host
    {
        let host = Host {
            name: h.clone(),
            port: ep.port.unwrap_or(443),
            preference: None,
            addrs: Vec::new(),
        };
        return Ok((host, "profile endpoint.host".to_owned()));
    }
    if let Some(h) = &profile.graph_host {
        let host = parse_server(h, 443).map_err(|_| {
            Failure::config(format!(
                "profile \"{}\": graph_host \"{h}\" is not HOST or HOST:PORT",
                profile.name
            ))
        })?;
        return Ok((host, "profile graph_host".to_owned()));
    }
    let host = Host {
        name: default_graph_host(profile.cloud).to_owned(),
        port: 443,
        preference: None,
        addrs: Vec::new(),
    };
    Ok((
        host,
        format!("default for graph ({:?} cloud)", profile.cloud).to_lowercase(),
    ))
}

/// The default submission host of a mode in a cloud.
pub fn default_host(mode: Mode, cloud: Cloud) -> &'static str {
    match (mode, cloud) {
        (Mode::Graph, c) => default_graph_host(c),
        (Mode::Hve, _) => "smtp.hve.mx.microsoft",
        (Mode::Acs, _) => "smtp.azurecomm.net",
        (_, Cloud::Global) => "smtp.office365.com",
        (_, Cloud::Usgov) => "smtp.office365.us",
        (_, Cloud::China) => "smtp.partner.outlook.cn",
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 literal.
pub fn parse_server(s: &str, default_port: u16) -> Result<Host, Failure> {
    let s = s.trim();
    let bad = |why: &str| Failure::usage(format!("--server {s:?}: {why} (expected HOST[:PORT])"));
    let port_of = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("missing ]"))?;
        let port = match after {
            "" => default_port,
            p => port_of(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?)
                .ok_or_else(|| bad("invalid port"))?,
        };
        (h.to_owned(), port)
    } else if s.matches(':').count() > 1 {
        (s.to_owned(), default_port) // a bare IPv6 literal
    } else if let Some((h, p)) = s.split_once(':') {
        (h.to_owned(), port_of(p).ok_or_else(|| bad("invalid port"))?)
    } else {
        (s.to_owned(), default_port)
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(bad("no host name"));
    }
    Ok(Host {
        name,
        port,
        preference: None,
        addrs: Vec::new(),
    })
}

/// Refuse before connecting what Microsoft 365 would refuse: direct send to outside
/// recipients, and relay/direct senders outside the accepted domains.
fn check_domains(profile: &Profile, envelope: &Envelope) -> Result<(), Failure> {
    let accepted = &profile.accepted_domains;
    if accepted.is_empty() || !matches!(profile.mode, Mode::Relay | Mode::Direct | Mode::Hve) {
        return Ok(());
    }
    let list = accepted.join(", ");
    if profile.mode != Mode::Hve && !envelope.sender.is_empty() {
        let ok =
            address::domain_of(&envelope.sender).is_some_and(|d| address::is_accepted(d, accepted));
        if !ok {
            return Err(Failure::new(
                Exit::NoPerm,
                format!(
                    "sender {} is outside the accepted domains of profile \"{}\" ({list}): \
                     Microsoft 365 {} only accepts senders in the tenant's accepted domains. \
                     Set `sender` to an address in one of them, or use -f.",
                    envelope.sender,
                    profile.name,
                    if profile.mode == Mode::Relay {
                        "relay"
                    } else {
                        "direct send"
                    }
                ),
            ));
        }
    }
    if matches!(profile.mode, Mode::Direct | Mode::Hve) {
        let outside: Vec<&str> = envelope
            .recipients
            .iter()
            .filter(|r| !address::domain_of(r).is_some_and(|d| address::is_accepted(d, accepted)))
            .map(String::as_str)
            .collect();
        if !outside.is_empty() {
            return Err(Failure::new(
                Exit::NoUser,
                format!(
                    "refused before connecting: {} outside the organisation ({list}). {} \
                     only reaches the organisation's own mailboxes; to reach outside \
                     addresses use mode \"relay\" (a connector) or \"submit\" (a mailbox).",
                    if outside.len() == 1 {
                        format!("recipient {} is", outside[0])
                    } else {
                        format!("recipients {} are", outside.join(", "))
                    },
                    if profile.mode == Mode::Hve {
                        "High Volume Email"
                    } else {
                        "Direct send"
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// MX hosts of `domain`, in preference order (ties keep the server's order). `dns_server`
/// replaces the system resolver (UDP).
pub async fn lookup_mx(
    domain: &str,
    dns_server: Option<SocketAddr>,
) -> Result<Vec<(u16, String)>, Failure> {
    lookup_mx_with(&build_resolver(dns_server)?, domain, dns_server).await
}

async fn lookup_mx_with(
    resolver: &TokioResolver,
    domain: &str,
    dns_server: Option<SocketAddr>,
) -> Result<Vec<(u16, String)>, Failure> {
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let lookup = resolver.mx_lookup(fqdn.as_str()).await;
    let no_mx = |why: &str| {
        Failure::new(
            Exit::NoHost,
            format!(
                "no MX record for {domain} ({why}): relay and direct send go to the domain's \
                 Microsoft 365 MX endpoint (e.g. contoso-com.mail.protection.outlook.com). \
                 Check the domain, or set `endpoint.mx_host` or `endpoint.mx_domain`."
            ),
        )
    };
    let lookup = match lookup {
        Ok(l) => l,
        Err(NetError::Dns(DnsError::NoRecordsFound(nr))) => {
            return Err(if nr.response_code == ResponseCode::NXDomain {
                no_mx("the domain does not exist")
            } else {
                no_mx("the domain has no MX record")
            });
        }
        Err(e) => {
            return Err(Failure::new(
                Exit::TempFail,
                format!(
                    "cannot look up the MX record of {domain}: {e} (DNS server {}); try again \
                     later",
                    dns_server
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "from /etc/resolv.conf".into())
                ),
            ));
        }
    };
    let mut hosts: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((
                mx.preference,
                mx.exchange.to_ascii().trim_end_matches('.').to_owned(),
            )),
            _ => None,
        })
        .filter(|(_, h)| !h.is_empty())
        .collect();
    hosts.sort_by_key(|(p, _)| *p);
    if hosts.is_empty() {
        return Err(no_mx("the domain has no MX record (or a null MX)"));
    }
    Ok(hosts)
}

/// The addresses of each MX host, asked of `server` (the one that gave the MX record): A, then
/// AAAA. A host without any is left out (the next MX host is tried, as when connecting fails);
/// when none has an address: 68 when the server said so, 75 when it could not answer.
async fn resolve_addresses(
    resolver: &TokioResolver,
    hosts: Vec<Host>,
    server: SocketAddr,
) -> Result<Vec<Host>, Failure> {
    let mut out = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut temporary = false;
    for mut host in hosts {
        if let Ok(ip) = host.name.parse::<IpAddr>() {
            host.addrs = vec![ip];
            out.push(host);
            continue;
        }
        let fqdn = format!("{}.", host.name.trim_end_matches('.'));
        let mut failed = None;
        for rtype in [RecordType::A, RecordType::AAAA] {
            match resolver.lookup(fqdn.as_str(), rtype).await {
                Ok(l) => host
                    .addrs
                    .extend(l.answers().iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })),
                Err(NetError::Dns(DnsError::NoRecordsFound(_))) => {}
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if host.addrs.is_empty() {
            match failed {
                Some(e) => {
                    temporary = true;
                    problems.push(format!("{}: {e}", host.name));
                }
                None => problems.push(format!("{}: no A or AAAA record", host.name)),
            }
            tracing::debug!(host = %host.name, %server, "MX host without an address; skipped");
            continue;
        }
        out.push(host);
    }
    if out.is_empty() {
        let (exit, then) = if temporary {
            (Exit::TempFail, "; try again later")
        } else {
            (Exit::NoHost, "")
        };
        return Err(Failure::new(
            exit,
            format!(
                "cannot find the address of any MX host at DNS server {server} ({}){then}",
                problems.join("; ")
            ),
        ));
    }
    Ok(out)
}

/// The resolver for a profile: `dns_server` (UDP) when configured, else the system's
/// (/etc/resolv.conf). Also used by `doctor` for its TXT and CNAME lookups.
pub fn build_resolver(dns_server: Option<SocketAddr>) -> Result<TokioResolver, Failure> {
    let mut builder = match dns_server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => TokioResolver::builder_tokio().map_err(|e| {
            Failure::new(
                Exit::OsErr,
                format!("cannot read the system DNS configuration (/etc/resolv.conf): {e}"),
            )
        })?,
    };
    let opts = builder.options_mut();
    opts.timeout = Duration::from_secs(5);
    opts.attempts = 2;
    builder
        .build()
        .map_err(|e| Failure::new(Exit::OsErr, format!("cannot set up the DNS resolver: {e}")))
}
