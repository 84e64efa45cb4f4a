//! `sendmail -bs`: serve() driven with in-memory input; exact replies, and the envelope and
//! bytes handed to the handler.

use std::io::{BufReader, Cursor};

use m365send::bs::{BsOutcome, Limits, serve};
use m365send::exit::Exit;
use m365send::message::Envelope;
use m365send::smtp::Reply;

type Got = Vec<(Envelope, Vec<u8>)>;

fn run_with(input: &[u8], limits: &Limits, outcome: BsOutcome) -> (Vec<String>, Got) {
    let mut got: Got = Vec::new();
    let mut out = Vec::new();
    let mut handler = |env: Envelope, body: m365send::message::Body| {
        let bytes = std::fs::read(body.path()).unwrap();
        got.push((env, bytes));
        outcome.clone()
    };
    serve(Cursor::new(input.to_vec()), &mut out, limits, &mut handler).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    let lines = text
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    (lines, got)
}

fn run(input: &str) -> (Vec<String>, Got) {
    run_with(input.as_bytes(), &limits(), BsOutcome::Delivered)
}

fn limits() -> Limits {
    Limits {
        hostname: "host.example".into(),
        ..Limits::default()
    }
}

const GREETING: &str = "220 host.example ESMTP m365send (sendmail -bs) ready";

#[test]
fn a_whole_session() {
    let (lines, got) = run(
        "EHLO client.example\r\nMAIL FROM:<app@contoso.com> SIZE=100 BODY=8BITMIME\r\n\
RCPT TO:<a@contoso.com>\r\nRCPT TO:<b@contoso.com>\r\nDATA\r\n\
Subject: hi\r\n\r\nline one\r\n..leading dot\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        lines,
        vec![
            GREETING,
            "250-host.example greets client.example",
            "250-8BITMIME",
            "250-PIPELINING",
            "250-SIZE 36700160",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250 HELP",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.1.5 Recipient OK",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Message accepted for delivery",
            "221 2.0.0 Bye",
        ]
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.sender, "app@contoso.com");
    assert_eq!(got[0].0.recipients, vec!["a@contoso.com", "b@contoso.com"]);
    assert_eq!(got[0].1, b"Subject: hi\r\n\r\nline one\r\n.leading dot\r\n");
}

#[test]
fn pipelined_commands_and_two_messages() {
    // All commands in one write, as a PIPELINING client sends them.
    let (lines, got) = run(
        "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@y>\r\nDATA\r\nA\r\n.\r\n\
MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nRCPT TO:<p@q>\r\nDATA\r\nB\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        lines,
        vec![
            GREETING,
            "250 host.example",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Message accepted for delivery",
            "250 2.1.0 Sender OK",
            "250 2.1.5 Recipient OK",
            "250 2.1.5 Recipient OK",
            "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Message accepted for delivery",
            "221 2.0.0 Bye",
        ]
    );
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0.sender, "");
    assert_eq!(got[0].1, b"A\r\n");
    // Duplicate recipient kept once.
    assert_eq!(got[1].0.recipients, vec!["p@q"]);
    assert_eq!(got[1].1, b"B\r\n");
}

#[test]
fn tiny_reads_work_like_big_ones() {
    let input = b"EHLO c\r\nMAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\nx\ry\r\nbare lf\n..\r\n.\r\nQUIT\r\n";
    let mut got: Got = Vec::new();
    let mut out = Vec::new();
    let mut handler = |env: Envelope, body: m365send::message::Body| {
        got.push((env, std::fs::read(body.path()).unwrap()));
        BsOutcome::Delivered
    };
    // A BufReader of capacity 1 hands the data over one byte at a time.
    let reader = BufReader::with_capacity(1, Cursor::new(input.to_vec()));
    serve(reader, &mut out, &limits(), &mut handler).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"x\ry\r\nbare lf\r\n.\r\n");
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with("250 2.0.0 Message accepted for delivery\r\n221 2.0.0 Bye\r\n"));
}

#[test]
fn lf_only_client() {
    // Commands may end with a bare LF and data lines too (normalised to CRLF); only the end of
    // data must be <CR><LF>.<CR><LF>.
    let (lines, got) =
        run("EHLO c\nMAIL FROM:<s@t>\nRCPT TO:<p@q>\nDATA\nhello\nworld\r\n.\r\nQUIT\n");
    assert_eq!(lines.last().unwrap(), "221 2.0.0 Bye");
    assert_eq!(got[0].1, b"hello\r\nworld\r\n");
}

