//! Our SMTP client session (tokio + rustls/ring). See DESIGN.md for why it is ours.

pub mod reply;

pub use reply::{EnhancedCode, Reply};
