//! Authentication: credentials for the transports — SMTP AUTH, and the bearer token of
//! Microsoft Graph (whose audience and cache slot `graph_settings` gives).
//!
//! Owns: turning a profile's auth settings into `Credentials` (a password from its source, or
//! an OAuth2 access token from the cache, acquired or refreshed only when needed), the token
//! cache, the device-code login, and `token status` / `token clear`. Must not: speak SMTP or
//! know a transport (tests/design.rs), or let a secret reach a log or an error message.
//!
//! Token requests are plain form posts with reqwest (rustls, ring) rather than the oauth2
//! crate: one code path serves client secret, certificate assertion (which oauth2 5 has no
//! type for), refresh token and device code, and keeps the raw status and error body, which
//! the advice table needs (AADSTS code, 5xx vs 4xx). They go only to the authority (the
//! cloud's login host, or `auth.authority` when set) and never follow a redirect, which would
//! carry the client's credentials to another host.

pub mod assertion;
pub mod cache;
pub mod errors;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::{AuthMethod, Cloud, Config, Mode, OAuthFlow, Profile};
use crate::exit::{Exit, Failure};
use crate::secret::Secret;

use cache::{CacheKey, Entry};
use errors::{Context, ErrorResponse};

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
    config: &Config,
    profile: &Profile,
    fresh: bool,
) -> Result<Credentials, Failure> {
    match profile.auth_method() {
        AuthMethod::None | AuthMethod::Auto => Ok(Credentials::None),
        AuthMethod::Password => Ok(Credentials::Password {
            user: login_user(profile)?,
            password: profile.auth.password.resolve("auth.password")?,
        }),
        AuthMethod::OAuth => {
            let user = oauth_user(profile)?;
            if profile.auth.token.is_set() {
                return Ok(Credentials::XOAuth2 {
                    user,
                    token: profile.auth.token.resolve("auth.token")?,
                    from_cache: false,
                });
            }
            let t = access_token(config, profile, fresh).await?;
            Ok(Credentials::XOAuth2 {
                user,
                token: t.token,
                from_cache: t.from_cache,
            })
        }
    }
}

fn login_user(profile: &Profile) -> Result<String, Failure> {
    profile.login_user().map(str::to_owned).ok_or_else(|| {
        Failure::config(format!(
            "profile \"{}\" needs `mailbox` (or `auth.user`) to log in",
            profile.name
        ))
    })
}

/// The XOAUTH2 `user=`: auth.user, else the mailbox (a shared mailbox works). Azure
/// Communication Services needs auth.user = `<resource>.<app id>.<tenant id>`.
fn oauth_user(profile: &Profile) -> Result<String, Failure> {
    if profile.mode == Mode::Acs {
        return match profile.auth.user.as_deref() {
            Some(u) if !u.is_empty() => Ok(u.to_string()),
            _ => Err(Failure::config(format!(
                "profile \"{}\" (mode acs) needs auth.user = \"<resource>.<app id>.<tenant id>\" \
                 (or an SMTP Username of the Communication Services resource)",
                profile.name
            ))),
        };
    }
    login_user(profile)
}

/// An access token and where it came from.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: Secret,
    /// Unix seconds.
    pub expires_at: i64,
    /// Taken from the cache without asking the token endpoint.
    pub from_cache: bool,
}

/// The OAuth settings of a profile, with defaults by cloud, mode and flow applied.
/// Holds no secret: those are resolved only when a request is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    pub profile: String,
    pub flow: OAuthFlow,
    pub tenant: String,
    pub client_id: String,
    /// Base URL without trailing slash, e.g. https://login.microsoftonline.com.
    pub authority: String,
    /// Space-separated scopes.
    pub scope: String,
    pub refresh_window_secs: u64,
    /// The cache file (and lock) the tokens live in: the profile's name, or
    /// `NAME+graph` for the Graph tokens of a submit profile's fallback, so that a token
    /// for Outlook and one for Graph never replace (or stand in for) each other.
    pub cache_slot: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// Default authority (login host) by cloud.
pub fn default_authority(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "https://login.microsoftonline.com",
        Cloud::Usgov => "https://login.microsoftonline.us",
        Cloud::China => "https://login.partner.microsoftonline.cn",
    }
}