/// SMTP smuggling: only <CR><LF>.<CR><LF> ends the data. With each other "end" the rest is
/// data of the same message: the smuggled MAIL FROM never runs as a command.
#[test]
fn only_crlf_dot_crlf_ends_data() {
    for (name, end) in [
        ("<LF>.<LF>", "\n.\n"),
        ("<LF>.<CR><LF>", "\n.\r\n"),
        ("<CR><LF>.<LF>", "\r\n.\n"),
    ] {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<ops@contoso.com>\r\nDATA\r\n\
Subject: one\r\n\r\nbody{end}MAIL FROM:<ceo@contoso.com>\r\nRCPT TO:<victim@fabrikam.com>\r\n\
DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n"
        );
        let (lines, got) = run(&input);
        assert_eq!(got.len(), 1, "{name}: one message, not two");
        assert_eq!(got[0].0.sender, "app@contoso.com", "{name}");
        assert_eq!(got[0].0.recipients, vec!["ops@contoso.com"], "{name}");
        let body = String::from_utf8(got[0].1.clone()).unwrap();
        assert_eq!(
            body,
            "Subject: one\r\n\r\nbody\r\n.\r\nMAIL FROM:<ceo@contoso.com>\r\n\
RCPT TO:<victim@fabrikam.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n",
            "{name}: the would-be commands are data, the lone dot kept"
        );
        assert_eq!(
            lines.iter().filter(|l| *l == "250 2.1.0 Sender OK").count(),
            1,
            "{name}: the second MAIL never ran: {lines:?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("354 ")).count(),
            1,
            "{name}: {lines:?}"
        );
        assert_eq!(lines.last().unwrap(), "221 2.0.0 Bye", "{name}");
    }
    // The dot line ended by CRLF after a bare-LF line, split over one-byte reads.
    let input = b"MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\na\n.\r\nb\r\n.\r\n";
    let mut got: Got = Vec::new();
    let mut handler = |env: Envelope, body: m365send::message::Body| {
        got.push((env, std::fs::read(body.path()).unwrap()));
        BsOutcome::Delivered
    };
    let reader = BufReader::with_capacity(1, Cursor::new(input.to_vec()));
    serve(reader, Vec::new(), &limits(), &mut handler).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, b"a\r\n.\r\nb\r\n");
}

#[test]
fn long_data_lines_are_kept_whole() {
    let long = "x".repeat(200_000);
    let input =
        format!("EHLO c\r\nMAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\n.{long}\r\n.\r\nQUIT\r\n");
    let (_, got) = run(&input);
    assert_eq!(got[0].1, format!("{long}\r\n").into_bytes());
}

#[test]
fn sequence_syntax_and_unknown_errors() {
    let l = Limits {
        max_errors: 20,
        ..limits()
    };
    let (lines, got) = run_with(
        b"RCPT TO:<a@b>\r\nDATA\r\nMAIL FROM:<s@t>\r\nMAIL FROM:<s@t>\r\nDATA\r\n\
RCPT TO <a@b>\r\nRCPT TO:<>\r\nRCPT TO:<a@b> NOTIFY=NEVER\r\nFOO\r\nEHLO\r\nMAIL FROM:<s@t>\r\nQUIT\r\n",
        &l,
        BsOutcome::Delivered,
    );
    assert_eq!(
        lines,
        vec![
            GREETING,
            "503 5.5.1 Error: need MAIL command",
            "503 5.5.1 Error: need MAIL command",
            "250 2.1.0 Sender OK",
            "503 5.5.1 Error: nested MAIL command",
            "503 5.5.1 Error: need RCPT command",
            "501 5.5.4 Syntax: RCPT TO:<address>",
            "501 5.1.3 Bad recipient address syntax",
            "555 5.5.4 Unsupported parameter",
            "500 5.5.2 Error: command not recognized",
            "501 5.5.4 Syntax: EHLO hostname",
            // EHLO failed, so the transaction is still open.
            "503 5.5.1 Error: nested MAIL command",
            "221 2.0.0 Bye",
        ]
    );
    assert!(got.is_empty());
}

#[test]
fn rset_noop_vrfy_help_and_refused_extensions() {
    let (lines, _) = run(
        "EHLO c\r\nMAIL FROM:<s@t>\r\nRSET\r\nRCPT TO:<a@b>\r\nNOOP\r\nVRFY root\r\nHELP\r\n\
STARTTLS\r\nAUTH PLAIN AGFhAGI=\r\nBDAT 10 LAST\r\nQUIT\r\n",
    );
    assert_eq!(
        lines[8..],
        [
            "250 2.1.0 Sender OK",
            "250 2.0.0 OK",
            "503 5.5.1 Error: need MAIL command",
            "250 2.0.0 OK",
            "252 2.5.0 Cannot VRFY user, but will accept message",
            "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT",
            "502 5.5.1 Command not implemented",
            "502 5.5.1 Command not implemented",
            "502 5.5.1 Command not implemented",
            "221 2.0.0 Bye",
        ]
    );
}

