//! What new users met (issue 9): the real binary, a configuration in a temporary directory,
//! the fake Microsoft 365 server and the stub DNS server on 127.0.0.1. Each test is a case a
//! user hit: split DNS, bounces through a mailbox, messages that said the wrong thing, the
//! null sender, large cron output, duplicate recipients.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/dns.rs"]
mod dns;
#[path = "support/fake_m365.rs"]
mod fake_m365;

use bin_env::{BinEnv, stderr, stdout};
use dns::{Answer, start_stub_dns};
use fake_m365::{FakeConfig, FakeM365, Phase, Rule};

/// An MX host whose name exists only at the configured DNS server (split DNS, no /etc/hosts
/// entry) is resolved there too, connected to by address, and checked by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_host_known_only_to_the_configured_dns_server_is_reached() {
    let server =
        FakeM365::start(FakeConfig::mx().cert_names(&["contoso-com.mail.protection.outlook.com"]))
            .await;
    let dns = start_stub_dns(vec![
        (
            "contoso.com",
            Answer::Mx(vec![(0, "contoso-com.mail.protection.outlook.com".into())]),
        ),
        (
            "contoso-com.mail.protection.outlook.com",
            Answer::Ip(vec!["127.0.0.1".parse().unwrap()]),
        ),
    ]);
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\n[profiles.p.endpoint]\n\
         dns_server = \"{dns}\"\nport = {}\n\n[profiles.p.tls]\nca_file = \"{}\"\n",
        server.port(),
        server.ca_file().display()
    ));
    let o = env
        .run(
            &["--dry-run", "ops@contoso.com"],
            b"Subject: split\n\nhello\n",
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "contoso-com.mail.protection.outlook.com:{}  (MX preference 0)  at 127.0.0.1",
            server.port()
        )),
        "{}",
        stdout(&o)
    );

    let o = env
        .run(&["-v", "ops@contoso.com"], b"Subject: split\n\nhello\n")
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "-- connected to contoso-com.mail.protection.outlook.com:{} (127.0.0.1:{})",
            server.port(),
            server.port()
        )),
        "the transcript names the MX host: {}",
        stderr(&o)
    );
    let got = server.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].recipients, vec!["ops@contoso.com".to_owned()]);
    // The certificate was checked against the MX name (the server's only name).
    assert!(server.connections()[0].tls_version.is_some());
}

/// A bounce through a mailbox login comes from the mailbox (Microsoft 365 refuses any other
/// sender, the null sender included, with 5.7.60) and reaches the sender with its RFC 3464
/// report intact; a bounce that fails is still never bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_through_a_mailbox_login_comes_from_the_mailbox_and_arrives() {
    let server = FakeM365::start(
        FakeConfig::submission()
            .user("app@contoso.com", "pw-7f3e")
            .send_as_only()
            .rule(
                Rule::reply(
                    Phase::Rcpt,
                    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                )
                .matching("nobody@fabrikam.com"),
            ),
    )
    .await;
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"submit\"\nmailbox = \"app@contoso.com\"\n\
         auth = {{ method = \"password\", password = {{ env = \"M365_TEST_PW\" }} }}\n{}",
        BinEnv::endpoint(server.port(), Some(server.ca_file()))
    ));
    let run = |args: &'static [&'static str], input: &'static [u8]| {
        let mut c = env.command(args);
        c.env("M365_TEST_PW", "pw-7f3e");
        env.run_with(c, input)
    };
    let o = run(
        &["-odq", "-f", "app@contoso.com", "nobody@fabrikam.com"],
        b"Subject: nightly report\n\nthe report\n",
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 bounced"), "{}", stderr(&o));

    let got = server.accepted();
    assert_eq!(got.len(), 1, "the bounce arrived: {:?}", server.messages());
    let bounce = &got[0];
    assert_eq!(bounce.sender, "app@contoso.com", "MAIL FROM is the mailbox");
    assert_eq!(bounce.recipients, vec!["app@contoso.com".to_owned()]);
    assert!(
        bounce.rcpt_params[0].contains("NOTIFY=NEVER"),
        "{:?}",
        bounce.rcpt_params
    );
    let text = String::from_utf8_lossy(&bounce.data);
    for needle in [
        "From: Mail Delivery System <app@contoso.com>\r\n",
        "To: <app@contoso.com>\r\n",
        "Auto-Submitted: auto-replied\r\n",
        "Content-Type: multipart/report; report-type=delivery-status;",
        "Content-Type: message/delivery-status\r\n",
        "Final-Recipient: rfc822; nobody@fabrikam.com\r\n",
        "Action: failed\r\n",
        "Status: 5.1.10\r\n",
        "Diagnostic-Code: smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound",
        "Content-Type: message/rfc822\r\n",
        "Subject: nightly report\r\n",
    ] {
        assert!(text.contains(needle), "bounce lacks {needle:?}:\n{text}");
    }
    assert_eq!(env.dead_letter(), "", "delivered, not dead-lettered");

    // The bounce itself refused: the dead letter, never a bounce of the bounce, although its
    // envelope sender is no longer empty.
    server.add_rule(
        Rule::reply(Phase::Rcpt, "550 5.1.10 RESOLVER.ADR.RecipientNotFound").matching("app@"),
    );
    let o = run(
        &["-odq", "-f", "app@contoso.com", "nobody@fabrikam.com"],
        b"Subject: second report\n\nthe report\n",
    )
    .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted().len(), 1, "nothing more delivered");
    let dead = env.dead_letter();
    assert!(dead.contains("a bounce cannot be bounced"), "{dead}");
    assert!(dead.contains("Subject: second report"), "{dead}");
    assert_eq!(env.queue_count().await, 0);
}

