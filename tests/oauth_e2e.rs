//! OAuth end to end: the real binary, a configuration file in a temporary directory, the fake
//! Microsoft 365 SMTP server and the mock identity platform, all on 127.0.0.1.
//!
//! What reaches the SMTP server (the XOAUTH2 string), how often the token endpoint is asked
//! (cache, 5.7.3 replacement), what the user reads and the exit code for each identity
//! error, the dead letter when the token endpoint is down, the per-message log line,
//! `token status` / `token clear`, and the device-code `login` followed by a silent send.
//! Every run is made with -v and its stderr is checked for secrets.

#[path = "support/fake_m365.rs"]
mod fake_m365;
#[path = "support/http.rs"]
mod http;
#[path = "support/token_server.rs"]
mod token_server;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use fake_m365::{FakeConfig, FakeM365, Phase, Rule};
use serde_json::json;
use token_server::{Reply, TokenServer};
use tokio::io::AsyncWriteExt;

const BIN: &str = env!("CARGO_BIN_EXE_m365send");
const MAILBOX: &str = "app@contoso.com";
const RCPT: &str = "ops@contoso.com";
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "cs-VALUE~e2e-7f3e9a1c-do-not-print";
const SECRET_ENV: &str = "M365SEND_E2E_CLIENT_SECRET";
const REFRESH_ENV: &str = "M365SEND_E2E_REFRESH_TOKEN";
const SEED_RT: &str = "rt-seed-e2e-0c1d2e3f-do-not-print";
const MSG: &str = "From: app@contoso.com\nTo: ops@contoso.com\nSubject: backup done\n\nall good\n";

/// A test directory with a configuration file for profile "app".
struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Client credentials with a client secret from the environment.
    AppOnly,
    /// Delegated, public client; a refresh token from the environment when `seed`.
    Delegated { seed: bool },
    /// Client credentials with a certificate assertion (tests/data/test-rsa.*).
    Certificate,
}

impl Env {
    fn new(smtp: &FakeM365, authority: &str, flow: Flow) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let auth = match flow {
            Flow::AppOnly => format!(
                "auth = {{ method = \"oauth\", authority = \"{authority}\", client_id = \"{CLIENT}\", \
                 client_secret = {{ env = \"{SECRET_ENV}\" }} }}"
            ),
            Flow::Certificate => format!(
                "auth = {{ method = \"oauth\", authority = \"{authority}\", client_id = \"{CLIENT}\", \
                 certificate = \"{}\", private_key = \"{}\" }}",
                data("test-rsa.crt").display(),
                data("test-rsa-pkcs8.key").display()
            ),
            Flow::Delegated { seed } => format!(
                "auth = {{ method = \"oauth\", flow = \"delegated\", authority = \"{authority}\", \
                 client_id = \"{CLIENT}\"{} }}",
                if seed {
                    format!(", refresh_token = {{ env = \"{REFRESH_ENV}\" }}")
                } else {
                    String::new()
                }
            ),
        };
        let toml = format!(
            r#"default_profile = "app"
cache_dir = "{cache}"
dead_letter = "{dead}"

[log]
file = "{log}"

[profiles.app]
mode = "submit"
mailbox = "{MAILBOX}"
tenant = "{TENANT}"
helo = "client.contoso.com"
queue = "never"
endpoint = {{ host = "127.0.0.1", port = {port} }}
tls = {{ ca_file = "{ca}" }}
timeouts = {{ connect = 5, command = 5, data_end = 5 }}
retry = {{ attempts = 1, initial_delay_ms = 10 }}
{auth}
"#,
            cache = p.join("cache").display(),
            dead = p.join("dead.letter").display(),
            log = p.join("m365send.log").display(),
            port = smtp.port(),
            ca = smtp.ca_file().display(),
        );
        let config = p.join("config.toml");
        std::fs::write(&config, toml).unwrap();
        Env { dir, config }
    }

    /// Point the configuration at another SMTP server (same cache, same token endpoint).
    fn retarget(&self, from: &FakeM365, to: &FakeM365) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text
            .replace(
                &format!("port = {} }}", from.port()),
                &format!("port = {} }}", to.port()),
            )
            .replace(
                &from.ca_file().display().to_string(),
                &to.ca_file().display().to_string(),
            );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Remove `log.file` from the configuration (the log line then goes to stderr at -v).
    fn without_log_file(&self) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let start = text.find("[log]").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        std::fs::write(&self.config, format!("{}{}", &text[..start], &text[end..])).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("m365send.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn dead_letter(&self) -> String {
        std::fs::read_to_string(self.path("dead.letter")).unwrap_or_default()
    }

    /// Run the binary with this configuration, `args` after `-C FILE`, `stdin` fed in.
    async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = tokio::process::Command::new(BIN)
            .arg("-C")
            .arg(&self.config)
            .args(args)
            .env(SECRET_ENV, SECRET)
            .env(REFRESH_ENV, SEED_RT)
            .env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path())
            .env_remove("M365SEND_CONFIG")
            .env_remove("M365SEND_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("m365send did not finish within 60 s")
            .unwrap()
    }

    /// Send MSG to RCPT with -v.
    async fn send(&self) -> Output {
        self.run(&["-v", "-i", "-f", MAILBOX, RCPT], MSG).await
    }
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// No secret, token or assertion anywhere in `text`.
fn assert_clean(text: &str, secrets: &[&str]) {
    for s in [SECRET, SEED_RT, "client_assertion=", "Bearer "]
        .iter()
        .chain(secrets)
    {
        assert!(!text.contains(s), "{s:?} leaked:\n{text}");
    }
    // Nor the base64 of an XOAUTH2 string (it starts with "user=").
    let b64_user = base64::engine::general_purpose::STANDARD.encode(format!("user={MAILBOX}"));
    assert!(
        !text.contains(&b64_user[..12]),
        "XOAUTH2 payload leaked:\n{text}"
    );
}

