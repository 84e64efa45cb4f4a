//! The queue's behaviour with a scripted fake Deliverer: enqueue/list/show/delete, backoff,
//! bounces, lifetime, partial delivery, connection reuse and pacing.

mod queue_support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use m365send::exit::Exit;
use m365send::queue::{
    self, MessageOutcome, Problem, Reason, RecipientResult, RunOptions, format_json, format_list,
};
use mail_parser::{MessageParser, MimeHeaders};
use queue_support::*;

/// Leave the bounces a run queues in the spool, to look at them.
fn keep_bounces() -> RunOptions<'static> {
    RunOptions {
        send_bounces_now: false,
        ..RunOptions::default()
    }
}

fn no_explain(_: &queue::Entry) -> Option<String> {
    None
}

#[test]
fn enqueue_list_show_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    assert!(queue::list(&cfg).unwrap().is_empty(), "no spool yet: empty");
    assert_eq!(format_list(&[], &no_explain), "Mail queue is empty\n");

    let m1 = prepared("alerts@contoso.com", &["ops@contoso.com"], "first");
    let m2 = prepared(
        "alerts@contoso.com",
        &["a@contoso.com", "b@contoso.com"],
        "second",
    );
    let id1 = queue::enqueue(&cfg, "relay", &m1, None).unwrap();
    let r = reply(451, "4.7.500 Access denied, please try again later");
    let id2 = queue::enqueue(&cfg, "relay", &m2, Some(Reason::Reply(&r))).unwrap();
    assert_ne!(id1, id2);

    for d in ["", "tmp", "msg", "meta"] {
        let mode = std::fs::metadata(spool.join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{d} is 0700");
    }

    let list = queue::list(&cfg).unwrap();
    assert_eq!(list.len(), 2);
    let e1 = &list[0];
    assert_eq!(e1.id, id1.as_str());
    assert_eq!(e1.profile, "relay");
    assert_eq!(e1.envelope.sender, "alerts@contoso.com");
    assert_eq!(e1.size, m1.size);
    assert_eq!(e1.attempts, 0);
    assert!(e1.next_attempt <= now());
    let e2 = &list[1];
    assert_eq!(e2.attempts, 1, "queued after a failed attempt");
    assert_eq!(e2.last_reply.as_ref().unwrap().code, 451);
    assert_eq!(
        e2.last_reply.as_ref().unwrap().enhanced.as_deref(),
        Some("4.7.500")
    );
    let wait = e2.next_attempt - now();
    assert!(
        (47..=73).contains(&wait),
        "first backoff ~1 min, got {wait}"
    );

    let text = format_list(&list, &|e| {
        e.last_reply
            .as_ref()
            .map(|_| "Microsoft 365 is throttling: it will be retried".to_owned())
    });
    assert!(
        text.contains(id1.as_str()) && text.contains(id2.as_str()),
        "{text}"
    );
    assert!(text.contains("from: alerts@contoso.com"), "{text}");
    assert!(text.contains("a@contoso.com, b@contoso.com"), "{text}");
    assert!(text.contains("last: 451 4.7.500 Access denied"), "{text}");
    assert!(text.contains("Microsoft 365 is throttling"), "{text}");
    assert!(text.contains("attempts 1"), "{text}");
    assert!(text.ends_with(" Kbytes in 2 Requests.\n"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&format_json(&list, &no_explain)).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["count"], 2);
    let j2 = &json["entries"][1];
    for key in [
        "id",
        "profile",
        "created",
        "created_unix",
        "age_seconds",
        "size",
        "sender",
        "recipients",
        "attempts",
        "next_attempt",
        "next_attempt_unix",
        "last_reply",
        "last_error",
        "explanation",
        "is_bounce",
    ] {
        assert!(j2.get(key).is_some(), "json has {key}");
    }
    assert_eq!(j2["last_reply"]["code"], 451);
    assert_eq!(j2["recipients"][1], "b@contoso.com");

    let (entry, headers) = queue::show(&cfg, id2.as_str()).unwrap();
    assert_eq!(entry.id, id2.as_str());
    assert!(headers.contains("Subject: second"), "{headers}");
    assert!(!headers.contains("Body of"), "headers only");
    let shown = queue::format_show(&entry, &headers, Some("explained"));
    assert!(shown.contains("last reply:   451 4.7.500"), "{shown}");
    assert!(shown.contains("Subject: second"), "{shown}");

    queue::delete(&cfg, id1.as_str()).unwrap();
    let err = queue::delete(&cfg, id1.as_str()).unwrap_err();
    assert_eq!(err.exit, Exit::NoInput);
    assert_eq!(
        queue::show(&cfg, "../../etc/passwd").unwrap_err().exit,
        Exit::Usage
    );
    assert_eq!(queue::list(&cfg).unwrap().len(), 1);
    queue::delete(&cfg, id2.as_str()).unwrap();
    assert!(queue::list(&cfg).unwrap().is_empty());
    assert!(
        std::fs::read_dir(spool.join("msg"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn transient_failure_stays_queued_with_growing_backoff_and_flush_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "t"),
        None,
    )
    .unwrap();
    let rt = rt();
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Transient(Problem::reply(
            reply(
                432,
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
            ),
            "too many connections",
        ))
    });
    let rep = rt
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!((rep.deferred, rep.delivered), (1, 0));
    let e = &queue::list(&cfg).unwrap()[0];
    assert_eq!(e.attempts, 1);
    assert_eq!(e.last_reply.as_ref().unwrap().code, 432);
    let first = e.next_attempt - now();
    assert!((47..=73).contains(&first), "first backoff {first}");

    // Not due: a plain run does not touch it.
    let rep = rt
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.not_due, 1);
    assert_eq!(fake.sends().len(), 1);

    // Flush ignores the backoff; the delay doubles.
    let flush = || RunOptions {
        flush: true,
        ..RunOptions::default()
    };
    rt.block_on(queue::run(&cfg, flush(), &mut fake)).unwrap();
    let e = &queue::list(&cfg).unwrap()[0];
    assert_eq!(e.attempts, 2);
    let second = e.next_attempt - now();
    assert!((95..=145).contains(&second), "second backoff {second}");
    assert!(second > first);

    // Server back: delivered exactly once, entry gone.
    let mut ok = Fake::default();
    let rep = rt.block_on(queue::run(&cfg, flush(), &mut ok)).unwrap();
    assert_eq!(rep.delivered, 1);
    assert_eq!(ok.subjects(), vec!["t".to_owned()]);
    assert!(queue::list(&cfg).unwrap().is_empty());
    assert!(queue::show(&cfg, id.as_str()).is_err());
    let rep = rt.block_on(queue::run(&cfg, flush(), &mut ok)).unwrap();
    assert_eq!(rep.delivered, 0);
    assert_eq!(ok.subjects().len(), 1, "exactly once");
}

