//! Session-level tests of the SMTP client against the fake Microsoft 365 server (127.0.0.1).

#[path = "support/fake_m365.rs"]
mod fake_m365;

use std::io::Write;
use std::time::Duration;

use base64::Engine as _;
use fake_m365::{ConnRecord, FakeConfig, FakeM365, Phase, Rule, TlsVersions};
use m365send::auth::Credentials;
use m365send::config::TlsVersion;
use m365send::message::{Body, Dsn, Envelope, Ret};
use m365send::route::{ClientCert, TlsPolicy};
use m365send::secret::Secret;
use m365send::smtp::transaction::FLIGHT_BODY_MAX;
use m365send::smtp::{
    MessageFlags, MessageResult, Session, SessionConfig, SessionError, Sink, Step, TlsFailure,
    TlsSettings, client_config,
};

const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJub25jZSI6InNlY3JldC10b2tlbi12YWx1ZSJ9";

fn body(bytes: &[u8]) -> Body {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    Body::temporary(f.into_temp_path())
}

fn settings(server: &FakeM365) -> TlsSettings {
    TlsSettings {
        min_version: TlsVersion::V1_2,
        ca_file: Some(server.ca_file().to_path_buf()),
        client_cert: None,
    }
}

fn session_config(server: &FakeM365, tls: TlsPolicy, settings: TlsSettings) -> SessionConfig {
    SessionConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        addrs: Vec::new(),
        helo: "client.contoso.com".into(),
        tls,
        tls_config: client_config(&settings).unwrap(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_end_timeout: Duration::from_secs(5),
        chunking: false,
        transcript: None,
    }
}

fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        dsn: Dsn::default(),
    }
}

fn oauth() -> Credentials {
    Credentials::XOAuth2 {
        user: "app@contoso.com".into(),
        token: Secret::new(TOKEN),
        from_cache: false,
    }
}

const MSG: &[u8] = b"From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: hi\r\n\r\nhello\r\n";

#[tokio::test]
async fn submit_xoauth2_pipelined_happy_path() {
    let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", TOKEN)).await;
    let cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    let mut s = Session::connect(cfg).await.unwrap();
    assert!(s.is_tls());
    let caps = s.capabilities().clone();
    assert_eq!(caps.auth, vec!["LOGIN", "XOAUTH2"]);
    assert!(!caps.starttls && caps.pipelining && caps.chunking && caps.dsn);
    assert_eq!(caps.size, Some(157_286_400));
    let r = s.authenticate(&oauth()).await.unwrap().unwrap();
    assert_eq!(r.code, 235);
    let env = envelope("app@contoso.com", &["ops@contoso.com", "dev@contoso.com"]);
    let res = s
        .send_message(&env, &body(MSG), MessageFlags::default())
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
    assert_eq!(res.accepted(), vec!["ops@contoso.com", "dev@contoso.com"]);
    s.quit().await.unwrap();

    let conns = server.connections();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(
        c.auth,
        vec![format!(
            "user=app@contoso.com\x01auth=Bearer {TOKEN}\x01\x01"
        )]
    );
    assert_eq!(c.authenticated.as_deref(), Some("app@contoso.com"));
    assert_eq!(c.helo, vec!["client.contoso.com", "client.contoso.com"]);
    // RFC 2920: MAIL, both RCPTs and DATA arrived in one read.
    let flight = c.read_containing("MAIL FROM").unwrap();
    assert_eq!(
        flight,
        format!(
            "MAIL FROM:<app@contoso.com> SIZE={}\r\nRCPT TO:<ops@contoso.com>\r\nRCPT TO:<dev@contoso.com>\r\nDATA\r\n",
            MSG.len()
        )
    );
    // Nothing but EHLO went in clear text before STARTTLS.
    let tls_from = c.tls_from_read.unwrap();
    let clear: Vec<u8> = c.reads[..tls_from].concat();
    assert_eq!(
        String::from_utf8(clear).unwrap(),
        "EHLO client.contoso.com\r\nSTARTTLS\r\n"
    );
    let msgs = server.accepted();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].data, MSG);
    assert_eq!(
        msgs[0].recipients,
        vec!["ops@contoso.com", "dev@contoso.com"]
    );
}

#[tokio::test]
async fn relay_with_client_certificate() {
    let server = FakeM365::start(FakeConfig::mx().require_client_cert()).await;
    let (cert, key) = server.client_cert_files("relay.contoso.com");
    let mut st = settings(&server);
    st.client_cert = Some(ClientCert { cert, key });
    let mut s = Session::connect(session_config(&server, TlsPolicy::Required, st))
        .await
        .unwrap();
    assert!(s.capabilities().auth.is_empty());
    assert!(s.authenticate(&Credentials::None).await.unwrap().is_none());
    let res = s
        .send_message(
            &envelope("alerts@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    s.quit().await.unwrap();
    let c = &server.connections()[0];
    assert!(c.client_cert.is_some(), "client certificate presented");
    assert!(c.auth.is_empty());
}

#[tokio::test]
async fn client_certificate_required_but_missing_is_refused() {
    let server = FakeM365::start(FakeConfig::mx().require_client_cert()).await;
    let err = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, SessionError::Tls { .. }), "{err:?}");
    assert!(!err.is_transient());
    let c = &server.connections()[0];
    assert!(!String::from_utf8_lossy(&c.bytes()).contains("MAIL"));
}