fn xoauth2(token: &str) -> String {
    format!("user={MAILBOX}\x01auth=Bearer {token}\x01\x01")
}

/// All XOAUTH2 strings the server received, in order.
fn auths(server: &FakeM365) -> Vec<String> {
    server
        .connections()
        .into_iter()
        .flat_map(|c| c.auth)
        .collect()
}

/// A token server handing out `<prefix>-1`, `<prefix>-2`, … (one per request).
fn numbered(prefix: &'static str, expires_in: i64) -> TokenServer {
    let n = Arc::new(AtomicUsize::new(0));
    TokenServer::start(move |_, _| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        Reply::token(&format!("{prefix}-{i}"), expires_in, None)
    })
}

/// A JWT-shaped access token with these claims (unsigned: only read for diagnosis).
fn fake_jwt(claims: serde_json::Value) -> String {
    let b = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!("{}.{}.sig-e2e", b(json!({"alg": "none"})), b(claims))
}

#[tokio::test]
async fn xoauth2_reaches_the_server_and_the_cached_token_serves_two_sends() {
    let tokens = numbered("at-e2e", 3600);
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, "at-e2e-1")).await;
    let env = Env::new(&smtp, &tokens.authority(), Flow::AppOnly);

    for round in 1..=2 {
        let o = env.send().await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "send {round}: {err}");
        assert_clean(&err, &["at-e2e-1"]);
    }
    // The string that reached the server, both times with the one token.
    assert_eq!(auths(&smtp), vec![xoauth2("at-e2e-1"), xoauth2("at-e2e-1")]);
    assert_eq!(smtp.accepted().len(), 2);
    // The token endpoint was asked once, field by field.
    let reqs = tokens.requests();
    assert_eq!(reqs.len(), 1, "token endpoint hit once for two sends");
    let r = &reqs[0];
    assert_eq!(r.path, format!("/{TENANT}/oauth2/v2.0/token"));
    assert_eq!(r.field("grant_type"), Some("client_credentials"));
    assert_eq!(r.field("client_id"), Some(CLIENT));
    assert_eq!(r.field("client_secret"), Some(SECRET));
    assert_eq!(
        r.field("scope"),
        Some("https://outlook.office365.com/.default")
    );

    // One log line per message, nothing secret in it.
    let lines = env.log_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        for needle in [
            "profile=app",
            "mode=submit",
            "host=127.0.0.1",
            "tls=on",
            "auth=XOAUTH2",
            "from=app@contoso.com",
            "recipients=ops@contoso.com",
            "mailsize=",
            "smtpstatus=250",
            "exitcode=EX_OK",
            "duration=",
        ] {
            assert!(l.contains(needle), "{needle} missing: {l}");
        }
        assert_clean(l, &["at-e2e-1"]);
    }
    let log = std::fs::metadata(env.path("m365send.log")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(log.permissions().mode() & 0o777, 0o600);
}