#[test]
fn mail_parameters() {
    let l = Limits {
        max_size: 1000,
        ..limits()
    };
    let input = "MAIL FROM:<s@t> SIZE=1001\r\nMAIL FROM:<s@t> SIZE=x\r\nMAIL FROM:<s@t> BODY=BINARYMIME\r\n\
MAIL FROM:<s@t> RET=FULL\r\nMAIL FROM:<s@t> SMTPUTF8=yes\r\nMAIL FROM:s@t BODY=7BIT SIZE=1000\r\nQUIT\r\n";
    let (lines, _) = run_with(input.as_bytes(), &l, BsOutcome::Delivered);
    assert_eq!(
        lines[1..],
        [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "501 5.5.4 Bad SIZE parameter",
            "501 5.5.4 Bad BODY parameter",
            "555 5.5.4 Unsupported parameter",
            "555 5.5.4 Unsupported parameter",
            "250 2.1.0 Sender OK",
            "221 2.0.0 Bye",
        ]
    );
}

#[test]
fn non_ascii_addresses_need_smtputf8() {
    let input = "MAIL FROM:<j\u{f6}rg@example.de>\r\nMAIL FROM:<s@t>\r\nRCPT TO:<\u{e9}@t>\r\nRSET\r\n\
MAIL FROM:<j\u{f6}rg@example.de> SMTPUTF8\r\nRCPT TO:<\u{e9}@t>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let (lines, got) = run(input);
    assert_eq!(
        lines[1..5],
        [
            "553 5.6.7 Non-ASCII address needs SMTPUTF8",
            "250 2.1.0 Sender OK",
            "553 5.6.7 Non-ASCII address needs SMTPUTF8",
            "250 2.0.0 OK",
        ]
    );
    assert_eq!(got[0].0.sender, "j\u{f6}rg@example.de");
    assert_eq!(got[0].0.recipients, vec!["\u{e9}@t"]);
}

#[test]
fn message_too_big_is_read_to_the_end_and_refused() {
    let l = Limits {
        max_size: 10,
        ..limits()
    };
    let input =
        "MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\n0123456789\r\nmore\r\n.\r\nNOOP\r\nQUIT\r\n";
    let (lines, got) = run_with(input.as_bytes(), &l, BsOutcome::Delivered);
    assert!(got.is_empty());
    assert_eq!(
        lines[4..],
        [
            "552 5.3.4 Message size exceeds fixed maximum message size",
            "250 2.0.0 OK",
            "221 2.0.0 Bye",
        ]
    );
    // Exactly the limit passes.
    let input = "MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\n01234567\r\n.\r\nQUIT\r\n";
    let (_, got) = run_with(input.as_bytes(), &l, BsOutcome::Delivered);
    assert_eq!(got[0].1, b"01234567\r\n");
}

#[test]
fn too_many_recipients() {
    let l = Limits {
        max_recipients: 2,
        ..limits()
    };
    let input = "MAIL FROM:<s@t>\r\nRCPT TO:<a@t>\r\nRCPT TO:<b@t>\r\nRCPT TO:<c@t>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let (lines, got) = run_with(input.as_bytes(), &l, BsOutcome::Delivered);
    assert_eq!(lines[4], "452 4.5.3 Too many recipients");
    assert_eq!(got[0].0.recipients, vec!["a@t", "b@t"]);
}

#[test]
fn long_command_line() {
    let l = Limits {
        max_command_line: 100,
        ..limits()
    };
    let input = format!("NOOP {}\r\nNOOP\r\nQUIT\r\n", "y".repeat(5000));
    let (lines, _) = run_with(input.as_bytes(), &l, BsOutcome::Delivered);
    assert_eq!(
        lines[1..],
        ["500 5.5.2 Line too long", "250 2.0.0 OK", "221 2.0.0 Bye"]
    );
}

#[test]
fn error_cut_off() {
    let l = Limits {
        max_errors: 3,
        ..limits()
    };
    let (lines, _) = run_with(b"A\r\nB\r\nC\r\nNOOP\r\n", &l, BsOutcome::Delivered);
    assert_eq!(
        lines[1..],
        [
            "500 5.5.2 Error: command not recognized",
            "500 5.5.2 Error: command not recognized",
            "500 5.5.2 Error: command not recognized",
            "421 4.7.0 Too many errors, closing connection",
        ]
    );
}

