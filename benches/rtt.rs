//! Round-trip benchmark (not a test): m365send against msmtp through a latency proxy
//! (examples/latency_proxy.rs, run in-process) in front of the fake Microsoft 365 server —
//! or, for relay, any SMTP server on 127.0.0.1 such as the loopback Postfix that
//! scripts/bench-rtt.sh sets up.
//!
//! Prints, in one run:
//! * one message (cached token with XOAUTH2 for submit; no AUTH for relay): the median wall
//!   time of each tool over `--runs` runs, and round trips (wall / RTT, and counted on the
//!   wire: client flights + ½ for the greeting);
//! * the queue: `--queue N` messages drained by one `m365send queue run` on one connection,
//!   against a loop of one msmtp process per message;
//! * relay with several connections (`queue_connections` = each of `--connections`);
//! * peak RSS (VmHWM of the process, from wait4) sending 1 MB and 100 MB, for both: the
//!   median of `--rss-runs` alternating runs.
//!
//! ```text
//! scripts/bench-rtt.sh [--rtt-ms 50] [--runs 9] [--queue 200] [--connections 1,2,4,8]
//!     [--relay-server 127.0.0.1:PORT --relay-ca CA.pem] [--skip-rss | --rss-only]
//!     [--rss-runs 3] [--serve SECONDS]
//! ```
//!
//! Environment: M365SEND_BIN (default target/release/m365send), MSMTP (default msmtp).
//! Everything listens on and connects to 127.0.0.1 only.

#[path = "../tests/support/fake_m365.rs"]
mod fake_m365;
#[path = "../examples/latency_proxy.rs"]
mod latency_proxy;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_m365::{FakeConfig, FakeM365};
use latency_proxy::Stats;
use tokio::io::AsyncWriteExt;

const TOKEN: &str = "bench-cached-access-token";
const MAILBOX: &str = "app@contoso.com";
const SENDER: &str = "alerts@contoso.com";
const RCPT: &str = "ops@contoso.com";

struct Args {
    rtt_ms: u64,
    runs: usize,
    queue: usize,
    connections: Vec<u32>,
    relay_server: Option<SocketAddr>,
    relay_ca: Option<PathBuf>,
    rss: bool,
    /// Runs of each tool per message size for the peak RSS (the fake server keeps every
    /// message it receives in memory: 100 MB each).
    rss_runs: usize,
    /// Only the peak RSS part.
    rss_only: bool,
    /// Only set up the servers, proxies and configurations, print them, and wait this long
    /// (for timing or tracing a sender by hand).
    serve: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        rtt_ms: 50,
        runs: 9,
        queue: 200,
        connections: vec![1, 2, 4, 8],
        relay_server: None,
        relay_ca: None,
        rss: true,
        rss_runs: 3,
        rss_only: false,
        serve: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("a value after the option");
        match k.as_str() {
            "--rtt-ms" => a.rtt_ms = v().parse().expect("--rtt-ms N"),
            "--runs" => a.runs = v().parse().expect("--runs N"),
            "--queue" => a.queue = v().parse().expect("--queue N"),
            "--connections" => {
                a.connections = v()
                    .split(',')
                    .map(|n| n.parse().expect("--connections 1,2,4"))
                    .collect()
            }
            "--relay-server" => a.relay_server = Some(v().parse().expect("--relay-server IP:PORT")),
            "--relay-ca" => a.relay_ca = Some(v().into()),
            "--skip-rss" => a.rss = false,
            "--rss-only" => a.rss_only = true,
            "--rss-runs" => a.rss_runs = v().parse().expect("--rss-runs N"),
            "--serve" => a.serve = Some(v().parse().expect("--serve SECONDS")),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    if let Some(s) = a.relay_server {
        assert!(s.ip().is_loopback(), "--relay-server must be on 127.0.0.1");
    }
    a
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("measure-rss") {
        measure_rss(&argv[2..]);
    }
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(a));
}

/// A proxy in front of `target`, and what it counted.
struct Proxy {
    port: u16,
    stats: Stats,
}

