//! `m365send doctor` end to end: the real binary against the fake Microsoft 365 SMTP server,
//! the mock identity platform and the stub DNS server, all on 127.0.0.1.
//!
//! One test per failing check (each asserting the status, the evidence, the fix and the exit
//! code), a healthy submission and a healthy relay profile that pass every check, `--json`,
//! and in every run: no message reached DATA (the fake server records every command), the
//! probe ended with RSET and QUIT, and no secret or token was printed.

#[path = "support/dns.rs"]
mod dns;
#[path = "support/fake_graph.rs"]
mod fake_graph;
#[path = "support/fake_m365.rs"]
mod fake_m365;
#[path = "support/http.rs"]
mod http;
#[path = "support/legacy_tls.rs"]
mod legacy_tls;
#[path = "support/token_server.rs"]
mod token_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine as _;
use dns::{Answer, start_stub_dns};
use fake_m365::{FakeConfig, FakeM365, Phase, Rule};
use legacy_tls::{AfterStartTls, StartTlsFront, openssl_tls11, skipped};
use serde_json::{Value, json};
use token_server::{Reply, TokenServer};

const BIN: &str = env!("CARGO_BIN_EXE_m365send");
const MAILBOX: &str = "app@contoso.com";
const TENANT: &str = "contoso.onmicrosoft.com";
const TENANT_ID: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "cs-VALUE~doctor-4b1d-do-not-print";
const SECRET_ENV: &str = "M365SEND_DOCTOR_CLIENT_SECRET";
const RCPT: &str = "ops@contoso.com";

/// The DNS records of a well set up contoso.com.
fn healthy_dns() -> Vec<(&'static str, Answer)> {
    vec![
        (
            "contoso.com",
            Answer::Mx(vec![(0, "contoso-com.mail.protection.outlook.com".into())]),
        ),
        (
            "contoso.com",
            Answer::Txt(vec![
                "google-site-verification=abc".into(),
                "v=spf1 include:spf.protection.outlook.com -all".into(),
            ]),
        ),
        (
            "selector1._domainkey.contoso.com",
            Answer::Cname("selector1-contoso-com._domainkey.contoso.onmicrosoft.com".into()),
        ),
        (
            "selector2._domainkey.contoso.com",
            Answer::Cname("selector2-contoso-com._domainkey.contoso.onmicrosoft.com".into()),
        ),
        (
            "_dmarc.contoso.com",
            Answer::Txt(vec![
                "v=DMARC1; p=reject; rua=mailto:dmarc@contoso.com".into(),
            ]),
        ),
    ]
}

/// Replace the records of `name` of the answer's type (all of them for NXDOMAIN, NODATA
/// and silence) in a record list.
fn with(
    mut records: Vec<(&'static str, Answer)>,
    name: &'static str,
    answer: Answer,
) -> Vec<(&'static str, Answer)> {
    let whole = matches!(answer, Answer::NoData | Answer::NxDomain | Answer::Silent);
    let same_type = |a: &Answer| {
        whole
            || std::mem::discriminant(a) == std::mem::discriminant(&answer)
            || matches!(a, Answer::NoData | Answer::NxDomain)
    };
    records.retain(|(n, a)| *n != name || !same_type(a));
    records.push((name, answer));
    records
}

/// A JWT-shaped access token with these claims (unsigned: doctor only reads it).
fn jwt(claims: Value) -> String {
    let b = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.sig-doctor",
        b(json!({"alg": "none", "typ": "JWT"})),
        b(claims)
    )
}

