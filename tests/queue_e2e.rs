//! The durable queue end to end: the real `m365send` binary, a configuration file in a
//! temporary directory, and the fake Microsoft 365 server on 127.0.0.1 (or nothing listening,
//! for "Microsoft is down"). Proves the reliability list of the queue issue.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/fake_m365.rs"]
mod fake_m365;

use std::collections::BTreeSet;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bin_env::{BinEnv, stderr, stdout};
use fake_m365::{FakeConfig, FakeM365, Phase, Rule};

const SENDER: &str = "alerts@contoso.com";
const RCPT: &str = "ops@contoso.com";
/// Microsoft 365's refusal of a sender the login may not send as.
const SEND_AS_REFUSED: &str =
    "550 5.7.60 SMTP; Client does not have permissions to send as this sender";
/// For the tests about one connection reused (relay opens 4 in parallel by default).
const ONE_CONNECTION: &str = "queue_connections = 1";

/// The queue tests' words for the binary's environment (tests/support/bin_env.rs).
trait QueueEnv {
    /// Send one message through the sendmail interface.
    async fn send(&self, extra_args: &[&str], subject: &str) -> Output;
}

impl QueueEnv for BinEnv {
    async fn send(&self, extra_args: &[&str], subject: &str) -> Output {
        let mut args = vec!["-f", SENDER];
        args.extend_from_slice(extra_args);
        args.push(RCPT);
        let text = format!("From: {SENDER}\nTo: {RCPT}\nSubject: {subject}\n\nbody of {subject}\n");
        self.run(&args, text.as_bytes()).await
    }
}

