//! mode = "graph" end to end: the real binary, a configuration file in a temporary directory,
//! and the fake Microsoft Graph (tests/support/fake_graph.rs) on 127.0.0.1 over HTTPS with a
//! test CA. What is asserted is what a user and Graph see: the requests, the MIME Graph
//! received, whom it went to, the exit code, stderr, the queue, and that no token shows.

#[path = "support/fake_graph.rs"]
mod fake_graph;
#[path = "support/fake_m365.rs"]
mod fake_m365;
#[path = "support/http.rs"]
mod http;
#[path = "support/token_server.rs"]
mod token_server;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fake_graph::{Accept, FakeGraph, Rule, UPLOAD_SECRET};

const BIN: &str = env!("CARGO_BIN_EXE_m365send");
const TOKEN: &str = "graph-tok-7c1e0b55-very-secret";
const MAILBOX: &str = "app@contoso.com";

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    /// A graph profile "g" pointing at `server`, with `extra` lines in the profile.
    fn new(server: &FakeGraph, extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let text = format!(
            r#"default_profile = "g"
spool_dir = "{d}/spool"
dead_letter = "{d}/dead.letter"
cache_dir = "{d}/cache"

[profiles.g]
mode = "graph"
mailbox = "{MAILBOX}"
sender = "{MAILBOX}"
max_size = 157286400
{extra}

[profiles.g.endpoint]
host = "127.0.0.1"
port = {port}

[profiles.g.tls]
ca_file = "{ca}"

[profiles.g.auth]
token = {{ env = "GRAPH_TEST_TOKEN" }}

[profiles.g.retry]
attempts = 1
initial_delay_ms = 10
"#,
            d = dir.path().display(),
            port = server.port(),
            ca = server.ca_file().display(),
        );
        std::fs::write(&config, text).unwrap();
        Env { dir, config }
    }

    fn with_config(text: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let text = text.replace("@DIR@", &dir.path().display().to_string());
        std::fs::write(&config, text).unwrap();
        Env { dir, config }
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.run_measured(args, Input::Bytes(stdin)).0
    }

    /// The binary with this configuration and no proxy from the environment; stdout and
    /// stderr piped.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("M365SEND_CONFIG", &self.config)
            .env("HOME", self.dir.path())
            .env("GRAPH_TEST_TOKEN", TOKEN)
            .env_remove("M365SEND_LOG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Run, and measure the child's memory (see [`Memory`]).
    // The child is reaped with wait4 (for its rusage), not Child::wait.
    #[allow(clippy::zombie_processes)]
    fn run_measured(&self, args: &[&str], stdin: Input<'_>) -> (Output, Memory) {
        let mut c = self.command(args);
        let data = match stdin {
            Input::Bytes(b) => {
                c.stdin(Stdio::piped());
                Some(b.to_vec())
            }
            Input::File(f) => {
                c.stdin(Stdio::from(f));
                None
            }
        };
        // Linux records the spawning process's RSS high-water mark into the child's
        // ru_maxrss when the child execs (posix_spawn shares this process's memory until
        // then): reset ours to what is resident now, and say what that was.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let parent = vm_kib(
            &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
            "VmRSS",
        );
        let mut child = c.spawn().unwrap();
        let writer = data.map(|data| {
            let mut input = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = input.write_all(&data);
            })
        });
        let mut out_pipe = child.stdout.take().unwrap();
        let mut err_pipe = child.stderr.take().unwrap();
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out_pipe, &mut v);
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err_pipe, &mut v);
            v
        });
        let mut status: libc::c_int = 0;
        // SAFETY: zeroed rusage is a valid value; wait4 fills it and the status we own.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = child.id() as libc::pid_t;
        let proc_status = format!("/proc/{pid}/status");
        let mut hwm = 0;
        loop {
            // Until it is reaped, the pid is this child's (a zombie has no VmHWM line).
            hwm = hwm.max(vm_kib(
                &std::fs::read_to_string(&proc_status).unwrap_or_default(),
                "VmHWM",
            ));
            // SAFETY: waiting for our own child, once reaped (std's Child is not waited for).
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if r == pid {
                break;
            }
            assert_eq!(r, 0, "wait4: {}", std::io::Error::last_os_error());
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(w) = writer {
            let _ = w.join();
        }
        let out = Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(status),
            stdout: out_t.join().unwrap(),
            stderr: err_t.join().unwrap(),
        };
        let tv = |t: libc::timeval| {
            Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64)
        };
        let memory = Memory {
            maxrss: usage.ru_maxrss,
            hwm,
            parent,
            cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        };
        (out, memory)
    }
}

