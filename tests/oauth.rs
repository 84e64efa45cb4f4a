//! OAuth2 token acquisition against a mock identity platform on 127.0.0.1: request fields,
//! the certificate assertion (signature verified), device code login, refresh token rotation,
//! the cache (lock, window, modes, key), and the error advice with its exit codes.

#[path = "support/http.rs"]
mod http;
#[path = "support/token_server.rs"]
mod token_server;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};

use m365send::auth::{self, Credentials};
use m365send::config::{
    AssertionAlgorithm, AuthConfig, AuthMethod, Cloud, Config, Mode, OAuthFlow, Profile,
    SecretSource,
};
use m365send::exit::{Exit, Failure};
use m365send::secret::Secret;

use token_server::{Reply, TokenServer};

const SECRET: &str = "s3cr3t-VALUE~not-the-id";
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const TOKEN_PATH: &str = "/contoso.onmicrosoft.com/oauth2/v2.0/token";

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn config(dir: &Path) -> Config {
    Config {
        cache_dir: Some(dir.join("cache")),
        ..Default::default()
    }
}

fn secret(v: &str) -> SecretSource {
    SecretSource {
        value: Some(Secret::new(v)),
        ..Default::default()
    }
}

fn app_profile(authority: &str) -> Profile {
    Profile {
        name: "app".into(),
        mode: Mode::Submit,
        tenant: Some(TENANT.into()),
        mailbox: Some("app@contoso.com".into()),
        auth: AuthConfig {
            method: AuthMethod::OAuth,
            client_id: Some(CLIENT.into()),
            client_secret: secret(SECRET),
            authority: Some(authority.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn delegated_profile(authority: &str) -> Profile {
    let mut p = app_profile(authority);
    p.name = "me".into();
    p.mailbox = Some("alice@contoso.com".into());
    p.auth.flow = OAuthFlow::Delegated;
    p.auth.client_secret = SecretSource::default();
    p
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn cert_profile(authority: &str, key: &str, alg: Option<AssertionAlgorithm>) -> Profile {
    let mut p = app_profile(authority);
    p.auth.client_secret = SecretSource::default();
    p.auth.certificate = Some(data("test-rsa.crt"));
    p.auth.private_key = Some(data(key));
    p.auth.assertion_alg = alg;
    p
}

async fn token(config: &Config, profile: &Profile, fresh: bool) -> (String, String, bool) {
    match auth::credentials(config, profile, fresh).await.unwrap() {
        Credentials::XOAuth2 {
            user,
            token,
            from_cache,
        } => (user, token.expose().to_string(), from_cache),
        other => panic!("not XOAUTH2: {other:?}"),
    }
}

fn err(r: Result<Credentials, Failure>) -> Failure {
    match r {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(f) => f,
    }
}

fn numbered_tokens(expires_in: i64) -> TokenServer {
    TokenServer::start(move |_, i| Reply::token(&format!("at-{i}"), expires_in, None))
}

#[test]
fn client_secret_request_field_by_field_and_cached() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = app_profile(&srv.authority());
    let (user, tok, from_cache) = block(token(&cfg, &p, false));
    assert_eq!(user, "app@contoso.com");
    assert_eq!(tok, "at-0");
    assert!(!from_cache);

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, TOKEN_PATH);
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        r.field_names(),
        ["client_id", "client_secret", "grant_type", "scope"]
    );
    assert_eq!(r.field("grant_type"), Some("client_credentials"));
    assert_eq!(r.field("client_id"), Some(CLIENT));
    assert_eq!(r.field("client_secret"), Some(SECRET));
    assert_eq!(
        r.field("scope"),
        Some("https://outlook.office365.com/.default")
    );

    // Reused while valid: no second request.
    for _ in 0..3 {
        let (_, tok, from_cache) = block(token(&cfg, &p, false));
        assert_eq!(tok, "at-0");
        assert!(from_cache);
    }
    assert_eq!(srv.count(), 1);
}

#[test]
fn secret_from_file_and_command() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("secret");
    std::fs::write(&f, format!("{SECRET}\n")).unwrap();
    let mut p = app_profile(&srv.authority());
    p.auth.client_secret = SecretSource {
        file: Some(f),
        ..Default::default()
    };
    block(token(&config(dir.path()), &p, false));
    p.auth.client_secret = SecretSource {
        command: Some(format!("printf '%s\\n' '{SECRET}'")),
        ..Default::default()
    };
    block(token(&config(dir.path()), &p, true));
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter()
            .all(|r| r.field("client_secret") == Some(SECRET))
    );
}