#[test]
fn backoff_is_capped_at_about_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "cap"),
        None,
    )
    .unwrap();
    edit_meta(&spool, id.as_str(), |v| v["attempts"] = 20.into());
    let mut fake = Fake::scripted(|_, _| MessageOutcome::Transient(Problem::error("timeout")));
    rt().block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    let e = &queue::list(&cfg).unwrap()[0];
    assert_eq!(e.attempts, 21);
    assert_eq!(e.last_error.as_deref(), Some("timeout"));
    assert!(e.last_reply.is_none());
    let wait = e.next_attempt - now();
    assert!((2879..=4321).contains(&wait), "capped at 1 h ±20%: {wait}");
}

fn parse_bounce(bytes: &[u8]) -> (String, String) {
    let msg = MessageParser::default()
        .parse(bytes)
        .expect("bounce parses");
    let ct = msg.content_type().expect("content type");
    assert_eq!(ct.ctype(), "multipart");
    assert_eq!(ct.subtype(), Some("report"));
    assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
    let inner = msg
        .attachments()
        .find_map(|p| p.message())
        .expect("original attached as message/rfc822");
    let subject = inner.subject().unwrap_or_default().to_owned();
    (subject, String::from_utf8_lossy(bytes).into_owned())
}

#[test]
fn permanent_failure_bounces_with_the_original_and_a_failed_bounce_goes_to_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let orig = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["nobody@contoso.com"], "lost"),
        None,
    )
    .unwrap();
    let rt = rt();
    let dead = DeadLetters::default();
    let writer = dead.writer();
    let opts = || RunOptions {
        dead_letter: Some(&writer),
        ..keep_bounces()
    };
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Permanent(Problem::reply(
            reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; not found"),
            "The recipient nobody@contoso.com does not exist in the tenant.",
        ))
    });
    let rep = rt.block_on(queue::run(&cfg, opts(), &mut fake)).unwrap();
    assert_eq!((rep.bounced, rep.dead_lettered), (1, 0));
    let list = queue::list(&cfg).unwrap();
    assert_eq!(list.len(), 1, "original gone, bounce queued");
    let b = &list[0];
    assert_ne!(b.id, orig.as_str());
    assert!(b.is_bounce);
    assert_eq!(b.envelope.sender, "", "null envelope sender");
    assert_eq!(b.envelope.recipients, vec!["alerts@contoso.com".to_owned()]);
    assert_eq!(b.profile, "relay", "same profile");

    let bytes = std::fs::read(spool.join("msg").join(format!("{}.eml", b.id))).unwrap();
    assert_eq!(bytes.len() as u64, b.size);
    let (subject, text) = parse_bounce(&bytes);
    assert_eq!(subject, "lost");
    assert!(text.contains("From: Mail Delivery System <MAILER-DAEMON@contoso.com>"));
    assert!(text.contains("To: <alerts@contoso.com>"));
    assert!(text.contains("Auto-Submitted: auto-replied"));
    assert!(text.contains("Content-Type: message/delivery-status"));
    assert!(text.contains("Reporting-MTA: dns; "));
    assert!(text.contains("Final-Recipient: rfc822; nobody@contoso.com"));
    assert!(text.contains("Action: failed"));
    assert!(text.contains("Status: 5.1.10"));
    assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.10 RESOLVER.ADR.RecipientNotFound"));
    assert!(
        text.contains("does not exist in the tenant"),
        "explanation in the text"
    );
    assert!(text.contains("Body of lost"), "whole original attached");
    assert!(
        !text.contains("\r\n\n") && !text.replace("\r\n", "").contains('\n'),
        "CRLF only"
    );

    // The bounce itself fails: dead letter, no bounce of the bounce.
    let rep = rt.block_on(queue::run(&cfg, opts(), &mut fake)).unwrap();
    assert_eq!((rep.bounced, rep.dead_lettered), (0, 1));
    assert!(queue::list(&cfg).unwrap().is_empty(), "never loops");
    let dl = dead.0.lock().unwrap();
    assert_eq!(dl[0].0, "");
    assert!(
        dl[0].2.contains("a bounce cannot be bounced"),
        "{}",
        dl[0].2
    );
    assert!(dl[0].3.starts_with(b"From: Mail Delivery System"));
}

