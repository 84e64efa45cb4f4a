//! `m365send doctor`: find what is wrong with a profile before the first message fails.
//!
//! Owns: the ordered list of checks (one file per group), each with its status (passed,
//! warning, failed, skipped), the evidence (what was seen) and, for a failure or a warning,
//! the fix; their text and JSON rendering; and the exit code (0 when nothing failed, else the
//! sysexits code of the first failure).
//!
//! Must not: send a message (the SMTP probe ends with RSET and QUIT before DATA), print what
//! it saw outside raw (evidence is escaped and bounded where it is rendered: DNS records,
//! replies and certificate names may hold terminal escapes and be huge), print a
//! secret (secret sources are resolved and dropped; token claims are decoded, the token is
//! never shown), or hold any step's logic: the route, the resolver, the credentials, the
//! session settings and every explanation of a reply or an identity-platform error come from
//! `route`, `auth`, `transport::smtp`, `smtp` and `explain`.
//!
//! What it contacts, in order: the DNS (the profile's `endpoint.dns_server`, else the system
//! resolver) for the sender domain's MX, SPF, DKIM and DMARC records; the mail endpoint (TCP
//! connect, then EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO with `--to`, RSET, QUIT); for an
//! OAuth profile, the token endpoint (only when no valid token is cached).
//!
//! Groups, in the order a person would want them:
//! 1. `setup`: configuration file, profile, secret sources, certificates (config.*);
//! 2. `dns`: MX, SPF, DKIM, DMARC of the sender domain (dns.*);
//! 3. `probe`: TCP connect (network.*);
//! 4. `probe`: STARTTLS and the negotiated TLS (tls.*; `graph`: the HTTPS handshake);
//! 5. `token`: the OAuth access token's claims (token);
//! 6. `probe` again on the same connection: EHLO, AUTH, MAIL FROM, RCPT TO (smtp.*;
//!    `graph`: the sendMail probe);
//!    `fallback`, for a submit profile with `fallback = "graph"`: the Graph path the
//!    fallback would take, probed as for a graph profile (fallback.*);
//! 7. `files`: spool, queue, dead letter, token cache (files.*).
//!
//! The README's "When it does not work" lists the same seven groups for the user.

mod cert;
mod dns;
mod fallback;
mod files;
mod graph;
mod legacy_tls;
mod probe;
mod setup;
mod token;

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

use crate::config::{Config, Mode, Profile};
use crate::exit::{Exit, Failure};
use crate::message::Envelope;
use crate::route::{AuthKind, Endpoint};

/// What `m365send doctor` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// `--config` / `-C`.
    pub config: Option<&'a Path>,
    /// `--profile`.
    pub profile: Option<&'a str>,
    /// `--all`: every profile.
    pub all: bool,
    /// `--to ADDR`: also ask the server about this recipient (RCPT TO, then RSET).
    pub to: Option<String>,
    /// `--json`.
    pub json: bool,
    /// `-v`: the SMTP transcript (secrets redacted) on stderr.
    pub verbose: u8,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passed,
    Warning,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Warning => "warning",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One check: what was looked at, what was seen, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Stable name, `group.what`: "dns.spf", "smtp.auth".
    pub name: &'static str,
    pub status: Status,
    /// What was seen (never a secret), one line.
    pub evidence: String,
    /// For a failure or a warning: what to do.
    pub fix: Option<String>,
    /// For a failure: the sysexits code it means.
    pub exit: Option<Exit>,
    /// `smtp.auth` refused in a way that sends a `fallback = "graph"` profile to Graph
    /// (`transport::graph::graph_call`; the Mail.Send a 5.7.3 also needs is what
    /// `fallback.graph.sendmail` proves).
    pub calls_for_graph: bool,
}