#[tokio::test]
async fn cached_token_refused_with_5_7_3_is_replaced_once() {
    let tokens = numbered("at-e2e", 3600);
    let smtp = FakeM365::start(
        FakeConfig::submission()
            .user(MAILBOX, "at-e2e-1")
            .user(MAILBOX, "at-e2e-2"),
    )
    .await;
    let env = Env::new(&smtp, &tokens.authority(), Flow::AppOnly);
    let o = env.send().await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // Microsoft now refuses the cached token once (revoked, permissions changed).
    smtp.add_rule(
        Rule::reply(Phase::Auth, "535 5.7.3 Authentication unsuccessful [e2e]")
            .matching(MAILBOX)
            .times(1),
    );
    let o = env.send().await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_clean(&err, &["at-e2e-1", "at-e2e-2"]);
    assert_eq!(tokens.count(), 2, "exactly one re-acquisition");
    let conns = smtp.connections();
    assert_eq!(conns.len(), 2, "the retry reuses the connection");
    assert_eq!(
        conns[1].auth,
        vec![xoauth2("at-e2e-1"), xoauth2("at-e2e-2")]
    );
    assert_eq!(smtp.accepted().len(), 2);
    // A third send uses the replacement from the cache.
    let o = env.send().await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tokens.count(), 2);
    assert_eq!(auths(&smtp).last(), Some(&xoauth2("at-e2e-2")));
}

#[tokio::test]
async fn fresh_token_refused_with_5_7_3_exits_77_with_the_app_only_causes() {
    // A token without SMTP.SendAsApp; the server accepts no token at all.
    let token = fake_jwt(json!({"aud": "https://outlook.office365.com", "tid": "t"}));
    let tok = token.clone();
    let tokens = TokenServer::start(move |_, _| Reply::token(&tok, 3600, None));
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, "not-this-one")).await;
    let env = Env::new(&smtp, &tokens.authority(), Flow::AppOnly);
    let o = env.send().await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(77), "{err}");
    assert_eq!(tokens.count(), 1, "no second token for a fresh one: {err}");
    assert_eq!(auths(&smtp).len(), 1, "one AUTH, no loop");
    for needle in [
        "535 5.7.3",
        &format!("New-ServicePrincipal -AppId {CLIENT}"),
        "Enterprise application",
        "FullAccess",
        "SendAs",
        "Set-CASMailbox -Identity app@contoso.com -SmtpClientAuthenticationDisabled $false",
        "no SMTP permission",
        "message saved to",
    ] {
        assert!(err.contains(needle), "{needle} missing:\n{err}");
    }
    assert_clean(&err, &[&token, "sig-e2e"]);
    assert!(env.dead_letter().contains("all good"));
    let lines = env.log_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    for needle in [
        "tls=on",
        "auth=XOAUTH2",
        "smtpstatus=535",
        "exitcode=EX_NOPERM",
    ] {
        assert!(lines[0].contains(needle), "{needle}: {}", lines[0]);
    }
    assert_clean(&lines[0], &[&token]);
}