#[test]
fn large_original_or_ret_hdrs_attaches_headers_only() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let mut m = prepared("alerts@contoso.com", &["x@contoso.com"], "big");
    m.envelope.dsn.ret = Some(m365send::message::Ret::Hdrs);
    queue::enqueue(&cfg, "relay", &m, None).unwrap();
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Permanent(Problem::reply(reply(552, "5.3.4 message size exceeds"), ""))
    });
    let rep = rt()
        .block_on(queue::run(&cfg, keep_bounces(), &mut fake))
        .unwrap();
    assert_eq!(rep.bounced, 1);
    let b = &queue::list(&cfg).unwrap()[0];
    let text =
        String::from_utf8(std::fs::read(spool.join("msg").join(format!("{}.eml", b.id))).unwrap())
            .unwrap();
    assert!(text.contains("Content-Type: text/rfc822-headers"));
    assert!(text.contains("Subject: big"));
    assert!(!text.contains("Body of big"));
    assert!(MessageParser::default().parse(text.as_bytes()).is_some());
}

#[test]
fn null_sender_failure_goes_to_dead_letter_without_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("", &["x@contoso.com"], "nul"),
        None,
    )
    .unwrap();
    let dead = DeadLetters::default();
    let writer = dead.writer();
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Permanent(Problem::reply(reply(550, "5.4.1 Access denied"), ""))
    });
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                dead_letter: Some(&writer),
                ..RunOptions::default()
            },
            &mut fake,
        ))
        .unwrap();
    assert_eq!((rep.bounced, rep.dead_lettered), (0, 1));
    assert!(queue::list(&cfg).unwrap().is_empty());
    assert!(dead.0.lock().unwrap()[0].2.contains("no sender"));
}