/// A child's stdin.
enum Input<'a> {
    Bytes(&'a [u8]),
    File(std::fs::File),
}

/// The memory of one run of the binary, in KiB.
#[derive(Debug)]
struct Memory {
    /// wait4's ru_maxrss: the larger of the child's own peak RSS and this test process's
    /// RSS high-water mark when the child exec'd (which `run_measured` resets just before):
    /// an upper bound of the child's peak (to the kernel's counting slack, a few hundred
    /// KiB), and the child's peak itself whenever that is the larger, as it is when this
    /// process holds no big message. (The test that used to read it while holding the
    /// 81 MB message three times over saw its own 235 MB, not m365send's.)
    maxrss: i64,
    /// The child's own VmHWM, sampled every 5 ms while it ran: its peak up to the last
    /// sample (a lower bound).
    hwm: i64,
    /// This test process's RSS just before the spawn.
    parent: i64,
    /// The child's CPU time (user and system).
    cpu: Duration,
}

/// `NAME:  123 kB` from /proc/PID/status, in KiB (0 when absent).
fn vm_kib(status: &str, name: &str) -> i64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// No secret in anything the user sees.
fn assert_no_secret(o: &Output) {
    for s in [
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    ] {
        assert!(!s.contains(TOKEN), "token in output:\n{s}");
        assert!(
            !s.contains(UPLOAD_SECRET),
            "upload URL credential in output:\n{s}"
        );
    }
}

fn header_block(mime: &[u8]) -> String {
    let text = String::from_utf8_lossy(mime);
    text.split("\r\n\r\n").next().unwrap_or("").to_owned()
}

