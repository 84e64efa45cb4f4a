//! Graph's MIME side (src/graph/mime.rs): a message of any content and an envelope, prepared
//! by the message step for a Graph profile as every message Graph sends is (CRLF lines, a
//! header block of fields only), then the header rewrite and the large-message split.
//! Graph has no envelope — it sends to whom the To, Cc and Bcc fields name — so the header
//! rewrite is what keeps a message from going to someone the envelope does not name.
//!
//! Never a panic; the recipients the rewritten block names are exactly the envelope's
//! (compared without case); every address mail_parser reads in the rewritten block's To, Cc
//! and Bcc is an envelope recipient, and so is every `x@y` token left in them once quoted
//! strings and comments are removed (a parser that saw less than a receiving one would keep
//! a field byte for byte); the large-message split's parts decode to the sizes counted
//! (what the upload session announces), and the skeleton is written.
#![no_main]

use std::collections::BTreeSet;
use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use m365send::address::LocalHost;
use m365send::cli::SendArgs;
use m365send::config::{Mode, Profile};
use m365send::graph::mime;
use m365send::message::prepare_on;

const ENVELOPES: &[&[&str]] = &[
    &["ops@contoso.com"],
    &["ops@contoso.com", "Dba@Contoso.com"],
    &["a@x.example", "b@x.example", "c@x.example"],
    &["\"odd local\"@contoso.com"],
];

/// `x@y` tokens of a header value outside quoted strings and comments.
fn bare_addresses(value: &str) -> Vec<String> {
    let mut plain = String::new();
    let (mut quoted, mut depth, mut escaped) = (false, 0u32, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            c => plain.push(c),
        }
    }
    plain
        .split(|c: char| c.is_whitespace() || "<>,;:".contains(c))
        .filter(|t| t.contains('@') && !t.starts_with('@') && !t.ends_with('@'))
        .map(str::to_ascii_lowercase)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, message)) = data.split_first() else {
        return;
    };
    let args = SendArgs {
        recipients: ENVELOPES[(flags & 3) as usize]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..SendArgs::default()
    };
    let profile = Profile {
        mailbox: Some("app@contoso.com".into()),
        accepted_domains: vec!["contoso.com".into(), "x.example".into()],
        default_domain: Some("contoso.com".into()),
        ..Profile::for_mode(Mode::Graph)
    };
    let host = LocalHost::named("web1.example.net");
    let Ok(prepared) = prepare_on(&args, &profile, &mut Cursor::new(message), &host) else {
        return;
    };
    let envelope = prepared.envelope.recipients;
    let wanted: BTreeSet<String> = envelope.iter().map(|a| a.to_ascii_lowercase()).collect();
    let path = prepared.body.path();
    let mut file = std::fs::File::open(path).expect("the prepared message");
    let Ok(block) = mime::read_header_block(&mut file) else {
        return;
    };
    let headers = mime::rewrite_headers(&block, &envelope);

    let r = &headers.recipients;
    let named: Vec<String> =
        r.to.iter()
            .chain(&r.cc)
            .chain(&r.bcc)
            .map(|m| m.address.to_ascii_lowercase())
            .collect();
    let set: BTreeSet<String> = named.iter().cloned().collect();
    assert_eq!(set, wanted, "named {named:?}");
    assert_eq!(named.len(), set.len(), "a recipient named twice: {named:?}");

    // The block as Exchange would read it.
    let parsed = mail_parser::MessageParser::default()
        .parse_headers(&headers.block)
        .expect("a header block");
    for h in parsed.headers() {
        let name = h.name.as_str().trim().to_ascii_lowercase();
        if !matches!(name.as_str(), "to" | "cc" | "bcc") {
            continue;
        }
        if let mail_parser::HeaderValue::Address(list) = &h.value {
            for a in list.iter() {
                if let Some(addr) = a.address() {
                    let addr = addr.trim().to_ascii_lowercase();
                    assert!(
                        addr.is_empty() || wanted.contains(&addr),
                        "{name}: {addr:?} is not an envelope recipient"
                    );
                }
            }
        }
    }
    // Unfolded To/Cc/Bcc values, token by token.
    let text = String::from_utf8_lossy(&headers.block)
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    for line in text.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !matches!(
            name.trim().to_ascii_lowercase().as_str(),
            "to" | "cc" | "bcc"
        ) {
            continue;
        }
        for token in bare_addresses(value) {
            assert!(
                wanted.contains(&token),
                "{name}: {token:?} outside quotes is not an envelope recipient: {line:?}"
            );
        }
    }

    // The large-message path with a small limit, so that parts are taken out.
    if let Ok(root) = mime::scan(path) {
        let limit = u64::from(flags >> 2) * 16;
        if let Ok(split) = mime::split(path, root, headers.original_len, limit) {
            let mut skeleton = Vec::new();
            let _ = mime::write_skeleton(path, &headers, &split, &mut skeleton);
            for e in &split.extracted {
                let mut n = 0u64;
                if mime::decode(path, &e.part, &mut |b| {
                    n += b.len() as u64;
                    Ok(())
                })
                .is_ok()
                {
                    assert_eq!(n, e.size, "{} decoded to {n}, counted {}", e.name, e.size);
                }
            }
        }
    }
});