#[test]
fn lifetime_expiry_fails_permanently_with_5_4_7() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "old"),
        Some(Reason::Text("connection refused")),
    )
    .unwrap();
    edit_meta(&spool, id.as_str(), |v| {
        v["created"] = (now() - 6 * 86400).into();
        v["next_attempt"] = (now() + 600).into();
    });
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, keep_bounces(), &mut fake))
        .unwrap();
    assert_eq!((rep.expired, rep.bounced), (1, 1));
    assert!(fake.events.is_empty(), "not tried again");
    let b = &queue::list(&cfg).unwrap()[0];
    assert!(b.is_bounce);
    let text =
        String::from_utf8(std::fs::read(spool.join("msg").join(format!("{}.eml", b.id))).unwrap())
            .unwrap();
    assert!(text.contains("Status: 5.4.7"), "{text}");
    assert!(text.contains("connection refused"), "last error quoted");
    queue::delete(&cfg, &b.id).unwrap();

    // A shorter lifetime set by the caller, reached after a transient failure.
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "short"),
        None,
    )
    .unwrap();
    edit_meta(&spool, id.as_str(), |v| v["created"] = (now() - 100).into());
    let mut fake = Fake::scripted(|_, _| MessageOutcome::Transient(Problem::error("timeout")));
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                lifetime: Duration::from_secs(3600),
                ..RunOptions::default()
            },
            &mut fake,
        ))
        .unwrap();
    assert_eq!(rep.deferred, 1, "within lifetime");
    edit_meta(&spool, id.as_str(), |v| {
        v["created"] = (now() - 3700).into()
    });
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                lifetime: Duration::from_secs(3600),
                flush: true,
                ..RunOptions::default()
            },
            &mut fake,
        ))
        .unwrap();
    assert_eq!(rep.expired, 1);
    assert!(queue::list(&cfg).unwrap().iter().all(|e| e.is_bounce));
}

#[test]
fn partial_delivery_keeps_only_the_transient_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "relay",
        &prepared(
            "alerts@contoso.com",
            &["a@contoso.com", "b@contoso.com", "c@contoso.com"],
            "part",
        ),
        None,
    )
    .unwrap();
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Recipients(vec![
            ("a@contoso.com".into(), RecipientResult::Delivered),
            (
                "b@contoso.com".into(),
                RecipientResult::Transient(Problem::reply(
                    reply(452, "4.5.3 Too many recipients"),
                    "",
                )),
            ),
            (
                "c@contoso.com".into(),
                RecipientResult::Permanent(Problem::reply(
                    reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound"),
                    "no such user",
                )),
            ),
        ])
    });
    let rt = rt();
    let rep = rt
        .block_on(queue::run(&cfg, keep_bounces(), &mut fake))
        .unwrap();
    assert_eq!((rep.partial, rep.deferred, rep.bounced), (1, 1, 1));
    let list = queue::list(&cfg).unwrap();
    let orig = list.iter().find(|e| !e.is_bounce).unwrap();
    assert_eq!(orig.envelope.recipients, vec!["b@contoso.com".to_owned()]);
    assert_eq!(orig.delivered, vec!["a@contoso.com".to_owned()]);
    assert_eq!(orig.last_reply.as_ref().unwrap().code, 452);
    let bounce = list.iter().find(|e| e.is_bounce).unwrap();
    let text = String::from_utf8(
        std::fs::read(spool.join("msg").join(format!("{}.eml", bounce.id))).unwrap(),
    )
    .unwrap();
    assert!(text.contains("Final-Recipient: rfc822; c@contoso.com"));
    assert!(!text.contains("Final-Recipient: rfc822; b@contoso.com"));

    let mut ok = Fake::default();
    rt.block_on(queue::run(
        &cfg,
        RunOptions {
            flush: true,
            ..RunOptions::default()
        },
        &mut ok,
    ))
    .unwrap();
    let sends = ok.sends();
    let retry = sends.iter().find(|s| s.2 == "part").unwrap();
    assert_eq!(
        retry.1,
        vec!["b@contoso.com".to_owned()],
        "only b is retried"
    );
    assert!(queue::list(&cfg).unwrap().is_empty());
}

