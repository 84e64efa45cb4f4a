//! A server that speaks only TLS 1.0/1.1 after STARTTLS: the failure names the cause (no TLS
//! 1.2 or later; Microsoft 365 requires it, 4.7.66) and is permanent — not "tls handshake eof"
//! retried as temporary. The servers are tests/support/legacy_tls.rs: `openssl s_server
//! -tls1_1` behind a STARTTLS front (the test is skipped, saying so, when openssl is
//! missing), and a front that closes the connection on our TLS hello, as a server without
//! TLS 1.2 does.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/legacy_tls.rs"]
mod legacy_tls;

use bin_env::{BinEnv, stderr};
use legacy_tls::{AfterStartTls, StartTlsFront, openssl_tls11, skipped};

/// The user's view: exit 69 (not 75), the cause named with 4.7.66, one connection (no retry),
/// not queued, the message in the dead letter.
async fn assert_permanent_and_named(front: &StartTlsFront) {
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\n[profiles.p.endpoint]\n\
         host = \"127.0.0.1\"\nport = {}\n\n[profiles.p.retry]\nattempts = 3\n\
         initial_delay_ms = 10\n",
        front.port
    ));
    let o = env
        .run(
            &["-f", "alerts@contoso.com", "ops@contoso.com"],
            b"Subject: old TLS\n\nbody\n",
        )
        .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(69), "{err}");
    assert!(err.contains("TLS 1.2"), "{err}");
    assert!(err.contains("TLS 1.0 or 1.1"), "{err}");
    assert!(err.contains("4.7.66"), "{err}");
    assert!(!err.contains("handshake eof"), "{err}");
    assert_eq!(front.connections(), 1, "permanent: not tried again");
    assert_eq!(env.queue_count().await, 0, "not queued");
    assert!(env.dead_letter().contains("Subject: old TLS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_offering_only_tls_1_1_is_named_and_not_retried() {
    let Some(openssl) = openssl_tls11().await else {
        skipped("a_server_offering_only_tls_1_1_is_named_and_not_retried");
        return;
    };
    let front = StartTlsFront::start(AfterStartTls::Proxy(openssl.addr)).await;
    assert_permanent_and_named(&front).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_on_our_tls_hello_is_named_and_not_retried() {
    let front = StartTlsFront::start(AfterStartTls::CloseOnHello).await;
    assert_permanent_and_named(&front).await;
}