fn proxy(target: SocketAddr, one_way: Duration) -> Proxy {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats: Stats = Arc::default();
    latency_proxy::serve(listener, target, one_way, stats.clone());
    Proxy { port, stats }
}

impl Proxy {
    fn connections(&self) -> usize {
        self.stats.lock().unwrap().len()
    }
    /// Client flights of the connections from `from` on, once they are closed.
    async fn flights_since(&self, from: usize) -> (usize, usize) {
        for _ in 0..200 {
            {
                let s = self.stats.lock().unwrap();
                if s[from..].iter().all(|c| c.closed) {
                    return (s.len() - from, s[from..].iter().map(|c| c.flights).sum());
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = self.stats.lock().unwrap();
        (s.len() - from, s[from..].iter().map(|c| c.flights).sum())
    }
}

struct Setup {
    dir: tempfile::TempDir,
    m365send: PathBuf,
    msmtp: PathBuf,
    config: PathBuf,
    msmtprc: PathBuf,
}

impl Setup {
    fn write_config(
        &self,
        sub: (u16, &Path),
        relay: (u16, &Path),
        direct: (u16, &Path),
        connections: u32,
    ) {
        let d = self.dir.path().display();
        let profile = |name: &str, mode: &str, port: u16, ca: &Path, auth: bool| {
            let mut p = format!(
                "[profiles.{name}]\nmode = \"{mode}\"\nrate_per_minute = 0\nhelo = \"bench.contoso.com\"\n\
                 queue_connections = {connections}\nmax_size = 157286400\n\
                 [profiles.{name}.endpoint]\nhost = \"127.0.0.1\"\nport = {port}\n\
                 [profiles.{name}.tls]\nca_file = \"{}\"\n\
                 [profiles.{name}.retry]\nattempts = 1\n",
                ca.display()
            );
            if auth {
                p.push_str(&format!(
                    "[profiles.{name}.auth]\nmethod = \"oauth\"\ntoken = {{ env = \"BENCH_TOKEN\" }}\n"
                ));
                p = p.replacen(
                    &format!("mode = \"{mode}\"\n"),
                    &format!("mode = \"{mode}\"\nmailbox = \"{MAILBOX}\"\n"),
                    1,
                );
            }
            p
        };
        let text = format!(
            "default_profile = \"submit\"\nspool_dir = \"{d}/spool\"\ndead_letter = \"{d}/dead.letter\"\n\
             cache_dir = \"{d}/cache\"\n[log]\nsyslog = false\n\n{}\n{}\n{}",
            profile("submit", "submit", sub.0, sub.1, true),
            profile("relay", "relay", relay.0, relay.1, false),
            profile("direct", "submit", direct.0, direct.1, true),
        );
        std::fs::write(&self.config, text).unwrap();
        let rc = format!(
            "defaults\ntls on\ntls_starttls on\nlogfile -\n\n\
             account submit\nhost 127.0.0.1\nport {}\ntls_trust_file {}\nfrom {MAILBOX}\nauth xoauth2\nuser {MAILBOX}\npassword {TOKEN}\n\n\
             account relay\nhost 127.0.0.1\nport {}\ntls_trust_file {}\nfrom {SENDER}\nauth off\n\n\
             account direct\nhost 127.0.0.1\nport {}\ntls_trust_file {}\nfrom {MAILBOX}\nauth xoauth2\nuser {MAILBOX}\npassword {TOKEN}\n",
            sub.0,
            sub.1.display(),
            relay.0,
            relay.1.display(),
            direct.0,
            direct.1.display()
        );
        std::fs::write(&self.msmtprc, rc).unwrap();
        std::fs::set_permissions(&self.msmtprc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn m365send(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.m365send);
        c.args(args)
            .env("M365SEND_CONFIG", &self.config)
            .env("BENCH_TOKEN", TOKEN)
            .env("HOME", self.dir.path())
            .env_remove("M365SEND_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    fn msmtp(&self, account: &str) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.msmtp);
        c.arg("-C")
            .arg(&self.msmtprc)
            .arg("-a")
            .arg(account)
            .arg(RCPT)
            .env("HOME", self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: {from}\r\nTo: {RCPT}\r\nSubject: {subject}\r\nDate: Fri, 27 Nov 2026 21:00:00 +0000\r\n\
         Message-ID: <{subject}@bench.contoso.com>\r\n\r\n"
    )
    .into_bytes();
    for i in 0..20 {
        m.extend_from_slice(
            format!("line {i}: backup of /srv finished without errors\r\n").as_bytes(),
        );
    }
    m
}

/// Run a command with `input` on stdin; its wall time. Panics (with stderr) on failure.
async fn timed(mut c: tokio::process::Command, input: &[u8]) -> Duration {
    let start = Instant::now();
    let mut child = c.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let t = start.elapsed();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        c.as_std().get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(a: Args) {
    let one_way = Duration::from_millis(a.rtt_ms / 2);
    let rtt = Duration::from_millis(a.rtt_ms);
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        m365send: std::env::var_os("M365SEND_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/release/m365send")),
        msmtp: std::env::var_os("MSMTP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("msmtp")),
        config: dir.path().join("config.toml"),
        msmtprc: dir.path().join("msmtprc"),
        dir,
    };
    let version = std::process::Command::new(&setup.msmtp)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_else(|e| panic!("msmtp not found ({e}): apt-get install msmtp"));

    let submit = FakeM365::start(FakeConfig::submission().user(MAILBOX, TOKEN)).await;
    let mx = FakeM365::start(FakeConfig::mx()).await;
    let (relay_addr, relay_ca, relay_name) = match (&a.relay_server, &a.relay_ca) {
        (Some(s), Some(ca)) => (*s, ca.clone(), format!("SMTP server at {s}")),
        _ => (
            mx.addr(),
            mx.ca_file().to_path_buf(),
            "fake Microsoft 365 MX".to_owned(),
        ),
    };
    let sub_proxy = proxy(submit.addr(), one_way);
    let relay_proxy = proxy(relay_addr, one_way);
    let write = |connections: u32| {
        setup.write_config(
            (sub_proxy.port, submit.ca_file()),
            (relay_proxy.port, &relay_ca),
            (submit.port(), submit.ca_file()),
            connections,
        )
    };
    write(1);
    if let Some(secs) = a.serve {
        println!(
            "M365SEND_CONFIG={} BENCH_TOKEN={TOKEN} HOME={}\nmsmtp -C {}\nserving for {secs} s",
            setup.config.display(),
            setup.dir.path().display(),
            setup.msmtprc.display()
        );
        tokio::time::sleep(Duration::from_secs(secs)).await;
        return;
    }

    println!(
        "m365send round-trip benchmark: RTT {} ms (latency proxy, {} ms each way), {}",
        a.rtt_ms,
        a.rtt_ms / 2,
        version
    );
    println!("submit: fake Microsoft 365 submission (STARTTLS, AUTH XOAUTH2 with a cached token)");
    println!("relay:  {relay_name} (STARTTLS, no AUTH)\n");

    if !a.rss_only {
        timings(&a, &setup, &sub_proxy, &relay_proxy, &write, rtt).await;
    }

    // ---- memory -----------------------------------------------------------------------
    if a.rss {
        rss(&setup, &submit, a.rss_runs).await;
    }
}

/// One message, the queue drain and the relay connections.
async fn timings(
    a: &Args,
    setup: &Setup,
    sub_proxy: &Proxy,
    relay_proxy: &Proxy,
    write: &dyn Fn(u32),
    rtt: Duration,
) {
    // ---- one message ------------------------------------------------------------------
    println!("## One message ({} runs each, median)\n", a.runs);
    println!(
        "| endpoint | tool | median wall | round trips (wall/RTT) | round trips on the wire |"
    );
    println!("|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (name, px, from) in [
        ("submit", &sub_proxy, MAILBOX),
        ("relay", &relay_proxy, SENDER),
    ] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let mut wire_ours = 0.0;
        let mut wire_theirs = 0.0;
        for i in 0..a.runs {
            let msg = message(from, &format!("one-{name}-{i}"));
            let before = px.connections();
            ours.push(
                timed(
                    setup.m365send(&["--profile", name, "-i", "-f", from, RCPT]),
                    &msg,
                )
                .await,
            );
            let (_, f) = px.flights_since(before).await;
            wire_ours = f as f64 + 0.5;
            let before = px.connections();
            theirs.push(timed(setup.msmtp(name), &msg).await);
            let (_, f) = px.flights_since(before).await;
            wire_theirs = f as f64 + 0.5;
        }
        let (mo, mt) = (median(ours), median(theirs));
        let (ro, rt_) = (
            mo.as_secs_f64() / rtt.as_secs_f64(),
            mt.as_secs_f64() / rtt.as_secs_f64(),
        );
        println!(
            "| {name} | m365send | {:.0} ms | {ro:.2} | {wire_ours} |",
            ms(mo)
        );
        println!(
            "| {name} | msmtp | {:.0} ms | {rt_:.2} | {wire_theirs} |",
            ms(mt)
        );
        ratios.push((name, ro / rt_));
    }
    for (name, r) in &ratios {
        println!("\n{name}: m365send / msmtp = {r:.2}");
    }

    // ---- the queue --------------------------------------------------------------------
    println!(
        "\n## Queue drain: {} messages (submit, one connection) against one msmtp process per message\n",
        a.queue
    );
    let queue_run = |profile: &'static str, count: usize| {
        let setup = &setup;
        async move {
            let from = if profile == "submit" { MAILBOX } else { SENDER };
            for i in 0..count {
                let msg = message(from, &format!("queued-{profile}-{i}"));
                timed(
                    setup.m365send(&["--profile", profile, "-odq", "-i", "-f", from, RCPT]),
                    &msg,
                )
                .await;
            }
            timed(setup.m365send(&["queue", "run"]), b"").await
        }
    };
    let before = sub_proxy.connections();
    let ours = queue_run("submit", a.queue).await;
    let (conns, flights) = sub_proxy.flights_since(before).await;
    let before = sub_proxy.connections();
    let start = Instant::now();
    for i in 0..a.queue {
        timed(
            setup.msmtp("submit"),
            &message(MAILBOX, &format!("loop-{i}")),
        )
        .await;
    }
    let theirs = start.elapsed();
    let (their_conns, their_flights) = sub_proxy.flights_since(before).await;
    let n = a.queue as f64;
    println!(
        "| tool | wall | messages/s | round trips per message (wall/RTT) | on the wire | connections |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| m365send queue run | {:.2} s | {:.1} | {:.2} | {:.2} | {conns} |",
        ours.as_secs_f64(),
        n / ours.as_secs_f64(),
        ours.as_secs_f64() / n / rtt.as_secs_f64(),
        (flights as f64 + 0.5) / n,
    );
    println!(
        "| msmtp, one process per message | {:.2} s | {:.1} | {:.2} | {:.2} | {their_conns} |",
        theirs.as_secs_f64(),
        n / theirs.as_secs_f64(),
        theirs.as_secs_f64() / n / rtt.as_secs_f64(),
        (their_flights as f64 + 0.5 * their_conns as f64) / n,
    );
    println!(
        "\nqueue drain: m365send is {:.1}× the msmtp loop",
        theirs.as_secs_f64() / ours.as_secs_f64()
    );

    // ---- several connections ----------------------------------------------------------
    println!(
        "\n## Relay queue drain with several connections ({} messages)\n",
        a.queue
    );
    println!("| queue_connections | wall | messages/s | speed-up | connections |");
    println!("|---|---|---|---|---|");
    let mut base = None;
    for &c in &a.connections {
        write(c);
        let before = relay_proxy.connections();
        let t = queue_run("relay", a.queue).await;
        let (conns, _) = relay_proxy.flights_since(before).await;
        let rate = n / t.as_secs_f64();
        let b = *base.get_or_insert(rate);
        println!(
            "| {c} | {:.2} s | {rate:.1} | {:.2}× | {conns} |",
            t.as_secs_f64(),
            rate / b
        );
    }
    write(1);
}

/// Peak RSS sending 1 MB and 100 MB, for both tools: the median (and range) of `runs`
/// alternating runs of each. One run varies by about half a megabyte: most of either
/// tool's resident set is its code and libraries' pages, which depend on the page cache.
async fn rss(setup: &Setup, submit: &FakeM365, runs: usize) {
    {
        println!(
            "\n## Peak RSS (VmHWM), submit straight to the fake server, median of {runs} (range)\n"
        );
        println!("| message | m365send | msmtp |");
        println!("|---|---|---|");
        let mb = |kib: i64| kib as f64 / 1024.0;
        let cell = |mut v: Vec<i64>| {
            v.sort();
            format!(
                "{:.1} MB ({:.1}–{:.1})",
                mb(v[v.len() / 2]),
                mb(v[0]),
                mb(v[v.len() - 1])
            )
        };
        for (label, size) in [("1 MB", 1_000_000usize), ("100 MB", 100_000_000)] {
            let body = write_body(setup.dir.path(), label, size);
            let token = PathBuf::from(TOKEN);
            let rc = setup.msmtprc.display().to_string();
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..runs.max(1) {
                ours.push(
                    peak_rss(
                        &setup.m365send,
                        &["--profile", "direct", "-i", "-f", MAILBOX, RCPT],
                        &[
                            ("M365SEND_CONFIG", &setup.config),
                            ("BENCH_TOKEN", &token),
                            ("HOME", setup.dir.path()),
                        ],
                        &body,
                    )
                    .await,
                );
                theirs.push(
                    peak_rss(
                        &setup.msmtp,
                        &["-C", &rc, "-a", "direct", RCPT],
                        &[("HOME", setup.dir.path())],
                        &body,
                    )
                    .await,
                );
            }
            println!("| {label} | {} | {} |", cell(ours), cell(theirs));
        }
        let got = submit.accepted();
        assert!(
            got.iter().any(|m| m.data.len() > 99_000_000),
            "the 100 MB message arrived"
        );
    }
}

fn write_body(dir: &Path, name: &str, size: usize) -> PathBuf {
    let path = dir.join(name.replace(' ', ""));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let head = format!("From: {MAILBOX}\r\nTo: {RCPT}\r\nSubject: {name}\r\n\r\n");
    f.write_all(head.as_bytes()).unwrap();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 .......\r\n";
    let mut written = head.len();
    while written < size {
        f.write_all(line).unwrap();
        written += line.len();
    }
    f.flush().unwrap();
    path
}

/// `program args...` with `input` as stdin and these environment variables: its peak
/// resident set, KiB. Measured by this binary started afresh (`measure-rss`): a child's
/// ru_maxrss counts the address space it was forked from, which here would be this process
/// with the fake server's copy of the 100 MB message; a fresh helper is a few MB.
async fn peak_rss(program: &Path, args: &[&str], envs: &[(&str, &Path)], input: &Path) -> i64 {
    let mut c = tokio::process::Command::new(std::env::current_exe().unwrap());
    c.arg("measure-rss").arg(input).arg(program).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().await.unwrap();
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The `measure-rss INPUT PROGRAM ARGS...` helper: run PROGRAM with INPUT as stdin, print its
/// ru_maxrss (KiB) from wait4, exit with its status.
// The child is reaped by wait4 (which also gives its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn measure_rss(args: &[String]) -> ! {
    let child = std::process::Command::new(&args[1])
        .args(&args[2..])
        .stdin(std::fs::File::open(&args[0]).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; the pointers are valid locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    println!("{}", usage.ru_maxrss);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    std::process::exit(if ok { 0 } else { 1 })
}