#[test]
fn one_session_serves_several_messages_with_reset_between() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    for s in ["m1", "m2", "m3"] {
        queue::enqueue(
            &cfg,
            "relay",
            &prepared("alerts@contoso.com", &["ops@contoso.com"], s),
            None,
        )
        .unwrap();
    }
    queue::enqueue(
        &cfg,
        "submit",
        &prepared("app@contoso.com", &["ops@contoso.com"], "s1"),
        None,
    )
    .unwrap();
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!((rep.delivered, rep.sessions), (4, 2));
    use queue_support::Event::*;
    let kinds: Vec<String> = fake
        .events
        .iter()
        .map(|e| match e {
            Open(p) => format!("open {p}"),
            Send { subject, .. } => format!("send {subject}"),
            Reset => "reset".into(),
            Close => "close".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "open relay",
            "send m1",
            "reset",
            "send m2",
            "reset",
            "send m3",
            "close",
            "open submit",
            "send s1",
            "close"
        ]
    );
}

#[test]
fn a_failed_reset_reopens_and_a_failed_open_defers_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    for s in ["m1", "m2"] {
        queue::enqueue(
            &cfg,
            "relay",
            &prepared("alerts@contoso.com", &["ops@contoso.com"], s),
            None,
        )
        .unwrap();
    }
    let rt = rt();
    let mut down = Fake {
        open_error: Some(Problem::error("connection refused by 127.0.0.1:25")),
        ..Fake::default()
    };
    let rep = rt
        .block_on(queue::run(&cfg, RunOptions::default(), &mut down))
        .unwrap();
    assert_eq!((rep.deferred, rep.sessions), (2, 0));
    assert_eq!(down.events.len(), 1, "one connection attempt for the group");
    for e in queue::list(&cfg).unwrap() {
        assert_eq!(e.attempts, 1);
        assert_eq!(
            e.last_error.as_deref(),
            Some("connection refused by 127.0.0.1:25")
        );
    }
    let mut flaky = Fake {
        reset_error: true,
        ..Fake::default()
    };
    let rep = rt
        .block_on(queue::run(
            &cfg,
            RunOptions {
                flush: true,
                ..RunOptions::default()
            },
            &mut flaky,
        ))
        .unwrap();
    assert_eq!((rep.delivered, rep.sessions), (2, 2));
    assert_eq!(
        flaky.events,
        vec![
            queue_support::Event::Open("relay".into()),
            flaky.events[1].clone(),
            queue_support::Event::Reset,
            queue_support::Event::Close,
            queue_support::Event::Open("relay".into()),
            flaky.events[5].clone(),
            queue_support::Event::Close,
        ]
    );
}

#[test]
fn pacing_spaces_messages_by_the_profile_rate() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let mut cfg = config(&spool);
    cfg.profiles.get_mut("submit").unwrap().rate_per_minute = Some(600);
    for s in ["p1", "p2", "p3"] {
        queue::enqueue(
            &cfg,
            "submit",
            &prepared("app@contoso.com", &["ops@contoso.com"], s),
            None,
        )
        .unwrap();
    }
    let mut fake = Fake::default();
    let start = Instant::now();
    rt().block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(fake.sent_at.len(), 3);
    for w in fake.sent_at.windows(2) {
        let gap = w[1] - w[0];
        assert!(gap >= Duration::from_millis(95), "gap {gap:?}");
    }
    assert!(start.elapsed() >= Duration::from_millis(190));

    // Pacing off (rate 0 via the run options) on a profile paced at 1/s: no sleeping.
    cfg.profiles.get_mut("submit").unwrap().rate_per_minute = Some(60);
    for s in ["q1", "q2", "q3"] {
        queue::enqueue(
            &cfg,
            "submit",
            &prepared("app@contoso.com", &["ops@contoso.com"], s),
            None,
        )
        .unwrap();
    }
    let mut fast = Fake::default();
    let start = Instant::now();
    rt().block_on(queue::run(
        &cfg,
        RunOptions {
            rate_per_minute: Some(0),
            ..RunOptions::default()
        },
        &mut fast,
    ))
    .unwrap();
    assert_eq!(fast.sent_at.len(), 3);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "would take 2 s paced"
    );
}

