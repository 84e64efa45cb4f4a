//! message::prepare: what is read, what is transmitted, and the policies in between.

use std::io::Write;

use m365send::address::LocalHost;
use m365send::cli::SendArgs;
use m365send::config::{Mode, Profile, RewriteFrom};
use m365send::exit::{Exit, Failure};
use m365send::message::{self, Prepared};
use mail_parser::{MessageParser, MimeHeaders};

fn profile() -> Profile {
    Profile {
        name: "cron".into(),
        sender: Some("alerts@contoso.com".into()),
        accepted_domains: vec!["contoso.com".into()],
        default_domain: Some("contoso.com".into()),
        ..Profile::default()
    }
}

fn host() -> LocalHost {
    LocalHost::named("srv1.localdomain")
}

fn prep(args: &SendArgs, p: &Profile, input: &[u8]) -> Result<Prepared, Failure> {
    message::prepare_on(args, p, &mut &input[..], &host())
}

fn rcpt(list: &[&str]) -> SendArgs {
    SendArgs {
        recipients: list.iter().map(|s| s.to_string()).collect(),
        ..SendArgs::default()
    }
}

fn bytes(p: &Prepared) -> Vec<u8> {
    std::fs::read(p.body.path()).unwrap()
}

fn text(p: &Prepared) -> String {
    String::from_utf8(bytes(p)).unwrap()
}

fn header<'a>(p: &'a Prepared, name: &str) -> Option<&'a str> {
    p.header_block.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn extracts_recipients_with_groups_folding_comments_and_encoded_words() {
    let msg = concat!(
        "From: app@contoso.com\n",
        "To: Undisclosed recipients:;\n",
        "Cc: \"Smith, J\" <j.smith@contoso.com> (boss),\n",
        " =?utf-8?q?M=C3=BCller?= <mueller@contoso.com>,\n",
        "\tTeam: \"odd local\"@contoso.com, ops@Contoso.COM;\n",
        "Bcc: secret@fabrikam.com,\n",
        "  also-secret@fabrikam.com\n",
        "Subject: hi\n",
        "\n",
        "body\n"
    )
    .as_bytes();
    let args = SendArgs {
        extract_recipients: true,
        recipients: vec!["ops@contoso.com".into()],
        ..SendArgs::default()
    };
    let p = prep(&args, &profile(), msg).unwrap();
    assert_eq!(
        p.envelope.recipients,
        vec![
            "ops@contoso.com",
            "j.smith@contoso.com",
            "mueller@contoso.com",
            "\"odd local\"@contoso.com",
            "secret@fabrikam.com",
            "also-secret@fabrikam.com",
        ]
    );
    let t = text(&p);
    // (Not `contains("bcc")`: the random Message-ID is hex and may hold "bcc".)
    assert!(
        !t.to_ascii_lowercase()
            .split("\r\n")
            .any(|l| l.starts_with("bcc:") || l.starts_with("resent-bcc:")),
        "{t}"
    );
    assert!(!t.contains("secret@fabrikam.com"), "{t}");
    assert!(!t.contains("also-secret"), "{t}");
    assert!(!p.header_block.contains("secret"));
    assert!(t.contains("Subject: hi\r\n"));
    assert!(t.ends_with("\r\n\r\nbody\r\n"), "{t:?}");
}

#[test]
fn without_t_headers_are_not_recipients() {
    let p = prep(
        &rcpt(&["a@contoso.com"]),
        &profile(),
        b"To: b@contoso.com\n\nx\n",
    )
    .unwrap();
    assert_eq!(p.envelope.recipients, vec!["a@contoso.com"]);
}

#[test]
fn lone_dot_ends_the_message_unless_i() {
    let msg = b"Subject: dots\n\nline 1\n.\nafter the dot\n";
    let p = prep(&rcpt(&["a@contoso.com"]), &profile(), msg).unwrap();
    let t = text(&p);
    assert!(t.ends_with("\r\n\r\nline 1\r\n"), "{t:?}");
    assert!(!t.contains("after the dot"));

    let args = SendArgs {
        ignore_dots: true,
        ..rcpt(&["a@contoso.com"])
    };
    let p = prep(&args, &profile(), msg).unwrap();
    assert!(text(&p).ends_with("line 1\r\n.\r\nafter the dot\r\n"));

    // A line starting with a dot is not the end.
    let p = prep(&rcpt(&["a@contoso.com"]), &profile(), b"\n.x\n..\n").unwrap();
    assert!(text(&p).ends_with("\r\n\r\n.x\r\n..\r\n"), "{:?}", text(&p));
}