/// `m365send explain CODE` output: (meaning line after "CODE: ", advice line).
async fn explain_lines(env: &Env, code: &str) -> (String, String) {
    let o = env.run(&["explain", code], "").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let meaning = lines
        .next()
        .unwrap()
        .strip_prefix(&format!("{code}: "))
        .unwrap()
        .to_owned();
    let advice = lines.next().unwrap().trim().to_owned();
    (meaning, advice)
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn identity_errors_exit_codes_and_advice_match_explain() {
    struct Case {
        flow: Flow,
        status: u16,
        error: &'static str,
        code: u64,
        description: &'static str,
        exit: i32,
        advice: &'static str,
    }
    let cases = [
        Case {
            flow: Flow::AppOnly,
            status: 400,
            error: "unauthorized_client",
            code: 700016,
            description: "Application with identifier '11111111-2222-3333-4444-555555555555' was not found in the directory 'Contoso'.",
            exit: 78,
            advice: "was not found in tenant contoso.onmicrosoft.com",
        },
        Case {
            flow: Flow::AppOnly,
            status: 401,
            error: "invalid_client",
            code: 7000215,
            description: "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
            exit: 78,
            advice: "not its Secret ID",
        },
        Case {
            flow: Flow::Delegated { seed: true },
            status: 400,
            error: "invalid_grant",
            code: 700082,
            description: "The refresh token has expired due to inactivity. The token was issued on 2026-01-01 and was inactive for 90.00:00:00.",
            exit: 77,
            advice: "`m365send login --profile app` again",
        },
    ];
    for c in cases {
        let tokens = TokenServer::scripted(vec![Reply::error(
            c.status,
            c.error,
            Some(c.code),
            c.description,
        )]);
        let smtp = FakeM365::start(FakeConfig::submission()).await;
        let env = Env::new(&smtp, &tokens.authority(), c.flow);
        let o = env.send().await;
        let err = stderr(&o);
        let code = format!("AADSTS{}", c.code);
        assert_eq!(o.status.code(), Some(c.exit), "{code}: {err}");
        assert!(err.contains(c.advice), "{code}: {err}");
        assert!(
            err.contains(&code) && err.contains(c.error),
            "{code} quoted: {err}"
        );
        assert!(!err.contains("Trace ID"), "{err}");
        assert_clean(&err, &[]);
        assert_eq!(tokens.count(), 1, "{code}: asked once");
        assert!(
            smtp.connections().is_empty(),
            "{code}: no SMTP without a token"
        );
        assert!(
            env.dead_letter().contains("all good"),
            "{code}: message kept"
        );
        if let Flow::Delegated { .. } = c.flow {
            let r = &tokens.requests()[0];
            assert_eq!(r.field("grant_type"), Some("refresh_token"));
            assert_eq!(r.field("refresh_token"), Some(SEED_RT));
        }
        // `m365send explain CODE` says the same thing (with the profile filled in).
        let (meaning, advice) = explain_lines(&env, &code).await;
        if c.code != 700016 {
            assert!(
                err.contains(&capitalised(&meaning)),
                "{code}: {meaning:?} not in {err}"
            );
        }
        let advice = advice.replace("--profile PROFILE", "--profile app");
        let advice = advice.replace("the profile", "profile \"app\"");
        assert!(err.contains(&advice), "{code}: {advice:?} not in {err}");
    }
}

#[tokio::test]
async fn token_endpoint_down_exits_75_and_keeps_the_message() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let smtp = FakeM365::start(FakeConfig::submission()).await;
    let env = Env::new(&smtp, &format!("http://127.0.0.1:{port}"), Flow::AppOnly);
    let o = env.send().await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(err.contains("cannot reach the token endpoint"), "{err}");
    assert!(err.contains("message saved to"), "{err}");
    // Nothing was sent: no "still failing after 0 attempts" (issue 10 finding 15).
    assert!(!err.contains("after 0 attempts"), "{err}");
    assert_clean(&err, &[]);
    let dead = env.dead_letter();
    assert!(dead.starts_with("From app@contoso.com "), "{dead}");
    assert!(dead.contains("Subject: backup done") && dead.contains("all good"));
    assert!(smtp.connections().is_empty());
    let lines = env.log_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("exitcode=EX_TEMPFAIL"), "{}", lines[0]);
    assert!(lines[0].contains("errormsg='cannot reach"), "{}", lines[0]);
    assert!(!lines[0].contains("message saved"), "{}", lines[0]);
    assert_clean(&lines[0], &[]);

    // Without log.file, -v shows the line on stderr; without -v nothing is logged.
    env.without_log_file();
    let o = env.send().await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("m365send: profile=app mode=submit"))
        .unwrap_or_else(|| panic!("no log line on stderr:\n{err}"));
    assert!(line.contains("exitcode=EX_TEMPFAIL"), "{line}");
    let o = env.run(&["-i", "-f", MAILBOX, RCPT], MSG).await;
    assert_eq!(o.status.code(), Some(75));
    assert!(!stderr(&o).contains("profile=app"), "{}", stderr(&o));
    assert_eq!(env.log_lines().len(), 1);

    // A 503 from the identity platform is just as temporary.
    let tokens = TokenServer::scripted(vec![Reply::error(
        503,
        "temporarily_unavailable",
        Some(90033),
        "A transient error has occurred. Please try again.",
    )]);
    let env = Env::new(&smtp, &tokens.authority(), Flow::AppOnly);
    let o = env.send().await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(err.contains("temporarily unavailable"), "{err}");
    assert!(env.dead_letter().contains("all good"));
}

fn cache_file(env: &Env) -> PathBuf {
    env.path("cache").join("app.json")
}

fn find_cache_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
}

