//! Body encodings on the wire: DATA dot-stuffing (streamed, chunk boundaries safe) and xtext.

/// Streaming DATA encoder (RFC 5321 §4.5.2). Feed it the body in pieces of any size; it
/// dot-stuffs lines starting with ".", and turns any bare LF or bare CR into CRLF so the
/// end-of-data sequence can never appear inside the message (SMTP smuggling) and Exchange
/// Online, which no longer repairs bare LF, gets proper lines. `finish` adds the final
/// CRLF (when the body does not end with one) and the ".\r\n" terminator.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the encoding of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 4);
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.pending_cr {
                // The CR is out; whatever follows, the line ends with CRLF.
                self.pending_cr = false;
                out.push(b'\n');
                self.at_line_start = true;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\r' => {
                    out.push(b'\r');
                    self.pending_cr = true;
                    i += 1;
                }
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                    i += 1;
                }
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    // Copy the rest of the line in one go.
                    let rest = &input[i..];
                    let run = rest
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(rest.len());
                    out.extend_from_slice(&rest[..run]);
                    self.at_line_start = false;
                    i += run;
                }
            }
        }
    }

    /// Append the end of the body and the end-of-data marker.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr {
            self.pending_cr = false;
            out.push(b'\n');
            self.at_line_start = true;
        }
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.at_line_start = true;
    }
}

/// RFC 3461 xtext: printable ASCII except '+' and '=' as is, everything else as +HH.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff_in_pieces(input: &[u8], piece: usize) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for c in input.chunks(piece.max(1)) {
            s.encode(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn stuffing_is_independent_of_chunk_boundaries() {
        let input = b".start\r\nline\r\n.\r\n..two\r\nbare\nlf\rcr\r\n.\n.end";
        let want = b"..start\r\nline\r\n..\r\n...two\r\nbare\r\nlf\r\ncr\r\n..\r\n..end\r\n.\r\n";
        for piece in 1..input.len() + 1 {
            assert_eq!(
                stuff_in_pieces(input, piece),
                want.to_vec(),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn ends() {
        assert_eq!(stuff_in_pieces(b"", 4), b".\r\n".to_vec());
        assert_eq!(stuff_in_pieces(b"a\r\n", 4), b"a\r\n.\r\n".to_vec());
        assert_eq!(stuff_in_pieces(b"a\r", 4), b"a\r\n.\r\n".to_vec());
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext("a+b=c d@x"), "a+2Bb+3Dc+20d@x");
        assert_eq!(xtext("é"), "+C3+A9");
    }
}