#[test]
fn bare_lf_and_cr_become_crlf() {
    let msg = b"Subject: le\r\n\r\na\nb\rc\r\nd\r\r\n.\re";
    let args = SendArgs {
        ignore_dots: true,
        ..rcpt(&["a@contoso.com"])
    };
    let p = prep(&args, &profile(), msg).unwrap();
    let b = bytes(&p);
    let body = &b[b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, b"a\r\nb\r\nc\r\nd\r\n\r\n.\r\ne\r\n");
    // No bare CR or LF anywhere in the file.
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            assert_eq!(b[i - 1], b'\r');
        }
        if c == b'\r' {
            assert_eq!(b[i + 1], b'\n');
        }
    }
    // Without -i, "\r.\r" is a lone-dot line: the smuggling attempt ends the message.
    let p = prep(
        &rcpt(&["a@contoso.com"]),
        &profile(),
        b"\nok\r.\rMAIL FROM:<x>\n",
    )
    .unwrap();
    assert!(text(&p).ends_with("\r\n\r\nok\r\n"), "{:?}", text(&p));
}

#[test]
fn aliases_inline_catch_all_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aliases");
    std::fs::write(
        &file,
        "# system aliases\npostmaster: root\nroot: ops@contoso.com,\n   dba\nwww-data: web@contoso.com\n",
    )
    .unwrap();
    let mut p = profile();
    p.aliases_file = Some(file);
    p.aliases.insert("dba".into(), "db-team@contoso.com".into());
    p.aliases
        .insert("default".into(), "catchall@contoso.com".into());
    let args = rcpt(&[
        "postmaster",
        "root@srv1.localdomain",
        "nobody",
        "www-data@localhost",
        "someone@fabrikam.com",
    ]);
    let m = prep(&args, &p, b"\nhi\n").unwrap();
    assert_eq!(
        m.envelope.recipients,
        vec![
            "ops@contoso.com",
            "db-team@contoso.com",
            "catchall@contoso.com",
            "web@contoso.com",
            "someone@fabrikam.com",
        ]
    );
}

