//! Delivery tests: retries, exit codes, the user's report, the dead letter, redaction —
//! against the fake Microsoft 365 server on 127.0.0.1.

#[path = "support/fake_m365.rs"]
mod fake_m365;

use std::io::Write;
use std::path::PathBuf;

use fake_m365::{FakeConfig, FakeM365, Phase, Rule};
use m365send::config::{AuthMethod, Config, Mode, Profile, SecretSource, TlsVersion};
use m365send::deliver::{Options, Outcome, attempt, deliver};
use m365send::exit::Exit;
use m365send::message::{Body, Dsn, Envelope, Prepared};
use m365send::route::{AuthKind, Endpoint, Host, TlsPolicy};
use m365send::secret::Secret;
use m365send::smtp::Sink;

const TOKEN: &str = "tok-3f9a1c77-very-secret-access-token";
const MSG: &[u8] =
    b"From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: backup done\r\n\r\nall good\r\n";

struct Env {
    _dir: tempfile::TempDir,
    config: Config,
    profile: Profile,
    endpoint: Endpoint,
    dead: PathBuf,
}

impl Env {
    /// `attempt` with this environment's configuration, profile and endpoint: nothing
    /// printed or written.
    async fn attempt(&self, msg: &Prepared) -> Outcome {
        attempt(
            &self.config,
            &self.profile,
            msg,
            &self.endpoint,
            &Options::default(),
        )
        .await
    }

    /// Deliver with this environment's configuration, profile and endpoint, default options.
    async fn deliver(&self, msg: &Prepared) -> Result<(), m365send::exit::Failure> {
        deliver(
            &self.config,
            &self.profile,
            msg,
            &self.endpoint,
            &Options::default(),
        )
        .await
    }
}

fn setup(server: &FakeM365, mode: Mode) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead.letter");
    let config = Config {
        dead_letter: Some(dead.clone()),
        ..Config::default()
    };
    let mut profile = Profile {
        name: "test".into(),
        mode,
        mailbox: Some("app@contoso.com".into()),
        helo: Some("client.contoso.com".into()),
        ..Profile::default()
    };
    profile.auth.method = if mode == Mode::Submit {
        AuthMethod::OAuth
    } else {
        AuthMethod::None
    };
    profile.auth.token = SecretSource {
        value: Some(Secret::new(TOKEN)),
        ..SecretSource::default()
    };
    profile.timeouts.connect = Some(5);
    profile.timeouts.command = Some(5);
    profile.timeouts.data_end = Some(5);
    profile.retry.attempts = Some(3);
    profile.retry.initial_delay_ms = Some(20);
    let endpoint = Endpoint {
        mode,
        hosts: vec![Host {
            name: "127.0.0.1".into(),
            port: server.port(),
            preference: None,
            addrs: Vec::new(),
        }],
        tls: if mode == Mode::Direct {
            TlsPolicy::Opportunistic
        } else {
            TlsPolicy::Required
        },
        tls_min: TlsVersion::V1_2,
        ca_file: Some(server.ca_file().to_path_buf()),
        client_cert: None,
        auth: if mode == Mode::Submit {
            AuthKind::OAuth
        } else {
            AuthKind::None
        },
        source: "test".into(),
    };
    Env {
        _dir: dir,
        config,
        profile,
        endpoint,
        dead,
    }
}

fn prepared(sender: &str, rcpts: &[&str], bytes: &[u8]) -> Prepared {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    Prepared {
        envelope: Envelope {
            sender: sender.into(),
            recipients: rcpts.iter().map(|s| s.to_string()).collect(),
            dsn: Dsn::default(),
        },
        body: Body::temporary(f.into_temp_path()),
        size: bytes.len() as u64,
        eight_bit: false,
        smtputf8: false,
        header_block: String::new(),
    }
}

fn submit_server() -> FakeConfig {
    FakeConfig::submission().user("app@contoso.com", TOKEN)
}

#[tokio::test]
async fn submit_delivers() {
    let server = FakeM365::start(submit_server()).await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    env.deliver(&msg).await.unwrap();
    let m = server.accepted();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].data, MSG);
    assert!(!env.dead.exists());
}

