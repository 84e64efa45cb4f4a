//! Route: from a profile's mode to the endpoint to connect to.
//!
//! Owns: the host/port/TLS/auth policy of each mode, the MX lookup for relay and direct
//! (hickory-resolver; a configured DNS server for tests), the refusal of port 465 for
//! submission, and the recipient/sender domain checks of direct send and relay.
//! Must not: open SMTP connections.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
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
    let default_port = match mode {
        Mode::Submit | Mode::Hve | Mode::Acs => 587,
        Mode::Relay | Mode::Direct => 25,
        Mode::Graph => 443,
    };
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
                    let mx = lookup_mx(&domain, ep.dns_server).await?;
                    let hosts = mx
                        .into_iter()
                        .map(|(pref, name)| Host {
                            name,
                            port,
                            preference: Some(pref),
                        })
                        .collect();
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
    let resolver = build_resolver(dns_server)?;
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

fn build_resolver(dns_server: Option<SocketAddr>) -> Result<TokioResolver, Failure> {
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
