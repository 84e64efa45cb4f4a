//! Group 1, configuration: the file found and its permissions, the profile chosen and why,
//! every secret source readable (resolved and dropped, never shown), and the certificate
//! files: readable, the key matching, days to expiry, and for relay the name a certificate
//! connector needs (an accepted domain). Must not: show a secret (each is resolved and
//! dropped), or read a certificate or key another way than the sending path does (its
//! loaders, with `trust`'s checks).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;

use super::{Check, Ctx, cert};
use crate::config::{self, Config, Mode, Profile};
use crate::exit::Exit;
use crate::status::{EnhancedCode, Reply};

/// `config.file`: find and read the configuration the way every command does. Err: the
/// failed check (nothing else can be checked).
pub fn config_file(explicit: Option<&Path>) -> Result<(Config, Check), Check> {
    let fix = "Fix the file as the message says; config.example.toml documents every key.";
    let config = match config::load(explicit) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(Check::from_failure(
                "config.file",
                &config::not_found(),
                fix,
            ));
        }
        Err(f) => return Err(Check::from_failure("config.file", &f, fix)),
    };
    let Some(path) = config.path.clone() else {
        return Ok((config, Check::passed("config.file", "(built in)")));
    };
    let how = if explicit.is_some() {
        "given by --config"
    } else if std::env::var_os(config::CONFIG_ENV).is_some_and(|v| !v.is_empty()) {
        "named by $M365SEND_CONFIG"
    } else {
        "the first found of the search path"
    };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            return Err(Check::failed(
                "config.file",
                Exit::Config,
                format!("{}: {e}", path.display()),
                fix,
            ));
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    let evidence = format!(
        "{} ({how}), {} profile{}, mode {mode:04o}, owner uid {}",
        path.display(),
        config.profiles.len(),
        if config.profiles.len() == 1 { "" } else { "s" },
        meta.uid()
    );
    let check = if mode & 0o022 != 0 {
        Check::warning(
            "config.file",
            evidence,
            format!(
                "Others can change it (where mail goes, which secrets are read): chmod go-w {}",
                path.display()
            ),
        )
    } else {
        Check::passed("config.file", evidence)
    };
    Ok((config, check))
}

/// `config.profile`: the profile chosen and why.
pub fn profile(config: &Config, name: Option<&str>, all: bool) -> Result<(Profile, Check), Check> {
    let profile = config.select_profile(name, None).map_err(|f| {
        // A fresh install (the package's file, all commented out) has no profile to name.
        let fix = if config.profiles.is_empty() {
            format!(
                "Uncomment and edit the profile that fits this host in {} (and \
                 default_profile), delete the others, then run doctor again; every key is \
                 explained in config.example.toml and m365send.toml(5).",
                config
                    .path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "the configuration".into())
            )
        } else {
            format!(
                "Give --profile NAME (defined: {}), or set default_profile in the configuration.",
                config.profile_names()
            )
        };
        Check::from_failure("config.profile", &f, &fix)
    })?;
    let why = match (name, all) {
        (Some(_), true) => "checked by --all".to_owned(),
        (Some(_), false) => "chosen by --profile".to_owned(),
        (None, _) if config.default_profile.is_some() => {
            "the configuration's default_profile".to_owned()
        }
        (None, _) => "the only profile".to_owned(),
    };
    let sender = profile
        .sender
        .as_deref()
        .or(profile.mailbox.as_deref())
        .map(|s| format!(", sender {s}"))
        .unwrap_or_default();
    let mut evidence = format!(
        "\"{}\" (mode {}{sender}), {why}",
        profile.name,
        profile.mode.as_str()
    );
    if name.is_none() && config.profiles.len() > 1 {
        evidence.push_str("; a message with -f ADDR may pick another profile by its sender");
    }
    Ok((profile, Check::passed("config.profile", evidence)))
}

/// The profile's secret sources and certificate files.
pub fn profile_files(ctx: &Ctx<'_>) -> Vec<Check> {
    let mut checks = vec![secrets(ctx.profile)];
    if let Some(ca) = &ctx.profile.tls.ca_file {
        checks.push(ca_file(ca));
    }
    if let Some(c) = client_certificate(ctx.profile) {
        checks.push(c);
    }
    if let Some(c) = oauth_certificate(ctx.profile) {
        checks.push(c);
    }
    checks
}

