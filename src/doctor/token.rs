//! Group 5, the token (OAuth profiles): acquired through `auth` (or taken from its cache),
//! then its claims decoded with `auth::TokenClaims` — never printed: audience, tenant, app,
//! roles or scopes, expiry. A token for another resource, without the sending permission
//! (no admin consent), or from another tenant or app is a failure, with the catalogue's fix.
//! Must not: print the token, or decide anything its claims do not say.

use super::{Check, Ctx};
use crate::auth::{self, Credentials, TokenClaims};
use crate::config::{AuthMethod, Cloud, Mode};
use crate::exit::Exit;
use crate::explain;
use crate::route::AuthKind;
use crate::secret::Secret;

const NAME: &str = "token";

/// The token check, and the credentials for the SMTP AUTH step (None when there are none to
/// try). `auth_kind`: how the route authenticates (None: from the profile, when the route
/// could not be resolved); `host`: the mail server, for the basic-auth note.
pub async fn check(
    ctx: &Ctx<'_>,
    auth_kind: Option<AuthKind>,
    host: Option<&str>,
) -> (Check, Option<Credentials>) {
    let p = ctx.profile;
    let kind = auth_kind.unwrap_or(match p.auth_method() {
        AuthMethod::OAuth if !matches!(p.mode, Mode::Relay | Mode::Direct) => AuthKind::OAuth,
        AuthMethod::Password if !matches!(p.mode, Mode::Relay | Mode::Direct) => AuthKind::Password,
        _ => AuthKind::None,
    });
    match kind {
        AuthKind::None => (
            Check::skipped(
                NAME,
                format!("mode {} does not log in: no token", p.mode.as_str()),
            ),
            Some(Credentials::None),
        ),
        AuthKind::Password => match auth::credentials(ctx.config, p, false).await {
            Err(f) => (
                Check::from_failure(
                    NAME,
                    &f,
                    "Make auth.password readable (see config.secrets).",
                ),
                None,
            ),
            Ok(c) if host.is_some_and(crate::smtp::is_microsoft_host) => (
                Check::warning(
                    NAME,
                    "password (basic) authentication: no token",
                    "Microsoft disables basic authentication for SMTP AUTH by default from the \
                     end of December 2026: switch the profile to OAuth (auth.method = \"oauth\").",
                ),
                Some(c),
            ),
            Ok(c) => (
                Check::skipped(NAME, "password authentication: no token"),
                Some(c),
            ),
        },
        AuthKind::OAuth => oauth(ctx).await,
    }
}

async fn oauth(ctx: &Ctx<'_>) -> (Check, Option<Credentials>) {
    let p = ctx.profile;
    let fallback = "Check the OAuth settings of the profile (auth.client_id, the secret or \
                    certificate, the tenant).";
    let (token, source, cached) = if p.auth.token.is_set() {
        match p.auth.token.resolve("auth.token") {
            Ok(t) => (t, "auth.token (used as is)".to_owned(), false),
            Err(f) => return (Check::from_failure(NAME, &f, fallback), None),
        }
    } else {
        let endpoint = auth::OAuthSettings::from_profile(p)
            .map(|s| s.token_endpoint())
            .unwrap_or_default();
        let acquired = if p.mode == Mode::Graph {
            auth::graph_token(ctx.config, p, None).await
        } else {
            auth::access_token(ctx.config, p, false).await
        };
        match acquired {
            Ok(t) if t.from_cache => (t.token, "from the cache".to_owned(), true),
            Ok(t) => (t.token, format!("acquired from {endpoint}"), false),
            Err(f) => return (Check::from_failure(NAME, &f, fallback), None),
        }
    };
    let check = judge(ctx, &token, &source);
    if p.mode == Mode::Graph {
        // Graph takes the token itself, no SASL login: the user is the mailbox it sends as.
        let user = p.mailbox.clone().unwrap_or_default();
        return (
            check,
            Some(Credentials::XOAuth2 {
                user,
                token,
                from_cache: cached,
            }),
        );
    }
    // The same credentials the sending path builds (the token is now in the cache). A token
    // acquired just now is not "from the cache": a 535 5.7.3 is not answered with another.
    let creds = match auth::credentials(ctx.config, p, false).await {
        Ok(Credentials::XOAuth2 { user, token, .. }) => Credentials::XOAuth2 {
            user,
            token,
            from_cache: cached,
        },
        Ok(c) => c,
        Err(f) => return (Check::from_failure(NAME, &f, fallback), None),
    };
    (check, Some(creds))
}

/// The resources an SMTP token may be for, by mode and cloud: (host names, application id).
fn expected(mode: Mode, cloud: Cloud) -> (&'static [&'static str], &'static str, &'static str) {
    // Exchange Online's application id stands for it in v2.0 tokens.
    const EXO: &str = "00000002-0000-0ff1-ce00-000000000000";
    // Microsoft Graph's application id.
    const GRAPH: &str = "00000003-0000-0000-c000-000000000000";
    match (mode, cloud) {
        (Mode::Graph, Cloud::Global) => (
            &["graph.microsoft.com"],
            GRAPH,
            "https://graph.microsoft.com",
        ),
        (Mode::Graph, Cloud::Usgov) => (
            &["graph.microsoft.us", "dod-graph.microsoft.us"],
            GRAPH,
            "https://graph.microsoft.us",
        ),
        (Mode::Graph, Cloud::China) => (
            &["microsoftgraph.chinacloudapi.cn"],
            GRAPH,
            "https://microsoftgraph.chinacloudapi.cn",
        ),
        (Mode::Acs, _) => (
            &["communication.azure.com"],
            "",
            "https://communication.azure.com",
        ),
        (_, Cloud::Global) => (
            &["outlook.office365.com", "outlook.office.com"],
            EXO,
            "https://outlook.office365.com",
        ),
        (_, Cloud::Usgov) => (
            &["outlook.office365.us"],
            EXO,
            "https://outlook.office365.us",
        ),
        (_, Cloud::China) => (&["partner.outlook.cn"], EXO, "https://partner.outlook.cn"),
    }
}

