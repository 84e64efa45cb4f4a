//! Identity-platform errors → a `Failure` the user can act on.
//!
//! Owns: reading the token endpoint's error answer (`error`, `error_description` with its
//! AADSTSnnnn code, `error_codes`), the transient/permanent decision for an HTTP status, and
//! scrubbing secrets out of the message. Must not: word advice (the one AADSTS catalogue is
//! `explain::explain_token_error`, which also picks the exit code), or quote anything but
//! Microsoft's error code and the first line of its description (never a secret, token or
//! assertion; `scrub` removes any that would slip in).
//!
//! Exit codes come from the catalogue (see `explain`'s module documentation); on top of it,
//! an answer with HTTP 5xx or 429 is always 75 (TempFail): the caller keeps the message and
//! retries later, whatever the error name says. An error the catalogue does not know is 77.

use serde::Deserialize;

use crate::exit::{Exit, Failure};
use crate::explain::{self, Explanation};

/// The JSON body of an identity-platform error answer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorResponse {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
    #[serde(default)]
    pub error_codes: Vec<u64>,
}

impl ErrorResponse {
    /// The AADSTS code: from `error_codes`, else from the description text.
    pub fn aadsts(&self) -> Option<String> {
        if let Some(c) = self.error_codes.first() {
            return Some(format!("AADSTS{c}"));
        }
        aadsts_in(self.error_description.as_deref().unwrap_or(""))
    }

    /// The first line of the description (Microsoft appends Trace ID, Correlation ID and
    /// Timestamp on following lines).
    pub fn first_line(&self) -> &str {
        self.error_description
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .trim()
    }
}

/// The first `AADSTS<digits>` in a text.
pub fn aadsts_in(text: &str) -> Option<String> {
    crate::explain::aadsts_code(text)
}

/// Where the error happened, to word the advice.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub profile: &'a str,
    pub tenant: &'a str,
    pub client_id: &'a str,
    /// Delegated flow (refresh token / device code) rather than app-only.
    pub delegated: bool,
}

impl Context<'_> {
    /// The catalogue's view of this context.
    pub fn explain(&self) -> explain::Context<'_> {
        explain::Context {
            profile: Some(self.profile),
            tenant: Some(self.tenant),
            client_id: Some(self.client_id),
            app_only: !self.delegated,
            delegated: self.delegated,
            ..explain::Context::default()
        }
    }
}

/// The catalogue's explanation of an error answer, or a generic refusal (77) when the
/// catalogue does not know it.
pub fn explanation(resp: &ErrorResponse, ctx: &Context<'_>) -> Explanation {
    let code = resp.aadsts();
    let description = match &code {
        // `error_codes` carries the code even when the description does not.
        Some(c) => format!("{c} {}", resp.error_description.as_deref().unwrap_or("")),
        None => resp.error_description.clone().unwrap_or_default(),
    };
    explain::explain_token_error(&resp.error, &description, &ctx.explain()).unwrap_or_else(|| {
        Explanation {
            meaning: "Microsoft refused the token request.".to_string(),
            advice: format!(
                "Check the OAuth settings of profile \"{}\" (auth.client_id, the secret or \
                 certificate, the tenant); the error above names the problem.",
                ctx.profile
            ),
            exit: Exit::NoPerm,
        }
    })
}

/// "the client secret is wrong." → "The client secret is wrong." (the catalogue's meanings
/// start in lower case; also used by `doctor`).
pub fn sentence(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// A failure for an error answer from the token endpoint. `secrets` are values that must not
/// appear in the message (client secret, assertion, refresh token, device code).
pub fn from_response(
    status: u16,
    resp: &ErrorResponse,
    ctx: &Context<'_>,
    secrets: &[&str],
) -> Failure {
    let code = resp.aadsts();
    let mut adv = explanation(resp, ctx);
    if (status >= 500 || status == 429) && adv.exit != Exit::TempFail {
        adv = Explanation {
            meaning: "the identity platform had a temporary problem.".to_string(),
            advice: "Try again later; the message is kept.".to_string(),
            exit: Exit::TempFail,
        };
    }
    // Quoted from the answer, which may not come from Microsoft (a proxy, a wrong
    // authority): short, one line, no terminal escapes.
    let error = crate::printable::excerpt(&resp.error, 100);
    let quoted = match (code.as_deref(), resp.first_line()) {
        (_, "") => error,
        (Some(c), line) if line.contains(c) => {
            format!("{error}: {}", crate::printable::excerpt(line, 400))
        }
        (Some(c), line) => format!("{error} {c}: {}", crate::printable::excerpt(line, 400)),
        (None, line) => format!("{error}: {}", crate::printable::excerpt(line, 400)),
    };
    let msg = format!(
        "OAuth token request for profile \"{}\" failed (HTTP {status}, {quoted}).\n  {}\n  {}",
        ctx.profile,
        sentence(&adv.meaning),
        adv.advice
    );
    Failure::new(adv.exit, scrub(&msg, secrets))
}

/// Replace every occurrence of a secret value with `<redacted>`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 4 {
            out = out.replace(s, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context<'static> {
        Context {
            profile: "app",
            tenant: "contoso.onmicrosoft.com",
            client_id: "cid",
            delegated: false,
        }
    }

    #[test]
    fn code_from_description_or_codes() {
        let r = ErrorResponse {
            error: "invalid_client".into(),
            error_description: Some(
                "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x".into(),
            ),
            error_codes: vec![],
        };
        assert_eq!(r.aadsts().as_deref(), Some("AADSTS7000215"));
        assert_eq!(
            r.first_line(),
            "AADSTS7000215: Invalid client secret provided."
        );
        let f = from_response(401, &r, &ctx(), &[]);
        assert_eq!(f.exit, Exit::Config);
        assert!(f.message.contains("Secret ID"), "{}", f.message);
        assert!(!f.message.contains("Trace ID"));
    }

    #[test]
    fn server_errors_are_transient() {
        let r = ErrorResponse {
            error: "server_error".into(),
            ..Default::default()
        };
        assert_eq!(from_response(503, &r, &ctx(), &[]).exit, Exit::TempFail);
    }

    #[test]
    fn scrub_removes_secrets() {
        assert_eq!(scrub("a hunter2 b", &["hunter2"]), "a <redacted> b");
    }
}