/// Default scope by cloud, mode and flow. China scopes are UNCONFIRMED: override with
/// auth.scope when Microsoft documents otherwise.
pub fn default_scope(cloud: Cloud, mode: Mode, flow: OAuthFlow) -> String {
    if mode == Mode::Graph {
        let resource = format!("https://{}", crate::route::default_graph_host(cloud));
        return match flow {
            OAuthFlow::ClientCredentials => format!("{resource}/.default"),
            OAuthFlow::Delegated => format!("{resource}/Mail.Send offline_access"),
        };
    }
    let resource = match (mode, cloud) {
        (Mode::Acs, _) => "https://communication.azure.com",
        (_, Cloud::Global) => match flow {
            OAuthFlow::ClientCredentials => "https://outlook.office365.com",
            OAuthFlow::Delegated => "https://outlook.office.com",
        },
        (_, Cloud::Usgov) => "https://outlook.office365.us",
        (_, Cloud::China) => "https://partner.outlook.cn",
    };
    match (flow, mode) {
        (OAuthFlow::ClientCredentials, _) => format!("{resource}/.default"),
        (OAuthFlow::Delegated, Mode::Acs) => format!("{resource}/.default offline_access"),
        (OAuthFlow::Delegated, _) => format!("{resource}/SMTP.Send offline_access"),
    }
}

fn check_authority(raw: &str) -> Result<String, Failure> {
    let trimmed = raw.trim_end_matches('/');
    let bad = |why: &str| Failure::config(format!("auth.authority \"{raw}\": {why}"));
    let url = reqwest::Url::parse(trimmed).map_err(|e| bad(&e.to_string()))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    let loopback = matches!(
        url.host_str(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(bad(
                "http:// is only allowed for 127.0.0.1/localhost; use https",
            ));
        }
        _ => return Err(bad("must be an https:// URL")),
    }
    Ok(trimmed.to_string())
}

fn check_tenant(t: &str) -> Result<(), Failure> {
    if t.is_empty()
        || !t
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
    {
        return Err(Failure::config(format!(
            "tenant \"{t}\" is not a tenant id (GUID) or domain"
        )));
    }
    Ok(())
}

impl OAuthSettings {
    pub fn from_profile(profile: &Profile) -> Result<OAuthSettings, Failure> {
        let a = &profile.auth;
        let p = &profile.name;
        let flow = a.flow;
        let tenant = match a.tenant.as_deref().or(profile.tenant.as_deref()) {
            Some(t) => t.to_string(),
            None if flow == OAuthFlow::Delegated => "organizations".to_string(),
            None => {
                return Err(Failure::config(format!(
                    "profile \"{p}\" needs `tenant` (tenant id or domain, e.g. \
                     contoso.onmicrosoft.com) for OAuth"
                )));
            }
        };
        check_tenant(&tenant)?;
        let client_id = match a.client_id.as_deref() {
            Some(c) if !c.is_empty() => c.to_string(),
            _ => {
                return Err(Failure::config(format!(
                    "profile \"{p}\" needs auth.client_id (the application (client) id of the \
                     app registration) for OAuth"
                )));
            }
        };
        let authority = check_authority(
            a.authority
                .as_deref()
                .unwrap_or(default_authority(profile.cloud)),
        )?;
        let scope = match a.scope.as_deref() {
            Some(s) if !s.trim().is_empty() => s.split_whitespace().collect::<Vec<_>>().join(" "),
            _ => default_scope(profile.cloud, profile.mode, flow),
        };
        Ok(OAuthSettings {
            profile: p.clone(),
            flow,
            tenant,
            client_id,
            authority,
            scope,
            refresh_window_secs: a.refresh_window_secs.unwrap_or(300),
            cache_slot: p.clone(),
            connect_timeout: profile.timeouts.connect(),
            request_timeout: profile.timeouts.command(),
        })
    }

    /// `{authority}/{tenant}/oauth2/v2.0/token`
    pub fn token_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/token", self.authority, self.tenant)
    }

    /// `{authority}/{tenant}/oauth2/v2.0/devicecode`
    pub fn devicecode_endpoint(&self) -> String {
        format!("{}/{}/oauth2/v2.0/devicecode", self.authority, self.tenant)
    }

    fn flow_name(&self) -> &'static str {
        match self.flow {
            OAuthFlow::ClientCredentials => "client-credentials",
            OAuthFlow::Delegated => "delegated",
        }
    }

    fn key(&self) -> CacheKey {
        CacheKey {
            profile: self.cache_slot.clone(),
            tenant: self.tenant.clone(),
            client_id: self.client_id.clone(),
            scope: self.scope.clone(),
            flow: self.flow_name().to_string(),
            authority: self.authority.clone(),
        }
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            profile: &self.profile,
            tenant: &self.tenant,
            client_id: &self.client_id,
            delegated: self.flow == OAuthFlow::Delegated,
        }
    }

    fn client(&self) -> Result<reqwest::Client, Failure> {
        // No redirect is followed (the client secret, assertion or refresh token would go
        // with it): post_form reports it.
        crate::http::builder(self.connect_timeout, self.request_timeout)
            .use_rustls_tls()
            .https_only(!self.authority.starts_with("http://"))
            .build()
            .map_err(|e| Failure::new(Exit::Software, format!("HTTP client: {e}")))
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A successful token answer.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl TokenResponse {
    fn expires_in(&self) -> i64 {
        match &self.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(3600),
            Some(serde_json::Value::String(s)) => s.parse().unwrap_or(3600),
            _ => 3600,
        }
    }
}

