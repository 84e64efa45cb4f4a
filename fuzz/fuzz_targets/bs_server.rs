//! `sendmail -bs`: any byte stream from a local client. Never a panic; every reply line is a
//! code and a separator; every message handed over has CRLF lines only, and no more messages
//! are handed over than the input has <CR><LF>.<CR><LF> ends of data (no SMTP smuggling).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use m365send::bs::{BsOutcome, Limits, serve};
use m365send::message::{Body, Envelope};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        hostname: "fuzz.example".into(),
        max_command_line: 128,
        max_size: 4096,
        max_recipients: 4,
        max_errors: 50,
        temp_dir: None,
    };
    let mut handed = 0usize;
    let mut handler = |env: Envelope, body: Body| {
        handed += 1;
        let bytes = std::fs::read(body.path()).expect("the message file");
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF handed over");
            }
        }
        assert!(!env.recipients.is_empty());
        if data.first().is_some_and(|b| b & 1 == 1) {
            BsOutcome::Queued
        } else {
            BsOutcome::failure(m365send::exit::Exit::TempFail, "try\nlater\x1b")
        }
    };
    let mut out = Vec::new();
    serve(Cursor::new(data), &mut out, &limits, &mut handler).expect("writing to memory");
    let text = String::from_utf8(out).expect("replies are UTF-8");
    for line in text.split_terminator("\r\n") {
        let b = line.as_bytes();
        assert!(
            b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit),
            "{line:?}"
        );
        assert!(b[3] == b' ' || b[3] == b'-', "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
    // Each end of data is <CR><LF>.<CR><LF>, or ".<CR><LF>" right after the DATA line.
    let ends = data.windows(4).filter(|w| w == b"\n.\r\n").count()
        + usize::from(data.starts_with(b".\r\n"));
    assert!(handed <= ends, "{handed} messages from {ends} ends of data");
});
