//! Authentication: credentials for the SMTP AUTH step.
//!
//! Owns: turning a profile's auth settings into `Credentials` (a password from its source, or
//! an OAuth2 access token from the cache, acquired or refreshed only when needed), and the
//! token cache. Must not: speak SMTP, or let a secret reach a log or an error message.

use crate::secret::Secret;

/// What the SMTP session needs to authenticate.
#[derive(Debug, Clone)]
pub enum Credentials {
    None,
    /// AUTH PLAIN or LOGIN.
    Password { user: String, password: Secret },
    /// AUTH XOAUTH2.
    XOAuth2 {
        user: String,
        token: Secret,
        /// The token came from the cache (so a 535 5.7.3 may be fixed by a fresh one).
        from_cache: bool,
    },
}
