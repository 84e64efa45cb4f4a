//! Configuration: the TOML file, its profiles, and the choice of one profile.
//!
//! Owns: finding the file (`--config`/`-C`, `$M365SEND_CONFIG`, XDG, /etc), parsing it with
//! errors that name file, line and key, refusing a group/other-readable file holding an inline
//! secret, choosing a profile (`--profile`, else by envelope sender, else the default), and
//! resolving secret sources (env, file, command). Must not: touch the network or the message.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::exit::Failure;
use crate::secret::Secret;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where it was read from (None: built from command-line options only, for --dry-run).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    pub default_profile: Option<String>,
    /// File for final failures (mbox, appended). Default `~/dead.letter`.
    pub dead_letter: Option<PathBuf>,
    #[serde(default)]
    pub log: LogConfig,
    /// Spool directory for the queue. Default: root /var/spool/m365send, users XDG state dir.
    pub spool_dir: Option<PathBuf>,
    /// Token cache directory. Default: root /var/cache/m365send, users XDG cache dir.
    pub cache_dir: Option<PathBuf>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Send the per-message log line to syslog (facility mail).
    #[serde(default)]
    pub syslog: bool,
    /// Append the per-message log line to this file.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Client submission: smtp.office365.com:587, STARTTLS + AUTH.
    #[default]
    Submit,
    /// SMTP relay through a connector: MX endpoint, port 25, STARTTLS, certificate or IP.
    Relay,
    /// Direct send: MX endpoint, port 25, no auth, internal recipients only.
    Direct,
    /// High Volume Email: smtp.hve.mx.microsoft:587, internal recipients only.
    Hve,
    /// Azure Communication Services Email: smtp.azurecomm.net:587.
    Acs,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Submit => "submit",
            Mode::Relay => "relay",
            Mode::Direct => "direct",
            Mode::Hve => "hve",
            Mode::Acs => "acs",
        }
    }
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "submit" => Mode::Submit,
            "relay" => Mode::Relay,
            "direct" => Mode::Direct,
            "hve" => Mode::Hve,
            "acs" => Mode::Acs,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RewriteFrom {
    Always,
    /// Rewrite when the From address has no domain, the host's own domain, or a domain
    /// outside `accepted_domains`.
    #[default]
    WhenLocal,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    #[default]
    Global,
    /// US Government (GCC High).
    Usgov,
    /// 21Vianet.
    China,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueuePolicy {
    /// Queue only after in-process retries of a transient failure are used up.
    #[default]
    Auto,
    /// Always put the message in the spool and let the queue runner deliver it.
    Always,
    /// Never queue: exit 75 and write the dead letter.
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// One profile: how this host sends through one Microsoft 365 way of sending.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The profile's name (the table key).
    #[serde(skip)]
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub cloud: Cloud,
    /// Tenant id or domain (e.g. contoso.onmicrosoft.com); used by OAuth.
    pub tenant: Option<String>,
    /// The mailbox that logs in (submit/hve), e.g. app@contoso.com.
    pub mailbox: Option<String>,
    /// Fixed envelope sender / From address for mail this profile sends.
    pub sender: Option<String>,
    #[serde(default)]
    pub rewrite_from: RewriteFrom,
    /// Extra addresses that select this profile when given as the envelope sender (-f).
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub accepted_domains: Vec<String>,
    /// Domain appended to bare local names (root → root@default_domain).
    pub default_domain: Option<String>,
    /// Inline aliases: local name → one or more addresses (comma separated). `default` is the
    /// catch-all for local names without an alias.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    /// An /etc/aliases-format file, merged under the inline aliases.
    pub aliases_file: Option<PathBuf>,
    #[serde(default)]
    pub endpoint: EndpointConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// EHLO name. Default: the host's FQDN when it has a dot, else the sender's domain.
    pub helo: Option<String>,
    /// Largest message accepted before connecting, in bytes. Default 35 MB.
    pub max_size: Option<u64>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Use BDAT (CHUNKING) when the server offers it. Default false (DATA).
    #[serde(default)]
    pub chunking: bool,
    #[serde(default)]
    pub queue: QueuePolicy,
    /// Queue runner pacing, messages per minute (0 = no pacing). Default: 30 for submit,
    /// none for relay and direct.
    pub rate_per_minute: Option<u32>,
    /// Overrides the top-level `dead_letter` for this profile.
    pub dead_letter: Option<PathBuf>,
}

/// Where to connect, overriding what the mode implies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// SMTP host for submit/hve/acs (default by mode and cloud), or a fixed relay host.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Fixed MX host for relay/direct (skips the MX lookup).
    pub mx_host: Option<String>,
    /// Domain whose MX is looked up for relay/direct (default: the sender's domain).
    pub mx_domain: Option<String>,
    /// DNS server `IP:PORT` for the MX lookup (default: the system resolver).
    pub dns_server: Option<SocketAddr>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub min_version: TlsVersion,
    /// Extra CA certificates (PEM) trusted in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for a certificate-based relay connector.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM: RSA, EC or PKCS#8).
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// OAuth2 XOAUTH2 (default for submit, hve, acs).
    OAuth,
    /// AUTH LOGIN/PLAIN with a password (basic authentication).
    Password,
    /// No authentication (default for relay and direct).
    None,
    /// Decide by mode.
    #[default]
    #[serde(skip)]
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OAuthFlow {
    /// App-only: client secret or certificate.
    #[default]
    ClientCredentials,
    /// Delegated: device code login, then refresh tokens.
    Delegated,
}

/// A secret named by where it comes from. Inline values are allowed only in files that are not
/// readable by group or others.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// A file whose contents (trailing newline removed) are the secret.
    pub file: Option<PathBuf>,
    /// A command run with `sh -c`; its stdout (trailing newline removed) is the secret.
    pub command: Option<String>,
    /// The secret itself (discouraged).
    pub value: Option<Secret>,
}

