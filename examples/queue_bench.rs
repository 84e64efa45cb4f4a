//! Benchmark (not a test): drain N queued messages with pacing off and report messages per
//! second, through the REAL delivery engine (`queue::TransportDeliverer`: our SMTP session, route,
//! connector), in three ways:
//!
//! * "reuse": the queue runner, one SMTP session for the whole batch, one flight per message;
//! * "per-message": the queue runner, but a new connection for every message;
//! * "process": one `m365send -odi` process per message (the msmtpq way), with
//!   `--binary target/release/m365send`.
//!
//! ```text
//! cargo run --release --example queue_bench -- [--messages 1000] [--size 2048]
//!     [--handshake-ms 0] [--mode all|reuse|per-message|process] [--server HOST:PORT]
//!     [--binary target/release/m365send] [--engine real|mini]
//! cargo run --release --example queue_bench -- --sink-only [--handshake-ms 0]
//!     (just run the sink and print its address, for timing other senders against it)
//! ```
//!
//! Without `--server`, a minimal SMTP sink runs on 127.0.0.1 in this process; its
//! `--handshake-ms` delays the greeting to stand for STARTTLS + AUTH (about 50-150 ms against
//! Microsoft 365). The profile is direct send to 127.0.0.1 (no TLS offered by the sink, no
//! AUTH), so the numbers are the queue's and the session's own costs. `--engine mini` swaps
//! in a minimal hand-written client instead of the real session, for comparison.

use std::io::{Read, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use m365send::config::{Config, Mode, Profile};
use m365send::message::{Body, Envelope, Prepared};
use m365send::queue::{
    self, BoxFuture, Deliverer, MessageOutcome, Problem, RunOptions, TransportDeliverer,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Reuse,
    PerMessage,
    Process,
}

/// Which delivery engine drains the queue.
fn make_deliverer(server: SocketAddr, reuse: bool, mini: bool) -> Box<dyn Deliverer> {
    if mini {
        Box::new(MiniSmtp::new(server, reuse))
    } else if reuse {
        Box::new(TransportDeliverer::new(0))
    } else {
        Box::new(OnePerMessage(TransportDeliverer::new(0)))
    }
}

/// The real deliverer, but reconnecting for every message (the runner reconnects when
/// `reset` fails).
struct OnePerMessage(TransportDeliverer);

impl Deliverer for OnePerMessage {
    fn open<'a>(
        &'a mut self,
        config: &'a Config,
        profile: &'a Profile,
        envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), Problem>> {
        self.0.open(config, profile, envelope)
    }
    fn send<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, MessageOutcome> {
        self.0.send(message)
    }
    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async { Err(Problem::error("one connection per message")) })
    }
    fn close(&mut self) -> BoxFuture<'_, ()> {
        self.0.close()
    }
}

struct Args {
    messages: usize,
    size: usize,
    handshake_ms: u64,
    ways: Vec<Way>,
    server: Option<SocketAddr>,
    sink_only: bool,
    binary: Option<PathBuf>,
    mini: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 1000,
        size: 2048,
        handshake_ms: 0,
        ways: vec![Way::Reuse, Way::PerMessage, Way::Process],
        server: None,
        sink_only: false,
        binary: None,
        mini: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--messages" => a.messages = val()?.parse().map_err(|e| format!("{e}"))?,
            "--size" => a.size = val()?.parse().map_err(|e| format!("{e}"))?,
            "--handshake-ms" => a.handshake_ms = val()?.parse().map_err(|e| format!("{e}"))?,
            "--sink-only" => a.sink_only = true,
            "--server" => a.server = Some(val()?.parse().map_err(|e| format!("{e}"))?),
            "--binary" => a.binary = Some(PathBuf::from(val()?)),
            "--engine" => {
                a.mini = match val()?.as_str() {
                    "real" => false,
                    "mini" => true,
                    e => return Err(format!("unknown engine {e}")),
                }
            }
            "--mode" => {
                a.ways = match val()?.as_str() {
                    "all" => vec![Way::Reuse, Way::PerMessage, Way::Process],
                    "both" => vec![Way::Reuse, Way::PerMessage],
                    "reuse" => vec![Way::Reuse],
                    "per-message" => vec![Way::PerMessage],
                    "process" => vec![Way::Process],
                    m => return Err(format!("unknown mode {m}")),
                }
            }
            f => return Err(format!("unknown option {f}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("queue_bench: {e}");
            std::process::exit(64);
        }
    };
    let server = match args.server {
        Some(s) => s,
        None => match start_sink(args.handshake_ms) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("queue_bench: cannot start the sink: {e}");
                std::process::exit(71);
            }
        },
    };
    if args.sink_only {
        println!("{server}");
        loop {
            std::thread::park();
        }
    }
    for way in args.ways.clone() {
        let result = match way {
            Way::Reuse => bench(&args, server, true),
            Way::PerMessage => bench(&args, server, false),
            Way::Process => match &args.binary {
                Some(bin) => processes(&args, server, bin),
                None => {
                    println!("process      (skipped: give --binary target/release/m365send)");
                    Ok(())
                }
            },
        };
        if let Err(e) = result {
            eprintln!("queue_bench: {e}");
            std::process::exit(70);
        }
    }
}