#[tokio::test]
async fn relay_with_client_certificate_delivers() {
    let server = FakeM365::start(FakeConfig::mx().require_client_cert()).await;
    let mut env = setup(&server, Mode::Relay);
    let (cert, key) = server.client_cert_files("relay.contoso.com");
    env.endpoint.client_cert = Some(m365send::route::ClientCert { cert, key });
    let msg = prepared("alerts@contoso.com", &["ops@contoso.com"], MSG);
    env.deliver(&msg).await.unwrap();
    assert!(server.connections()[0].client_cert.is_some());
    assert_eq!(server.accepted().len(), 1);
}

#[tokio::test]
async fn direct_send_without_tls_delivers() {
    let server = FakeM365::start(FakeConfig::mx().no_starttls()).await;
    let env = setup(&server, Mode::Direct);
    let msg = prepared("alerts@contoso.com", &["ops@contoso.com"], MSG);
    env.deliver(&msg).await.unwrap();
    assert_eq!(server.accepted().len(), 1);
}

#[tokio::test]
async fn transient_451_then_success_on_retry() {
    let server = FakeM365::start(
        submit_server().rule(
            Rule::reply(
                Phase::DataEnd,
                "451 4.7.500 Server busy. Please try again later",
            )
            .times(1),
        ),
    )
    .await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let out = attempt(
        &env.config,
        &env.profile,
        &msg,
        &env.endpoint,
        &Options::default(),
    )
    .await;
    assert!(out.is_success(), "{out:?}");
    assert_eq!(out.attempts, 2);
    assert_eq!(server.connections().len(), 2);
    assert_eq!(server.accepted().len(), 1);
}

#[tokio::test]
async fn drop_mid_data_then_success() {
    let server = FakeM365::start(submit_server().rule(Rule::drop(Phase::MidData).times(1))).await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    env.deliver(&msg).await.unwrap();
    assert_eq!(server.connections().len(), 2);
    assert_eq!(server.accepted()[0].data, MSG);
}

#[tokio::test]
async fn next_host_when_the_first_refuses_connections() {
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut env = setup(&server, Mode::Relay);
    env.endpoint.hosts.insert(
        0,
        Host {
            name: "127.0.0.1".into(),
            port: closed_port,
            preference: Some(0),
            addrs: Vec::new(),
        },
    );
    let msg = prepared("alerts@contoso.com", &["ops@contoso.com"], MSG);
    let out = attempt(
        &env.config,
        &env.profile,
        &msg,
        &env.endpoint,
        &Options::default(),
    )
    .await;
    assert!(out.is_success(), "{out:?}");
    assert_eq!(out.attempts, 2);
}

#[tokio::test]
async fn hanging_server_times_out_with_75_and_keeps_the_message() {
    let server = FakeM365::start(submit_server().rule(Rule::hang(Phase::DataEnd))).await;
    let mut env = setup(&server, Mode::Submit);
    env.profile.timeouts.data_end = Some(0); // 0 s: the first wait already expires
    env.profile.retry.attempts = Some(2);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let out = attempt(
        &env.config,
        &env.profile,
        &msg,
        &env.endpoint,
        &Options::default(),
    )
    .await;
    assert!(out.is_transient());
    assert_eq!(out.exit(), Exit::TempFail);
    let err = env.deliver(&msg).await.unwrap_err();
    assert_eq!(err.exit, Exit::TempFail);
    assert!(err.message.contains("no reply within"), "{}", err.message);
    assert!(err.message.contains("end of data"), "{}", err.message);
    assert!(err.message.contains(&env.dead.display().to_string()));
    assert!(env.dead.exists());
}

#[tokio::test]
async fn transient_failure_retried_then_75() {
    let server = FakeM365::start(submit_server().rule(Rule::reply(
        Phase::Mail,
        "451 4.7.500 Access denied, please try again later",
    )))
    .await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = env.deliver(&msg).await.unwrap_err();
    assert_eq!(err.exit, Exit::TempFail);
    assert_eq!(server.connections().len(), 3, "3 attempts");
    let first = err.message.lines().next().unwrap();
    assert!(
        first.contains("temporarily refused")
            && first.contains("(451 4.7.500 Access denied, please try again later)"),
        "{first}"
    );
    assert!(err.message.contains("after 3 attempts"));
}

