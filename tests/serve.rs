//! `m365send serve` end to end: the real binary listening on 127.0.0.1, real clients (swaks and
//! Python's smtplib; a test is skipped with a message when one is missing), and the fake
//! Microsoft 365 server behind it. What a client hears, what reaches the server (counted by
//! Message-ID), and what the spool holds.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/fake_m365.rs"]
mod fake_m365;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bin_env::BIN;
use fake_m365::{FakeConfig, FakeM365, Pki};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// `openssl passwd -6 -salt saltsalt secret`
const SECRET_HASH: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

fn have(tool: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install swaks python3)");
    }
    found
}

/// A configuration directory: the spool, and a relay profile pointing at the fake server.
struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
    spool: PathBuf,
    pki: Arc<Pki>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        Env {
            config: dir.path().join("config.toml"),
            spool: dir.path().join("spool"),
            dir,
            pki: Arc::new(Pki::new()),
        }
    }

    /// Write the configuration: the relay profile to `port` (with the fake server's CA),
    /// then `serve` (the body of the [serve] table and any tables after it).
    fn write(&self, port: u16, ca: &Path, serve: &str) {
        let text = format!(
            r#"default_profile = "relay"
spool_dir = "{spool}"
dead_letter = "{dir}/dead.letter"

[profiles.relay]
mode = "relay"
rate_per_minute = 0

[profiles.relay.endpoint]
host = "127.0.0.1"
port = {port}

[profiles.relay.tls]
ca_file = "{ca}"

[profiles.relay.timeouts]
connect = 5
command = 5
data_end = 5

[profiles.relay.retry]
attempts = 1
initial_delay_ms = 10

[profiles.scan]
mode = "relay"
sender = "scans@contoso.com"
rewrite_from = "always"
rate_per_minute = 0
endpoint = {{ host = "127.0.0.1", port = {port} }}
tls = {{ ca_file = "{ca}" }}

[serve]
listen = ["127.0.0.1:0"]
queue_interval = 1
{serve}
"#,
            spool = self.spool.display(),
            dir = self.dir.path().display(),
            ca = ca.display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// A server certificate for 127.0.0.1 and localhost signed by the test CA; returns
    /// `tls_cert = ... tls_key = ...` lines and the CA file.
    fn server_cert(&self) -> (String, PathBuf) {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let (cert, key, _, _) = self.pki.leaf(&names, "m365send serve test");
        let c = self.dir.path().join("serve.crt");
        let k = self.dir.path().join("serve.key");
        let ca = self.dir.path().join("serve-ca.pem");
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        std::fs::write(&ca, &self.pki.ca_pem).unwrap();
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                c.display(),
                k.display()
            ),
            ca,
        )
    }

    async fn queue_count(&self) -> u64 {
        let o = Command::new(BIN)
            .args(["--config"])
            .arg(&self.config)
            .args(["queue", "list", "--json"])
            .output()
            .await
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["count"].as_u64().unwrap()
    }

    /// Make every queued entry due now (the first retry waits a minute).
    fn make_due(&self) {
        bin_env::make_due(&self.spool);
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `m365send serve`.
struct Serve {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    async fn start(env: &Env) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&env.config).arg("serve");
        Serve::spawn(cmd).await
    }

    async fn spawn(mut cmd: Command) -> Serve {
        let mut child = cmd
            .env_remove("M365SEND_LOG")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let port = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                .await
                .expect("serve did not start")
                .unwrap()
                .unwrap_or_else(|| panic!("serve exited: {:?}", log.lock().unwrap()));
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                break digits.parse().unwrap();
            }
        };
        let l = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                l.lock().unwrap().push(line);
            }
        });
        Serve { child, port, log }
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn swaks(port: u16, args: &[&str]) -> Output {
    Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--timeout", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap()
}

/// swaks logging in as `user` with `mechanism`, sending from `from`, plus `extra`.
async fn swaks_auth(
    port: u16,
    mechanism: &str,
    user: &str,
    password: &str,
    from: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "--from",
        from,
        "--auth",
        mechanism,
        "--auth-user",
        user,
        "--auth-password",
        password,
    ];
    args.extend_from_slice(extra);
    let o = swaks(port, &args).await;
    text(&o.stdout)
}

/// Run a Python script with smtplib; `PORT` is in the environment.
async fn python(port: u16, script: &str, env: &[(&str, &str)]) -> Output {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PORT", port.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        o.status.success(),
        "python failed:\n{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    o
}

