//! A mail server that speaks only TLS 1.1 after STARTTLS, for the tests that must name one
//! (tests/legacy_tls.rs for sending, tests/doctor.rs for doctor). rustls cannot speak TLS 1.1,
//! so the TLS side is `openssl s_server -tls1_1` ([`openssl_tls11`]) behind a small STARTTLS
//! front written here ([`StartTlsFront`]: greeting, EHLO offering STARTTLS, 220, then the
//! bytes go to s_server). The front can instead close the connection on the client's TLS
//! hello, as a server without TLS 1.2 does.
//!
//! Use from a test file with `#[path = "support/legacy_tls.rs"] mod legacy_tls;`. Without
//! openssl, [`openssl_tls11`] is None and the test is skipped with [`skipped`] (.ci/run
//! installs openssl).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// What the front does once the client sent STARTTLS and got 220.
#[derive(Clone, Copy)]
pub enum AfterStartTls {
    /// Relay the TLS bytes to this address (openssl s_server) and back.
    Proxy(SocketAddr),
    /// Read the client's hello, then close the connection without a word.
    CloseOnHello,
}

/// An SMTP front on 127.0.0.1 that offers STARTTLS, counting its connections.
pub struct StartTlsFront {
    pub port: u16,
    connections: Arc<AtomicUsize>,
}

impl StartTlsFront {
    pub async fn start(after: AfterStartTls) -> StartTlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(conn, after));
            }
        });
        StartTlsFront { port, connections }
    }

    /// How many connections the front accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(conn: TcpStream, after: AfterStartTls) {
    let mut conn = BufReader::new(conn);
    let _ = conn
        .get_mut()
        .write_all(b"220 legacy.test ESMTP ready\r\n")
        .await;
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.trim().to_ascii_uppercase();
        let reply: &[u8] = if verb.starts_with("EHLO") {
            b"250-legacy.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n"
        } else if verb == "STARTTLS" {
            b"220 2.0.0 Ready to start TLS\r\n"
        } else if verb == "QUIT" {
            b"221 2.0.0 Bye\r\n"
        } else {
            b"503 5.5.1 STARTTLS first\r\n"
        };
        if conn.get_mut().write_all(reply).await.is_err() {
            return;
        }
        if verb == "STARTTLS" {
            break;
        }
        if verb == "QUIT" {
            return;
        }
    }
    let mut client = conn.into_inner();
    match after {
        AfterStartTls::Proxy(addr) => {
            if let Ok(mut tls_server) = TcpStream::connect(addr).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tls_server).await;
            }
        }
        AfterStartTls::CloseOnHello => {
            let mut hello = [0u8; 4096];
            let _ = client.read(&mut hello).await;
        }
    }
}

/// `openssl s_server` speaking only TLS 1.1 (with the security level that still allows it)
/// on a free port of 127.0.0.1; stopped when dropped.
pub struct OpensslTls11 {
    pub addr: SocketAddr,
    _server: Child,
    _dir: tempfile::TempDir,
}

/// Start [`OpensslTls11`], or None when openssl is not installed.
pub async fn openssl_tls11() -> Option<OpensslTls11> {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["legacy.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("legacy.crt"), dir.path().join("legacy.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .arg("-accept")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&cert_path)
        .arg("-key")
        .arg(&key_path)
        // s_server ends when its stdin does: keep it open.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Some(OpensslTls11 {
                addr,
                _server: server,
                _dir: dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("openssl s_server did not start listening on {addr}");
}

/// Say that `test` was skipped for want of openssl, straight to stderr (past the test
/// harness's capture, so that the skip is seen).
pub fn skipped(test: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: openssl is not installed (apt-get install openssl; .ci/run does)"
    );
}