#[test]
fn small_message_is_one_sendmail_with_the_prepared_mime() {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let env = Env::new(&server, "");
    let msg = "From: app@contoso.com\nTo: ops@contoso.com\nSubject: backup done\nMessage-ID: <x1@contoso.com>\nDate: Thu, 1 Jan 2026 00:00:00 +0000\n\nall good\n";
    let o = env.run(&["-v", "-i", "ops@contoso.com"], msg.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_secret(&o);
    assert_eq!(server.shorts(), vec!["POST sendMail"]);
    let req = &server.requests()[0];
    assert_eq!(req.path, "/v1.0/users/app@contoso.com/sendMail");
    assert_eq!(req.header("content-type"), Some("text/plain"));
    assert_eq!(
        req.bearer(),
        Some(TOKEN),
        "the bearer token is the profile's"
    );
    let sent = server.sent();
    assert_eq!(sent.len(), 1);
    // The bytes Graph got are the prepared message: the headers named exactly the envelope,
    // so nothing was rewritten.
    let mime = String::from_utf8(sent[0].mime.clone()).unwrap();
    assert!(
        mime.starts_with(
            "From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: backup done\r\n"
        ),
        "{mime}"
    );
    assert!(mime.ends_with("\r\n\r\nall good\r\n"), "{mime}");
    assert!(mime.contains("Message-ID: <x1@contoso.com>\r\n"));
    assert_eq!(sent[0].recipients(), vec!["ops@contoso.com"]);
    // -v: the transcript says what was sent, and the log line names Graph.
    let e = stderr(&o);
    assert!(
        e.contains("graph> POST /v1.0/users/app@contoso.com/sendMail"),
        "{e}"
    );
    assert!(e.contains("Authorization: Bearer <redacted>"), "{e}");
    assert!(
        e.contains("mode=graph") && e.contains("auth=OAUTH2-GRAPH"),
        "{e}"
    );
}

#[test]
fn recipients_are_the_envelope_not_the_headers() {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let env = Env::new(&server, "");
    // `sendmail bob < msg` with To: alice: bob only; alice is not sent to nor shown.
    let msg = "From: app@contoso.com\nTo: Alice <alice@contoso.com>\nCc: carol@contoso.com\nSubject: s\n\nbody\n";
    let o = env.run(
        &["-i", "bob@contoso.com", "carol@contoso.com"],
        msg.as_bytes(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let sent = server.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].recipients(),
        vec!["bob@contoso.com", "carol@contoso.com"]
    );
    assert_eq!(sent[0].to, Vec::<String>::new(), "alice is gone from To");
    assert_eq!(sent[0].cc, vec!["carol@contoso.com"]);
    assert_eq!(sent[0].bcc, vec!["bob@contoso.com"]);
    let h = header_block(&sent[0].mime);
    assert!(!h.contains("alice"), "{h}");
    // The body is untouched.
    assert!(String::from_utf8_lossy(&sent[0].mime).ends_with("\r\n\r\nbody\r\n"));
}

#[test]
fn bcc_only_recipients_stay_hidden_and_two_hundred_recipients_all_go() {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let env = Env::new(&server, "");
    // -t with only a Bcc header: the message step removes Bcc, Graph gets it back as the only
    // recipient (and removes it before delivery).
    let msg = "From: app@contoso.com\nBcc: secret@contoso.com\nSubject: s\n\nb\n";
    let o = env.run(&["-t", "-i"], msg.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = &server.sent()[0];
    assert_eq!(s.bcc, vec!["secret@contoso.com"]);
    assert!(s.to.is_empty() && s.cc.is_empty());

    let rcpts: Vec<String> = (0..200)
        .map(|i| format!("user{i:03}@contoso.com"))
        .collect();
    let msg = "From: app@contoso.com\nTo: user000@contoso.com\nSubject: many\n\nb\n";
    let mut args = vec!["-i".to_owned()];
    args.extend(rcpts.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = env.run(&args, msg.as_bytes());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = &server.sent()[1];
    let mut want = rcpts.clone();
    want.sort();
    assert_eq!(s.recipients(), want);
    assert_eq!(s.to, vec!["user000@contoso.com"]);
    assert_eq!(s.bcc.len(), 199);
}

/// Write a multipart message with an attachment of `n` bytes (base64 in the MIME) to `w`, a
/// piece at a time (the test process never holds it: see [`Memory`]); the attachment's
/// SHA-256, hex.
fn write_big_message(w: &mut dyn Write, n: usize) -> String {
    w.write_all(
        b"From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1\r\nContent-Type: application/octet-stream; name=\"dump.bin\"\r\nContent-Disposition: attachment; filename=\"dump.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    )
    .unwrap();
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    // 1024 lines of 57 bytes (76 base64 characters) at a time: no padding but at the end.
    const PIECE: usize = 57 * 1024;
    let mut data = Vec::with_capacity(PIECE);
    let mut b64 = String::with_capacity(PIECE / 3 * 4);
    let mut at = 0;
    while at < n {
        let take = PIECE.min(n - at);
        data.clear();
        data.extend((at..at + take).map(|i| (i * 7 % 251) as u8));
        sha.update(&data);
        b64.clear();
        base64::engine::general_purpose::STANDARD.encode_string(&data, &mut b64);
        for line in b64.as_bytes().chunks(76) {
            w.write_all(line).unwrap();
            w.write_all(b"\r\n").unwrap();
        }
        at += take;
    }
    w.write_all(b"--b1--\r\n").unwrap();
    w.flush().unwrap();
    hex(sha.finish().as_ref())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A message with an attachment of `n` bytes through the large-message path; its size and
/// the memory the run took.
fn large_path(n: usize) -> (u64, Memory) {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let env = Env::new(&server, "");
    let path = env.dir.path().join("big.eml");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let sha = write_big_message(&mut file, n);
    drop(file);
    let size = std::fs::metadata(&path).unwrap().len();
    let input = Input::File(std::fs::File::open(&path).unwrap());
    let (o, memory) = env.run_measured(&["-v", "-i", "ops@contoso.com"], input);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_secret(&o);
    let shorts = server.shorts();
    assert_eq!(shorts[0], "POST messages", "{shorts:?}");
    assert_eq!(shorts[1], "POST createUploadSession", "{shorts:?}");
    assert!(
        shorts[2..shorts.len() - 1]
            .iter()
            .all(|s| s == "PUT upload"),
        "{shorts:?}"
    );
    assert_eq!(shorts.last().unwrap(), "POST send");
    let puts = shorts.iter().filter(|s| *s == "PUT upload").count();
    assert_eq!(puts, n.div_ceil(10 * 320 * 1024));
    for r in server.requests() {
        assert!(
            r.body_len <= fake_graph::MAX_BODY,
            "{} {}",
            r.short(),
            r.body_len
        );
        if r.path.starts_with("/upload/") {
            assert!(r.header("authorization").is_none());
        }
    }
    let sent = server.sent();
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert!(s.via_draft);
    assert_eq!(s.recipients(), vec!["ops@contoso.com"]);
    assert_eq!(s.attachments.len(), 1);
    let a = &s.attachments[0];
    assert!(a.by_session);
    assert_eq!((a.name.as_str(), a.size), ("dump.bin", n as u64));
    assert_eq!(a.content_type, "application/octet-stream");
    assert_eq!(a.sha256, sha, "the uploaded bytes are the attachment");
    // The draft's MIME is the message without the attachment part: headers and text kept.
    let mime = String::from_utf8(s.mime.clone()).unwrap();
    assert!(mime.starts_with("From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: big\r\n"));
    assert!(
        mime.contains("--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b1--\r\n"),
        "{mime}"
    );
    assert!(!mime.contains("dump.bin"));
    assert_eq!(server.drafts_left(), 0);
    eprintln!(
        "message of {size} bytes ({n} bytes attached): peak RSS of m365send {} KiB sampled, \
         at most {} KiB (wait4); this test process had {} KiB; {:.1?} CPU; {} connection(s), \
         {} requests",
        memory.hwm,
        memory.maxrss,
        memory.parent,
        memory.cpu,
        server.connections(),
        server.requests().len()
    );
    (size, memory)
}

/// The bound: m365send's peak RSS stays under this whatever the message's size (a debug
/// build's text and debug information are a good part of it).
const RSS_BOUND_KIB: i64 = 40 * 1024;

#[test]
fn ten_mb_goes_through_the_large_message_path_in_bounded_memory() {
    let (_, m) = large_path(10 * 1024 * 1024);
    // The message is 14 MB; the upload holds a few 3.2 MB chunks at most.
    assert!(m.maxrss < RSS_BOUND_KIB, "{m:?}");
}

/// Run alone (it measures RSS), as .ci/run does:
/// `cargo test --test graph -- --ignored --test-threads=1 _mb_goes`.
#[test]
#[ignore]
fn sixty_mb_goes_through_the_large_message_path_in_bounded_memory() {
    let (size, m) = large_path(60 * 1024 * 1024);
    assert!(size > 80_000_000);
    assert!(m.maxrss < RSS_BOUND_KIB, "{m:?}");
}

/// Close to Graph's 150 MB limit (the profile's max_size is 150 MiB). Run alone, as above.
#[test]
#[ignore]
fn hundred_forty_mb_goes_through_the_large_message_path_in_bounded_memory() {
    let (size, m) = large_path(102 * 1024 * 1024);
    assert!(size > 140_000_000 && size < 157_286_400, "{size}");
    assert!(m.maxrss < RSS_BOUND_KIB, "{m:?}");
}

#[test]
fn throttled_with_retry_after_waits_then_succeeds() {
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![
            Rule::error(
                "POST sendMail",
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
            )
            .retry_after(1)
            .times(1),
        ],
    );
    let env = Env::new(&server, "");
    let started = Instant::now();
    let o = env.run(&["-i", "ops@contoso.com"], b"Subject: t\n\nx\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    assert_eq!(server.shorts(), vec!["POST sendMail", "POST sendMail"]);
    assert_eq!(server.sent().len(), 1);
}

/// A redirect is never followed: it would send the message wherever the answer points (with
/// the token, to the same host). Here it points at another mailbox on the same fake server: a
/// followed redirect would send the message there.
#[test]
fn a_redirect_is_not_followed() {
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![
            Rule::error("POST sendMail", 307, "Moved", "Temporarily elsewhere.")
                .location("/v1.0/users/attacker@contoso.com/sendMail")
                .times(1),
        ],
    );
    let env = Env::new(&server, "queue = \"never\"");
    let o = env.run(&["-i", "ops@contoso.com"], b"Subject: t\n\nx\n");
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(server.shorts(), vec!["POST sendMail"], "{}", stderr(&o));
    assert!(server.sent().is_empty());
    assert!(stderr(&o).contains("307"), "{}", stderr(&o));
}

/// An upload `PUT` answered 503 with Retry-After is sent again, with the same bytes (the
/// retry shares the chunk; it is not read or copied again).
#[test]
fn a_throttled_upload_chunk_is_sent_again_with_the_same_bytes() {
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![
            Rule::error(
                "PUT upload",
                503,
                "ServiceUnavailable",
                "The service is temporarily unavailable.",
            )
            .retry_after(1)
            .times(1),
        ],
    );
    let env = Env::new(&server, "");
    let mut msg = Vec::new();
    let sha = write_big_message(&mut msg, 4 * 1024 * 1024);
    let o = env.run(&["-v", "-i", "ops@contoso.com"], &msg);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("graph: HTTP 503; waiting 1 s as Retry-After asks"),
        "{}",
        stderr(&o)
    );
    assert_no_secret(&o);
    let shorts = server.shorts();
    assert_eq!(
        shorts.iter().filter(|s| *s == "PUT upload").count(),
        3,
        "{shorts:?}"
    );
    let ranges: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.short() == "PUT upload")
        .map(|r| r.header("content-range").unwrap_or("").to_owned())
        .collect();
    assert_eq!(ranges[0], ranges[1], "the throttled range is sent again");
    let sent = server.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].attachments[0].sha256, sha);
}

