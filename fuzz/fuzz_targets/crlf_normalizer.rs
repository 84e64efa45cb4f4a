//! The stdin normaliser (any line end to CRLF; a lone "." line ends the message unless -i),
//! read through pieces of any size, against a line-by-line model of what it must do.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use m365send::message::Normalizer;

/// Hands out the input in pieces of `piece` bytes, as a pipe may.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.data.len().min(self.piece).min(buf.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn model(input: &[u8], ignore_dots: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let end = input[i..]
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .map(|p| i + p);
        let (line, next) = match end {
            Some(e) if input[e] == b'\r' && input.get(e + 1) == Some(&b'\n') => {
                (&input[i..e], e + 2)
            }
            Some(e) => (&input[i..e], e + 1),
            None => (&input[i..], input.len()),
        };
        if line == b"." && !ignore_dots {
            break;
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        i = next;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let ignore_dots = flags & 1 == 1;
    let piece = usize::from(flags >> 1).max(1);
    let mut src = Pieces { data: input, piece };
    let mut norm = Normalizer::new(&mut src, ignore_dots);
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece.max(7)];
    loop {
        let n = norm.read(&mut buf).expect("reading from memory");
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, model(input, ignore_dots));
});