/// The reply Microsoft sends at `phase` → the exit code and a quoted reply, without retries.
async fn permanent_case(
    phase: Phase,
    reply: &str,
    matching: Option<&str>,
) -> (Exit, String, usize) {
    let mut rule = Rule::reply(phase, reply);
    if let Some(m) = matching {
        rule = rule.matching(m);
    }
    let server = FakeM365::start(submit_server().rule(rule)).await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = env.deliver(&msg).await.unwrap_err();
    let expected_quote = format!("({})", reply.replace("\r\n", " "));
    assert!(
        err.message
            .lines()
            .next()
            .unwrap()
            .contains(&expected_quote),
        "first line must quote the reply: {}",
        err.message
    );
    // The message is never lost.
    let dead = std::fs::read_to_string(&env.dead).unwrap();
    assert!(dead.contains("Subject: backup done\nall good") || dead.contains("all good"));
    (err.exit, err.message, server.connections().len())
}

/// The rows of BRIEF.md's table (permanent ones): never retried, reply quoted, dead letter.
#[tokio::test]
async fn permanent_replies_are_not_retried() {
    let cases: &[(Phase, &str)] = &[
        (Phase::Auth, "535 5.7.3 Authentication unsuccessful"),
        (
            Phase::Auth,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        ),
        (
            Phase::Auth,
            "550 5.7.30 Basic authentication is not supported for Client Submission.",
        ),
        (
            Phase::Mail,
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        ),
        (
            Phase::Mail,
            "554 5.2.252 SendAsDenied; app@contoso.com not allowed to send as x",
        ),
        (
            Phase::Mail,
            "550 5.2.254 Sender throttled due to continuous send as denied errors",
        ),
        (
            Phase::Mail,
            "550 5.7.64 TenantAttribution; Relay Access Denied",
        ),
        (
            Phase::Mail,
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization",
        ),
        (
            Phase::Mail,
            "550 5.7.606 Access denied, banned sending IP [192.0.2.1]",
        ),
        (
            Phase::Mail,
            "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException",
        ),
        (
            Phase::DataEnd,
            "552 5.3.4 Message size exceeds fixed maximum message size",
        ),
        (
            Phase::DataEnd,
            "550 5.6.11 SMTPSEND.BareLinefeedsAreIllegal",
        ),
        (Phase::DataEnd, "554 5.2.2 mailbox full"),
        (Phase::Data, "554 5.0.0 Transaction failed"),
    ];
    for (phase, reply) in cases {
        let (exit, message, connections) = permanent_case(*phase, reply, None).await;
        assert!(
            !matches!(exit, Exit::Ok | Exit::TempFail),
            "{reply}: {exit:?}"
        );
        assert_eq!(connections, 1, "{reply}: 5xx must not be retried");
        assert!(!message.contains(TOKEN));
    }
}

#[tokio::test]
async fn recipient_refused_for_everyone() {
    let (exit, message, connections) = permanent_case(
        Phase::Rcpt,
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        None,
    )
    .await;
    assert_ne!(exit, Exit::Ok);
    assert_ne!(exit, Exit::TempFail);
    assert_eq!(connections, 1);
    assert!(message.contains("ops@contoso.com"), "{message}");
}

/// Exit codes from the explanation catalogue (crate::explain::exit_for). In this branch
#[tokio::test]
async fn exit_codes_follow_the_catalogue() {
    let cases: &[(Phase, &str, Exit)] = &[
        (
            Phase::Rcpt,
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound",
            Exit::NoUser,
        ),
        (
            Phase::Rcpt,
            "550 5.4.1 Recipient address rejected: Access denied",
            Exit::NoUser,
        ),
        (
            Phase::Auth,
            "535 5.7.3 Authentication unsuccessful",
            Exit::NoPerm,
        ),
        (
            Phase::Auth,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant",
            Exit::NoPerm,
        ),
        (
            Phase::Mail,
            "530 5.7.57 Client was not authenticated to send anonymous mail during MAIL FROM",
            Exit::NoPerm,
        ),
        (
            Phase::Mail,
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
            Exit::NoPerm,
        ),
        (Phase::Mail, "554 5.2.252 SendAsDenied", Exit::NoPerm),
        (
            Phase::Mail,
            "550 5.7.64 TenantAttribution; Relay Access Denied",
            Exit::NoPerm,
        ),
        (
            Phase::Mail,
            "550 5.7.68 TenantInboundAttribution; Direct Send not allowed",
            Exit::NoPerm,
        ),
        (
            Phase::DataEnd,
            "552 5.3.4 Message size exceeds fixed maximum message size",
            Exit::DataErr,
        ),
        (
            Phase::DataEnd,
            "550 5.6.11 SMTPSEND.BareLinefeedsAreIllegal",
            Exit::DataErr,
        ),
        (
            Phase::Data,
            "554 5.0.0 Transaction failed",
            Exit::Unavailable,
        ),
    ];
    for (phase, reply, want) in cases {
        let (exit, message, _) = permanent_case(*phase, reply, None).await;
        assert_eq!(exit, *want, "{reply}");
        // An explanation follows the first line for Microsoft's codes.
        if *want != Exit::Unavailable {
            assert!(message.lines().count() >= 3, "{reply}: {message}");
        }
    }
}

