//! Command line: sendmail-compatible argv and the native options, parsed into an `Invocation`.
//!
//! Owns: argv (including the program name: `sendmail`, `mailq`, `newaliases`), sendmail's
//! single-dash options (`-oi`, `-FNAME`, `-fADDR`, `-odi`, `-B8BITMIME`, ...), native long
//! options and subcommands (clap). Must not: read files, stdin or the environment.

use std::path::PathBuf;

use crate::config::Mode;
use crate::message::Dsn;

/// What the caller asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `--config` / `-C`.
    pub config: Option<PathBuf>,
    /// `--profile`.
    pub profile: Option<String>,
    /// `-v` / `--verbose` (count).
    pub verbose: u8,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send a message (sendmail -bm, the default).
    Send(Box<SendArgs>),
    /// `-bs`: SMTP dialogue on stdin/stdout.
    SmtpStdio(Box<SendArgs>),
    /// `mailq`, `sendmail -bp`, `m365send queue list [--json]`.
    QueueList {
        json: bool,
    },
    /// `m365send queue run`, `sendmail -q`.
    QueueRun,
    /// `m365send queue flush`: run now, ignoring backoff.
    QueueFlush,
    QueueShow {
        id: String,
    },
    QueueDelete {
        id: String,
    },
    /// `newaliases`: nothing to rebuild; succeeds with a note.
    Newaliases,
    /// `m365send explain CODE`.
    Explain {
        code: String,
    },
    /// `m365send login`: delegated device code flow.
    Login,
    /// `m365send token status`.
    TokenStatus,
    /// `m365send token clear`.
    TokenClear,
}

impl Default for Command {
    fn default() -> Self {
        Command::Send(Box::default())
    }
}

/// `-od` delivery mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliveryMode {
    /// Deliver now (default, `-odi`, `-odb`).
    #[default]
    Now,
    /// `-odq`: put in the queue without trying.
    Queue,
}

/// Everything about one message the caller gave on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendArgs {
    /// Recipient arguments (sendmail style).
    pub recipients: Vec<String>,
    /// `-t`: also take recipients from To/Cc/Bcc.
    pub extract_recipients: bool,
    /// `-i` / `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f ADDR` / `-fADDR` / `-r ADDR`.
    pub envelope_from: Option<String>,
    /// `-F NAME`: full name for a From header we create.
    pub full_name: Option<String>,
    /// `-N`, `-R`, `-V`.
    pub dsn: Dsn,
    pub delivery: DeliveryMode,
    /// `--mode`.
    pub mode: Option<Mode>,
    /// `--from`: From header (and envelope sender unless -f) of a composed message.
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: Option<String>,
    pub body: Option<String>,
    pub attach: Vec<PathBuf>,
    /// `--header 'Name: value'`.
    pub headers: Vec<String>,
    /// `--server HOST[:PORT]`.
    pub server: Option<String>,
    pub dry_run: bool,
}

impl SendArgs {
    /// True when the message is composed from options rather than read whole from stdin.
    pub fn composes(&self) -> bool {
        self.subject.is_some() || self.body.is_some() || !self.attach.is_empty()
    }
}