fn bench(args: &Args, server: SocketAddr, reuse: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut profile = Profile {
        mode: Mode::Direct,
        name: "bench".into(),
        rate_per_minute: Some(0),
        // One connection, as the modes above describe (scripts/bench-rtt.sh measures more).
        queue_connections: Some(1),
        ..Profile::default()
    };
    profile.endpoint.host = Some(server.ip().to_string());
    profile.endpoint.port = Some(server.port());
    let config = Config {
        spool_dir: Some(dir.path().join("spool")),
        profiles: [("bench".to_owned(), profile)].into_iter().collect(),
        ..Config::default()
    };
    let t = Instant::now();
    for n in 0..args.messages {
        let m = message(dir.path(), n, args.size)?;
        queue::enqueue(&config, "bench", &m, None).map_err(|e| e.message)?;
    }
    let enq = t.elapsed();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut deliverer = make_deliverer(server, reuse, args.mini);
    let t = Instant::now();
    let opts = RunOptions {
        rate_per_minute: Some(0),
        ..RunOptions::default()
    };
    let report = rt
        .block_on(queue::run(&config, opts, deliverer.as_mut()))
        .map_err(|e| e.message)?;
    let drain = t.elapsed();
    println!(
        "{:<12} enqueue {:>5} msgs in {:>7.3}s ({:>7.0}/s) | drain {:>5} delivered, {} deferred, \
         {} sessions in {:>7.3}s ({:>7.0} msgs/s)",
        if reuse { "reuse" } else { "per-message" },
        args.messages,
        enq.as_secs_f64(),
        args.messages as f64 / enq.as_secs_f64(),
        report.delivered,
        report.deferred,
        report.sessions,
        drain.as_secs_f64(),
        report.delivered as f64 / drain.as_secs_f64()
    );
    Ok(())
}

