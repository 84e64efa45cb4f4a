//! `m365send serve`'s session: any byte stream from a LAN client, through the same `bs`
//! server as `-bs` with the hooks serve uses — AUTH (PLAIN/LOGIN) only after STARTTLS when
//! the listener is not loopback, the lockout counters of `serve::access::Throttle`, the
//! sender rules, STARTTLS with a real certificate (the fuzzed bytes after it become the TLS
//! handshake, which fails) and the session limits. The first byte chooses the settings.
//!
//! Never a panic; every reply line is a code and a separator with no control character; no
//! more messages are handed over than the input has <CR><LF>.<CR><LF> ends of data; AUTH is
//! never checked on a connection that must do STARTTLS first and has not; no more passwords
//! are checked than the lockout allows; a message is handed over only with a sender the
//! rules allowed, and only after AUTH when AUTH is required.
#![no_main]

use std::cell::Cell;
use std::future::Future;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use m365send::bs::{self, AuthOffer, BsOutcome, Hooks, Limits, Options, Verdict, reply};
use m365send::message::{Body, Envelope};
use m365send::secret::Secret;
use m365send::serve::access::{AuthRefused, Throttle, check_header_senders};
use m365send_fuzz::{assert_no_bare_lf, assert_reply_lines, ends_of_data};

const MAX_FAILURES: u32 = 3;

struct FuzzHooks {
    needs_tls: bool,
    require_auth: bool,
    accept: bool,
    /// The `tls` of the last `auth_offer` call: the session asks just before AUTH.
    offered_tls: Cell<bool>,
    throttle: Throttle,
    ip: IpAddr,
    failed: u32,
    handed: usize,
}

fn allowed(sender: &str, user: Option<&str>) -> bool {
    match user {
        Some(_) => sender.eq_ignore_ascii_case("scanner@contoso.com"),
        None => sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case("contoso.com")),
    }
}

impl Hooks for FuzzHooks {
    fn auth_offer(&self, tls: bool) -> AuthOffer {
        self.offered_tls.set(tls);
        if tls || !self.needs_tls {
            AuthOffer::Yes
        } else {
            AuthOffer::AfterTls
        }
    }

    fn authenticate(&mut self, user: &str, password: Secret) -> impl Future<Output = Verdict> {
        assert!(
            self.offered_tls.get() || !self.needs_tls,
            "AUTH checked before STARTTLS"
        );
        let window = Duration::from_secs(900);
        let now = Instant::now();
        let verdict = match self.throttle.begin_auth(self.ip, MAX_FAILURES, window, now) {
            Err(AuthRefused::Locked(_)) | Err(AuthRefused::Busy) => {
                Verdict::Refuse(reply(454, "4.7.0 locked"))
            }
            Ok(()) => {
                let ok = user == "scanner" && password.expose() == "secret";
                let locked = self
                    .throttle
                    .end_auth(self.ip, ok, MAX_FAILURES, window, now);
                if ok {
                    Verdict::Accept
                } else {
                    self.failed += 1;
                    if locked {
                        Verdict::RefuseAndClose(reply(421, "4.7.0 locked"))
                    } else {
                        Verdict::Refuse(reply(535, "5.7.8 no"))
                    }
                }
            }
        };
        assert!(
            self.failed <= MAX_FAILURES,
            "{} failures checked",
            self.failed
        );
        std::future::ready(verdict)
    }

    fn mail(&mut self, sender: &str, user: Option<&str>) -> Verdict {
        if self.require_auth && user.is_none() {
            return Verdict::Refuse(reply(530, "5.7.0 Authentication required"));
        }
        if !allowed(sender, user) {
            return Verdict::Refuse(reply(553, "5.7.1 not allowed"));
        }
        Verdict::Accept
    }

    fn trace(&self, helo: &str, tls: bool, user: Option<&str>) -> Option<String> {
        Some(format!(
            "Received: from {helo} ([192.0.2.1]) tls={tls} auth={}",
            user.is_some()
        ))
    }

    fn message(
        &mut self,
        envelope: Envelope,
        body: Body,
        user: Option<&str>,
    ) -> impl Future<Output = BsOutcome> {
        self.handed += 1;
        assert!(
            !self.require_auth || user.is_some(),
            "handed over without AUTH"
        );
        assert!(allowed(&envelope.sender, user), "{:?}", envelope.sender);
        assert!(!envelope.recipients.is_empty());
        let bytes = std::fs::read(body.path()).expect("the message file");
        assert_no_bare_lf(&bytes);
        // The header check serve's accept step runs on the prepared message: any text.
        let head = String::from_utf8_lossy(&bytes);
        let head = head.split("\r\n\r\n").next().unwrap_or("");
        let _ = check_header_senders(&["*@contoso.com".into()], &envelope.sender, head, "fuzz");
        std::future::ready(if self.accept {
            BsOutcome::QueuedAs("6B0D9651492F4-17A0-09D4D15B".into())
        } else {
            BsOutcome::Failed(reply(451, "4.3.0 try\nlater\x1b"))
        })
    }
}

/// STARTTLS with the test certificate in tests/data (None when it cannot be read).
fn acceptor() -> Option<tokio_rustls::TlsAcceptor> {
    static TLS: OnceLock<Option<tokio_rustls::TlsAcceptor>> = OnceLock::new();
    TLS.get_or_init(|| {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
        m365send::smtp::tls::server_config(
            &data.join("test-rsa.crt"),
            &data.join("test-rsa-pkcs8.key"),
        )
        .ok()
        .map(tokio_rustls::TlsAcceptor::from)
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        hostname: "fuzz.example".into(),
        max_command_line: 128,
        max_size: 4096,
        max_recipients: 4,
        max_errors: 50,
        temp_dir: None,
    };
    let options = Options {
        banner: "ESMTP m365send ready".into(),
        tls: if flags & 4 == 4 { acceptor() } else { None },
        idle_timeout: None,
        shutdown: None,
    };
    let mut hooks = FuzzHooks {
        needs_tls: flags & 1 == 1,
        require_auth: flags & 2 == 2,
        accept: flags & 8 == 8,
        offered_tls: Cell::new(false),
        throttle: Throttle::default(),
        ip: IpAddr::from([192, 0, 2, 1]),
        failed: 0,
        handed: 0,
    };
    let (client, server) = tokio::io::duplex(1 << 20);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let out = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut cr, mut cw) = tokio::io::split(client);
        let feed = async {
            let _ = cw.write_all(input).await;
            let _ = cw.shutdown().await;
        };
        let mut out = Vec::new();
        let read = cr.read_to_end(&mut out);
        let session = bs::serve_with(server, &limits, &options, &mut hooks);
        let (_, _, _) = tokio::join!(feed, read, session);
        out
    });
    // After a STARTTLS the rest is TLS (or nothing): check the plain replies before it.
    const READY: &[u8] = b"220 2.0.0 Ready to start TLS\r\n";
    let plain = match out.windows(READY.len()).position(|w| w == READY) {
        Some(i) => &out[..i + READY.len()],
        None => &out[..],
    };
    assert_reply_lines(plain);
    let ends = ends_of_data(input);
    assert!(
        hooks.handed <= ends,
        "{} messages from {ends} ends of data",
        hooks.handed
    );
});
