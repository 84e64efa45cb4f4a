//! Delivery benchmark (not a test): round trips per message for submit with PIPELINING, and
//! the client's peak RSS sending a 1 MB and a 100 MB message, against the in-process fake
//! Microsoft 365 server on 127.0.0.1.
//!
//! Run: `cargo bench --bench delivery` (or scripts/bench-delivery.sh). The client runs in a
//! child process (this same binary with `client ...` arguments) so its VmHWM is its own.

#[path = "../tests/support/fake_m365.rs"]
mod fake_m365;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fake_m365::{FakeConfig, FakeM365};
use m365send::config::{AuthMethod, Chunking, Config, Mode, Profile, SecretSource, TlsVersion};
use m365send::deliver::{Options, deliver};
use m365send::message::{Body, Dsn, Envelope, Prepared};
use m365send::route::{AuthKind, Endpoint, Host, TlsPolicy};
use m365send::secret::Secret;

const TOKEN: &str = "bench-token";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        client(&args[2..]);
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(parent());
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Child: deliver the body file once, print peak RSS.
fn client(args: &[String]) {
    let port: u16 = args[0].parse().unwrap();
    let ca = PathBuf::from(&args[1]);
    let body = PathBuf::from(&args[2]);
    let chunking = if args.get(3).map(String::as_str) == Some("bdat") {
        Chunking::Auto
    } else {
        Chunking::Off
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = vm_hwm_kib();
    let start = Instant::now();
    rt.block_on(async {
        let mut profile = Profile {
            name: "bench".into(),
            mode: Mode::Submit,
            mailbox: Some("app@contoso.com".into()),
            helo: Some("client.contoso.com".into()),
            chunking,
            ..Profile::default()
        };
        profile.auth.method = AuthMethod::OAuth;
        profile.auth.token = SecretSource {
            value: Some(Secret::new(TOKEN)),
            ..SecretSource::default()
        };
        profile.retry.attempts = Some(1);
        let endpoint = Endpoint {
            mode: Mode::Submit,
            hosts: vec![Host {
                name: "127.0.0.1".into(),
                port,
                preference: None,
                addrs: Vec::new(),
            }],
            tls: TlsPolicy::Required,
            tls_min: TlsVersion::V1_2,
            ca_file: Some(ca),
            client_cert: None,
            auth: AuthKind::OAuth,
            source: "bench".into(),
        };
        let size = std::fs::metadata(&body).unwrap().len();
        let msg = Prepared {
            envelope: Envelope {
                sender: "app@contoso.com".into(),
                recipients: vec!["ops@contoso.com".into(), "dev@contoso.com".into()],
                dsn: Dsn::default(),
            },
            body: Body::at(&body),
            size,
            eight_bit: false,
            smtputf8: false,
            header_block: String::new(),
        };
        deliver(
            &Config::default(),
            &profile,
            &msg,
            &endpoint,
            &Options::default(),
        )
        .await
        .unwrap();
    });
    println!(
        "{} {} {}",
        before,
        vm_hwm_kib(),
        start.elapsed().as_millis()
    );
}

fn write_body(dir: &Path, name: &str, size: usize) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let head = b"From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: bench\r\n\r\n";
    f.write_all(head).unwrap();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 .......\r\n";
    let dotline = b".leading dot line that must be stuffed\r\n";
    let mut written = head.len();
    let mut i = 0u64;
    while written < size {
        let l: &[u8] = if i.is_multiple_of(50) { dotline } else { line };
        f.write_all(l).unwrap();
        written += l.len();
        i += 1;
    }
    f.flush().unwrap();
    path
}

async fn run_client(server: &FakeM365, body: &Path, mode: &str) -> (u64, u64, u128) {
    let exe = std::env::current_exe().unwrap();
    let out = tokio::process::Command::new(exe)
        .arg("client")
        .arg(server.port().to_string())
        .arg(server.ca_file())
        .arg(body)
        .arg(mode)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u128> = s.split_whitespace().map(|n| n.parse().unwrap()).collect();
    (v[0] as u64, v[1] as u64, v[2])
}

async fn parent() {
    let dir = tempfile::tempdir().unwrap();
    println!("m365send delivery benchmark (fake Microsoft 365 on 127.0.0.1, submit mode)");

    // Round trips: a small message; each read the server gets is one client flight.
    let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", TOKEN)).await;
    let small = write_body(dir.path(), "small", 2_000);
    run_client(&server, &small, "data").await;
    let c = &server.connections()[0];
    println!("\nround trips for one message (PIPELINING, DATA):");
    println!("  1. connect -> greeting");
    let mut n = 1;
    for (i, r) in c.reads.iter().enumerate() {
        if Some(i) == c.tls_from_read {
            n += 1;
            println!(
                "  {n}. TLS handshake ({})",
                c.tls_version.as_deref().unwrap_or("?")
            );
        }
        n += 1;
        let text = String::from_utf8_lossy(r);
        let cmds: Vec<String> = text
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                if l.starts_with("AUTH XOAUTH2") {
                    "AUTH XOAUTH2 <redacted>".to_owned()
                } else if l.len() > 40 {
                    format!("{}…", &l[..40])
                } else {
                    l.to_owned()
                }
            })
            .collect();
        let shown = if cmds.len() > 5 {
            format!("[message body, {} bytes, ends with \".\"]", r.len())
        } else {
            cmds.join(" | ")
        };
        println!("  {n}. {shown}");
    }
    println!(
        "  => {n} round trips (incl. QUIT); MAIL+RCPT+RCPT+DATA in one flight: {}",
        c.read_containing("MAIL FROM")
            .is_some_and(|r| r.contains("RCPT") && r.contains("DATA"))
    );

    println!("\npeak RSS of the client process (VmHWM):");
    for (label, size) in [("1 MB", 1_000_000usize), ("100 MB", 100_000_000)] {
        let body = write_body(dir.path(), label, size);
        for mode in ["data", "bdat"] {
            let server =
                FakeM365::start(FakeConfig::submission().user("app@contoso.com", TOKEN)).await;
            let (_, hwm, ms) = run_client(&server, &body, mode).await;
            let ok = server.accepted().len() == 1;
            println!(
                "  {label:>6} via {}: VmHWM {:.1} MB, {ms} ms, delivered: {ok}",
                if mode == "bdat" { "BDAT" } else { "DATA" },
                hwm as f64 / 1024.0
            );
        }
    }
}