#[test]
fn alias_loop_is_a_clear_error() {
    let mut p = profile();
    p.aliases.insert("a".into(), "b".into());
    p.aliases.insert("b".into(), "c, a".into());
    let e = prep(&rcpt(&["a"]), &p, b"\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::Config);
    assert!(e.message.contains("alias loop"), "{}", e.message);
    assert!(e.message.contains("a → b → a"), "{}", e.message);
}

#[test]
fn default_domain_and_duplicates() {
    let m = prep(
        &rcpt(&[
            "bob",
            "bob@CONTOSO.COM",
            "Bob <bob@contoso.com>",
            "x@y.z, bob",
        ]),
        &profile(),
        b"\nhi\n",
    )
    .unwrap();
    assert_eq!(m.envelope.recipients, vec!["bob@contoso.com", "x@y.z"]);

    let mut p = profile();
    p.default_domain = None;
    let e = prep(&rcpt(&["bob"]), &p, b"\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::NoUser);
    assert!(e.message.contains("default_domain"));
}

/// Exchange compares addresses without case: to Microsoft 365 `Bob@` and `bob@` are one
/// recipient (the first spelling is kept). To another server, given by name, RFC 5321 keeps
/// local parts case-sensitive.
#[test]
fn duplicates_differing_in_local_part_case_are_one_for_microsoft_365() {
    let list = [
        "Bob@contoso.com",
        "bob@CONTOSO.com",
        "Ops <BOB@contoso.com>",
        "x@y.z",
    ];
    let recipients =
        |args: &SendArgs, p: &Profile| prep(args, p, b"\nhi\n").unwrap().envelope.recipients;
    let once = vec!["Bob@contoso.com", "x@y.z"];
    assert_eq!(recipients(&rcpt(&list), &profile()), once);
    let mut p = profile();
    p.mode = Mode::Relay;
    p.endpoint.mx_host = Some("contoso-com.mail.protection.outlook.com".into());
    assert_eq!(recipients(&rcpt(&list), &p), once);

    // Another server: by --server, endpoint.host or endpoint.mx_host.
    let all = vec![
        "Bob@contoso.com",
        "bob@CONTOSO.com",
        "BOB@contoso.com",
        "x@y.z",
    ];
    let args = SendArgs {
        server: Some("127.0.0.1:2525".into()),
        ..rcpt(&list)
    };
    assert_eq!(recipients(&args, &profile()), all);
    let mut p = profile();
    p.endpoint.host = Some("mail.example.org".into());
    assert_eq!(recipients(&rcpt(&list), &p), all);
    p.mode = Mode::Relay;
    p.endpoint.host = None;
    p.endpoint.mx_host = Some("10.0.0.25".into());
    assert_eq!(recipients(&rcpt(&list), &p), all);
}

#[test]
fn no_recipients_is_usage() {
    let e = prep(&rcpt(&[]), &profile(), b"Subject: x\n\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::Usage);
    let args = SendArgs {
        extract_recipients: true,
        ..SendArgs::default()
    };
    let e = prep(&args, &profile(), b"To: Undisclosed recipients:;\n\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::Usage);
}

#[test]
fn from_policy_when_local_keeps_display_name() {
    let msg = b"From: \"Cron Daemon\" <root@srv1.localdomain>\nSubject: cron\n\nout\n";
    let args = SendArgs {
        envelope_from: Some("root".into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &profile(), msg).unwrap();
    assert_eq!(m.envelope.sender, "alerts@contoso.com");
    assert_eq!(header(&m, "From"), Some("Cron Daemon <alerts@contoso.com>"));
    // An accepted-domain From is left alone under when-local.
    let msg2 = b"From: Jane <jane@contoso.com>\n\nout\n";
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), msg2).unwrap();
    assert_eq!(header(&m, "From"), Some("Jane <jane@contoso.com>"));
    // ...and a From outside the accepted domains is rewritten.
    let m = prep(
        &rcpt(&["ops@contoso.com"]),
        &profile(),
        b"From: Bot <bot@gmail.com>\n\nx\n",
    )
    .unwrap();
    assert_eq!(header(&m, "From"), Some("Bot <alerts@contoso.com>"));
}

#[test]
fn from_policy_always_and_never() {
    let msg2 = b"From: Jane <jane@contoso.com>\n\nout\n";
    let mut p = profile();
    p.rewrite_from = RewriteFrom::Always;
    let m = prep(&rcpt(&["ops@contoso.com"]), &p, msg2).unwrap();
    assert_eq!(header(&m, "From"), Some("Jane <alerts@contoso.com>"));

    p.rewrite_from = RewriteFrom::Never;
    let msg = b"From: \"Cron Daemon\" <root@srv1.localdomain>\n\nout\n";
    let args = SendArgs {
        envelope_from: Some("root@srv1.localdomain".into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &p, msg).unwrap();
    assert_eq!(
        header(&m, "From"),
        Some("\"Cron Daemon\" <root@srv1.localdomain>")
    );
    assert_eq!(m.envelope.sender, "root@srv1.localdomain");
}

#[test]
fn from_added_with_full_name_date_and_message_id() {
    let args = SendArgs {
        full_name: Some("Cron Daemon".into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &profile(), b"Subject: x\n\nout\n").unwrap();
    assert_eq!(header(&m, "From"), Some("Cron Daemon <alerts@contoso.com>"));
    assert!(header(&m, "Date").is_some());
    let id = header(&m, "Message-ID").unwrap();
    assert!(id.starts_with('<') && id.ends_with("@contoso.com>"), "{id}");
    assert!(!id.contains("srv1"));
    // Existing ones are kept.
    let m = prep(
        &rcpt(&["ops@contoso.com"]),
        &profile(),
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <keep@x>\n\nout\n",
    )
    .unwrap();
    assert_eq!(header(&m, "Message-ID"), Some("<keep@x>"));
    assert_eq!(header(&m, "Date"), Some("Mon, 1 Jan 2024 00:00:00 +0000"));
}

#[test]
fn sender_falls_back_to_mailbox_then_fails() {
    let mut p = profile();
    p.sender = None;
    p.mailbox = Some("app@contoso.com".into());
    let m = prep(&rcpt(&["ops@contoso.com"]), &p, b"\nhi\n").unwrap();
    assert_eq!(m.envelope.sender, "app@contoso.com");
    p.mailbox = None;
    p.default_domain = None;
    let e = prep(&rcpt(&["ops@contoso.com"]), &p, b"\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::Config);
    assert!(e.message.contains("sender"), "{}", e.message);
}

#[test]
fn dsn_is_carried() {
    let args = SendArgs {
        envelope_from: Some("alerts@contoso.com".into()),
        dsn: m365send::message::Dsn {
            notify: Some("FAILURE".into()),
            ..Default::default()
        },
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &profile(), b"\nhi\n").unwrap();
    assert_eq!(m.envelope.sender, "alerts@contoso.com");
    assert_eq!(m.envelope.dsn.notify.as_deref(), Some("FAILURE"));
}

/// `-f '<>'` or an empty -f: refused for a mailbox login (Microsoft 365 answers 5.7.60),
/// replaced by the profile's sender for relay and direct send (attributed by the sender's
/// domain), refused there without one: decided before connecting, saying why.
#[test]
fn null_sender_is_refused_for_a_mailbox_login_and_replaced_for_relay() {
    for given in ["<>", "", " <> "] {
        let args = SendArgs {
            envelope_from: Some(given.into()),
            ..rcpt(&["ops@contoso.com"])
        };
        for mode in [Mode::Submit, Mode::Hve, Mode::Acs] {
            let mut p = profile();
            p.mode = mode;
            p.mailbox = Some("app@contoso.com".into());
            let e = prep(&args, &p, b"\nhi\n").unwrap_err();
            assert_eq!(e.exit, Exit::Usage, "{mode:?} {given:?}");
            assert!(e.message.contains("null sender"), "{}", e.message);
            assert!(e.message.contains("app@contoso.com"), "{}", e.message);
            assert!(e.message.contains("5.7.60"), "{}", e.message);
            assert!(e.message.contains("before connecting"), "{}", e.message);
        }
        for mode in [Mode::Relay, Mode::Direct] {
            let mut p = profile();
            p.mode = mode;
            let m = prep(&args, &p, b"\nhi\n").unwrap();
            assert_eq!(
                m.envelope.sender, "alerts@contoso.com",
                "{mode:?} {given:?}"
            );
            p.sender = None;
            p.mailbox = Some("app@contoso.com".into());
            let e = prep(&args, &p, b"\nhi\n").unwrap_err();
            assert_eq!(e.exit, Exit::Config, "{mode:?} {given:?}");
            assert!(e.message.contains("Set `sender`"), "{}", e.message);
            assert!(e.message.contains("5.7.64"), "{}", e.message);
        }
    }
}

/// -t with a message that has no To/Cc/Bcc says so, not "use -t".
#[test]
fn t_without_to_cc_bcc_says_the_headers_have_none() {
    let args = SendArgs {
        extract_recipients: true,
        ..SendArgs::default()
    };
    for input in [
        &b""[..],
        b"Subject: x\n\nbody\n",
        b"To: undisclosed-recipients:;\n\nx\n",
    ] {
        let e = prep(&args, &profile(), input).unwrap_err();
        assert_eq!(e.exit, Exit::Usage);
        assert!(
            e.message
                .contains("-t takes them from the To, Cc and Bcc headers")
                && e.message.contains("no address in any of them"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("use -t"), "{}", e.message);
    }
    let e = prep(&SendArgs::default(), &profile(), b"\nx\n").unwrap_err();
    assert!(e.message.contains("use -t"), "{}", e.message);
}

#[test]
fn header_injection_is_refused() {
    for h in [
        "X-Test: a\r\nBcc: evil@x.y",
        "X-Test: a\nB: c",
        "X-Test: a\rB: c",
    ] {
        let args = SendArgs {
            headers: vec![h.into()],
            ..rcpt(&["ops@contoso.com"])
        };
        let e = prep(&args, &profile(), b"\nhi\n").unwrap_err();
        assert_eq!(e.exit, Exit::DataErr, "{h:?}");
    }
    let args = SendArgs {
        subject: Some("hello\r\nBcc: evil@x.y".into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let e = prep(&args, &profile(), b"hi\n").unwrap_err();
    assert_eq!(e.exit, Exit::DataErr);
    // A good --header is added (or replaces one of the same name).
    let args = SendArgs {
        headers: vec!["X-Job: backup".into(), "Subject: new".into()],
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &profile(), b"Subject: old\n\nhi\n").unwrap();
    assert_eq!(header(&m, "X-Job"), Some("backup"));
    assert_eq!(header(&m, "Subject"), Some("new"));
    assert!(!m.header_block.contains("old"));
}

#[test]
fn long_line_round_trips_through_quoted_printable() {
    let long: String = (0..3000)
        .map(|i| (b"abc=xyz \t\xc3\xa9"[i % 11] as char).to_string())
        .collect::<String>();
    let mut line = "x".repeat(1500);
    line.push_str("é= tail ");
    let input = format!(
        "Subject: cron\n\nshort\n{line}\n{}\nlast \n",
        "y".repeat(2000)
    );
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), input.as_bytes()).unwrap();
    let raw = bytes(&m);
    for l in raw.split(|b| *b == b'\n') {
        assert!(l.len() <= 78, "line of {} octets", l.len());
    }
    assert!(!m.eight_bit);
    assert_eq!(
        header(&m, "Content-Transfer-Encoding"),
        Some("quoted-printable")
    );
    assert!(header(&m, "Content-Type").unwrap().contains("text/plain"));
    let parsed = MessageParser::default().parse(&raw).unwrap();
    let body = parsed.body_text(0).unwrap();
    assert_eq!(
        body,
        format!("short\r\n{line}\r\n{}\r\nlast \r\n", "y".repeat(2000))
    );
    let _ = long;
}

#[test]
fn multipart_with_long_lines_is_left_alone() {
    let line = "z".repeat(1200);
    let input = format!(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\n{line}\n--b--\n"
    );
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), input.as_bytes()).unwrap();
    assert!(header(&m, "Content-Transfer-Encoding").is_none());
    assert!(text(&m).contains(&line));
}

#[test]
fn eight_bit_and_smtputf8_flags() {
    let m = prep(
        &rcpt(&["ops@contoso.com"]),
        &profile(),
        "\nüber\n".as_bytes(),
    )
    .unwrap();
    assert!(m.eight_bit);
    assert!(!m.smtputf8);
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), b"\nplain\n").unwrap();
    assert!(!m.eight_bit);
    let m = prep(&rcpt(&["jürgen@contoso.com"]), &profile(), b"\nplain\n").unwrap();
    assert!(m.smtputf8);
    // Any bytes are accepted, not only UTF-8.
    let m = prep(
        &rcpt(&["ops@contoso.com"]),
        &profile(),
        b"\n\xff\xfe latin1 \xe9\n",
    )
    .unwrap();
    assert!(m.eight_bit);
    assert!(bytes(&m).ends_with(b"\xff\xfe latin1 \xe9\r\n"));
}

#[test]
fn size_limit_names_size_and_limit() {
    let mut p = profile();
    p.max_size = Some(1000);
    let body = "a".repeat(2000);
    let e = prep(&rcpt(&["ops@contoso.com"]), &p, body.as_bytes()).unwrap_err();
    assert_eq!(e.exit, Exit::DataErr);
    assert!(e.message.contains("1000"), "{}", e.message);
    let e = prep(
        &rcpt(&["ops@contoso.com"]),
        &p,
        format!("\n{}\n", "a\n".repeat(600)).as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.exit, Exit::DataErr);
    p.max_size = Some(100_000);
    let m = prep(&rcpt(&["ops@contoso.com"]), &p, b"\nsmall\n").unwrap();
    assert_eq!(m.size, bytes(&m).len() as u64);
}

/// Over `max_size`: the refusal gives the limit and the message's size (not "more than
/// <bytes read so far>"), and prepare hands back the whole message, read to its end, for the
/// dead letter.
#[test]
fn a_message_over_the_limit_is_read_whole_for_the_dead_letter() {
    let mut p = profile();
    p.max_size = Some(1000);
    let mut input = b"Subject: cron output\n\n".to_vec();
    for i in 0..20_000 {
        writeln!(input, "line {i} of the job's output").unwrap();
    }
    let refused =
        message::prepare_keeping(&rcpt(&["ops@contoso.com"]), &p, &mut &input[..]).unwrap_err();
    let f = &refused.failure;
    assert_eq!(f.exit, Exit::DataErr);
    let copy = std::fs::read(refused.input.as_ref().expect("the message is kept").path()).unwrap();
    let expected_size = input.len() + input.iter().filter(|b| **b == b'\n').count(); // CRLF
    assert_eq!(copy.len(), expected_size);
    assert!(copy.ends_with(b"line 19999 of the job's output\r\n"));
    assert!(
        f.message.contains(&format!(
            "it is {expected_size} bytes, and the limit is 1000 bytes (`max_size` of profile \"cron\""
        )),
        "{}",
        f.message
    );
    assert!(!f.message.contains("more than"), "{}", f.message);
}

#[test]
fn huge_header_block_is_refused() {
    let mut input = Vec::new();
    for i in 0..40_000 {
        writeln!(input, "X-H{i}: {}", "v".repeat(30)).unwrap();
    }
    let e = prep(&rcpt(&["ops@contoso.com"]), &profile(), &input).unwrap_err();
    assert_eq!(e.exit, Exit::DataErr);
}

#[test]
fn large_message_streams() {
    // 8 MB with no line breaks at all, then more lines: goes through the fixed buffers.
    let mut input = b"Subject: big\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'q', 8 * 1024 * 1024));
    input.extend_from_slice(b"\nend\n");
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), &input).unwrap();
    assert!(m.size > 8 * 1024 * 1024);
    assert_eq!(
        header(&m, "Content-Transfer-Encoding"),
        Some("quoted-printable")
    );
}

#[test]
fn composed_message_with_two_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("report.csv");
    let b = dir.path().join("image.png");
    let csv = b"id,name\n1,caf\xc3\xa9\n".to_vec();
    let png: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    std::fs::write(&a, &csv).unwrap();
    std::fs::write(&b, &png).unwrap();
    let args = SendArgs {
        to: vec!["ops@contoso.com".into(), "root".into()],
        bcc: vec!["hidden@fabrikam.com".into()],
        subject: Some("Backup — done".into()),
        body: Some("see attached\n".into()),
        attach: vec![a, b],
        headers: vec!["X-Job: backup".into()],
        full_name: Some("Backup Job".into()),
        ..SendArgs::default()
    };
    let m = prep(&args, &profile(), b"").unwrap();
    assert_eq!(
        m.envelope.recipients,
        vec!["ops@contoso.com", "root@contoso.com", "hidden@fabrikam.com"]
    );
    assert_eq!(m.envelope.sender, "alerts@contoso.com");
    let raw = bytes(&m);
    let s = String::from_utf8_lossy(&raw);
    assert!(!s.contains("hidden@fabrikam.com"));
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some("Backup — done"));
    assert_eq!(parsed.attachment_count(), 2);
    let att: Vec<_> = parsed.attachments().collect();
    assert_eq!(att[0].attachment_name(), Some("report.csv"));
    assert_eq!(att[0].contents(), csv.as_slice());
    assert_eq!(att[1].attachment_name(), Some("image.png"));
    assert_eq!(att[1].contents(), png.as_slice());
    assert!(
        att[1]
            .content_type()
            .is_some_and(|c| c.ctype() == "image" && c.subtype() == Some("png"))
    );
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), "see attached");
    assert_eq!(
        header(&m, "From"),
        Some("\"Backup Job\" <alerts@contoso.com>")
    );
    assert_eq!(header(&m, "X-Job"), Some("backup"));
    assert!(header(&m, "Message-ID").unwrap().ends_with("@contoso.com>"));
}