impl Check {
    pub fn passed(name: &'static str, evidence: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Passed,
            evidence: evidence.into(),
            fix: None,
            exit: None,
            calls_for_graph: false,
        }
    }
    pub fn warning(
        name: &'static str,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Warning,
            evidence: evidence.into(),
            fix: Some(fix.into()),
            exit: None,
            calls_for_graph: false,
        }
    }
    pub fn failed(
        name: &'static str,
        exit: Exit,
        evidence: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: Status::Failed,
            evidence: evidence.into(),
            fix: Some(fix.into()),
            exit: Some(exit),
            calls_for_graph: false,
        }
    }
    pub fn skipped(name: &'static str, why: impl Into<String>) -> Check {
        Check {
            name,
            status: Status::Skipped,
            evidence: why.into(),
            fix: None,
            exit: None,
            calls_for_graph: false,
        }
    }
    /// A failure from a step's own error: its first line is the evidence, the lines after it
    /// (the catalogue's meaning and advice, where the step words them) the fix, else
    /// `fallback`.
    pub fn from_failure(name: &'static str, f: &Failure, fallback: &str) -> Check {
        let (evidence, fix) = split_failure(&f.message);
        Check::failed(
            name,
            f.exit,
            evidence,
            fix.unwrap_or_else(|| fallback.to_owned()),
        )
    }
}

/// The longest evidence or fix shown, in characters: a DNS record or a server's reply may be
/// tens of kilobytes.
const MAX_SHOWN: usize = 2000;

/// Text seen outside (DNS records, server replies, certificate names, token claims) as it is
/// shown, in the text report and in JSON alike: control and format characters escaped
/// (no terminal escape sequence, no reordered text), at most [`MAX_SHOWN`] characters.
fn shown(s: &str) -> String {
    crate::printable::excerpt(s, MAX_SHOWN)
}

/// A step's error message → (first line, the rest joined into one line).
pub fn split_failure(message: &str) -> (String, Option<String>) {
    let mut lines = message.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("").to_owned();
    let rest: Vec<&str> = lines.collect();
    (first, (!rest.is_empty()).then(|| rest.join(" ")))
}

/// The checks of one profile.
#[derive(Debug, Clone)]
pub struct ProfileReport {
    /// None when no profile could be chosen (no configuration, a bad file).
    pub profile: Option<String>,
    pub mode: Option<Mode>,
    /// What doctor contacts for this profile, for the header.
    pub contacts: Vec<String>,
    pub checks: Vec<Check>,
}

/// Everything doctor found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub profiles: Vec<ProfileReport>,
}

impl Report {
    fn checks(&self) -> impl Iterator<Item = &Check> {
        self.profiles.iter().flat_map(|p| p.checks.iter())
    }
    /// The first failed check, in the order shown.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks().find(|c| c.status == Status::Failed)
    }
    /// 0 when nothing failed, else the sysexits code of the first failure.
    pub fn exit(&self) -> Exit {
        self.first_failure()
            .map(|c| c.exit.unwrap_or(Exit::Unavailable))
            .unwrap_or(Exit::Ok)
    }
    fn count(&self, s: Status) -> usize {
        self.checks().filter(|c| c.status == s).count()
    }

    /// The human-readable report: per profile a header, what is contacted, one line per
    /// check (the fix indented under a failure or warning), and a summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let width = self.checks().map(|c| c.name.len()).max().unwrap_or(0);
        for p in &self.profiles {
            match (&p.profile, p.mode) {
                (Some(name), Some(mode)) => {
                    let _ = writeln!(
                        s,
                        "m365send doctor: profile \"{}\" ({})",
                        shown(name),
                        mode.as_str()
                    );
                }
                _ => s.push_str("m365send doctor\n"),
            }
            for c in &p.contacts {
                let _ = writeln!(s, "  contacts: {}", shown(c));
            }
            s.push('\n');
            for c in &p.checks {
                let _ = writeln!(
                    s,
                    "  {:<7}  {:<width$}  {}",
                    c.status.as_str(),
                    c.name,
                    shown(&c.evidence)
                );
                if let Some(fix) = &c.fix {
                    let _ = writeln!(s, "  {:<7}  {:<width$}  fix: {}", "", "", shown(fix));
                }
            }
            s.push('\n');
        }
        let warnings = self.count(Status::Warning);
        let _ = write!(
            s,
            "{} passed, {} failed, {warnings} warning{}, {} skipped. No message was sent.",
            self.count(Status::Passed),
            self.count(Status::Failed),
            if warnings == 1 { "" } else { "s" },
            self.count(Status::Skipped),
        );
        if let Some(f) = self.first_failure() {
            let exit = self.exit();
            let _ = write!(
                s,
                " Exit {} ({}) for the first failure, {}.",
                exit.code(),
                crate::explain::sysexits_name(exit),
                f.name
            );
        }
        s.push('\n');
        s
    }

    /// One JSON document: `{"version":1,"exit":N,"sent":false,"summary":{...},"checks":[
    /// {"profile","name","status","evidence","fix","exit"}, ...]}`.
    pub fn to_json(&self) -> String {
        let checks: Vec<serde_json::Value> = self
            .profiles
            .iter()
            .flat_map(|p| {
                p.checks.iter().map(move |c| {
                    serde_json::json!({
                        "profile": p.profile.as_deref().map(shown),
                        "name": c.name,
                        "status": c.status.as_str(),
                        "evidence": shown(&c.evidence),
                        "fix": c.fix.as_deref().map(shown),
                        "exit": c.exit.map(Exit::code),
                    })
                })
            })
            .collect();
        let profiles: Vec<serde_json::Value> = self
            .profiles
            .iter()
            .map(|p| {
                serde_json::json!({
                    "profile": p.profile.as_deref().map(shown),
                    "mode": p.mode.map(Mode::as_str),
                    "contacts": p.contacts.iter().map(|c| shown(c)).collect::<Vec<_>>(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "version": 1,
            "exit": self.exit().code(),
            "sent": false,
            "summary": {
                "passed": self.count(Status::Passed),
                "warning": self.count(Status::Warning),
                "failed": self.count(Status::Failed),
                "skipped": self.count(Status::Skipped),
            },
            "profiles": profiles,
            "checks": checks,
        });
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".to_owned());
        text.push('\n');
        text
    }
}

/// What a profile's checks share: the configuration, the profile, the envelope sender the
/// probe uses, and `--to`.
pub(crate) struct Ctx<'a> {
    pub config: &'a Config,
    pub profile: &'a Profile,
    /// The envelope sender the profile's mail uses (`sender`, else the mailbox), if any.
    pub sender: Option<String>,
    pub to: Option<&'a str>,
    pub verbose: u8,
}

impl Ctx<'_> {
    /// The sender's domain, whose SPF, DKIM and DMARC records matter (`dns.mx` looks up
    /// `endpoint.mx_domain` instead when it is set).
    pub fn domain(&self) -> Option<String> {
        self.sender
            .as_deref()
            .and_then(crate::address::domain_of)
            .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
    }
    pub fn envelope(&self) -> Envelope {
        Envelope {
            sender: self.sender.clone().unwrap_or_default(),
            recipients: self.to.map(|t| vec![t.to_owned()]).unwrap_or_default(),
            dsn: Default::default(),
        }
    }
}