#[tokio::test]
async fn token_status_and_clear_through_the_binary() {
    let tokens = numbered("at-e2e", 3600);
    let smtp = FakeM365::start(
        FakeConfig::submission()
            .user(MAILBOX, "at-e2e-1")
            .user(MAILBOX, "at-e2e-2"),
    )
    .await;
    let env = Env::new(&smtp, &tokens.authority(), Flow::AppOnly);
    let o = env.run(&["token", "status"], "").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("access token:   none cached"),
        "{}",
        stdout(&o)
    );

    let o = env.send().await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = env.run(&["-v", "token", "status"], "").await;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for needle in [
        "profile:        app",
        "app-only (client credentials)",
        "client secret",
        TENANT,
        CLIENT,
        "https://outlook.office365.com/.default",
        "access token:   valid until",
        "refresh token:  none",
    ] {
        assert!(out.contains(needle), "{needle} missing:\n{out}");
    }
    assert_clean(&format!("{out}{}", stderr(&o)), &["at-e2e-1"]);
    let file = find_cache_file(&env.path("cache")).unwrap_or_else(|| cache_file(&env));
    assert!(file.exists());

    let o = env.run(&["token", "clear"], "").await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!file.exists(), "cache file removed");
    let o = env.run(&["token", "status"], "").await;
    assert!(
        stdout(&o).contains("access token:   none cached"),
        "{}",
        stdout(&o)
    );
    // The next send asks again.
    let o = env.send().await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tokens.count(), 2);
}

#[tokio::test]
async fn login_with_device_code_then_a_silent_send() {
    let polls = Arc::new(AtomicUsize::new(0));
    let p = polls.clone();
    let tokens = TokenServer::start(move |r, _| {
        if r.path.ends_with("/devicecode") {
            return Reply::json(
                200,
                json!({
                    "user_code": "ABCD-EFGH",
                    "device_code": "DEVICE-CODE-e2e-do-not-print",
                    "verification_uri": "https://microsoft.com/devicelogin",
                    "expires_in": 900,
                    "interval": 0,
                    "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate."
                }),
            );
        }
        match r.field("grant_type") {
            Some("urn:ietf:params:oauth:grant-type:device_code") => {
                if p.fetch_add(1, Ordering::SeqCst) == 0 {
                    Reply::error(
                        400,
                        "authorization_pending",
                        Some(70016),
                        "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                    )
                } else {
                    // Short-lived: the send below must refresh it.
                    Reply::token("at-login-e2e", 60, Some("rt-login-e2e"))
                }
            }
            Some("refresh_token") if r.field("refresh_token") == Some("rt-login-e2e") => {
                Reply::token("at-refreshed-e2e", 3600, Some("rt-rotated-e2e"))
            }
            _ => Reply::error(400, "invalid_grant", Some(70000), "unexpected request"),
        }
    });
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, "at-refreshed-e2e")).await;
    let env = Env::new(&smtp, &tokens.authority(), Flow::Delegated { seed: false });

    // Without a login, a send says to log in (77) and keeps the message.
    let o = env.send().await;
    assert_eq!(o.status.code(), Some(77), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("m365send login --profile app"),
        "{}",
        stderr(&o)
    );
    assert_eq!(tokens.count(), 0);

    let o = env.run(&["-v", "login"], "").await;
    let out = stdout(&o);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{out}{err}");
    assert!(out.contains("https://microsoft.com/devicelogin"), "{out}");
    assert!(out.contains("ABCD-EFGH"), "{out}");
    assert!(out.contains("Logged in"), "{out}");
    let all = format!("{out}{err}");
    assert_clean(&all, &["DEVICE-CODE-e2e", "at-login-e2e", "rt-login-e2e"]);
    let reqs = tokens.requests();
    assert_eq!(reqs[0].field("client_id"), Some(CLIENT));
    assert_eq!(
        reqs[0].field("scope"),
        Some("https://outlook.office.com/SMTP.Send offline_access")
    );
    assert_eq!(reqs.len(), 3, "devicecode, pending, success");
    assert_eq!(
        reqs[2].field("device_code"),
        Some("DEVICE-CODE-e2e-do-not-print")
    );

    let o = env.run(&["token", "status"], "").await;
    assert!(
        stdout(&o).contains("refresh token:  stored"),
        "{}",
        stdout(&o)
    );
    let file = find_cache_file(&env.path("cache")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The send uses the stored refresh token silently (the access token is inside the
    // refresh window), and stores the rotated one.
    let o = env.send().await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(stdout(&o), "", "a send prints nothing on stdout");
    assert_clean(
        &err,
        &["at-refreshed-e2e", "rt-login-e2e", "rt-rotated-e2e"],
    );
    let reqs = tokens.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[3].field("grant_type"), Some("refresh_token"));
    assert_eq!(auths(&smtp), vec![xoauth2("at-refreshed-e2e")]);
    let cached = std::fs::read_to_string(&file).unwrap();
    assert!(cached.contains("rt-rotated-e2e") && !cached.contains("rt-login-e2e"));
}