#[tokio::test]
async fn direct_send_without_tls_offered() {
    let server = FakeM365::start(FakeConfig::mx().no_starttls()).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Opportunistic,
        settings(&server),
    ))
    .await
    .unwrap();
    assert!(!s.is_tls());
    let res = s
        .send_message(
            &envelope("alerts@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    // A password is never sent over a clear connection.
    let creds = Credentials::Password {
        user: "u".into(),
        password: Secret::new("p"),
    };
    assert!(matches!(
        s.authenticate(&creds).await,
        Err(SessionError::AuthWithoutTls)
    ));
    s.quit().await.unwrap();
    assert!(server.connections()[0].tls_version.is_none());
}

#[tokio::test]
async fn submit_without_starttls_sends_no_auth_and_says_why() {
    let server = FakeM365::start(FakeConfig::submission().no_starttls()).await;
    let err = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, SessionError::StartTlsNotOffered));
    assert!(err.to_string().contains("does not offer STARTTLS"), "{err}");
    assert!(!err.is_transient());
    let cmds = &server.connections()[0].commands;
    assert!(
        cmds.iter()
            .all(|c| !c.starts_with("AUTH") && !c.starts_with("MAIL")),
        "{cmds:?}"
    );
}

#[tokio::test]
async fn certificate_for_the_wrong_name_is_refused() {
    let server = FakeM365::start(FakeConfig::submission().cert_names(&["wrong.example"])).await;
    let err = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap_err();
    match &err {
        SessionError::Tls { kind, reason, .. } => {
            assert_eq!(*kind, TlsFailure::Certificate);
            assert!(reason.contains("certificate"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert!(!err.is_transient());
    let cmds = &server.connections()[0].commands;
    assert_eq!(cmds, &vec!["EHLO client.contoso.com", "STARTTLS"]);
}

#[tokio::test]
async fn untrusted_ca_is_refused() {
    let server = FakeM365::start(FakeConfig::submission()).await;
    let other = FakeM365::start(FakeConfig::submission()).await;
    // CA of another server: the certificate does not chain to anything trusted.
    let st = settings(&other);
    let err = Session::connect(session_config(&server, TlsPolicy::Required, st))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Tls {
                kind: TlsFailure::Certificate,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn tls12_only_server_with_minimum_13_is_refused() {
    let server = FakeM365::start(FakeConfig::submission().tls_versions(TlsVersions::Only12)).await;
    let mut st = settings(&server);
    st.min_version = TlsVersion::V1_3;
    let err = Session::connect(session_config(&server, TlsPolicy::Required, st))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Tls {
                kind: TlsFailure::Protocol,
                ..
            }
        ),
        "{err:?}"
    );
    // With the default minimum (1.2) it works, on TLS 1.2.
    let s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    s.quit().await.unwrap();
    assert_eq!(
        server.connections()[1].tls_version.as_deref(),
        Some("TLSv1_2")
    );
}

#[tokio::test]
async fn bdat_when_chunking_enabled() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    cfg.chunking = true;
    let mut s = Session::connect(cfg).await.unwrap();
    let env = envelope("alerts@contoso.com", &["ops@contoso.com"]);
    let data = b"Subject: x\r\n\r\n.leading dot stays\r\nbare\nLF kept as is with BDAT\r\n";
    let res = s
        .send_message(&env, &body(data), MessageFlags::default())
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
    // Empty message too.
    let res = s
        .send_message(&env, &body(b""), MessageFlags::default())
        .await
        .unwrap();
    assert!(res.delivered());
    s.quit().await.unwrap();
    let m = server.accepted();
    assert!(m[0].via_bdat);
    assert_eq!(m[0].data, data);
    assert_eq!(m[0].bdat_chunks, vec![data.len()]);
    assert_eq!(m[1].bdat_chunks, vec![0]);
    let c = &server.connections()[0];
    let flight = c.read_containing("MAIL FROM").unwrap();
    assert!(flight.contains("RCPT TO:<ops@contoso.com>\r\n"), "{flight}");
    assert!(!flight.contains("DATA"));
    assert!(
        c.commands
            .iter()
            .any(|l| l == &format!("BDAT {} LAST", data.len()))
    );
}

#[tokio::test]
async fn mail_and_rcpt_parameters() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let mut env = envelope("alerts@contoso.com", &["ops+x@contoso.com"]);
    env.dsn = Dsn {
        notify: Some("FAILURE,DELAY".into()),
        ret: Some(Ret::Hdrs),
        envid: Some("id=1 2".into()),
    };
    let data = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
    let flags = MessageFlags {
        eight_bit: true,
        smtputf8: true,
    };
    let res = s.send_message(&env, &body(data), flags).await.unwrap();
    assert!(res.delivered());
    s.quit().await.unwrap();
    let m = &server.accepted()[0];
    assert_eq!(
        m.mail_params,
        format!(
            "SIZE={} BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=id+3D1+202",
            data.len()
        )
    );
    assert_eq!(
        m.rcpt_params,
        vec!["NOTIFY=FAILURE,DELAY ORCPT=rfc822;ops+2Bx@contoso.com"]
    );
}

#[tokio::test]
async fn no_dsn_or_size_parameters_when_not_offered() {
    let server = FakeM365::start(FakeConfig::mx().without(&["DSN", "SIZE", "8BITMIME"])).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let mut env = envelope("alerts@contoso.com", &["ops@contoso.com"]);
    env.dsn.notify = Some("NEVER".into());
    let flags = MessageFlags {
        eight_bit: true,
        smtputf8: false,
    };
    let res = s.send_message(&env, &body(MSG), flags).await.unwrap();
    assert!(res.delivered());
    let m = &server.accepted()[0];
    assert_eq!(m.mail_params, "");
    assert_eq!(m.rcpt_params, vec![""]);
}

#[tokio::test]
async fn smtputf8_needed_but_not_offered_fails_before_mail() {
    let server = FakeM365::start(FakeConfig::mx().without(&["SMTPUTF8"])).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let flags = MessageFlags {
        eight_bit: true,
        smtputf8: true,
    };
    let err = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            flags,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Smtputf8NotOffered));
    assert!(!err.is_transient());
    assert!(
        !server.connections()[0]
            .commands
            .iter()
            .any(|c| c.starts_with("MAIL"))
    );
}