#[test]
fn delete_waits_for_an_entry_on_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "busy"),
        None,
    )
    .unwrap();
    let handle = std::sync::Arc::new(std::sync::Mutex::new(None));
    let h2 = handle.clone();
    let cfg2 = cfg.clone();
    let id2 = id.clone();
    let mut fake = Fake::scripted(move |_, _| {
        let cfg3 = cfg2.clone();
        let id3 = id2.clone();
        // A `queue delete` racing with the delivery in another thread.
        *h2.lock().unwrap() = Some(std::thread::spawn(move || {
            let t = Instant::now();
            (queue::delete(&cfg3, id3.as_str()), t.elapsed())
        }));
        std::thread::sleep(Duration::from_millis(300));
        MessageOutcome::Delivered
    });
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.delivered, 1);
    let (res, waited) = handle.lock().unwrap().take().unwrap().join().unwrap();
    assert!(
        waited >= Duration::from_millis(200),
        "delete waited {waited:?}"
    );
    assert_eq!(res.unwrap_err().exit, Exit::NoInput, "already delivered");
}

#[test]
fn missing_profile_keeps_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "gone",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "orphan"),
        None,
    )
    .unwrap();
    let mut fake = Fake::default();
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(rep.deferred, 1);
    assert!(fake.events.is_empty());
    let e = &queue::list(&cfg).unwrap()[0];
    assert!(e.last_error.as_deref().unwrap().contains("\"gone\""));

    // Past its lifetime it is not kept forever: with no profile to bounce through, the
    // message goes to the dead letter and the entry is gone.
    let id = e.id.clone();
    edit_meta(&spool, &id, |v| v["created"] = (now() - 6 * 86400).into());
    let dead = DeadLetters::default();
    let writer = dead.writer();
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                dead_letter: Some(&writer),
                ..RunOptions::default()
            },
            &mut fake,
        ))
        .unwrap();
    assert_eq!((rep.expired, rep.bounced, rep.dead_lettered), (1, 0, 1));
    assert!(fake.events.is_empty());
    assert!(queue::list(&cfg).unwrap().is_empty());
    let letters = dead.0.lock().unwrap();
    assert_eq!(letters[0].1, vec!["ops@contoso.com".to_owned()]);
    assert!(
        letters[0].2.contains("no longer in the configuration"),
        "{}",
        letters[0].2
    );
    assert!(String::from_utf8_lossy(&letters[0].3).contains("orphan"));
}

#[test]
fn submission_bounces_come_from_the_mailbox_and_notify_never_means_no_bounce() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "submit",
        &prepared("app@contoso.com", &["x@fabrikam.com"], "sub"),
        None,
    )
    .unwrap();
    let mut quiet = prepared("app@contoso.com", &["y@fabrikam.com"], "quiet");
    quiet.envelope.dsn.notify = Some("NEVER".into());
    queue::enqueue(&cfg, "submit", &quiet, None).unwrap();
    let dead = DeadLetters::default();
    let writer = dead.writer();
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Permanent(Problem::reply(
            reply(550, "5.4.1 Recipient address rejected: Access denied"),
            "",
        ))
    });
    let rep = rt()
        .block_on(queue::run(
            &cfg,
            RunOptions {
                dead_letter: Some(&writer),
                ..keep_bounces()
            },
            &mut fake,
        ))
        .unwrap();
    assert_eq!((rep.bounced, rep.dead_lettered), (1, 1));
    assert!(rep.summary().contains("1 bounced"), "{}", rep.summary());
    assert!(dead.0.lock().unwrap()[0].2.contains("NOTIFY"));
    let b = &queue::list(&cfg).unwrap()[0];
    assert_eq!(b.profile, "submit");
    let text =
        String::from_utf8(std::fs::read(spool.join("msg").join(format!("{}.eml", b.id))).unwrap())
            .unwrap();
    assert!(
        text.contains("From: Mail Delivery System <app@contoso.com>"),
        "submission may only send as the mailbox"
    );
    assert!(text.contains("To: <app@contoso.com>"));
}

