//! Address handling: list parsing (To/Cc headers, -t), command-line addresses, and the check
//! that decides what may go between the brackets of MAIL FROM:<...> / RCPT TO:<...>.
//! An address the check accepts can never end the path early or add SMTP parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m365send::address;

/// `addr` is safe inside `<...>`: no control character; no space, `<` or `>` outside a
/// leading quoted local part; the quoted part (if any) well formed.
fn assert_safe_path(addr: &str) {
    assert!(!addr.chars().any(char::is_control), "{addr:?}");
    let rest = match addr.strip_prefix('"') {
        Some(inner) => {
            let mut chars = inner.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        let next = chars.next();
                        assert!(
                            matches!(next, Some((_, ' '..='~'))),
                            "bad quoted pair in {addr:?}"
                        );
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or_else(|| panic!("unclosed quote accepted: {addr:?}"));
            &inner[end..]
        }
        None => addr,
    };
    assert!(rest.starts_with('@') || !addr.starts_with('"'), "{addr:?}");
    assert!(
        !rest.contains(|c: char| c.is_whitespace() || c == '<' || c == '>'),
        "{addr:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if address::path_problem(&s).is_none() && s.contains('@') {
        assert_safe_path(&s);
    }
    for a in address::parse_list(&s) {
        if address::path_problem(&a).is_none() && a.contains('@') {
            assert_safe_path(&a);
        }
        let _ = address::dedup_key(&a, false);
        let _ = address::dedup_key(&a, true);
        let _ = address::qualify(&a, Some("contoso.com"));
    }
    for (_, a) in address::parse_mailboxes(&s) {
        let _ = address::split(&a);
    }
    let _ = address::parse_mailbox(&s);
    if let Some(a) = address::from_arg(&s)
        && address::path_problem(&a).is_none()
        && a.contains('@')
    {
        assert_safe_path(&a);
    }
    let host = address::LocalHost::named("web1.example.net");
    let _ = host.is_own_domain(&s, &["example.net".to_owned()]);
});