/// Why a form post did not yield a token.
enum PostError {
    /// The endpoint answered with an OAuth error body.
    Refused(u16, ErrorResponse),
    /// Anything else, already worded.
    Failed(Failure),
}

/// POST a form to an identity endpoint and parse a JSON answer of type T.
async fn post_form<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    s: &OAuthSettings,
    url: &str,
    form: &[(&str, &str)],
    secrets: &[&str],
) -> Result<T, PostError> {
    let resp = client
        .post(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .form(form)
        .send()
        .await
        .map_err(|e| {
            PostError::Failed(Failure::new(
                Exit::TempFail,
                errors::scrub(
                    &format!(
                        "cannot reach the token endpoint for profile \"{}\" ({}): {} \
                         (a temporary failure)",
                        s.profile,
                        url,
                        crate::http::error_chain(e)
                    ),
                    secrets,
                ),
            ))
        })?;
    let status = resp.status().as_u16();
    if (300..400).contains(&status) {
        let target = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| reqwest::Url::parse(url).ok()?.join(l).ok())
            .and_then(|u| {
                let host = u.host_str()?.to_owned();
                Some(match u.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host,
                })
            })
            .unwrap_or_else(|| "an unnamed location".into());
        return Err(PostError::Failed(Failure::config(format!(
            "the token endpoint for profile \"{}\" ({url}) answered HTTP {status}, a redirect \
             to {target}; m365send does not follow redirects on token requests (the request \
             carries the client's credentials). Check auth.authority: it must name the \
             identity platform itself",
            s.profile
        ))));
    }
    // A token answer is a few kilobytes; a huge one (a proxy, a wrong authority) is not read
    // past 1 MiB.
    let body = crate::http::read_body(resp, 1024 * 1024)
        .await
        .map_err(|e| {
            PostError::Failed(Failure::new(
                Exit::TempFail,
                format!(
                    "the token endpoint for profile \"{}\" ({url}) broke off its answer: {}",
                    s.profile,
                    crate::http::error_chain(e)
                ),
            ))
        })?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body).map_err(|_| {
            PostError::Failed(Failure::new(
                Exit::TempFail,
                format!(
                    "the token endpoint for profile \"{}\" ({url}) answered HTTP {status} \
                     without a usable token",
                    s.profile
                ),
            ))
        });
    }
    match serde_json::from_slice::<ErrorResponse>(&body) {
        Ok(e) if !e.error.is_empty() => Err(PostError::Refused(status, e)),
        _ => {
            let (exit, hint) = if status >= 500 || status == 429 || status == 408 {
                (Exit::TempFail, "a temporary failure")
            } else {
                (
                    Exit::Config,
                    "check auth.authority and the tenant: this is not a token endpoint",
                )
            };
            Err(PostError::Failed(Failure::new(
                exit,
                format!(
                    "the token endpoint for profile \"{}\" ({url}) answered HTTP {status}; {hint}",
                    s.profile
                ),
            )))
        }
    }
}

fn refused(s: &OAuthSettings, e: PostError, secrets: &[&str]) -> Failure {
    match e {
        PostError::Refused(status, body) => errors::from_response(status, &body, &s.ctx(), secrets),
        PostError::Failed(f) => f,
    }
}