#[test]
fn a_bounce_goes_out_in_the_same_run() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["nobody@contoso.com"], "now"),
        None,
    )
    .unwrap();
    let mut fake = Fake::scripted(|m, _| {
        if m.envelope.sender.is_empty() {
            MessageOutcome::Delivered
        } else {
            MessageOutcome::Permanent(Problem::reply(reply(550, "5.1.10 not found"), ""))
        }
    });
    let rep = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!((rep.bounced, rep.delivered), (1, 1));
    let sends = fake.sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[1].0, "", "null sender");
    assert_eq!(sends[1].1, vec!["alerts@contoso.com".to_owned()]);
    assert_eq!(sends[1].2, "Undelivered Mail Returned to Sender");
    assert!(queue::list(&cfg).unwrap().is_empty());
}

/// Issue 10 finding 5: when the bounce is impossible, the dead letter fails and even
/// `SPOOL/failed/` cannot be written, the entry is never removed: it stays queued with the
/// reason, and a later run (with failed/ writable again) keeps it there.
#[test]
fn an_entry_whose_failure_cannot_be_kept_anywhere_stays_queued() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let id = queue::enqueue(
        &cfg,
        "relay",
        &prepared("", &["x@contoso.com"], "only copy"),
        None,
    )
    .unwrap();
    // failed/ID.eml is a directory: the copy cannot be written (not even by root).
    let blocker = spool.join("failed").join(format!("{id}.eml"));
    std::fs::create_dir_all(&blocker).unwrap();
    std::fs::set_permissions(spool.join("failed"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let refuse = |_: &m365send::config::Config,
                  _: &m365send::config::Profile,
                  _: &m365send::message::Prepared,
                  _: &str| {
        Err(m365send::exit::Failure::new(
            Exit::CantCreat,
            "cannot write the dead letter /ro/dead.letter: read-only file system",
        ))
    };
    let mut fake = Fake::scripted(|_, _| {
        MessageOutcome::Permanent(Problem::reply(reply(550, "5.1.10 not found"), ""))
    });
    let opts = || RunOptions {
        dead_letter: Some(&refuse),
        flush: true,
        ..RunOptions::default()
    };
    let rep = rt().block_on(queue::run(&cfg, opts(), &mut fake)).unwrap();
    assert_eq!((rep.preserved, rep.deferred), (0, 1), "{rep:?}");
    let left = queue::list(&cfg).unwrap();
    assert_eq!(left.len(), 1, "the entry stays");
    assert_eq!(left[0].envelope.recipients, vec!["x@contoso.com"]);
    let why = left[0].last_error.as_deref().unwrap();
    assert!(why.contains("stays in the queue"), "{why}");
    assert!(
        rep.warnings.iter().any(|w| w.contains("could not be kept")),
        "{:?}",
        rep.warnings
    );

    // failed/ writable again: the next run keeps it there, then removes it from the queue.
    std::fs::remove_dir(&blocker).unwrap();
    let rep = rt().block_on(queue::run(&cfg, opts(), &mut fake)).unwrap();
    assert_eq!(rep.preserved, 1, "{rep:?}");
    assert!(queue::list(&cfg).unwrap().is_empty());
    let kept: Vec<_> = std::fs::read_dir(spool.join("failed")).unwrap().collect();
    assert_eq!(kept.len(), 2);
}

/// Issue 10 finding 15: the runner's lock and in-flight markers are private (0600), whatever
/// the umask.
#[test]
fn runner_lock_and_inflight_markers_are_0600() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("a@contoso.com", &["x@contoso.com"], "m"),
        None,
    )
    .unwrap();
    // A lock file left world-readable (by an older version) is tightened too.
    std::fs::write(spool.join("runner.lock"), b"").unwrap();
    std::fs::set_permissions(
        spool.join("runner.lock"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let inflight = spool.join("inflight");
    let mut fake = Fake::scripted(move |_, _| {
        for de in std::fs::read_dir(&inflight).unwrap() {
            let mode = de.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            seen2.lock().unwrap().push(mode);
        }
        MessageOutcome::Delivered
    });
    let opts = RunOptions {
        flush: true,
        ..RunOptions::default()
    };
    let rep = rt().block_on(queue::run(&cfg, opts, &mut fake)).unwrap();
    assert_eq!(rep.delivered, 1);
    assert_eq!(*seen.lock().unwrap(), vec![0o600], "the in-flight marker");
    let lock = std::fs::metadata(spool.join("runner.lock")).unwrap();
    assert_eq!(lock.permissions().mode() & 0o777, 0o600, "runner.lock");
}

// --- a spool another user could write ---------------------------------------------------------

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A spool writable by group or others, or owned by another user, is refused before use
/// (enqueue, run, list), with the reason and the fix.
#[test]
fn a_spool_others_could_write_is_refused() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let m = prepared("alerts@contoso.com", &["ops@contoso.com"], "x");
    queue::enqueue(&cfg, "relay", &m, None).unwrap();
    let chmod = |p: &std::path::Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    for (path, mode, why) in [
        (spool.clone(), 0o777, "writable by others (mode 0777)"),
        (spool.clone(), 0o770, "writable by its group (mode 0770)"),
        (spool.join("meta"), 0o733, "writable by others"),
    ] {
        chmod(&path, mode);
        let e = queue::enqueue(&cfg, "relay", &m, None).unwrap_err();
        assert_eq!(e.exit, Exit::NoPerm);
        assert!(e.message.contains(why), "{}", e.message);
        assert!(
            e.message
                .contains(&format!("`chmod 700 {}`", path.display())),
            "{}",
            e.message
        );
        let e = rt()
            .block_on(queue::run(
                &cfg,
                RunOptions::default(),
                &mut Fake::default(),
            ))
            .unwrap_err();
        assert!(e.message.contains(why), "{}", e.message);
        assert!(queue::list(&cfg).is_err());
        chmod(&path, 0o700);
    }
    std::os::unix::fs::chown(&spool, Some(NOBODY), None).unwrap();
    let e = queue::enqueue(&cfg, "relay", &m, None).unwrap_err();
    assert!(
        e.message.contains("is owned by uid 65534") && e.message.contains("not by root"),
        "{}",
        e.message
    );
    std::os::unix::fs::chown(&spool, Some(0), None).unwrap();
    assert_eq!(queue::list(&cfg).unwrap().len(), 1);
}