#[test]
fn composed_body_from_stdin() {
    let args = SendArgs {
        to: vec!["ops@contoso.com".into()],
        subject: Some("report".into()),
        ..SendArgs::default()
    };
    let m = prep(&args, &profile(), b"line one\n.\nline three\n").unwrap();
    let raw = bytes(&m);
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        parsed
            .body_text(0)
            .unwrap()
            .replace("\r\n", "\n")
            .trim_end(),
        "line one\n.\nline three"
    );
}

/// Produces `n` bytes of message without holding them in memory.
struct Generated {
    left: u64,
    header_sent: bool,
}

impl std::io::Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.header_sent {
            self.header_sent = true;
            let h = b"Subject: big\n\n";
            buf[..h.len()].copy_from_slice(h);
            return Ok(h.len());
        }
        let n = (buf.len() as u64).min(self.left) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = if i % 100 == 99 { b'\n' } else { b'm' };
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Run alone: `cargo test --release --test message -- --ignored hundred_mb`.
#[test]
#[ignore]
fn hundred_mb_in_bounded_memory() {
    let before = peak_rss_kib();
    let mut p = profile();
    p.max_size = Some(200 * 1024 * 1024);
    let mut input = Generated {
        left: 100 * 1024 * 1024,
        header_sent: false,
    };
    let m = message::prepare_on(&rcpt(&["ops@contoso.com"]), &p, &mut input, &host()).unwrap();
    let after = peak_rss_kib();
    assert!(m.size > 100 * 1024 * 1024);
    eprintln!("peak RSS before {before} KiB, after {after} KiB");
    assert!(after - before < 8 * 1024, "grew by {} KiB", after - before);
}