/// `m365send -t -i </dev/null` said "use -t" although -t was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_without_recipients_in_the_headers_says_so() {
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n{}",
        BinEnv::endpoint(9, None)
    ));
    for input in [&b""[..], b"Subject: no one\n\nbody\n"] {
        let o = env.run(&["-t", "-i"], input).await;
        assert_eq!(o.status.code(), Some(64), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains("-t takes them from the To, Cc and Bcc headers, and the message has no address in any of them"),
            "{err}"
        );
        assert!(!err.contains("use -t"), "{err}");
    }
    // The one with a body is kept, not lost.
    assert!(env.dead_letter().contains("Subject: no one"));
}

/// With queue = "never" a temporary refusal said "try again later (the queue does so)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_never_says_the_message_was_not_queued_and_where_it_is() {
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::Mail,
        "451 4.7.500 Access denied, please try again later",
    )))
    .await;
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nqueue = \"never\"\n{}",
        BinEnv::endpoint(server.port(), Some(server.ca_file()))
    ));
    let o = env
        .run(
            &["-f", "alerts@contoso.com", "ops@contoso.com"],
            b"Subject: not queued\n\nbody\n",
        )
        .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(!err.contains("the queue does so"), "{err}");
    assert!(err.contains("this message was not queued"), "{err}");
    assert!(
        err.contains(&format!(
            "not queued (profile \"p\" has queue = \"never\"); message saved to {}: send it again later",
            env.dead.display()
        )),
        "{err}"
    );
    assert!(env.dead_letter().contains("Subject: not queued"));
    assert_eq!(env.queue_count().await, 0);
}

/// `-f '<>'` reached the server and was explained as a connector problem: now decided per
/// mode before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_null_sender_is_decided_before_connecting() {
    // A mailbox login: refused with the reason, nothing sent, the message kept.
    let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", "pw")).await;
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"submit\"\nmailbox = \"app@contoso.com\"\n\
         auth = {{ method = \"password\", password = {{ env = \"M365_TEST_PW\" }} }}\n{}",
        BinEnv::endpoint(server.port(), Some(server.ca_file()))
    ));
    for f in ["<>", ""] {
        let mut c = env.command(&["-f", f, "ops@contoso.com"]);
        c.env("M365_TEST_PW", "pw");
        let o = env.run_with(c, b"Subject: null\n\nbody\n").await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(64), "{err}");
        assert!(
            err.contains("null sender") && err.contains("5.7.60"),
            "{err}"
        );
        assert!(err.contains("app@contoso.com"), "{err}");
        assert!(!err.contains("connector"), "{err}");
    }
    assert!(
        server.connections().is_empty(),
        "nothing reached the server"
    );
    assert_eq!(env.dead_letter().matches("Subject: null").count(), 2);

    // Relay: the profile's sender stands in for it.
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    let endpoint = BinEnv::endpoint(server.port(), Some(server.ca_file()));
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n{endpoint}"
    ));
    let o = env
        .run(&["-f", "<>", "ops@contoso.com"], b"Subject: null\n\nbody\n")
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted()[0].sender, "alerts@contoso.com");
    // Relay without a sender: refused before connecting, saying what to set.
    env.write_profile(&format!("mode = \"relay\"\n{endpoint}"));
    let o = env
        .run(&["-f", "<>", "ops@contoso.com"], b"Subject: null\n\nbody\n")
        .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("Set `sender` in profile \"p\""), "{err}");
    assert_eq!(
        server.connections().len(),
        1,
        "only the first message connected"
    );
}

