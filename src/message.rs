//! The prepared message: envelope plus the exact bytes that will be transmitted.
//!
//! Owns: reading stdin as bytes (or composing with lettre for --subject/--body/--attach),
//! CRLF normalisation, -i/-oi dot handling, -t recipient extraction (mail-parser), aliases and
//! the default domain, Bcc removal, From/envelope sender policy, Date and Message-ID, header
//! injection checks, the size limit, and the 8BITMIME/SMTPUTF8 flags. The body lives in a
//! temporary spool file so a large message costs bounded memory. Must not: connect anywhere.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// DSN return type (RFC 3461 RET).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ret {
    Full,
    Hdrs,
}

/// DSN requests from -N / -R / -V, carried to delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dsn {
    /// RCPT NOTIFY= value in upper case: "NEVER" or a comma list of SUCCESS, FAILURE, DELAY.
    pub notify: Option<String>,
    pub ret: Option<Ret>,
    /// MAIL ENVID= value (xtext-encoded when sent).
    pub envid: Option<String>,
}

impl Dsn {
    pub fn is_requested(&self) -> bool {
        self.notify.is_some() || self.ret.is_some() || self.envid.is_some()
    }
}

/// SMTP envelope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM address; empty for the null sender (bounces).
    pub sender: String,
    /// RCPT TO addresses, de-duplicated, aliases applied, fully qualified.
    pub recipients: Vec<String>,
    #[serde(default)]
    pub dsn: Dsn,
}

/// Where the transmitted bytes live: a file with CRLF line endings, not dot-stuffed.
#[derive(Debug)]
pub struct Body {
    path: PathBuf,
    /// Present when the file is ours to delete on drop.
    _temp: Option<tempfile::TempPath>,
}

impl Body {
    /// A body backed by a temporary file that is removed when the Body is dropped.
    pub fn temporary(temp: tempfile::TempPath) -> Body {
        Body {
            path: temp.to_path_buf(),
            _temp: Some(temp),
        }
    }
    /// A body backed by a file someone else owns (a queue entry).
    pub fn at(path: impl Into<PathBuf>) -> Body {
        Body {
            path: path.into(),
            _temp: None,
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn open(&self) -> io::Result<File> {
        File::open(&self.path)
    }
}

/// A message ready for delivery.
#[derive(Debug)]
pub struct Prepared {
    pub envelope: Envelope,
    pub body: Body,
    /// Size of the body file in bytes (CRLF, before dot-stuffing).
    pub size: u64,
    /// The body has bytes >= 0x80: ask for BODY=8BITMIME.
    pub eight_bit: bool,
    /// An address or header needs SMTPUTF8.
    pub smtputf8: bool,
    /// The final header block as transmitted (for --dry-run and logs), CRLF line endings.
    pub header_block: String,
}

/// Read (or compose) the message, apply the profile's policies, and write the transmitted
/// bytes to a temporary spool file.
pub fn prepare(
    _args: &crate::cli::SendArgs,
    _profile: &crate::config::Profile,
    _input: &mut dyn io::Read,
) -> Result<Prepared, crate::exit::Failure> {
    Err(crate::exit::Failure::new(
        crate::exit::Exit::Software,
        "message preparation is not implemented yet",
    ))
}