#[test]
fn unavailable_is_queued_then_delivered_once_by_queue_run() {
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![
            Rule::error(
                "POST sendMail",
                503,
                "ServiceUnavailable",
                "Service unavailable",
            )
            .times(1),
        ],
    );
    let env = Env::new(&server, "");
    let o = env.run(&["-v", "-i", "ops@contoso.com"], b"Subject: q\n\nqueued\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("queued as"), "{}", stderr(&o));
    assert!(server.sent().is_empty());
    let list = env.run(&["queue", "list", "--json"], b"");
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v["count"], 1);
    assert!(
        v["entries"][0]["last_reply"]["text"]
            .as_str()
            .unwrap_or("")
            .contains("Graph ServiceUnavailable (HTTP 503)"),
        "{v}"
    );
    let run = env.run(&["-v", "queue", "flush"], b"");
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    let again = env.run(&["queue", "flush"], b"");
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(server.sent().len(), 1, "delivered exactly once");
    let list = env.run(&["queue", "list", "--json"], b"");
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v["count"], 0);
}

#[test]
fn each_catalogued_error_gives_its_exit_code_and_explanation() {
    let cases: &[(u16, &str, &str, i32, &str)] = &[
        (
            403,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
            77,
            "Mail.Send",
        ),
        (
            403,
            "ErrorAccessDenied",
            "Access to OData is disabled.",
            77,
            "application access policy",
        ),
        (
            403,
            "ErrorSendAsDenied",
            "The user account which was used to submit this request does not have the right to send mail on behalf of the specified sending account.",
            77,
            "Send As",
        ),
        (
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            78,
            "Exchange Online",
        ),
        (
            400,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid.",
            67,
            "recipient",
        ),
        (
            400,
            "ErrorMessageSizeExceeded",
            "The message exceeds the maximum supported size.",
            65,
            "MaxSendSize",
        ),
        (
            401,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
            77,
            "https://graph.microsoft.com",
        ),
        (
            507,
            "ErrorQuotaExceeded",
            "The mailbox quota was exceeded.",
            69,
            "Sent Items",
        ),
        (
            404,
            "ErrorInvalidUser",
            "The requested user 'app@contoso.com' is invalid.",
            78,
            "mailbox",
        ),
    ];
    for (status, code, message, exit, fragment) in cases {
        let server = FakeGraph::start(
            Accept::Token(TOKEN.into()),
            vec![Rule::error("POST sendMail", *status, code, message)],
        );
        let env = Env::new(&server, "");
        let o = env.run(&["-i", "ops@contoso.com"], b"Subject: e\n\nx\n");
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(*exit), "{code}: {e}");
        assert!(
            e.contains(&format!("Graph {code} (HTTP {status})")),
            "{code}: {e}"
        );
        assert!(e.contains(fragment), "{code}: no {fragment:?} in {e}");
        assert!(
            e.contains("dead.letter"),
            "{code}: kept in the dead letter: {e}"
        );
        assert_no_secret(&o);
    }
}

