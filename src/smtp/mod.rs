//! Our SMTP client session (tokio + rustls/ring). See DESIGN.md for why it is ours.
//!
//! Owns: the wire protocol — connecting with timeouts, EHLO and its capabilities, STARTTLS
//! and certificate checks, AUTH (XOAUTH2, PLAIN, LOGIN), the mail transaction in as few round
//! trips as the server allows (`transaction`: MAIL, RCPTs and `BDAT <size> LAST` with the body
//! in one flight when PIPELINING and CHUNKING are offered, QUIT pipelined behind the last
//! message, DATA with dot-stuffing otherwise), per-recipient replies, RSET only after a
//! transaction that did not end cleanly, and the redacted `-v` transcript. Must not: decide
//! about retries, recipient batches, exit codes or wording for the user (transport, deliver
//! and explain do), or ever write a secret to the transcript.
//!
//! Use: build a `SessionConfig` (TLS config from `tls::client_config`), `Session::connect`,
//! `authenticate`, then `send_message` once per message (or `send_transaction` for one batch
//! of a message's recipients), `send_message_and_quit` for the last (QUIT in the same round
//! trip), or `quit`. `doctor` uses `tls_info` and `probe` (MAIL FROM, RCPT TO, RSET: never
//! DATA) instead of `send_message`.

pub mod caps;
pub mod data;
pub mod reply;
pub mod session;
pub mod tls;
pub mod transaction;
pub mod transcript;

pub use caps::Capabilities;
pub use reply::{EnhancedCode, Reply};
pub use session::{
    MessageResult, ProbeReplies, Session, SessionConfig, SessionError, Step, TlsFailure, TlsInfo,
    hello_name, is_microsoft_host,
};
pub use tls::{TlsSettings, TlsSetupError, client_config, preload_system_roots};
pub use transaction::{Flight, MessageFlags};
pub use transcript::{MemoryBuffer, Sink};
