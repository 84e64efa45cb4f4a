//! The SMTP reply parser: any bytes a server sends, split into lines as the session does.
//! Never a panic; a parsed reply has a valid code, an enhanced code of the same class, and
//! stays within the caps of what is kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use m365send::smtp::reply::{MAX_KEPT_BYTES, MAX_KEPT_LINES, ReplyParser};
use m365send::smtp::{EnhancedCode, Reply};

fn check(r: &Reply) {
    assert!((200..600).contains(&r.code), "{}", r.code);
    if let Some(e) = r.enhanced {
        assert_eq!(u16::from(e.class), r.code / 100);
        assert_eq!(e.to_string().parse::<EnhancedCode>(), Ok(e));
    }
    // The kept lines, plus one "[reply cut: ...]" line.
    assert!(r.lines.len() <= MAX_KEPT_LINES + 1, "{}", r.lines.len());
    let kept: usize = r.lines.iter().map(String::len).sum();
    assert!(kept <= MAX_KEPT_BYTES + 100, "{kept}");
    let shown = r.to_string();
    assert!(shown.starts_with(&r.code.to_string()));
    let _ = r.message();
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parser = ReplyParser::default();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parser.line(line) {
            Ok(Some(r)) => check(&r),
            Ok(None) => {}
            Err(e) => {
                let _ = e.to_string();
                parser = ReplyParser::default();
            }
        }
    }
    if let Ok(r) = Reply::parse(&text) {
        check(&r);
    }
    let _ = text.parse::<EnhancedCode>();
});