#[tokio::test]
async fn anonymous_mail_on_submission_is_refused_5_7_57() {
    // A submit profile without credentials against smtp.office365.com: 530 5.7.57.
    let server = FakeM365::start(submit_server()).await;
    let mut env = setup(&server, Mode::Submit);
    env.profile.auth.method = AuthMethod::None;
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = env.deliver(&msg).await.unwrap_err();
    assert!(err.message.contains("530 5.7.57"), "{}", err.message);
    assert!(
        err.message
            .starts_with("the server 127.0.0.1 refused the sender <app@contoso.com> (530 5.7.57"),
        "{}",
        err.message
    );
    assert_eq!(server.connections().len(), 1);
}

#[tokio::test]
async fn partial_delivery_lists_who_got_it() {
    let server = FakeM365::start(
        submit_server().rule(
            Rule::reply(
                Phase::Rcpt,
                "550 5.4.1 Recipient address rejected: Access denied",
            )
            .matching("ext@"),
        ),
    )
    .await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared(
        "app@contoso.com",
        &["ops@contoso.com", "ext@fabrikam.com", "dev@contoso.com"],
        MSG,
    );
    let out = attempt(
        &env.config,
        &env.profile,
        &msg,
        &env.endpoint,
        &Options::default(),
    )
    .await;
    assert_eq!(out.delivered, vec!["ops@contoso.com", "dev@contoso.com"]);
    assert_eq!(out.refused.len(), 1);
    assert!(out.pending.is_empty());
    let err = env.deliver(&msg).await.unwrap_err();
    assert_ne!(err.exit, Exit::Ok);
    assert_ne!(err.exit, Exit::TempFail);
    let text = &err.message;
    assert!(text.starts_with("the server 127.0.0.1 refused recipient <ext@fabrikam.com> (550 5.4.1 Recipient address rejected: Access denied)"), "{text}");
    assert!(
        text.contains("delivered to: ops@contoso.com, dev@contoso.com"),
        "{text}"
    );
    assert!(
        text.contains("NOT delivered to: ext@fabrikam.com"),
        "{text}"
    );
    // Delivered to some and nobody left to retry: no dead letter.
    assert!(!env.dead.exists());
}

#[tokio::test]
async fn transient_recipient_retried_alone() {
    let server = FakeM365::start(
        submit_server().rule(
            Rule::reply(Phase::Rcpt, "452 4.5.3 Too many recipients")
                .matching("dev@")
                .times(1),
        ),
    )
    .await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared(
        "app@contoso.com",
        &["ops@contoso.com", "dev@contoso.com"],
        MSG,
    );
    let out = attempt(
        &env.config,
        &env.profile,
        &msg,
        &env.endpoint,
        &Options::default(),
    )
    .await;
    assert!(out.is_success(), "{out:?}");
    let m = server.accepted();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0].recipients, vec!["ops@contoso.com"]);
    assert_eq!(m[1].recipients, vec!["dev@contoso.com"]);
}

#[tokio::test]
async fn configuration_errors_exit_78() {
    let server = FakeM365::start(submit_server()).await;
    // No token configured for OAuth.
    let mut env = setup(&server, Mode::Submit);
    env.profile.auth.token = SecretSource::default();
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = env.deliver(&msg).await.unwrap_err();
    assert_eq!(err.exit, Exit::Config, "{}", err.message);
    // A CA file that does not exist.
    let mut env = setup(&server, Mode::Submit);
    env.endpoint.ca_file = Some("/nonexistent/ca.pem".into());
    let err = env.deliver(&msg).await.unwrap_err();
    assert_eq!(err.exit, Exit::Config, "{}", err.message);
    assert!(err.message.contains("/nonexistent/ca.pem"));
    assert!(server.connections().is_empty());
}