/// Decode and check an assertion; verify its signature with the certificate's public key.
fn check_assertion(jwt: &str, alg: &str, authority: &str) -> Value {
    let cert = CertificateDer::from_pem_file(data("test-rsa.crt")).unwrap();
    let public = std::fs::read(data("test-rsa-pub-pkcs1.der")).unwrap();
    // The PKCS#1 public key is the one inside the certificate's SubjectPublicKeyInfo.
    assert!(
        cert.as_ref().windows(public.len()).any(|w| w == public),
        "test public key is not the certificate's"
    );
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();

    assert_eq!(header["alg"], alg);
    assert_eq!(header["typ"], "JWT");
    let s256 = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, cert.as_ref()));
    assert_eq!(header["x5t#S256"], s256.as_str());

    assert_eq!(
        claims["aud"],
        format!("{authority}/{TENANT}/oauth2/v2.0/token").as_str()
    );
    assert_eq!(claims["iss"], CLIENT);
    assert_eq!(claims["sub"], CLIENT);
    assert!(claims["jti"].as_str().unwrap().len() >= 16);
    let now = chrono::Utc::now().timestamp();
    let (nbf, iat, exp) = (
        claims["nbf"].as_i64().unwrap(),
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!((now - iat).abs() <= 5, "iat {iat} now {now}");
    assert!(nbf <= iat);
    assert!(
        exp > iat && exp - nbf <= 600,
        "exp must be within 10 minutes"
    );

    let algo: &dyn ring::signature::VerificationAlgorithm = match alg {
        "PS256" => &ring::signature::RSA_PSS_2048_8192_SHA256,
        "RS256" => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        _ => unreachable!(),
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    ring::signature::UnparsedPublicKey::new(algo, &public)
        .verify(signed.as_bytes(), &sig)
        .expect("assertion signature verifies with the certificate's public key");
    claims
}

#[test]
fn certificate_assertion_ps256_pkcs8_field_by_field() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = cert_profile(&srv.authority(), "test-rsa-pkcs8.key", None);
    block(token(&cfg, &p, false));
    block(token(&cfg, &p, true));
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(r.path, TOKEN_PATH);
    assert_eq!(
        r.field_names(),
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "grant_type",
            "scope"
        ]
    );
    assert_eq!(
        r.field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(r.field("grant_type"), Some("client_credentials"));
    assert_eq!(r.field("client_id"), Some(CLIENT));
    assert_eq!(
        r.field("scope"),
        Some("https://outlook.office365.com/.default")
    );
    let c1 = check_assertion(
        r.field("client_assertion").unwrap(),
        "PS256",
        &srv.authority(),
    );
    let c2 = check_assertion(
        reqs[1].field("client_assertion").unwrap(),
        "PS256",
        &srv.authority(),
    );
    assert_ne!(c1["jti"], c2["jti"], "jti must be unique");
}

#[test]
fn certificate_assertion_rs256_pkcs1() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let p = cert_profile(
        &srv.authority(),
        "test-rsa-pkcs1.key",
        Some(AssertionAlgorithm::Rs256),
    );
    block(token(&config(dir.path()), &p, false));
    let r = &srv.requests()[0];
    check_assertion(
        r.field("client_assertion").unwrap(),
        "RS256",
        &srv.authority(),
    );
}

#[test]
fn certificate_problems_are_config_errors() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // A key that does not belong to the certificate.
    let other = dir.path().join("other.key");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&other)
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        let mut p = cert_profile(&srv.authority(), "test-rsa-pkcs8.key", None);
        p.auth.private_key = Some(other);
        let f = err(block(auth::credentials(&cfg, &p, false)));
        assert_eq!(f.exit, Exit::Config);
        assert!(f.message.contains("does not belong"), "{}", f.message);
    }
    let mut p = cert_profile(&srv.authority(), "test-rsa-pkcs8.key", None);
    p.auth.private_key = Some(dir.path().join("missing.key"));
    let f = err(block(auth::credentials(&cfg, &p, false)));
    assert_eq!(f.exit, Exit::Config);
    assert!(f.message.contains("auth.private_key"), "{}", f.message);
    assert_eq!(srv.count(), 0);
}

fn device_code_reply(interval: u64, expires_in: u64) -> Reply {
    Reply::json(
        200,
        json!({
            "user_code": "ABCD-EFGH",
            "device_code": "DEVICE-CODE-SECRET-123",
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": expires_in,
            "interval": interval,
            "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate."
        }),
    )
}

fn device_server(token_replies: Vec<Reply>, interval: u64) -> TokenServer {
    let n = std::sync::atomic::AtomicUsize::new(0);
    TokenServer::start(move |r, _| {
        if r.path.ends_with("/devicecode") {
            device_code_reply(interval, 900)
        } else {
            let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            token_replies[i.min(token_replies.len() - 1)].clone()
        }
    })
}

fn pending() -> Reply {
    Reply::error(
        400,
        "authorization_pending",
        Some(70016),
        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    )
}

