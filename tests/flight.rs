//! Round trips on the wire: what the client writes in each flight (the bytes the fake
//! Microsoft 365 server received between two of its replies), with PIPELINING and CHUNKING
//! offered or not, and how every reply of a flight is handled.

#[path = "support/fake_m365.rs"]
mod fake_m365;

use std::io::Write;
use std::time::Duration;

use fake_m365::{ConnRecord, FakeConfig, FakeM365, Phase, Rule};
use m365send::auth::Credentials;
use m365send::config::TlsVersion;
use m365send::message::{Body, Dsn, Envelope};
use m365send::route::TlsPolicy;
use m365send::secret::Secret;
use m365send::smtp::transaction::FLIGHT_BODY_MAX;
use m365send::smtp::{
    MessageFlags, Session, SessionConfig, SessionError, Step, TlsSettings, client_config,
};

const TOKEN: &str = "flight-test-token";
const MSG: &[u8] =
    b"From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: hi\r\n\r\n.dot\r\nhello\r\n";

fn body(bytes: &[u8]) -> Body {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    Body::temporary(f.into_temp_path())
}

async fn connect(server: &FakeM365, chunking: bool) -> Session {
    let cfg = SessionConfig {
        host: "127.0.0.1".into(),
        port: server.port(),
        addrs: Vec::new(),
        helo: "client.contoso.com".into(),
        tls: TlsPolicy::Required,
        tls_config: client_config(&TlsSettings {
            min_version: TlsVersion::V1_2,
            ca_file: Some(server.ca_file().to_path_buf()),
            client_cert: None,
        })
        .unwrap(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_end_timeout: Duration::from_secs(5),
        chunking,
        transcript: None,
    };
    Session::connect(cfg).await.unwrap()
}

fn envelope(sender: &str, rcpts: &[&str]) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: rcpts.iter().map(|s| s.to_string()).collect(),
        dsn: Dsn::default(),
    }
}

/// The flights after the TLS handshake (EHLO, AUTH, the message...).
fn after_tls(c: &ConnRecord) -> Vec<String> {
    assert!(c.tls_from_flight.is_some(), "TLS was used");
    c.flights_after_tls()
}