/// The client's own credential fields for a token request (secret or certificate assertion),
/// or none for a public client (delegated flows without a secret).
fn client_auth(
    s: &OAuthSettings,
    profile: &Profile,
) -> Result<Vec<(&'static str, Secret)>, Failure> {
    let a = &profile.auth;
    if a.client_secret.is_set() {
        return Ok(vec![(
            "client_secret",
            a.client_secret.resolve("auth.client_secret")?,
        )]);
    }
    match (&a.certificate, &a.private_key) {
        (Some(cert), Some(key)) => {
            let signer = assertion::Signer::load(cert, key, a.assertion_alg.unwrap_or_default())?;
            let jwt = signer.assertion(&s.client_id, &s.token_endpoint(), now())?;
            Ok(vec![
                (
                    "client_assertion_type",
                    Secret::new("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ),
                ("client_assertion", jwt),
            ])
        }
        (Some(_), None) | (None, Some(_)) => Err(Failure::config(format!(
            "profile \"{}\": auth.certificate and auth.private_key go together",
            s.profile
        ))),
        (None, None) if s.flow == OAuthFlow::ClientCredentials => Err(Failure::config(format!(
            "profile \"{}\" (app-only OAuth) needs auth.client_secret (env, file or command) \
             or auth.certificate + auth.private_key",
            s.profile
        ))),
        (None, None) => Ok(Vec::new()),
    }
}

/// A token request: `fields` plus client_id and the client's credential.
async fn token_request(
    client: &reqwest::Client,
    s: &OAuthSettings,
    profile: &Profile,
    fields: &[(&str, &str)],
) -> Result<TokenResponse, Failure> {
    token_request_raw(client, s, profile, fields)
        .await
        .map_err(|(e, secrets)| {
            let refs: Vec<&str> = secrets.iter().map(|s| s.as_str()).collect();
            refused(s, e, &refs)
        })
}

/// An access token for an OAuth profile: from the cache while it is valid for more than the
/// refresh window, else acquired (client credentials) or refreshed (delegated) under the
/// cache lock, so concurrent processes ask the endpoint once. `fresh` drops the cached
/// access token first.
pub async fn access_token(
    config: &Config,
    profile: &Profile,
    fresh: bool,
) -> Result<AccessToken, Failure> {
    let reject = if fresh { Reject::All } else { Reject::Nothing };
    acquire(config, profile, reject).await
}

/// Credentials after Microsoft 365 refused `rejected` (535 5.7.3): a cached token other than
/// the rejected one when another process has already replaced it, else a newly acquired one.
/// Unlike `credentials(.., fresh = true)`, many processes refused at once still ask the token
/// endpoint once.
pub async fn credentials_replacing(
    config: &Config,
    profile: &Profile,
    rejected: &Secret,
) -> Result<Credentials, Failure> {
    if profile.auth_method() != AuthMethod::OAuth || profile.auth.token.is_set() {
        // Nothing to replace: a password, or a fixed token from auth.token.
        return credentials(config, profile, false).await;
    }
    let user = oauth_user(profile)?;
    let t = acquire(config, profile, Reject::Token(rejected)).await?;
    Ok(Credentials::XOAuth2 {
        user,
        token: t.token,
        from_cache: t.from_cache,
    })
}

/// Which cached access token must not be used.
#[derive(Clone, Copy)]
enum Reject<'a> {
    Nothing,
    All,
    Token(&'a Secret),
}

impl Reject<'_> {
    fn refuses(&self, token: &str) -> bool {
        match self {
            Reject::Nothing => false,
            Reject::All => true,
            Reject::Token(r) => r.expose() == token,
        }
    }
}

async fn acquire(
    config: &Config,
    profile: &Profile,
    reject: Reject<'_>,
) -> Result<AccessToken, Failure> {
    acquire_with(
        config,
        profile,
        OAuthSettings::from_profile(profile)?,
        reject,
    )
    .await
}

/// The cache slot of a profile's Graph fallback tokens.
fn graph_slot(profile: &Profile) -> String {
    format!("{}+graph", profile.name)
}

/// The OAuth settings for a Microsoft Graph token of this profile: its own for mode
/// "graph"; for a submit profile's Graph fallback, the same app registration with the Graph
/// scope (auth.scope, which names the SMTP scope there, is ignored) in a cache slot of its own.
pub fn graph_settings(profile: &Profile) -> Result<OAuthSettings, Failure> {
    if profile.mode == Mode::Graph {
        return OAuthSettings::from_profile(profile);
    }
    let mut p = profile.clone();
    p.mode = Mode::Graph;
    p.auth.scope = None;
    let mut s = OAuthSettings::from_profile(&p)?;
    s.cache_slot = graph_slot(profile);
    Ok(s)
}

/// An access token for Microsoft Graph (audience graph.microsoft.com, or the cloud's Graph
/// host): from the cache, or acquired. `rejected`: a token Graph refused as invalid or
/// expired (401), never to be handed out again. A fixed `auth.token` is used as is on a
/// mode "graph" profile; a submit profile's fixed token is for SMTP and cannot serve Graph.
pub async fn graph_token(
    config: &Config,
    profile: &Profile,
    rejected: Option<&Secret>,
) -> Result<AccessToken, Failure> {
    if profile.auth.token.is_set() {
        if profile.mode != Mode::Graph {
            return Err(Failure::config(format!(
                "profile \"{}\": the Graph fallback needs a token for Microsoft Graph, but \
                 auth.token is a fixed token (for SMTP); give auth.client_secret or \
                 auth.certificate instead",
                profile.name
            )));
        }
        return Ok(AccessToken {
            token: profile.auth.token.resolve("auth.token")?,
            expires_at: 0,
            from_cache: false,
        });
    }
    let reject = match rejected {
        Some(t) => Reject::Token(t),
        None => Reject::Nothing,
    };
    acquire_with(config, profile, graph_settings(profile)?, reject).await
}

async fn acquire_with(
    config: &Config,
    profile: &Profile,
    s: OAuthSettings,
    reject: Reject<'_>,
) -> Result<AccessToken, Failure> {
    let dir = cache::dir(config)?;
    let key = s.key();
    let cached = |e: &Entry| {
        e.valid_access_token(now(), s.refresh_window_secs)
            .filter(|t| !reject.refuses(t))
            .map(|t| AccessToken {
                token: Secret::new(t),
                expires_at: e.expires_at.unwrap_or_default(),
                from_cache: true,
            })
    };
    if let Some(t) = cache::read(&dir, &key).as_ref().and_then(cached) {
        tracing::debug!(profile = %s.profile, expires_at = t.expires_at, "access token from cache");
        return Ok(t);
    }
    // Another process may be asking for a token right now: wait as long as one request may
    // take (connect, answer, one retry's worth), then give up with a temporary failure.
    let wait = s.connect_timeout + s.request_timeout * 2 + Duration::from_secs(5);
    let _lock = cache::lock_within(&dir, &s.cache_slot, wait).await?;
    let mut entry = cache::read(&dir, &key);
    if let Some(t) = entry.as_ref().and_then(cached) {
        tracing::debug!(
            profile = %s.profile,
            expires_at = t.expires_at,
            "access token from cache (written by another process)"
        );
        return Ok(t);
    }
    if let Some(e) = entry.as_mut()
        && e.access_token.as_deref().is_some_and(|t| reject.refuses(t))
    {
        e.access_token = None;
        e.expires_at = None;
        cache::write(&dir, e)?;
    }
    let mut entry = entry.unwrap_or_else(|| Entry::new(key.clone()));
    let client = s.client()?;
    let started = now();
    let (resp, seed) = match s.flow {
        OAuthFlow::ClientCredentials => {
            let form = [("grant_type", "client_credentials"), ("scope", &s.scope)];
            (token_request(&client, &s, profile, &form).await?, None)
        }
        OAuthFlow::Delegated => {
            // The Graph fallback of a delegated submit profile starts from the refresh token
            // `m365send login` stored for the profile: Microsoft redeems it for Graph too
            // when the app has Mail.Send (delegated) consented.
            let signed_in = (s.cache_slot != profile.name)
                .then(|| cache::read_any(&dir, &profile.name))
                .flatten()
                .and_then(|e| e.refresh_token);
            let (rt, seed) = match entry.refresh_token.as_ref().or(signed_in.as_ref()) {
                Some(rt) => (Secret::new(rt.clone()), None),
                None if profile.auth.refresh_token.is_set() => {
                    let rt = profile.auth.refresh_token.resolve("auth.refresh_token")?;
                    (rt.clone(), Some(rt))
                }
                None => {
                    return Err(Failure::new(
                        Exit::NoPerm,
                        format!(
                            "profile \"{p}\" (delegated OAuth) has no stored login: run \
                             `m365send login --profile {p}` once (or set auth.refresh_token)",
                            p = s.profile
                        ),
                    ));
                }
            };
            let form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.expose()),
                ("scope", &s.scope),
            ];
            (token_request(&client, &s, profile, &form).await?, seed)
        }
    };
    store(&mut entry, &resp, started, seed);
    cache::write(&dir, &entry)?;
    tracing::debug!(
        profile = %s.profile,
        expires_at = entry.expires_at.unwrap_or_default(),
        refresh_token_rotated = resp.refresh_token.is_some(),
        "access token acquired and cached"
    );
    Ok(AccessToken {
        token: Secret::new(resp.access_token),
        expires_at: entry.expires_at.unwrap_or_default(),
        from_cache: false,
    })
}

