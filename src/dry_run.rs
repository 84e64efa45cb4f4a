//! What `--dry-run` prints: everything a real run would use (profile, endpoint, envelope,
//! message, header block), nothing that was done.
//!
//! Owns: the report's wording and layout, and the few local checks it adds (a file the real
//! run needs but cannot read). Must not: connect anywhere, request a token or write a file:
//! the route it shows was resolved by the caller.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{self, Config, Mode, OAuthFlow, Profile, TlsVersion};
use crate::message::{Prepared, Ret};
use crate::route::{AuthKind, Endpoint, TlsPolicy};

fn mode_title(mode: Mode) -> &'static str {
    match mode {
        Mode::Submit => "client submission (authenticated SMTP)",
        Mode::Relay => "SMTP relay through a connector",
        Mode::Direct => "direct send (internal recipients only)",
        Mode::Hve => "High Volume Email (internal recipients only)",
        Mode::Acs => "Azure Communication Services Email",
        Mode::Graph => "Microsoft Graph sendMail over HTTPS",
    }
}

/// The dry run's Graph rows: the endpoint, mailbox, token scope, Sent Items and the size path
/// (one sendMail request, or a draft with parts uploaded).
fn graph_rows(
    profile: &Profile,
    host: &crate::route::Host,
    prepared: &Prepared,
) -> Vec<(String, String)> {
    let mailbox = profile
        .mailbox
        .clone()
        .or_else(|| profile.auth.user.clone());
    let mut rows = vec![(
        "Graph endpoint".to_owned(),
        format!(
            "https://{}{}/v1.0/users/{}/sendMail",
            host.name,
            if host.port == 443 {
                String::new()
            } else {
                format!(":{}", host.port)
            },
            mailbox.as_deref().unwrap_or("<mailbox>")
        ),
    )];
    rows.push((
        "mailbox".into(),
        mailbox.unwrap_or_else(|| "— none: set `mailbox`".into()),
    ));
    rows.push((
        "token scope".into(),
        if profile.auth.token.is_set() && profile.mode == Mode::Graph {
            format!(
                "none requested: auth.token is used as is (it must be a token for {})",
                crate::auth::default_scope(
                    profile.cloud,
                    Mode::Graph,
                    OAuthFlow::ClientCredentials
                )
            )
        } else {
            crate::auth::graph_settings(profile)
                .map(|s| s.scope)
                .unwrap_or_else(|f| format!("— {}", f.message))
        },
    ));
    rows.push((
        "Sent Items".into(),
        if profile.save_to_sent_items() {
            "a copy is kept (save_to_sent_items = true)".into()
        } else {
            "no copy (save_to_sent_items = false; needs Mail.ReadWrite)".into()
        },
    ));
    rows.push((
        "size path".into(),
        match crate::graph::Client::plan(
            prepared.body.path(),
            &prepared.envelope.recipients,
            profile.save_to_sent_items(),
        ) {
            Ok((h, route, _)) => format!(
                "{}; {} To, {} Cc, {} Bcc",
                route.describe(),
                h.recipients.to.len(),
                h.recipients.cc.len(),
                h.recipients.bcc.len()
            ),
            Err(e) => format!("— {e}"),
        },
    ));
    rows
}

/// `1234 bytes`, `36700160 bytes (35.0 MiB)`.
fn human_size(n: u64) -> String {
    if n < 1024 * 1024 {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({:.1} MiB)", n as f64 / (1024.0 * 1024.0))
    }
}

/// For the dry run: a file the real run will need but cannot read, said next to its name
/// (`" — cannot read: No such file or directory (os error 2)"`), else nothing.
fn unreadable(path: &Path) -> String {
    match std::fs::File::open(path) {
        Ok(_) => String::new(),
        Err(e) => format!(" — CANNOT READ: {e}"),
    }
}