/// `m365send doctor`: run the checks, print them (text or JSON), and return the exit code of
/// the first failure as the error (its message says which check; the report is on stdout).
pub fn run(opts: &Options<'_>, out: &mut dyn Write) -> Result<(), Failure> {
    if let Some(to) = &opts.to {
        let why = if to.contains('@') {
            crate::address::path_problem(to)
        } else {
            Some("has no domain (give a whole address, local@domain)")
        };
        if let Some(why) = why {
            return Err(Failure::usage(format!(
                "doctor --to {to:?}: the address {why}"
            )));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Exit::OsErr, format!("cannot start the async runtime: {e}")))?;
    let report = runtime.block_on(diagnose(opts));
    let text = if opts.json {
        report.to_json()
    } else {
        report.to_text()
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Failure::io(format!("cannot write the doctor report: {e}")))?;
    match report.first_failure() {
        None => Ok(()),
        Some(first) => {
            let failed = report.count(Status::Failed);
            Err(Failure::new(
                report.exit(),
                format!(
                    "doctor: {failed} check{} failed; the first is {}: {}",
                    if failed == 1 { "" } else { "s" },
                    first.name,
                    shown(&first.evidence)
                ),
            ))
        }
    }
}

/// Every check for the profiles asked for.
pub async fn diagnose(opts: &Options<'_>) -> Report {
    if opts.all && opts.profile.is_some() {
        return config_only(Check::failed(
            "config.profile",
            Exit::Usage,
            "--all and --profile were both given",
            "Give --profile NAME for one profile, or --all for every profile.",
        ));
    }
    let (config, file_check) = match setup::config_file(opts.config) {
        Ok(found) => found,
        Err(check) => return config_only(check),
    };
    let names: Vec<Option<String>> = if opts.all {
        config.profiles.keys().cloned().map(Some).collect()
    } else {
        vec![opts.profile.map(str::to_owned)]
    };
    if names.is_empty() {
        return config_only(Check::failed(
            "config.profile",
            Exit::Config,
            format!(
                "{} defines no profile",
                config
                    .path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            "Add a [profiles.NAME] section (see config.example.toml).",
        ));
    }
    let mut report = Report::default();
    for name in names {
        let mut checks = vec![file_check.clone()];
        let profile = match setup::profile(&config, name.as_deref(), opts.all) {
            Ok((profile, check)) => {
                checks.push(check);
                profile
            }
            Err(check) => {
                checks.push(check);
                report.profiles.push(ProfileReport {
                    profile: name,
                    mode: None,
                    contacts: Vec::new(),
                    checks,
                });
                continue;
            }
        };
        let ctx = Ctx {
            config: &config,
            profile: &profile,
            sender: profile
                .sender
                .clone()
                .or_else(|| profile.mailbox.clone())
                .map(|s| crate::config::bare_address(&s)),
            to: opts.to.as_deref(),
            verbose: opts.verbose,
        };
        checks.extend(profile_checks(&ctx).await);
        report.profiles.push(ProfileReport {
            profile: Some(profile.name.clone()),
            mode: Some(profile.mode),
            contacts: contacts(&ctx),
            checks,
        });
    }
    report
}

fn config_only(check: Check) -> Report {
    Report {
        profiles: vec![ProfileReport {
            profile: None,
            mode: None,
            contacts: Vec::new(),
            checks: vec![check],
        }],
    }
}

/// The checks after the configuration file and the profile, in order.
async fn profile_checks(ctx: &Ctx<'_>) -> Vec<Check> {
    let mut checks = setup::profile_files(ctx);
    checks.extend(dns::checks(ctx).await);
    let mut probed = probe::checks(ctx).await;
    let fallback = if fallback::applies(ctx.profile) {
        fallback::checks(ctx, &mut probed).await
    } else {
        Vec::new()
    };
    checks.extend(probed);
    checks.extend(fallback);
    checks.extend(files::checks(ctx));
    checks
}

/// What doctor contacts for this profile, for the report header (documented in README).
fn contacts(ctx: &Ctx<'_>) -> Vec<String> {
    let p = ctx.profile;
    let dns = match p.endpoint.dns_server {
        Some(a) => format!("DNS server {a}"),
        None => "the system's DNS resolver".to_owned(),
    };
    let mut v = Vec::new();
    if let Some(d) = ctx.domain() {
        v.push(format!(
            "{dns} for the MX, SPF, DKIM and DMARC records of {d}"
        ));
    }
    if p.auth_method() == crate::config::AuthMethod::OAuth
        && !p.auth.token.is_set()
        && !matches!(p.mode, Mode::Relay | Mode::Direct)
        && let Ok(s) = crate::auth::OAuthSettings::from_profile(p)
    {
        v.push(format!(
            "the token endpoint {} (only when no valid token is cached)",
            s.token_endpoint()
        ));
    }
    if p.mode == Mode::Graph || fallback::applies(p) {
        let host = crate::route::graph_host(p)
            .map(|(h, _)| h.to_string())
            .unwrap_or_else(|_| "the Graph host".to_owned());
        v.push(format!(
            "Microsoft Graph {host}{} (TCP connect, a TLS handshake, then POST sendMail with a \
             message without recipients, which Graph refuses: nothing is sent)",
            if p.mode == Mode::Graph {
                ""
            } else {
                ", the fallback's"
            }
        ));
        if p.mode == Mode::Graph {
            return v;
        }
    }
    let relay_like = matches!(p.mode, Mode::Relay | Mode::Direct);
    let port = p
        .endpoint
        .port
        .unwrap_or(crate::route::default_port(p.mode));
    let endpoint = match (&p.endpoint.mx_host, &p.endpoint.host, relay_like) {
        (Some(h), _, true) | (_, Some(h), _) => crate::route::Host {
            name: h.clone(),
            port,
            preference: None,
            addrs: Vec::new(),
        }
        .to_string(),
        (None, None, true) => format!("the MX host of the sender domain, port {port}"),
        _ => format!("{}:{port}", crate::route::default_host(p.mode, p.cloud)),
    };
    v.push(format!(
        "the mail server {endpoint} (TCP connect; then EHLO, STARTTLS, {}MAIL FROM, {}RSET, QUIT: \
         never DATA, no message is sent)",
        if relay_like { "" } else { "AUTH, " },
        if ctx.to.is_some() { "RCPT TO, " } else { "" },
    ));
    v
}

/// How the route authenticates, in words, for evidence lines.
pub(crate) fn auth_words(endpoint: &Endpoint) -> &'static str {
    match (endpoint.auth, endpoint.mode, &endpoint.client_cert) {
        (AuthKind::OAuth, _, _) => "OAuth2 (XOAUTH2)",
        (AuthKind::Password, _, _) => "a password (AUTH LOGIN/PLAIN)",
        (AuthKind::None, Mode::Relay, Some(_)) => "the client certificate (relay connector)",
        (AuthKind::None, Mode::Relay, None) => "this host's public IP (relay connector)",
        (AuthKind::None, _, _) => "nothing (direct send)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Check>) -> Report {
        Report {
            profiles: vec![ProfileReport {
                profile: Some("app".into()),
                mode: Some(Mode::Submit),
                contacts: vec!["the mail server smtp.office365.com".into()],
                checks,
            }],
        }
    }

    #[test]
    fn exit_is_the_first_failure() {
        let r = report(vec![
            Check::passed("config.file", "ok"),
            Check::warning("dns.spf", "no SPF", "add one"),
            Check::failed("token.claims", Exit::NoPerm, "no role", "consent"),
            Check::failed("smtp.auth", Exit::TempFail, "421", "later"),
        ]);
        assert_eq!(r.exit(), Exit::NoPerm);
        let healthy = report(vec![Check::passed("a.b", "x"), Check::skipped("c.d", "y")]);
        assert_eq!(healthy.exit(), Exit::Ok);
    }

    #[test]
    fn text_has_one_line_per_check_and_the_fix_under_it() {
        let r = report(vec![
            Check::passed("config.file", "/etc/m365send/config.toml"),
            Check::failed(
                "smtp.auth",
                Exit::NoPerm,
                "535 5.7.139 x",
                "Enable SMTP AUTH.",
            ),
        ]);
        let t = r.to_text();
        assert!(
            t.contains("  passed   config.file  /etc/m365send/config.toml\n"),
            "{t}"
        );
        assert!(t.contains("  failed   smtp.auth    535 5.7.139 x\n"), "{t}");
        assert!(
            t.contains("\n                        fix: Enable SMTP AUTH.\n"),
            "{t}"
        );
        assert!(t.contains("1 passed, 1 failed, 0 warnings, 0 skipped. No message was sent."));
        assert!(t.contains("Exit 77 (EX_NOPERM) for the first failure, smtp.auth."));
    }

    #[test]
    fn json_document() {
        let r = report(vec![Check::warning("dns.dmarc", "none", "add one")]);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["exit"], 0);
        assert_eq!(v["sent"], false);
        assert_eq!(v["checks"][0]["name"], "dns.dmarc");
        assert_eq!(v["checks"][0]["status"], "warning");
        assert_eq!(v["checks"][0]["fix"], "add one");
        assert_eq!(v["checks"][0]["profile"], "app");
        assert_eq!(v["summary"]["warning"], 1);
    }

    /// Evidence from outside is escaped and bounded in both renderings.
    #[test]
    fn evidence_is_escaped_and_bounded() {
        let huge = format!("v=spf1 \x1b[2J\u{202e}{}", "x".repeat(100_000));
        let r = report(vec![Check::warning("dns.spf", huge, "fix \x07 it")]);
        let t = r.to_text();
        assert!(
            !t.contains('\x1b') && !t.contains('\u{202e}') && !t.contains('\x07'),
            "{t}"
        );
        assert!(t.contains("v=spf1 \\x1b[2J\\u{202e}xxx"), "{t}");
        assert!(t.contains("xxx…\n"), "{}", t.len());
        assert!(t.len() < 3_000, "{}", t.len());
        let j = r.to_json();
        assert!(!j.contains('\u{202e}') && j.len() < 3_000, "{}", j.len());
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert!(
            v["checks"][0]["evidence"]
                .as_str()
                .unwrap()
                .starts_with("v=spf1 \\x1b[2J")
        );
        assert_eq!(v["checks"][0]["fix"], "fix \\x07 it");
    }

    #[test]
    fn failure_split() {
        let (e, f) = split_failure("first line.\n  Meaning.\n  Advice.");
        assert_eq!(e, "first line.");
        assert_eq!(f.as_deref(), Some("Meaning. Advice."));
        assert_eq!(split_failure("only").1, None);
    }
}