/// A port with nothing listening on it.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn subject_of(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_queues_exit_0_then_queue_run_delivers_exactly_once() {
    let env = BinEnv::new();
    env.write_relay(dead_port(), None, "");
    let o = env.send(&[], "down").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "",
        "quiet without -v (cron must not mail errors)"
    );
    let list = env.queue_list().await;
    assert_eq!(list["count"], 1);
    let e = &list["entries"][0];
    assert_eq!(e["sender"], SENDER);
    assert_eq!(e["recipients"][0], RCPT);
    assert_eq!(e["attempts"], 1);
    assert!(e["last_error"].as_str().unwrap().contains("connect"), "{e}");

    // At -v, sendmail's "queued" note.
    let o = env.send(&["-v"], "down verbose").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("m365send: queued as "),
        "{}",
        stderr(&o)
    );
    assert_eq!(env.queue_count().await, 2);

    // The server comes back; the entries wait for their backoff first.
    let server = FakeM365::start(FakeConfig::mx()).await;
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 not due yet"), "{}", stderr(&o));
    assert!(server.accepted().is_empty());

    env.make_due();
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 delivered"), "{}", stderr(&o));
    let got = server.accepted();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].connection, got[1].connection,
        "one connection for both"
    );
    let subjects: BTreeSet<String> = got.iter().map(|m| subject_of(&m.data)).collect();
    assert_eq!(subjects, ["down", "down verbose"].map(String::from).into());
    assert_eq!(got[0].sender, SENDER);
    assert_eq!(got[0].recipients, vec![RCPT.to_owned()]);
    // The second message went out behind the first one's unread replies: the RSET that
    // leads it is in its own flight, right before its MAIL; QUIT at the end.
    let cmds = &server.connections()[got[0].connection].commands;
    let rsets: Vec<usize> = (0..cmds.len()).filter(|&i| cmds[i] == "RSET").collect();
    assert_eq!(rsets.len(), 1, "{cmds:?}");
    assert!(cmds[rsets[0] + 1].starts_with("MAIL FROM:"), "{cmds:?}");
    assert_eq!(cmds.last().map(String::as_str), Some("QUIT"));
    assert_eq!(env.queue_count().await, 0);

    // Nothing left: a second run sends nothing again; sendmail -q is the same command.
    let o = env.run(&["-q"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    assert_eq!(server.accepted().len(), 2, "exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_replies_stay_queued_with_the_reply_shown_in_mailq() {
    let server = FakeM365::start(
        FakeConfig::mx()
            .rule(Rule::reply(
                Phase::DataEnd,
                "451 4.7.500 Access denied, please try again later",
            ))
            .rule(
                Rule::reply(
                    Phase::Mail,
                    "432 4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                )
                .matching("throttled"),
            ),
    )
    .await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), "");

    // 451 at the end of data during the in-process attempt: queued, exit 0.
    let o = env.send(&[], "four-five-one").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["-bp"], b"").await;
    let text = stdout(&o);
    assert!(text.contains("451 4.7.500 Access denied"), "{text}");
    assert!(text.contains("-- 1 Kbytes in 1 Request."), "{text}");

    // 432 4.3.2 while queued (the queue runner meets it): still queued, reply in mailq.
    let o = env
        .run(
            &["-odq", "-f", "throttled@contoso.com", RCPT],
            b"Subject: throttled\n\nx\n",
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["queue", "flush", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 deferred"), "{}", stderr(&o));
    let list = env.queue_list().await;
    assert_eq!(list["count"], 2);
    let by_sender = |s: &str| {
        list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["sender"] == s)
            .cloned()
            .unwrap()
    };
    let t = by_sender("throttled@contoso.com");
    assert_eq!(t["last_reply"]["code"], 432);
    assert_eq!(t["last_reply"]["enhanced"], "4.3.2");
    assert_eq!(t["attempts"], 1);
    let f = by_sender(SENDER);
    assert_eq!(f["last_reply"]["code"], 451);
    assert_eq!(f["attempts"], 2);
    let o = env.run(&["queue", "list"], b"").await;
    assert!(
        stdout(&o).contains("432 4.3.2 STOREDRV.ClientSubmit"),
        "{}",
        stdout(&o)
    );
    assert!(server.accepted().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_while_queued_bounces_to_the_sender_and_removes_the_entry() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(Rule::reply(Phase::DataEnd, SEND_AS_REFUSED).matching(SENDER)),
    )
    .await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), "");
    let o = env.send(&["-odq"], "doomed").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 bounced"), "{}", stderr(&o));
    assert_eq!(env.queue_count().await, 0, "entry and bounce both gone");
    // The bounce went out with the null sender (MAIL FROM:<>) to the original sender.
    let got = server.accepted();
    assert_eq!(got.len(), 1, "{:?}", server.messages());
    let bounce = &got[0];
    assert_eq!(bounce.sender, "");
    assert_eq!(bounce.recipients, vec![SENDER.to_owned()]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(text.contains("5.7.60"), "{text}");
    assert!(
        text.contains("Subject: doomed"),
        "original attached: {text}"
    );
    let conn = &server.connections()[bounce.connection];
    assert!(
        conn.commands.iter().any(|c| c.starts_with("MAIL FROM:<>")),
        "{:?}",
        conn.commands
    );
    assert!(!env.dead.exists(), "bounced, not dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_mid_data_is_retried_and_delivered_once() {
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::drop(Phase::MidData).times(1))).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), "");
    let o = env.send(&[], "dropped").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.queue_count().await, 1, "queued after the drop");
    assert!(server.accepted().is_empty());
    env.make_due();
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = server.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(subject_of(&got[0].data), "dropped");
    assert_eq!(env.queue_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odq_queues_without_connecting_and_never_policy_keeps_exit_75() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), "");
    let o = env.send(&["-odq", "-v"], "later").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("queued as"), "{}", stderr(&o));
    assert!(server.connections().is_empty(), "-odq must not connect");
    let list = env.queue_list().await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["entries"][0]["attempts"], 0, "due at once");

    // queue = "always": same, without -odq.
    env.write_relay(server.port(), Some(server.ca_file()), "queue = \"always\"");
    let o = env.send(&[], "always").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(server.connections().is_empty());
    assert_eq!(env.queue_count().await, 2);
    let o = env.run(&["queue", "run"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted().len(), 2);

    // queue = "never": today's behaviour, exit 75 and the dead letter.
    env.write_relay(dead_port(), None, "queue = \"never\"");
    let o = env.send(&[], "never").await;
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    assert!(stderr(&o).contains("message saved to"), "{}", stderr(&o));
    assert_eq!(env.queue_count().await, 0);
    assert!(
        std::fs::read_to_string(&env.dead)
            .unwrap()
            .contains("Subject: never")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_not_writable_exits_73_and_keeps_the_message_in_the_dead_letter() {
    let env = BinEnv::new();
    // The spool directory would live under a regular file: not creatable, even for root.
    let file = env.dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let text = std::fs::read_to_string({
        env.write_relay(dead_port(), None, "");
        &env.config
    })
    .unwrap()
    .replace(
        &format!("spool_dir = \"{}\"", env.spool.display()),
        &format!("spool_dir = \"{}/spool\"", file.display()),
    );
    std::fs::write(&env.config, text).unwrap();
    for (args, subject) in [(&[][..], "no spool"), (&["-odq"][..], "no spool odq")] {
        let o = env.send(args, subject).await;
        assert_eq!(o.status.code(), Some(73), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("cannot write to the mail queue"), "{e}");
        assert!(e.contains(&env.dead.display().to_string()), "{e}");
        let dead = std::fs::read_to_string(&env.dead).unwrap();
        assert!(dead.contains(&format!("Subject: {subject}")), "{dead}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_senders_with_the_server_down_then_one_run_delivers_all() {
    const N: usize = 200;
    let env = Arc::new(BinEnv::new());
    env.write_relay(dead_port(), None, "");
    let started = Instant::now();
    // All 200 processes are spawned; at most 50 run at once (2 cores shared).
    let gate = Arc::new(tokio::sync::Semaphore::new(50));
    let mut tasks = Vec::new();
    for i in 0..N {
        let env = env.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire().await.unwrap();
            env.send(&[], &format!("concurrent {i}")).await
        }));
    }
    for t in tasks {
        let o = t.await.unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    eprintln!("{N} senders took {:?}", started.elapsed());
    let list = env.queue_list().await;
    assert_eq!(list["count"], N as u64);
    assert!(!env.spool.join("corrupt").exists());
    let ids: BTreeSet<&str> = list["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "unique ids");

    let server = FakeM365::start(FakeConfig::mx()).await;
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    let t = Instant::now();
    let o = env.run(&["queue", "flush", "-v"], b"").await;
    eprintln!("one queue run took {:?}", t.elapsed());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{N} delivered")),
        "{}",
        stderr(&o)
    );
    let got = server.accepted();
    let subjects: BTreeSet<String> = got.iter().map(|m| subject_of(&m.data)).collect();
    assert_eq!(got.len(), N);
    assert_eq!(subjects.len(), N, "each message once");
    assert!(
        server.connections().len() <= 2,
        "one connection reused: {}",
        server.connections().len()
    );
    assert_eq!(env.queue_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_runner_exits_cleanly_and_kill_9_mid_batch_loses_nothing() {
    const N: usize = 5;
    // The third message's end of data never gets an answer.
    let server = FakeM365::start(
        FakeConfig::mx()
            .rule(Rule::reply(Phase::DataEnd, "250 2.0.0 OK Queued mail for delivery").times(2))
            .rule(Rule::hang(Phase::DataEnd).times(1)),
    )
    .await;
    let env = BinEnv::new();
    // The hung runner must still be waiting when it is killed, however slow the machine.
    env.write_profile(&format!(
        "mode = \"relay\"\n{ONE_CONNECTION}\n{}\n[profiles.p.timeouts]\nconnect = 5\n\
         command = 5\ndata_end = 120\n",
        BinEnv::endpoint(server.port(), Some(server.ca_file()))
    ));
    for i in 0..N {
        let o = env.send(&["-odq"], &format!("batch {i}")).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let mut first = env.command(&["queue", "run", "-v"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.messages().len() < 3 {
        assert!(
            Instant::now() < deadline,
            "runner did not reach the 3rd message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A second runner meanwhile: exit 0 at once, a note at -v, silence without.
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("another queue runner"),
        "{}",
        stderr(&o)
    );
    let o = env.run(&["-q"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");

    // kill -9 the first runner with the third message on the wire.
    first.start_kill().unwrap();
    let _ = first.wait().await;
    assert_eq!(server.accepted().len(), 2);
    assert_eq!(env.queue_count().await, (N - 2) as u64, "nothing lost");

    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    // The fourth message was on the wire too, behind the third (two in flight): both are
    // reported as possibly duplicated, though only the third reached the server's verdict.
    assert!(e.contains("may arrive twice"), "{e}");
    assert!(
        e.contains("1 possibly duplicated") || e.contains("2 possibly duplicated"),
        "{e}"
    );
    assert!(e.contains(&format!("{} delivered", N - 2)), "{e}");
    let got = server.accepted();
    let subjects: BTreeSet<String> = got.iter().map(|m| subject_of(&m.data)).collect();
    assert_eq!(subjects.len(), N, "every message delivered");
    assert_eq!(got.len(), N);
    // The server saw the third message twice (its first final reply was lost): at most one
    // duplicate, and it was reported above.
    let seen = server.messages().len();
    assert!(seen - N <= 1, "{seen} transmissions for {N} messages");
    assert_eq!(env.queue_count().await, 0);
    assert!(!env.spool.join("corrupt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_moved_aside_with_a_warning_and_the_run_goes_on() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), "");
    for s in ["first", "second"] {
        let o = env.send(&["-odq"], s).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    // Truncate one entry's metadata, as a crash of something else might.
    let meta = std::fs::read_dir(env.spool.join("meta"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let text = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &text[..text.len() / 2]).unwrap();
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("warning: queue entry") && e.contains("is corrupt"),
        "{e}"
    );
    assert!(e.contains("1 delivered"), "{e}");
    assert_eq!(server.accepted().len(), 1);
    assert_eq!(env.queue_count().await, 0);
    assert_eq!(
        std::fs::read_dir(env.spool.join("corrupt"))
            .unwrap()
            .count(),
        2,
        "metadata and body kept in corrupt/"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_with_oauth_queues_only_pending_recipients_and_logs_each_delivery() {
    let server = FakeM365::start(
        FakeConfig::submission()
            .user("app@contoso.com", "tok-123")
            .rule(
                Rule::reply(
                    Phase::Rcpt,
                    "451 4.7.500 Access denied, please try again later",
                )
                .matching("later@")
                .times(1),
            ),
    )
    .await;
    let env = BinEnv::new();
    let token = env.dir.path().join("token");
    std::fs::write(&token, "tok-123\n").unwrap();
    let log = env.dir.path().join("m365send.log");
    let text = format!(
        r#"default_profile = "app"
spool_dir = "{spool}"
dead_letter = "{dead}"

[log]
file = "{log}"

[profiles.app]
mode = "submit"
mailbox = "app@contoso.com"
rate_per_minute = 0

[profiles.app.auth]
method = "oauth"
token = {{ file = "{token}" }}

[profiles.app.endpoint]
host = "localhost"
port = {port}

[profiles.app.tls]
ca_file = "{ca}"

[profiles.app.retry]
attempts = 1
"#,
        spool = env.spool.display(),
        dead = env.dead.display(),
        log = log.display(),
        token = token.display(),
        port = server.port(),
        ca = server.ca_file().display(),
    );
    std::fs::write(&env.config, text).unwrap();

    // ops@ gets it at once; later@ is refused for now: only later@ is queued.
    let o = env
        .run(
            &["-f", "app@contoso.com", RCPT, "later@contoso.com"],
            b"Subject: partial\n\nhello\n",
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let list = env.queue_list().await;
    assert_eq!(list["count"], 1);
    let e = &list["entries"][0];
    assert_eq!(e["recipients"], serde_json::json!(["later@contoso.com"]));
    assert_eq!(e["delivered"], serde_json::json!([RCPT]));
    assert_eq!(e["last_reply"]["enhanced"], "4.7.500");
    assert_eq!(server.accepted().len(), 1);

    // The runner logs in with XOAUTH2 and delivers to later@ only.
    env.make_due();
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = server.accepted();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].recipients, vec!["later@contoso.com".to_owned()]);
    assert_eq!(got[1].sender, "app@contoso.com");
    let conn = &server.connections()[got[1].connection];
    assert_eq!(conn.authenticated.as_deref(), Some("app@contoso.com"));
    assert_eq!(env.queue_count().await, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let last = text.lines().last().unwrap();
    assert!(
        last.contains("profile=app mode=submit")
            && last.contains("auth=XOAUTH2")
            && last.contains("recipients=later@contoso.com")
            && last.contains("exitcode=EX_OK"),
        "{text}"
    );
    assert!(!text.contains("tok-123"), "no secret in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odq_still_refuses_what_can_be_checked_offline() {
    let env = BinEnv::new();
    env.write_relay(dead_port(), None, "accepted_domains = [\"contoso.com\"]");
    let o = env
        .run(
            &["-odq", "-f", "root@fabrikam.com", RCPT],
            b"Subject: outside\n\nx\n",
        )
        .await;
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("outside the accepted domains"),
        "{}",
        stderr(&o)
    );
    assert_eq!(env.queue_count().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_server_and_mode_are_kept_with_the_entry() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    // The profile points nowhere; --server names the fake server and is remembered.
    env.write_relay(dead_port(), Some(server.ca_file()), "");
    let addr = format!("127.0.0.1:{}", server.port());
    let o = env.send(&["-odq", "--server", &addr], "elsewhere").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let id = env.queue_list().await["entries"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = env.run(&["queue", "show", &id], b"").await;
    assert!(
        stdout(&o).contains(&format!("server:       {addr}")),
        "{}",
        stdout(&o)
    );
    let o = env.run(&["queue", "run"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted().len(), 1);
    assert_eq!(env.queue_count().await, 0);
}

/// A queued message whose route is refused when the queue runs (here: its sender's domain was
/// removed from accepted_domains meanwhile) fails alone: the next message of the same group,
/// whose sender is fine, is delivered, not bounced with the other message's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_refusal_fails_only_its_own_message_not_the_group() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_relay(
        server.port(),
        Some(server.ca_file()),
        "accepted_domains = [\"contoso.com\", \"fabrikam.com\"]",
    );
    for (sender, subject) in [
        ("alerts@fabrikam.com", "from fabrikam"),
        ("alerts@contoso.com", "from contoso"),
    ] {
        let text = format!("Subject: {subject}\n\nx\n");
        let o = env
            .run(&["-odq", "-f", sender, RCPT], text.as_bytes())
            .await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        // Distinct creation seconds keep the order: fabrikam's entry is the group's first.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    env.write_relay(
        server.port(),
        Some(server.ca_file()),
        "accepted_domains = [\"contoso.com\"]",
    );
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let got = server.accepted();
    let subjects: Vec<String> = got
        .iter()
        .filter(|m| m.sender == "alerts@contoso.com")
        .map(|m| subject_of(&m.data))
        .collect();
    assert_eq!(subjects, vec!["from contoso"], "{}", stderr(&o));
    // The refused one is reported with its own reason (a bounce to its sender, or the
    // dead letter), and the queue is empty.
    let err = stderr(&o);
    assert!(err.contains("1 delivered"), "{err}");
    assert!(
        !got.iter().any(|m| subject_of(&m.data) == "from fabrikam"),
        "{err}"
    );
    assert_eq!(env.queue_count().await, 0, "{err}");
}

/// Queue `n` messages ("{prefix} {i}") from SENDER to RCPT without sending them.
async fn queue_messages(env: &BinEnv, prefix: &str, n: usize) {
    for i in 0..n {
        let o = env.send(&["-odq"], &format!("{prefix} {i}")).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
}

/// The messages the server accepted with this subject.
fn accepted_with(server: &FakeM365, subject: &str) -> usize {
    server
        .accepted()
        .iter()
        .filter(|m| subject_of(&m.data) == subject)
        .count()
}

/// A reused connection with PIPELINING and CHUNKING: each message is one write (MAIL, RCPT,
/// BDAT LAST and the body), written before the last message's replies are read; the RSET
/// that leads a message written behind an unread one goes in that same write, never alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_run_sends_one_write_per_message_with_rset_only_inside_it() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    queue_messages(&env, "flight", 3).await;
    let o = env.run(&["queue", "run"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted().len(), 3);
    let conns = server.connections();
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    let wire = String::from_utf8_lossy(&c.bytes()).into_owned();
    for (i, m) in server.accepted().iter().enumerate() {
        let flight = format!(
            "MAIL FROM:<alerts@contoso.com> SIZE={n}\r\nRCPT TO:<{RCPT}>\r\nBDAT {n} LAST\r\n{}",
            std::str::from_utf8(&m.data).unwrap(),
            n = m.data.len()
        );
        assert!(wire.contains(&flight), "message {i} in one piece: {wire}");
    }
    // Messages 2 and 3 were written behind an unread one: RSET leads them, in the same
    // flight as their MAIL (it never costs a round trip of its own).
    let rsets = c.commands.iter().filter(|l| *l == "RSET").count();
    assert_eq!(rsets, 2, "{:?}", c.commands);
    assert_eq!(wire.matches("RSET\r\n").count(), 2);
    assert_eq!(
        wire.matches("RSET\r\nMAIL FROM:<alerts@contoso.com>")
            .count(),
        2
    );
    assert!(
        !c.flights.iter().any(|f| f.ends_with(b"RSET\r\n")),
        "RSET never waits for its reply: {:?}",
        c.flights_after_tls()
    );
    assert_eq!(c.commands.last().map(String::as_str), Some("QUIT"));
}

/// Where messages are not overlapped (no CHUNKING: DATA waits for its 354), a transaction
/// that ended cleanly is followed by the next MAIL without RSET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_run_sends_no_rset_between_clean_transactions() {
    let server = FakeM365::start(FakeConfig::mx().without(&["CHUNKING"])).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    queue_messages(&env, "clean", 3).await;
    let o = env.run(&["queue", "run"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.accepted().len(), 3);
    let c = &server.connections()[0];
    assert!(!c.commands.iter().any(|l| l == "RSET"), "{:?}", c.commands);
    assert_eq!(
        c.commands
            .iter()
            .filter(|l| l.starts_with("MAIL FROM"))
            .count(),
        3
    );
}

/// A relay profile on one connection to a server that holds its reply to the first message's
/// end of data until the next MAIL arrives (or 2 s pass).
async fn holding_first_reply() -> (FakeM365, BinEnv) {
    let server = FakeM365::start(
        FakeConfig::mx().rule(Rule::hold_until(Phase::DataEnd, "MAIL FROM").times(1)),
    )
    .await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    (server, env)
}

/// `queue run` delivers the two queued messages on one connection; whether the held reply
/// saw the next MAIL first.
async fn drain_two_on_one_connection(server: &FakeM365, env: &BinEnv) -> Vec<bool> {
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("2 delivered"), "{}", stderr(&o));
    let conns = server.connections();
    assert_eq!(conns.len(), 1);
    conns[0].holds.clone()
}

/// Two queued messages on one connection: the second message's flight reaches the server
/// before it answers the first message's BDAT LAST (the server holds that reply until it
/// has the second MAIL: a client waiting for it would make it wait 2 s in vain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_run_writes_the_next_message_before_reading_the_last_ones_reply() {
    let (server, env) = holding_first_reply().await;
    queue_messages(&env, "overlap", 2).await;
    let holds = drain_two_on_one_connection(&server, &env).await;
    assert_eq!(holds, vec![true], "message 2's MAIL came first");
    assert_eq!(accepted_with(&server, "overlap 0"), 1);
    assert_eq!(accepted_with(&server, "overlap 1"), 1);
    assert_eq!(env.queue_count().await, 0);
}

/// A body larger than fits in the socket buffers (here 200 KB) is never written behind an
/// unread flight: a server still busy with the first message would stall the write, and a
/// write that timed out would end the connection with the first message's reply unread (and
/// it sent again). It waits for the first message's replies, then goes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_not_written_behind_an_unread_one() {
    let (server, env) = holding_first_reply().await;
    queue_messages(&env, "small", 1).await;
    let big = format!(
        "To: {RCPT}\nSubject: large 0\n\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(3200)
    );
    let o = env
        .run(&["-odq", "-f", "alerts@contoso.com", "-t"], big.as_bytes())
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let holds = drain_two_on_one_connection(&server, &env).await;
    assert_eq!(holds, vec![false], "the large message was written behind");
    assert_eq!(accepted_with(&server, "small 0"), 1);
    assert_eq!(accepted_with(&server, "large 0"), 1);
    assert_eq!(env.queue_count().await, 0);
}

/// The sender of one message refused (550 5.7.60) while the next message is already on the
/// wire behind it: that one is refused and bounced, the next delivered as if alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sender_does_not_touch_the_message_written_behind_it() {
    const BLOCKED: &str = "blocked@contoso.com";
    let server = FakeM365::start(
        FakeConfig::mx()
            .rule(
                Rule::hold_until(Phase::Mail, "MAIL FROM:<alerts")
                    .matching(BLOCKED)
                    .times(1),
            )
            .rule(Rule::reply(Phase::Mail, SEND_AS_REFUSED).matching(BLOCKED)),
    )
    .await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    let text = format!("From: {BLOCKED}\nTo: {RCPT}\nSubject: refused\n\nbody\n");
    let o = env
        .run(&["-odq", "-f", BLOCKED, RCPT], text.as_bytes())
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    queue_messages(&env, "behind", 1).await;
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    // Delivered: the message behind and the bounce.
    assert!(
        err.contains("2 delivered") && err.contains("1 bounced"),
        "{err}"
    );
    assert_eq!(server.connections()[0].holds, vec![true], "overlapped");
    assert_eq!(accepted_with(&server, "behind 0"), 1);
    assert_eq!(accepted_with(&server, "refused"), 0);
    // The bounce (null sender, to the refused sender) is the only other message.
    let bounces: Vec<_> = server
        .accepted()
        .into_iter()
        .filter(|m| m.sender.is_empty())
        .collect();
    assert_eq!(bounces.len(), 1);
    assert_eq!(bounces[0].recipients, vec![BLOCKED.to_owned()]);
    assert_eq!(env.queue_count().await, 0);
}

/// Two messages queued and drained while the server answers the first one's BDAT LAST
/// with `reply` and closes, the second one's flight already written: the first run reports
/// `first_run` (delivered only with a 250 read) and leaves `left` queued; the next run
/// delivers those, and each message arrives exactly once.
async fn closed_with_two_in_flight(reply: &str, prefix: &str, first_run: &str, left: u64) {
    let server = FakeM365::start(
        FakeConfig::mx().rule(Rule::reply_and_close(Phase::DataEnd, reply).times(1)),
    )
    .await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    queue_messages(&env, prefix, 2).await;
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains(first_run), "{}", stderr(&o));
    assert_eq!(server.accepted().len() as u64, 2 - left);
    assert_eq!(env.queue_count().await, left);
    env.make_due();
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(accepted_with(&server, &format!("{prefix} 0")), 1);
    assert_eq!(accepted_with(&server, &format!("{prefix} 1")), 1);
    assert_eq!(env.queue_count().await, 0);
}

/// The server closes the connection after answering the first message, with the second
/// message's flight already written: the second is not reported delivered, stays queued,
/// and the next run delivers it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_closed_after_the_first_reply_retries_the_second_message_once() {
    let reply = "250 2.0.0 OK queued as 1";
    closed_with_two_in_flight(reply, "closed", "1 delivered, 1 deferred", 1).await;
}

/// 421 to the first message's BDAT LAST with the second one in flight: neither is
/// reported delivered; both are delivered once by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_with_two_messages_in_flight_delivers_neither_then_both_once() {
    let reply = "421 4.3.2 Service shutting down";
    closed_with_two_in_flight(reply, "shutdown", "2 deferred", 2).await;
}

/// Fifty queued messages on one connection, two at a time in flight: each delivered once,
/// in one session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_messages_on_one_connection_are_each_delivered_once() {
    const N: usize = 50;
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), ONE_CONNECTION);
    queue_messages(&env, "one connection", N).await;
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{N} delivered")),
        "{}",
        stderr(&o)
    );
    assert_eq!(server.connections().len(), 1);
    let got = server.accepted();
    assert_eq!(got.len(), N, "no message twice");
    let subjects: BTreeSet<String> = got.iter().map(|m| subject_of(&m.data)).collect();
    let want: BTreeSet<String> = (0..N).map(|i| format!("one connection {i}")).collect();
    assert_eq!(subjects, want, "each message once");
    assert_eq!(env.queue_count().await, 0);
}

/// `queue_connections = 2`: two connections share the queue, each message goes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_deliver_fifty_messages_exactly_once() {
    const N: usize = 50;
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::new();
    env.write_relay(
        server.port(),
        Some(server.ca_file()),
        "queue_connections = 2",
    );
    for i in 0..N {
        let o = env.send(&["-odq"], &format!("parallel {i}")).await;
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("{N} delivered")),
        "{}",
        stderr(&o)
    );
    let got = server.accepted();
    assert_eq!(got.len(), N, "no message twice");
    let subjects: BTreeSet<String> = got.iter().map(|m| subject_of(&m.data)).collect();
    let want: BTreeSet<String> = (0..N).map(|i| format!("parallel {i}")).collect();
    assert_eq!(subjects, want, "each message once");
    assert_eq!(server.connections().len(), 2);
    for c in 0..2 {
        assert!(
            got.iter().any(|m| m.connection == c),
            "connection {c} carried no message"
        );
    }
    assert_eq!(env.queue_count().await, 0);
}

/// A queued message with 5000 recipients against a server that takes 500 per transaction and
/// closes after 20 errors (Postfix's way): the first transaction teaches the limit, the
/// queue runner reconnects at once and sends smaller transactions; everyone gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_message_with_5000_recipients_against_a_500_limit() {
    let server = FakeM365::start(FakeConfig::mx().max_recipients(500).error_limit(20)).await;
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), "");
    let rcpts: Vec<String> = (0..5000).map(|i| format!("user{i}@contoso.com")).collect();
    let mut args = vec!["-odq", "-f", SENDER];
    args.extend(rcpts.iter().map(String::as_str));
    let o = env.run(&args, b"Subject: everyone\n\nhello\n").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["queue", "run", "-v"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 delivered"), "{}", stderr(&o));
    let got = server.accepted();
    assert!(got.iter().all(|m| m.recipients.len() == 500), "500 each");
    let mut all: Vec<&String> = got.iter().flat_map(|m| &m.recipients).collect();
    assert_eq!(all.len(), 5000, "no one twice");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 5000, "everyone");
    assert_eq!(
        server.connections().len(),
        2,
        "one lesson, one reconnection"
    );
    assert_eq!(env.queue_count().await, 0);
}

/// A shared spool: an entry another user (nobody) wrote, naming a server of theirs, is not
/// delivered by root's `queue run` — that server hears nothing — and is left in the queue.
/// A spool writable by others is refused before anything is queued in it, the message kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_runner_never_sends_another_users_entry() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let env = BinEnv::new();
    env.write_relay(dead_port(), None, "");
    let attacker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    attacker.set_nonblocking(true).unwrap();
    let evil = format!("127.0.0.1:{}", attacker.local_addr().unwrap().port());
    let o = env.send(&["-odq", "--server", &evil], "theirs").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for sub in ["meta", "msg"] {
        for de in std::fs::read_dir(env.spool.join(sub)).unwrap() {
            std::os::unix::fs::chown(de.unwrap().path(), Some(65534), None).unwrap();
        }
    }
    let o = env.run(&["-v", "queue", "run"], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("was written by uid 65534"), "{e}");
    assert!(e.contains("1 left alone (written by another user)"), "{e}");
    assert!(
        attacker.accept().is_err(),
        "the runner connected to the other user's server"
    );
    assert_eq!(env.queue_count().await, 1);

    // A spool others may write: refused with the reason; the message goes to the dead letter.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env.spool, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let o = env.send(&["-odq"], "loose").await;
    assert_eq!(o.status.code(), Some(73), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("writable by others (mode 1777)"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read_to_string(&env.dead)
            .unwrap()
            .contains("Subject: loose")
    );
    let o = env.run(&["queue", "run"], b"").await;
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
}
