//! The DATA encoder (dot-stuffing, bare CR/LF repair), fed in pieces of any size. Whatever
//! the body, the result is CRLF lines only, the end-of-data sequence appears once, at the
//! end, and un-stuffing it gives back the body with its line ends repaired (no smuggling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use m365send::smtp::data::DotStuffer;

/// The body with every line end (CRLF, bare LF, bare CR) as CRLF and a final CRLF.
fn repaired(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, body)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece).max(1);
    let mut enc = DotStuffer::new();
    let mut wire = Vec::new();
    for chunk in body.chunks(piece) {
        enc.encode(chunk, &mut wire);
    }
    enc.finish(&mut wire);

    // CRLF only.
    for (i, &b) in wire.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(wire.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
            b'\n' => assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i}"),
            _ => {}
        }
    }
    // The end of data once, at the end.
    assert!(wire.ends_with(b".\r\n"));
    let inner = &wire[..wire.len() - 3];
    assert!(inner.is_empty() || inner.ends_with(b"\r\n"));
    let mut lines: Vec<&[u8]> = inner.split(|&b| b == b'\n').collect();
    lines.pop();
    let mut back = Vec::with_capacity(inner.len());
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert_ne!(line, b".", "a lone dot inside the data");
        // The receiver's un-stuffing.
        let line = line.strip_prefix(b".").unwrap_or(line);
        back.extend_from_slice(line);
        back.extend_from_slice(b"\r\n");
    }
    assert_eq!(back, repaired(body));
});