fn bdat_flight(sender: &str, rcpts: &[&str], data: &[u8], quit: bool) -> String {
    let mut f = format!("MAIL FROM:<{sender}> SIZE={}\r\n", data.len());
    for r in rcpts {
        f.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    f.push_str(&format!("BDAT {} LAST\r\n", data.len()));
    f.push_str(std::str::from_utf8(data).unwrap());
    if quit {
        f.push_str("QUIT\r\n");
    }
    f
}

#[tokio::test]
async fn pipelining_and_chunking_send_the_message_and_quit_in_one_write() {
    let server = FakeM365::start(FakeConfig::submission().user("app@contoso.com", TOKEN)).await;
    let mut s = connect(&server, true).await;
    s.authenticate(&Credentials::XOAuth2 {
        user: "app@contoso.com".into(),
        token: Secret::new(TOKEN),
        from_cache: true,
    })
    .await
    .unwrap();
    let rcpts = ["ops@contoso.com", "dev@contoso.com"];
    let res = s
        .send_message_and_quit(
            &envelope("app@contoso.com", &rcpts),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
    assert_eq!(res.accepted(), rcpts);

    let c = &server.connections()[0];
    let flights = after_tls(c);
    assert_eq!(flights.len(), 3, "EHLO, AUTH, the message: {flights:#?}");
    assert!(flights[0].starts_with("EHLO "));
    assert!(flights[1].starts_with("AUTH XOAUTH2 "));
    let want = bdat_flight("app@contoso.com", &rcpts, MSG, true);
    assert_eq!(flights[2], want);
    // One write: the server got it in one read.
    assert!(
        c.reads.iter().any(|r| r == want.as_bytes()),
        "not in one read"
    );
    // Before TLS: EHLO and STARTTLS; 5 flights in all.
    assert_eq!(c.flights.len(), 5);
    let m = &server.accepted()[0];
    assert!(m.via_bdat);
    assert_eq!(m.data, MSG, "BDAT carries the bytes as they are");
    assert_eq!(m.recipients, rcpts);
    assert_eq!(c.commands.last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn mail_refused_in_the_flight_leaves_the_session_in_step() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(
            Rule::reply(
                Phase::Mail,
                "550 5.7.64 TenantAttribution; Relay Access Denied",
            )
            .matching("bad@"),
        ),
    )
    .await;
    let mut s = connect(&server, true).await;
    let res = s
        .send_message(
            &envelope("bad@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(!res.delivered());
    let (step, reply) = res.message_failure().unwrap();
    assert_eq!((step, reply.code), (Step::Mail, 550));
    assert!(res.accepted().is_empty());
    assert!(s.is_open());
    // The next message on the same session: RSET goes in its flight, and it is delivered.
    let res = s
        .send_message_and_quit(
            &envelope("good@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");

    let c = &server.connections()[0];
    let flights = after_tls(c);
    assert_eq!(
        flights[1],
        bdat_flight("bad@contoso.com", &["ops@contoso.com"], MSG, false),
        "the body went with the refused MAIL"
    );
    assert_eq!(
        flights[2],
        format!(
            "RSET\r\n{}",
            bdat_flight("good@contoso.com", &["ops@contoso.com"], MSG, true)
        )
    );
    // The server read the octets as octets: no line of the body became a command.
    let cmds: Vec<&str> = c.commands.iter().skip(3).map(String::as_str).collect();
    let bdat = format!("BDAT {} LAST", MSG.len());
    let mail = |s: &str| format!("MAIL FROM:<{s}> SIZE={}", MSG.len());
    assert_eq!(
        cmds,
        [
            &mail("bad@contoso.com"),
            "RCPT TO:<ops@contoso.com>",
            &bdat,
            "RSET",
            &mail("good@contoso.com"),
            "RCPT TO:<ops@contoso.com>",
            &bdat,
            "QUIT"
        ]
    );
    assert_eq!(server.messages().len(), 1);
    assert_eq!(server.accepted()[0].sender, "good@contoso.com");
}

#[tokio::test]
async fn all_recipients_refused_is_never_delivered_while_the_bdat_is_consumed() {
    let server = FakeM365::start(
        FakeConfig::mx().rule(
            Rule::reply(
                Phase::Rcpt,
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; not found",
            )
            .matching("nobody"),
        ),
    )
    .await;
    let mut s = connect(&server, true).await;
    let rcpts = ["nobody1@contoso.com", "nobody2@contoso.com"];
    let res = s
        .send_message(
            &envelope("a@contoso.com", &rcpts),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(!res.delivered());
    assert!(res.accepted().is_empty());
    assert!(res.data.is_none(), "{res:?}");
    assert!(res.message_failure().is_none());
    let refused: Vec<&str> = res.refused().iter().map(|(a, _)| *a).collect();
    assert_eq!(refused, rcpts);
    // In step: the next message goes through on the same connection.
    let res = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &["ops@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    let c = &server.connections()[0];
    assert_eq!(
        after_tls(c)[1],
        bdat_flight("a@contoso.com", &rcpts, MSG, false),
        "the BDAT and the body went in the flight"
    );
    assert_eq!(server.messages().len(), 1, "only the second message");
    assert_eq!(server.messages()[0].recipients, ["ops@contoso.com"]);
}

#[tokio::test]
async fn one_of_three_recipients_refused_is_a_partial_delivery() {
    for chunking in [true, false] {
        let server = FakeM365::start(
            FakeConfig::mx().rule(
                Rule::reply(
                    Phase::Rcpt,
                    "550 5.4.1 Recipient address rejected: Access denied",
                )
                .matching("nobody@"),
            ),
        )
        .await;
        let s = connect(&server, chunking).await;
        let rcpts = ["ops@contoso.com", "nobody@contoso.com", "dev@contoso.com"];
        let res = s
            .send_message_and_quit(
                &envelope("a@contoso.com", &rcpts),
                &body(MSG),
                MessageFlags::default(),
            )
            .await
            .unwrap();
        assert!(res.delivered(), "{chunking}: {res:?}");
        assert_eq!(res.accepted(), ["ops@contoso.com", "dev@contoso.com"]);
        let refused = res.refused();
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "nobody@contoso.com");
        assert_eq!(refused[0].1.code, 550);
        let m = &server.accepted()[0];
        assert_eq!(m.recipients, ["ops@contoso.com", "dev@contoso.com"]);
        assert_eq!(m.via_bdat, chunking);
        assert_eq!(m.data, MSG);
    }
}

#[tokio::test]
async fn without_chunking_data_then_body_dot_and_quit() {
    let server = FakeM365::start(FakeConfig::mx().without(&["CHUNKING"])).await;
    let s = connect(&server, true).await;
    let rcpts = ["ops@contoso.com", "dev@contoso.com"];
    let res = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &rcpts),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    let flights = after_tls(&server.connections()[0]);
    assert_eq!(
        flights[1..],
        [
            format!(
                "MAIL FROM:<a@contoso.com> SIZE={}\r\nRCPT TO:<ops@contoso.com>\r\nRCPT TO:<dev@contoso.com>\r\nDATA\r\n",
                MSG.len()
            ),
            // Dot-stuffed, then the end of data and QUIT in the same write.
            "From: app@contoso.com\r\nTo: ops@contoso.com\r\nSubject: hi\r\n\r\n..dot\r\nhello\r\n.\r\nQUIT\r\n"
                .to_owned(),
        ]
    );
    let m = &server.accepted()[0];
    assert!(!m.via_bdat);
    assert_eq!(m.data, MSG);
}

#[tokio::test]
async fn without_pipelining_one_command_per_flight() {
    let server = FakeM365::start(FakeConfig::mx().without(&["PIPELINING"])).await;
    let s = connect(&server, true).await;
    let res = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &["ops@contoso.com", "dev@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    let flights = after_tls(&server.connections()[0]);
    let mut bdat = format!("BDAT {} LAST\r\n", MSG.len()).into_bytes();
    bdat.extend_from_slice(MSG);
    assert_eq!(
        flights[1..],
        [
            format!("MAIL FROM:<a@contoso.com> SIZE={}\r\n", MSG.len()),
            "RCPT TO:<ops@contoso.com>\r\n".to_owned(),
            "RCPT TO:<dev@contoso.com>\r\n".to_owned(),
            String::from_utf8(bdat).unwrap(),
            "QUIT\r\n".to_owned(),
        ]
    );
    assert!(server.accepted()[0].via_bdat);
}

#[tokio::test]
async fn a_large_body_waits_for_the_recipients() {
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    while data.len() as u64 <= FLIGHT_BODY_MAX {
        data.extend_from_slice(b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab\r\n");
    }
    // Every recipient refused: the body is never sent.
    let server = FakeM365::start(
        FakeConfig::mx().rule(Rule::reply(Phase::Rcpt, "550 5.1.10 RecipientNotFound")),
    )
    .await;
    let s = connect(&server, true).await;
    let res = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &["nobody@contoso.com"]),
            &body(&data),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(!res.delivered());
    let c = &server.connections()[0];
    assert!(
        !c.commands.iter().any(|l| l.starts_with("BDAT")),
        "{:?}",
        c.commands
    );
    assert!(c.bytes().len() < 4096, "{} bytes sent", c.bytes().len());
    // Accepted: MAIL and RCPT, then the BDAT with the body and QUIT.
    let server = FakeM365::start(FakeConfig::mx()).await;
    let s = connect(&server, true).await;
    let res = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &["ops@contoso.com"]),
            &body(&data),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered());
    let flights = after_tls(&server.connections()[0]);
    assert_eq!(
        flights[1],
        format!(
            "MAIL FROM:<a@contoso.com> SIZE={}\r\nRCPT TO:<ops@contoso.com>\r\n",
            data.len()
        )
    );
    assert!(flights[2].starts_with(&format!("BDAT {} LAST\r\nSubject: big", data.len())));
    assert!(flights[2].ends_with("ab\r\nQUIT\r\n"));
    assert!(server.accepted()[0].data == data);
}

#[tokio::test]
async fn replies_out_of_step_in_the_flight_are_never_a_delivery() {
    // The server answers MAIL twice: the reply taken for the content's is the RCPT's, and
    // the one taken for QUIT's is the content's. The 221 that is missing gives it away.
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::Mail,
        "250 2.1.0 Sender OK\r\n250 2.1.0 Sender OK again",
    )))
    .await;
    let s = connect(&server, true).await;
    let err = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            SessionError::Protocol {
                step: Step::DataEnd,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_server_closing_after_the_content_reply_still_delivers() {
    // QUIT went with the content; the server answers the content and hangs up without a
    // 221: the message is delivered all the same.
    let server = FakeM365::start(FakeConfig::mx().rule(Rule::reply_and_close(
        Phase::DataEnd,
        "250 2.0.0 OK Queued mail for delivery",
    )))
    .await;
    let s = connect(&server, true).await;
    let res = s
        .send_message_and_quit(
            &envelope("a@contoso.com", &["b@contoso.com"]),
            &body(MSG),
            MessageFlags::default(),
        )
        .await
        .unwrap();
    assert!(res.delivered(), "{res:?}");
}