#[test]
fn explain_knows_graph_codes() {
    let o = Command::new(BIN)
        .args(["explain", "ErrorSendAsDenied"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("Send As") && t.contains("Exit code: 77"), "{t}");
    let o = Command::new(BIN).args(["explain", "429"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Retry-After"));
}

#[test]
fn an_ambiguous_504_on_send_is_checked_not_sent_twice() {
    // Large enough for the draft path; Graph sends, then answers 504.
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![Rule::error("POST send", 504, "GatewayTimeout", "Gateway Timeout").carry_out()],
    );
    let env = Env::new(&server, "save_to_sent_items = false");
    let o = env.run(&["-v", "-i", "ops@contoso.com"], b"Subject: d\n\nx\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("Exchange took the message"),
        "{}",
        stderr(&o)
    );
    let sent = server.sent();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].delete_after_submit,
        "save_to_sent_items = false marks the draft"
    );
    assert_eq!(
        server.shorts(),
        vec![
            "POST messages",
            "PATCH message",
            "POST send",
            "DELETE message"
        ]
    );

    // The same, but Graph did not send: the draft is deleted and the message queued.
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![Rule::error("POST send", 504, "GatewayTimeout", "Gateway Timeout").times(1)],
    );
    let env = Env::new(&server, "save_to_sent_items = false");
    let o = env.run(&["-v", "-i", "ops@contoso.com"], b"Subject: d\n\nx\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("queued as"), "{}", stderr(&o));
    assert!(server.sent().is_empty());
    assert_eq!(server.drafts_left(), 0, "no draft left behind");
    env.run(&["queue", "flush"], b"");
    assert_eq!(server.sent().len(), 1, "then delivered once");
}