fn store(entry: &mut Entry, resp: &TokenResponse, started: i64, seed: Option<Secret>) {
    entry.access_token = Some(resp.access_token.clone());
    entry.expires_at = Some(started + resp.expires_in());
    if let Some(rt) = resp.refresh_token.as_ref().filter(|r| !r.is_empty()) {
        entry.refresh_token = Some(rt.clone());
        entry.refresh_stored_at = Some(started);
    } else if let Some(rt) = seed {
        entry.refresh_token = Some(rt.expose().to_string());
        entry.refresh_stored_at = Some(started);
    }
}

#[derive(Deserialize)]
struct DeviceCodeResponse {
    device_code: Secret,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

fn out_err(e: std::io::Error) -> Failure {
    Failure::io(format!("cannot write to the terminal: {e}"))
}

/// `m365send login`: the device code flow for a delegated profile. Prints Microsoft's message
/// (URL and code), waits for the user, and stores the refresh token in the cache.
pub async fn login(config: &Config, profile: &Profile, out: &mut dyn Write) -> Result<(), Failure> {
    let s = OAuthSettings::from_profile(profile)?;
    if s.flow != OAuthFlow::Delegated {
        return Err(Failure::config(format!(
            "profile \"{}\" uses app-only OAuth (client credentials), which needs no login; \
             set auth.flow = \"delegated\" to log in as a user",
            s.profile
        )));
    }
    let dir = cache::dir(config)?;
    cache::ensure_dir(&dir)?;
    let client = s.client()?;
    let dc: DeviceCodeResponse = post_form(
        &client,
        &s,
        &s.devicecode_endpoint(),
        &[("client_id", &s.client_id), ("scope", &s.scope)],
        &[],
    )
    .await
    .map_err(|e| refused(&s, e, &[]))?;
    match dc.message.as_deref() {
        Some(m) if !m.is_empty() => writeln!(out, "{m}"),
        _ => writeln!(
            out,
            "To sign in, use a web browser to open the page {} and enter the code {} to \
             authenticate.",
            dc.verification_uri, dc.user_code
        ),
    }
    .and_then(|_| out.flush())
    .map_err(out_err)?;

    let mut interval = dc.interval.unwrap_or(5);
    let deadline = Instant::now() + Duration::from_secs(dc.expires_in.unwrap_or(900));
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
        ("device_code", dc.device_code.expose()),
    ];
    let resp = loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if Instant::now() > deadline {
            return Err(Failure::new(
                Exit::NoPerm,
                format!(
                    "the login code expired before the sign-in was completed: run \
                     `m365send login --profile {}` again",
                    s.profile
                ),
            ));
        }
        match token_request_raw(&client, &s, profile, &form).await {
            Ok(r) => break r,
            Err((PostError::Refused(_, e), _)) if e.error == "authorization_pending" => {}
            Err((PostError::Refused(_, e), _)) if e.error == "slow_down" => interval += 5,
            // A network hiccup or a 5xx while the user is signing in: keep polling until the
            // code expires rather than make them start again.
            Err((PostError::Refused(status, _), _)) if status >= 500 => {
                tracing::debug!(status, "token endpoint error while polling; polling on");
            }
            Err((PostError::Failed(f), _)) if f.exit == Exit::TempFail => {
                tracing::debug!(error = %f, "token endpoint unreachable while polling; polling on");
            }
            Err((e, secrets)) => {
                let refs: Vec<&str> = secrets.iter().map(|s| s.as_str()).collect();
                return Err(refused(&s, e, &refs));
            }
        }
    };
    if resp.refresh_token.as_deref().unwrap_or("").is_empty() {
        return Err(Failure::config(format!(
            "Microsoft returned no refresh token for profile \"{}\": the scope must include \
             offline_access (auth.scope = \"{}\")",
            s.profile, s.scope
        )));
    }
    let started = now();
    {
        let _lock = cache::lock(&dir, &s.cache_slot).await?;
        let mut entry = Entry::new(s.key());
        store(&mut entry, &resp, started, None);
        cache::write(&dir, &entry)?;
    }
    writeln!(
        out,
        "Logged in. The refresh token for profile \"{}\" is stored in {}.",
        s.profile,
        cache::file_path(&dir, &s.cache_slot).display()
    )
    .map_err(out_err)?;
    Ok(())
}