/// One `m365send -odi` process per message, one after the other (the msmtpq way).
fn processes(args: &Args, server: SocketAddr, binary: &Path) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("config.toml");
    let text = format!(
        "spool_dir = \"{}\"\n\n[profiles.bench]\nmode = \"direct\"\nrate_per_minute = 0\n\n\
         [profiles.bench.endpoint]\nhost = \"{}\"\nport = {}\n\n\
         [profiles.bench.retry]\nattempts = 1\n",
        dir.path().join("spool").display(),
        server.ip(),
        server.port()
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut ok = 0usize;
    for n in 0..args.messages {
        let m = message(dir.path(), n, args.size)?;
        let body = std::fs::read(m.body.path()).map_err(|e| e.to_string())?;
        let mut child = Command::new(binary)
            .args(["-odi", "-i", "-f", "bench@contoso.com", "sink@contoso.com"])
            .env("M365SEND_CONFIG", &config)
            .env("HOME", dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", binary.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&body).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            ok += 1;
        } else if n == 0 {
            return Err(format!(
                "m365send failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let took = t.elapsed();
    println!(
        "{:<12} {:>5} processes ({} delivered) in {:>7.3}s ({:>7.0} msgs/s)",
        "process",
        args.messages,
        ok,
        took.as_secs_f64(),
        ok as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn message(dir: &Path, n: usize, size: usize) -> Result<Prepared, String> {
    let mut bytes = format!(
        "From: bench@contoso.com\r\nTo: sink@contoso.com\r\nSubject: bench {n}\r\n\
         Message-ID: <bench-{n}@contoso.com>\r\n\r\n"
    )
    .into_bytes();
    while bytes.len() + 78 < size {
        bytes.extend_from_slice(&[b'x'; 76]);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b".leading dot line\r\n");
    let path = dir.join("body.tmp");
    std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
    Ok(Prepared {
        envelope: Envelope {
            sender: "bench@contoso.com".into(),
            recipients: vec!["sink@contoso.com".into()],
            dsn: Default::default(),
        },
        body: Body::at(path),
        size: bytes.len() as u64,
        eight_bit: false,
        smtputf8: false,
        header_block: String::new(),
    })
}

/// A plain SMTP client (no TLS, no pipelining): enough to measure the queue's own overhead
/// and the cost of a connection per message.
struct MiniSmtp {
    server: SocketAddr,
    reuse: bool,
    conn: Option<BufReader<TcpStream>>,
}

impl MiniSmtp {
    fn new(server: SocketAddr, reuse: bool) -> Self {
        MiniSmtp {
            server,
            reuse,
            conn: None,
        }
    }
}

async fn command(c: &mut BufReader<TcpStream>, line: &str) -> Result<u16, Problem> {
    if !line.is_empty() {
        c.get_mut()
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Problem::error(e.to_string()))?;
    }
    read_reply(c).await
}

async fn read_reply(c: &mut BufReader<TcpStream>) -> Result<u16, Problem> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = c
            .read_line(&mut line)
            .await
            .map_err(|e| Problem::error(e.to_string()))?;
        if n == 0 {
            return Err(Problem::error("connection closed"));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| Problem::error(format!("bad reply {line:?}")));
        }
    }
}

fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl Deliverer for MiniSmtp {
    fn open<'a>(
        &'a mut self,
        _config: &'a Config,
        _profile: &'a Profile,
        _envelope: &'a Envelope,
    ) -> BoxFuture<'a, Result<(), Problem>> {
        Box::pin(async move {
            let stream = TcpStream::connect(self.server)
                .await
                .map_err(|e| Problem::error(format!("connect {}: {e}", self.server)))?;
            stream.set_nodelay(true).ok();
            let mut c = BufReader::new(stream);
            read_reply(&mut c).await?;
            command(&mut c, "EHLO bench.contoso.com\r\n").await?;
            self.conn = Some(c);
            Ok(())
        })
    }

    fn send<'a>(&'a mut self, message: &'a Prepared) -> BoxFuture<'a, MessageOutcome> {
        Box::pin(async move {
            let Some(c) = self.conn.as_mut() else {
                return MessageOutcome::Transient(Problem::error("not connected"));
            };
            let mut body = Vec::new();
            if let Err(e) = message
                .body
                .open()
                .and_then(|mut f| f.read_to_end(&mut body))
            {
                return MessageOutcome::Transient(Problem::error(e.to_string()));
            }
            let steps = async {
                command(c, &format!("MAIL FROM:<{}>\r\n", message.envelope.sender)).await?;
                for r in &message.envelope.recipients {
                    command(c, &format!("RCPT TO:<{r}>\r\n")).await?;
                }
                command(c, "DATA\r\n").await?;
                c.get_mut()
                    .write_all(&dot_stuff(&body))
                    .await
                    .map_err(|e| Problem::error(e.to_string()))?;
                command(c, "").await
            };
            match steps.await {
                Ok(code) if code < 400 => MessageOutcome::Delivered,
                Ok(code) => MessageOutcome::Transient(Problem::error(format!("reply {code}"))),
                Err(p) => MessageOutcome::Transient(p),
            }
        })
    }

    fn reset(&mut self) -> BoxFuture<'_, Result<(), Problem>> {
        Box::pin(async move {
            if !self.reuse {
                // One connection per message: make the runner close and reconnect.
                return Err(Problem::error("per-message mode"));
            }
            match self.conn.as_mut() {
                Some(c) => command(c, "RSET\r\n").await.map(|_| ()),
                None => Err(Problem::error("not connected")),
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(mut c) = self.conn.take() {
                let _ = command(&mut c, "QUIT\r\n").await;
            }
        })
    }
}

/// A minimal SMTP sink on 127.0.0.1 (its own thread and runtime).
fn start_sink(handshake_ms: u64) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(sink_session(stream, handshake_ms));
            }
        });
    });
    Ok(addr)
}

async fn sink_session(stream: TcpStream, handshake_ms: u64) -> std::io::Result<()> {
    stream.set_nodelay(true).ok();
    let mut c = BufReader::new(stream);
    if handshake_ms > 0 {
        tokio::time::sleep(Duration::from_millis(handshake_ms)).await;
    }
    c.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = String::new();
    loop {
        line.clear();
        if c.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            "DATA" => {
                c.get_mut().write_all(b"354 go ahead\r\n").await?;
                loop {
                    line.clear();
                    if c.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" {
                        break;
                    }
                }
                b"250 2.0.0 OK queued\r\n"
            }
            "QUIT" => {
                c.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => b"250 2.0.0 OK\r\n",
        };
        c.get_mut().write_all(reply).await?;
    }
}