#[tokio::test]
async fn tls_certificate_for_wrong_name_is_69_not_retried() {
    let server = FakeM365::start(submit_server().cert_names(&["wrong.example"])).await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = env.deliver(&msg).await.unwrap_err();
    assert_eq!(err.exit, Exit::Unavailable);
    assert!(err.message.contains("certificate"), "{}", err.message);
    assert_eq!(server.connections().len(), 1);
    assert!(server.connections()[0].auth.is_empty());
}

#[tokio::test]
async fn dead_letter_is_mbox_and_intact() {
    let server = FakeM365::start(submit_server().rule(Rule::reply(
        Phase::Mail,
        "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
    )))
    .await;
    let env = setup(&server, Mode::Submit);
    let body = b"From: alerts@contoso.com\r\nSubject: x\r\n\r\nFrom the top\r\n>From quoted\r\n.\r\nend\r\n";
    let msg = prepared("alerts@contoso.com", &["ops@contoso.com"], body);
    for _ in 0..2 {
        let err = env.deliver(&msg).await.unwrap_err();
        assert!(
            err.message
                .contains(&format!("message saved to {}", env.dead.display()))
        );
    }
    let text = std::fs::read_to_string(&env.dead).unwrap();
    let msgs: Vec<&str> = text.split("\n\nFrom alerts@contoso.com ").collect();
    assert_eq!(msgs.len(), 2, "{text}");
    assert!(text.starts_with("From alerts@contoso.com "));
    // The first message, after its From_ line and the failure/envelope headers we add.
    let first = text.split_once('\n').unwrap().1;
    assert!(first.starts_with("X-M365send-Failure: "), "{first}");
    let first = &first[first.find("\nFrom: ").unwrap() + 1..];
    assert!(first.starts_with(
        "From: alerts@contoso.com\nSubject: x\n\n>From the top\n>>From quoted\n.\nend\n\nFrom alerts@contoso.com "
    ), "{first}");
    assert!(!text.contains('\r'));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env.dead).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "dead letter readable by others: {mode:o}");
    }
}

#[tokio::test]
async fn verbose_transcript_and_errors_have_no_secret() {
    let server = FakeM365::start(
        FakeConfig::submission()
            .user("app@contoso.com", "a-different-token")
            .rule(Rule::reply(
                Phase::Auth,
                "535 5.7.3 Authentication unsuccessful",
            )),
    )
    .await;
    let env = setup(&server, Mode::Submit);
    let (sink, buf) = Sink::memory();
    let opts = Options {
        verbose: 1,
        stderr: Some(sink),
    };
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = deliver(&env.config, &env.profile, &msg, &env.endpoint, &opts)
        .await
        .unwrap_err();
    let t = buf.contents();
    assert!(t.contains("C: AUTH XOAUTH2 <redacted>"), "{t}");
    assert!(
        t.contains("S: 535 5.7.3 Authentication unsuccessful"),
        "{t}"
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!(
        "user=app@contoso.com\x01auth=Bearer {TOKEN}\x01\x01"
    ));
    for s in [TOKEN, b64.as_str()] {
        assert!(!t.contains(s), "{t}");
        assert!(!err.message.contains(s));
    }
    assert!(err.message.contains("535 5.7.3"));
}

#[tokio::test]
async fn basic_auth_password_login_works_and_is_not_logged() {
    let password = "correct horse battery staple";
    let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", password)).await;
    let mut env = setup(&server, Mode::Submit);
    env.profile.auth.method = AuthMethod::Password;
    env.profile.auth.password = SecretSource {
        value: Some(Secret::new(password)),
        ..SecretSource::default()
    };
    env.endpoint.auth = AuthKind::Password;
    let (sink, buf) = Sink::memory();
    let opts = Options {
        verbose: 2,
        stderr: Some(sink),
    };
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    deliver(&env.config, &env.profile, &msg, &env.endpoint, &opts)
        .await
        .unwrap();
    let t = buf.contents();
    assert!(!t.contains(password), "{t}");
    assert!(t.contains("C: AUTH LOGIN\n"), "{t}");
    assert_eq!(t.matches("C: <redacted>").count(), 2, "{t}");
    // 127.0.0.1 is not a Microsoft host: no basic-auth warning here (see unit test).
    assert!(!t.contains("December 2026"));
}