/// Like `token_request`, but hands back the raw refusal (the device-code poll must look at
/// `authorization_pending` itself) and the secret values to scrub from messages.
async fn token_request_raw(
    client: &reqwest::Client,
    s: &OAuthSettings,
    profile: &Profile,
    fields: &[(&str, &str)],
) -> Result<TokenResponse, (PostError, Vec<String>)> {
    let auth = client_auth(s, profile).map_err(|f| (PostError::Failed(f), Vec::new()))?;
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    form.push(("client_id", &s.client_id));
    for (k, v) in &auth {
        form.push((k, v.expose()));
    }
    let mut secrets: Vec<String> = auth.iter().map(|(_, v)| v.expose().to_string()).collect();
    secrets.extend(
        fields
            .iter()
            .filter(|(k, _)| *k == "device_code" || *k == "refresh_token")
            .map(|(_, v)| v.to_string()),
    );
    let refs: Vec<&str> = secrets.iter().map(|s| s.as_str()).collect();
    let grant = fields
        .iter()
        .find(|(k, _)| *k == "grant_type")
        .map(|(_, v)| *v)
        .unwrap_or("");
    let credential = auth.last().map(|(k, _)| *k).unwrap_or("none");
    tracing::debug!(
        profile = %s.profile,
        endpoint = %s.token_endpoint(),
        grant,
        credential,
        scope = %s.scope,
        "token request"
    );
    match post_form(client, s, &s.token_endpoint(), &form, &refs).await {
        Ok(r) => Ok(r),
        Err(e) => Err((e, secrets)),
    }
}

/// Where the profile's tokens are cached.
pub fn cache_file(config: &Config, profile: &Profile) -> Result<PathBuf, Failure> {
    Ok(cache::file_path(&cache::dir(config)?, &profile.name))
}