#[test]
fn device_code_pending_then_success_stores_refresh_token() {
    let srv = device_server(
        vec![
            pending(),
            pending(),
            Reply::token("at-login", 3600, Some("rt-login")),
        ],
        0,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = delegated_profile(&srv.authority());
    let mut out = Vec::new();
    block(auth::login(&cfg, &p, &mut out)).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("https://microsoft.com/devicelogin") && out.contains("ABCD-EFGH"),
        "{out}"
    );
    assert!(!out.contains("DEVICE-CODE-SECRET") && !out.contains("rt-login"));

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        reqs[0].path,
        "/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    );
    assert_eq!(reqs[0].field_names(), ["client_id", "scope"]);
    assert_eq!(
        reqs[0].field("scope"),
        Some("https://outlook.office.com/SMTP.Send offline_access")
    );
    for r in &reqs[1..] {
        assert_eq!(r.path, TOKEN_PATH);
        assert_eq!(r.field_names(), ["client_id", "device_code", "grant_type"]);
        assert_eq!(
            r.field("grant_type"),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(r.field("device_code"), Some("DEVICE-CODE-SECRET-123"));
        assert_eq!(r.field("client_id"), Some(CLIENT));
    }
    // The cache file holds the refresh token; the access token is used without a request.
    let cache = std::fs::read_to_string(auth::cache_file(&cfg, &p).unwrap()).unwrap();
    assert!(cache.contains("rt-login"));
    let (user, tok, from_cache) = block(token(&cfg, &p, false));
    assert_eq!(
        (user.as_str(), tok.as_str(), from_cache),
        ("alice@contoso.com", "at-login", true)
    );
    assert_eq!(srv.count(), 4);
}

#[test]
fn device_code_slow_down_adds_five_seconds() {
    let srv = device_server(
        vec![
            Reply::error(400, "slow_down", None, "slow down"),
            Reply::token("at", 3600, Some("rt")),
        ],
        0,
    );
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    block(auth::login(
        &config(dir.path()),
        &delegated_profile(&srv.authority()),
        &mut Vec::new(),
    ))
    .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(srv.count(), 3);
}

#[test]
fn device_code_expired_and_declined() {
    for (reply, needle) in [
        (
            Reply::error(
                400,
                "expired_token",
                Some(70020),
                "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
            ),
            "m365send login --profile me",
        ),
        (
            Reply::error(
                400,
                "authorization_declined",
                Some(70019),
                "The end user denied the authorization request.",
            ),
            "declined",
        ),
    ] {
        let srv = device_server(vec![pending(), reply], 0);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let p = delegated_profile(&srv.authority());
        let f = block(auth::login(&cfg, &p, &mut Vec::new())).unwrap_err();
        assert_eq!(f.exit, Exit::NoPerm, "{}", f.message);
        assert!(f.message.contains(needle), "{}", f.message);
        assert!(!f.message.contains("DEVICE-CODE-SECRET"));
        assert!(!auth::cache_file(&cfg, &p).unwrap().exists());
    }
}

#[test]
fn device_code_deadline_passes() {
    let srv = TokenServer::start(|r, _| {
        if r.path.ends_with("/devicecode") {
            device_code_reply(1, 0)
        } else {
            pending()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = block(auth::login(
        &config(dir.path()),
        &delegated_profile(&srv.authority()),
        &mut Vec::new(),
    ))
    .unwrap_err();
    assert_eq!(f.exit, Exit::NoPerm);
    assert!(f.message.contains("expired"), "{}", f.message);
}

#[test]
fn login_refused_for_app_only_profile() {
    let dir = tempfile::tempdir().unwrap();
    let f = block(auth::login(
        &config(dir.path()),
        &app_profile("http://127.0.0.1:9"),
        &mut Vec::new(),
    ))
    .unwrap_err();
    assert_eq!(f.exit, Exit::Config);
}

#[test]
fn refresh_token_seeded_once_then_rotated_and_persisted() {
    // Access tokens expire within the refresh window, so each call refreshes.
    let srv = TokenServer::start(|_, i| {
        Reply::token(&format!("at-{i}"), 60, Some(&format!("rt-{}", i + 1)))
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = delegated_profile(&srv.authority());
    p.auth.refresh_token = secret("rt-seed");

    let (_, tok, from_cache) = block(token(&cfg, &p, false));
    assert_eq!((tok.as_str(), from_cache), ("at-0", false));
    let (_, tok, _) = block(token(&cfg, &p, false));
    assert_eq!(tok, "at-1");

    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        reqs[0].field_names(),
        ["client_id", "grant_type", "refresh_token", "scope"]
    );
    assert_eq!(reqs[0].field("grant_type"), Some("refresh_token"));
    assert_eq!(reqs[0].field("refresh_token"), Some("rt-seed"));
    assert_eq!(
        reqs[0].field("scope"),
        Some("https://outlook.office.com/SMTP.Send offline_access")
    );
    assert_eq!(
        reqs[1].field("refresh_token"),
        Some("rt-1"),
        "rotated token used"
    );
    let cache = std::fs::read_to_string(auth::cache_file(&cfg, &p).unwrap()).unwrap();
    assert!(
        cache.contains("\"rt-2\""),
        "rotated token persisted: {cache}"
    );

    // The seed is not used again once a token is stored.
    p.auth.refresh_token = SecretSource::default();
    block(token(&cfg, &p, false));
    assert_eq!(srv.requests()[2].field("refresh_token"), Some("rt-2"));
    let cache = std::fs::read_to_string(auth::cache_file(&cfg, &p).unwrap()).unwrap();
    assert!(cache.contains("\"rt-3\""));
}

#[test]
fn refresh_without_new_refresh_token_keeps_the_old_one() {
    let srv = TokenServer::start(|_, i| Reply::token(&format!("at-{i}"), 60, None));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = delegated_profile(&srv.authority());
    p.auth.refresh_token = secret("rt-seed");
    block(token(&cfg, &p, false));
    p.auth.refresh_token = SecretSource::default();
    block(token(&cfg, &p, false));
    let reqs = srv.requests();
    assert_eq!(reqs[1].field("refresh_token"), Some("rt-seed"));
}

#[test]
fn delegated_without_login_says_to_log_in() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let f = err(block(auth::credentials(
        &config(dir.path()),
        &delegated_profile(&srv.authority()),
        false,
    )));
    assert_eq!(f.exit, Exit::NoPerm);
    assert!(
        f.message.contains("m365send login --profile me"),
        "{}",
        f.message
    );
    assert_eq!(srv.count(), 0);
}

#[test]
fn fifty_concurrent_acquisitions_ask_once() {
    let srv = TokenServer::start(|_, i| {
        Reply::token(&format!("at-{i}"), 3600, None).after(Duration::from_millis(300))
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = Arc::new(config(dir.path()));
    let p = Arc::new(app_profile(&srv.authority()));
    let barrier = Arc::new(std::sync::Barrier::new(50));
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let (cfg, p, barrier) = (cfg.clone(), p.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                block(token(&cfg, &p, false))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(srv.count(), 1, "the token endpoint was asked once");
    assert!(results.iter().all(|(_, t, _)| t == "at-0"));
    assert_eq!(results.iter().filter(|(_, _, c)| !c).count(), 1);
}

#[test]
fn fifty_processes_ask_once() {
    // Separate processes: this test binary re-run with a filter selecting the child below.
    if std::env::var_os("M365SEND_OAUTH_CHILD").is_some() {
        return;
    }
    let srv = TokenServer::start(|_, i| {
        Reply::token(&format!("at-{i}"), 3600, None).after(Duration::from_millis(300))
    });
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..50)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_process_acquires",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("M365SEND_OAUTH_CHILD", "1")
                .env("CHILD_AUTHORITY", srv.authority())
                .env("CHILD_DIR", dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ok = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        if String::from_utf8_lossy(&out.stdout).contains("CHILD-TOKEN at-0") {
            ok += 1;
        }
    }
    assert_eq!(ok, 50);
    assert_eq!(
        srv.count(),
        1,
        "the token endpoint was asked once by 50 processes"
    );
}

#[test]
fn child_process_acquires() {
    let (Some(a), Some(d)) = (
        std::env::var_os("CHILD_AUTHORITY"),
        std::env::var_os("CHILD_DIR"),
    ) else {
        return;
    };
    let p = app_profile(a.to_str().unwrap());
    let (_, tok, _) = block(token(&config(Path::new(&d)), &p, false));
    println!("CHILD-TOKEN {tok}");
}

#[test]
fn refresh_window_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // expires_in 100 < default window 300: fetched every time.
    let srv = numbered_tokens(100);
    let p = app_profile(&srv.authority());
    block(token(&cfg, &p, false));
    let (_, tok, from_cache) = block(token(&cfg, &p, false));
    assert_eq!((tok.as_str(), from_cache), ("at-1", false));
    assert_eq!(srv.count(), 2);
    // Window 30 s: the same 100 s token is reused.
    let mut p = p.clone();
    p.auth.refresh_window_secs = Some(30);
    for _ in 0..3 {
        let (_, tok, from_cache) = block(token(&cfg, &p, false));
        assert_eq!((tok.as_str(), from_cache), ("at-1", true));
    }
    assert_eq!(srv.count(), 2);
}

#[test]
fn fresh_drops_the_cached_token() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = app_profile(&srv.authority());
    block(token(&cfg, &p, false));
    let (_, tok, from_cache) = block(token(&cfg, &p, true));
    assert_eq!((tok.as_str(), from_cache), ("at-1", false));
    let (_, tok, from_cache) = block(token(&cfg, &p, false));
    assert_eq!((tok.as_str(), from_cache), ("at-1", true));
    assert_eq!(srv.count(), 2);
}

#[test]
fn changed_settings_invalidate_the_cache() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = app_profile(&srv.authority());
    block(token(&cfg, &p, false));
    p.auth.scope = Some("https://outlook.office365.com/.default   ".into());
    assert!(
        block(token(&cfg, &p, false)).2,
        "same scope after normalising"
    );
    p.auth.scope = Some("https://graph.microsoft.com/.default".into());
    let (_, tok, _) = block(token(&cfg, &p, false));
    assert_eq!(tok, "at-1");
    p.auth.client_id = Some("other-client".into());
    assert_eq!(block(token(&cfg, &p, false)).1, "at-2");
    p.tenant = Some("fabrikam.onmicrosoft.com".into());
    assert_eq!(block(token(&cfg, &p, false)).1, "at-3");
    assert_eq!(
        srv.requests()[3].path,
        "/fabrikam.onmicrosoft.com/oauth2/v2.0/token"
    );
}

#[test]
fn cache_file_0600_dir_0700() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = app_profile(&srv.authority());
    block(token(&cfg, &p, false));
    let cache_dir = dir.path().join("cache");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache_dir), 0o700);
    let file = auth::cache_file(&cfg, &p).unwrap();
    assert_eq!(file.parent().unwrap(), cache_dir);
    assert_eq!(mode(&file), 0o600);
    for e in std::fs::read_dir(&cache_dir).unwrap() {
        let e = e.unwrap().path();
        assert_eq!(mode(&e) & 0o077, 0, "{} is private", e.display());
        assert!(
            !e.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".token-"),
            "no temp file left"
        );
    }
}

