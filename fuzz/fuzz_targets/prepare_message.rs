//! `prepare`: a message on stdin as any program may write it, with `-t` (recipients from the
//! headers) and the relay profile's policies. Never a panic; an accepted message is CRLF
//! lines only, its size is the file's, Bcc is gone, and every envelope address is one that
//! can go between the brackets of MAIL FROM / RCPT TO.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use m365send::address::{LocalHost, path_problem};
use m365send::cli::SendArgs;
use m365send::config::{Mode, Profile};
use m365send::message::prepare_on;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let args = SendArgs {
        extract_recipients: flags & 1 == 1,
        ignore_dots: flags & 2 == 2,
        recipients: if flags & 4 == 4 {
            vec!["ops".into()]
        } else {
            Vec::new()
        },
        envelope_from: (flags & 8 == 8).then(|| "alerts@contoso.com".into()),
        ..SendArgs::default()
    };
    let profile = Profile {
        accepted_domains: vec!["contoso.com".into()],
        default_domain: Some("contoso.com".into()),
        ..Profile::for_mode(Mode::Relay)
    };
    let host = LocalHost::named("web1.example.net");
    match prepare_on(&args, &profile, &mut Cursor::new(input), &host) {
        Ok(p) => {
            let bytes = std::fs::read(p.body.path()).expect("the spooled message");
            assert_eq!(p.size, bytes.len() as u64);
            for (i, &b) in bytes.iter().enumerate() {
                match b {
                    b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}"),
                    b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                    _ => {}
                }
            }
            assert!(
                !p.header_block
                    .split("\r\n")
                    .any(|l| l.len() >= 4 && l.as_bytes()[..4].eq_ignore_ascii_case(b"bcc:")),
                "a Bcc header is transmitted"
            );
            assert!(!p.envelope.recipients.is_empty());
            for r in &p.envelope.recipients {
                assert_eq!(path_problem(r), None, "{r:?}");
            }
            if !p.envelope.sender.is_empty() {
                assert_eq!(
                    path_problem(&p.envelope.sender),
                    None,
                    "{:?}",
                    p.envelope.sender
                );
            }
        }
        Err(f) => {
            assert!(!f.message.contains('\u{1b}'), "ESC in {:?}", f.message);
        }
    }
});