fn describe_time(at: i64, now: i64) -> String {
    let when = chrono::DateTime::from_timestamp(at, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| at.to_string());
    let d = at - now;
    if d >= 0 {
        format!("{when} (in {}m{:02}s)", d / 60, d % 60)
    } else {
        format!("{when} ({}m{:02}s ago)", -d / 60, -d % 60)
    }
}

/// `m365send token status`: flow, tenant, client, scopes, cached expiry, whether a refresh
/// token is stored, and the cache file. Never prints a token.
pub fn token_status(
    config: &Config,
    profile: &Profile,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let method = profile.auth_method();
    if method != AuthMethod::OAuth {
        return Err(Failure::config(format!(
            "profile \"{}\" does not use OAuth (mode {}, auth method {}): it has no tokens",
            profile.name,
            profile.mode.as_str(),
            match method {
                AuthMethod::Password => "password",
                _ => "none",
            }
        )));
    }
    let s = OAuthSettings::from_profile(profile)?;
    let dir = cache::dir(config)?;
    let path = cache::file_path(&dir, &s.cache_slot);
    let a = &profile.auth;
    let credential = if profile.auth.token.is_set() {
        "fixed access token (auth.token)".to_string()
    } else if a.client_secret.is_set() {
        "client secret".to_string()
    } else if a.certificate.is_some() {
        format!(
            "certificate ({} client assertion)",
            a.assertion_alg.unwrap_or_default().as_str()
        )
    } else {
        "none (public client)".to_string()
    };
    let flow = match s.flow {
        OAuthFlow::ClientCredentials => "app-only (client credentials)",
        OAuthFlow::Delegated => "delegated (device code login, refresh token)",
    };
    let now = now();
    let mut lines = vec![
        format!("profile:        {}", s.profile),
        format!("flow:           {flow}"),
        format!("credential:     {credential}"),
        format!("tenant:         {}", s.tenant),
        format!("client id:      {}", s.client_id),
        format!("scopes:         {}", s.scope),
        format!("token endpoint: {}", s.token_endpoint()),
        format!(
            "user:           {}",
            oauth_user(profile).unwrap_or_else(|_| "(not set)".to_string())
        ),
        format!("cache file:     {}", path.display()),
    ];
    match cache::read(&dir, &s.key()) {
        Some(e) => {
            lines.push(match (e.access_token.is_some(), e.expires_at) {
                (true, Some(at)) => {
                    let state = if e.valid_access_token(now, s.refresh_window_secs).is_some() {
                        "valid until"
                    } else if at > now {
                        "within the refresh window, expires"
                    } else {
                        "expired"
                    };
                    format!("access token:   {state} {}", describe_time(at, now))
                }
                _ => "access token:   none cached".to_string(),
            });
            if let Some(c) = e
                .access_token
                .as_ref()
                .and_then(|t| TokenClaims::of(&Secret::new(t.clone())))
            {
                lines.push(format!("token grants:   {}", c.summary()));
            }
            lines.push(match (&e.refresh_token, e.refresh_stored_at) {
                (Some(_), Some(at)) => format!(
                    "refresh token:  stored {} (unused for 90 days it expires)",
                    describe_time(at, now)
                ),
                (Some(_), None) => "refresh token:  stored".to_string(),
                (None, _) => "refresh token:  none".to_string(),
            });
        }
        None => {
            if cache::read_any(&dir, &s.cache_slot).is_some() {
                lines.push(
                    "access token:   none (the cache holds a token for other settings; it will \
                     be replaced)"
                        .to_string(),
                );
            } else {
                lines.push("access token:   none cached".to_string());
            }
            lines.push("refresh token:  none".to_string());
        }
    }
    if s.flow == OAuthFlow::Delegated && profile.auth.refresh_token.is_set() {
        lines.push("seed:           auth.refresh_token is set (used when none is stored)".into());
    }
    for l in lines {
        writeln!(out, "{l}").map_err(out_err)?;
    }
    Ok(())
}

/// `m365send token clear`: remove the profile's cached tokens (access and refresh).
pub fn token_clear(config: &Config, profile: &Profile) -> Result<(), Failure> {
    let dir = cache::dir(config)?;
    if !dir.is_dir() {
        return Ok(());
    }
    let _lock = cache::lock_blocking(&dir, &profile.name)?;
    cache::remove(&dir, &profile.name)?;
    // The Graph fallback's tokens, if any.
    let graph = graph_slot(profile);
    let _lock = cache::lock_blocking(&dir, &graph)?;
    cache::remove(&dir, &graph)?;
    Ok(())
}