/// Wait until the fake server accepted `n` messages; returns them.
async fn delivered(server: &FakeM365, n: usize, within: Duration) -> Vec<fake_m365::Received> {
    let deadline = Instant::now() + within;
    loop {
        let got = server.accepted();
        if got.len() >= n || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn message_id(data: &[u8]) -> Option<String> {
    text(data)
        .lines()
        .find_map(|l| {
            l.strip_prefix("Message-ID:")
                .or_else(|| l.strip_prefix("Message-Id:"))
        })
        .map(|v| v.trim().to_owned())
}

/// The fake server, a configuration with this `[serve]` body, and serve running on it.
async fn started(serve: &str) -> (FakeM365, Env, Serve) {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    env.write(server.port(), server.ca_file(), serve);
    let running = Serve::start(&env).await;
    (server, env, running)
}

/// A minimal line client for exact replies.
struct Raw {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, w) = s.into_split();
        Raw {
            r: BufReader::new(r),
            w,
        }
    }
    /// One whole reply (all its lines).
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                .await
                .expect("no reply")
                .unwrap();
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    async fn cmd(&mut self, line: &str) -> String {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.r.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test]
async fn accepted_and_delivered_through_fake_m365() {
    if !have("swaks") {
        return;
    }
    let (server, env, serve) = started("").await;
    let o = swaks(
        serve.port,
        &[
            "--from",
            "alerts@contoso.com",
            "--to",
            "ops@contoso.com",
            "--header",
            "Subject: printer toner low",
            "--header",
            "Message-Id: <toner-1@printer.example>",
            "--body",
            "Tray 2 is empty.",
        ],
    )
    .await;
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}{}", text(&o.stderr));
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    assert!(
        out.contains("250-PIPELINING") && out.contains("250-SMTPUTF8"),
        "{out}"
    );

    let got = delivered(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", serve.log());
    let m = &got[0];
    assert_eq!(m.sender, "alerts@contoso.com");
    assert_eq!(m.recipients, vec!["ops@contoso.com"]);
    let data = text(&m.data);
    assert!(data.starts_with("Received: from "), "{data}");
    assert!(data.contains("([127.0.0.1])\r\n\tby "), "{data}");
    assert!(data.contains("Subject: printer toner low\r\n"), "{data}");
    assert!(data.contains("\r\n\r\nTray 2 is empty.\r\n"), "{data}");
    assert_eq!(
        message_id(&m.data).as_deref(),
        Some("<toner-1@printer.example>")
    );
    // Delivered: the spool is empty again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.queue_count().await != 0 {
        assert!(Instant::now() < deadline, "still queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn refused_client_network() {
    if !have("python3") {
        return;
    }
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    // 127.0.0.1 is not in this network.
    env.write(
        server.port(),
        server.ca_file(),
        "networks = [\"192.0.2.0/24\", \"2001:db8::/32\"]",
    );
    let serve = Serve::start(&env).await;
    let o = python(
        serve.port,
        r#"
import os, smtplib
try:
    smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
    print("CONNECTED")
except smtplib.SMTPConnectError as e:
    print("REFUSED", e.smtp_code, e.smtp_error.decode())
"#,
        &[],
    )
    .await;
    let out = text(&o.stdout);
    assert_eq!(
        out.trim(),
        "REFUSED 554 5.7.1 Access denied: 127.0.0.1 is not an allowed client network"
    );
    serve
        .wait_log("refused 127.0.0.1: not in serve.networks")
        .await;
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn auth_required_and_per_user_senders() {
    if !have("swaks") {
        return;
    }
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    let hash_file = env.dir.path().join("copier.hash");
    std::fs::write(&hash_file, format!("{SECRET_HASH}\n")).unwrap();
    env.write(
        server.port(),
        server.ca_file(),
        &format!(
            r#"require_auth = true

[serve.users.scanner]
password_hash = "{SECRET_HASH}"
senders = ["scanner@contoso.com"]
profile = "scan"

[serve.users.copier]
password_hash_file = "{}"
senders = ["*@copiers.contoso.com"]
"#,
            hash_file.display()
        ),
    );
    let serve = Serve::start(&env).await;
    let common = ["--to", "ops@contoso.com", "--header", "Subject: scan"];

    // No AUTH: refused at MAIL.
    let o = swaks(
        serve.port,
        &[&["--from", "scanner@contoso.com"], &common[..]].concat(),
    )
    .await;
    let out = text(&o.stdout);
    assert!(
        out.contains("<** 530 5.7.0 Authentication required"),
        "{out}"
    );
    assert!(out.contains("250-AUTH PLAIN LOGIN"), "{out}");

    // Wrong password.
    let out = swaks_auth(
        serve.port,
        "PLAIN",
        "scanner",
        "wrong",
        "scanner@contoso.com",
        &common,
    )
    .await;
    assert!(
        out.contains("<** 535 5.7.8 Authentication credentials invalid"),
        "{out}"
    );
    assert!(!serve.log().contains("wrong"), "the password was logged");

    // Right password, a sender the user may not use.
    let out = swaks_auth(
        serve.port,
        "LOGIN",
        "scanner",
        "secret",
        "ceo@contoso.com",
        &common,
    )
    .await;
    assert!(
        out.contains("<-  235 2.7.0 Authentication successful"),
        "{out}"
    );
    assert!(
        out.contains("<** 553 5.7.1 Sender address <ceo@contoso.com> not allowed for user scanner"),
        "{out}"
    );

    // Right password, allowed sender: delivered through the user's profile (`scan`
    // rewrites the sender and From to scans@contoso.com; no profile answers to the
    // address itself, so the sender alone would have chosen `relay`).
    let extra = [
        &common[..],
        &["--header", "From: Scanner <scanner@lab.local>"],
    ]
    .concat();
    let out = swaks_auth(
        serve.port,
        "PLAIN",
        "scanner",
        "secret",
        "scanner@contoso.com",
        &extra,
    )
    .await;
    assert!(out.contains("<-  250 2.0.0 Ok: queued as"), "{out}");

    // The second user, hash from a file, wildcard sender.
    let out = swaks_auth(
        serve.port,
        "LOGIN",
        "copier",
        "secret",
        "floor3@copiers.contoso.com",
        &common,
    )
    .await;
    assert!(out.contains("<-  250 2.0.0 Ok: queued as"), "{out}");

    let got = delivered(&server, 2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2, "{}", serve.log());
    let by_sender: BTreeMap<String, String> = got
        .iter()
        .map(|m| (m.sender.clone(), text(&m.data)))
        .collect();
    let scan = &by_sender["scans@contoso.com"];
    assert!(
        scan.contains("From: Scanner <scans@contoso.com>\r\n"),
        "{scan}"
    );
    assert!(scan.contains("with ESMTPA;"), "{scan}");
    assert!(by_sender.contains_key("floor3@copiers.contoso.com"));
    assert!(
        serve
            .log()
            .contains("AUTH failed for \"scanner\" from 127.0.0.1")
    );
}

/// 50 concurrent clients, 20 messages each over one connection: every message accepted,
/// and delivered exactly once (counted at the server by Message-ID).
#[tokio::test]
async fn fifty_clients_twenty_messages_each_delivered_once() {
    if !have("python3") {
        return;
    }
    let (server, env, serve) = started("").await;
    let started = Instant::now();
    let o = python(
        serve.port,
        r#"
import os, smtplib, threading
port = int(os.environ["PORT"])
errors = []
def client(c):
    try:
        s = smtplib.SMTP("127.0.0.1", port, timeout=60)
        s.ehlo("device%d.lan" % c)
        for m in range(20):
            msg = ("From: dev%d@contoso.com\r\nTo: ops@contoso.com\r\nSubject: %d/%d\r\n"
                   "Message-ID: <%d.%d@load.test>\r\n\r\nreading %d\r\n") % (c, c, m, c, m, m)
            s.sendmail("dev%d@contoso.com" % c, ["ops@contoso.com"], msg)
        s.quit()
    except Exception as e:
        errors.append("%d: %r" % (c, e))
threads = [threading.Thread(target=client, args=(c,)) for c in range(50)]
for t in threads: t.start()
for t in threads: t.join()
print("ERRORS", len(errors))
for e in errors[:5]: print(e)
"#,
        &[],
    )
    .await;
    let out = text(&o.stdout);
    assert!(out.starts_with("ERRORS 0"), "{out}");
    let accepted_in = started.elapsed();
    let got = delivered(&server, 1000, Duration::from_secs(60)).await;
    let mut ids: BTreeMap<String, usize> = BTreeMap::new();
    for m in &got {
        *ids.entry(message_id(&m.data).unwrap_or_default())
            .or_default() += 1;
    }
    assert_eq!(got.len(), 1000, "{}", serve.log());
    assert_eq!(ids.len(), 1000);
    assert!(ids.values().all(|n| *n == 1));
    for c in 0..50 {
        for m in 0..20 {
            assert!(ids.contains_key(&format!("<{c}.{m}@load.test>")));
        }
    }
    eprintln!(
        "1000 messages accepted in {:.2} s, delivered after {:.2} s",
        accepted_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // Nothing more arrives, nothing stays queued.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.accepted().len(), 1000);
    assert_eq!(env.queue_count().await, 0);
}

/// kill -9 after the 250 and before delivery (nothing listens where the profile points),
/// then a restart: the message is in `queue list`, then delivered exactly once.
#[tokio::test]
async fn kill_9_after_250_then_restart_delivers_once() {
    if !have("swaks") {
        return;
    }
    let env = Env::new();
    // A port where nothing listens: Microsoft 365 is "down".
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ca = env.dir.path().join("none.pem");
    std::fs::write(&ca, &env.pki.ca_pem).unwrap();
    env.write(dead_port, &ca, "");
    let mut serve = Serve::start(&env).await;
    let o = swaks(
        serve.port,
        &[
            "--from",
            "alerts@contoso.com",
            "--to",
            "ops@contoso.com",
            "--header",
            "Message-Id: <kill9@test>",
        ],
    )
    .await;
    let out = text(&o.stdout);
    assert!(out.contains("<-  250 2.0.0 Ok: queued as "), "{out}");
    serve.signal(libc::SIGKILL);
    let status = serve.child.wait().await.unwrap();
    assert_eq!(status.code(), None, "not killed by a signal");
    assert_eq!(
        env.queue_count().await,
        1,
        "the acknowledged message is not in the spool"
    );

    // Microsoft 365 is back (on another port: the entry records the profile, not the port).
    let server = FakeM365::start(FakeConfig::mx()).await;
    env.write(server.port(), server.ca_file(), "");
    env.make_due();
    let serve = Serve::start(&env).await;
    let got = delivered(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", serve.log());
    assert_eq!(message_id(&got[0].data).as_deref(), Some("<kill9@test>"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(server.accepted().len(), 1, "delivered twice");
    assert_eq!(env.queue_count().await, 0);
}

/// STARTTLS with the configured certificate (verified by the client against the test CA),
/// then AUTH; and with `plaintext_auth = "never"` (what a non-loopback listener does), AUTH
/// is neither offered nor accepted before STARTTLS.
#[tokio::test]
async fn starttls_with_the_configured_certificate_and_auth_only_after_it() {
    if !have("python3") {
        return;
    }
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    let (tls_lines, ca) = env.server_cert();
    env.write(
        server.port(),
        server.ca_file(),
        &format!(
            r#"{tls_lines}plaintext_auth = "never"

[serve.users.app]
password_hash = "{SECRET_HASH}"
senders = ["*"]
"#
        ),
    );
    let serve = Serve::start(&env).await;
    let o = python(
        serve.port,
        r#"
import os, smtplib, ssl, base64
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
s.ehlo("lob.app")
print("BEFORE", sorted(s.esmtp_features))
code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0app\0secret").decode())
print("AUTH-BEFORE", code, msg.decode())
ctx = ssl.create_default_context(cafile=os.environ["CA"])
s.starttls(context=ctx)
print("TLS", s.sock.version())
s.ehlo("lob.app")
print("AFTER", sorted(s.esmtp_features))
s.login("app", "secret")
s.sendmail("app@contoso.com", ["ops@contoso.com"], "Subject: over tls\r\nMessage-ID: <tls@test>\r\n\r\nhi\r\n")
s.quit()
print("SENT")
"#,
        &[("CA", ca.to_str().unwrap())],
    )
    .await;
    let out = text(&o.stdout);
    let line = |p: &str| {
        out.lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no {p} in {out}"))
            .to_owned()
    };
    assert!(line("BEFORE").contains("'starttls'"), "{out}");
    assert!(!line("BEFORE").contains("'auth'"), "{out}");
    assert_eq!(
        line("AUTH-BEFORE"),
        "AUTH-BEFORE 538 5.7.11 Encryption required for requested authentication mechanism: \
         issue STARTTLS first"
    );
    assert!(line("TLS").starts_with("TLS TLSv1."), "{out}");
    assert!(line("AFTER").contains("'auth'"), "{out}");
    assert!(!line("AFTER").contains("'starttls'"), "{out}");
    assert!(out.contains("SENT"), "{out}");
    let got = delivered(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", serve.log());
    assert!(text(&got[0].data).contains("with ESMTPSA;"));
}

/// Per-client rate limit (450 4.7.1), and the lockout after repeated failed AUTH: the
/// failure that reaches the limit closes the connection (421 4.7.0), and a new connection's
/// AUTH, even with the right password, gets 454 4.7.0.
#[tokio::test]
async fn rate_limit_and_auth_lockout() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    env.write(
        server.port(),
        server.ca_file(),
        &format!(
            r#"client_rate_per_minute = 3
auth_failures = 2

[serve.users.app]
password_hash = "{SECRET_HASH}"
senders = ["*"]
"#
        ),
    );
    let serve = Serve::start(&env).await;
    let mut c = Raw::connect(serve.port).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO t").await;
    for i in 0..3 {
        assert!(
            c.cmd("MAIL FROM:<a@contoso.com>").await.starts_with("250 "),
            "{i}"
        );
        c.cmd("RCPT TO:<ops@contoso.com>").await;
        assert!(c.cmd("DATA").await.starts_with("354"));
        let r = c.cmd(&format!("Subject: {i}\r\n\r\nx\r\n.")).await;
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    }
    let r = c.cmd("MAIL FROM:<a@contoso.com>").await;
    assert_eq!(
        r,
        "450 4.7.1 Too much mail from 127.0.0.1: at most 3 messages a minute, try again later\r\n"
    );
    c.cmd("QUIT").await;

    // Lockout: two failures.
    let plain = |pw: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("\0app\0{pw}"))
    };
    let mut c = Raw::connect(serve.port).await;
    c.reply().await;
    c.cmd("EHLO t").await;
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("nope"))).await;
    assert_eq!(r, "535 5.7.8 Authentication credentials invalid\r\n");
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("nope2"))).await;
    assert_eq!(
        r,
        "421 4.7.0 Too many failed authentications, try again later\r\n"
    );
    assert!(c.closed().await);
    let mut c = Raw::connect(serve.port).await;
    c.reply().await;
    c.cmd("EHLO t").await;
    let r = c.cmd(&format!("AUTH PLAIN {}", plain("secret"))).await;
    assert!(
        r.starts_with("454 4.7.0 Too many failed authentications from 127.0.0.1; try again in 15"),
        "{r}"
    );
    serve
        .wait_log("127.0.0.1 locked out for 15 minute(s)")
        .await;
    assert!(!serve.log().contains("nope"), "a password was logged");
}

/// SIGHUP re-reads the configuration (the listener stays); SIGTERM stops accepting, lets the
/// open transaction finish with its 250, closes idle sessions with 421, and exits 0.
#[tokio::test]
async fn sighup_reloads_and_sigterm_finishes_the_open_transaction() {
    let (server, env, mut serve) = started("").await;

    env.write(
        server.port(),
        server.ca_file(),
        "networks = [\"192.0.2.0/24\"]",
    );
    serve.signal(libc::SIGHUP);
    serve.wait_log("configuration reloaded").await;
    let mut c = Raw::connect(serve.port).await;
    assert!(c.reply().await.starts_with("554 5.7.1 "));
    env.write(server.port(), server.ca_file(), "");
    serve.signal(libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(100)).await;
    serve.wait_log("configuration reloaded\n").await;
    // A broken configuration is refused; the running one stays.
    std::fs::write(&env.config, "this is = not [toml").unwrap();
    serve.signal(libc::SIGHUP);
    serve
        .wait_log("reload failed, keeping the running configuration")
        .await;

    let mut busy = Raw::connect(serve.port).await;
    assert!(busy.reply().await.starts_with("220 "));
    busy.cmd("EHLO t").await;
    busy.cmd("MAIL FROM:<a@contoso.com>").await;
    busy.cmd("RCPT TO:<ops@contoso.com>").await;
    assert!(busy.cmd("DATA").await.starts_with("354"));
    let mut idle = Raw::connect(serve.port).await;
    assert!(idle.reply().await.starts_with("220 "));

    serve.signal(libc::SIGTERM);
    serve.wait_log("stopping").await;
    assert_eq!(
        idle.reply().await,
        "421 4.3.2 Service shutting down, closing connection\r\n"
    );
    // No new connections.
    assert!(TcpStream::connect(("127.0.0.1", serve.port)).await.is_err());
    let r = busy.cmd("Subject: last\r\n\r\nlast words\r\n.").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    assert_eq!(
        busy.reply().await,
        "421 4.3.2 Service shutting down, closing connection\r\n"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), serve.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{}", serve.log());
}

/// Socket activation: a listening socket passed as descriptor 3 with LISTEN_PID/LISTEN_FDS (as
/// systemd does) is used instead of `[serve] listen`.
#[tokio::test]
async fn socket_activation_uses_the_inherited_socket() {
    use std::os::fd::AsRawFd;
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    env.write(server.port(), server.ca_file(), "");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let fd = listener.as_raw_fd();
    // `exec` keeps the shell's pid, so $$ is the pid serve runs as.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --config \"$1\" serve")
        .arg(BIN)
        .arg(&env.config);
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let serve = Serve::spawn(cmd).await;
    drop(listener);
    assert_eq!(serve.port, port, "{}", serve.log());
    assert!(serve.log().contains("(from systemd)"), "{}", serve.log());
    let mut c = Raw::connect(port).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("HELO t").await;
    c.cmd("MAIL FROM:<alerts@contoso.com>").await;
    c.cmd("RCPT TO:<ops@contoso.com>").await;
    c.cmd("DATA").await;
    let r = c.cmd("Subject: activated\r\n\r\nhi\r\n.").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = delivered(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", serve.log());
}

/// Commands pipelined after STARTTLS were sent in the clear: they are dropped, not run inside
/// the TLS session (the STARTTLS command injection attack), and the session starts afresh.
#[tokio::test]
async fn commands_pipelined_after_starttls_are_dropped() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    let (tls_lines, ca) = env.server_cert();
    env.write(server.port(), server.ca_file(), &tls_lines);
    let serve = Serve::start(&env).await;
    let mut s = TcpStream::connect(("127.0.0.1", serve.port)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"220 "));
    s.write_all(b"EHLO c\r\n").await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("250 HELP\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("250-STARTTLS\r\n"));
    s.write_all(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await
        .unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"220 2.0.0 Ready to start TLS\r\n");

    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject as _;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, s).await.unwrap();
    let (r, mut w) = tokio::io::split(tls);
    let mut r = BufReader::new(r);
    // The injected MAIL was not run: the first thing we read is the answer to our RCPT,
    // which has no transaction (503), not a 250 for a MAIL nobody sent over TLS.
    w.write_all(b"RCPT TO:<ops@contoso.com>\r\n").await.unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "503 5.5.1 Error: need MAIL command\r\n");
    w.write_all(b"EHLO c\r\n").await.unwrap();
    let mut ehlo = String::new();
    while !ehlo.ends_with("250 HELP\r\n") {
        let mut l = String::new();
        assert!(r.read_line(&mut l).await.unwrap() > 0);
        ehlo.push_str(&l);
    }
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
}