/// An entry another user wrote (its files owned by nobody) with a --server of its choosing is
/// not delivered by root's runner, whatever its metadata says; root's own entry is.
#[test]
fn entries_another_user_wrote_are_not_delivered() {
    if !is_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let cfg = config(&spool);
    let theirs = queue::enqueue(
        &cfg,
        "submit",
        &prepared("app@contoso.com", &["x@attacker.example"], "theirs"),
        None,
    )
    .unwrap();
    edit_meta(&spool, theirs.as_str(), |v| {
        v["server"] = "attacker.example:587".into();
    });
    for f in [
        spool.join("meta").join(format!("{theirs}.json")),
        spool.join("msg").join(format!("{theirs}.eml")),
    ] {
        std::os::unix::fs::chown(&f, Some(NOBODY), None).unwrap();
    }
    queue::enqueue(
        &cfg,
        "relay",
        &prepared("alerts@contoso.com", &["ops@contoso.com"], "ours"),
        None,
    )
    .unwrap();
    let list = queue::list(&cfg).unwrap();
    assert_eq!(list[0].owner, Some(NOBODY));
    assert_eq!(list[1].owner, Some(0));

    let mut fake = Fake::default();
    let report = rt()
        .block_on(queue::run(&cfg, RunOptions::default(), &mut fake))
        .unwrap();
    assert_eq!(fake.subjects(), vec!["ours"]);
    assert!(
        !fake.events.contains(&Event::Open("submit".into())),
        "{:?}",
        fake.events
    );
    assert_eq!(report.delivered, 1);
    assert_eq!(report.not_owned, 1);
    let w = report
        .warnings
        .iter()
        .find(|w| w.contains(theirs.as_str()))
        .unwrap();
    assert!(w.contains("written by uid 65534"), "{w}");
    assert!(
        report
            .summary()
            .contains("1 left alone (written by another user)")
    );
    // Left alone: still there for its writer or the admin.
    assert_eq!(queue::list(&cfg).unwrap().len(), 1);

    // Body and metadata by different users: the entry is the other user's.
    std::os::unix::fs::chown(
        spool.join("meta").join(format!("{theirs}.json")),
        Some(0),
        None,
    )
    .unwrap();
    assert_eq!(queue::list(&cfg).unwrap()[0].owner, Some(NOBODY));
}