/// What `--dry-run` prints: everything that would be used, nothing that was done.
pub fn report(
    config: &Config,
    profile: &Profile,
    endpoint: &Endpoint,
    prepared: &Prepared,
) -> String {
    let mut s =
        String::from("m365send --dry-run: nothing was sent, no token was requested\n\nProfile\n");
    let origin = match &config.path {
        Some(p) => format!("{} (from {})", profile.name, p.display()),
        None => format!(
            "{} (no configuration file: defaults for --mode {})",
            profile.name,
            profile.mode.as_str()
        ),
    };
    // Writing to a String cannot fail; labels are padded so the values line up.
    let section = |s: &mut String, title: &str, rows: Vec<(String, String)>| {
        if !title.is_empty() {
            s.push_str(title);
            s.push('\n');
        }
        for (label, value) in rows {
            let _ = writeln!(s, "  {label:<20} {value}");
        }
    };
    section(
        &mut s,
        "",
        vec![
            ("name".into(), origin),
            (
                "mode".into(),
                format!("{} — {}", profile.mode.as_str(), mode_title(profile.mode)),
            ),
        ],
    );

    // Endpoint
    let mut rows: Vec<(String, String)> = vec![("hosts from".into(), endpoint.source.clone())];
    if endpoint.mode != profile.mode {
        rows.push(("route mode".into(), endpoint.mode.as_str().into()));
    }
    if endpoint.hosts.is_empty() {
        rows.push(("host".into(), "(none)".into()));
    }
    for (i, h) in endpoint.hosts.iter().enumerate() {
        let pref = h
            .preference
            .map(|p| format!("  (MX preference {p})"))
            .unwrap_or_default();
        let label = if endpoint.hosts.len() > 1 {
            format!("host {}", i + 1)
        } else {
            "host".into()
        };
        // Addresses the route resolved (an MX host asked of endpoint.dns_server).
        let addrs = if h.addrs.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
            format!("  at {}", list.join(", "))
        };
        rows.push((label, format!("{}:{}{pref}{addrs}", h.name, h.port)));
    }
    let min = match endpoint.tls_min {
        TlsVersion::V1_2 => "TLS 1.2 or 1.3",
        TlsVersion::V1_3 => "TLS 1.3 only",
    };
    let ca_row: (String, String) = (
        "CA certificates".into(),
        match &endpoint.ca_file {
            Some(p) => format!("system roots + {}{}", p.display(), unreadable(p)),
            None => "system roots".into(),
        },
    );
    if endpoint.mode == Mode::Graph {
        if let Some(h) = endpoint.hosts.first() {
            rows.extend(graph_rows(profile, h, prepared));
        }
        rows.push(ca_row.clone());
        s.push('\n');
        section(&mut s, "Endpoint", rows);
        rows = Vec::new();
    }
    if endpoint.mode == Mode::Submit && profile.fallback == config::Fallback::Graph {
        rows.push((
            "fallback".into(),
            match crate::route::graph_host(profile) {
                Ok((h, _)) => format!(
                    "Microsoft Graph at {}:{} when SMTP AUTH is disabled (535 5.7.139)",
                    h.name, h.port
                ),
                Err(f) => format!("— {}", f.message),
            },
        ));
    }
    if endpoint.mode != Mode::Graph {
        rows.push((
            "TLS".into(),
            match endpoint.tls {
                TlsPolicy::Required => format!("STARTTLS required, {min}"),
                TlsPolicy::Opportunistic => format!("STARTTLS when offered, {min}"),
            },
        ));
        rows.push(ca_row.clone());
        rows.push((
            "client certificate".into(),
            match &endpoint.client_cert {
                Some(c) => format!(
                    "{}{} (key {}{})",
                    c.cert.display(),
                    unreadable(&c.cert),
                    c.key.display(),
                    unreadable(&c.key)
                ),
                None => "none".into(),
            },
        ));
        let user = match profile.login_user() {
            Some(u) => format!("as {u}"),
            None => "— no login name: set `mailbox` or `auth.user`".into(),
        };
        rows.push((
            "authentication".into(),
            match endpoint.auth {
                AuthKind::OAuth => {
                    let flow = match profile.auth.flow {
                        OAuthFlow::ClientCredentials if profile.auth.token.is_set() => {
                            "token from auth.token"
                        }
                        OAuthFlow::ClientCredentials => "app-only",
                        OAuthFlow::Delegated => "delegated",
                    };
                    format!("OAuth2 XOAUTH2 ({flow}) {user}")
                }
                AuthKind::Password => format!("password (AUTH LOGIN) {user}"),
                AuthKind::None => match (endpoint.mode, &endpoint.client_cert) {
                    (Mode::Relay, Some(_)) => {
                        "none: the connector recognises the client certificate".into()
                    }
                    (Mode::Relay, None) => {
                        "none: the connector must know this host's public IP".into()
                    }
                    _ => "none".into(),
                },
            },
        ));
        s.push('\n');
        section(&mut s, "Endpoint", rows);
    }

    // Envelope
    let env = &prepared.envelope;
    let mut rows: Vec<(String, String)> = vec![(
        "sender (MAIL FROM)".into(),
        if env.sender.is_empty() {
            "<> (null sender)".into()
        } else {
            shown(&env.sender)
        },
    )];
    if env.recipients.is_empty() {
        rows.push(("recipient".into(), "(none)".into()));
    }
    for r in &env.recipients {
        rows.push(("recipient (RCPT TO)".into(), shown(r)));
    }
    let dsn = &env.dsn;
    rows.push((
        "DSN".into(),
        if dsn.is_requested() {
            let mut parts = Vec::new();
            if let Some(n) = &dsn.notify {
                parts.push(format!("NOTIFY={n}"));
            }
            if let Some(r) = dsn.ret {
                parts.push(format!(
                    "RET={}",
                    match r {
                        Ret::Full => "FULL",
                        Ret::Hdrs => "HDRS",
                    }
                ));
            }
            if let Some(e) = &dsn.envid {
                parts.push(format!("ENVID={}", shown(e)));
            }
            parts.join(" ")
        } else {
            "none requested".into()
        },
    ));
    s.push('\n');
    section(&mut s, "Envelope", rows);

    // Message
    let yes_no = |b: bool, yes: &str| if b { yes.to_owned() } else { "no".to_owned() };
    let rows = vec![
        ("size".into(), human_size(prepared.size)),
        ("size limit".into(), human_size(profile.max_size())),
        (
            "8-bit body".into(),
            yes_no(prepared.eight_bit, "yes (BODY=8BITMIME)"),
        ),
        (
            "non-ASCII addresses".into(),
            yes_no(prepared.smtputf8, "yes (SMTPUTF8)"),
        ),
    ];
    s.push('\n');
    section(&mut s, "Message", rows);

    // The headers come from the message (a web form's Subject…): control characters are
    // shown escaped (`\x1b`), never sent to the terminal; folded lines keep their TAB.
    s.push_str("\nHeader block as it will be sent:\n");
    for line in prepared.header_block.split("\r\n") {
        if line.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  {}", crate::printable::for_terminal(line, true));
    }
    s
}

