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
    pub fn code(self) -> i32 {
        self as i32
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