/// The host of an audience URL ("https://graph.microsoft.com/" → graph.microsoft.com), or the
/// audience itself (an application id).
fn audience_host(aud: &str) -> String {
    let a = aud.trim().trim_end_matches('/').to_ascii_lowercase();
    let a = a
        .strip_prefix("https://")
        .or_else(|| a.strip_prefix("http://"))
        .unwrap_or(&a)
        .to_owned();
    a.split('/').next().unwrap_or("").to_owned()
}

fn looks_like_guid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn minutes(secs: i64) -> String {
    if secs >= 0 {
        format!("expires in {} min", secs / 60)
    } else {
        format!("expired {} min ago", -secs / 60)
    }
}

/// What the token's claims say, as a check.
fn judge(ctx: &Ctx<'_>, token: &Secret, source: &str) -> Check {
    let p = ctx.profile;
    let Some(c) = TokenClaims::of(token) else {
        return Check::warning(
            NAME,
            format!("{source}; not a readable JWT, so its audience and roles cannot be shown"),
            "Nothing to do if AUTH below passes; Microsoft's access tokens for Exchange are \
             readable JWTs, so check that auth.token holds an access token (not an id token or \
             refresh token).",
        );
    };
    let ectx = auth::explain_context(p);
    let catalogue = |code: &str| {
        explain::explain_aadsts(code, &ectx)
            .map(|e| e.advice)
            .unwrap_or_default()
    };
    let now = chrono::Utc::now().timestamp();
    let app = c.appid.as_deref().or(c.azp.as_deref());
    let mut facts = vec![source.to_owned(), c.summary()];
    if let Some(e) = c.exp {
        facts.push(minutes(e - now));
    }
    let evidence = facts.join(", ");

    let (hosts, app_id, wanted) = expected(p.mode, p.cloud);
    if let Some(aud) = &c.aud {
        let h = audience_host(aud);
        let ok = hosts.contains(&h.as_str()) || (!app_id.is_empty() && h == app_id);
        if !ok {
            return Check::failed(
                NAME,
                Exit::Config,
                format!(
                    "{evidence}: the token is for {aud}, not {wanted} (what mode {} needs)",
                    p.mode.as_str()
                ),
                catalogue("invalid_scope"),
            );
        }
    }
    let may_send_mail = c.roles.iter().any(|r| r == "Mail.Send")
        || c.scp
            .as_deref()
            .is_some_and(|s| s.split(' ').any(|x| x == "Mail.Send"));
    if p.mode == Mode::Graph && !may_send_mail {
        return Check::failed(
            NAME,
            Exit::NoPerm,
            format!("{evidence}: no Mail.Send role or scope"),
            "The token carries no Graph permission to send mail: add the Microsoft Graph \
             permission Mail.Send (an application permission for app-only, delegated for a \
             signed-in user) to the app registration and grant admin consent.",
        );
    }
    if !matches!(p.mode, Mode::Acs | Mode::Graph)
        && !c.allows_smtp()
        && let Some(note) = auth::token_permission_note(token)
    {
        return Check::failed(
            NAME,
            Exit::NoPerm,
            format!("{evidence}: no SMTP.SendAsApp role or SMTP.Send scope"),
            format!("{note} {}", catalogue("AADSTS65001")),
        );
    }
    let tenant = p.auth.tenant.as_deref().or(p.tenant.as_deref());
    if let (Some(want), Some(tid)) = (tenant, c.tid.as_deref())
        && looks_like_guid(want)
        && !want.eq_ignore_ascii_case(tid)
    {
        return Check::failed(
            NAME,
            Exit::Config,
            format!("{evidence}: issued by tenant {tid}, but the profile's tenant is {want}"),
            catalogue("AADSTS700016"),
        );
    }
    if let (Some(want), Some(app)) = (p.auth.client_id.as_deref(), app)
        && !p.auth.token.is_set()
        && !want.eq_ignore_ascii_case(app)
    {
        return Check::failed(
            NAME,
            Exit::Config,
            format!("{evidence}: issued to app {app}, but auth.client_id is {want}"),
            catalogue("AADSTS700016"),
        );
    }
    if c.exp.is_some_and(|e| e <= now) {
        return Check::failed(
            NAME,
            Exit::NoPerm,
            format!("{evidence}: the token has expired"),
            "Give a current access token in auth.token, or let m365send acquire tokens itself \
             (remove auth.token and set auth.client_id with a secret or certificate).",
        );
    }
    Check::passed(NAME, evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences() {
        assert_eq!(
            audience_host("https://outlook.office365.com/"),
            "outlook.office365.com"
        );
        assert_eq!(
            audience_host("00000002-0000-0ff1-ce00-000000000000"),
            "00000002-0000-0ff1-ce00-000000000000"
        );
        assert!(looks_like_guid("00000002-0000-0ff1-ce00-000000000000"));
        assert!(!looks_like_guid("contoso.onmicrosoft.com"));
    }
}