#[test]
fn handler_outcomes_become_replies() {
    let input = "MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let (lines, _) = run_with(input.as_bytes(), &limits(), BsOutcome::Queued);
    assert_eq!(lines[4], "250 2.0.0 Message queued for later delivery");
    let refused = Reply {
        code: 550,
        enhanced: "5.7.60".parse().ok(),
        lines: vec![
            "5.7.60 SMTP; Client does not have permissions".into(),
            "5.7.60 to send as this sender\r\nX".into(),
        ],
    };
    let (lines, _) = run_with(input.as_bytes(), &limits(), BsOutcome::Failed(refused));
    assert_eq!(
        lines[4],
        "550-5.7.60 SMTP; Client does not have permissions"
    );
    assert_eq!(lines[5], "550 5.7.60 to send as this sender  X");
    let (lines, _) = run_with(
        input.as_bytes(),
        &limits(),
        BsOutcome::failure(Exit::TempFail, "connection timed out\nmore"),
    );
    assert_eq!(lines[4], "451 4.3.0 connection timed out");
    let (lines, _) = run_with(
        input.as_bytes(),
        &limits(),
        BsOutcome::failure(Exit::NoPerm, "refused"),
    );
    assert_eq!(lines[4], "554 5.3.0 refused");
}

#[test]
fn end_of_input_mid_data_hands_nothing_over() {
    let (lines, got) = run("MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\npartial\r\n");
    assert!(got.is_empty());
    assert_eq!(lines.last().unwrap(), "354 End data with <CR><LF>.<CR><LF>");
    // And without QUIT after a message: the message counts, the session just ends.
    let (_, got) = run("MAIL FROM:<s@t>\r\nRCPT TO:<p@q>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(got.len(), 1);
}

#[test]
fn addresses_with_source_routes_and_case() {
    let (lines, got) = run(
        "mail from: <@relay.example:s@t>\r\nrcpt to:<Postmaster>\r\ndata\r\nx\r\n.\r\nquit\r\n",
    );
    assert_eq!(lines[1], "250 2.1.0 Sender OK");
    assert_eq!(got[0].0.sender, "s@t");
    assert_eq!(got[0].0.recipients, vec!["Postmaster"]);
}

/// A small deterministic PRNG (xorshift64*), so the test needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn garbage_never_panics() {
    let words: &[&[u8]] = &[
        b"EHLO x\r\n",
        b"HELO\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"MAIL FROM:<",
        b"RCPT TO:<c@d>\r\n",
        b"RCPT TO:<@:>\r\n",
        b"DATA\r\n",
        b".\r\n",
        b"..\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"\xff\xfe\x00",
        b"RSET\r\n",
        b"MAIL FROM:<\xc3\xa9@\xc3>\r\n",
        b"RCPT TO:<a@b> SIZE=99999999999999999999999\r\n",
        b"MAIL FROM:<a@b> SIZE=\r\n",
        b"BDAT 1\r\n",
        b"\x1b[2J",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let l = Limits {
        max_command_line: 64,
        max_size: 200,
        max_recipients: 3,
        max_errors: 1000,
        ..limits()
    };
    for _ in 0..500 {
        let mut input = Vec::new();
        let n = rng.next() % 60;
        for _ in 0..n {
            if rng.next().is_multiple_of(4) {
                for _ in 0..rng.next() % 100 {
                    input.push(rng.next() as u8);
                }
            } else {
                input.extend_from_slice(words[(rng.next() % words.len() as u64) as usize]);
            }
        }
        let mut out = Vec::new();
        let mut handler = |_: Envelope, _: m365send::message::Body| BsOutcome::Delivered;
        serve(Cursor::new(input), &mut out, &l, &mut handler).unwrap();
        // Every reply line is a 3-digit code and a separator.
        for line in String::from_utf8(out).unwrap().split_terminator("\r\n") {
            let b = line.as_bytes();
            assert!(
                b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit),
                "{line:?}"
            );
            assert!(b[3] == b' ' || b[3] == b'-', "{line:?}");
        }
    }
}

#[test]
fn limits_for_profile() {
    let p = m365send::config::Profile {
        max_size: Some(1234),
        ..Default::default()
    };
    let l = Limits::for_profile(&p);
    assert_eq!(l.max_size, 1234);
    assert!(!l.hostname.is_empty());
}