#[tokio::test]
async fn without_pipelining_commands_go_one_by_one() {
    let server = FakeM365::start(FakeConfig::mx().without(&["PIPELINING"])).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let res = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com", "c@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    let c = &server.connections()[0];
    let flight = c.read_containing("MAIL FROM").unwrap();
    assert!(!flight.contains("RCPT"), "{flight}");
    assert!(c.reads.iter().any(|r| r == b"RCPT TO:<c@contoso.com>\r\n"));
}

#[tokio::test]
async fn partial_recipient_refusal_delivers_to_the_others() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(
            Rule::reply(
                Phase::Rcpt,
                "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
            )
            .matching("nobody@"),
        ),
    )
    .await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let env = envelope(
        "a@contoso.com",
        &["ops@contoso.com", "nobody@contoso.com", "dev@contoso.com"],
    );
    let res = s
        .send_message(&env, &body(MSG), MessageFlags::default())
        .await
        .unwrap();
    assert!(res.delivered());
    assert_eq!(res.accepted(), vec!["ops@contoso.com", "dev@contoso.com"]);
    let refused = res.refused();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, "nobody@contoso.com");
    assert_eq!(refused[0].1.enhanced.unwrap().to_string(), "5.4.1");
    assert_eq!(
        server.accepted()[0].recipients,
        vec!["ops@contoso.com", "dev@contoso.com"]
    );
}

