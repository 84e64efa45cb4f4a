//! `m365send serve` benchmark (not a test): messages per second accepted into the spool (each
//! acknowledged only after its fsync) with 50 concurrent SMTP clients (Python smtplib, one
//! connection per client, 20 messages each by default), and how long until the in-process
//! queue runner delivered them all to the fake Microsoft 365 server on 127.0.0.1.
//!
//! Run: `scripts/bench-serve.sh [CLIENTS] [MESSAGES_PER_CLIENT]` (or `cargo bench --bench
//! serve -- CLIENTS MESSAGES`). The spool is on the temporary directory's filesystem.

#[path = "../tests/support/fake_m365.rs"]
mod fake_m365;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_m365::{FakeConfig, FakeM365};

const BIN: &str = env!("CARGO_BIN_EXE_m365send");

const CLIENT: &str = r#"
import os, smtplib, sys, threading, time
port, clients, per = int(os.environ["PORT"]), int(sys.argv[1]), int(sys.argv[2])
errors = []
barrier = threading.Barrier(clients + 1)
def client(c):
    s = smtplib.SMTP("127.0.0.1", port, timeout=120)
    s.ehlo("device%d.lan" % c)
    barrier.wait()
    try:
        for m in range(per):
            msg = ("From: dev%d@contoso.com\r\nTo: ops@contoso.com\r\nSubject: %d/%d\r\n"
                   "Message-ID: <%d.%d@bench>\r\n\r\nreading %d\r\n") % (c, c, m, c, m, m)
            s.sendmail("dev%d@contoso.com" % c, ["ops@contoso.com"], msg)
        s.quit()
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
for t in threads: t.start()
barrier.wait()
start = time.monotonic()
for t in threads: t.join()
print("%.6f %d" % (time.monotonic() - start, len(errors)))
"#;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let clients: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let per: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(FakeM365::start(FakeConfig::mx()));
    // The fake server runs on this runtime: drive it from a thread of its own.
    std::thread::spawn(move || rt.block_on(std::future::pending::<()>()));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"default_profile = "relay"
spool_dir = "{spool}"
dead_letter = "{dir}/dead.letter"

[profiles.relay]
mode = "relay"
rate_per_minute = 0
endpoint = {{ host = "127.0.0.1", port = {port} }}
tls = {{ ca_file = "{ca}" }}

[serve]
listen = ["127.0.0.1:0"]
max_connections = 1000
"#,
            spool = dir.path().join("spool").display(),
            dir = dir.path().display(),
            port = server.port(),
            ca = server.ca_file().display(),
        ),
    )
    .unwrap();
    let mut serve = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(serve.stderr.take().unwrap()).lines();
    let port: u16 = loop {
        let line = lines.next().expect("serve exited").unwrap();
        if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            break digits.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    let total = clients * per;
    println!("== m365send serve: {clients} clients x {per} messages = {total}");
    let start = Instant::now();
    let out = Command::new("python3")
        .arg("-c")
        .arg(CLIENT)
        .arg(clients.to_string())
        .arg(per.to_string())
        .env("PORT", port.to_string())
        .output()
        .expect("python3 is needed for this benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let secs: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(f64::NAN);
    let errors: usize = words
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(usize::MAX);
    if errors != 0 {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    println!(
        "accepted into the spool: {total} messages in {secs:.2} s = {:.0} messages/s ({errors} client errors)",
        total as f64 / secs
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while server.accepted().len() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = start.elapsed().as_secs_f64();
    println!(
        "delivered to the fake Microsoft 365: {} messages {all:.2} s after the first connection = {:.0} messages/s",
        server.accepted().len(),
        server.accepted().len() as f64 / all
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(serve.id() as i32, libc::SIGTERM);
    }
    let _ = serve.wait();
}