#[test]
fn dry_run_shows_the_graph_endpoint_mailbox_scope_and_size_path() {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let env = Env::new(&server, "");
    let o = env.run(
        &["--dry-run", "-i", "ops@contoso.com"],
        b"To: x@contoso.com\nSubject: d\n\nx\n",
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "graph — Microsoft Graph sendMail over HTTPS",
        &format!(
            "https://127.0.0.1:{}/v1.0/users/app@contoso.com/sendMail",
            server.port()
        ),
        "https://graph.microsoft.com/.default",
        "one request: POST sendMail",
        "0 To, 0 Cc, 1 Bcc",
    ] {
        assert!(t.contains(needle), "no {needle:?} in\n{t}");
    }
    assert!(server.requests().is_empty());
    let mut big = Vec::new();
    write_big_message(&mut big, 4 * 1024 * 1024);
    let o = env.run(&["--dry-run", "-i", "ops@contoso.com"], &big);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(
        t.contains("draft from MIME") && t.contains("1 by upload session"),
        "{t}"
    );
}

#[test]
fn bs_session_goes_through_graph() {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let env = Env::new(&server, "");
    let dialogue = "EHLO client\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\nSubject: via bs\r\n\r\nhello\r\n.\r\nQUIT\r\n";
    let o = env.run(&["-bs"], dialogue.as_bytes());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("250"), "{out}");
    let sent = server.sent();
    assert_eq!(sent.len(), 1, "{out}\n{}", stderr(&o));
    assert_eq!(sent[0].recipients(), vec!["ops@contoso.com"]);
}

/// A JWT-shaped token for `aud` with `roles` (unsigned: the fake checks the audience only).
fn jwt(aud: &str, roles: &[&str], n: usize) -> String {
    let e = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.sig{n}",
        e(serde_json::json!({"alg": "none", "typ": "JWT"})),
        e(serde_json::json!({"aud": aud, "roles": roles, "appid": "cid", "tid": "t"}))
    )
}

/// A token endpoint that issues tokens whose audience follows the requested scope.
fn audience_token_server() -> token_server::TokenServer {
    token_server::TokenServer::start(|req, i| {
        let scope = req.field("scope").unwrap_or("").to_owned();
        let tok = if scope.starts_with("https://graph.microsoft.com") {
            jwt("https://graph.microsoft.com", &["Mail.Send"], i)
        } else {
            jwt("https://outlook.office365.com", &["SMTP.SendAsApp"], i)
        };
        token_server::Reply::token(&tok, 3600, None)
    })
}