/// The token Microsoft issues to a well set up app.
fn good_token() -> String {
    jwt(json!({
        "aud": "https://outlook.office365.com",
        "tid": TENANT_ID,
        "appid": CLIENT,
        "roles": ["SMTP.SendAsApp"],
        "exp": chrono_now() + 3600,
    }))
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A test directory with a configuration file.
struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    /// A configuration with `profile` (a TOML table body for [profiles.NAME]).
    fn new(name: &str, profile: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let toml = format!(
            "default_profile = \"{name}\"\ncache_dir = \"{}\"\nspool_dir = \"{}\"\n\
             dead_letter = \"{}\"\n\n[profiles.{name}]\n{profile}\n",
            p.join("cache").display(),
            p.join("spool").display(),
            p.join("dead.letter").display(),
        );
        let config = p.join("config.toml");
        std::fs::write(&config, toml).unwrap();
        Env { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `m365send -C FILE doctor ARGS`.
    async fn doctor(&self, args: &[&str]) -> Output {
        let child = tokio::process::Command::new(BIN)
            .arg("-C")
            .arg(&self.config)
            .arg("doctor")
            .args(args)
            .env(SECRET_ENV, SECRET)
            .env("HOME", self.dir.path())
            .env("XDG_CACHE_HOME", self.dir.path())
            .env("XDG_STATE_HOME", self.dir.path())
            .env_remove("M365SEND_CONFIG")
            .env_remove("M365SEND_LOG")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("doctor did not finish within 60 s")
            .unwrap()
    }

    /// `doctor --json ARGS`, parsed; also returns the exit code.
    async fn json(&self, args: &[&str]) -> (Value, Option<i32>) {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let o = self.doctor(&a).await;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}\nstderr: {}", stderr(&o)));
        (v, o.status.code())
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The check named `name` in a `--json` document.
fn check<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {doc:#}"))
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

/// Assert a check's status, that its evidence and fix contain the given words, and return it.
fn assert_check(doc: &Value, name: &str, status: &str, evidence: &[&str], fix: &[&str]) {
    let c = check(doc, name);
    assert_eq!(c["status"], status, "{name}: {c:#}");
    for e in evidence {
        assert!(
            text(&c["evidence"]).contains(e),
            "{name} evidence lacks {e:?}: {c:#}"
        );
    }
    for f in fix {
        assert!(text(&c["fix"]).contains(f), "{name} fix lacks {f:?}: {c:#}");
    }
}

/// The first failed check of a document.
fn first_failure(doc: &Value) -> String {
    doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "failed")
        .map(|c| text(&c["name"]))
        .unwrap_or_default()
}

/// No message reached DATA on any connection; every session that sent MAIL FROM ended with
/// RSET (unless the server hung up) and every session ended with QUIT.
fn assert_nothing_sent(server: &FakeM365) {
    assert!(server.messages().is_empty(), "a message was received");
    for (i, c) in server.connections().iter().enumerate() {
        for cmd in &c.commands {
            let verb = cmd
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_uppercase();
            assert!(
                verb != "DATA" && verb != "BDAT",
                "connection {i} sent {cmd:?}: {:?}",
                c.commands
            );
        }
        if c.commands.iter().any(|l| l.starts_with("MAIL FROM")) {
            let last_two: Vec<&str> = c
                .commands
                .iter()
                .rev()
                .take(2)
                .map(String::as_str)
                .collect();
            assert_eq!(
                last_two,
                vec!["QUIT", "RSET"],
                "connection {i}: {:?}",
                c.commands
            );
        }
    }
}

/// No secret or token in what doctor printed.
fn assert_clean(o: &Output, tokens: &[&str]) {
    let all = format!("{}{}", stdout(o), stderr(o));
    for s in [SECRET, "Bearer "].iter().chain(tokens) {
        assert!(!all.contains(s), "{s:?} leaked:\n{all}");
    }
}

/// The body of an app-only submission profile against the fake servers.
fn submit_profile(smtp: &FakeM365, tokens: &TokenServer, dns: SocketAddr) -> String {
    format!(
        "mode = \"submit\"\nmailbox = \"{MAILBOX}\"\ntenant = \"{TENANT}\"\nhelo = \"client.contoso.com\"\n\
         endpoint = {{ host = \"127.0.0.1\", port = {port}, dns_server = \"{dns}\" }}\n\
         tls = {{ ca_file = \"{ca}\" }}\n\
         timeouts = {{ connect = 5, command = 5, data_end = 5 }}\n\
         auth = {{ method = \"oauth\", authority = \"{authority}\", client_id = \"{CLIENT}\", \
         client_secret = {{ env = \"{SECRET_ENV}\" }} }}\n",
        port = smtp.port(),
        ca = smtp.ca_file().display(),
        authority = tokens.authority(),
    )
}

/// A relay profile through a certificate connector; `cert` = (certificate, key) files.
fn relay_profile(smtp: &FakeM365, cert: &(PathBuf, PathBuf), dns: SocketAddr) -> String {
    format!(
        "mode = \"relay\"\nsender = \"alerts@contoso.com\"\naccepted_domains = [\"contoso.com\"]\n\
         helo = \"web1.contoso.com\"\n\
         endpoint = {{ mx_host = \"127.0.0.1\", port = {port}, dns_server = \"{dns}\" }}\n\
         tls = {{ ca_file = \"{ca}\", client_cert = \"{c}\", client_key = \"{k}\" }}\n\
         timeouts = {{ connect = 5, command = 5, data_end = 5 }}\n",
        port = smtp.port(),
        ca = smtp.ca_file().display(),
        c = cert.0.display(),
        k = cert.1.display(),
    )
}

/// A submission setup whose token server hands out `token` and whose SMTP server accepts
/// `accepted` for the mailbox, with extra SMTP rules.
async fn submit_setup(
    token: Reply,
    accepted: &str,
    rules: Vec<Rule>,
    records: Vec<(&'static str, Answer)>,
) -> (FakeM365, TokenServer, Env) {
    let mut cfg = FakeConfig::submission().user(MAILBOX, accepted);
    for r in rules {
        cfg = cfg.rule(r);
    }
    let smtp = FakeM365::start(cfg).await;
    let tokens = TokenServer::scripted(vec![token]);
    let dns = start_stub_dns(records);
    let env = Env::new("app", &submit_profile(&smtp, &tokens, dns));
    (smtp, tokens, env)
}

#[tokio::test]
async fn a_healthy_submission_profile_passes_every_check() {
    let tok = good_token();
    let (smtp, tokens, env) =
        submit_setup(Reply::token(&tok, 3600, None), &tok, vec![], healthy_dns()).await;
    let o = env.doctor(&["--to", RCPT]).await;
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert_clean(&o, &[&tok]);
    // One line per check, in the order a person would want them.
    let order = [
        "config.file",
        "config.profile",
        "config.secrets",
        "config.ca_file",
        "dns.mx",
        "dns.spf",
        "dns.dkim",
        "dns.dmarc",
        "network.connect",
        "tls.starttls",
        "token",
        "smtp.ehlo",
        "smtp.auth",
        "smtp.mail_from",
        "smtp.rcpt_to",
        "files.spool",
        "files.queue",
        "files.dead_letter",
        "files.token_cache",
    ];
    let mut at = 0;
    for name in order {
        let line = out[at..]
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no line for {name} after position {at}:\n{out}"));
        assert!(line.trim_start().starts_with("passed"), "{line}\n{out}");
        at = out.find(line).unwrap();
    }
    for needle in [
        "contoso-com.mail.protection.outlook.com (Microsoft 365)",
        "includes spf.protection.outlook.com",
        "selector1._domainkey.contoso.com → selector1-contoso-com._domainkey.contoso.onmicrosoft.com",
        "policy reject",
        "connected in",
        "STARTTLS offered; TLS 1.3",
        "valid for 127.0.0.1 (verified)",
        "aud=https://outlook.office365.com",
        &format!("tid={TENANT_ID}"),
        "roles=SMTP.SendAsApp",
        "SIZE 157286400 bytes, PIPELINING yes, CHUNKING yes, SMTPUTF8 yes",
        "XOAUTH2 as app@contoso.com → 235 2.7.0 Authentication successful",
        "MAIL FROM:<app@contoso.com> → 250",
        "RCPT TO:<ops@contoso.com> → 250",
        "then RSET → 250",
        "contacts: the token endpoint",
        "0 failed, 0 warnings, 0 skipped. No message was sent.",
    ] {
        assert!(out.contains(needle), "report lacks {needle:?}:\n{out}");
    }
    assert_nothing_sent(&smtp);
    // The probe's session: EHLO, STARTTLS, EHLO, AUTH, MAIL, RCPT, RSET, QUIT — nothing more.
    let probe = smtp
        .connections()
        .into_iter()
        .find(|c| !c.commands.is_empty())
        .unwrap();
    let verbs: Vec<String> = probe
        .commands
        .iter()
        .map(|c| c.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        verbs,
        [
            "EHLO", "STARTTLS", "EHLO", "AUTH", "MAIL", "RCPT", "RSET", "QUIT"
        ]
    );
    assert_eq!(tokens.count(), 1);
    // A second run takes the token from the cache.
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(&doc, "token", "passed", &["from the cache"], &[]);
    assert_eq!(tokens.count(), 1, "the cached token was reused");
}

#[tokio::test]
async fn a_healthy_relay_profile_passes_every_check() {
    let smtp = FakeM365::start(FakeConfig::mx().require_client_cert()).await;
    let cert = smtp.client_cert_files("mail.contoso.com");
    let dns = start_stub_dns(with(
        healthy_dns(),
        "contoso.com",
        Answer::Txt(vec![
            "v=spf1 ip4:192.0.2.10 include:spf.protection.outlook.com -all".into(),
        ]),
    ));
    let env = Env::new("cron", &relay_profile(&smtp, &cert, dns));
    let (doc, code) = env.json(&["--to", RCPT]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["exit"], 0);
    assert_eq!(doc["summary"]["failed"], 0);
    assert_eq!(doc["summary"]["warning"], 0, "{doc:#}");
    for c in doc["checks"].as_array().unwrap() {
        assert!(c["status"] == "passed" || c["status"] == "skipped", "{c:#}");
        assert!(c["fix"].is_null(), "{c:#}");
    }
    assert_check(
        &doc,
        "config.client_certificate",
        "passed",
        &[
            "CN=mail.contoso.com",
            "the key matches",
            "mail.contoso.com is in accepted domain contoso.com",
        ],
        &[],
    );
    assert_check(
        &doc,
        "token",
        "skipped",
        &["mode relay does not log in"],
        &[],
    );
    assert_check(
        &doc,
        "smtp.auth",
        "skipped",
        &["the client certificate (relay connector)"],
        &[],
    );
    assert_check(
        &doc,
        "smtp.rcpt_to",
        "passed",
        &["RCPT TO:<ops@contoso.com> → 250"],
        &[],
    );
    assert_check(&doc, "files.token_cache", "skipped", &[], &[]);
    let conn = smtp
        .connections()
        .into_iter()
        .find(|c| !c.commands.is_empty())
        .unwrap();
    assert!(
        conn.client_cert.is_some(),
        "the client certificate was presented"
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn json_is_one_document_with_the_same_checks() {
    let tok = good_token();
    let (smtp, _tokens, env) = submit_setup(
        Reply::token(&tok, 3600, None),
        &tok,
        vec![],
        with(healthy_dns(), "_dmarc.contoso.com", Answer::NxDomain),
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "a warning is not a failure: {doc:#}");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["sent"], false);
    assert_eq!(doc["profiles"][0]["profile"], "app");
    assert_eq!(doc["profiles"][0]["mode"], "submit");
    let checks = doc["checks"].as_array().unwrap();
    for c in checks {
        for key in ["profile", "name", "status", "evidence", "fix", "exit"] {
            assert!(c.get(key).is_some(), "{key} missing: {c:#}");
        }
    }
    assert_check(
        &doc,
        "dns.dmarc",
        "warning",
        &["no DMARC record at _dmarc.contoso.com"],
        &["v=DMARC1; p=none"],
    );
    assert_check(&doc, "smtp.rcpt_to", "skipped", &["give --to ADDR"], &[]);
    assert_eq!(doc["summary"]["warning"], 1);
    assert_eq!(
        doc["summary"]["passed"].as_u64().unwrap()
            + doc["summary"]["skipped"].as_u64().unwrap()
            + 1,
        checks.len() as u64
    );
    // The text report has the same checks, one line each.
    let o = env.doctor(&[]).await;
    let out = stdout(&o);
    for c in checks {
        let name = text(&c["name"]);
        let line = out
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no line for {name}:\n{out}"));
        assert!(
            line.trim_start().starts_with(c["status"].as_str().unwrap()),
            "{line}"
        );
    }
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn wrong_client_secret() {
    let (smtp, tokens, env) = submit_setup(
        Reply::error(
            401,
            "invalid_client",
            Some(7000215),
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        ),
        "unused",
        vec![],
        healthy_dns(),
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(78), "{doc:#}");
    assert_eq!(first_failure(&doc), "token");
    assert_check(
        &doc,
        "token",
        "failed",
        &[
            "HTTP 401",
            "AADSTS7000215",
            "Invalid client secret provided",
        ],
        &["The client secret is wrong.", "Secret ID"],
    );
    assert_eq!(check(&doc, "token")["exit"], 78);
    assert_check(&doc, "smtp.auth", "skipped", &["no credentials"], &[]);
    assert_eq!(tokens.count(), 1);
    // The secret went to the token endpoint, and nowhere else.
    assert_eq!(tokens.requests()[0].field("client_secret"), Some(SECRET));
    assert!(!doc.to_string().contains(SECRET));
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn token_for_the_wrong_audience() {
    let graph = jwt(json!({
        "aud": "https://graph.microsoft.com",
        "tid": TENANT_ID,
        "appid": CLIENT,
        "roles": ["Mail.Send"],
        "exp": chrono_now() + 3600,
    }));
    let (smtp, tokens, env) = submit_setup(
        Reply::token(&graph, 3600, None),
        "only-an-exchange-token",
        vec![],
        healthy_dns(),
    )
    .await;
    let o = env.doctor(&[]).await;
    assert_eq!(o.status.code(), Some(78), "{}", stdout(&o));
    // A token acquired just now and refused is not replaced by another request.
    assert_eq!(tokens.count(), 1);
    assert_clean(&o, &[&graph]);
    let (doc, _) = env.json(&[]).await;
    assert_eq!(first_failure(&doc), "token");
    assert_check(
        &doc,
        "token",
        "failed",
        &[
            "aud=https://graph.microsoft.com",
            "the token is for https://graph.microsoft.com, not https://outlook.office365.com",
        ],
        &[
            "Remove auth.scope",
            "https://outlook.office365.com/.default",
        ],
    );
    // Microsoft 365 refuses such a token; the reply is quoted and explained.
    assert_check(
        &doc,
        "smtp.auth",
        "failed",
        &["535 5.7.3"],
        &["New-ServicePrincipal"],
    );
    assert!(
        stderr(&o).contains("doctor: 2 checks failed; the first is token"),
        "{}",
        stderr(&o)
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn a_stale_cached_token_is_replaced_once_as_a_send_would() {
    let first = good_token();
    let second = jwt(json!({
        "aud": "https://outlook.office365.com",
        "tid": TENANT_ID,
        "appid": CLIENT,
        "roles": ["SMTP.SendAsApp"],
        "exp": chrono_now() + 3599,
    }));
    // Microsoft 365 (the fake) accepts only the second token the endpoint hands out.
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, &second)).await;
    let tokens = TokenServer::scripted(vec![
        Reply::token(&first, 3600, None),
        Reply::token(&second, 3600, None),
    ]);
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new("app", &submit_profile(&smtp, &tokens, dns));
    // First run: `first` is acquired and refused. A token acquired just now is not replaced.
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_check(&doc, "token", "passed", &["acquired from"], &[]);
    assert_check(
        &doc,
        "smtp.auth",
        "failed",
        &["535 5.7.3"],
        &["New-ServicePrincipal"],
    );
    assert_eq!(tokens.count(), 1);
    // Second run: the cached `first` is refused and replaced once, as the sending path does.
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(&doc, "token", "passed", &["from the cache"], &[]);
    assert_check(
        &doc,
        "smtp.auth",
        "passed",
        &[
            "235 2.7.0",
            "the cached token was refused; a new one was acquired",
        ],
        &[],
    );
    assert_eq!(tokens.count(), 2);
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn token_without_the_role() {
    let bare = jwt(json!({
        "aud": "https://outlook.office365.com",
        "tid": TENANT_ID,
        "appid": CLIENT,
        "exp": chrono_now() + 3600,
    }));
    let (smtp, _tokens, env) = submit_setup(
        Reply::token(&bare, 3600, None),
        &bare,
        vec![],
        healthy_dns(),
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "token");
    assert_check(
        &doc,
        "token",
        "failed",
        &[
            "aud=https://outlook.office365.com",
            "no SMTP.SendAsApp role or SMTP.Send scope",
        ],
        &["SMTP.SendAsApp", "admin consent"],
    );
    assert!(!doc.to_string().contains(&bare));
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn token_from_another_tenant() {
    let other = jwt(json!({
        "aud": "https://outlook.office365.com",
        "tid": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
        "appid": CLIENT,
        "roles": ["SMTP.SendAsApp"],
        "exp": chrono_now() + 3600,
    }));
    let (smtp, _tokens, env) = submit_setup(
        Reply::token(&other, 3600, None),
        &other,
        vec![],
        healthy_dns(),
    )
    .await;
    // The profile names its tenant by id.
    let cfg = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("tenant = \"{TENANT}\""),
        &format!("tenant = \"{TENANT_ID}\""),
    );
    std::fs::write(&env.config, cfg).unwrap();
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(78), "{doc:#}");
    assert_eq!(first_failure(&doc), "token");
    assert_check(
        &doc,
        "token",
        "failed",
        &[&format!(
            "issued by tenant aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee, but the profile's tenant is {TENANT_ID}"
        )],
        &["Check auth.client_id and the tenant in profile \"app\""],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn queue_dead_letter_and_token_cache_are_reported() {
    let tok = good_token();
    let (smtp, _tokens, env) =
        submit_setup(Reply::token(&tok, 3600, None), &tok, vec![], healthy_dns()).await;
    // One message queued without connecting, made to look two hours old.
    let o = tokio::process::Command::new(BIN)
        .arg("-C")
        .arg(&env.config)
        .args(["-odq", "-i", RCPT])
        .env("HOME", env.dir.path())
        .env_remove("M365SEND_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = o.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let meta_dir = env.path("spool/meta");
    let meta = std::fs::read_dir(&meta_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut entry: Value = serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    entry["created"] = json!(chrono_now() - 7200);
    std::fs::write(&meta, entry.to_string()).unwrap();
    std::fs::write(env.path("dead.letter"), "From x\nSubject: lost\n\nbody\n").unwrap();
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "warnings only: {doc:#}");
    assert_check(
        &doc,
        "files.queue",
        "warning",
        &[
            "1 message waiting (1 of profile \"app\")",
            "waits for 2h 0m after 0 attempts",
        ],
        &[
            "m365send queue run",
            "systemctl list-timers m365send-queue.timer",
        ],
    );
    assert_check(
        &doc,
        "files.dead_letter",
        "warning",
        &["dead.letter: 27 bytes of undelivered mail"],
        &["send again what matters"],
    );
    assert_check(&doc, "files.spool", "passed", &["spool writable"], &[]);
    // A token cache others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("cache"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (doc, _) = env.json(&[]).await;
    assert_check(
        &doc,
        "files.token_cache",
        "warning",
        &["cache (mode 0755)"],
        &["Other users could read the tokens: chmod 700"],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn smtp_auth_disabled() {
    let tok = good_token();
    let (smtp, _tokens, env) = submit_setup(
        Reply::token(&tok, 3600, None),
        &tok,
        vec![Rule::reply(
            Phase::Auth,
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
        )],
        healthy_dns(),
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "smtp.auth");
    assert_check(
        &doc,
        "smtp.auth",
        "failed",
        &[
            "AUTH XOAUTH2 as app@contoso.com",
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
        ],
        &[
            "SMTP AUTH (client submission) is disabled for mailbox app@contoso.com",
            "Set-CASMailbox -Identity app@contoso.com -SmtpClientAuthenticationDisabled $false",
        ],
    );
    assert_check(&doc, "token", "passed", &[], &[]);
    assert_check(&doc, "smtp.mail_from", "skipped", &["not logged in"], &[]);
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn send_as_refused() {
    let tok = good_token();
    let (smtp, _tokens, env) = submit_setup(
        Reply::token(&tok, 3600, None),
        &tok,
        vec![Rule::reply(
            Phase::Mail,
            "550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        )],
        healthy_dns(),
    )
    .await;
    let (doc, code) = env.json(&["--to", RCPT]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "smtp.mail_from");
    assert_check(
        &doc,
        "smtp.mail_from",
        "failed",
        &[
            "MAIL FROM:<app@contoso.com> → 550 5.7.60 SMTP; Client does not have permissions to send as this sender",
        ],
        &[
            "Mailbox app@contoso.com may not send as app@contoso.com.",
            "Grant it Send As on that address, or set `sender` in profile \"app\".",
        ],
    );
    assert_check(
        &doc,
        "smtp.rcpt_to",
        "skipped",
        &["the sender was refused", "then RSET → 250"],
        &[],
    );
    assert_nothing_sent(&smtp);
    let conn = smtp
        .connections()
        .into_iter()
        .find(|c| !c.commands.is_empty())
        .unwrap();
    assert!(
        !conn.commands.iter().any(|c| c.starts_with("RCPT")),
        "{:?}",
        conn.commands
    );
}

/// A relay profile whose connector refuses the recipient with `reply`.
async fn relay_refusing(reply: &str) -> (FakeM365, Value, Option<i32>) {
    let smtp = FakeM365::start(FakeConfig::mx().rule(Rule::reply(Phase::Rcpt, reply))).await;
    let cert = smtp.client_cert_files("mail.contoso.com");
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new("cron", &relay_profile(&smtp, &cert, dns));
    let (doc, code) = env.json(&["--to", "someone@fabrikam.com"]).await;
    (smtp, doc, code)
}

#[tokio::test]
async fn relay_recipient_refused_tenant_attribution() {
    let (smtp, doc, code) =
        relay_refusing("550 5.7.64 TenantAttribution; Relay Access Denied").await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "smtp.rcpt_to");
    assert_check(
        &doc,
        "smtp.rcpt_to",
        "failed",
        &[
            "RCPT TO:<someone@fabrikam.com> → 550 5.7.64 TenantAttribution; Relay Access Denied",
            "then RSET → 250",
        ],
        &[
            "The relay connector did not recognise this host (TenantAttribution).",
            "its certificate name must match this host's client certificate (an accepted domain such as contoso.com)",
        ],
    );
    assert_check(
        &doc,
        "smtp.mail_from",
        "passed",
        &["MAIL FROM:<alerts@contoso.com> → 250"],
        &[],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn relay_recipient_refused_unable_to_relay() {
    let (smtp, doc, code) =
        relay_refusing("550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain").await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "smtp.rcpt_to");
    assert_check(
        &doc,
        "smtp.rcpt_to",
        "failed",
        &["550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain"],
        &[
            "The server does not relay for this host to someone@fabrikam.com",
            "Ms-Exch-SMTP-Accept-Any-Recipient",
        ],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn no_starttls() {
    let tok = good_token();
    let smtp = FakeM365::start(FakeConfig::submission().no_starttls().user(MAILBOX, &tok)).await;
    let tokens = TokenServer::scripted(vec![Reply::token(&tok, 3600, None)]);
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new("app", &submit_profile(&smtp, &tokens, dns));
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(69), "{doc:#}");
    assert_eq!(first_failure(&doc), "tls.starttls");
    assert_check(
        &doc,
        "tls.starttls",
        "failed",
        &["does not offer STARTTLS, and this mode requires TLS"],
        &["this is not Microsoft's endpoint", "inspect esmtp"],
    );
    assert_check(&doc, "smtp", "skipped", &["no session"], &[]);
    // No AUTH went over the plain connection.
    for c in smtp.connections() {
        assert!(c.auth.is_empty(), "{:?}", c.commands);
        assert!(
            !c.commands
                .iter()
                .any(|l| l.starts_with("AUTH") || l.starts_with("MAIL"))
        );
    }
    assert_nothing_sent(&smtp);
}

/// A port on a loopback address that nothing listens on: `port` itself when it can be bound
/// (and so is free) on 127.0.0.9, else None.
fn free_port_on_127_0_0_9(port: u16) -> Option<SocketAddr> {
    let addr: SocketAddr = format!("127.0.0.9:{port}").parse().unwrap();
    std::net::TcpListener::bind(addr).ok().map(|l| {
        drop(l);
        addr
    })
}

#[tokio::test]
async fn port_25_closed_names_the_blocking_and_the_alternatives() {
    let Some(addr) = free_port_on_127_0_0_9(25) else {
        eprintln!("SKIPPED: cannot bind 127.0.0.9:25 to prove it free (not root, or in use)");
        return;
    };
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new(
        "lab",
        &format!(
            "mode = \"direct\"\nsender = \"scanner@contoso.com\"\naccepted_domains = [\"contoso.com\"]\n\
             endpoint = {{ mx_host = \"{}\", dns_server = \"{dns}\" }}\n\
             timeouts = {{ connect = 5, command = 5 }}\n",
            addr.ip()
        ),
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(75), "{doc:#}");
    assert_eq!(first_failure(&doc), "network.connect");
    assert_check(
        &doc,
        "network.connect",
        "failed",
        &["127.0.0.9:25", "Connection refused"],
        &[
            "Many clouds (AWS, Azure, Google Cloud) and ISPs block outbound port 25",
            "submit on port 587",
            "Microsoft Graph over HTTPS (port 443)",
        ],
    );
    assert_check(&doc, "tls.starttls", "skipped", &[], &[]);
}

#[tokio::test]
async fn port_587_closed() {
    let Some(addr) = free_port_on_127_0_0_9(587) else {
        eprintln!("SKIPPED: cannot bind 127.0.0.9:587 to prove it free (not root, or in use)");
        return;
    };
    let tok = good_token();
    let tokens = TokenServer::scripted(vec![Reply::token(&tok, 3600, None)]);
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new(
        "app",
        &format!(
            "mode = \"submit\"\nmailbox = \"{MAILBOX}\"\ntenant = \"{TENANT}\"\n\
             endpoint = {{ host = \"{}\", dns_server = \"{dns}\" }}\n\
             timeouts = {{ connect = 5, command = 5 }}\n\
             auth = {{ method = \"oauth\", authority = \"{}\", client_id = \"{CLIENT}\", \
             client_secret = {{ env = \"{SECRET_ENV}\" }} }}\n",
            addr.ip(),
            tokens.authority()
        ),
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(75), "{doc:#}");
    assert_check(
        &doc,
        "network.connect",
        "failed",
        &["127.0.0.9:587", "Connection refused"],
        &[
            "Port 587 is blocked",
            "Microsoft Graph over HTTPS (port 443)",
        ],
    );
    // The token is checked all the same: it needs no mail server.
    assert_check(&doc, "token", "passed", &["roles=SMTP.SendAsApp"], &[]);
}

#[tokio::test]
async fn mx_not_microsoft() {
    let smtp = FakeM365::start(FakeConfig::mx()).await;
    // The relay follows the MX; "localhost" needs no DNS query to reach.
    let dns = start_stub_dns(with(
        healthy_dns(),
        "contoso.com",
        Answer::Mx(vec![(10, "localhost".into())]),
    ));
    let env = Env::new(
        "cron",
        &format!(
            "mode = \"relay\"\nsender = \"alerts@contoso.com\"\naccepted_domains = [\"contoso.com\"]\n\
             endpoint = {{ port = {}, dns_server = \"{dns}\" }}\ntls = {{ ca_file = \"{}\" }}\n\
             timeouts = {{ connect = 5, command = 5 }}\n",
            smtp.port(),
            smtp.ca_file().display()
        ),
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(68), "{doc:#}");
    assert_eq!(first_failure(&doc), "dns.mx");
    assert_check(
        &doc,
        "dns.mx",
        "failed",
        &["MX of contoso.com: 10 localhost: not Microsoft 365"],
        &[
            "contoso-com.mail.protection.outlook.com",
            "set endpoint.mx_host",
        ],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn spf_without_microsoft() {
    let tok = good_token();
    let (smtp, _tokens, env) = submit_setup(
        Reply::token(&tok, 3600, None),
        &tok,
        vec![],
        with(
            healthy_dns(),
            "contoso.com",
            Answer::Txt(vec!["v=spf1 include:_spf.example.net ~all".into()]),
        ),
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    // SPF is a warning, not a failure: sending works, receivers may distrust the mail.
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(
        &doc,
        "dns.spf",
        "warning",
        &[
            "contoso.com: \"v=spf1 include:_spf.example.net ~all\"",
            "no include:spf.protection.outlook.com",
        ],
        &["Add include:spf.protection.outlook.com to the SPF record of contoso.com"],
    );
    assert_nothing_sent(&smtp);
}

/// doctor on a fresh install: the package's configuration is config.example.toml with every
/// line commented out, so there is no profile. The fix says to define one in that file, not
/// "give --profile NAME" (there is none to name).
#[tokio::test]
async fn a_fresh_install_is_told_to_define_a_profile() {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let commented: String = example
        .lines()
        .map(|l| {
            if l.is_empty() || l.starts_with('#') {
                format!("{l}\n")
            } else {
                format!("# {l}\n")
            }
        })
        .collect();
    let env = Env::new("unused", "");
    std::fs::write(&env.config, commented).unwrap();
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(78), "{doc:#}");
    assert_check(
        &doc,
        "config.profile",
        "failed",
        &["no profile is defined"],
        &[
            &format!(
                "Uncomment and edit the profile that fits this host in {}",
                env.config.display()
            ),
            "m365send.toml(5)",
        ],
    );
    assert!(!text(&check(&doc, "config.profile")["fix"]).contains("--profile"));
}

/// The SPF fixes are sentences: one period at the end, never "..", whichever record is
/// missing or wrong.
#[tokio::test]
async fn spf_fixes_end_in_one_period() {
    let tok = good_token();
    for txt in [
        "v=spf1 include:_spf.example.net ~all",
        "google-site-verification=abc123",
    ] {
        let (smtp, _tokens, env) = submit_setup(
            Reply::token(&tok, 3600, None),
            &tok,
            vec![],
            with(healthy_dns(), "contoso.com", Answer::Txt(vec![txt.into()])),
        )
        .await;
        let (doc, _) = env.json(&[]).await;
        let spf = check(&doc, "dns.spf");
        assert_eq!(spf["status"], "warning", "{txt}: {spf:#}");
        let fix = spf["fix"].as_str().unwrap();
        assert!(
            fix.ends_with('.') && !fix.ends_with("..") && !fix.contains(".."),
            "{txt}: {fix}"
        );
        assert_nothing_sent(&smtp);
    }
}

#[tokio::test]
async fn spf_includes_are_followed() {
    let tok = good_token();
    let records = with(
        healthy_dns(),
        "contoso.com",
        Answer::Txt(vec!["v=spf1 include:_spf.contoso.com -all".into()]),
    );
    let mut records = records;
    records.push((
        "_spf.contoso.com",
        Answer::Txt(vec![
            "v=spf1 ip4:192.0.2.0/24 include:spf.protection.outlook.com -all".into(),
        ]),
    ));
    let (smtp, _tokens, env) =
        submit_setup(Reply::token(&tok, 3600, None), &tok, vec![], records).await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(
        &doc,
        "dns.spf",
        "passed",
        &[
            "\"v=spf1 include:_spf.contoso.com -all\"",
            "includes spf.protection.outlook.com",
        ],
        &[],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn relay_by_ip_needs_the_public_ip_in_spf() {
    let smtp = FakeM365::start(FakeConfig::mx()).await;
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new(
        "cron",
        &format!(
            "mode = \"relay\"\nsender = \"alerts@contoso.com\"\naccepted_domains = [\"contoso.com\"]\n\
             endpoint = {{ mx_host = \"127.0.0.1\", port = {}, dns_server = \"{dns}\" }}\n\
             tls = {{ ca_file = \"{}\" }}\ntimeouts = {{ connect = 5, command = 5 }}\n",
            smtp.port(),
            smtp.ca_file().display()
        ),
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(
        &doc,
        "dns.spf",
        "warning",
        &["includes spf.protection.outlook.com, lists no IP address"],
        &[
            "Add this host's public IP (ip4:ADDRESS)",
            "the connector recognises this host by IP",
        ],
    );
    assert_check(
        &doc,
        "smtp.auth",
        "skipped",
        &["this host's public IP"],
        &[],
    );
    assert_nothing_sent(&smtp);
}

/// A self-signed certificate for `name`, valid from `from` to `to` (year, month, day),
/// written to the test directory; (certificate, key).
fn certificate(
    env: &Env,
    name: &str,
    from: (i32, u8, u8),
    to: (i32, u8, u8),
) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let cert = p.self_signed(&key).unwrap();
    let (c, k) = (
        env.path(&format!("{name}.crt")),
        env.path(&format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test]
async fn certificate_expired() {
    let smtp = FakeM365::start(FakeConfig::mx()).await;
    let dns = start_stub_dns(healthy_dns());
    let placeholder = (PathBuf::from("/x.crt"), PathBuf::from("/x.key"));
    let env = Env::new("cron", &relay_profile(&smtp, &placeholder, dns));
    let cert = certificate(&env, "mail.contoso.com", (2020, 1, 1), (2021, 1, 1));
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("/x.crt", &cert.0.display().to_string())
        .replace("/x.key", &cert.1.display().to_string());
    std::fs::write(&env.config, text).unwrap();
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(78), "{doc:#}");
    assert_eq!(first_failure(&doc), "config.client_certificate");
    assert_check(
        &doc,
        "config.client_certificate",
        "failed",
        &["CN=mail.contoso.com", "expired 2021-01-01", "days ago"],
        &["Renew the certificate", "tls.client_cert"],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn certificate_name_outside_the_accepted_domains() {
    let smtp = FakeM365::start(FakeConfig::mx()).await;
    let cert = smtp.client_cert_files("relay.fabrikam.com");
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new("cron", &relay_profile(&smtp, &cert, dns));
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "config.client_certificate");
    assert_check(
        &doc,
        "config.client_certificate",
        "failed",
        &[
            "CN=relay.fabrikam.com",
            "names relay.fabrikam.com",
            "no name is in the accepted domains (contoso.com)",
        ],
        &[
            "Use a certificate whose subject or SAN is an accepted domain (e.g. mail.contoso.com)",
            "550 5.7.64",
            "Check the inbound connector",
        ],
    );
    assert_nothing_sent(&smtp);
}

#[tokio::test]
async fn unreadable_secret_file() {
    let tok = good_token();
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, &tok)).await;
    let tokens = TokenServer::scripted(vec![Reply::token(&tok, 3600, None)]);
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new("app", &submit_profile(&smtp, &tokens, dns));
    let secret = env.path("app.secret");
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("{{ env = \"{SECRET_ENV}\" }}"),
        &format!("{{ file = \"{}\" }}", secret.display()),
    );
    std::fs::write(&env.config, text).unwrap();
    // A missing file (as root, a file without read permission is still readable).
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(78), "{doc:#}");
    assert_eq!(first_failure(&doc), "config.secrets");
    assert_check(
        &doc,
        "config.secrets",
        "failed",
        &[
            &format!("auth.client_secret: cannot read {}", secret.display()),
            "No such file or directory",
        ],
        &[&format!("Create {} holding the secret", secret.display())],
    );
    assert_eq!(tokens.count(), 0, "no token request without a secret");
    assert_nothing_sent(&smtp);

    // Once it exists but every user can read it: a warning, and the secret is never shown.
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(
        &doc,
        "config.secrets",
        "warning",
        &["auth.client_secret (file", "mode 0644) readable"],
        &["readable by every user: chmod o-r"],
    );
    assert!(!doc.to_string().contains(SECRET));
}

#[tokio::test]
async fn no_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = tokio::process::Command::new(BIN)
        .args(["-C", missing.to_str().unwrap(), "doctor", "--json"])
        .env("HOME", dir.path())
        .env_remove("M365SEND_CONFIG")
        .output()
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(78));
    let doc: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_check(&doc, "config.file", "failed", &["nope.toml"], &[]);
    assert_eq!(doc["checks"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn all_profiles_are_checked_and_the_first_failure_decides() {
    let tok = good_token();
    let smtp = FakeM365::start(FakeConfig::submission().user(MAILBOX, &tok)).await;
    let tokens = TokenServer::scripted(vec![Reply::token(&tok, 3600, None)]);
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new("app", &submit_profile(&smtp, &tokens, dns));
    let mut toml = std::fs::read_to_string(&env.config).unwrap();
    toml.push_str(&format!(
        "\n[profiles.broken]\nmode = \"submit\"\nmailbox = \"{MAILBOX}\"\n\
         endpoint = {{ host = \"127.0.0.1\", port = {}, dns_server = \"{dns}\" }}\n\
         auth = {{ method = \"password\", password = {{ file = \"{}\" }} }}\n",
        smtp.port(),
        env.path("missing.password").display()
    ));
    std::fs::write(&env.config, toml).unwrap();
    let (doc, code) = env.json(&["--all"]).await;
    assert_eq!(code, Some(78), "{doc:#}");
    let profiles: Vec<String> = doc["profiles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| text(&p["profile"]))
        .collect();
    assert_eq!(profiles, ["app", "broken"]);
    let broken: Vec<&Value> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["profile"] == "broken" && c["status"] == "failed")
        .collect();
    assert_eq!(broken[0]["name"], "config.secrets", "{doc:#}");
    // --all with --profile is a usage error.
    let o = env.doctor(&["--all", "--profile", "app"]).await;
    assert_eq!(o.status.code(), Some(64), "{}", stdout(&o));
    // So is a recipient that is not an address, or that would smuggle a command.
    for bad in ["ops", "a@b.c>\r\nDATA", "a b@c.d"] {
        let o = env.doctor(&["--to", bad]).await;
        assert_eq!(o.status.code(), Some(64), "{bad:?}: {}", stdout(&o));
        assert!(stderr(&o).contains("doctor --to"), "{}", stderr(&o));
    }
    assert_nothing_sent(&smtp);
}

// ---- a server that speaks only TLS 1.1 --------------------------------------------------

#[tokio::test]
async fn a_tls_1_1_only_server_is_named_as_such() {
    let Some(openssl) = openssl_tls11().await else {
        skipped("a_tls_1_1_only_server_is_named_as_such");
        return;
    };
    let front = StartTlsFront::start(AfterStartTls::Proxy(openssl.addr)).await;
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new(
        "lab",
        &format!(
            "mode = \"relay\"\nsender = \"alerts@contoso.com\"\naccepted_domains = [\"contoso.com\"]\n\
             endpoint = {{ mx_host = \"127.0.0.1\", port = {}, dns_server = \"{dns}\" }}\n\
             timeouts = {{ connect = 5, command = 5 }}\n",
            front.port
        ),
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(69), "{doc:#}");
    assert_eq!(first_failure(&doc), "tls.starttls");
    assert_check(
        &doc,
        "tls.starttls",
        "failed",
        &["the server offers only TLS 1.1", "refused TLS 1.2 and 1.3"],
        &[
            "TLS 1.0 and 1.1 are retired",
            "upgrade that server or proxy to TLS 1.2",
        ],
    );
}

// ---- mode = "graph" ---------------------------------------------------------------------

/// A token for Microsoft Graph with these roles.
fn graph_token(roles: &[&str]) -> String {
    jwt(json!({
        "aud": "https://graph.microsoft.com",
        "tid": TENANT_ID,
        "appid": CLIENT,
        "roles": roles,
        "exp": chrono_now() + 3600,
    }))
}

/// A graph profile against the fake Graph, with its token endpoint handing out `token`.
fn graph_setup(
    token: &str,
    rules: Vec<fake_graph::Rule>,
) -> (fake_graph::FakeGraph, TokenServer, Env) {
    let graph = fake_graph::FakeGraph::start(fake_graph::Accept::Token(token.to_owned()), rules);
    let tokens = TokenServer::scripted(vec![Reply::token(token, 3600, None)]);
    let dns = start_stub_dns(healthy_dns());
    let env = Env::new(
        "g",
        &format!(
            "mode = \"graph\"\nmailbox = \"{MAILBOX}\"\ntenant = \"{TENANT}\"\n\
             endpoint = {{ host = \"127.0.0.1\", port = {port}, dns_server = \"{dns}\" }}\n\
             tls = {{ ca_file = \"{ca}\" }}\n\
             timeouts = {{ connect = 5, command = 5, data_end = 5 }}\n\
             auth = {{ method = \"oauth\", authority = \"{authority}\", client_id = \"{CLIENT}\", \
             client_secret = {{ env = \"{SECRET_ENV}\" }} }}\n",
            port = graph.port(),
            ca = graph.ca_file().display(),
            authority = tokens.authority(),
        ),
    );
    (graph, tokens, env)
}

/// Graph's 403 ErrorAccessDenied to sendMail (Mail.Send not granted, or an access policy).
fn access_denied() -> fake_graph::Rule {
    fake_graph::Rule::error(
        "POST sendMail",
        403,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )
}

/// Graph got exactly the probe: one sendMail, JSON, and sent nothing.
fn assert_graph_probe_only(graph: &fake_graph::FakeGraph) {
    assert_eq!(
        graph.shorts(),
        vec!["POST sendMail"],
        "{:?}",
        graph.shorts()
    );
    let r = &graph.requests()[0];
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let body: Value = serde_json::from_slice(&r.small_body).unwrap();
    assert_eq!(body["message"]["toRecipients"], json!([]));
    assert_eq!(body["saveToSentItems"], false);
    assert!(graph.sent().is_empty(), "Graph sent a message");
}

#[tokio::test]
async fn a_healthy_graph_profile_passes_every_check() {
    let tok = graph_token(&["Mail.Send"]);
    let (graph, _tokens, env) = graph_setup(&tok, vec![]);
    let o = env.doctor(&["--to", RCPT]).await;
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    assert_clean(&o, &[&tok]);
    let out = stdout(&o);
    assert!(
        out.contains("contacts: Microsoft Graph 127.0.0.1:"),
        "{out}"
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    for c in doc["checks"].as_array().unwrap() {
        assert!(c["status"] == "passed", "{c:#}");
    }
    assert_check(
        &doc,
        "tls.https",
        "passed",
        &["TLS 1.3", "valid for 127.0.0.1 (verified)"],
        &[],
    );
    assert_check(
        &doc,
        "token",
        "passed",
        &["aud=https://graph.microsoft.com", "roles=Mail.Send"],
        &[],
    );
    assert_check(
        &doc,
        "graph.sendmail",
        "passed",
        &[
            "POST /v1.0/users/app@contoso.com/sendMail without recipients → HTTP 400 ErrorInvalidRecipients",
            "nothing was sent",
        ],
        &[],
    );
    assert!(graph.sent().is_empty());
    assert!(
        graph.shorts().iter().all(|s| s == "POST sendMail"),
        "{:?}",
        graph.shorts()
    );
}

#[tokio::test]
async fn graph_access_denied() {
    let tok = graph_token(&["Mail.Send"]);
    let (graph, _tokens, env) = graph_setup(&tok, vec![access_denied()]);
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "graph.sendmail");
    assert_check(
        &doc,
        "graph.sendmail",
        "failed",
        &["HTTP 403 ErrorAccessDenied: Access is denied. Check credentials and try again."],
        &["Mail.Send"],
    );
    assert_graph_probe_only(&graph);
}

#[tokio::test]
async fn graph_token_without_mail_send() {
    let tok = graph_token(&["User.Read.All"]);
    let (graph, _tokens, env) = graph_setup(&tok, vec![]);
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "token");
    assert_check(
        &doc,
        "token",
        "failed",
        &["roles=User.Read.All", "no Mail.Send role or scope"],
        &[
            "add the Microsoft Graph permission Mail.Send",
            "admin consent",
        ],
    );
    assert!(graph.sent().is_empty());
}

/// Finding (medium, attacker's review): doctor printed what DNS, the server and certificates
/// say as it came: a TXT record (anyone who controls the domain's DNS, or spoofs an answer
/// over UDP, writes it), a reply text and a certificate name with terminal escapes (clear the
/// screen, set the title, hide text with U+202E) reached the terminal raw, and a record of
/// any size was printed whole. Now every evidence and fix is escaped (printable) and cut at
/// 2,000 characters (unit test `doctor::tests::evidence_is_escaped_and_bounded`), in the text
/// and in --json.
#[tokio::test]
async fn hostile_dns_replies_and_certificate_names_are_printed_escaped() {
    let hostile = "\x1b]0;owned\x07\x1b[2J\u{202e}evil\u{2028}";
    let smtp = FakeM365::start(FakeConfig::mx().rule(Rule::reply(
        Phase::Rcpt,
        "550 5.7.1 rejected \u{202e}gnp.exe\u{2066}",
    )))
    .await;
    let spf = format!("v=spf1 include:spf.protection.outlook.com {hostile} -all");
    let mut dns = with(healthy_dns(), "contoso.com", Answer::Txt(vec![spf]));
    dns = with(
        dns,
        "_dmarc.contoso.com",
        Answer::Txt(vec![format!("v=DMARC1; p=none; {hostile}")]),
    );
    let dns = start_stub_dns(dns);
    let placeholder = (PathBuf::from("/x.crt"), PathBuf::from("/x.key"));
    let env = Env::new("cron", &relay_profile(&smtp, &placeholder, dns));
    // A client certificate the fake server trusts, its CN hostile.
    let names = vec!["mail.contoso.com".to_owned()];
    let (cert, key, _, _) = smtp.pki.leaf(&names, &format!("mail.contoso.com{hostile}"));
    let (c, k) = (env.path("relay.crt"), env.path("relay.key"));
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("/x.crt", &c.display().to_string())
        .replace("/x.key", &k.display().to_string());
    std::fs::write(&env.config, config).unwrap();

    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n') || matches!(c, '\u{202e}' | '\u{2028}' | '\u{2066}')
    };
    for args in [&["--to", RCPT][..], &["--json", "--to", RCPT][..]] {
        let o = env.doctor(args).await;
        let out = stdout(&o);
        let err = stderr(&o);
        for (what, s) in [("stdout", &out), ("stderr", &err)] {
            assert!(
                !s.chars().any(unsafe_char),
                "{what} of doctor {args:?} has raw control or format characters:\n{s:?}"
            );
        }
        let shown = if args[0] == "--json" {
            let doc: Value = serde_json::from_str(&out).unwrap();
            [
                "dns.spf",
                "dns.dmarc",
                "config.client_certificate",
                "smtp.rcpt_to",
            ]
            .iter()
            .map(|n| text(&check(&doc, n)["evidence"]))
            .collect::<Vec<_>>()
            .join("\n")
        } else {
            out.clone()
        };
        assert!(shown.contains("\\x1b]0;owned\\x07"), "{shown}");
        assert!(shown.contains("\\u{202e}evil\\u{2028}"), "{shown}");
        assert!(
            shown.contains("rejected \\u{202e}gnp.exe\\u{2066}"),
            "{shown}"
        );
    }
}

/// A submit profile with `fallback = "graph"`: the fake SMTP server with `smtp_rules`, the fake
/// Graph with `graph_rules`, one CA file trusting both, and a token endpoint handing out the
/// token for the audience asked (the scope).
async fn fallback_setup(
    smtp_rules: Vec<Rule>,
    graph_rules: Vec<fake_graph::Rule>,
) -> (
    FakeM365,
    fake_graph::FakeGraph,
    TokenServer,
    Env,
    [String; 2],
) {
    let smtp_tok = good_token();
    let graph_tok = graph_token(&["Mail.Send"]);
    let mut cfg = FakeConfig::submission().user(MAILBOX, &smtp_tok);
    for r in smtp_rules {
        cfg = cfg.rule(r);
    }
    let smtp = FakeM365::start(cfg).await;
    let graph =
        fake_graph::FakeGraph::start(fake_graph::Accept::Token(graph_tok.clone()), graph_rules);
    let (st, gt) = (smtp_tok.clone(), graph_tok.clone());
    let tokens = TokenServer::start(move |req, _| {
        let graph = req
            .field("scope")
            .unwrap_or("")
            .contains("graph.microsoft.com");
        Reply::token(if graph { &gt } else { &st }, 3600, None)
    });
    let dns = start_stub_dns(healthy_dns());
    let profile = submit_profile(&smtp, &tokens, dns).replace(
        &format!("ca_file = \"{}\"", smtp.ca_file().display()),
        "ca_file = \"@CA@\"",
    );
    let env = Env::new(
        "app",
        &format!(
            "{profile}fallback = \"graph\"\ngraph_host = \"{}\"\n",
            graph.host()
        ),
    );
    let ca = env.path("ca.pem");
    std::fs::write(
        &ca,
        format!(
            "{}{}",
            std::fs::read_to_string(smtp.ca_file()).unwrap(),
            graph.ca_pem()
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("@CA@", &ca.display().to_string());
    std::fs::write(&env.config, text).unwrap();
    (smtp, graph, tokens, env, [smtp_tok, graph_tok])
}

const SMTP_AUTH_DISABLED: &str =
    "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.";

/// `fallback = "graph"` with SMTP AUTH disabled: the Graph path the fallback takes is probed
/// (fallback.*) and, as it works, the refusal is a warning and doctor exits 0 — mail flows.
/// With Graph refusing too, both fail and the SMTP refusal decides.
#[tokio::test]
async fn smtp_auth_disabled_with_the_graph_fallback() {
    let (smtp, graph, _tokens, env, toks) =
        fallback_setup(vec![Rule::reply(Phase::Auth, SMTP_AUTH_DISABLED)], vec![]).await;
    let o = env.doctor(&[]).await;
    assert_clean(&o, &[&toks[0], &toks[1]]);
    assert!(
        stdout(&o).contains("Microsoft Graph 127.0.0.1:") && stdout(&o).contains("the fallback's"),
        "{}",
        stdout(&o)
    );
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(
        &doc,
        "smtp.auth",
        "warning",
        &["535 5.7.139", "mail goes through the Graph fallback"],
        &["Set-CASMailbox"],
    );
    assert_check(
        &doc,
        "fallback.token",
        "passed",
        &["aud=https://graph.microsoft.com", "roles=Mail.Send"],
        &[],
    );
    assert_check(
        &doc,
        "fallback.graph.sendmail",
        "passed",
        &["HTTP 400 ErrorInvalidRecipients", "nothing was sent"],
        &[],
    );
    assert_nothing_sent(&smtp);
    assert!(graph.sent().is_empty());

    let (smtp, graph, _tokens, env, _) = fallback_setup(
        vec![Rule::reply(Phase::Auth, SMTP_AUTH_DISABLED)],
        vec![access_denied()],
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_eq!(first_failure(&doc), "smtp.auth");
    assert_check(&doc, "smtp.auth", "failed", &["535 5.7.139"], &[]);
    assert_check(
        &doc,
        "fallback.graph.sendmail",
        "failed",
        &["HTTP 403 ErrorAccessDenied"],
        &["Mail.Send"],
    );
    assert_nothing_sent(&smtp);
    assert_graph_probe_only(&graph);
}

/// A 5.7.139 that is not SMTP AUTH being disabled (security defaults lock the user) does not
/// send mail to Graph, so doctor does not say it would: the refusal stays a failure.
#[tokio::test]
async fn a_5_7_139_the_fallback_does_not_answer_stays_a_failure() {
    let (smtp, _graph, _tokens, env, _) = fallback_setup(
        vec![Rule::reply(
            Phase::Auth,
            "535 5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy.",
        )],
        vec![],
    )
    .await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(77), "{doc:#}");
    assert_check(&doc, "smtp.auth", "failed", &["security defaults"], &[]);
    assert_check(&doc, "fallback.graph.sendmail", "passed", &[], &[]);
    assert_nothing_sent(&smtp);
}

/// While SMTP AUTH works, a fallback that would fail is a warning: mail flows today, and the
/// warning says it would stop the day SMTP AUTH is turned off.
#[tokio::test]
async fn a_broken_graph_fallback_is_a_warning_while_smtp_works() {
    let (smtp, graph, _tokens, env, _) = fallback_setup(vec![], vec![access_denied()]).await;
    let (doc, code) = env.json(&[]).await;
    assert_eq!(code, Some(0), "{doc:#}");
    assert_check(&doc, "smtp.auth", "passed", &[], &[]);
    assert_check(
        &doc,
        "fallback.graph.sendmail",
        "warning",
        &["HTTP 403 ErrorAccessDenied", "the day it is turned off"],
        &["Mail.Send"],
    );
    assert_nothing_sent(&smtp);
    assert_graph_probe_only(&graph);
}