/// `config.secrets`: each secret source set in the profile resolves to a non-empty value.
fn secrets(profile: &Profile) -> Check {
    let set: Vec<(&str, &config::SecretSource)> = profile
        .auth
        .secret_sources()
        .into_iter()
        .filter(|(_, s)| s.is_set())
        .collect();
    if set.is_empty() {
        return Check::skipped(
            "config.secrets",
            "the profile has no secret settings (auth.password, auth.token, auth.client_secret, \
             auth.refresh_token)",
        );
    }
    let mut seen = Vec::new();
    let mut loose = Vec::new();
    for (field, source) in set {
        let key = format!("auth.{field}");
        let (kind, file_mode) = if let Some(p) = &source.file {
            let mode = std::fs::metadata(p)
                .ok()
                .map(|m| m.permissions().mode() & 0o777);
            (format!("file {}", p.display()), mode)
        } else if let Some(v) = &source.env {
            (format!("environment variable {v}"), None)
        } else if source.command.is_some() {
            ("command".to_owned(), None)
        } else {
            ("inline value".to_owned(), None)
        };
        match source.resolve(&key) {
            // The value is dropped here: never shown, never kept.
            Ok(_) => {
                let mode = file_mode
                    .map(|m| format!(", mode {m:04o}"))
                    .unwrap_or_default();
                seen.push(format!("{key} ({kind}{mode}) readable"));
                if let (Some(m), Some(p)) = (file_mode, &source.file)
                    && m & 0o004 != 0
                {
                    loose.push(format!(
                        "{} is readable by every user: chmod o-r {} (chmod 600 for root \
                         alone, or 640 with a group of the users that send)",
                        key,
                        p.display()
                    ));
                }
            }
            Err(f) => {
                let fix = match &source.file {
                    Some(p) => format!(
                        "Create {} holding the secret, or fix the path in {key}.file; every user \
                         that sends mail must be able to read it (chmod 640 with their group).",
                        p.display()
                    ),
                    None => format!(
                        "Make {key} readable for the users that send mail (see the secret sources \
                         in config.example.toml)."
                    ),
                };
                let mut check = Check::from_failure("config.secrets", &f, &fix);
                if !seen.is_empty() {
                    check.evidence = format!("{}; {}", seen.join("; "), check.evidence);
                }
                return check;
            }
        }
    }
    if loose.is_empty() {
        Check::passed("config.secrets", seen.join("; "))
    } else {
        Check::warning("config.secrets", seen.join("; "), loose.join(" "))
    }
}

/// `config.ca_file`: the extra CA certificates can be read.
fn ca_file(path: &Path) -> Check {
    match crate::smtp::tls::load_certs(path, "CA file") {
        Ok(certs) => Check::passed(
            "config.ca_file",
            format!(
                "{}: {} certificate{}",
                path.display(),
                certs.len(),
                if certs.len() == 1 { "" } else { "s" }
            ),
        ),
        Err(e) => Check::failed(
            "config.ca_file",
            Exit::Config,
            e.0,
            "Fix tls.ca_file: a PEM file of CA certificates readable by the users that send.",
        ),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `config.client_certificate`: the TLS client certificate a relay connector recognises.
fn client_certificate(profile: &Profile) -> Option<Check> {
    let cert_path = profile.tls.client_cert.as_ref()?;
    let key_path = profile.tls.client_key.as_ref().unwrap_or(cert_path);
    const NAME: &str = "config.client_certificate";
    let chain = match crate::smtp::tls::load_certs(cert_path, "client certificate") {
        Ok(c) => c,
        Err(e) => {
            return Some(Check::failed(
                NAME,
                Exit::Config,
                e.0,
                "Fix tls.client_cert: the PEM certificate (chain) registered on the connector, \
                 readable by the users that send.",
            ));
        }
    };
    let facts = match chain.first().map(|c| cert::facts(c.as_ref())) {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            return Some(Check::failed(
                NAME,
                Exit::Config,
                format!("{}: {e}", cert_path.display()),
                "Give a PEM X.509 certificate in tls.client_cert.",
            ));
        }
        None => return None,
    };
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Ok(k) => k,
        Err(e) => {
            return Some(Check::failed(
                NAME,
                Exit::Config,
                format!("client key {}: {e}", key_path.display()),
                "Fix tls.client_key: the certificate's private key (PEM: RSA, EC or PKCS#8), \
                 readable by the users that send.",
            ));
        }
    };
    let provider = rustls::crypto::ring::default_provider();
    if let Err(e) = rustls::sign::CertifiedKey::from_der(chain, key, &provider) {
        return Some(Check::failed(
            NAME,
            Exit::Config,
            format!(
                "{} and key {} do not belong together: {e}",
                cert_path.display(),
                key_path.display()
            ),
            "Give the private key that was generated with this certificate in tls.client_key.",
        ));
    }
    let now = now();
    let mut evidence = format!(
        "{}: {}, names {}, {}; the key matches",
        cert_path.display(),
        facts.subject,
        facts.names.join(", "),
        cert::expiry(&facts, now)
    );
    if let Some(c) = validity(NAME, &facts, now, &evidence, "tls.client_cert") {
        return Some(c);
    }
    if profile.mode != Mode::Relay {
        return Some(Check::passed(NAME, evidence));
    }
    let accepted = &profile.accepted_domains;
    if accepted.is_empty() {
        return Some(Check::warning(
            NAME,
            evidence,
            "Set accepted_domains in the profile: a certificate connector recognises this host \
             only when the certificate's subject or SAN is one of the tenant's accepted domains, \
             and doctor checks it against that list.",
        ));
    }
    match cert::accepted_name(&facts.names, accepted) {
        Some((name, domain)) => {
            evidence.push_str(&format!("; {name} is in accepted domain {domain}"));
            Some(Check::passed(NAME, evidence))
        }
        None => {
            evidence.push_str(&format!(
                "; no name is in the accepted domains ({})",
                accepted.join(", ")
            ));
            // What Microsoft 365 answers for it, in the catalogue's words.
            let reply = Reply {
                code: 550,
                enhanced: Some(EnhancedCode::new(5, 7, 64)),
                lines: vec!["5.7.64 TenantAttribution; Relay Access Denied".to_owned()],
            };
            let ctx = crate::explain::Context {
                mode: Some(profile.mode),
                profile: Some(&profile.name),
                sender: profile.sender.as_deref(),
                ..Default::default()
            };
            let said = crate::explain::explain_reply(&reply, &ctx)
                .map(|e| {
                    format!(
                        " Otherwise Microsoft 365 answers {reply}: {} {}",
                        e.meaning, e.advice
                    )
                })
                .unwrap_or_default();
            Some(Check::failed(
                NAME,
                crate::explain::exit_for(&reply),
                evidence,
                format!(
                    "Use a certificate whose subject or SAN is an accepted domain (e.g. mail.{}) \
                     and name that domain in the connector.{said}",
                    accepted[0]
                ),
            ))
        }
    }
}