#[tokio::test]
async fn certificate_assertion_never_shows_in_verbose_output() {
    let tokens = numbered("at-e2e", 3600);
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, "at-e2e-1")).await;
    let env = Env::new(&smtp, &tokens.authority(), Flow::Certificate);
    let o = env.run(&["-vv", "-i", "-f", MAILBOX, RCPT], MSG).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let reqs = tokens.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(
        r.field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(r.field("client_secret"), None);
    let jwt = r.field("client_assertion").unwrap().to_owned();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a signed JWT");
    // Neither the assertion nor any of its parts, nor the token, is printed.
    let mut secrets: Vec<&str> = parts.clone();
    secrets.extend([jwt.as_str(), "at-e2e-1"]);
    assert_clean(&err, &secrets);
    assert_eq!(auths(&smtp), vec![xoauth2("at-e2e-1")]);
    for l in env.log_lines() {
        assert_clean(&l, &secrets);
    }

    // Microsoft refusing the assertion: exit 78, the catalogue's advice, still no assertion.
    let tokens = TokenServer::scripted(vec![Reply::error(
        401,
        "invalid_client",
        Some(700027),
        "Client assertion failed signature validation.",
    )]);
    let env = Env::new(&smtp, &tokens.authority(), Flow::Certificate);
    let o = env.run(&["-vv", "-i", "-f", MAILBOX, RCPT], MSG).await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(78), "{err}");
    assert!(err.contains("Certificates & secrets"), "{err}");
    let jwt = tokens.requests()[0]
        .field("client_assertion")
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_clean(&err, &parts);
}

#[tokio::test]
async fn many_processes_refused_at_once_ask_the_token_endpoint_once() {
    const N: usize = 12;
    let tokens = numbered("at-e2e", 3600);
    // Server A accepts the first token; server B only the second (the first was revoked).
    let a = FakeM365::start(FakeConfig::submission().user(MAILBOX, "at-e2e-1")).await;
    let b = FakeM365::start(FakeConfig::submission().user(MAILBOX, "at-e2e-2")).await;
    let env = Env::new(&a, &tokens.authority(), Flow::AppOnly);
    let o = env.send().await;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(tokens.count(), 1);
    env.retarget(&a, &b);
    let runs: Vec<_> = (0..N).map(|_| env.send()).collect();
    let outputs = futures_join_all(runs).await;
    for o in &outputs {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    }
    assert_eq!(
        tokens.count(),
        2,
        "{N} refused processes made one token request"
    );
    assert_eq!(b.accepted().len(), N);
    let refused = auths(&b)
        .iter()
        .filter(|s| **s == xoauth2("at-e2e-1"))
        .count();
    // Each process tried the revoked token at most once (a late starter may already find
    // the replacement in the cache).
    assert!((1..=N).contains(&refused), "{refused}");
    assert_eq!(env.log_lines().len(), N + 1);
}

/// Await all futures (on this one thread), in order.
async fn futures_join_all<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}

/// Issue 10 finding 15, the decision: token requests (which carry the client secret) never
/// trust the profile's `tls.ca_file`, which is for its SMTP host. A token endpoint whose
/// certificate comes from that CA is refused at the TLS handshake: no request reaches it.
#[tokio::test]
async fn token_requests_do_not_trust_the_profiles_ca_file() {
    use tokio::io::AsyncReadExt;

    let smtp = FakeM365::start(FakeConfig::submission()).await;
    // An HTTPS "token endpoint" with a certificate from the CA that tls.ca_file names.
    let (_, _, cert, key) = smtp.pki.leaf(&["127.0.0.1".to_owned()], "login.example");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(sock).await else {
                continue;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 8192];
            let _ = tls.read(&mut buf).await;
            let body =
                r#"{"access_token":"at-must-not-be-used","expires_in":3600,"token_type":"Bearer"}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(reply.as_bytes()).await;
        }
    });
    let env = Env::new(&smtp, &format!("https://127.0.0.1:{port}"), Flow::AppOnly);
    let o = env.send().await;
    let err = stderr(&o);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert_eq!(requests.load(Ordering::SeqCst), 0, "{err}");
    assert!(err.contains("token endpoint"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(smtp.messages().is_empty());
    assert_clean(&err, &[]);
}