/// What an access token says about itself (Microsoft's tokens for Exchange are readable
/// JWTs). The signature is not checked: this is for diagnosis only, never for trust.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TokenClaims {
    /// Audience (the resource), e.g. https://outlook.office365.com.
    #[serde(default)]
    pub aud: Option<String>,
    /// Tenant id.
    #[serde(default)]
    pub tid: Option<String>,
    /// Client id of the app the token was issued to.
    #[serde(default)]
    pub appid: Option<String>,
    /// Client id of the app, in v2.0 tokens (which have no `appid`).
    #[serde(default)]
    pub azp: Option<String>,
    /// App-only permissions, e.g. SMTP.SendAsApp.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Delegated permissions, space separated, e.g. "SMTP.Send".
    #[serde(default)]
    pub scp: Option<String>,
    /// Signed-in user (delegated tokens).
    #[serde(default)]
    pub upn: Option<String>,
    /// Expiry, unix seconds.
    #[serde(default)]
    pub exp: Option<i64>,
}

impl TokenClaims {
    /// Decode the claims of a JWT access token; None when it is not a readable JWT.
    pub fn of(token: &Secret) -> Option<TokenClaims> {
        use base64::Engine;
        let payload = token.expose().split('.').nth(1)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// The token grants sending by SMTP: SMTP.SendAsApp (app-only) or SMTP.Send (delegated).
    pub fn allows_smtp(&self) -> bool {
        self.roles.iter().any(|r| r == "SMTP.SendAsApp")
            || self
                .scp
                .as_deref()
                .is_some_and(|s| s.split(' ').any(|x| x == "SMTP.Send"))
    }

    /// One line for `token status` and diagnostics.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.aud {
            parts.push(format!("aud={a}"));
        }
        if !self.roles.is_empty() {
            parts.push(format!("roles={}", self.roles.join(",")));
        }
        if let Some(s) = &self.scp {
            parts.push(format!("scp={s}"));
        }
        if let Some(u) = &self.upn {
            parts.push(format!("upn={u}"));
        }
        if let Some(a) = self.appid.as_ref().or(self.azp.as_ref()) {
            parts.push(format!("appid={a}"));
        }
        if let Some(t) = &self.tid {
            parts.push(format!("tid={t}"));
        }
        parts.join(" ")
    }
}

/// What the refused token itself says is wrong with it, when it can be read: a token without
/// SMTP.SendAsApp / SMTP.Send. One line (no newline), or None when the token looks right or is
/// not a readable JWT. Never quotes the token.
pub fn token_permission_note(token: &Secret) -> Option<String> {
    let c = TokenClaims::of(token)?;
    if c.allows_smtp() {
        return None;
    }
    Some(format!(
        "The token carries no SMTP permission ({}): add SMTP.SendAsApp (app-only) or SMTP.Send \
         (delegated) of Office 365 Exchange Online to the app registration and grant admin \
         consent.",
        if c.summary().is_empty() {
            "no roles or scp".to_string()
        } else {
            c.summary()
        }
    ))
}

/// The catalogue's context for explaining a reply to this profile's OAuth login (app-only or
/// delegated, mailbox, client id, tenant).
pub fn explain_context(profile: &Profile) -> crate::explain::Context<'_> {
    let oauth = profile.auth_method() == AuthMethod::OAuth;
    crate::explain::Context {
        mode: Some(profile.mode),
        profile: Some(profile.name.as_str()),
        mailbox: profile.login_user(),
        app_only: oauth && profile.auth.flow == OAuthFlow::ClientCredentials,
        delegated: oauth && profile.auth.flow == OAuthFlow::Delegated,
        basic_auth: profile.auth_method() == AuthMethod::Password,
        client_id: profile.auth.client_id.as_deref(),
        tenant: profile.auth.tenant.as_deref().or(profile.tenant.as_deref()),
        ..Default::default()
    }
}

/// Likely causes of `535 5.7.3 Authentication unsuccessful` when Microsoft 365 refuses an
/// OAuth token for `profile` (after one fresh token was tried): what the token says about its
/// permissions (`token_permission_note`), then the explanation catalogue's causes for this
/// flow (the one source of that advice; deliver's report shows the same). `token`: the
/// refused token, read for its permissions, never quoted.
pub fn smtp_535_advice(profile: &Profile, token: Option<&Secret>) -> String {
    let mut out = String::from("Microsoft 365 refused the OAuth token.");
    if let Some(note) = token.and_then(token_permission_note) {
        out.push_str("\n  ");
        out.push_str(&note);
    }
    let reply = crate::status::Reply {
        code: 535,
        enhanced: Some(crate::status::EnhancedCode::new(5, 7, 3)),
        lines: vec!["5.7.3 Authentication unsuccessful".to_string()],
    };
    if let Some(e) = crate::explain::explain_reply(&reply, &explain_context(profile)) {
        out.push_str("\n  ");
        out.push_str(&e.advice);
    }
    out
}
