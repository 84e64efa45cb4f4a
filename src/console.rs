//! Writing to the caller's stderr and stdout without ever panicking.
//!
//! Owns: every byte m365send writes to stderr or stdout outside the `-bs` dialogue (which
//! writes to its own handle and reports failures as I/O errors). Must not: decide what is
//! said, or turn a write failure into a failed delivery.
//!
//! A caller may have closed them: cron's or a daemon's stderr, a pipe whose reader went away
//! (`m365send queue list | head -1`). `eprintln!`/`println!` panic then ("failed printing to
//! stderr", exit 101) — before sending when it happens at `-v` — so they are not used anywhere
//! (clippy's `print_stderr`/`print_stdout` lints enforce it, see lib.rs):
//!
//! * stderr: a failed write is ignored. Nobody is left to tell, and the message, the exit
//!   code, the log line and the dead letter do not depend on it.
//! * stdout: a reader that went away (EPIPE) is not an error, as for `--help | head -1`: what
//!   was asked for was read as far as the reader wanted it. Any other failure (a full disk
//!   behind a redirection) is returned, for the caller to report with exit 74.

use std::io::{self, Write};

/// Write `text` and a line break to stderr; a write that fails is ignored.
pub fn err_line(text: &str) {
    let mut e = io::stderr().lock();
    let _ = e.write_all(text.as_bytes());
    let _ = e.write_all(b"\n");
    let _ = e.flush();
}

/// Write `text` to stdout as it is and flush it. A reader that went away is fine (Ok);
/// other errors are returned.
pub fn out(text: &str) -> io::Result<()> {
    let mut o = io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// stderr as an `io::Write` that never fails: for the log subscriber and the transcript
/// sink, which must not stop a delivery because nobody reads them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// stdout as an `io::Write` for commands that print as they go (`login`, `token status`): a
/// reader that went away swallows the rest; other errors are returned.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match io::stdout().write(buf) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(buf.len()),
            r => r,
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match io::stdout().flush() {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }
}