#[test]
fn long_latin1_line_is_not_labelled_utf8() {
    let mut input = b"Subject: x\n\n".to_vec();
    input.extend(std::iter::repeat_n(0xe9u8, 1200));
    input.push(b'\n');
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), &input).unwrap();
    assert_eq!(
        header(&m, "Content-Type"),
        Some("text/plain; charset=unknown-8bit")
    );
    // Bytes split across buffers are still recognised as UTF-8.
    let mut input = b"Subject: x\n\n".to_vec();
    for _ in 0..40_000 {
        input.extend_from_slice("é€".as_bytes());
    }
    input.push(b'\n');
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), &input).unwrap();
    assert_eq!(
        header(&m, "Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    let raw = bytes(&m);
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), "é€".repeat(40_000));
}

/// cronie (`sendmail -FCronDaemon -i -odi -oem -oi -t -f root`) writes `To: root`, and
/// local programs write `From: www-data`: a bare local name is an address, not a display name.
#[test]
fn t_takes_bare_local_names_from_to_and_rewrites_a_bare_from() {
    let msg = b"From: root\nTo: root\nCc: backup, Team: www-data;\nSubject: Cron <root@srv1> true\n\nout\n";
    let mut p = profile();
    p.aliases.insert("root".into(), "ops@contoso.com".into());
    let args = SendArgs {
        extract_recipients: true,
        envelope_from: Some("root".into()),
        full_name: Some("CronDaemon".into()),
        ..SendArgs::default()
    };
    let m = prep(&args, &p, msg).unwrap();
    assert_eq!(
        m.envelope.recipients,
        vec![
            "ops@contoso.com",
            "backup@contoso.com",
            "www-data@contoso.com"
        ]
    );
    assert_eq!(m.envelope.sender, "alerts@contoso.com");
    assert_eq!(header(&m, "From"), Some("CronDaemon <alerts@contoso.com>"));
    // The header's bare names are qualified too (as Postfix does), so the message is valid.
    assert_eq!(header(&m, "To"), Some("root@contoso.com"));
    assert_eq!(
        header(&m, "Cc"),
        Some("backup@contoso.com, www-data@contoso.com")
    );
    // A field with only full addresses is left exactly as written.
    let m2 = prep(
        &args,
        &p,
        b"To: \"Ops\" <ops@contoso.com> (the team)\n\nout\n",
    )
    .unwrap();
    assert_eq!(
        header(&m2, "To"),
        Some("\"Ops\" <ops@contoso.com> (the team)")
    );
    // A display name alone is still not a recipient.
    let e = prep(&args, &p, b"To: Root User\n\nout\n").unwrap_err();
    assert_eq!(e.exit, Exit::Usage);
}