/// The limits of `[serve]`: connections (421 4.7.0 at connect), message size (SIZE= and
/// counted: 552 5.3.4) and recipients per message (452 4.5.3); an idle client is closed
/// with 421 4.4.2.
#[tokio::test]
async fn connection_size_recipient_and_idle_limits() {
    let (server, _env, serve) = started(
        "max_connections = 1\nmax_message_size = 200\nmax_recipients = 2\nidle_timeout = 1\n",
    )
    .await;
    let mut first = Raw::connect(serve.port).await;
    assert!(first.reply().await.starts_with("220 "));
    let mut second = Raw::connect(serve.port).await;
    assert_eq!(
        second.reply().await,
        "421 4.7.0 Too many connections, try again later\r\n"
    );
    assert!(second.closed().await);

    let ehlo = first.cmd("EHLO t").await;
    assert!(ehlo.contains("250-SIZE 200\r\n"), "{ehlo}");
    assert_eq!(
        first.cmd("MAIL FROM:<a@contoso.com> SIZE=201").await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(
        first
            .cmd("MAIL FROM:<a@contoso.com>")
            .await
            .starts_with("250 ")
    );
    assert!(
        first
            .cmd("RCPT TO:<a@contoso.com>")
            .await
            .starts_with("250 ")
    );
    assert!(
        first
            .cmd("RCPT TO:<b@contoso.com>")
            .await
            .starts_with("250 ")
    );
    assert_eq!(
        first.cmd("RCPT TO:<c@contoso.com>").await,
        "452 4.5.3 Too many recipients\r\n"
    );
    assert!(first.cmd("DATA").await.starts_with("354"));
    let big = "x".repeat(300);
    assert_eq!(
        first.cmd(&format!("Subject: big\r\n\r\n{big}\r\n.")).await,
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    // Silent for longer than idle_timeout.
    assert_eq!(
        first.reply().await,
        "421 4.4.2 Timeout, closing connection\r\n"
    );
    assert!(first.closed().await);
    // The slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = Raw::connect(serve.port).await;
    assert!(third.reply().await.starts_with("220 "));
    assert!(server.messages().is_empty());
}

/// A configuration serve cannot work with stops it at once with exit 78 and the key: a hash
/// that is no hash (never echoed) or a placeholder, a certificate that cannot be read, a port in use.
#[tokio::test]
async fn bad_configurations_stop_serve_at_start() {
    let env = Env::new();
    let ca = env.dir.path().join("ca.pem");
    std::fs::write(&ca, &env.pki.ca_pem).unwrap();
    let run = || async {
        let o = Command::new(BIN)
            .arg("--config")
            .arg(&env.config)
            .arg("serve")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        (o.status.code(), text(&o.stderr))
    };
    // A password where the hash belongs (never echoed); the placeholder README and
    // config.example.toml show (`$6$...`), or a hash cut off when pasted: no password could
    // ever match it, and every login of the device would fail (then lock it out) with nothing
    // saying why.
    let cut = &SECRET_HASH[..SECRET_HASH.len() - 10];
    for (hash, expected) in [
        ("plaintext-password", "not a password hash"),
        ("$6$...", "not a valid SHA-512-crypt hash"),
        ("$6$...$...", "not a valid SHA-512-crypt hash"),
        (cut, "not a valid SHA-512-crypt hash"),
    ] {
        env.write(
            1,
            &ca,
            &format!("[serve.users.u]\npassword_hash = \"{hash}\"\nsenders = [\"*\"]\n"),
        );
        let (code, err) = run().await;
        assert_eq!(code, Some(78), "{hash}: {err}");
        assert!(
            err.contains(&format!("serve.users.u.password_hash: {expected}")),
            "{hash}: {err}"
        );
        assert!(
            hash.starts_with("plaintext") || err.contains("openssl passwd -6"),
            "{hash}: {err}"
        );
        assert!(
            !err.contains("plaintext-password"),
            "the error quotes the value: {err}"
        );
    }

    env.write(
        1,
        &ca,
        "tls_cert = \"/nonexistent.crt\"\ntls_key = \"/nonexistent.key\"\n",
    );
    let (code, err) = run().await;
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("serve.tls_cert: cannot read server certificate /nonexistent.crt"),
        "{err}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(
            "tls_cert = \"/nonexistent.crt\"\ntls_key = \"/nonexistent.key\"\n",
            "",
        )
        .replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"{addr}\"]"),
        );
    std::fs::write(&env.config, text).unwrap();
    let (code, err) = run().await;
    assert_eq!(code, Some(71), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("another program listens there"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// An attacker on the LAN (issue: attacker's review of serve). Each test says what a hostile
// client tries and what it must see.

/// AUTH PLAIN's initial response for `user` and `password`.
fn plain_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// Two users; the attacker knows the scanner's password (it is on the printer's web page)
/// and guesses the CEO's.
fn two_users(extra: &str) -> String {
    format!(
        r#"auth_failures = 3
{extra}

[serve.users.scanner]
password_hash = "{SECRET_HASH}"
senders = ["scanner@contoso.com"]

[serve.users.ceo]
password_hash = "{SECRET_HASH}"
senders = ["ceo@contoso.com"]
"#
    )
}

/// Finding (medium): a successful login forgot the address's failed attempts, so an attacker
/// who knows one account's password logged in with it after every few guesses and guessed
/// another account's password without ever being locked out. Now the failures of an address
/// count for `lockout_minutes` whatever logs in meanwhile.
#[tokio::test]
async fn a_login_with_a_known_password_does_not_reset_the_lockout() {
    let (_server, _env, serve) = started(&two_users("")).await;
    let mut replies = Vec::new();
    for round in 0..3 {
        for guess in 0..2 {
            let mut c = Raw::connect(serve.port).await;
            c.reply().await;
            c.cmd("EHLO t").await;
            let r = c
                .cmd(&format!(
                    "AUTH PLAIN {}",
                    plain_auth("ceo", &format!("g{round}{guess}"))
                ))
                .await;
            replies.push(r);
        }
        let mut c = Raw::connect(serve.port).await;
        c.reply().await;
        c.cmd("EHLO t").await;
        replies.push(
            c.cmd(&format!("AUTH PLAIN {}", plain_auth("scanner", "secret")))
                .await,
        );
    }
    // 2 guesses, the scanner's login (fine), the 3rd guess locks the address out; from then
    // on nothing is even tried.
    assert!(replies[0].starts_with("535 "), "{replies:?}");
    assert!(replies[1].starts_with("535 "), "{replies:?}");
    assert!(replies[2].starts_with("235 "), "{replies:?}");
    assert_eq!(
        replies[3], "421 4.7.0 Too many failed authentications, try again later\r\n",
        "{replies:?}"
    );
    for r in &replies[4..] {
        assert!(
            r.starts_with("454 4.7.0 Too many failed authentications"),
            "{replies:?}"
        );
    }
}

/// Finding (medium): the lockout was checked before the password and counted after it, so
/// AUTH sent at once on many connections had every password verified: 60 guesses where
/// `auth_failures` allows 3. Now an attempt is counted before its password is checked: at
/// most `auth_failures` are verified, the others refused unchecked.
#[tokio::test]
async fn concurrent_auth_attempts_get_no_more_guesses_than_the_lockout_allows() {
    let (_server, _env, serve) = started(&two_users("")).await;
    let mut clients = Vec::new();
    for _ in 0..30 {
        let mut c = Raw::connect(serve.port).await;
        c.reply().await;
        c.cmd("EHLO t").await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.w.write_all(format!("AUTH PLAIN {}\r\n", plain_auth("ceo", &format!("g{i}"))).as_bytes())
            .await
            .unwrap();
    }
    for c in clients.iter_mut() {
        let r = c.reply().await;
        assert!(
            r.starts_with("535 ") || r.starts_with("421 4.7.0") || r.starts_with("454 4.7.0"),
            "{r}"
        );
    }
    serve.wait_log("locked out").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failed = serve.log().matches("AUTH failed for \"ceo\"").count();
    assert!(failed <= 3, "{failed} passwords checked\n{}", serve.log());
}

/// Finding (medium): `max_connections` was the only limit, so one client took every slot
/// (and kept them: a byte every few minutes resets `idle_timeout`), and the printers got 421.
/// Now one address may hold at most `max_connections_per_client` (default half of
/// `max_connections`).
#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let (_server, _env, serve) =
        started("max_connections = 6\nmax_connections_per_client = 2\n").await;
    let mut mine = Vec::new();
    for _ in 0..2 {
        let mut c = Raw::connect(serve.port).await;
        assert!(c.reply().await.starts_with("220 "));
        mine.push(c);
    }
    let mut third = Raw::connect(serve.port).await;
    assert_eq!(
        third.reply().await,
        "421 4.7.0 Too many connections from 127.0.0.1, try again later\r\n"
    );
    assert!(third.closed().await);
    // One closes: the address may connect again.
    mine.pop().unwrap().cmd("QUIT").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = Raw::connect(serve.port).await;
    assert!(again.reply().await.starts_with("220 "));
}

/// Finding (medium): the per-user sender restriction covered the envelope only: the scanner
/// (allowed scanner@contoso.com) sent `From: CEO <ceo@contoso.com>` through a relay
/// profile, and Microsoft 365 relays whatever From an accepted domain has. Now the From and
/// Sender fields must name addresses the user may use too (or the profile's own sender when
/// the profile rewrites them): 550 5.7.1 otherwise, and nothing is queued.
#[tokio::test]
async fn a_user_cannot_put_another_sender_in_the_from_field() {
    let (server, env, serve) = started(&two_users("")).await;
    let send = |from_header: &'static str| {
        let port = serve.port;
        async move {
            let mut c = Raw::connect(port).await;
            c.reply().await;
            c.cmd("EHLO t").await;
            let r = c
                .cmd(&format!("AUTH PLAIN {}", plain_auth("scanner", "secret")))
                .await;
            assert!(r.starts_with("235 "), "{r}");
            assert!(
                c.cmd("MAIL FROM:<scanner@contoso.com>")
                    .await
                    .starts_with("250 ")
            );
            assert!(c.cmd("RCPT TO:<all@contoso.com>").await.starts_with("250 "));
            assert!(c.cmd("DATA").await.starts_with("354"));
            c.cmd(&format!(
                "{from_header}To: all@contoso.com\r\nSubject: wire the money\r\n\r\nplease\r\n."
            ))
            .await
        }
    };
    for spoof in [
        "From: CEO <ceo@contoso.com>\r\n",
        "From: CEO <CEO@Contoso.com>\r\n",
        "From: scanner@contoso.com\r\nSender: ceo@contoso.com\r\n",
        "From: scanner@contoso.com, ceo@contoso.com\r\n",
        "From: scanner@contoso.com\r\nFrom: ceo@contoso.com\r\n",
    ] {
        let r = send(spoof).await;
        assert!(
            r.starts_with("550 5.7.1 ")
                && r.to_ascii_lowercase().contains("<ceo@contoso.com>")
                && r.contains("user scanner"),
            "{spoof:?}: {r}"
        );
    }
    assert_eq!(env.queue_count().await, 0);
    // Its own address (any case, with a display name) goes.
    let r = send("From: Scanner <Scanner@contoso.com>\r\n").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let got = delivered(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", serve.log());
}

/// Finding (low): the EHLO name went into the `Received:` field as given: 980 characters made
/// a header line longer than RFC 5322's 998, and bytes that are not UTF-8 became raw U+FFFD
/// in a header. Now the name in the trace field is at most 255 printable ASCII characters.
#[tokio::test]
async fn the_received_field_stays_well_formed_whatever_the_ehlo_name() {
    let (server, _env, serve) = started("").await;
    let mut s = TcpStream::connect(("127.0.0.1", serve.port)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let _ = s.read(&mut buf).await.unwrap();
    let mut dialogue = Vec::new();
    dialogue.extend_from_slice(b"EHLO ");
    dialogue.extend_from_slice("h".repeat(100).as_bytes());
    dialogue.extend_from_slice(b"\xff\xfe(x)");
    dialogue.extend_from_slice("h".repeat(880).as_bytes());
    dialogue
        .extend_from_slice(b"\r\nMAIL FROM:<a@contoso.com>\r\nRCPT TO:<b@contoso.com>\r\nDATA\r\n");
    s.write_all(&dialogue).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("354 ") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    s.write_all(b"Subject: t\r\n\r\nx\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    let got = delivered(&server, 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "{}", serve.log());
    let data = &got[0].data;
    let head = text(data).split("\r\n\r\n").next().unwrap().to_owned();
    for line in head.split("\r\n") {
        assert!(line.len() <= 998, "{} characters: {line}", line.len());
        assert!(line.is_ascii(), "{line:?}");
    }
    let received = head
        .split("\r\n")
        .find(|l| l.starts_with("Received: "))
        .unwrap();
    assert!(
        received.starts_with(&format!(
            "Received: from {}??(x){} ([127.0.0.1])",
            "h".repeat(100),
            "h".repeat(150)
        )),
        "{received}"
    );
}

/// Finding (medium): the data of a session went to a temporary file in $TMPDIR (/tmp: a RAM
/// tmpfs on Debian 13, private per unit but the same memory): 100 clients × 35 MB pinned
/// GBs of memory while they sent slowly. Now it goes to the spool's tmp directory, on the
/// spool's disk, where queued mail goes anyway.
#[tokio::test]
async fn data_in_transit_is_kept_in_the_spool_not_in_tmp() {
    let server = FakeM365::start(FakeConfig::mx()).await;
    let env = Env::new();
    env.write(server.port(), server.ca_file(), "");
    let tmp = env.dir.path().join("tmpdir");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(&env.config)
        .arg("serve")
        .env("TMPDIR", &tmp);
    let serve = Serve::spawn(cmd).await;
    let mut c = Raw::connect(serve.port).await;
    c.reply().await;
    c.cmd("EHLO t").await;
    c.cmd("MAIL FROM:<a@contoso.com>").await;
    c.cmd("RCPT TO:<b@contoso.com>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.w.write_all(b"Subject: slow\r\n\r\n").await.unwrap();
    c.w.write_all("x".repeat(100_000).as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let in_tmp: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(in_tmp.is_empty(), "{in_tmp:?}");
    let in_spool = std::fs::read_dir(env.spool.join("tmp")).unwrap().count();
    assert_eq!(in_spool, 1);
    let r = c.cmd("\r\n.").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
}

/// Finding (medium): when the spool's disk was full, the message got `554 5.3.0` (exit 73
/// became a permanent refusal), so a printer dropped it for a condition that passes. Now
/// serve refuses MAIL with `452 4.3.1` when the spool's file system has less room than one
/// and a half of the largest message (as Postfix does), and a failure to write the spool is a
/// temporary 451.
#[tokio::test]
async fn too_little_room_in_the_spool_is_a_temporary_refusal() {
    let (_server, env, serve) = started("max_message_size = 1000000000000000\n").await;
    let mut c = Raw::connect(serve.port).await;
    c.reply().await;
    c.cmd("EHLO t").await;
    let r = c.cmd("MAIL FROM:<a@contoso.com>").await;
    assert!(
        r.starts_with("452 4.3.1 Insufficient system storage"),
        "{r}"
    );
    assert_eq!(env.queue_count().await, 0);
}

/// Finding (low): a user name or address given by a client reached stderr (the journal) with
/// Unicode format characters raw: U+202E reorders what the administrator reads, U+2028 starts
/// a new line in some viewers. Now they are escaped.
#[tokio::test]
async fn what_a_client_says_reaches_the_log_escaped() {
    let (_server, _env, serve) = started(&two_users("")).await;
    let mut c = Raw::connect(serve.port).await;
    c.reply().await;
    c.cmd("EHLO t").await;
    let r = c
        .cmd(&format!(
            "AUTH PLAIN {}",
            plain_auth("ceo\u{202e}nimda\u{2028}fake", "x")
        ))
        .await;
    assert!(r.starts_with("535 "), "{r}");
    serve.wait_log("AUTH failed for").await;
    let log = serve.log();
    assert!(
        !log.contains('\u{202e}') && !log.contains('\u{2028}'),
        "{log:?}"
    );
    assert!(log.contains("\\u{202e}"), "{log}");
}
