//! Authentication: credentials for the SMTP AUTH step.
//!
//! Owns: turning a profile's auth settings into `Credentials` (a password from its source, or
//! an OAuth2 access token from the cache, acquired or refreshed only when needed), and the
//! token cache. Must not: speak SMTP, or let a secret reach a log or an error message.

use crate::config::{AuthMethod, Config, Profile};
use crate::exit::Failure;
use crate::secret::Secret;

/// What the SMTP session needs to authenticate.
#[derive(Debug, Clone)]
pub enum Credentials {
    None,
    /// AUTH PLAIN or LOGIN.
    Password {
        user: String,
        password: Secret,
    },
    /// AUTH XOAUTH2.
    XOAuth2 {
        user: String,
        token: Secret,
        /// The token came from the cache (so a 535 5.7.3 may be fixed by a fresh one).
        from_cache: bool,
    },
}

/// Credentials for this profile. `fresh` asks for a newly acquired token, bypassing (and
/// replacing) any cached one: used once after a 535 5.7.3 on a cached token.
pub async fn credentials(
    _config: &Config,
    profile: &Profile,
    _fresh: bool,
) -> Result<Credentials, Failure> {
    let user = || {
        profile.login_user().map(str::to_owned).ok_or_else(|| {
            Failure::config(format!(
                "profile \"{}\" needs `mailbox` (or `auth.user`) to log in",
                profile.name
            ))
        })
    };
    match profile.auth_method() {
        AuthMethod::None | AuthMethod::Auto => Ok(Credentials::None),
        AuthMethod::Password => Ok(Credentials::Password {
            user: user()?,
            password: profile.auth.password.resolve("auth.password")?,
        }),
        AuthMethod::OAuth => {
            if profile.auth.token.is_set() {
                return Ok(Credentials::XOAuth2 {
                    user: user()?,
                    token: profile.auth.token.resolve("auth.token")?,
                    from_cache: false,
                });
            }
            Err(Failure::config(format!(
                "profile \"{}\": OAuth token acquisition is not available yet; set auth.token",
                profile.name
            )))
        }
    }
}