/// Debian's /etc/aliases often says `root: admin@..., \root` (keep a local copy): the
/// backslash stops aliasing; it must not make the whole message fail.
#[test]
fn system_aliases_file_with_backslash_entries() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("aliases");
    std::fs::write(
        &file,
        "postmaster: root\nroot: admin@contoso.com, \\root\ndecode: \"|/usr/bin/uudecode\"\n",
    )
    .unwrap();
    let mut p = profile();
    p.aliases_file = Some(file);
    let m = prep(&rcpt(&["postmaster"]), &p, b"\nhi\n").unwrap();
    assert_eq!(
        m.envelope.recipients,
        vec!["admin@contoso.com", "root@contoso.com"]
    );
    let e = prep(&rcpt(&["decode"]), &p, b"\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::Config);
    assert!(e.message.contains("not supported"), "{}", e.message);
}

/// `--header 'From: ...'` must not slip past `rewrite_from`: Microsoft 365 would refuse the
/// message (5.7.60) or it would go out from a domain the tenant does not own.
#[test]
fn header_option_from_goes_through_the_sender_policy() {
    for composed in [false, true] {
        let args = SendArgs {
            headers: vec!["From: Backup Job <backup@gmail.com>".into()],
            subject: composed.then(|| "s".to_owned()),
            body: composed.then(|| "b".to_owned()),
            ..rcpt(&["ops@contoso.com"])
        };
        let m = prep(&args, &profile(), b"From: root\n\nhi\n").unwrap();
        assert_eq!(
            header(&m, "From"),
            Some("Backup Job <alerts@contoso.com>"),
            "composed: {composed}"
        );
        assert_eq!(m.envelope.sender, "alerts@contoso.com");
        let id = header(&m, "Message-ID").unwrap();
        assert!(id.ends_with("@contoso.com>"), "{id}");
    }
}