struct Case {
    status: u16,
    error: &'static str,
    code: Option<u64>,
    description: &'static str,
    delegated: bool,
    exit: Exit,
    advice: &'static str,
}

#[test]
fn identity_errors_become_advice_and_exit_codes() {
    let cases = [
        Case {
            status: 400,
            error: "unauthorized_client",
            code: Some(700016),
            description: "Application with identifier '11111111-2222-3333-4444-555555555555' was not found in the directory 'Contoso'.",
            delegated: false,
            exit: Exit::Config,
            advice: "was not found in tenant contoso.onmicrosoft.com",
        },
        Case {
            status: 401,
            error: "invalid_client",
            code: Some(7000215),
            description: "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            delegated: false,
            exit: Exit::Config,
            advice: "not its Secret ID",
        },
        Case {
            status: 401,
            error: "invalid_client",
            code: Some(700027),
            description: "Client assertion failed signature validation.",
            delegated: false,
            exit: Exit::Config,
            advice: "Certificates & secrets",
        },
        Case {
            status: 400,
            error: "invalid_client",
            code: Some(700024),
            description: "Client assertion is not within its valid time range.",
            delegated: false,
            exit: Exit::Config,
            advice: "clock",
        },
        Case {
            status: 400,
            error: "invalid_grant",
            code: Some(50076),
            description: "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication.",
            delegated: true,
            exit: Exit::NoPerm,
            advice: "app-only",
        },
        Case {
            status: 400,
            error: "invalid_grant",
            code: Some(53003),
            description: "Access has been blocked by Conditional Access policies.",
            delegated: false,
            exit: Exit::NoPerm,
            advice: "Conditional Access",
        },
        Case {
            status: 400,
            error: "invalid_grant",
            code: Some(700082),
            description: "The refresh token has expired due to inactivity. The token was issued on 2026-01-01 and was inactive for 90.00:00:00.",
            delegated: true,
            exit: Exit::NoPerm,
            advice: "`m365send login --profile me` again",
        },
        Case {
            status: 400,
            error: "invalid_grant",
            code: Some(70008),
            description: "The provided authorization code or refresh token has expired due to inactivity.",
            delegated: true,
            exit: Exit::NoPerm,
            advice: "`m365send login --profile me` again",
        },
        Case {
            status: 400,
            error: "invalid_scope",
            code: Some(70011),
            description: "The provided value for the input parameter 'scope' is not valid.",
            delegated: false,
            exit: Exit::Config,
            advice: "/.default",
        },
        Case {
            status: 400,
            error: "unauthorized_client",
            code: None,
            description: "The client is not authorized to request a token using this method.",
            delegated: false,
            exit: Exit::Config,
            advice: "not allowed to use this grant",
        },
        Case {
            status: 503,
            error: "temporarily_unavailable",
            code: Some(90033),
            description: "A transient error has occurred. Please try again.",
            delegated: false,
            exit: Exit::TempFail,
            advice: "temporarily unavailable",
        },
        Case {
            status: 500,
            error: "server_error",
            code: Some(90100),
            description: "An internal error occurred.",
            delegated: false,
            exit: Exit::TempFail,
            advice: "",
        },
        Case {
            status: 429,
            error: "invalid_request",
            code: None,
            description: "Too many requests",
            delegated: false,
            exit: Exit::TempFail,
            advice: "",
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    for c in cases {
        let srv =
            TokenServer::scripted(vec![Reply::error(c.status, c.error, c.code, c.description)]);
        let p = if c.delegated {
            let mut p = delegated_profile(&srv.authority());
            p.auth.refresh_token = secret("rt-seed-secret");
            p
        } else {
            app_profile(&srv.authority())
        };
        let f = err(block(auth::credentials(&cfg, &p, false)));
        let m = &f.message;
        assert_eq!(f.exit, c.exit, "{:?}: {m}", c.code);
        assert!(m.contains(c.advice), "{:?}: {m}", c.code);
        if let Some(code) = c.code {
            assert!(m.contains(&format!("AADSTS{code}")), "code quoted: {m}");
        }
        assert!(m.contains(c.error), "error quoted: {m}");
        let first_words: String = c.description.chars().take(20).collect();
        assert!(m.contains(&first_words), "description quoted: {m}");
        assert!(!m.contains("Trace ID"), "only the first line: {m}");
        assert!(!m.contains(SECRET) && !m.contains("rt-seed-secret"), "{m}");
    }
}

/// The token error a user reads and `m365send explain` come from one catalogue: the failure
/// carries the catalogue's meaning and advice for this profile, and its exit code.
#[test]
fn token_errors_say_what_the_catalogue_says() {
    use m365send::explain;
    let codes: &[(u64, &str, bool)] = &[
        (700016, "unauthorized_client", false),
        (90002, "invalid_request", false),
        (7000215, "invalid_client", false),
        (7000222, "invalid_client", false),
        (700027, "invalid_client", false),
        (700024, "invalid_client", false),
        (7000218, "invalid_client", true),
        (65001, "invalid_grant", false),
        (70011, "invalid_scope", false),
        (50076, "invalid_grant", true),
        (53003, "invalid_grant", true),
        (700082, "invalid_grant", true),
        (70008, "invalid_grant", true),
        (50173, "invalid_grant", true),
    ];
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    for &(code, error, delegated) in codes {
        let srv = TokenServer::scripted(vec![Reply::error(400, error, Some(code), "Something.")]);
        let p = if delegated {
            let mut p = delegated_profile(&srv.authority());
            p.auth.refresh_token = secret("rt-seed-secret");
            p
        } else {
            app_profile(&srv.authority())
        };
        let f = err(block(auth::credentials(&cfg, &p, false)));
        let ctx = explain::Context {
            profile: Some(&p.name),
            tenant: Some(TENANT),
            client_id: Some(CLIENT),
            app_only: !delegated,
            delegated,
            ..Default::default()
        };
        let e = explain::explain_aadsts(&format!("AADSTS{code}"), &ctx)
            .unwrap_or_else(|| panic!("AADSTS{code} not in the catalogue"));
        assert_eq!(f.exit, e.exit, "AADSTS{code}: {}", f.message);
        let mut meaning = e.meaning.clone();
        meaning.replace_range(..1, &meaning[..1].to_uppercase());
        assert!(
            f.message.contains(&meaning),
            "AADSTS{code}: {meaning:?} in {}",
            f.message
        );
        assert!(
            f.message.contains(&e.advice),
            "AADSTS{code}: {:?} in {}",
            e.advice,
            f.message
        );
    }
}

#[test]
fn transient_failures_exit_75() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let f = err(block(auth::credentials(
        &cfg,
        &app_profile(&format!("http://127.0.0.1:{port}")),
        false,
    )));
    assert_eq!(f.exit, Exit::TempFail, "{}", f.message);
    assert!(f.message.contains("cannot reach"), "{}", f.message);
    assert!(f.message.contains("temporary"), "{}", f.message);
    assert!(!f.message.contains(SECRET));

    let srv = TokenServer::scripted(vec![Reply::text(502, "<html>Bad Gateway</html>")]);
    let f = err(block(auth::credentials(
        &cfg,
        &app_profile(&srv.authority()),
        false,
    )));
    assert_eq!(f.exit, Exit::TempFail, "{}", f.message);
    assert!(f.message.contains("HTTP 502"), "{}", f.message);

    // A 404 HTML page: the authority is wrong, not a transient problem.
    let srv = TokenServer::scripted(vec![Reply::text(404, "<html>Not Found</html>")]);
    let f = err(block(auth::credentials(
        &cfg,
        &app_profile(&srv.authority()),
        false,
    )));
    assert_eq!(f.exit, Exit::Config, "{}", f.message);
}

#[test]
fn secrets_echoed_by_the_server_are_scrubbed() {
    let srv = TokenServer::scripted(vec![Reply::error(
        401,
        "invalid_client",
        Some(7000215),
        "Invalid client secret provided: s3cr3t-VALUE~not-the-id.",
    )]);
    let dir = tempfile::tempdir().unwrap();
    let f = err(block(auth::credentials(
        &config(dir.path()),
        &app_profile(&srv.authority()),
        false,
    )));
    assert!(!f.message.contains(SECRET), "{}", f.message);
    assert!(f.message.contains("<redacted>"));
}

#[test]
fn nothing_secret_in_debug_status_or_errors() {
    let srv = TokenServer::scripted(vec![Reply::token(
        "ACCESS-TOKEN-VALUE",
        3600,
        Some("REFRESH-TOKEN-VALUE"),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = delegated_profile(&srv.authority());
    p.auth.refresh_token = secret("SEED-REFRESH-VALUE");
    p.auth.client_secret = secret(SECRET);
    let creds = block(auth::credentials(&cfg, &p, false)).unwrap();
    let at = block(auth::access_token(&cfg, &p, false)).unwrap();
    let settings = auth::OAuthSettings::from_profile(&p).unwrap();
    let mut status = Vec::new();
    auth::token_status(&cfg, &p, &mut status).unwrap();
    let status = String::from_utf8(status).unwrap();
    let all = format!("{creds:?} {at:?} {settings:?} {p:?} {cfg:?} {status}");
    for s in [
        "ACCESS-TOKEN-VALUE",
        "REFRESH-TOKEN-VALUE",
        "SEED-REFRESH-VALUE",
        SECRET,
    ] {
        assert!(!all.contains(s), "{s} leaked: {all}");
    }
    // The assertion does not leak through the certificate signer's Debug either.
    let signer = auth::assertion::Signer::load(
        &data("test-rsa.crt"),
        &data("test-rsa-pkcs8.key"),
        AssertionAlgorithm::Ps256,
    )
    .unwrap();
    let jwt = signer.assertion(CLIENT, "aud", 0).unwrap();
    assert_eq!(format!("{jwt:?} {jwt}"), "<redacted> <redacted>");
    assert!(!format!("{signer:?}").contains("BEGIN"));
}

#[test]
fn token_status_and_clear() {
    let srv = TokenServer::scripted(vec![Reply::token("AT-VALUE", 3600, Some("RT-VALUE"))]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = delegated_profile(&srv.authority());
    let status = |p: &Profile| {
        let mut out = Vec::new();
        auth::token_status(&cfg, p, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    let s = status(&p);
    assert!(s.contains("delegated"), "{s}");
    assert!(s.contains(TENANT) && s.contains(CLIENT), "{s}");
    assert!(
        s.contains("https://outlook.office.com/SMTP.Send offline_access"),
        "{s}"
    );
    assert!(s.contains("access token:   none"), "{s}");
    assert!(s.contains("refresh token:  none"), "{s}");
    let file = auth::cache_file(&cfg, &p).unwrap();
    assert!(s.contains(&file.display().to_string()), "{s}");

    p.auth.refresh_token = secret("seed");
    block(token(&cfg, &p, false));
    let s = status(&p);
    assert!(s.contains("access token:   valid until"), "{s}");
    assert!(s.contains("refresh token:  stored"), "{s}");
    assert!(!s.contains("AT-VALUE") && !s.contains("RT-VALUE"), "{s}");

    auth::token_clear(&cfg, &p).unwrap();
    assert!(!file.exists());
    let s = status(&p);
    assert!(s.contains("access token:   none"), "{s}");
    // Clearing twice, or with no cache at all, is fine.
    auth::token_clear(&cfg, &p).unwrap();
    let empty = tempfile::tempdir().unwrap();
    auth::token_clear(&config(empty.path()), &p).unwrap();
}

#[test]
fn authority_must_be_https_unless_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    for (a, ok) in [
        ("http://login.example.com", false),
        ("ftp://127.0.0.1", false),
        ("http://localhost:1", true),
        ("https://login.microsoftonline.com/", true),
    ] {
        let r = auth::OAuthSettings::from_profile(&app_profile(a));
        assert_eq!(r.is_ok(), ok, "{a}: {r:?}");
        if !ok {
            let f = err(block(auth::credentials(&cfg, &app_profile(a), false)));
            assert_eq!(f.exit, Exit::Config);
        }
    }
    let s = auth::OAuthSettings::from_profile(&app_profile("https://login.microsoftonline.com/"))
        .unwrap();
    assert_eq!(
        s.token_endpoint(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        s.devicecode_endpoint(),
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
    );
    let mut bad = app_profile("https://login.microsoftonline.com");
    bad.tenant = Some("../evil".into());
    assert!(auth::OAuthSettings::from_profile(&bad).is_err());
}

#[test]
fn clouds_set_authority_and_scope() {
    let mut p = app_profile("unused");
    p.auth.authority = None;
    let s = |p: &Profile| {
        let s = auth::OAuthSettings::from_profile(p).unwrap();
        (s.authority, s.scope)
    };
    assert_eq!(
        s(&p),
        (
            "https://login.microsoftonline.com".into(),
            "https://outlook.office365.com/.default".into()
        )
    );
    p.cloud = Cloud::Usgov;
    assert_eq!(
        s(&p),
        (
            "https://login.microsoftonline.us".into(),
            "https://outlook.office365.us/.default".into()
        )
    );
    p.cloud = Cloud::China;
    assert_eq!(
        s(&p),
        (
            "https://login.partner.microsoftonline.cn".into(),
            "https://partner.outlook.cn/.default".into()
        )
    );
    p.cloud = Cloud::Global;
    p.mode = Mode::Acs;
    assert_eq!(s(&p).1, "https://communication.azure.com/.default");
    p.mode = Mode::Hve;
    assert_eq!(s(&p).1, "https://outlook.office365.com/.default");
    p.auth.scope = Some("https://example.test/.default".into());
    assert_eq!(s(&p).1, "https://example.test/.default");
    p.mode = Mode::Submit;
    p.auth.scope = None;
    p.auth.flow = OAuthFlow::Delegated;
    assert_eq!(
        s(&p).1,
        "https://outlook.office.com/SMTP.Send offline_access"
    );
}

#[test]
fn acs_needs_auth_user_and_uses_it() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = app_profile(&srv.authority());
    p.mode = Mode::Acs;
    let f = err(block(auth::credentials(&cfg, &p, false)));
    assert_eq!(f.exit, Exit::Config);
    assert!(
        f.message.contains("<resource>.<app id>.<tenant id>"),
        "{}",
        f.message
    );
    p.auth.user = Some("myacs.appid.tenantid".into());
    let (user, _, _) = block(token(&cfg, &p, false));
    assert_eq!(user, "myacs.appid.tenantid");
    assert_eq!(
        srv.requests()[0].field("scope"),
        Some("https://communication.azure.com/.default")
    );
}

#[test]
fn shared_mailbox_and_auth_user() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = app_profile(&srv.authority());
    p.mailbox = Some("shared@contoso.com".into());
    assert_eq!(block(token(&cfg, &p, false)).0, "shared@contoso.com");
    p.auth.user = Some("other@contoso.com".into());
    assert_eq!(block(token(&cfg, &p, false)).0, "other@contoso.com");
    p.auth.user = None;
    p.mailbox = None;
    assert_eq!(
        err(block(auth::credentials(&cfg, &p, false))).exit,
        Exit::Config
    );
}

#[test]
fn missing_settings_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = app_profile("http://127.0.0.1:9");
    p.auth.client_secret = SecretSource::default();
    let f = err(block(auth::credentials(&cfg, &p, false)));
    assert_eq!(f.exit, Exit::Config);
    assert!(f.message.contains("auth.client_secret"), "{}", f.message);
    let mut p = app_profile("http://127.0.0.1:9");
    p.auth.client_id = None;
    assert_eq!(
        err(block(auth::credentials(&cfg, &p, false))).exit,
        Exit::Config
    );
    let mut p = app_profile("http://127.0.0.1:9");
    p.tenant = None;
    assert_eq!(
        err(block(auth::credentials(&cfg, &p, false))).exit,
        Exit::Config
    );
}

fn fake_jwt(claims: Value) -> String {
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

#[test]
fn status_shows_what_the_token_grants_not_the_token() {
    let jwt = fake_jwt(json!({
        "aud": "https://outlook.office365.com",
        "roles": ["SMTP.SendAsApp"],
        "appid": CLIENT,
        "tid": "tenant-guid",
    }));
    let reply = Reply::token(&jwt, 3600, None);
    let srv = TokenServer::scripted(vec![reply]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = app_profile(&srv.authority());
    block(token(&cfg, &p, false));
    let mut out = Vec::new();
    auth::token_status(&cfg, &p, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("token grants:   aud=https://outlook.office365.com roles=SMTP.SendAsApp"),
        "{out}"
    );
    assert!(!out.contains(&jwt) && !out.contains(jwt.split('.').nth(1).unwrap()));
    let c = auth::TokenClaims::of(&Secret::new(jwt)).unwrap();
    assert!(c.allows_smtp());
}

#[test]
fn smtp_535_advice_names_the_likely_causes() {
    let p = app_profile("https://login.microsoftonline.com");
    let no_roles = Secret::new(fake_jwt(json!({"aud": "https://outlook.office365.com"})));
    let a = auth::smtp_535_advice(&p, Some(&no_roles));
    for needle in [
        "no SMTP permission",
        "SMTP.SendAsApp",
        &format!("New-ServicePrincipal -AppId {CLIENT}"),
        "Enterprise application",
        "Add-MailboxPermission -Identity app@contoso.com",
        "FullAccess",
        "Set-CASMailbox -Identity app@contoso.com -SmtpClientAuthenticationDisabled $false",
    ] {
        assert!(a.contains(needle), "{needle}: {a}");
    }
    assert!(!a.contains(no_roles.expose()));
    let ok = Secret::new(fake_jwt(json!({"roles": ["SMTP.SendAsApp"]})));
    assert!(!auth::smtp_535_advice(&p, Some(&ok)).contains("no SMTP permission"));
    let d = auth::smtp_535_advice(&delegated_profile("https://x"), None);
    assert!(d.contains("m365send login --profile me"), "{d}");
}

#[derive(Clone, Default)]
struct LogBuf(Arc<std::sync::Mutex<Vec<u8>>>);
impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn debug_logs_carry_no_secret() {
    let srv = device_server(
        vec![
            pending(),
            Reply::text(503, "busy"),
            Reply::token("AT-LOGIN-VALUE", 60, Some("RT-LOGIN-VALUE")),
            Reply::token("AT-REFRESHED-VALUE", 3600, Some("RT-ROTATED-VALUE")),
        ],
        0,
    );
    let buf = LogBuf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let mut p = delegated_profile(&srv.authority());
    p.auth.client_secret = secret(SECRET);
    tracing::subscriber::with_default(subscriber, || {
        block(auth::login(&cfg, &p, &mut Vec::new())).unwrap();
        block(token(&cfg, &p, false));
        block(token(&cfg, &p, false));
    });
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("token request"), "{logs}");
    assert!(logs.contains("access token from cache"), "{logs}");
    for s in [
        "AT-LOGIN-VALUE",
        "RT-LOGIN-VALUE",
        "AT-REFRESHED-VALUE",
        "RT-ROTATED-VALUE",
        "DEVICE-CODE-SECRET",
        SECRET,
    ] {
        assert!(!logs.contains(s), "{s} in logs: {logs}");
    }
    // The 503 while polling did not end the login; the refresh sent the client secret.
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[4].field("grant_type"), Some("refresh_token"));
    assert_eq!(reqs[4].field("refresh_token"), Some("RT-LOGIN-VALUE"));
    assert_eq!(reqs[4].field("client_secret"), Some(SECRET));
}

#[test]
fn replacing_a_rejected_token_asks_once() {
    let srv = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = app_profile(&srv.authority());
    let (_, at0, _) = block(token(&cfg, &p, false));
    let xo = |c: Credentials| match c {
        Credentials::XOAuth2 {
            user,
            token,
            from_cache,
        } => (user, token.expose().to_string(), from_cache),
        other => panic!("{other:?}"),
    };
    // The first process refused with at-0 gets a new token...
    let (user, at1, from_cache) = xo(block(auth::credentials_replacing(
        &cfg,
        &p,
        &Secret::new(at0.clone()),
    ))
    .unwrap());
    assert_eq!(
        (user.as_str(), at1.as_str(), from_cache),
        ("app@contoso.com", "at-1", false)
    );
    // ...the others refused with at-0 take that one without asking again.
    for _ in 0..5 {
        let (_, t, from_cache) = xo(block(auth::credentials_replacing(
            &cfg,
            &p,
            &Secret::new(at0.clone()),
        ))
        .unwrap());
        assert_eq!((t.as_str(), from_cache), ("at-1", true));
    }
    assert_eq!(srv.count(), 2);
    // A refusal of the new token gets another one.
    let (_, t, _) = xo(block(auth::credentials_replacing(&cfg, &p, &Secret::new(at1))).unwrap());
    assert_eq!(t, "at-2");
    assert_eq!(srv.count(), 3);
}

#[test]
fn token_status_of_a_profile_without_oauth() {
    let dir = tempfile::tempdir().unwrap();
    let p = Profile {
        name: "cron".into(),
        mode: Mode::Relay,
        ..Default::default()
    };
    let f = auth::token_status(&config(dir.path()), &p, &mut Vec::new()).unwrap_err();
    assert_eq!(f.exit, Exit::Config);
    assert!(f.message.contains("does not use OAuth"), "{}", f.message);
}

/// A process that holds the token cache lock and never lets go (a token request or secret
/// command that hangs, a stopped process) must not hang every later sender with it: they give
/// up after about one token request's worth of time with a temporary failure (75: queued).
#[test]
fn a_stuck_token_cache_lock_is_a_temporary_failure_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    // Never contacted: the lock is never obtained.
    let mut profile = app_profile("http://127.0.0.1:9");
    profile.timeouts.connect = Some(1);
    profile.timeouts.command = Some(1);
    let cache_dir = dir.path().join("cache");
    let _held = auth::cache::lock_blocking(&cache_dir, &profile.name).unwrap();
    let started = Instant::now();
    let f = err(block(auth::credentials(&config, &profile, false)));
    let took = started.elapsed();
    assert_eq!(f.exit, Exit::TempFail, "{}", f.message);
    assert!(
        f.message.contains("locked by another m365send process"),
        "{}",
        f.message
    );
    assert!(f.message.contains("profile \"app\""), "{}", f.message);
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

/// A token endpoint answering 307 to another host: the redirect is not followed (the client
/// secret would be posted there), the error names the host and says why.
#[test]
fn token_request_does_not_follow_a_redirect() {
    use std::io::{Read, Write};
    let second = numbered_tokens(3600);
    let target = format!(
        "{}/contoso.onmicrosoft.com/oauth2/v2.0/token",
        second.authority().replace("127.0.0.1", "localhost")
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let first = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4) {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 8192];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = err(block(auth::credentials(
        &config(dir.path()),
        &app_profile(&first),
        false,
    )));
    assert_eq!(second.count(), 0, "the redirect was followed");
    assert_eq!(f.exit, Exit::Config);
    assert!(
        f.message
            .contains("answered HTTP 307, a redirect to localhost:")
            && f.message.contains("does not follow redirects"),
        "{}",
        f.message
    );
    assert!(!f.message.contains(SECRET));
}

/// A token cache another user could write (tokens planted or swapped) is refused before any
/// token is read from it or asked for.
#[test]
fn a_token_cache_others_could_write_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let server = numbered_tokens(3600);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let p = app_profile(&server.authority());
    block(token(&cfg, &p, false));
    let cache = dir.path().join("cache");
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let f = err(block(auth::credentials(&cfg, &p, false)));
    assert_eq!(f.exit, Exit::NoPerm);
    assert!(
        f.message.starts_with(&format!(
            "the token cache {} is not safe to use",
            cache.display()
        )) && f.message.contains("writable by others (mode 0777)"),
        "{}",
        f.message
    );
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
    let f = err(block(auth::credentials(&cfg, &p, false)));
    assert!(f.message.contains("owned by uid 65534"), "{}", f.message);
    assert_eq!(server.count(), 1);
}

/// Finding (low, attacker's review): the token endpoint's answer was read whole and its
/// `error` and `error_description` quoted as they came: an answer of megabytes (a broken
/// proxy, a wrong auth.authority) cost as much memory and became the error printed on stderr,
/// written to the log and the dead letter, with terminal escapes raw. Now the answer is read
/// up to 1 MiB and what is quoted from it is cleaned and cut.
#[test]
fn a_hostile_token_error_is_quoted_clean_and_short() {
    // Under the 1 MiB read limit: quoted, cleaned and cut. Over it: not read as an error body.
    for (size, quoted) in [(500 * 1024, true), (3 * 1024 * 1024, false)] {
        let description = format!(
            "AADSTS7000215: Invalid client secret.\x1b]0;owned\x07\u{202e}{}",
            "d".repeat(size)
        );
        let error = format!("invalid_client\x1b[2J{}", "e".repeat(100_000));
        let srv = TokenServer::scripted(vec![Reply::json(
            401,
            json!({"error": error, "error_description": description, "error_codes": [7000215]}),
        )]);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path());
        let p = app_profile(&srv.authority());
        let f = err(block(auth::credentials(&cfg, &p, false)));
        assert!(
            !f.message
                .chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{:?}",
            &f.message[..f.message.len().min(500)]
        );
        assert!(f.message.len() < 4096, "{} bytes", f.message.len());
        assert_eq!(f.message.contains("AADSTS7000215"), quoted, "{}", f.message);
        assert!(!f.message.contains(SECRET));
    }
}
