//! Identity-platform errors → what the user should do, and which exit code.
//!
//! Owns: reading the token endpoint's error answer (`error`, `error_description` with its
//! AADSTSnnnn code, `error_codes`), the small AADSTS advice table, and the transient/permanent
//! split. Must not: quote anything but Microsoft's error code and the first line of its
//! description (never a secret, token or assertion; `scrub` removes any that would slip in).
//!
//! Exit codes (documented choice):
//! - 75 (TempFail): the token endpoint is unreachable, times out, answers 5xx or 429, or says
//!   `temporarily_unavailable`: the caller keeps the message and retries later.
//! - 78 (Config): fixed by editing the configuration or the app registration: unknown app or
//!   tenant, bad or expired secret, certificate/assertion problems (incl. clock skew),
//!   invalid_scope, unauthorized_client, an authority that is not a token endpoint.
//! - 77 (NoPerm): fixed by a person granting or re-establishing permission: MFA or conditional
//!   access blocks, missing consent, an expired or revoked refresh token (run
//!   `m365send login` again), a declined or expired device login, and any other refusal.

use serde::Deserialize;

use crate::exit::{Exit, Failure};

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
    let start = text.find("AADSTS")?;
    let digits: String = text[start + 6..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    (!digits.is_empty()).then(|| format!("AADSTS{digits}"))
}

/// What the user reads and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    pub exit: Exit,
    /// One or two sentences: the meaning, then what to do.
    pub text: String,
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

/// Advice for an AADSTS code or, failing that, the OAuth `error` value.
pub fn advice(code: Option<&str>, error: &str, ctx: &Context<'_>) -> Advice {
    let p = ctx.profile;
    let login = format!("run `m365send login --profile {p}` again");
    let (exit, text) = match code.unwrap_or("") {
        "AADSTS700016" => (
            Exit::Config,
            format!(
                "The application {} was not found in tenant {}. Check auth.client_id and the \
                 tenant in profile \"{p}\"; the app must be registered in that tenant (or \
                 consented to by its administrator).",
                ctx.client_id, ctx.tenant
            ),
        ),
        "AADSTS7000215" => (
            Exit::Config,
            format!(
                "The client secret is wrong. Use the secret's Value (shown once when it was \
                 created), not its Secret ID, and check that it has not expired (profile \
                 \"{p}\", auth.client_secret)."
            ),
        ),
        "AADSTS7000222" => (
            Exit::Config,
            format!(
                "The client secret has expired. Create a new one in the app registration \
                 (Certificates & secrets) and update auth.client_secret in profile \"{p}\"."
            ),
        ),
        "AADSTS700027" => (
            Exit::Config,
            format!(
                "Microsoft could not verify the client assertion. Upload this certificate (the \
                 public .crt/.cer) to the app registration under Certificates & secrets, check \
                 that auth.private_key belongs to auth.certificate (profile \"{p}\"), and that \
                 the system clock is right."
            ),
        ),
        "AADSTS700024" => (
            Exit::Config,
            "The client assertion is outside its valid time range: the system clock is wrong. \
             Synchronise it (NTP) and try again."
                .to_string(),
        ),
        "AADSTS50076" | "AADSTS50079" => (
            Exit::NoPerm,
            format!(
                "Multi-factor authentication is required for this sign-in. A sendmail program \
                 cannot answer MFA prompts: use the app-only flow (client credentials), or \
                 {login} and complete MFA in the browser."
            ),
        ),
        "AADSTS53003" => (
            Exit::NoPerm,
            "A Conditional Access policy blocked the sign-in. Ask the tenant administrator to \
             exclude this application or host from the policy, or use the app-only flow."
                .to_string(),
        ),
        "AADSTS700082" | "AADSTS70008" => (
            Exit::NoPerm,
            format!(
                "The stored refresh token has expired (refresh tokens expire after 90 days \
                 without use) or the login code is too old: {login}."
            ),
        ),
        "AADSTS50173" | "AADSTS50133" | "AADSTS50089" => (
            Exit::NoPerm,
            format!("The sign-in session was revoked (password change or expiry): {login}."),
        ),
        "AADSTS65001" => (
            Exit::NoPerm,
            format!(
                "The application has no consent for the requested permission. A tenant \
                 administrator must grant admin consent to app {}.",
                ctx.client_id
            ),
        ),
        "AADSTS90002" => (
            Exit::Config,
            format!(
                "Tenant {} was not found. Check the tenant (id or domain) in profile \"{p}\" \
                 and the cloud (global, usgov, china).",
                ctx.tenant
            ),
        ),
        "AADSTS7000218" => (
            Exit::Config,
            format!(
                "The app requires a client secret or certificate. Set auth.client_secret or \
                 auth.certificate in profile \"{p}\", or enable \"Allow public client flows\" \
                 in the app registration for device-code login."
            ),
        ),
        _ => match error {
            "invalid_scope" => (
                Exit::Config,
                format!(
                    "The scope was refused. App-only tokens need a scope ending in /.default \
                     (https://outlook.office365.com/.default); delegated tokens need \
                     https://outlook.office.com/SMTP.Send offline_access. Check auth.scope and \
                     the cloud in profile \"{p}\"."
                ),
            ),
            "unauthorized_client" => (
                Exit::Config,
                format!(
                    "The application is not allowed to use this grant. For device-code login \
                     enable \"Allow public client flows\" in the app registration; for app-only \
                     check the client id (profile \"{p}\")."
                ),
            ),
            "invalid_client" => (
                Exit::Config,
                format!(
                    "Microsoft refused the client credentials. Check auth.client_id and \
                     auth.client_secret or auth.certificate in profile \"{p}\"."
                ),
            ),
            "temporarily_unavailable" => (
                Exit::TempFail,
                "The identity platform is temporarily unavailable; try again later.".to_string(),
            ),
            "invalid_grant" if ctx.delegated => (
                Exit::NoPerm,
                format!("The stored login is no longer valid: {login}."),
            ),
            "authorization_declined" | "access_denied" => (
                Exit::NoPerm,
                format!("The sign-in was declined. {login} and approve it."),
            ),
            "expired_token" => (
                Exit::NoPerm,
                format!("The login code expired before it was used: {login}."),
            ),
            _ => (
                Exit::NoPerm,
                "Microsoft refused the token request.".to_string(),
            ),
        },
    };
    Advice { exit, text }
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
    let mut adv = advice(code.as_deref(), &resp.error, ctx);
    if (status >= 500 || status == 429) && adv.exit != Exit::TempFail {
        adv = Advice {
            exit: Exit::TempFail,
            text: "The identity platform had a temporary problem; try again later.".to_string(),
        };
    }
    let quoted = match (code.as_deref(), resp.first_line()) {
        (_, "") => resp.error.clone(),
        (Some(c), line) if line.contains(c) => format!("{}: {line}", resp.error),
        (Some(c), line) => format!("{} {c}: {line}", resp.error),
        (None, line) => format!("{}: {line}", resp.error),
    };
    let msg = format!(
        "OAuth token request for profile \"{}\" failed (HTTP {status}, {quoted}).\n  {}",
        ctx.profile, adv.text
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