/// A value from the message or the command line as printed by `--dry-run`: control
/// characters escaped.
fn shown(s: &str) -> String {
    crate::printable::for_terminal(s, false).into_owned()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Body, Dsn, Envelope};
    use crate::route::{ClientCert, Host};
    use std::path::PathBuf;

    fn prepared() -> Prepared {
        Prepared {
            envelope: Envelope {
                sender: "alerts@contoso.com".into(),
                recipients: vec!["ops@contoso.com".into(), "dba@contoso.com".into()],
                dsn: Dsn {
                    notify: Some("FAILURE,DELAY".into()),
                    ret: Some(Ret::Hdrs),
                    envid: None,
                },
            },
            body: Body::at("/nonexistent"),
            size: 1234,
            eight_bit: true,
            smtputf8: false,
            header_block:
                "From: Cron Daemon <alerts@contoso.com>\r\nTo: root\r\nSubject: x\r\n\r\n".into(),
        }
    }

    #[test]
    fn report_for_relay() {
        let config = Config {
            path: Some(PathBuf::from("/etc/m365send/config.toml")),
            ..Config::default()
        };
        let mut profile = Profile::for_mode(Mode::Relay);
        profile.name = "cron".into();
        let endpoint = Endpoint {
            mode: Mode::Relay,
            hosts: vec![
                Host {
                    name: "contoso-com.mail.protection.outlook.com".into(),
                    port: 25,
                    preference: Some(0),
                    addrs: Vec::new(),
                },
                Host {
                    name: "backup.contoso.com".into(),
                    port: 25,
                    preference: Some(10),
                    addrs: Vec::new(),
                },
            ],
            tls: TlsPolicy::Required,
            tls_min: TlsVersion::V1_2,
            ca_file: None,
            client_cert: Some(ClientCert {
                cert: "/etc/m365send/relay.crt".into(),
                key: "/etc/m365send/relay.key".into(),
            }),
            auth: AuthKind::None,
            source: "MX of contoso.com".into(),
        };
        let r = report(&config, &profile, &endpoint, &prepared());
        assert!(
            r.contains(
                "/etc/m365send/relay.crt — CANNOT READ: No such file or directory (os error 2) \
                 (key /etc/m365send/relay.key — CANNOT READ"
            ) || Path::new("/etc/m365send/relay.crt").exists(),
            "{r}"
        );
        for needle in [
            "cron (from /etc/m365send/config.toml)",
            "relay — SMTP relay through a connector",
            "contoso-com.mail.protection.outlook.com:25  (MX preference 0)",
            "backup.contoso.com:25  (MX preference 10)",
            "STARTTLS required, TLS 1.2 or 1.3",
            "connector recognises the client certificate",
            "alerts@contoso.com",
            "ops@contoso.com",
            "dba@contoso.com",
            "NOTIFY=FAILURE,DELAY RET=HDRS",
            "1234 bytes\n",
            "36700160 bytes (35.0 MiB)",
            "BODY=8BITMIME",
            "  From: Cron Daemon <alerts@contoso.com>\n",
            "  Subject: x\n",
        ] {
            assert!(r.contains(needle), "report lacks {needle:?}:\n{r}");
        }
        assert!(!r.contains('\r'));
    }

    #[test]
    fn report_for_submit() {
        let mut profile = Profile::for_mode(Mode::Submit);
        profile.mailbox = Some("app@contoso.com".into());
        let endpoint = Endpoint {
            mode: Mode::Submit,
            hosts: vec![Host {
                name: "smtp.office365.com".into(),
                port: 587,
                preference: None,
                addrs: Vec::new(),
            }],
            tls: TlsPolicy::Required,
            tls_min: TlsVersion::V1_3,
            ca_file: Some("/etc/ca.pem".into()),
            client_cert: None,
            auth: AuthKind::OAuth,
            source: "default for submit".into(),
        };
        let r = report(&Config::default(), &profile, &endpoint, &prepared());
        for needle in [
            "no configuration file",
            "smtp.office365.com:587\n",
            "TLS 1.3 only",
            "system roots + /etc/ca.pem",
            "OAuth2 XOAUTH2 (app-only) as app@contoso.com",
        ] {
            assert!(r.contains(needle), "report lacks {needle:?}:\n{r}");
        }
    }
}
