//! Our SMTP client session (tokio + rustls/ring). See DESIGN.md for why it is ours.
//!
//! Owns: the wire protocol — connecting with timeouts, EHLO and its capabilities, STARTTLS
//! and certificate checks, AUTH (XOAUTH2, PLAIN, LOGIN), pipelined MAIL/RCPT/DATA or BDAT,
//! per-recipient replies, dot-stuffing while streaming the body, RSET/QUIT, and the
//! redacted `-v` transcript. Must not: decide about retries, exit codes or wording for the
//! user (deliver and explain do), or ever write a secret to the transcript.
//!
//! Use: build a `SessionConfig` (TLS config from `tls::client_config`), `Session::connect`,
//! `authenticate`, then `send_message` once per message (`rset` after a failed one is
//! automatic), and `quit`.

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
    MessageResult, Session, SessionConfig, SessionError, Step, TlsFailure, hello_name,
    is_microsoft_host,
};
pub use tls::{TlsSettings, TlsSetupError, client_config};
pub use transaction::MessageFlags;
pub use transcript::{MemoryBuffer, Sink};
