//! Text from outside (message headers, server replies, addresses) made safe to print on a
//! terminal or to write into a one-line log record.
//!
//! Owns: the escaping of control characters (C0, DEL, C1 — ESC among them, which starts
//! terminal control sequences), of Unicode format characters that reorder or hide text
//! (bidirectional overrides, zero-width characters), of the quote of a log field, and the
//! bounded excerpt of foreign text quoted in a message ([`excerpt`]).
//! Must not: know where the text came from or where it goes.

use std::borrow::Cow;
use std::fmt::Write as _;

/// True for characters a terminal or a log reader must not receive raw: C0 controls, DEL, C1
/// controls, and the format characters that reorder or hide text (U+00AD, U+061C, U+180E,
/// U+200B–U+200F, U+2028–U+202E, U+2060–U+206F, U+FEFF, U+FFF9–U+FFFB).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{ad}' | '\u{61c}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` for display on a terminal: every unsafe character written as an escape (`\x1b`, `\r`,
/// `\u{202e}`; a backslash itself stays as it is, so ordinary text reads unchanged). With
/// `keep_tab`, TAB is kept (it moves the cursor, nothing else).
pub fn for_terminal(s: &str, keep_tab: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !(keep_tab && c == '\t')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) && !(keep_tab && c == '\t') {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One log field value. Bare when it is made only of letters, digits and `@._+-/:=%` (an
/// ordinary address, host or profile name); `<>` when empty; otherwise in single quotes, with
/// `\` and `'` escaped by a backslash and unsafe characters as in [`for_terminal`]. So a
/// record is one line, a value cannot end early or look like another `key=value`, and shell
/// characters (`` ` ``, `$`, `;`, spaces) are always inside quotes.
pub fn log_field(s: &str) -> String {
    if s.is_empty() {
        return "<>".to_owned();
    }
    if s.chars()
        .all(|c| c.is_alphanumeric() || "@._+-/:=%".contains(c))
        && !s.chars().any(is_unsafe)
    {
        return s.to_owned();
    }
    log_quoted(s)
}

/// A log field value always in single quotes (free text: a reply, an error), escaped as
/// [`log_field`] says.
pub fn log_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if is_unsafe(c) => push_escaped(&mut out, c),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// At most `max` characters of `s` for quoting in a message or a report, unsafe characters
/// escaped as in [`for_terminal`] (TAB too), and `…` when something was cut: text from
/// outside (an error body, a DNS record) may be megabytes long.
pub fn excerpt(s: &str, max: usize) -> String {
    let mut chars = s.char_indices();
    let cut = chars.nth(max).map(|(i, _)| i);
    let head = &s[..cut.unwrap_or(s.len())];
    let mut out = for_terminal(head, false).into_owned();
    if cut.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_controls_and_bidi_but_not_text() {
        assert_eq!(for_terminal("Subject: hello", false), "Subject: hello");
        assert_eq!(
            for_terminal("a\x1b[2J\x07b\x0b\x0c\u{9b}c\u{202e}d", false),
            "a\\x1b[2J\\x07b\\x0b\\x0c\\u{9b}c\\u{202e}d"
        );
        assert_eq!(for_terminal("a\tb\r\n", true), "a\tb\\r\\n");
        assert_eq!(for_terminal("a\tb", false), "a\\tb");
        assert_eq!(for_terminal("J\u{f6}rg \\ x", false), "J\u{f6}rg \\ x");
    }

    #[test]
    fn excerpts_are_short_and_escaped() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("0123456789", 10), "0123456789");
        assert_eq!(excerpt("0123456789a", 10), "0123456789…");
        assert_eq!(excerpt("\x1b[2J\u{202e}", 10), "\\x1b[2J\\u{202e}");
        assert_eq!(excerpt("\u{f6}\u{f6}\u{f6}", 2), "\u{f6}\u{f6}…");
    }

    #[test]
    fn log_fields_are_bare_or_quoted() {
        assert_eq!(log_field("ops@contoso.com"), "ops@contoso.com");
        assert_eq!(
            log_field("j\u{f6}rg@m\u{fc}ller.de"),
            "j\u{f6}rg@m\u{fc}ller.de"
        );
        assert_eq!(log_field(""), "<>");
        assert_eq!(log_field("`id`@x"), "'`id`@x'");
        assert_eq!(log_field("a${IFS}b@x"), "'a${IFS}b@x'");
        assert_eq!(log_field("\"a b\"@x"), "'\"a b\"@x'");
        assert_eq!(log_field("a' from=evil@x"), "'a\\' from=evil@x'");
        assert_eq!(log_field("a\nb"), "'a\\nb'");
        assert_eq!(log_field("a,b"), "'a,b'");
        assert_eq!(log_quoted("it's \\ ok\r\n"), "'it\\'s \\\\ ok\\r\\n'");
    }
}