#[tokio::test]
async fn all_recipients_refused_sends_no_data_and_session_stays_usable() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(
            Rule::reply(
                Phase::Rcpt,
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found",
            )
            .matching("nobody"),
        ),
    )
    .await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let res = s
        .send_message(
            &envelope(
                "a@contoso.com",
                &["nobody1@contoso.com", "nobody2@contoso.com"],
            ),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(!res.delivered());
    assert_eq!(res.refused().len(), 2);
    assert!(res.message_failure().is_none());
    assert!(res.data.is_none());
    // Next message on the same connection (RSET first).
    let res = s
        .send_message(
            &envelope("a@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    s.quit().await.unwrap();
    assert_eq!(server.messages().len(), 1);
    let cmds = &server.connections()[0].commands;
    assert!(cmds.contains(&"RSET".to_string()), "{cmds:?}");
}

#[tokio::test]
async fn mail_refused_is_a_message_failure() {
    let server = FakeM365::start(
        FakeConfig::submission()
            .user("app@contoso.com", TOKEN)
            .rule(
                Rule::reply(
                    Phase::Mail,
                    "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
                )
                .matching("alerts@"),
            ),
    )
    .await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    s.authenticate(&oauth()).await.unwrap();
    let res = s
        .send_message(
            &envelope("alerts@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    let (step, reply) = res.message_failure().unwrap();
    assert_eq!(step, Step::Mail);
    assert_eq!(reply.code, 550);
    assert!(server.messages().is_empty());
    // The queue runner's case: next message on the same session works.
    let res = s
        .send_message(
            &envelope("app@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
}

#[tokio::test]
async fn lone_dot_and_bare_lf_arrive_intact() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    // CRLF body with a lone "." line and dots: byte-exact.
    let crlf = b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nend\r\n.";
    // A large body so the stuffing crosses many 64 KiB boundaries.
    let mut big = Vec::new();
    for i in 0..40_000 {
        big.extend_from_slice(if i % 3 == 0 { b".\r\n" } else { b"..line.\r\n" });
    }
    // Bare LF (and a bare CR) become CRLF: no "\n.\n" can end the data early (smuggling).
    let bare = b"Subject: lf\n\nline\n.\nmore\r.\r\n";
    for b in [&crlf[..], &big[..], &bare[..]] {
        let res = s
            .send_message(
                &envelope("a@contoso.com", &["b@contoso.com"]),
                &body(b),
                MessageFlags::default(),
            )
            .await
            .unwrap();
        assert!(res.delivered());
    }
    let m = server.accepted();
    let mut crlf_done = crlf.to_vec();
    crlf_done.extend_from_slice(b"\r\n"); // the final line gets its CRLF
    assert_eq!(m[0].data, crlf_done);
    assert_eq!(m[1].data, big);
    assert_eq!(
        m[2].data,
        b"Subject: lf\r\n\r\nline\r\n.\r\nmore\r\n.\r\n".to_vec()
    );
}

#[tokio::test]
async fn transcript_has_no_secrets() {
    let password = "Pa55w0rd-very-secret";
    let server = FakeM365::start(
        FakeConfig::submission()
            .user("app@contoso.com", TOKEN)
            .user("basic@contoso.com", password),
    )
    .await;
    for creds in [
        oauth(),
        Credentials::Password {
            user: "basic@contoso.com".into(),
            password: Secret::new(password),
        },
    ] {
        let (sink, buf) = Sink::memory();
        let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
        cfg.transcript = Some(sink);
        let mut s = Session::connect(cfg).await.unwrap();
        s.authenticate(&creds).await.unwrap();
        s.send_message(
            &envelope("app@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
        s.quit().await.unwrap();
        let t = buf.contents();
        let b64 = base64::engine::general_purpose::STANDARD;
        for secret in [
            TOKEN.to_string(),
            password.to_string(),
            b64.encode(password),
            b64.encode("basic@contoso.com"),
        ] {
            assert!(!t.contains(&secret), "secret in transcript:\n{t}");
        }
        assert!(t.contains("C: EHLO client.contoso.com"), "{t}");
        assert!(t.contains("S: 235 2.7.0 Authentication successful"), "{t}");
        assert!(t.contains("<redacted>"), "{t}");
        assert!(!t.contains("hello"), "body is not in the transcript:\n{t}");
    }
    // LOGIN: each 334 response redacted.
    let c = &server.connections()[1];
    assert_eq!(c.auth, vec![format!("LOGIN basic@contoso.com {password}")]);
}

#[tokio::test]
async fn xoauth2_failure_with_challenge_gets_the_final_reply() {
    let mut cfg = FakeConfig::submission().user("app@contoso.com", "other-token");
    cfg.xoauth2_challenge = true;
    let server = FakeM365::start(cfg).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let err = s.authenticate(&oauth()).await.unwrap_err();
    let reply = err.reply().unwrap();
    assert_eq!(reply.code, 535);
    assert_eq!(reply.enhanced.unwrap().to_string(), "5.7.3");
    assert_eq!(err.step(), Some(Step::Auth));
    // The empty line that ends the challenge went out, and nothing else.
    let reads = &server.connections()[0].reads;
    assert_eq!(reads.last().map(Vec::as_slice), Some(&b"\r\n"[..]));
}

#[tokio::test]
async fn hanging_server_times_out() {
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::hang(Phase::DataEnd))).await;
    let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    cfg.data_end_timeout = Duration::from_millis(300);
    let mut s = Session::connect(cfg).await.unwrap();
    let err = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Timeout {
                step: Step::DataEnd,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());

    let server = FakeM365::start(FakeConfig::mx().rule(Rule::hang(Phase::Greeting))).await;
    let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    cfg.command_timeout = Duration::from_millis(200);
    let err = Session::connect(cfg).await.unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Timeout {
                step: Step::Greeting,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    cfg.port = port;
    let err = Session::connect(cfg).await.unwrap_err();
    assert!(matches!(err, SessionError::Connect { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn password_prefers_plain_when_offered() {
    let mut cfg = FakeConfig::submission().user("basic@contoso.com", "pw");
    cfg.ehlo_after_tls = Some(vec!["PIPELINING".into(), "AUTH LOGIN PLAIN XOAUTH2".into()]);
    let server = FakeM365::start(cfg).await;
    let (sink, buf) = Sink::memory();
    let mut c = session_config(&server, TlsPolicy::Required, settings(&server));
    c.transcript = Some(sink);
    let mut s = Session::connect(c).await.unwrap();
    let creds = Credentials::Password {
        user: "basic@contoso.com".into(),
        password: Secret::new("pw"),
    };
    assert_eq!(s.authenticate(&creds).await.unwrap().unwrap().code, 235);
    assert_eq!(
        server.connections()[0].auth,
        vec!["PLAIN basic@contoso.com pw"]
    );
    assert!(buf.contents().contains("C: AUTH PLAIN <redacted>\n"));
}

#[tokio::test]
async fn xoauth2_not_offered_is_a_clear_error() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let err = s.authenticate(&oauth()).await.unwrap_err();
    assert!(matches!(err, SessionError::AuthNotOffered { .. }));
    assert!(
        err.to_string()
            .contains("does not offer AUTH XOAUTH2 (it offers: no AUTH at all)"),
        "{err}"
    );
}

#[tokio::test]
async fn bdat_large_message_goes_in_chunks() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    cfg.chunking = true;
    let mut s = Session::connect(cfg).await.unwrap();
    let chunk = m365send::smtp::transaction::BDAT_CHUNK as usize;
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    while data.len() < chunk + 1000 {
        data.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd\r\n",
        );
    }
    let res = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(&data),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    let m = &server.accepted()[0];
    assert_eq!(m.bdat_chunks, vec![chunk, data.len() - chunk]);
    assert!(m.data == data, "content differs");
}

#[tokio::test]
async fn sender_refused_then_hang_up_keeps_the_refusal() {
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply_and_close(
        Phase::Mail,
        "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization",
    )))
    .await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let res = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    let (step, reply) = res.message_failure().unwrap();
    assert_eq!(step, Step::Mail);
    assert_eq!(reply.enhanced.unwrap().to_string(), "5.7.68");
}

// ---- replies of the wrong kind and hostile text ------------------------------------------------

#[tokio::test]
async fn positive_reply_of_the_wrong_kind_is_out_of_step_never_success() {
    // A "greeting" of 250, an EHLO answered 220: positive codes, but not the step's. They
    // must not pass for a refusal with a positive code (which mapped to exit 0).
    for (phase, reply, step) in [
        (Phase::Greeting, "250 hello there", Step::Greeting),
        (Phase::Ehlo, "220 fake.example", Step::Ehlo),
    ] {
        let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(phase, reply))).await;
        let err = Session::connect(session_config(
            &server,
            TlsPolicy::Opportunistic,
            settings(&server),
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(&err, SessionError::Protocol { step: s, detail } if *s == step && detail.contains(reply)),
            "{err:?}"
        );
        assert!(err.is_transient(), "{err:?}");
    }
}

#[tokio::test]
async fn extra_pipelined_reply_is_detected_not_taken_for_data_acceptance() {
    // The server answers MAIL twice: every later reply would be matched to the wrong command
    // (the second RCPT reply to DATA, so the data would never be sent and the end-of-data
    // verdict never read).
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::Mail,
        "250 2.1.0 Sender OK\r\n250 2.1.0 Sender OK again",
    )))
    .await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let err = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SessionError::Protocol {
                step: Step::Data,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(server.accepted().is_empty());
}

#[tokio::test]
async fn intermediate_reply_at_end_of_data_is_not_acceptance() {
    let server =
        FakeM365::start(FakeConfig::mx().rule(Rule::reply(Phase::DataEnd, "354 go ahead"))).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let err = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SessionError::Protocol {
                step: Step::DataEnd,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn control_characters_in_replies_never_reach_the_user() {
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::DataEnd,
        "550 5.7.1 bad\x1b[2J content\x07\x00 here",
    )))
    .await;
    let (sink, seen) = Sink::memory();
    let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
    cfg.transcript = Some(sink);
    let mut s = Session::connect(cfg).await.unwrap();
    let res = s
        .send_message(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    let (_, reply) = res.message_failure().unwrap();
    let text = reply.to_string();
    assert!(text.starts_with("550 5.7.1 bad"), "{text}");
    assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
    let transcript = seen.contents();
    assert!(transcript.contains("S: 550 5.7.1 bad"), "{transcript}");
    assert!(
        !transcript.contains('\x1b') && !transcript.contains('\x07') && !transcript.contains('\0'),
        "{transcript:?}"
    );
}

#[tokio::test]
async fn starttls_refused_goes_on_in_clear_only_where_tls_is_optional() {
    let refused = || {
        FakeConfig::mx().rule(Rule::reply(
            Phase::StartTls,
            "454 4.7.0 TLS not available due to local problem",
        ))
    };
    // Direct send (TLS opportunistic): delivered without TLS, as RFC 3207 allows.
    let server = FakeM365::start(refused()).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Opportunistic,
        settings(&server),
    ))
    .await
    .unwrap();
    assert!(!s.is_tls());
    let res = s
        .send_message(
            &envelope("alerts@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
    s.quit().await.unwrap();
    assert_eq!(server.accepted().len(), 1);

    // Relay/submission (TLS required): stop, nothing sent.
    let server = FakeM365::start(refused()).await;
    let err = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(&err, SessionError::Rejected { step: Step::StartTls, reply } if reply.code == 454),
        "{err:?}"
    );
    let cmds = server.connections()[0].commands.clone();
    assert!(!cmds.iter().any(|c| c.starts_with("MAIL")), "{cmds:?}");
}

#[tokio::test]
async fn ehlo_not_recognised_falls_back_to_helo() {
    // An old relay without ESMTP: EHLO answered 502, HELO accepted.
    let server = FakeM365::start(
        FakeConfig::mx()
            .no_starttls()
            .rule(Rule::reply(Phase::Ehlo, "502 5.5.1 Command not implemented").times(1)),
    )
    .await;
    let (sink, seen) = Sink::memory();
    let mut cfg = session_config(&server, TlsPolicy::Opportunistic, settings(&server));
    cfg.transcript = Some(sink);
    let mut s = Session::connect(cfg).await.unwrap();
    assert!(!s.is_tls());
    assert!(!s.capabilities().pipelining && s.capabilities().size.is_none());
    let res = s
        .send_message(
            &envelope("alerts@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
    s.quit().await.unwrap();
    let cmds = server.connections()[0].commands.clone();
    assert_eq!(cmds[0], "EHLO client.contoso.com");
    assert_eq!(cmds[1], "HELO client.contoso.com");
    // No extension was used: plain MAIL FROM without SIZE.
    assert_eq!(cmds[2], "MAIL FROM:<alerts@contoso.com>");
    assert!(seen.contents().contains("trying HELO"));
    assert_eq!(server.accepted().len(), 1);

    // Where TLS is required, HELO (no STARTTLS) stops before anything is sent.
    let server = FakeM365::start(
        FakeConfig::mx()
            .rule(Rule::reply(Phase::Ehlo, "502 5.5.1 Command not implemented").times(1)),
    )
    .await;
    let err = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, SessionError::StartTlsNotOffered), "{err:?}");
}

#[tokio::test]
async fn a_server_echoing_the_auth_payload_does_not_leak_it() {
    // Some servers quote the rejected argument in their error text. That text reaches the
    // transcript, the user's error, the log line and the queue metadata: the payload, token
    // and password must not.
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.encode(format!(
        "user=app@contoso.com\x01auth=Bearer {TOKEN}\x01\x01"
    ));
    let password = "Pa55w0rd-very-secret";
    for (creds, echo) in [
        (
            oauth(),
            format!("535 5.7.3 Authentication unsuccessful for {payload} (token {TOKEN})"),
        ),
        (
            Credentials::Password {
                user: "basic@contoso.com".into(),
                password: Secret::new(password),
            },
            format!(
                "535 5.7.8 bad password {password} / {}",
                b64.encode(password)
            ),
        ),
    ] {
        let server =
            FakeM365::start(FakeConfig::submission().rule(Rule::reply(Phase::Auth, &echo))).await;
        let (sink, buf) = Sink::memory();
        let mut cfg = session_config(&server, TlsPolicy::Required, settings(&server));
        cfg.transcript = Some(sink);
        let mut s = Session::connect(cfg).await.unwrap();
        let err = s.authenticate(&creds).await.unwrap_err();
        let reply = err.reply().expect("a refusal").to_string();
        let t = buf.contents();
        for secret in [payload.as_str(), TOKEN, password, &b64.encode(password)] {
            assert!(!reply.contains(secret), "secret in the reply: {reply}");
            assert!(!t.contains(secret), "secret in the transcript:\n{t}");
        }
        assert!(reply.starts_with("535 5.7."), "{reply}");
        assert!(reply.contains("<redacted>"), "{reply}");
    }

    // A password that looks like the start of a reply line does not break the replies.
    let server = FakeM365::start(FakeConfig::submission().user("odd@contoso.com", "250 ")).await;
    let mut s = Session::connect(session_config(
        &server,
        TlsPolicy::Required,
        settings(&server),
    ))
    .await
    .unwrap();
    let odd = Credentials::Password {
        user: "odd@contoso.com".into(),
        password: Secret::new("250 "),
    };
    assert_eq!(s.authenticate(&odd).await.unwrap().unwrap().code, 235);
    let res = s
        .send_message(
            &envelope("odd@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
}

// ---- round trips: the bytes of each flight -----------------------------------------------------
//
// What the client writes in each flight (the bytes the fake server received between two of its
// replies), with PIPELINING and CHUNKING offered or not, and how every reply of a flight is
// handled.

const FLIGHT_MSG: &[u8] =
    b"From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: hi\r\n\r\n.dot\r\nhello\r\n";

/// A session with TLS (CHUNKING used when offered, or not).
async fn connect(server: &FakeM365, chunking: bool) -> Session {
    let mut cfg = session_config(server, TlsPolicy::Required, settings(server));
    cfg.chunking = chunking;
    Session::connect(cfg).await.unwrap()
}

/// `FLIGHT_MSG` from a@contoso.com to `rcpts` as the session's last message.
async fn send_and_quit(
    s: Session,
    rcpts: &[&str],
    data: &[u8],
) -> Result<MessageResult, SessionError> {
    s.send_message_and_quit(
        &envelope("a@contoso.com", rcpts),
        &body(data),
        MessageFlags::default(),
    )
    .await
}

/// The flights after the TLS handshake (EHLO, AUTH, the message...).
fn after_tls(c: &ConnRecord) -> Vec<String> {
    assert!(c.tls_from_flight.is_some(), "TLS was used");
    c.flights_after_tls()
}

fn bdat_flight(sender: &str, rcpts: &[&str], data: &[u8], quit: bool) -> String {
    let mut f = format!("MAIL FROM:<{sender}> SIZE={}\r\n", data.len());
    for r in rcpts {
        f.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    f.push_str(&format!("BDAT {} LAST\r\n", data.len()));
    f.push_str(std::str::from_utf8(data).unwrap());
    if quit {
        f.push_str("QUIT\r\n");
    }
    f
}

#[tokio::test]
async fn pipelining_and_chunking_send_the_message_and_quit_in_one_write() {
    let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", TOKEN)).await;
    let mut s = connect(&server, true).await;
    s.authenticate(&oauth()).await.unwrap();
    let rcpts = ["ops@contoso.com", "dev@contoso.com"];
    let res = s
        .send_message_and_quit(
            &envelope("app@contoso.com", &rcpts),
            &body(FLIGHT_MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
    assert_eq!(res.accepted(), rcpts);

    let c = &server.connections()[0];
    let flights = after_tls(c);
    assert_eq!(flights.len(), 3, "EHLO, AUTH, the message: {flights:#?}");
    assert!(flights[0].starts_with("EHLO "));
    assert!(flights[1].starts_with("AUTH XOAUTH2 "));
    let want = bdat_flight("app@contoso.com", &rcpts, FLIGHT_MSG, true);
    assert_eq!(flights[2], want);
    // One write: the server got it in one read.
    assert!(
        c.reads.iter().any(|r| r == want.as_bytes()),
        "not in one read"
    );
    // Before TLS: EHLO and STARTTLS; 5 flights in all.
    assert_eq!(c.flights.len(), 5);
    let m = &server.accepted()[0];
    assert!(m.via_bdat);
    assert_eq!(m.data, FLIGHT_MSG, "BDAT carries the bytes as they are");
    assert_eq!(m.recipients, rcpts);
    assert_eq!(c.commands.last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn mail_refused_in_the_flight_leaves_the_session_in_step() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(
            Rule::reply(
                Phase::Mail,
                "550 5.7.64 TenantAttribution; Relay Access Denied",
            )
            .matching("bad@"),
        ),
    )
    .await;
    let mut s = connect(&server, true).await;
    let res = s
        .send_message(
            &envelope("bad@contoso.com", &["ops@contoso.com"]),
            &body(FLIGHT_MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(!res.delivered());
    let (step, reply) = res.message_failure().unwrap();
    assert_eq!((step, reply.code), (Step::Mail, 550));
    assert!(res.accepted().is_empty());
    assert!(s.is_open());
    // The next message on the same session: RSET goes in its flight, and it is delivered.
    let res = s
        .send_message_and_quit(
            &envelope("good@contoso.com", &["ops@contoso.com"]),
            &body(FLIGHT_MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");

    let c = &server.connections()[0];
    let flights = after_tls(c);
    assert_eq!(
        flights[1],
        bdat_flight("bad@contoso.com", &["ops@contoso.com"], FLIGHT_MSG, false),
        "the body went with the refused MAIL"
    );
    assert_eq!(
        flights[2],
        format!(
            "RSET\r\n{}",
            bdat_flight("good@contoso.com", &["ops@contoso.com"], FLIGHT_MSG, true)
        )
    );
    // The server read the octets as octets: no line of the body became a command.
    let cmds: Vec<&str> = c.commands.iter().skip(3).map(String::as_str).collect();
    let bdat = format!("BDAT {} LAST", FLIGHT_MSG.len());
    let mail = |s: &str| format!("MAIL FROM:<{s}> SIZE={}", FLIGHT_MSG.len());
    assert_eq!(
        cmds,
        [
            &mail("bad@contoso.com"),
            "RCPT TO:<ops@contoso.com>",
            &bdat,
            "RSET",
            &mail("good@contoso.com"),
            "RCPT TO:<ops@contoso.com>",
            &bdat,
            "QUIT"
        ]
    );
    assert_eq!(server.messages().len(), 1);
    assert_eq!(server.accepted()[0].sender, "good@contoso.com");
}

#[tokio::test]
async fn all_recipients_refused_is_never_delivered_while_the_bdat_is_consumed() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(
            Rule::reply(
                Phase::Rcpt,
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found",
            )
            .matching("nobody"),
        ),
    )
    .await;
    let mut s = connect(&server, true).await;
    let rcpts = ["nobody1@contoso.com", "nobody2@contoso.com"];
    let res = s
        .send_message(
            &envelope("a@contoso.com", &rcpts),
            &body(FLIGHT_MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(!res.delivered());
    assert!(res.accepted().is_empty());
    assert!(res.data.is_none(), "{res:?}");
    assert!(res.message_failure().is_none());
    let refused: Vec<&str> = res.refused().iter().map(|(a, _)| *a).collect();
    assert_eq!(refused, rcpts);
    // In step: the next message goes through on the same connection.
    let res = send_and_quit(s, &["ops@contoso.com"], FLIGHT_MSG)
        .await
        .unwrap();
    assert!(res.delivered());
    let c = &server.connections()[0];
    assert_eq!(
        after_tls(c)[1],
        bdat_flight("a@contoso.com", &rcpts, FLIGHT_MSG, false),
        "the BDAT and the body went in the flight"
    );
    assert_eq!(server.messages().len(), 1, "only the second message");
    assert_eq!(server.messages()[0].recipients, ["ops@contoso.com"]);
}

#[tokio::test]
async fn one_of_three_recipients_refused_is_a_partial_delivery() {
    for chunking in [true, false] {
        let server = FakeM365::start(
            FakeConfig::mx().rule(
                Rule::reply(
                    Phase::Rcpt,
                    "550 5.4.1 Recipient address rejected: Access denied",
                )
                .matching("nobody@"),
            ),
        )
        .await;
        let s = connect(&server, chunking).await;
        let rcpts = ["ops@contoso.com", "nobody@contoso.com", "dev@contoso.com"];
        let res = send_and_quit(s, &rcpts, FLIGHT_MSG).await.unwrap();
        assert!(res.delivered(), "{chunking}: {res:?}");
        assert_eq!(res.accepted(), ["ops@contoso.com", "dev@contoso.com"]);
        let refused = res.refused();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "nobody@contoso.com");
        assert_eq!(refused[0].1.code, 550);
        let m = &server.accepted()[0];
        assert_eq!(m.recipients, ["ops@contoso.com", "dev@contoso.com"]);
        assert_eq!(m.via_bdat, chunking);
        assert_eq!(m.data, FLIGHT_MSG);
    }
}

#[tokio::test]
async fn without_chunking_data_then_body_dot_and_quit() {
    let server = FakeM365::start(FakeConfig::mx().without(&["CHUNKING"])).await;
    let s = connect(&server, true).await;
    let rcpts = ["ops@contoso.com", "dev@contoso.com"];
    let res = send_and_quit(s, &rcpts, FLIGHT_MSG).await.unwrap();
    assert!(res.delivered());
    let flights = after_tls(&server.connections()[0]);
    assert_eq!(
        flights[1..],
        [
            format!(
                "MAIL FROM:<a@contoso.com> SIZE={}\r\nRCPT TO:<ops@contoso.com>\r\nRCPT TO:<dev@contoso.com>\r\nDATA\r\n",
                FLIGHT_MSG.len()
            ),
            // Dot-stuffed, then the end of data and QUIT in the same write.
            "From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: hi\r\n\r\n..dot\r\nhello\r\n.\r\nQUIT\r\n"
                .to_owned(),
        ]
    );
    let m = &server.accepted()[0];
    assert!(!m.via_bdat);
    assert_eq!(m.data, FLIGHT_MSG);
}

#[tokio::test]
async fn without_pipelining_one_command_per_flight() {
    let server = FakeM365::start(FakeConfig::mx().without(&["PIPELINING"])).await;
    let s = connect(&server, true).await;
    let res = send_and_quit(s, &["ops@contoso.com", "dev@contoso.com"], FLIGHT_MSG)
        .await
        .unwrap();
    assert!(res.delivered());
    let flights = after_tls(&server.connections()[0]);
    let mut bdat = format!("BDAT {} LAST\r\n", FLIGHT_MSG.len()).into_bytes();
    bdat.extend_from_slice(FLIGHT_MSG);
    assert_eq!(
        flights[1..],
        [
            format!("MAIL FROM:<a@contoso.com> SIZE={}\r\n", FLIGHT_MSG.len()),
            "RCPT TO:<ops@contoso.com>\r\n".to_owned(),
            "RCPT TO:<dev@contoso.com>\r\n".to_owned(),
            String::from_utf8(bdat).unwrap(),
            "QUIT\r\n".to_owned(),
        ]
    );
    assert!(server.accepted()[0].via_bdat);
}

#[tokio::test]
async fn a_large_body_waits_for_the_recipients() {
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    while data.len() as u64 <= FLIGHT_BODY_MAX {
        data.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab\r\n");
    }
    // Every recipient refused: the body is never sent.
    let server = FakeM365::start(
        FakeConfig::mx().rule(Rule::reply(Phase::Rcpt, "550 5.1.10 RecipientNotFound")),
    )
    .await;
    let s = connect(&server, true).await;
    let res = send_and_quit(s, &["nobody@contoso.com"], &data)
        .await
        .unwrap();
    assert!(!res.delivered());
    let c = &server.connections()[0];
    assert!(
        !c.commands.iter().any(|l| l.starts_with("BDAT")),
        "{:?}",
        c.commands
    );
    assert!(c.bytes().len() < 4096, "{} bytes sent", c.bytes().len());
    // Accepted: MAIL and RCPT, then the BDAT with the body and QUIT.
    let server = FakeM365::start(FakeConfig::mx()).await;
    let s = connect(&server, true).await;
    let res = send_and_quit(s, &["ops@contoso.com"], &data).await.unwrap();
    assert!(res.delivered());
    let flights = after_tls(&server.connections()[0]);
    assert_eq!(
        flights[1],
        format!(
            "MAIL FROM:<a@contoso.com> SIZE={}\r\nRCPT TO:<ops@contoso.com>\r\n",
            data.len()
        )
    );
    assert!(flights[2].starts_with(&format!("BDAT {} LAST\r\nSubject: big", data.len())));
    assert!(flights[2].ends_with("ab\r\nQUIT\r\n"));
    assert!(server.accepted()[0].data == data);
}

#[tokio::test]
async fn replies_out_of_step_in_the_flight_are_never_a_delivery() {
    // The server answers MAIL twice: the reply taken for the content's is the RCPT's, and
    // the one taken for QUIT's is the content's. The 221 that is missing gives it away.
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::Mail,
        "250 2.1.0 Sender OK\r\n250 2.1.0 Sender OK again",
    )))
    .await;
    let s = connect(&server, true).await;
    let err = send_and_quit(s, &["b@contoso.com"], FLIGHT_MSG)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SessionError::Protocol {
                step: Step::DataEnd,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_server_closing_after_the_content_reply_still_delivers() {
    // QUIT went with the content; the server answers the content and hangs up without a
    // 221: the message is delivered all the same.
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply_and_close(
        Phase::DataEnd,
        "250 2.0.0 OK Queued mail for delivery",
    )))
    .await;
    let s = connect(&server, true).await;
    let res = send_and_quit(s, &["b@contoso.com"], FLIGHT_MSG)
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
}
