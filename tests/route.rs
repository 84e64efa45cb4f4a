//! route::resolve: modes, MX lookup against a stub DNS server on 127.0.0.1, refusals.

#[path = "support/dns.rs"]
mod dns;

use dns::{Answer, start_stub_dns};
use m365send::config::{Cloud, Mode, Profile};
use m365send::exit::Exit;
use m365send::message::Envelope;
use m365send::route::{self, AuthKind, Host, TlsPolicy};

fn profile(mode: Mode) -> Profile {
    Profile {
        name: "t".into(),
        mode,
        sender: Some("alerts@contoso.com".into()),
        ..Profile::default()
    }
}

fn envelope(rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: "alerts@contoso.com".into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        ..Envelope::default()
    }
}

fn ip(list: &[&str]) -> Answer {
    Answer::Ip(list.iter().map(|a| a.parse().unwrap()).collect())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn submit_defaults_per_cloud() {
    let rt = rt();
    let env = envelope(&["a@fabrikam.com"]);
    for (cloud, host) in [
        (Cloud::Global, "smtp.office365.com"),
        (Cloud::Usgov, "smtp.office365.us"),
        (Cloud::China, "smtp.partner.outlook.cn"),
    ] {
        let mut p = profile(Mode::Submit);
        p.cloud = cloud;
        let ep = rt.block_on(route::resolve(&p, &env, None)).unwrap();
        assert_eq!(
            ep.hosts,
            vec![Host {
                name: host.into(),
                port: 587,
                preference: None,
                addrs: Vec::new()
            }]
        );
        assert_eq!(ep.tls, TlsPolicy::Required);
        assert_eq!(ep.auth, AuthKind::OAuth);
        assert_eq!(ep.source, "default for submit");
    }
    let ep = rt
        .block_on(route::resolve(&profile(Mode::Hve), &env, None))
        .unwrap();
    assert_eq!(ep.hosts[0].name, "smtp.hve.mx.microsoft");
    let ep = rt
        .block_on(route::resolve(&profile(Mode::Acs), &env, None))
        .unwrap();
    assert_eq!(ep.hosts[0].name, "smtp.azurecomm.net");
}

#[test]
fn port_465_is_refused_with_the_reason() {
    let mut p = profile(Mode::Submit);
    p.endpoint.port = Some(465);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["a@b.c"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::Config);
    assert!(e.message.contains("implicit TLS"), "{}", e.message);
    assert!(e.message.contains("587"), "{}", e.message);
}

/// Port 465 through --server (any mode) or a relay profile gets the same explanation, not a
/// timeout waiting for a greeting that never comes.
#[test]
fn port_465_by_server_or_relay_profile_is_refused_too() {
    for mode in [Mode::Submit, Mode::Relay] {
        let p = profile(mode);
        let e = rt()
            .block_on(route::resolve(
                &p,
                &envelope(&["a@contoso.com"]),
                Some("127.0.0.1:465"),
            ))
            .unwrap_err();
        assert_eq!(e.exit, Exit::Usage, "{mode:?}");
        assert!(e.message.contains("implicit TLS"), "{}", e.message);
    }
    let mut p = profile(Mode::Relay);
    p.endpoint.mx_host = Some("127.0.0.1".into());
    p.endpoint.port = Some(465);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["a@contoso.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::Config);
    assert!(e.message.contains("implicit TLS"), "{}", e.message);
}

#[test]
fn mx_hosts_in_preference_order() {
    let dns = start_stub_dns(vec![
        (
            "contoso.com",
            Answer::Mx(vec![
                (20, "backup.contoso.com".into()),
                (5, "contoso-com.mail.protection.outlook.com".into()),
                (10, "second.contoso.com".into()),
            ]),
        ),
        ("backup.contoso.com", ip(&["192.0.2.20"])),
        (
            "contoso-com.mail.protection.outlook.com",
            ip(&["192.0.2.5"]),
        ),
        ("second.contoso.com", ip(&["192.0.2.10"])),
    ]);
    let mut p = profile(Mode::Relay);
    p.endpoint.dns_server = Some(dns);
    // Every MX host, Microsoft's or not (the default keeps only Microsoft's: see below).
    p.endpoint.allow_any_mx = true;
    let ep = rt()
        .block_on(route::resolve(&p, &envelope(&["x@fabrikam.com"]), None))
        .unwrap();
    let names: Vec<(&str, u16, Option<u16>)> = ep
        .hosts
        .iter()
        .map(|h| (h.name.as_str(), h.port, h.preference))
        .collect();
    assert_eq!(
        names,
        vec![
            ("contoso-com.mail.protection.outlook.com", 25, Some(5)),
            ("second.contoso.com", 25, Some(10)),
            ("backup.contoso.com", 25, Some(20)),
        ]
    );
    assert_eq!(ep.tls, TlsPolicy::Required);
    assert_eq!(ep.auth, AuthKind::None);
    assert_eq!(ep.source, "MX of contoso.com");
}

/// One resolver: the MX hosts' addresses come from the DNS server that gave the MX record
/// (split DNS), A then AAAA, all of them; a host without any is left out.
#[test]
fn mx_host_addresses_come_from_the_same_dns_server() {
    let dns = start_stub_dns(vec![
        (
            "contoso.com",
            Answer::Mx(vec![
                (0, "mx1.split.test".into()),
                (5, "gone.split.test".into()),
                (10, "mx2.split.test".into()),
            ]),
        ),
        (
            "mx1.split.test",
            ip(&["2001:db8::1", "192.0.2.1", "192.0.2.2", "2001:db8::2"]),
        ),
        ("gone.split.test", Answer::NxDomain),
        ("mx2.split.test", ip(&["2001:db8::3"])),
    ]);
    let mut p = profile(Mode::Relay);
    p.endpoint.dns_server = Some(dns);
    // The split-DNS names are not Microsoft's: this test is about addresses, not names.
    p.endpoint.allow_any_mx = true;
    let ep = rt()
        .block_on(route::resolve(&p, &envelope(&["x@fabrikam.com"]), None))
        .unwrap();
    let hosts: Vec<(&str, Vec<String>)> = ep
        .hosts
        .iter()
        .map(|h| {
            (
                h.name.as_str(),
                h.addrs.iter().map(|a| a.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        hosts,
        vec![
            (
                "mx1.split.test",
                ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"]
                    .map(String::from)
                    .to_vec()
            ),
            ("mx2.split.test", vec!["2001:db8::3".to_owned()]),
        ]
    );

    // No MX host has an address at that server: 68, naming the server and the hosts.
    let dns = start_stub_dns(vec![(
        "contoso.com",
        Answer::Mx(vec![(0, "gone.split.test".into())]),
    )]);
    p.endpoint.dns_server = Some(dns);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["x@fabrikam.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::NoHost, "{}", e.message);
    assert!(e.message.contains("gone.split.test"), "{}", e.message);
    assert!(e.message.contains(&dns.to_string()), "{}", e.message);
}

#[test]
fn mx_domain_and_port_override_and_direct_is_opportunistic() {
    let dns = start_stub_dns(vec![
        (
            "fabrikam.net",
            Answer::Mx(vec![(0, "fabrikam-net.a-v1.mx.microsoft".into())]),
        ),
        ("fabrikam-net.a-v1.mx.microsoft", ip(&["192.0.2.1"])),
    ]);
    let mut p = profile(Mode::Direct);
    p.endpoint.dns_server = Some(dns);
    p.endpoint.mx_domain = Some("fabrikam.net".into());
    p.endpoint.port = Some(2525);
    let ep = rt()
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap();
    assert_eq!(ep.hosts[0].name, "fabrikam-net.a-v1.mx.microsoft");
    assert_eq!(ep.hosts[0].port, 2525);
    assert_eq!(ep.tls, TlsPolicy::Opportunistic);
}

#[test]
fn no_mx_is_exit_68_naming_the_domain() {
    let dns = start_stub_dns(vec![("contoso.com", Answer::NoData)]);
    let mut p = profile(Mode::Relay);
    p.endpoint.dns_server = Some(dns);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::NoHost, "{}", e.message);
    assert!(e.message.contains("contoso.com"), "{}", e.message);

    // NXDOMAIN likewise.
    let dns = start_stub_dns(vec![]);
    p.endpoint.dns_server = Some(dns);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::NoHost, "{}", e.message);
    assert!(e.message.contains("does not exist"), "{}", e.message);
}

#[test]
fn silent_dns_is_a_temporary_failure() {
    let dns = start_stub_dns(vec![("contoso.com", Answer::Silent)]);
    let mut p = profile(Mode::Relay);
    p.endpoint.dns_server = Some(dns);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::TempFail, "{}", e.message);
}

#[test]
fn mx_host_skips_the_lookup() {
    let mut p = profile(Mode::Relay);
    p.endpoint.mx_host = Some("contoso-com.mail.protection.outlook.com".into());
    // An unroutable DNS server: if a lookup happened the test would fail.
    p.endpoint.dns_server = Some("127.0.0.1:9".parse().unwrap());
    let ep = rt()
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap();
    assert_eq!(ep.hosts[0].name, "contoso-com.mail.protection.outlook.com");
    assert_eq!(ep.hosts[0].port, 25);
}

#[test]
fn server_overrides_any_mode() {
    let rt = rt();
    let env = envelope(&["x@contoso.com"]);
    let ep = rt
        .block_on(route::resolve(
            &profile(Mode::Relay),
            &env,
            Some("127.0.0.1:2525"),
        ))
        .unwrap();
    assert_eq!(
        (
            ep.hosts[0].name.as_str(),
            ep.hosts[0].port,
            ep.source.as_str()
        ),
        ("127.0.0.1", 2525, "--server")
    );
    assert_eq!(ep.tls, TlsPolicy::Required);
    let ep = rt
        .block_on(route::resolve(
            &profile(Mode::Submit),
            &env,
            Some("relay.local"),
        ))
        .unwrap();
    assert_eq!(ep.hosts[0].port, 587);
    let ep = rt
        .block_on(route::resolve(
            &profile(Mode::Direct),
            &env,
            Some("[::1]:26"),
        ))
        .unwrap();
    assert_eq!((ep.hosts[0].name.as_str(), ep.hosts[0].port), ("::1", 26));
    let e = rt
        .block_on(route::resolve(&profile(Mode::Direct), &env, Some("host:0")))
        .unwrap_err();
    assert_eq!(e.exit, Exit::Usage);
}

#[test]
fn direct_send_refuses_outside_recipients() {
    let mut p = profile(Mode::Direct);
    p.accepted_domains = vec!["contoso.com".into()];
    p.endpoint.mx_host = Some("mx.test".into());
    let e = rt()
        .block_on(route::resolve(
            &p,
            &envelope(&["ok@contoso.com", "someone@gmail.com"]),
            None,
        ))
        .unwrap_err();
    assert_eq!(e.exit, Exit::NoUser);
    assert!(e.message.contains("someone@gmail.com"), "{}", e.message);
    assert!(e.message.contains("relay"), "{}", e.message);
    assert!(!e.message.contains("ok@contoso.com"), "{}", e.message);
    // Inside the organisation: fine.
    rt().block_on(route::resolve(&p, &envelope(&["ok@CONTOSO.com"]), None))
        .unwrap();
    // Relay reaches outside.
    p.mode = Mode::Relay;
    rt().block_on(route::resolve(&p, &envelope(&["someone@gmail.com"]), None))
        .unwrap();
}

#[test]
fn relay_refuses_sender_outside_accepted_domains() {
    let mut p = profile(Mode::Relay);
    p.accepted_domains = vec!["contoso.com".into()];
    p.endpoint.mx_host = Some("mx.test".into());
    let mut env = envelope(&["a@gmail.com"]);
    env.sender = "root@server.localdomain".into();
    let e = rt().block_on(route::resolve(&p, &env, None)).unwrap_err();
    assert_eq!(e.exit, Exit::NoPerm);
    assert!(
        e.message.contains("root@server.localdomain"),
        "{}",
        e.message
    );
}

#[test]
fn relay_client_certificate_and_tls_settings() {
    let mut p = profile(Mode::Relay);
    p.endpoint.mx_host = Some("mx.test".into());
    p.tls.client_cert = Some("/etc/m365send/relay.crt".into());
    p.tls.client_key = Some("/etc/m365send/relay.key".into());
    p.tls.ca_file = Some("/etc/ca.pem".into());
    p.tls.min_version = m365send::config::TlsVersion::V1_3;
    let ep = rt()
        .block_on(route::resolve(&p, &envelope(&["a@b.c"]), None))
        .unwrap();
    let cc = ep.client_cert.unwrap();
    assert_eq!(cc.cert.to_str(), Some("/etc/m365send/relay.crt"));
    assert_eq!(cc.key.to_str(), Some("/etc/m365send/relay.key"));
    assert_eq!(ep.tls_min, m365send::config::TlsVersion::V1_3);
    assert_eq!(
        ep.ca_file.as_deref().and_then(|p| p.to_str()),
        Some("/etc/ca.pem")
    );
}

#[test]
fn hve_refuses_outside_recipients_too() {
    let mut p = profile(Mode::Hve);
    p.accepted_domains = vec!["contoso.com".into()];
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["x@gmail.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::NoUser);
    assert!(e.message.contains("High Volume Email"), "{}", e.message);
}

#[test]
fn unreachable_dns_server_is_a_temporary_failure() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut p = profile(Mode::Direct);
    p.endpoint.dns_server = Some(port);
    let e = rt()
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap_err();
    assert_eq!(e.exit, Exit::TempFail, "{}", e.message);
    assert!(e.message.contains("contoso.com"), "{}", e.message);
}

#[test]
fn hosts_display_for_dry_run() {
    let h = route::parse_server("[2001:db8::1]:2525", 25).unwrap();
    assert_eq!(h.to_string(), "[2001:db8::1]:2525");
    let h = Host {
        name: "mx.contoso.com".into(),
        port: 25,
        preference: Some(10),
        addrs: Vec::new(),
    };
    assert_eq!(h.to_string(), "mx.contoso.com:25");
    assert_eq!(TlsPolicy::Required.as_str(), "STARTTLS required");
    assert_eq!(AuthKind::OAuth.as_str(), "OAuth2 (XOAUTH2)");
}

/// MX names come from unauthenticated DNS: relay and direct send use only Microsoft 365's MX
/// hosts of the profile's cloud, and say what DNS said when none is left.
#[test]
fn only_microsoft_mx_hosts_are_used() {
    let dns = start_stub_dns(vec![
        (
            "contoso.com",
            Answer::Mx(vec![
                (5, "evil.example.net".into()),
                (10, "Contoso-com.MAIL.protection.outlook.com".into()),
                (20, "contoso-com.b-v1.mx.microsoft".into()),
                (30, "mail.protection.outlook.com.evil.example".into()),
            ]),
        ),
        (
            "fabrikam.com",
            Answer::Mx(vec![
                (10, "mx1.fabrikam-gateway.example".into()),
                (
                    20,
                    "fabrikam-com.mail.protection.outlook.com.example".into(),
                ),
            ]),
        ),
        (
            "gov.contoso.com",
            Answer::Mx(vec![
                (10, "gov-contoso-com.mail.protection.outlook.com".into()),
                (20, "gov-contoso-com.mail.protection.office365.us".into()),
            ]),
        ),
        // Every MX host has an address at the same server (one resolver): only the name decides.
        ("evil.example.net", ip(&["192.0.2.66"])),
        (
            "contoso-com.mail.protection.outlook.com",
            ip(&["192.0.2.10"]),
        ),
        ("contoso-com.b-v1.mx.microsoft", ip(&["192.0.2.20"])),
        (
            "mail.protection.outlook.com.evil.example",
            ip(&["192.0.2.67"]),
        ),
        ("mx1.fabrikam-gateway.example", ip(&["192.0.2.68"])),
        (
            "fabrikam-com.mail.protection.outlook.com.example",
            ip(&["192.0.2.69"]),
        ),
        (
            "gov-contoso-com.mail.protection.outlook.com",
            ip(&["192.0.2.30"]),
        ),
        (
            "gov-contoso-com.mail.protection.office365.us",
            ip(&["192.0.2.31"]),
        ),
    ]);
    let rt = rt();
    for mode in [Mode::Relay, Mode::Direct] {
        let mut p = profile(mode);
        p.endpoint.dns_server = Some(dns);
        let ep = rt
            .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
            .unwrap();
        let names: Vec<&str> = ep.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "Contoso-com.MAIL.protection.outlook.com",
                "contoso-com.b-v1.mx.microsoft"
            ]
        );

        p.endpoint.mx_domain = Some("fabrikam.com".into());
        let e = rt
            .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
            .unwrap_err();
        assert_eq!(e.exit, Exit::Unavailable);
        assert!(
            e.message.starts_with(
                "the MX record of fabrikam.com points at mx1.fabrikam-gateway.example, \
                 fabrikam-com.mail.protection.outlook.com.example, not at Microsoft 365 \
                 (*.mail.protection.outlook.com or *.mx.microsoft)"
            ),
            "{}",
            e.message
        );
        assert!(e.message.contains("endpoint.mx_host"), "{}", e.message);
        assert!(e.message.contains("allow_any_mx"), "{}", e.message);

        // The documented way out: trust DNS.
        p.endpoint.allow_any_mx = true;
        let ep = rt
            .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
            .unwrap();
        assert_eq!(ep.hosts[0].name, "mx1.fabrikam-gateway.example");
    }
    // The US Government cloud has its own MX domain.
    let mut p = profile(Mode::Relay);
    p.cloud = Cloud::Usgov;
    p.endpoint.dns_server = Some(dns);
    p.endpoint.mx_domain = Some("gov.contoso.com".into());
    let ep = rt
        .block_on(route::resolve(&p, &envelope(&["x@contoso.com"]), None))
        .unwrap();
    let names: Vec<&str> = ep.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, vec!["gov-contoso-com.mail.protection.office365.us"]);
}

/// Through the binary: a dry run of a relay profile whose domain's MX points elsewhere ends
/// with exit 69 and the MX seen.
#[test]
fn dry_run_says_when_the_mx_is_not_microsofts() {
    let dns = start_stub_dns(vec![(
        "contoso.com",
        Answer::Mx(vec![(10, "mx.attacker.example".into())]),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[profiles.cron]\nmode = \"relay\"\nsender = \"alerts@contoso.com\"\n\
             endpoint = {{ dns_server = \"{dns}\" }}\n"
        ),
    )
    .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_m365send"))
        .args([
            "-C",
            cfg.to_str().unwrap(),
            "--dry-run",
            "--to",
            "ops@contoso.com",
        ])
        .args(["--subject", "x", "--body", "y"])
        .env_remove("M365SEND_CONFIG")
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(69), "{e}");
    assert!(
        e.contains(
            "the MX record of contoso.com points at mx.attacker.example, not at Microsoft 365"
        ),
        "{e}"
    );
}