#[test]
fn fallback_from_smtp_auth_disabled_to_graph_with_its_own_token() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let smtp = rt.block_on(fake_m365::FakeM365::start(
        fake_m365::FakeConfig::submission().rule(fake_m365::Rule::reply(
            fake_m365::Phase::Auth,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        )),
    ));
    let graph = FakeGraph::start(Accept::GraphAudience, vec![]);
    let tokens = audience_token_server();
    let env = Env::with_config(&format!(
        r#"default_profile = "app"
spool_dir = "@DIR@/spool"
dead_letter = "@DIR@/dead.letter"
cache_dir = "@DIR@/cache"

[profiles.app]
mode = "submit"
tenant = "contoso.onmicrosoft.com"
mailbox = "{MAILBOX}"
sender = "{MAILBOX}"
fallback = "graph"
graph_host = "{graph_host}"
endpoint = {{ host = "127.0.0.1", port = {smtp_port} }}
tls = {{ ca_file = "@DIR@/ca.pem" }}
auth = {{ client_id = "cid", client_secret = {{ env = "GRAPH_TEST_TOKEN" }}, authority = "{authority}" }}
retry = {{ attempts = 1 }}
"#,
        graph_host = graph.host(),
        smtp_port = smtp.port(),
        authority = tokens.authority(),
    ));
    // One CA file trusting both fakes.
    let ca = format!(
        "{}{}",
        std::fs::read_to_string(smtp.ca_file()).unwrap(),
        graph.ca_pem()
    );
    std::fs::write(env.dir.path().join("ca.pem"), ca).unwrap();

    let o = env.run(
        &["-v", "-i", "ops@contoso.com"],
        b"Subject: fb\n\nvia graph\n",
    );
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(e.contains("sending through Microsoft Graph"), "{e}");
    assert!(e.contains("535 5.7.139"), "{e}");
    assert!(e.contains("auth=OAUTH2-GRAPH-FALLBACK"), "log line: {e}");
    assert!(smtp.accepted().is_empty());
    let sent = graph.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].recipients(), vec!["ops@contoso.com"]);
    assert!(String::from_utf8_lossy(&sent[0].mime).contains("via graph"));
    // Two tokens, one per audience: the Outlook one went to SMTP, the Graph one to Graph.
    let scopes: Vec<String> = tokens
        .requests()
        .iter()
        .map(|r| r.field("scope").unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        scopes,
        vec![
            "https://outlook.office365.com/.default".to_owned(),
            "https://graph.microsoft.com/.default".to_owned()
        ]
    );
    // Again: both tokens come from the cache, each for its own audience.
    let o = env.run(&["-i", "ops@contoso.com"], b"Subject: fb2\n\nagain\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tokens.count(), 2, "cached tokens reused");
    assert_eq!(graph.sent().len(), 2);
    for r in graph.requests() {
        let aud = r
            .bearer()
            .map(|b| b.split('.').nth(1).unwrap_or("").to_owned());
        assert!(aud.is_some());
    }
}

#[test]
fn a_graph_profile_asks_for_a_graph_token() {
    let graph = FakeGraph::start(Accept::GraphAudience, vec![]);
    let tokens = audience_token_server();
    let env = Env::with_config(&format!(
        r#"default_profile = "g"
spool_dir = "@DIR@/spool"
dead_letter = "@DIR@/dead.letter"
cache_dir = "@DIR@/cache"

[profiles.g]
mode = "graph"
tenant = "contoso.onmicrosoft.com"
mailbox = "{MAILBOX}"
graph_host = "{graph_host}"
tls = {{ ca_file = "{ca}" }}
auth = {{ client_id = "cid", client_secret = {{ env = "GRAPH_TEST_TOKEN" }}, authority = "{authority}" }}
retry = {{ attempts = 1 }}
"#,
        graph_host = graph.host(),
        ca = graph.ca_file().display(),
        authority = tokens.authority(),
    ));
    let o = env.run(&["-v", "-i", "ops@contoso.com"], b"Subject: a\n\nx\n");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_secret(&o);
    assert_eq!(
        tokens.requests()[0].field("scope"),
        Some("https://graph.microsoft.com/.default")
    );
    assert_eq!(graph.sent().len(), 1);

    // A profile that overrides the scope with Outlook's gets a token Graph refuses: 77 and
    // the audience named.
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "client_id = \"cid\",",
        "client_id = \"cid\", scope = \"https://outlook.office365.com/.default\",",
    );
    std::fs::write(&env.config, text).unwrap();
    let o = env.run(&["-i", "ops@contoso.com"], b"Subject: b\n\nx\n");
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(77), "{e}");
    assert!(
        e.contains("InvalidAuthenticationToken")
            && e.contains("audience is https://outlook.office365.com"),
        "{e}"
    );
    assert_no_secret(&o);
}