/// A rewritten or created From with a non-ASCII display name stays 7-bit (RFC 2047), and reads
/// back as the same name.
#[test]
fn non_ascii_display_names_stay_encoded() {
    let msg = b"From: =?utf-8?q?J=C3=B6rg?= <jorg@gmail.com>\nSubject: x\n\nb\n";
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), msg).unwrap();
    assert!(m.header_block.is_ascii(), "{}", m.header_block);
    assert!(!m.eight_bit);
    let long = "Jörg Müller-Lüdenscheidt von und zu Großherzogtum Überlingen";
    let args = SendArgs {
        full_name: Some(long.into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let m2 = prep(&args, &profile(), b"Subject: x\n\nb\n").unwrap();
    assert!(m2.header_block.is_ascii(), "{}", m2.header_block);
    assert!(m2.header_block.lines().all(|l| l.len() <= 78));
    for (m, name) in [(&m, "Jörg"), (&m2, long)] {
        let raw = bytes(m);
        let parsed = MessageParser::default().parse(&raw).unwrap();
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some(name));
        assert_eq!(from.address(), Some("alerts@contoso.com"));
    }
}

/// `--from 'Backup <root>'`: the bare name is qualified, the display name kept.
#[test]
fn composed_from_with_a_display_name_and_a_local_name() {
    let mut p = profile();
    p.rewrite_from = RewriteFrom::Never;
    let args = SendArgs {
        from: Some("Backup <backup>".into()),
        subject: Some("s".into()),
        body: Some("b".into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &p, b"").unwrap();
    assert_eq!(header(&m, "From"), Some("Backup <backup@contoso.com>"));
    assert_eq!(m.envelope.sender, "backup@contoso.com");
}

/// `bob@localhost` or `root@srv1.localdomain` with no alias cannot be delivered by Microsoft
/// 365: with a default domain it is that domain's user, like a bare `bob`.
#[test]
fn local_host_recipients_without_alias_take_the_default_domain() {
    let m = prep(
        &rcpt(&["bob@localhost", "root@srv1.localdomain", "carol@SRV1"]),
        &profile(),
        b"\nhi\n",
    )
    .unwrap();
    assert_eq!(
        m.envelope.recipients,
        vec!["bob@contoso.com", "root@contoso.com", "carol@contoso.com"]
    );
    // Without a default domain they are left as they are.
    let mut p = profile();
    p.default_domain = None;
    let m = prep(&rcpt(&["bob@localhost"]), &p, b"\nhi\n").unwrap();
    assert_eq!(m.envelope.recipients, vec!["bob@localhost"]);
}

/// `m365send --subject x < latin1.txt`: the bytes arrive as they were and are not labelled
/// UTF-8 (which would make every reader show U+FFFD).
#[test]
fn composed_latin1_body_is_not_labelled_utf8() {
    let args = SendArgs {
        to: vec!["ops@contoso.com".into()],
        subject: Some("report".into()),
        ..SendArgs::default()
    };
    let m = prep(&args, &profile(), b"caf\xe9 ol\xe9\n").unwrap();
    let raw = bytes(&m);
    let parsed = MessageParser::default().parse(&raw).unwrap();
    let part = parsed.part(0).unwrap();
    let ct = part.content_type().unwrap();
    assert_eq!(ct.attribute("charset"), Some("unknown-8bit"));
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(b"caf\xe9 ol\xe9\n");
    assert!(
        String::from_utf8_lossy(&raw).contains(&b64),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

/// An address that would break out of `RCPT TO:<...>` / `MAIL FROM:<...>` (a space, a `>`)
/// or has no local part is refused before connecting, naming it.
#[test]
fn malformed_envelope_addresses_are_refused() {
    for bad in [
        "x@contoso.com> NOTIFY=SUCCESS",
        "@contoso.com",
        "a b@contoso.com",
    ] {
        let e = prep(&rcpt(&[bad]), &profile(), b"\nhi\n").unwrap_err();
        assert_eq!(e.exit, Exit::NoUser, "{bad}: {}", e.message);
        assert!(
            e.message.contains("refused before connecting"),
            "{}",
            e.message
        );
    }
    let mut p = profile();
    p.rewrite_from = RewriteFrom::Never;
    let args = SendArgs {
        envelope_from: Some("me@contoso.com> SMTPUTF8".into()),
        ..rcpt(&["ops@contoso.com"])
    };
    let e = prep(&args, &p, b"\nhi\n").unwrap_err();
    assert_eq!(e.exit, Exit::Usage, "{}", e.message);
    // Quoted local parts stay fine.
    let m = prep(&rcpt(&["\"odd local\"@contoso.com"]), &profile(), b"\nhi\n").unwrap();
    assert_eq!(m.envelope.recipients, vec!["\"odd local\"@contoso.com"]);
}

/// `--to 'Ops <backup>' --cc 'root, "Doe, Jane" <jane>'`: each address is qualified, the
/// display names kept; the header must stay a valid address list.
#[test]
fn composed_to_and_cc_qualify_each_address() {
    let args = SendArgs {
        to: vec!["Ops <backup>".into(), "x@fabrikam.com".into()],
        cc: vec!["root, \"Doe, Jane\" <jane>".into()],
        subject: Some("s".into()),
        body: Some("b".into()),
        ..SendArgs::default()
    };
    let m = prep(&args, &profile(), b"").unwrap();
    assert_eq!(
        header(&m, "To"),
        Some("Ops <backup@contoso.com>, x@fabrikam.com")
    );
    assert_eq!(
        header(&m, "Cc"),
        Some("root@contoso.com, \"Doe, Jane\" <jane@contoso.com>")
    );
    let raw = bytes(&m);
    let parsed = MessageParser::default().parse(&raw).unwrap();
    let to: Vec<_> = parsed
        .to()
        .unwrap()
        .iter()
        .map(|a| a.address().unwrap())
        .collect();
    assert_eq!(to, vec!["backup@contoso.com", "x@fabrikam.com"]);
}

/// `--header 'X-Job: sauvegarde échouée'`: the header stays 7-bit and decodes back.
#[test]
fn non_ascii_header_option_is_encoded() {
    let args = SendArgs {
        headers: vec!["X-Job: sauvegarde échouée".into()],
        ..rcpt(&["ops@contoso.com"])
    };
    let m = prep(&args, &profile(), b"Subject: x\n\nhi\n").unwrap();
    assert!(m.header_block.is_ascii(), "{}", m.header_block);
    assert!(!m.eight_bit);
    // Decoded as any unstructured field is.
    let v = header(&m, "X-Job").unwrap();
    let as_subject = format!("Subject: {v}\r\n\r\n");
    let parsed = MessageParser::default()
        .parse(as_subject.as_bytes())
        .unwrap();
    assert_eq!(parsed.subject(), Some("sauvegarde échouée"));
}

/// A Return-Path written by the caller (PHP applications do) is not transmitted.
#[test]
fn return_path_is_not_transmitted() {
    let m = prep(
        &rcpt(&["ops@contoso.com"]),
        &profile(),
        b"Return-Path: <bounce@gmail.com>\nSubject: x\n\nhi\n",
    )
    .unwrap();
    assert_eq!(header(&m, "Return-Path"), None);
    assert!(!text(&m).contains("bounce@gmail.com"));
}

/// `base64 -w0 file | sendmail root`: a first line of more than 1 MiB that is no header field
/// is body text (re-encoded, intact), not an oversized header block.
#[test]
fn huge_first_line_without_headers_is_the_body() {
    let line: String = (0..1_200_000)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    let input = format!("{line}\n");
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), input.as_bytes()).unwrap();
    assert_eq!(
        header(&m, "Content-Transfer-Encoding"),
        Some("quoted-printable")
    );
    let raw = bytes(&m);
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.body_text(0).unwrap().trim_end(), line);
    // A header field that long is still refused.
    let long_header = format!("X-Long: {line}\n\nbody\n");
    let e = prep(
        &rcpt(&["ops@contoso.com"]),
        &profile(),
        long_header.as_bytes(),
    )
    .unwrap_err();
    assert_eq!(e.exit, Exit::DataErr);
}

/// A header line over 998 octets (cron's Subject with a long command) is folded at white
/// space, and unfolds to the same text.
#[test]
fn long_header_lines_are_folded() {
    let words: Vec<String> = (0..300).map(|i| format!("--opt{i}")).collect();
    let subject = format!("Cron <root@srv1> /usr/bin/job {}", words.join(" "));
    let msg = format!("Subject: {subject}\n\nout\n");
    let m = prep(&rcpt(&["ops@contoso.com"]), &profile(), msg.as_bytes()).unwrap();
    let raw = bytes(&m);
    let text = String::from_utf8(raw.clone()).unwrap();
    assert!(
        text.split("\r\n").all(|l| l.len() <= 998),
        "a line is too long"
    );
    let parsed = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(parsed.subject(), Some(subject.as_str()));
}
