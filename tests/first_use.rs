//! What new users met (issue 9): the real binary, a configuration in a temporary directory,
//! the fake Microsoft 365 server and the stub DNS server on 127.0.0.1. Each test is a case a
//! user hit: split DNS, bounces through a mailbox, messages that said the wrong thing, the
//! null sender, large cron output, duplicate recipients.

#[path = "support/bin_env.rs"]
mod bin_env;
#[path = "support/dns.rs"]
mod dns;
#[path = "support/fake_m365.rs"]
mod fake_m365;

use bin_env::{BinEnv, stderr, stdout};
use dns::{Answer, start_stub_dns};
use fake_m365::{FakeConfig, FakeM365};

/// An MX host whose name exists only at the configured DNS server (split DNS, no /etc/hosts
/// entry) is resolved there too, connected to by address, and checked by its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mx_host_known_only_to_the_configured_dns_server_is_reached() {
    let server = FakeM365::start(FakeConfig::mx().cert_names(&["mx1.split.test"])).await;
    let dns = start_stub_dns(vec![
        (
            "contoso.com",
            Answer::Mx(vec![(0, "mx1.split.test".into())]),
        ),
        (
            "mx1.split.test",
            Answer::Ip(vec!["127.0.0.1".parse().unwrap()]),
        ),
    ]);
    let env = BinEnv::new();
    env.write_profile(&format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\n\n[profiles.p.endpoint]\n\
         dns_server = \"{dns}\"\nport = {}\n\n[profiles.p.tls]\nca_file = \"{}\"\n",
        server.port(),
        server.ca_file().display()
    ));
    let o = env
        .run(
            &["--dry-run", "ops@contoso.com"],
            b"Subject: split\n\nhello\n",
        )
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!(
            "mx1.split.test:{}  (MX preference 0)  at 127.0.0.1",
            server.port()
        )),
        "{}",
        stdout(&o)
    );

    let o = env
        .run(&["-v", "ops@contoso.com"], b"Subject: split\n\nhello\n")
        .await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "-- connected to mx1.split.test:{} (127.0.0.1:{})",
            server.port(),
            server.port()
        )),
        "the transcript names the MX host: {}",
        stderr(&o)
    );
    let got = server.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].recipients, vec!["ops@contoso.com".to_owned()]);
    // The certificate was checked against the MX name (the server's only name).
    assert!(server.connections()[0].tls_version.is_some());
}
