//! Delivery: from a prepared message and an endpoint to an outcome the user can act on.
//!
//! Owns: trying hosts in order, in-process retries with backoff and jitter, the 5.7.3
//! re-authentication with a fresh token, per-recipient results, the exit code, the
//! explanation printed on stderr, the dead letter and the per-message log line (through
//! `report`). Must not: parse replies itself (smtp does) or word explanations (explain does).

use crate::config::{Config, Profile};
use crate::exit::{Exit, Failure};
use crate::message::Prepared;
use crate::route::Endpoint;

/// Options for one delivery.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// -v: print the (redacted) SMTP transcript to stderr.
    pub verbose: u8,
}

/// Deliver now. Ok when every recipient accepted the message; otherwise a Failure whose
/// message says who got it and who did not, with the explanation.
pub async fn deliver(
    _config: &Config,
    _profile: &Profile,
    _message: &Prepared,
    _endpoint: &Endpoint,
    _opts: &Options,
) -> Result<(), Failure> {
    Err(Failure::new(
        Exit::Software,
        "delivery is not implemented yet",
    ))
}
