//! The program: from an `Invocation` to an exit code, calling each step in turn.
//!
//! Owns: the order of the steps and what is printed for --dry-run. Must not: hold any step's
//! logic itself.

use std::ffi::OsString;

use crate::exit::{Exit, Failure};

/// Run with the given argv (argv[0] included) and return the process exit code.
pub fn main_with(args: Vec<OsString>) -> i32 {
    match run(args) {
        Ok(()) => Exit::Ok.code(),
        Err(f) => {
            eprintln!("m365send: {}", f.message);
            f.exit.code()
        }
    }
}

fn run(_args: Vec<OsString>) -> Result<(), Failure> {
    Err(Failure::new(Exit::Software, "not implemented yet"))
}