/// A failed check when the certificate is expired or not yet valid, a warning when it expires
/// within 30 days, else None.
fn validity(
    name: &'static str,
    facts: &cert::Facts,
    now: i64,
    evidence: &str,
    key: &str,
) -> Option<Check> {
    if facts.not_after < now {
        return Some(Check::failed(
            name,
            Exit::Config,
            evidence.to_owned(),
            format!(
                "Renew the certificate, register the new one where the old one was (the connector \
                 or the app registration), and point {key} at it."
            ),
        ));
    }
    if facts.not_before > now {
        return Some(Check::failed(
            name,
            Exit::Config,
            format!("{evidence}; not valid before {}", facts.not_before),
            "Check this host's clock (NTP), or wait until the certificate becomes valid.",
        ));
    }
    if cert::days_until(facts.not_after, now) < 30 {
        return Some(Check::warning(
            name,
            evidence.to_owned(),
            format!("Renew it soon, and register the new one before the old one expires ({key})."),
        ));
    }
    None
}

/// `config.oauth_certificate`: the certificate and key of a client assertion.
fn oauth_certificate(profile: &Profile) -> Option<Check> {
    const NAME: &str = "config.oauth_certificate";
    let a = &profile.auth;
    if a.certificate.is_none() && a.private_key.is_none() {
        return None;
    }
    let (Some(cert_path), Some(key_path)) = (&a.certificate, &a.private_key) else {
        return Some(Check::failed(
            NAME,
            Exit::Config,
            "auth.certificate and auth.private_key go together; only one is set",
            "Set both, or neither (a client secret instead).",
        ));
    };
    // The same loading the token request does: readable, an RSA key, and the key matching.
    if let Err(f) = crate::auth::assertion::Signer::load(
        cert_path,
        key_path,
        a.assertion_alg.unwrap_or_default(),
    ) {
        return Some(Check::from_failure(
            NAME,
            &f,
            "Fix auth.certificate / auth.private_key: the certificate uploaded to the app \
             registration and its RSA private key.",
        ));
    }
    let facts = match crate::smtp::tls::load_certs(cert_path, "auth.certificate")
        .map_err(|e| e.0)
        .and_then(|c| {
            c.first()
                .map(|c| cert::facts(c.as_ref()))
                .unwrap_or_else(|| Err("no certificate".into()))
        }) {
        Ok(f) => f,
        Err(e) => {
            return Some(Check::failed(
                NAME,
                Exit::Config,
                e,
                "Give a PEM certificate.",
            ));
        }
    };
    let now = now();
    let evidence = format!(
        "{}: {}, {}; the key matches",
        cert_path.display(),
        facts.subject,
        cert::expiry(&facts, now)
    );
    Some(
        validity(NAME, &facts, now, &evidence, "auth.certificate")
            .unwrap_or_else(|| Check::passed(NAME, evidence)),
    )
}
