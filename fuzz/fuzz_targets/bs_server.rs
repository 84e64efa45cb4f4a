//! `sendmail -bs`: any byte stream from a local client. Never a panic; every reply line is a
//! code and a separator; every message handed over has CRLF lines only, and no more messages
//! are handed over than the input has <CR><LF>.<CR><LF> ends of data (no SMTP smuggling).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use m365send::bs::{BsOutcome, Limits, serve};
use m365send::message::{Body, Envelope};
use m365send_fuzz::{assert_no_bare_lf, assert_reply_lines, ends_of_data};

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
        assert_no_bare_lf(&bytes);
        assert!(!env.recipients.is_empty());
        if data.first().is_some_and(|b| b & 1 == 1) {
            BsOutcome::Queued
        } else {
            BsOutcome::failure(m365send::exit::Exit::TempFail, "try\nlater\x1b")
        }
    };
    let mut out = Vec::new();
    serve(Cursor::new(data), &mut out, &limits, &mut handler).expect("writing to memory");
    assert_reply_lines(&out);
    let ends = ends_of_data(data);
    assert!(handed <= ends, "{handed} messages from {ends} ends of data");
});