/// The temporary rows of BRIEF.md's table: retried, then exit 75 with the reply quoted.
#[tokio::test]
async fn transient_rows_are_retried_then_75() {
    let cases: &[(Phase, &str)] = &[
        (
            Phase::Mail,
            "451 4.7.500 Access denied, please try again later",
        ),
        (
            Phase::Greeting,
            "421 4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2.",
        ),
        (
            Phase::Auth,
            "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
        ),
        (
            Phase::Mail,
            "451 4.4.62 Mail sent to the wrong Office 365 region",
        ),
        (Phase::Rcpt, "452 4.5.3 Too many recipients"),
    ];
    for (phase, reply) in cases {
        let server = FakeM365::start(submit_server().rule(Rule::reply(*phase, reply))).await;
        let mut env = setup(&server, Mode::Submit);
        env.profile.retry.attempts = Some(2);
        let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
        let out = attempt(
            &env.config,
            &env.profile,
            &msg,
            &env.endpoint,
            &Options::default(),
        )
        .await;
        assert!(out.is_transient(), "{reply}: {out:?}");
        assert_eq!(out.exit(), Exit::TempFail, "{reply}");
        assert_eq!(server.connections().len(), 2, "{reply}: retried once");
        assert_eq!(
            out.final_reply().map(|r| r.to_string()).as_deref(),
            Some(*reply),
            "the -bs server relays the real reply"
        );
        let first = out.report(&env.profile, &msg);
        assert!(
            first
                .lines()
                .next()
                .unwrap()
                .contains(&format!("({reply})")),
            "{first}"
        );
    }
}

#[tokio::test]
async fn message_larger_than_server_size_is_65_without_sending() {
    let mut cfg = submit_server();
    cfg.ehlo_after_tls = Some(vec![
        "SIZE 10".into(),
        "PIPELINING".into(),
        "AUTH LOGIN XOAUTH2".into(),
    ]);
    let server = FakeM365::start(cfg).await;
    let env = setup(&server, Mode::Submit);
    let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
    let err = env.deliver(&msg).await.unwrap_err();
    assert_eq!(err.exit, Exit::DataErr, "{}", err.message);
    assert!(err.message.contains("at most 10"), "{}", err.message);
    assert!(
        !server.connections()[0]
            .commands
            .iter()
            .any(|c| c.starts_with("MAIL"))
    );
    assert_eq!(server.connections().len(), 1);
}

#[tokio::test]
async fn endpoint_without_auth_needs_no_credentials() {
    // Direct send: the route says no AUTH, so a profile whose OAuth is not set up still sends.
    let server = FakeM365::start(FakeConfig::mx()).await;
    let mut env = setup(&server, Mode::Direct);
    env.profile.auth.method = AuthMethod::OAuth;
    env.profile.auth.token = SecretSource::default();
    let msg = prepared("alerts@contoso.com", &["ops@contoso.com"], MSG);
    env.deliver(&msg).await.unwrap();
    assert!(server.connections()[0].auth.is_empty());
}

/// A server whose replies are positive but of the wrong kind (a greeting of 250, an AUTH
/// "success" of 250 instead of 235) did not take the message: the exit code must say so
/// (it was 0, so cron saw success while the message went to the dead letter).
#[tokio::test]
async fn positive_reply_of_the_wrong_kind_is_never_exit_0() {
    for (phase, reply) in [
        (Phase::Greeting, "250 hello there"),
        (Phase::Auth, "250 2.7.0 fine I guess"),
    ] {
        let server = FakeM365::start(submit_server().rule(Rule::reply(phase, reply))).await;
        let mut env = setup(&server, Mode::Submit);
        env.profile.retry.attempts = Some(1);
        let msg = prepared("app@contoso.com", &["ops@contoso.com"], MSG);
        let err = env.deliver(&msg).await.unwrap_err();
        assert_eq!(err.exit, Exit::TempFail, "{}", err.message);
        let first = err.message.lines().next().unwrap();
        assert!(
            first.contains(&format!("unexpected reply \"{reply}\"")),
            "{first}"
        );
        assert!(!err.message.contains("\ndelivered"), "{}", err.message);
        assert!(env.dead.exists());
        assert!(server.accepted().is_empty());
    }
}