/// Finding (low, attacker's review): Graph's answers were read whole into memory and its
/// error code copied as it came: a hostile or broken answer (a TLS-inspecting proxy, a wrong
/// graph_host) of tens of megabytes cost as much memory, and a code with terminal escapes
/// reached stderr, the log and the dead letter raw, at any length. Now an error answer is
/// read up to 64 KiB (a success up to 16 MiB), and the code and message are cleaned and cut.
#[test]
fn a_huge_hostile_graph_error_costs_bounded_memory_and_prints_clean() {
    let code = format!(
        "ErrorEvil\x1b]0;owned\x07\x1b[2J\u{202e}{}",
        "C".repeat(100_000)
    );
    let message = format!("boom\u{202e}{}", "m".repeat(48 * 1024 * 1024));
    let server = FakeGraph::start(
        Accept::Token(TOKEN.into()),
        vec![Rule::error("POST sendMail", 400, &code, &message)],
    );
    let env = Env::new(&server, "queue = \"never\"");
    let (o, m) = env.run_measured(
        &["-v", "-i", "ops@contoso.com"],
        Input::Bytes(b"Subject: e\n\nx\n"),
    );
    let e = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{e}");
    assert!(m.hwm < RSS_BOUND_KIB, "{m:?}");
    assert!(
        !e.chars()
            .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
        "raw control characters on stderr: {:?}",
        &e[..e.len().min(2000)]
    );
    assert!(e.len() < 16 * 1024, "{} bytes on stderr", e.len());
    let dead = std::fs::read_to_string(env.dir.path().join("dead.letter")).unwrap_or_default();
    assert!(
        !dead.contains('\x1b') && dead.len() < 64 * 1024,
        "{} bytes",
        dead.len()
    );
    assert_no_secret(&o);
}

/// A CONNECT proxy on 127.0.0.1 that tunnels every request to `target` (whatever host the
/// client names) and records the `host:port` each CONNECT asked for.
fn connect_proxy(target: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let asked = line.split(' ').nth(1).unwrap_or("").to_owned();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                log.lock()
                    .unwrap()
                    .push(format!("{} {asked}", line.split(' ').next().unwrap()));
                let server = std::net::TcpStream::connect(("127.0.0.1", target)).unwrap();
                let mut client_w = client;
                client_w
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut s_r, mut s_w) = (server.try_clone().unwrap(), server);
                let mut c_w = client_w.try_clone().unwrap();
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut reader, &mut s_w);
                    let _ = s_w.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut s_r, &mut c_w);
                let _ = c_w.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    (port, seen)
}

/// HTTPS_PROXY is honoured for Graph (README, Proxies): the profile names a port where nothing
/// listens, so the message can only arrive through the proxy's tunnel; NO_PROXY naming the
/// host makes the same send go direct (and fail: nothing listens there).
#[test]
fn graph_goes_through_the_https_proxy_and_no_proxy_bypasses_it() {
    let server = FakeGraph::start(Accept::Token(TOKEN.into()), vec![]);
    let (proxy, seen) = connect_proxy(server.port());
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = unused.local_addr().unwrap().port();
    drop(unused);
    let env = Env::new(&server, "queue = \"never\"");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("port = {}", server.port()),
        &format!("port = {nowhere}"),
    );
    std::fs::write(&env.config, text).unwrap();
    let run = |no_proxy: Option<&str>| {
        let mut c = env.command(&["-i", "ops@contoso.com"]);
        c.env("HTTPS_PROXY", format!("http://127.0.0.1:{proxy}"))
            .stdin(Stdio::piped());
        if let Some(v) = no_proxy {
            c.env("NO_PROXY", v);
        }
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Subject: through the proxy\n\nx\n")
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = run(None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_secret(&o);
    assert_eq!(
        seen.lock().unwrap().clone(),
        vec![format!("CONNECT 127.0.0.1:{nowhere}")]
    );
    assert_eq!(server.sent().len(), 1);
    assert_eq!(server.sent()[0].recipients(), vec!["ops@contoso.com"]);

    let o = run(Some("127.0.0.1"));
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(seen.lock().unwrap().len(), 1, "NO_PROXY was not honoured");
    assert_eq!(server.sent().len(), 1);
}
