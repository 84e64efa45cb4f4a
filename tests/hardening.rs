//! Security hardening end to end (issue 10): the real `m365send` binary against the fake
//! Microsoft 365 server on 127.0.0.1, as an attacker on a multi-user host would use it.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/fake_m365.rs"]
mod fake_m365;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use bin_env::{BinEnv, stderr, stdout};
use fake_m365::{FakeConfig, FakeM365, Phase, Rule};
use tokio::io::AsyncWriteExt;

/// The binary's environment with its relay profile pointed at the fake server; `extra`: more
/// keys of the profile, or tables (a `[log]` table...).
fn site(server: &FakeM365, extra: &str) -> BinEnv {
    let env = BinEnv::new();
    env.write_relay(server.port(), Some(server.ca_file()), extra);
    env
}

/// The files in a spool subdirectory (meta, failed...), sorted.
fn files_in(env: &BinEnv, sub: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(env.spool.join(sub)) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Finding 1: each SMTP smuggling variant in a `-bs` dialogue. Exactly one message reaches
/// the server, with the would-be second transaction inside its text; the second MAIL FROM
/// never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bs_smuggling_sends_one_message_and_never_the_smuggled_mail_from() {
    for (name, end) in [
        ("<LF>.<LF>", "\n.\n"),
        ("<LF>.<CR><LF>", "\n.\r\n"),
        ("<CR><LF>.<LF>", "\r\n.\n"),
    ] {
        let server = FakeM365::start(FakeConfig::mx()).await;
        let site = site(&server, "");
        let dialogue = format!(
            "EHLO app.example\r\nMAIL FROM:<alerts@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\n\
DATA\r\nFrom: alerts@contoso.com\r\nSubject: report\r\n\r\nuser text{end}\
MAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim@fabrikam.com>\r\nDATA\r\n\
From: ceo@contoso.com\r\nSubject: wire the money\r\n\r\nnow\r\n.\r\nQUIT\r\n"
        );
        let o = site.run(&["-bs"], dialogue.as_bytes()).await;
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let replies = stdout(&o);
        assert_eq!(
            replies.matches("250 2.1.0 Sender OK").count(),
            1,
            "{name}: {replies}"
        );
        let got = server.messages();
        assert_eq!(got.len(), 1, "{name}: one message reaches the server");
        assert_eq!(got[0].sender, "alerts@contoso.com", "{name}");
        assert_eq!(got[0].recipients, vec!["ops@contoso.com"], "{name}");
        let text = String::from_utf8_lossy(&got[0].data);
        assert!(
            text.contains("user text\r\n.\r\nMAIL FROM:<ceo@contoso.com>\r\n"),
            "{name}: {text}"
        );
        for c in server.connections() {
            assert!(
                !c.commands.iter().any(|c| c.contains("ceo@contoso.com")),
                "{name}: {:?}",
                c.commands
            );
        }
    }
}

