//! The `-v` transcript: `C:` and `S:` lines, written to a sink the caller chooses (stderr by
//! default; tests capture it). Secrets never reach it: the session passes a redacted
//! rendering of every AUTH payload.

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// A shared, cloneable text sink (stderr, a buffer in tests, a log file).
#[derive(Clone)]
pub struct Sink(Arc<Mutex<Box<dyn Write + Send>>>);

impl Sink {
    pub fn new(w: impl Write + Send + 'static) -> Sink {
        Sink(Arc::new(Mutex::new(Box::new(w))))
    }
    /// stderr, through a writer that never fails (a closed stderr must not stop delivery).
    pub fn stderr() -> Sink {
        Sink::new(crate::console::Stderr)
    }
    /// A sink that collects into memory, and the handle to read it back.
    pub fn memory() -> (Sink, MemoryBuffer) {
        let buf = MemoryBuffer::default();
        (Sink::new(buf.clone()), buf)
    }
    /// Write one line (a newline is added). Errors writing the sink are ignored: a transcript
    /// must never make a delivery fail.
    pub fn line(&self, text: &str) {
        if let Ok(mut w) = self.0.lock() {
            let _ = writeln!(w, "{text}");
            let _ = w.flush();
        }
    }
}

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sink")
    }
}

/// An in-memory sink buffer (see `Sink::memory`).
#[derive(Clone, Default)]
pub struct MemoryBuffer(Arc<Mutex<Vec<u8>>>);

impl MemoryBuffer {
    pub fn contents(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Write for MemoryBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
