//! A caller that closed stderr or stdout (a daemon, a pipe whose reader went away) must never
//! cost a message or the exit code: no panic (101), delivery as usual, sysexits codes as usual.
//! The real binary, with the closed end of a pipe as its stderr/stdout, against the fake
//! Microsoft 365 server on 127.0.0.1.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/fake_m365.rs"]
mod fake_m365;

use bin_env::{BinEnv, closed_pipe};
use fake_m365::{FakeConfig, FakeM365, Phase, Rule};

const MSG: &[u8] = b"From: alerts@contoso.com\nTo: ops@contoso.com\nSubject: nightly\n\nall good\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stderr_never_stops_delivery_with_or_without_v() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = BinEnv::relay(server.port(), Some(server.ca_file()));
    for (i, verbose) in [&[][..], &["-v"][..], &["-v", "-v"][..]].iter().enumerate() {
        let mut args = verbose.to_vec();
        args.extend(["-f", "alerts@contoso.com", "ops@contoso.com"]);
        let mut c = env.command(&args);
        c.stderr(closed_pipe());
        let o = env.run_with(c, MSG).await;
        assert_eq!(o.status.code(), Some(0), "{verbose:?}: no panic, exit 0");
        assert_eq!(server.accepted().len(), i + 1, "{verbose:?}: delivered");
    }
    assert_eq!(env.dead_letter(), "", "nothing kept: all delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stderr_keeps_the_exit_code_and_the_dead_letter_of_a_refusal() {
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::Rcpt,
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    )))
    .await;
    let env = BinEnv::relay(server.port(), Some(server.ca_file()));
    for verbose in [&[][..], &["-v"][..]] {
        let mut args = verbose.to_vec();
        args.extend(["-f", "alerts@contoso.com", "nobody@contoso.com"]);
        let mut c = env.command(&args);
        c.stderr(closed_pipe());
        let o = env.run_with(c, MSG).await;
        assert_eq!(
            o.status.code(),
            Some(67),
            "{verbose:?}: EX_NOUSER, not a panic"
        );
    }
    assert_eq!(env.dead_letter().matches("Subject: nightly").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_stdout_and_stderr_for_queue_list_explain_and_dry_run() {
    // Nothing listens: -odq queues without connecting, so `queue list` has a line to print.
    let env = BinEnv::relay(9, None);
    let o = env
        .run(
            &["-odq", "-f", "alerts@contoso.com", "ops@contoso.com"],
            MSG,
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", bin_env::stderr(&o));

    let cases: &[(&[&str], i32)] = &[
        (&["queue", "list"], 0),
        (&["-bp"], 0),
        (&["queue", "list", "--json"], 0),
        (&["explain", "5.7.60"], 0),
        (&["explain", "nonsense"], 64),
        (
            &["--dry-run", "-f", "alerts@contoso.com", "ops@contoso.com"],
            0,
        ),
        (
            &[
                "-v",
                "--dry-run",
                "-f",
                "alerts@contoso.com",
                "ops@contoso.com",
            ],
            0,
        ),
        (&["-v", "queue", "run"], 0),
    ];
    for (args, code) in cases {
        for close_stderr in [false, true] {
            let mut c = env.command(args);
            c.stdout(closed_pipe());
            if close_stderr {
                c.stderr(closed_pipe());
            }
            let o = env.run_with(c, MSG).await;
            assert_eq!(
                o.status.code(),
                Some(*code),
                "{args:?} (stderr closed: {close_stderr}): {}",
                bin_env::stderr(&o)
            );
        }
    }
    // The queued message is still there (the queue run could not connect, and kept it).
    assert_eq!(env.queue_count().await, 1);
}
