//! Checks shared by the fuzz targets that drive the `bs` session (bs_server, serve_session).

/// Every reply line is a three-digit code, a space or a hyphen, and no control character.
pub fn assert_reply_lines(replies: &[u8]) {
    let text = std::str::from_utf8(replies).expect("replies are UTF-8");
    for line in text.split_terminator("\r\n") {
        let b = line.as_bytes();
        assert!(
            b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit),
            "{line:?}"
        );
        assert!(b[3] == b' ' || b[3] == b'-', "{line:?}");
        assert!(!line.chars().any(char::is_control), "{line:?}");
    }
}

/// How many messages `input` can end: each end of data is <CR><LF>.<CR><LF>, or ".<CR><LF>"
/// right after the DATA line.
pub fn ends_of_data(input: &[u8]) -> usize {
    input.windows(4).filter(|w| w == b"\n.\r\n").count() + usize::from(input.starts_with(b".\r\n"))
}

/// A message handed over has CRLF line ends only.
pub fn assert_no_bare_lf(message: &[u8]) {
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && message[i - 1] == b'\r', "bare LF handed over");
        }
    }
}