/// Finding 5: the queue runner meets a permanent failure it cannot bounce (`-N never`) and
/// the dead letter cannot be written (root's home read-only under the shipped unit; here:
/// HOME is a file). The entry goes to SPOOL/failed/, durably, and is then removed from the
/// queue; nothing is written to /var/tmp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_keeps_an_undeliverable_entry_in_failed_when_the_dead_letter_cannot_be_written() {
    let server =
        FakeM365::start(FakeConfig::mx().rule(Rule::reply(Phase::Rcpt, "550 5.1.10 No such user")))
            .await;
    let site = site(&server, "");
    // No dead_letter configured: the default, $HOME/dead.letter.
    let text = std::fs::read_to_string(&site.config).unwrap();
    let text: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("dead_letter"))
        .collect();
    std::fs::write(&site.config, text.join("\n")).unwrap();
    let message = b"From: alerts@contoso.com\nSubject: keep me\n\nthe only copy\n";
    let o = site
        .run(
            &[
                "-odq",
                "-N",
                "never",
                "-f",
                "alerts@contoso.com",
                "gone@contoso.com",
            ],
            message,
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(files_in(&site, "meta").len(), 1);

    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let var_tmp = PathBuf::from(format!("/var/tmp/m365send-dead.letter.{uid}"));
    let before = std::fs::metadata(&var_tmp).map(|m| m.len()).ok();

    let home_file = site.dir.path().join("home-is-a-file");
    std::fs::write(&home_file, b"").unwrap();
    let mut run = site.command(&["queue", "run", "-v"]);
    run.env("HOME", &home_file);
    let o = site.run_with(run, b"").await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("kept in failed/"), "{err}");
    assert!(err.contains("cannot write the dead letter"), "{err}");

    let failed = files_in(&site, "failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    let eml = failed
        .iter()
        .find(|p| p.extension().unwrap() == "eml")
        .unwrap();
    let kept = std::fs::read_to_string(eml).unwrap();
    assert!(kept.contains("the only copy"), "{kept}");
    for f in &failed {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    assert!(files_in(&site, "meta").is_empty(), "removed only once kept");
    assert_eq!(
        std::fs::metadata(&var_tmp).map(|m| m.len()).ok(),
        before,
        "nothing written to {}",
        var_tmp.display()
    );
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A reply within the reader's limits but huge: 500 lines of `line_len` bytes.
fn huge_reply(code: u16, enhanced: &str, line_len: usize) -> String {
    let filler = "y".repeat(line_len);
    let mut r = String::with_capacity(500 * (line_len + 40));
    for i in 0..499 {
        r.push_str(&format!("{code}-{enhanced} line {i} {filler}\r\n"));
    }
    r.push_str(&format!("{code} {enhanced} the end"));
    r
}

/// The peak RSS of a running process (its own high-water mark, VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Finding 11: 8 MB replies (500 lines of 16 KB; the reader allows 512 of 64 KB) are quoted
/// capped, with their codes, on the `-bs` client's reply, on stderr, in the log line and in the
/// queue metadata, and the process's peak memory stays small. `-bs` keeps the process alive
/// after both messages, so its own high-water mark can be read before QUIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_replies_are_capped_in_errors_logs_and_queue_metadata() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let server = FakeM365::start(
        FakeConfig::mx()
            .rule(Rule::reply(Phase::Rcpt, &huge_reply(550, "5.1.10", 16_000)).matching("perm@"))
            .rule(Rule::reply(Phase::Mail, &huge_reply(451, "4.7.500", 16_000)).matching("temp@")),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log_file = dir.path().join("m365send.log");
    let site = site(
        &server,
        &format!("\n[log]\nfile = \"{}\"\n", log_file.display()),
    );
    let dead = site.dead.clone();
    let mut child = site
        .command(&["-bs"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut replies = BufReader::new(child.stdout.take().unwrap()).lines();
    stdin
        .write_all(
            b"EHLO c\r\nMAIL FROM:<alerts@contoso.com>\r\nRCPT TO:<perm@contoso.com>\r\n\
DATA\r\nSubject: one\r\n\r\nx\r\n.\r\n\
MAIL FROM:<temp@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nSubject: two\r\n\r\ny\r\n.\r\n",
        )
        .await
        .unwrap();
    // The replies to both ends of data: the first refused, the second queued.
    let mut ends: Vec<String> = Vec::new();
    while ends.len() < 2 || ends[1].is_empty() {
        let line = replies.next_line().await.unwrap().unwrap();
        if line.starts_with("354 ") {
            ends.push(String::new());
        } else if let Some(last) = ends.last_mut()
            && last.is_empty()
            && !line.starts_with("250 2.1")
        {
            *last = line;
        }
    }
    let peak = peak_rss_kib(child.id().unwrap());
    stdin.write_all(b"QUIT\r\n").await.unwrap();
    drop(stdin);
    let o = child.wait_with_output().await.unwrap();
    let err = stderr(&o);
    eprintln!("peak RSS of m365send -bs: {} KiB", peak);

    assert!(ends[0].starts_with("550 5.1.1 "), "{}", &ends[0]);
    assert!(ends[0].contains("[reply cut: "), "{}", &ends[0]);
    assert!(ends[0].len() < 6_000, "{} bytes", ends[0].len());
    assert!(
        ends[1].starts_with("250 2.0.0 Message queued"),
        "{}",
        &ends[1]
    );
    assert!(err.len() < 12_000, "stderr is {} bytes", err.len());

    let metas = files_in(&site, "meta");
    assert_eq!(metas.len(), 1);
    let meta = std::fs::read_to_string(&metas[0]).unwrap();
    assert!(meta.len() < 12_000, "metadata is {} bytes", meta.len());
    let v: serde_json::Value = serde_json::from_str(&meta).unwrap();
    assert_eq!(v["last_reply"]["code"], 451);
    assert_eq!(v["last_reply"]["enhanced"], "4.7.500");
    let text = v["last_reply"]["text"].as_str().unwrap();
    assert!(text.starts_with("4.7.500 line 0 yyy"), "{}", &text[..100]);
    assert!(
        text.contains("[reply cut: "),
        "{}",
        &text[text.len() - 200..]
    );

    let log_text = std::fs::read_to_string(&log_file).unwrap();
    let lines: Vec<&str> = log_text.lines().collect();
    assert_eq!(lines.len(), 2, "one line per message");
    for l in &lines {
        assert!(l.len() < 12_000, "log line is {} bytes", l.len());
        assert!(l.contains("[reply cut: "), "{}", &l[..l.len().min(300)]);
    }
    assert!(
        lines[0].contains("smtpstatus=550 smtpmsg='550 5.1.10 line 0 yyy"),
        "{}",
        &lines[0][..300]
    );
    let dead_text = std::fs::read_to_string(&dead).unwrap();
    assert!(
        dead_text.len() < 12_000,
        "dead letter is {} bytes",
        dead_text.len()
    );

    assert!(peak < 48 * 1024, "peak RSS {peak} KiB");
}

/// Finding 12: headers with terminal control sequences (a web form's Subject) are shown
/// escaped by `--dry-run` and `queue show`, never sent raw to the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_queue_show_escape_terminal_control_characters() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let site = site(&server, "");
    let message = "From: alerts@contoso.com\nSubject: \x1b]0;owned\x07\x1b[2J hi\u{9b}31m\n\
X-Folded: a\n\tb\n\nbody\n";
    let args = ["-f", "alerts@contoso.com", "ops@contoso.com"];

    let mut dry = vec!["--dry-run"];
    dry.extend_from_slice(&args);
    let o = site.run(&dry, message.as_bytes()).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Subject: \\x1b]0;owned\\x07\\x1b[2J hi\\u{9b}31m"),
        "{out}"
    );
    assert!(
        out.contains("\n  \tb\n"),
        "folded line keeps its TAB: {out}"
    );
    assert_no_controls(&out);
    assert!(
        server.connections().is_empty(),
        "a dry run connects nowhere"
    );

    let mut queued = vec!["-odq"];
    queued.extend_from_slice(&args);
    let o = site.run(&queued, message.as_bytes()).await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let meta = files_in(&site, "meta");
    let id = meta[0].file_stem().unwrap().to_str().unwrap();
    let o = site.run(&["queue", "show", id], b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("Subject: \\x1b]0;owned\\x07\\x1b[2J hi\\u{9b}31m"),
        "{out}"
    );
    assert_no_controls(&out);
}

/// No control character but LF and TAB.
fn assert_no_controls(out: &str) {
    for c in out.chars() {
        assert!(
            !c.is_control() || c == '\n' || c == '\t',
            "raw {c:?} in the output: {out:?}"
        );
    }
}

/// Finding 12: `--subject` and `--header` refuse control characters other than TAB (exit 65).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_and_header_options_refuse_control_characters() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let site = site(&server, "");
    let base = [
        "--from",
        "alerts@contoso.com",
        "--to",
        "ops@contoso.com",
        "--body",
        "x",
    ];
    for (opt, value, shown) in [
        ("--subject", "\x1b[2J", "'\\u{1b}'"),
        ("--subject", "ring\x07", "'\\u{7}'"),
        ("--subject", "a\x0bb", "'\\u{b}'"),
        ("--subject", "a\x0cb", "'\\u{c}'"),
        ("--subject", "a\u{9b}b", "'\\u{9b}'"),
        ("--header", "X-Note: \x1b]0;t\x07", "'\\u{1b}'"),
        ("--header", "X-Note: a\x7fb", "'\\u{7f}'"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(&[opt, value]);
        let o = site.run(&args, b"").await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(65), "{opt} {value:?}: {err}");
        assert!(err.contains("control character"), "{err}");
        assert!(err.contains(shown), "{shown}: {err}");
        assert_no_controls(&err);
    }
    assert!(server.messages().is_empty());

    // TAB is allowed.
    let mut args = vec!["--dry-run"];
    args.extend_from_slice(&base);
    args.extend_from_slice(&["--subject", "a\tb", "--header", "X-Note: c\td"]);
    let o = site.run(&args, b"").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}
