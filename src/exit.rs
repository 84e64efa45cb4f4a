//! Process exit codes (sysexits.h) and the one error value that reaches `main`.
//!
//! Owns: the mapping from "what went wrong" to a sysexits code, and the user-facing
//! `Failure` that main prints. Must not: print anything itself or know about modules.

use std::fmt;

/// sysexits(3) codes used by m365send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Exit {
    Ok = 0,
    Usage = 64,
    DataErr = 65,
    NoInput = 66,
    NoUser = 67,
    NoHost = 68,
    Unavailable = 69,
    Software = 70,
    OsErr = 71,
    CantCreat = 73,
    IoErr = 74,
    TempFail = 75,
    NoPerm = 77,
    Config = 78,
}

impl Exit {
    /// Every code, in numeric order (for `--help` and m365send(8)).
    pub const ALL: [Exit; 14] = [
        Exit::Ok,
        Exit::Usage,
        Exit::DataErr,
        Exit::NoInput,
        Exit::NoUser,
        Exit::NoHost,
        Exit::Unavailable,
        Exit::Software,
        Exit::OsErr,
        Exit::CantCreat,
        Exit::IoErr,
        Exit::TempFail,
        Exit::NoPerm,
        Exit::Config,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    /// What the code means to the caller: a few words (for `--help`) and a sentence (for
    /// m365send(8)). A match without a wildcard, so that a new code cannot go undocumented.
    pub fn meaning(self) -> (&'static str, &'static str) {
        match self {
            Exit::Ok => (
                "sent (or queued)",
                "Delivered to every recipient, or put in the queue for a later try.",
            ),
            Exit::Usage => (
                "usage",
                "Usage error: an unknown option, a missing value, no recipients.",
            ),
            Exit::DataErr => (
                "bad message",
                "The message was refused as data: too large, malformed, header injection.",
            ),
            Exit::NoInput => (
                "unreadable --attach file",
                "An --attach file cannot be read.",
            ),
            Exit::NoUser => (
                "unknown recipient",
                "A recipient was refused (5.1.x, 5.4.1).",
            ),
            Exit::NoHost => (
                "no MX host",
                "The host was not found (no MX record for the domain).",
            ),
            Exit::Unavailable => ("refused", "Another permanent failure."),
            Exit::Software => (
                "internal error",
                "An internal error (a bug: please report it).",
            ),
            Exit::OsErr => (
                "system error",
                "The operating system refused something m365send needs (a thread, a timer).",
            ),
            Exit::CantCreat => (
                "queue not writable",
                "The queue cannot be written; the message went to the dead letter.",
            ),
            Exit::IoErr => ("I/O error", "Reading the message or writing a file failed."),
            Exit::TempFail => (
                "temporary failure (try again)",
                "A temporary failure is left over (4xx reply, timeout, connection failure, \
                 token endpoint down) and the message was not queued.",
            ),
            Exit::NoPerm => (
                "permission",
                "Authentication or permission refused (5.7.3, 5.7.139, 5.7.57, 5.7.60, \
                 5.7.64, 5.7.68, AADSTS...).",
            ),
            Exit::Config => ("configuration", "A configuration error."),
        }
    }
}

/// A failure as the user sees it: a message (already worded for the user, possibly several
/// lines, never containing a secret) and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure {
            exit,
            message: message.into(),
        }
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(Exit::Config, message)
    }
    pub fn data(message: impl Into<String>) -> Self {
        Self::new(Exit::DataErr, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(Exit::IoErr, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

pub type Result<T, E = Failure> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes_listed_once_in_order_with_meanings() {
        let codes: Vec<i32> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
        assert_eq!(codes.first(), Some(&0));
        for e in Exit::ALL {
            let (short, long) = e.meaning();
            assert!(!short.is_empty() && long.ends_with('.'), "{e:?}");
        }
    }
}