/// A message over max_size said "more than <bytes read>" and was lost: now the limit and
/// the size are named, and the whole message (cron's output) is in the dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_max_size_names_the_limit_and_is_kept_whole() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\nmax_size = 10000\n{}",
        BinEnv::endpoint(server.port(), Some(server.ca_file()))
    ));
    let mut input = b"Subject: Cron <root@web1> backup\n\n".to_vec();
    for i in 0..50_000 {
        input.extend_from_slice(format!("file {i} copied\n").as_bytes());
    }
    let o = env.run(&["-i", "root@contoso.com"], &input).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(65), "{err}");
    let size = input.len() + input.iter().filter(|b| **b == b'\n').count();
    assert!(
        err.contains(&format!(
            "message too large: it is {size} bytes, and the limit is 10000 bytes (`max_size` of profile \"p\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("saved to {}", env.dead.display())),
        "{err}"
    );
    let dead = env.dead_letter();
    assert!(dead.contains("Subject: Cron <root@web1> backup"), "kept");
    assert!(dead.contains("file 0 copied\nfile 1 copied\n"));
    assert!(dead.contains("file 49999 copied\n"), "kept whole");
    assert!(server.connections().is_empty(), "nothing sent");
}

/// Recipients that differ only in the case of the local part are one mailbox to Microsoft
/// 365 (Exchange compares addresses without case): the envelope has one of them. The fake
/// server stands for the tenant's MX endpoint by its Microsoft name (stub DNS); given as a
/// plain host it is "another server", where local parts stay case-sensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_differing_in_case_are_sent_once_to_microsoft_365() {
    const MX: &str = "contoso-com.mail.protection.outlook.com";
    let server = FakeM365::start(FakeConfig::mx().cert_names(&[MX, "127.0.0.1"])).await;
    let dns = start_stub_dns(vec![
        ("contoso.com", Answer::Mx(vec![(0, MX.into())])),
        (MX, Answer::Ip(vec!["127.0.0.1".parse().unwrap()])),
    ]);
    let env = BinEnv::new();
    let tls = format!(
        "\n[profiles.p.tls]\nca_file = \"{}\"\n",
        server.ca_file().display()
    );
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\n[profiles.p.endpoint]\n\
         dns_server = \"{dns}\"\nport = {}\n{tls}",
        server.port()
    ));
    let msg = b"Subject: twice?\nTo: Bob@contoso.com, bob@contoso.com\nCc: BOB@CONTOSO.COM\n\nhi\n";
    let o = env.run(&["-t", "-i"], msg).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted()[0].recipients, vec!["Bob@contoso.com"]);

    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\n[profiles.p.endpoint]\n\
         host = \"127.0.0.1\"\nport = {}\n{tls}",
        server.port()
    ));
    let o = env.run(&["-t", "-i"], msg).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        server.accepted()[1].recipients,
        vec!["Bob@contoso.com", "bob@contoso.com", "BOB@CONTOSO.COM"]
    );
}

/// A fresh install has a configuration without profiles (the package's is all comments):
/// `mailq` and `queue list` work and say the queue is empty; sending says no profile is
/// defined (78) and keeps the message in the dead letter.
#[tokio::test]
async fn a_configuration_without_profiles_lists_the_queue_and_refuses_to_send() {
    let env = BinEnv::new();
    std::fs::write(
        &env.config,
        format!(
            "# every line commented out, as installed\nspool_dir = \"{}\"\ndead_letter = \"{}\"\n",
            env.spool.display(),
            env.dead.display()
        ),
    )
    .unwrap();
    let o = env.run(&["queue", "list"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("empty"), "{}", stdout(&o));
    let o = env
        .run(&["-i", "root"], b"Subject: s\n\nfresh install\n")
        .await;
    assert_eq!(o.status.code(), Some(78), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no profile is defined; add a [profiles.NAME] table"),
        "{}",
        stderr(&o)
    );
    assert!(env.dead_letter().contains("fresh install"));
}

/// A relay host given by address whose port is closed: the error names the address once, not
/// "cannot connect to 127.0.0.1:P: 127.0.0.1:P: Connection refused" (each address is named
/// only when a host name resolved to several).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_names_the_address_once() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\nqueue = \"never\"\n{}",
        BinEnv::endpoint(port, None)
    ));
    let o = env.run(&["ops@contoso.com"], b"Subject: x\n\nbody\n").await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    let first = err.lines().next().unwrap();
    assert_eq!(
        first.matches(&format!("127.0.0.1:{port}")).count(),
        1,
        "{err}"
    );
    assert!(first.contains("Connection refused"), "{err}");
    assert!(env.dead_letter().contains("body"), "{err}");
}
