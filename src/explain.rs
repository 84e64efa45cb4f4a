//! Explanation catalogue: Microsoft 365 reply codes → what happened, what to do, exit code.
//!
//! Owns: the catalogue (every reply in BRIEF.md's table and the identity platform's AADSTS
//! errors), the classification of a reply into a sysexits code, and `m365send explain CODE`.
//! Must not: do I/O beyond returning strings.

use crate::config::Mode;
use crate::exit::Exit;
use crate::smtp::Reply;

/// What the explanation may mention about this user's situation.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    pub mode: Option<Mode>,
    pub profile: Option<&'a str>,
    /// The mailbox that authenticated (submit).
    pub mailbox: Option<&'a str>,
    /// Envelope sender / From.
    pub sender: Option<&'a str>,
    /// The recipient a RCPT reply is about.
    pub recipient: Option<&'a str>,
    /// The host that replied.
    pub host: Option<&'a str>,
    /// Authenticated with an app-only OAuth token.
    pub app_only: bool,
    /// Authenticated with a password.
    pub basic_auth: bool,
}

/// One or two lines for the user, and the exit code the reply implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What it means for this user (one line, no trailing newline).
    pub meaning: String,
    /// What to do (one line).
    pub advice: String,
    pub exit: Exit,
}

/// The exit code a final reply implies (5xx by enhanced code; 4xx → 75).
pub fn exit_for(reply: &Reply) -> Exit {
    if reply.is_transient() {
        Exit::TempFail
    } else {
        Exit::Unavailable
    }
}

/// The explanation of a server reply, when the catalogue knows it.
pub fn explain_reply(_reply: &Reply, _ctx: &Context<'_>) -> Option<Explanation> {
    None
}