impl SecretSource {
    pub fn is_set(&self) -> bool {
        self.env.is_some() || self.file.is_some() || self.command.is_some() || self.value.is_some()
    }

    /// Read the secret. `key` names the setting for error messages (e.g. "auth.password").
    /// Errors never contain the secret; a failing command's stderr is not shown either
    /// (it could echo the secret), only its exit status.
    pub fn resolve(&self, key: &str) -> Result<Secret, Failure> {
        let trim = |mut s: String| {
            while s.ends_with('\n') || s.ends_with('\r') {
                s.pop();
            }
            s
        };
        let value = if let Some(v) = &self.value {
            v.expose().to_owned()
        } else if let Some(var) = &self.env {
            std::env::var(var).map_err(|_| {
                Failure::config(format!(
                    "{key}: environment variable {var} is not set (or not valid UTF-8)"
                ))
            })?
        } else if let Some(path) = &self.file {
            let raw = std::fs::read_to_string(path).map_err(|e| {
                Failure::config(format!("{key}: cannot read {}: {e}", path.display()))
            })?;
            trim(raw)
        } else if let Some(cmd) = &self.command {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .map_err(|e| Failure::config(format!("{key}: cannot run command: {e}")))?;
            if !out.status.success() {
                return Err(Failure::config(format!(
                    "{key}: command `{cmd}` failed ({})",
                    out.status
                )));
            }
            trim(String::from_utf8(out.stdout).map_err(|_| {
                Failure::config(format!("{key}: command output is not valid UTF-8"))
            })?)
        } else {
            return Err(Failure::config(format!(
                "{key} is not set: give {key}.env, {key}.file or {key}.command"
            )));
        };
        if value.is_empty() {
            return Err(Failure::config(format!("{key} is empty")));
        }
        Ok(Secret::new(value))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(default)]
    pub method: AuthMethod,
    /// Login name (default: the profile's mailbox). For ACS: `<resource>.<app id>.<tenant id>`.
    pub user: Option<String>,
    /// Password for method = "password".
    #[serde(default)]
    pub password: SecretSource,
    /// A ready-made access token (for tokens obtained elsewhere).
    #[serde(default)]
    pub token: SecretSource,
    #[serde(default)]
    pub flow: OAuthFlow,
    /// Tenant for the token endpoint (default: the profile's tenant).
    pub tenant: Option<String>,
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: SecretSource,
    /// Certificate (PEM) for a client assertion (app-only with a certificate).
    pub certificate: Option<PathBuf>,
    /// Its RSA private key (PEM).
    pub private_key: Option<PathBuf>,
    /// A refresh token obtained elsewhere, used once to seed the cache.
    #[serde(default)]
    pub refresh_token: SecretSource,
    /// Authority base URL, default by cloud (https://login.microsoftonline.com).
    pub authority: Option<String>,
    /// Scope override (default by cloud, mode and flow).
    pub scope: Option<String>,
    /// Refresh a cached token this many seconds before it expires. Default 300.
    pub refresh_window_secs: Option<u64>,
    /// Signature algorithm of the certificate client assertion: "PS256" (default) or "RS256".
    pub assertion_alg: Option<AssertionAlgorithm>,
}

/// How the JWT client assertion (app-only with a certificate) is signed. Both use an RSA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256 (what Microsoft documents for certificate credentials).
    #[default]
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
}

impl AssertionAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            AssertionAlgorithm::Ps256 => "PS256",
            AssertionAlgorithm::Rs256 => "RS256",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Seconds to wait for a TCP connection. Default 30.
    pub connect: Option<u64>,
    /// Seconds to wait for any reply but the end of data. Default 60.
    pub command: Option<u64>,
    /// Seconds to wait for the reply to the end of data. Default 300.
    pub data_end: Option<u64>,
}

impl Timeouts {
    pub fn connect(&self) -> Duration {
        Duration::from_secs(self.connect.unwrap_or(30))
    }
    pub fn command(&self) -> Duration {
        Duration::from_secs(self.command.unwrap_or(60))
    }
    pub fn data_end(&self) -> Duration {
        Duration::from_secs(self.data_end.unwrap_or(300))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in total (1 = no retry). Default 3.
    pub attempts: Option<u32>,
    /// First backoff delay in milliseconds, doubled each time, jittered. Default 5000.
    pub initial_delay_ms: Option<u64>,
}

impl RetryConfig {
    pub fn attempts(&self) -> u32 {
        self.attempts.unwrap_or(3).max(1)
    }
    pub fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.initial_delay_ms.unwrap_or(5000))
    }
}

impl Profile {
    /// Largest message accepted, bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size.unwrap_or(35 * 1024 * 1024)
    }
    /// The effective authentication method.
    pub fn auth_method(&self) -> AuthMethod {
        match self.auth.method {
            AuthMethod::Auto => match self.mode {
                Mode::Submit | Mode::Hve | Mode::Acs => {
                    if self.auth.password.is_set() && self.auth.client_id.is_none() {
                        AuthMethod::Password
                    } else {
                        AuthMethod::OAuth
                    }
                }
                Mode::Relay | Mode::Direct => AuthMethod::None,
            },
            m => m,
        }
    }
    /// Login name for AUTH: `auth.user`, else the mailbox.
    pub fn login_user(&self) -> Option<&str> {
        self.auth.user.as_deref().or(self.mailbox.as_deref())
    }
}