// ---- many recipients: batches (issue 9, part 1) ------------------------------------------------

/// 5000 recipients against `server`: every one delivered exactly once, exit 0. Returns the
/// transactions the server accepted (their recipient counts) and the connections used.
async fn many_recipients(server: &FakeM365, max_recipients: Option<usize>) -> (Vec<usize>, usize) {
    let mut env = setup(server, Mode::Relay);
    env.profile.max_recipients = max_recipients;
    let rcpts: Vec<String> = (0..5000).map(|i| format!("user{i}@contoso.com")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = prepared("alerts@contoso.com", &refs, MSG);
    let out = env.attempt(&msg).await;
    assert!(out.is_success(), "{:?}", out.problem);
    assert_eq!(out.exit(), Exit::Ok);
    assert_eq!(out.delivered.len(), 5000);
    let accepted = server.accepted();
    let mut got: Vec<&String> = accepted.iter().flat_map(|m| &m.recipients).collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 5000, "every recipient once");
    assert_eq!(
        accepted.iter().map(|m| m.recipients.len()).sum::<usize>(),
        5000,
        "no recipient twice"
    );
    assert!(accepted.iter().all(|m| m.data == MSG));
    (
        accepted.iter().map(|m| m.recipients.len()).collect(),
        server.connections().len(),
    )
}

#[tokio::test]
async fn five_thousand_recipients_against_a_1000_limit_with_an_error_cutoff() {
    // Postfix: 1000 per transaction, 452 4.5.3 after that, 421 after 20 errors.
    let server = FakeM365::start(FakeConfig::mx().max_recipients(1000).error_limit(20)).await;
    let (txns, conns) = many_recipients(&server, None).await;
    assert_eq!(txns, [1000; 5], "the default for other servers is 1000");
    assert_eq!(conns, 1);

    // No limit of our own: the first transaction teaches it (1000 before the 452s and the
    // 421), and the next connection sends 5 transactions of 1000 — never the same
    // transaction again.
    let server = FakeM365::start(FakeConfig::mx().max_recipients(1000).error_limit(20)).await;
    let (txns, conns) = many_recipients(&server, Some(0)).await;
    assert_eq!(txns, [1000; 5]);
    assert_eq!(conns, 2);
    let first = &server.connections()[0];
    assert_eq!(
        first
            .commands
            .iter()
            .filter(|c| c.starts_with("RCPT"))
            .count(),
        1021,
        "1000 accepted, 20 deferred, the 21st error closed the connection"
    );
}

#[tokio::test]
async fn five_thousand_recipients_against_a_500_limit() {
    // With an error cut-off: the first transaction of 1000 teaches 500, the next connection
    // sends 10 of 500.
    let server = FakeM365::start(FakeConfig::mx().max_recipients(500).error_limit(20)).await;
    let (txns, conns) = many_recipients(&server, None).await;
    assert_eq!(txns, [500; 10]);
    assert_eq!(conns, 2);

    // Exchange Online: 452 4.5.3 for every recipient over 500, no cut-off. The 500 accepted
    // get the message, the deferred go in further transactions of the same connection.
    let server = FakeM365::start(FakeConfig::mx().max_recipients(500)).await;
    let (txns, conns) = many_recipients(&server, Some(0)).await;
    assert_eq!(txns, [500; 10]);
    assert_eq!(conns, 1);
}

#[tokio::test]
async fn a_server_that_defers_every_recipient_is_a_temporary_failure() {
    // 452 4.5.3 for everyone, even alone: nothing to learn, no loop, exit 75.
    let server = FakeM365::start(FakeConfig::mx().max_recipients(0)).await;
    let mut env = setup(&server, Mode::Relay);
    env.profile.retry.attempts = Some(1);
    let msg = prepared(
        "alerts@contoso.com",
        &["a@contoso.com", "b@contoso.com"],
        MSG,
    );
    let out = env.attempt(&msg).await;
    assert_eq!(out.exit(), Exit::TempFail);
    assert_eq!(out.pending.len(), 2);
    assert_eq!(server.connections().len(), 1);
    let rcpts = server.connections()[0]
        .commands
        .iter()
        .filter(|c| c.starts_with("RCPT"))
        .count();
    assert_eq!(rcpts, 2, "one transaction, not repeated");
}
