//! Configuration: the TOML file, its profiles, and the choice of one profile.
//!
//! Owns: finding the file (`--config`/`-C`, `$M365SEND_CONFIG`, XDG, /etc) and reading it only
//! when no other user could have written it (`trust`), parsing it with errors that name file,
//! line and key (and never any part of a value), refusing a group/other-readable file holding
//! an inline secret, deciding who may override it from the command line (`-C`, `--server`:
//! `check_command_line_overrides`, `trusted_users`), choosing a profile (`--profile`, else by
//! envelope sender, else the default), and resolving secret sources (env, file, command).
//! Must not: touch the network or the message.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::exit::Failure;
use crate::secret::Secret;

/// Longest `queue_lifetime_days` accepted: a year.
pub const MAX_QUEUE_LIFETIME_DAYS: u32 = 365;
/// Longest `timeouts.*` accepted, seconds: a day.
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// Most in-process attempts (`retry.attempts`): a sender (cron, PHP) waits for all of them.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;
/// Longest first retry delay (`retry.initial_delay_ms`); later delays are capped there too.
pub const MAX_RETRY_DELAY_MS: u64 = 300_000;

/// Longest `auth.refresh_window_secs`: half of the shortest token lifetime, so that a cached
/// token is ever used at all.
pub const MAX_REFRESH_WINDOW_SECS: u64 = 1800;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where it was read from (None: built from command-line options only, for --dry-run).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// The uid owning that file (as opened).
    #[serde(skip)]
    pub owner: Option<u32>,
    pub default_profile: Option<String>,
    /// File for final failures (mbox, appended). Default `~/dead.letter`.
    pub dead_letter: Option<PathBuf>,
    #[serde(default)]
    pub log: LogConfig,
    /// Spool directory for the queue. Default: root /var/spool/m365send, users XDG state dir.
    pub spool_dir: Option<PathBuf>,
    /// Days a queued message may wait before it fails permanently (bounce or dead letter).
    /// Default 5.
    pub queue_lifetime_days: Option<u32>,
    /// Token cache directory. Default: root /var/cache/m365send, users XDG cache dir.
    pub cache_dir: Option<PathBuf>,
    /// Users (names or uids) who may give `-C`/`--config` and `--server` on the command line
    /// when m365send is invoked as `sendmail` or they do not own this file. Default: none.
    #[serde(default)]
    pub trusted_users: Vec<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
    /// `m365send serve`: the SMTP listener for devices and applications.
    #[serde(default)]
    pub serve: ServeConfig,
}

/// `[serve]`: the local SMTP listener (`m365send serve`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Addresses to listen on, `IP:PORT`. Default `["127.0.0.1:2525"]`.
    pub listen: Option<Vec<SocketAddr>>,
    /// Client networks allowed to connect (CIDR, or a single address). Default loopback only.
    pub networks: Option<Vec<String>>,
    /// Name in the greeting and EHLO reply. Default: the host name.
    pub hostname: Option<String>,
    /// Server certificate chain (PEM) for STARTTLS.
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Whether AUTH may be used before STARTTLS: "loopback" (default: only on a loopback
    /// connection) or "never".
    #[serde(default)]
    pub plaintext_auth: PlaintextAuth,
    /// Refuse MAIL without AUTH. Default false.
    #[serde(default)]
    pub require_auth: bool,
    /// Envelope senders a client that did not log in may use (an address, *@domain or *).
    /// Default: any.
    pub senders: Option<Vec<String>>,
    /// The profile for clients that did not log in. Default: chosen by envelope sender, as
    /// for the sendmail interface.
    pub profile: Option<String>,
    /// Most simultaneous connections. Default 100.
    pub max_connections: Option<usize>,
    /// Most simultaneous connections from one client address. Default half of
    /// `max_connections`.
    pub max_connections_per_client: Option<usize>,
    /// Largest message, bytes. Default: the default profile's `max_size` (35 MB).
    pub max_message_size: Option<u64>,
    /// Most recipients per message. Default 500.
    pub max_recipients: Option<usize>,
    /// Messages per minute from one client address (0 = no limit). Default 0.
    pub client_rate_per_minute: Option<u32>,
    /// Failed AUTH attempts from one address before it is locked out. Default 5.
    pub auth_failures: Option<u32>,
    /// Minutes a locked-out address waits. Default 15.
    pub lockout_minutes: Option<u64>,
    /// Seconds a client may stay silent. Default 300.
    pub idle_timeout: Option<u64>,
    /// Seconds between queue runs when nothing new arrives. Default 60.
    pub queue_interval: Option<u64>,
    /// Seconds to let open transactions finish on SIGTERM. Default 30.
    pub shutdown_timeout: Option<u64>,
    /// Local users who log in with AUTH.
    #[serde(default)]
    pub users: BTreeMap<String, ServeUser>,
}

/// When AUTH is offered before STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PlaintextAuth {
    /// On connections to a loopback address (the password never leaves the host).
    #[default]
    Loopback,
    /// Never: always STARTTLS first.
    Never,
}

/// `[serve.users.NAME]`: one local user of `m365send serve`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeUser {
    /// The password hash: argon2 (`$argon2id$...`) or SHA-512-crypt (`$6$...`).
    pub password_hash: Option<String>,
    /// A file holding the hash (first line).
    pub password_hash_file: Option<PathBuf>,
    /// Envelope senders this user may use (an address, *@domain or *). Default: none.
    #[serde(default)]
    pub senders: Vec<String>,
    /// The profile this user's mail goes through. Default: chosen by envelope sender.
    pub profile: Option<String>,
}

impl ServeConfig {
    /// Listen addresses.
    pub fn listen(&self) -> Vec<SocketAddr> {
        self.listen
            .clone()
            .unwrap_or_else(|| vec![SocketAddr::from(([127, 0, 0, 1], 2525))])
    }
    /// Allowed client networks (the valid ones: `problems` reports the others).
    pub fn networks(&self) -> Vec<ipnet::IpNet> {
        match &self.networks {
            Some(list) => list.iter().filter_map(|n| parse_network(n)).collect(),
            None => ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|n| parse_network(n))
                .collect(),
        }
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7` is `192.0.2.7/32`).
pub fn parse_network(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

/// Whether `address` matches `pattern`: an address or `*@domain` (any case).
fn address_matches(pattern: &str, address: &str) -> bool {
    match pattern.strip_prefix("*@") {
        Some(domain) => address
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain)),
        None => pattern.eq_ignore_ascii_case(address),
    }
}

/// Whether `address` matches a sender pattern of `[serve]`: `*`, `*@domain` or an address.
pub fn sender_matches(pattern: &str, address: &str) -> bool {
    pattern == "*" || address_matches(pattern, address)
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
    /// Microsoft Graph sendMail over HTTPS (graph.microsoft.com:443), as the profile's mailbox.
    Graph,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Submit => "submit",
            Mode::Relay => "relay",
            Mode::Direct => "direct",
            Mode::Hve => "hve",
            Mode::Acs => "acs",
            Mode::Graph => "graph",
        }
    }
    /// The mode sends as the profile's own mailbox (a bounce must come from it, not from
    /// MAILER-DAEMON): client submission, HVE, ACS and Graph.
    pub fn sends_as_mailbox(self) -> bool {
        matches!(self, Mode::Submit | Mode::Hve | Mode::Acs | Mode::Graph)
    }
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "submit" => Mode::Submit,
            "relay" => Mode::Relay,
            "direct" => Mode::Direct,
            "hve" => Mode::Hve,
            "acs" => Mode::Acs,
            "graph" => Mode::Graph,
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

/// What a submit profile does when Microsoft 365 refuses client submission because SMTP AUTH
/// is off for the mailbox or tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    /// Report the refusal (default).
    #[default]
    None,
    /// Send the same prepared message through Microsoft Graph with the same app registration.
    Graph,
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

/// Whether the message content goes with BDAT (CHUNKING, RFC 3030) or DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunking {
    /// BDAT when the server offers CHUNKING (default).
    #[default]
    Auto,
    /// `true`: the same as auto (BDAT can only be used where the server offers it).
    On,
    /// `false`: always DATA.
    Off,
}

impl Chunking {
    /// Use BDAT where the server offers CHUNKING.
    pub fn enabled(self) -> bool {
        self != Chunking::Off
    }
}

impl<'de> Deserialize<'de> for Chunking {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "\"auto\", true or false")]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(Chunking::On),
            Raw::Bool(false) => Ok(Chunking::Off),
            Raw::Text(t) if t.eq_ignore_ascii_case("auto") => Ok(Chunking::Auto),
            // The value is not repeated: config errors never quote one.
            Raw::Text(_) => Err(serde::de::Error::custom(
                "invalid value, expected \"auto\", true or false",
            )),
        }
    }
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
    /// Inline aliases: local name → one or more addresses (comma separated, or a list of
    /// strings, kept here comma separated). `default` is the catch-all for local names
    /// without an alias.
    #[serde(default, deserialize_with = "alias_table")]
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
    /// BDAT (CHUNKING) or DATA: "auto" (default: BDAT when the server offers it), true, or
    /// false (always DATA).
    #[serde(default)]
    pub chunking: Chunking,
    /// Most recipients in one SMTP transaction; a message with more goes in several
    /// transactions. Default: 500 for Microsoft 365 hosts, 1000 for others; 0: no limit of
    /// our own. A server that defers recipients (452) teaches a lower limit.
    pub max_recipients: Option<usize>,
    #[serde(default)]
    pub queue: QueuePolicy,
    /// Queue runner pacing, messages per minute (0 = no pacing). Default: 30 for submit,
    /// none for relay and direct.
    pub rate_per_minute: Option<u32>,
    /// Connections the queue runner opens in parallel to one endpoint. Default
    /// `DEFAULT_QUEUE_CONNECTIONS` for relay and direct, 1 for the mailbox modes.
    pub queue_connections: Option<u32>,
    /// Overrides the top-level `dead_letter` for this profile.
    pub dead_letter: Option<PathBuf>,
    /// Graph: keep a copy in the mailbox's Sent Items. Default true.
    pub save_to_sent_items: Option<bool>,
    /// Graph host (`host` or `host:port`) for mode "graph" and the Graph fallback; default by
    /// cloud. For mode "graph", `endpoint.host` and `--server` take precedence.
    pub graph_host: Option<String>,
    /// Submit profiles: what to do when SMTP AUTH is disabled (`"graph"`). Default none.
    #[serde(default)]
    pub fallback: Fallback,
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
    /// DNS server `IP:PORT` for the MX lookup and the MX hosts' addresses (default: the
    /// system resolver).
    pub dns_server: Option<SocketAddr>,
    /// Use MX hosts outside Microsoft 365's MX domains too. Default false: DNS is not
    /// authenticated, and relay/direct send are for Microsoft 365's endpoint only.
    #[serde(default)]
    pub allow_any_mx: bool,
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
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// A file whose contents (trailing newline removed) are the secret.
    pub file: Option<PathBuf>,
    /// A command run with `sh -c`; its stdout (trailing newline removed) is the secret.
    /// Messages name only its program (the line may hold a token).
    pub command: Option<String>,
    /// Seconds the command may run before its whole process group is killed. Default 30.
    pub timeout_secs: Option<u64>,
    /// The secret itself (discouraged).
    pub value: Option<Secret>,
}

/// Shows where a secret comes from, never the command line (it may hold a token).
impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSource")
            .field("env", &self.env)
            .field("file", &self.file)
            .field(
                "command",
                &self.command.as_deref().map(crate::secret::command_name),
            )
            .field("timeout_secs", &self.timeout_secs)
            .field("value", &self.value)
            .finish()
    }
}

/// How long a secret `command` may run before it is stopped (unless `timeout_secs` says
/// otherwise): a hung vault client must not hang every cron job's mail behind it.
pub const SECRET_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

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
            // Checked as the configuration is: a secret file another user could write decides
            // which credentials are used.
            let raw = crate::trust::read_file(path, crate::secret::COMMAND_OUTPUT_MAX as u64)
                .map_err(|e| {
                    Failure::config(format!("{key}: cannot read {}: {e}", path.display()))
                })?;
            trim(String::from_utf8(raw).map_err(|_| {
                Failure::config(format!("{key}: {} is not valid UTF-8", path.display()))
            })?)
        } else if let Some(cmd) = &self.command {
            use crate::secret::{COMMAND_OUTPUT_MAX, CommandError};
            let name = crate::secret::command_name(cmd);
            let timeout = self
                .timeout_secs
                .map_or(SECRET_COMMAND_TIMEOUT, Duration::from_secs);
            let (status, out) = crate::secret::run_command(cmd, timeout).map_err(|e| match e {
                CommandError::Spawn(e) => {
                    Failure::config(format!("{key}: cannot run command `{name}`: {e}"))
                }
                CommandError::TimedOut => Failure::new(
                    crate::exit::Exit::TempFail,
                    format!(
                        "{key}: command `{name}` did not finish within {} s and was stopped \
                             (with every process it started)",
                        timeout.as_secs()
                    ),
                ),
                CommandError::TooLong => Failure::config(format!(
                    "{key}: command `{name}` wrote more than {} KiB and was stopped; a \
                         secret is a single line",
                    COMMAND_OUTPUT_MAX / 1024
                )),
            })?;
            if !status.success() {
                return Err(Failure::config(format!(
                    "{key}: command `{name}` failed ({status})"
                )));
            }
            trim(String::from_utf8(out).map_err(|_| {
                Failure::config(format!("{key}: command `{name}` wrote no valid UTF-8"))
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

/// `root = "a@x, b@y"` or `root = ["a@x", "b@y"]`: both are written as a list of addresses.
fn alias_table<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "an address string, or a list of address strings"
    )]
    enum Targets {
        One(String),
        Many(Vec<String>),
    }
    let raw = BTreeMap::<String, Targets>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let joined = match v {
                Targets::One(s) => s,
                Targets::Many(list) => list.join(", "),
            };
            (k, joined)
        })
        .collect())
}

/// Parallel queue connections to one endpoint for relay and direct send by default: enough to
/// drain a burst several times faster over a distant link, few enough to stay clear of
/// Exchange Online's concurrent-connection throttling (`421 4.3.2 ... PRX`).
pub const DEFAULT_QUEUE_CONNECTIONS: u32 = 4;

impl Profile {
    /// The queue runner's pacing, messages a minute (0: none): `rate_per_minute`, default 30
    /// for submit (Microsoft's limit per mailbox), none otherwise.
    pub fn rate_per_minute(&self) -> u32 {
        self.rate_per_minute
            .unwrap_or(if self.mode == Mode::Submit { 30 } else { 0 })
    }

    /// Connections the queue runner opens in parallel to one endpoint (at least 1). A
    /// mailbox (submit, hve, acs, graph) gets 1 by default: Microsoft allows it 3 concurrent
    /// SMTP connections (4 concurrent Graph requests) and 30 messages a minute anyway.
    pub fn queue_connections(&self) -> u32 {
        self.queue_connections
            .unwrap_or(match self.mode {
                Mode::Relay | Mode::Direct => DEFAULT_QUEUE_CONNECTIONS,
                Mode::Submit | Mode::Hve | Mode::Acs | Mode::Graph => 1,
            })
            .max(1)
    }

    /// Largest message accepted, bytes.
    pub fn max_size(&self) -> u64 {
        self.max_size.unwrap_or(35 * 1024 * 1024)
    }
    /// The effective authentication method.
    pub fn auth_method(&self) -> AuthMethod {
        match self.auth.method {
            AuthMethod::Auto => match self.mode {
                Mode::Graph => AuthMethod::OAuth,
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
    /// Graph: keep a copy in Sent Items (default true, as Graph and client submission do).
    pub fn save_to_sent_items(&self) -> bool {
        self.save_to_sent_items.unwrap_or(true)
    }
    /// Login name for AUTH: `auth.user`, else the mailbox.
    pub fn login_user(&self) -> Option<&str> {
        self.auth.user.as_deref().or(self.mailbox.as_deref())
    }
}

// ---------------------------------------------------------------------------------------------
// Finding, reading and checking the file.

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "M365SEND_CONFIG";
/// The system-wide configuration file.
pub const SYSTEM_CONFIG: &str = "/etc/m365send/config.toml";

/// Where the configuration is looked for when neither `--config`/`-C` nor `$M365SEND_CONFIG`
/// names one, in order: `$XDG_CONFIG_HOME/m365send/config.toml` (or
/// `~/.config/m365send/config.toml`), then `/etc/m365send/config.toml`.
pub fn search_paths(env: &dyn Fn(&str) -> Option<OsString>) -> Vec<PathBuf> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut paths = Vec::new();
    // XDG says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    if let Some(xdg) = set("XDG_CONFIG_HOME").filter(|p| p.is_absolute()) {
        paths.push(xdg.join("m365send/config.toml"));
    } else if let Some(home) = set("HOME") {
        paths.push(home.join(".config/m365send/config.toml"));
    }
    paths.push(PathBuf::from(SYSTEM_CONFIG));
    paths
}

/// Find and read the configuration: `explicit` (`--config`/`-C`; a missing file is an error),
/// else `$M365SEND_CONFIG` (likewise), else the first of `search_paths` that exists.
/// `Ok(None)` when there is none at all.
pub fn load(explicit: Option<&Path>) -> Result<Option<Config>, Failure> {
    load_with_env(explicit, &|name| std::env::var_os(name))
}

/// The failure when [`load`] finds no configuration file (also `doctor`'s first check).
pub fn not_found() -> Failure {
    let mut looked = vec![format!("${}", CONFIG_ENV)];
    looked.extend(
        search_paths(&|name| std::env::var_os(name))
            .iter()
            .map(|p| p.display().to_string()),
    );
    Failure::config(format!(
        "no configuration file found (looked at {}).\n  \
         Copy config.example.toml (in the m365send sources and documentation) to {} and \
         edit a profile,\n  or give one with --config FILE. To try without one: \
         m365send --dry-run --mode submit --from me@example.com --to you@example.com --subject test --body hello",
        looked.join(", "),
        SYSTEM_CONFIG,
    ))
}

/// `load` with the environment given (for tests).
pub fn load_with_env(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Option<Config>, Failure> {
    if let Some(path) = explicit {
        return load_file(path).map(Some);
    }
    // Root reads a file named by the environment only when root owns it (as every file):
    // `sudo -E`, `su -m` and services with Environment=HOME= hand root a user's environment.
    let from_env = |mut f: Failure, how: &str| {
        if f.message.starts_with(REFUSED) && crate::trust::euid() == 0 {
            f.message = format!(
                "{} (found through {how}; `sudo -E` and `su -m` keep the caller's environment: \
                 root reads only files root owns, so send root's mail with root's own \
                 environment, or use {SYSTEM_CONFIG})",
                f.message
            );
        } else if how.starts_with("$M365SEND") {
            f.message = format!("{} (named by {how})", f.message);
        }
        f
    };
    if let Some(path) = env(CONFIG_ENV).filter(|v| !v.is_empty()) {
        return load_file(Path::new(&path))
            .map_err(|f| from_env(f, &format!("${CONFIG_ENV}")))
            .map(Some);
    }
    for path in search_paths(env) {
        match std::fs::metadata(&path) {
            Ok(_) if path == Path::new(SYSTEM_CONFIG) => return load_file(&path).map(Some),
            Ok(_) => {
                return load_file(&path)
                    .map_err(|f| from_env(f, "$XDG_CONFIG_HOME or $HOME"))
                    .map(Some);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            // Exists but cannot be looked at (a directory we may not enter): say so rather
            // than silently falling through to another file.
            Err(e) => {
                return Err(Failure::config(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        }
    }
    Ok(None)
}

impl Config {
    /// Whether `uid` is listed in `trusted_users` (by name or number).
    pub fn trusts(&self, uid: u32) -> bool {
        let name = crate::trust::user_name(uid);
        self.trusted_users
            .iter()
            .any(|u| u.parse::<u32>().ok() == Some(uid) || name.as_deref() == Some(u.as_str()))
    }

    /// How long a message may wait in the queue: `queue_lifetime_days`, default 5 days.
    pub fn queue_lifetime(&self) -> Duration {
        let days = u64::from(self.queue_lifetime_days.unwrap_or(5));
        Duration::from_secs(days * 24 * 3600)
    }
}

/// Refuse `-C`/`--config` (`config_given`) and `--server` (`server_given`) to a caller that
/// may be passing someone else's words (argument injection, as through PHP mail()'s fifth
/// parameter, CVE-2016-10033): invoked as `sendmail` (`sendmail_name`), or by a user other
/// than the owner of the configuration found without `-C` (its credentials would go to the
/// server named, its `command` secrets be replaced by another file's). Allowed: root or the
/// file's owner invoking `m365send`, anyone invoking `m365send` when there is no such file,
/// and users listed in its `trusted_users`. The environment ($M365SEND_CONFIG) is not argv
/// and stays allowed. Exit 77 with the reason.
pub fn check_command_line_overrides(
    sendmail_name: bool,
    config_given: bool,
    server_given: bool,
) -> Result<(), Failure> {
    if !config_given && !server_given {
        return Ok(());
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if !sendmail_name && uid == 0 {
        return Ok(());
    }
    let base = load(None);
    let base = match base {
        Ok(None) if !sendmail_name => return Ok(()),
        Ok(Some(c)) if c.trusts(uid) => return Ok(()),
        Ok(Some(c)) if !sendmail_name && c.owner == Some(uid) => return Ok(()),
        other => other,
    };
    let flags = match (config_given, server_given) {
        (true, true) => "-C/--config and --server are",
        (true, false) => "-C/--config is",
        _ => "--server is",
    };
    let who = crate::trust::describe_uid(uid);
    let list_in = |c: &Config| {
        format!(
            "list {} in `trusted_users` in {}",
            crate::trust::user_name(uid).unwrap_or_else(|| uid.to_string()),
            c.file_name()
        )
    };
    let why = if sendmail_name {
        format!(
            "{flags} refused when m365send is invoked as sendmail: the caller (a web \
             application's mail(), a script) may be passing words it was given, and a \
             configuration or server of theirs would get {who}'s credentials or run commands \
             (Postfix refuses -C likewise)"
        )
    } else {
        let file = match &base {
            Ok(Some(c)) => c.file_name(),
            _ => "the configuration".into(),
        };
        format!(
            "{flags} refused: {who} does not own {file}, whose credentials and commands it \
             would redirect"
        )
    };
    let fix = match &base {
        Ok(Some(c)) => format!(
            "Name a configuration with $M365SEND_CONFIG (or use your own \
             ~/.config/m365send/config.toml), or {}.",
            list_in(c)
        ),
        Ok(None) => "Name a configuration with $M365SEND_CONFIG instead.".into(),
        Err(f) => format!(
            "Name a configuration with $M365SEND_CONFIG instead (the configuration that could \
             allow it cannot be read: {})",
            f.message
        ),
    };
    Err(Failure::new(
        crate::exit::Exit::NoPerm,
        format!("{why}.\n  {fix}"),
    ))
}

/// How a refused configuration's message starts.
const REFUSED: &str = "configuration refused: ";

/// Largest configuration file read.
const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// Read, parse and check one configuration file: the trust rule (owned by this user or root,
/// not writable by others, nor any directory above it; see `trust`) and the permission rule
/// for inline secrets.
pub fn load_file(path: &Path) -> Result<Config, Failure> {
    let euid = crate::trust::euid();
    let file = match crate::trust::open_file(path, euid) {
        Ok(Ok(file)) => file,
        Ok(Err(untrusted)) => {
            return Err(Failure::config(format!(
                "{REFUSED}{untrusted}{}",
                if euid == 0 {
                    " (a `command` secret in it would run as root)"
                } else {
                    ""
                }
            )));
        }
        Err(e) => {
            // The fix on a line of its own. `--config` is no way out: it is refused to a user
            // who does not own the file found, and to every `sendmail` caller.
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                let fix = crate::trust::closed_directory(path).unwrap_or_else(|| {
                    format!(
                        "every user that sends mail (www-data for PHP, users' crontabs) reads \
                         it: `chmod 644 {}`, with secrets kept in separate files (see \
                         config.example.toml)",
                        path.display()
                    )
                });
                format!("\n  {fix}")
            } else {
                String::new()
            };
            return Err(Failure::config(format!(
                "cannot read {}: {e}{hint}",
                path.display()
            )));
        }
    };
    let owner = file.metadata().ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let mut bytes = Vec::new();
    {
        use std::io::Read;
        file.take(MAX_CONFIG_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Failure::config(format!("cannot read {}: {e}", path.display())))?;
    }
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(Failure::config(format!(
            "{} is larger than {} KiB: not a configuration file",
            path.display(),
            MAX_CONFIG_SIZE / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let (line, col) = line_col(
            &String::from_utf8_lossy(e.as_bytes()),
            e.utf8_error().valid_up_to(),
        );
        Failure::config(format!(
            "{}:{line}:{col}: the file is not valid UTF-8",
            path.display()
        ))
    })?;
    let mut config = Config::parse(&text, path)?;
    config.owner = owner;
    check_permissions(path, &config)?;
    Ok(config)
}

impl Config {
    /// Parse and validate the text of a configuration file; `path` is used in messages and
    /// kept in `Config::path`. Does not look at the file's permissions (see `load_file`).
    pub fn parse(text: &str, path: &Path) -> Result<Config, Failure> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_failure(text, path, &e))?;
        config.path = Some(path.to_owned());
        for (name, profile) in config.profiles.iter_mut() {
            profile.name = name.clone();
        }
        let problems = config.problems();
        if let Some((key, message)) = problems.into_iter().next() {
            let line = line_of(text, &key)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            return Err(Failure::config(format!(
                "{}{line}: {}: {message}",
                path.display(),
                key.join(".")
            )));
        }
        Ok(config)
    }

    /// What is wrong with an otherwise well-formed configuration: (key path, message).
    fn problems(&self) -> Vec<(Vec<String>, String)> {
        let mut out: Vec<(Vec<String>, String)> = Vec::new();
        let key = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        if let Some(d) = &self.default_profile
            && !self.profiles.contains_key(d)
        {
            out.push((
                key(&["default_profile"]),
                format!(
                    "there is no profile \"{d}\"; defined: {}",
                    self.profile_names()
                ),
            ));
        }
        if let Some(days) = self.queue_lifetime_days
            && !(1..=MAX_QUEUE_LIFETIME_DAYS).contains(&days)
        {
            out.push((
                key(&["queue_lifetime_days"]),
                format!(
                    "{days} is not a lifetime: give 1 to {MAX_QUEUE_LIFETIME_DAYS} days (default \
                     5); to never queue, set queue = \"never\" in the profile"
                ),
            ));
        }
        for user in &self.trusted_users {
            if user.is_empty()
                || !user
                    .chars()
                    .all(|c| c.is_alphanumeric() || "-_.$".contains(c))
            {
                out.push((
                    key(&["trusted_users"]),
                    format!("\"{user}\" is not a user name or uid"),
                ));
            }
        }
        self.serve_problems(&mut out);
        for (name, p) in &self.profiles {
            let k = |rest: &[&str]| {
                let mut v = vec!["profiles".to_string(), name.clone()];
                v.extend(rest.iter().map(|s| s.to_string()));
                v
            };
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                out.push((
                    k(&[]),
                    "a profile name may hold only letters, digits, '-', '_' and '.'".into(),
                ));
            }
            for (field, value) in [("sender", &p.sender), ("mailbox", &p.mailbox)] {
                if let Some(v) = value
                    && !plausible_address(v)
                {
                    out.push((
                        k(&[field]),
                        format!(
                            "\"{v}\" is not an email address (give a bare address such as \
                             alerts@contoso.com; a display name comes from -F or the message)"
                        ),
                    ));
                }
            }
            for a in &p.addresses {
                let ok = plausible_address(a)
                    || a.strip_prefix("*@").is_some_and(plausible_domain)
                    || plausible_local(a);
                if !ok {
                    out.push((
                        k(&["addresses"]),
                        format!(
                            "\"{a}\" is not an address, a local name (root) or a wildcard \
                             (*@contoso.com)"
                        ),
                    ));
                }
            }
            for d in &p.accepted_domains {
                if !plausible_domain(d) {
                    out.push((
                        k(&["accepted_domains"]),
                        format!("\"{d}\" is not a domain name (no @, e.g. contoso.com)"),
                    ));
                }
            }
            if let Some(d) = &p.default_domain
                && !plausible_domain(d)
            {
                out.push((
                    k(&["default_domain"]),
                    format!("\"{d}\" is not a domain name (no @, e.g. contoso.com)"),
                ));
            }
            for (local, target) in &p.aliases {
                if local.is_empty() || target.trim().is_empty() {
                    out.push((
                        k(&["aliases"]),
                        format!("alias \"{local}\" needs a name and at least one address"),
                    ));
                }
            }
            for (field, value) in [
                ("host", &p.endpoint.host),
                ("mx_host", &p.endpoint.mx_host),
                ("mx_domain", &p.endpoint.mx_domain),
            ] {
                if let Some(v) = value
                    && !plausible_domain(v)
                    && v.parse::<std::net::IpAddr>().is_err()
                {
                    out.push((
                        k(&["endpoint", field]),
                        format!("\"{v}\" is not a host name (give the port in endpoint.port)"),
                    ));
                }
            }
            if p.endpoint.port == Some(0) {
                out.push((k(&["endpoint", "port"]), "port 0 is not a port".into()));
            }
            match (&p.tls.client_cert, &p.tls.client_key) {
                (Some(_), None) => out.push((
                    k(&["tls", "client_cert"]),
                    "a client certificate needs its key: set tls.client_key too".into(),
                )),
                (None, Some(_)) => out.push((
                    k(&["tls", "client_key"]),
                    "a client key needs its certificate: set tls.client_cert too".into(),
                )),
                _ => {}
            }
            match (&p.auth.certificate, &p.auth.private_key) {
                (Some(_), None) => out.push((
                    k(&["auth", "certificate"]),
                    "an OAuth client certificate needs its key: set auth.private_key too".into(),
                )),
                (None, Some(_)) => out.push((
                    k(&["auth", "private_key"]),
                    "auth.private_key needs auth.certificate too".into(),
                )),
                _ => {}
            }
            for (field, source) in p.auth.secret_sources() {
                let n = [
                    source.env.is_some(),
                    source.file.is_some(),
                    source.command.is_some(),
                    source.value.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if n > 1 {
                    out.push((
                        k(&["auth", field]),
                        "give only one of env, file, command and value".into(),
                    ));
                }
                if source.value.as_ref().is_some_and(Secret::is_empty) {
                    out.push((k(&["auth", field, "value"]), "is empty".into()));
                }
                if let Some(secs) = source.timeout_secs {
                    if source.command.is_none() {
                        out.push((
                            k(&["auth", field, "timeout_secs"]),
                            "applies to a `command` only".into(),
                        ));
                    } else if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                        out.push((
                            k(&["auth", field, "timeout_secs"]),
                            format!(
                                "{secs} is not a timeout: give 1 to {MAX_TIMEOUT_SECS} seconds \
                                 (default 30)"
                            ),
                        ));
                    }
                }
            }
            if p.auth.method == AuthMethod::Password && !p.auth.password.is_set() {
                out.push((
                    k(&["auth", "password"]),
                    "auth.method = \"password\" needs auth.password (env, file or command)".into(),
                ));
            }
            for (field, value) in [
                ("connect", p.timeouts.connect),
                ("command", p.timeouts.command),
                ("data_end", p.timeouts.data_end),
            ] {
                if let Some(secs) = value
                    && !(1..=MAX_TIMEOUT_SECS).contains(&secs)
                {
                    out.push((
                        k(&["timeouts", field]),
                        format!("{secs} is not a timeout: give 1 to {MAX_TIMEOUT_SECS} seconds"),
                    ));
                }
            }
            if let Some(w) = p.auth.refresh_window_secs
                && w > MAX_REFRESH_WINDOW_SECS
            {
                out.push((
                    k(&["auth", "refresh_window_secs"]),
                    format!(
                        "{w} s is longer than a token lives (60 to 90 minutes): give at most \
                         {MAX_REFRESH_WINDOW_SECS} (default 300)"
                    ),
                ));
            }
            if let Some(n) = p.retry.attempts
                && !(1..=MAX_RETRY_ATTEMPTS).contains(&n)
            {
                out.push((
                    k(&["retry", "attempts"]),
                    format!(
                        "{n} attempts: give 1 (no retry) to {MAX_RETRY_ATTEMPTS}; the queue \
                         retries for longer"
                    ),
                ));
            }
            if let Some(ms) = p.retry.initial_delay_ms
                && ms > MAX_RETRY_DELAY_MS
            {
                out.push((
                    k(&["retry", "initial_delay_ms"]),
                    format!("{ms} ms is too long: give at most {MAX_RETRY_DELAY_MS} (5 minutes)"),
                ));
            }
            if p.max_size == Some(0) {
                out.push((k(&["max_size"]), "must be more than 0 bytes".into()));
            }
            if let Some(h) = &p.helo
                && !plausible_domain(h)
            {
                out.push((k(&["helo"]), format!("\"{h}\" is not a host name")));
            }
            out.extend(graph_problems(p).into_iter().map(|(f, m)| (k(&[f]), m)));
        }
        out
    }

    /// What is wrong in `[serve]`.
    fn serve_problems(&self, out: &mut Vec<(Vec<String>, String)>) {
        let sv = &self.serve;
        let k = |rest: &[&str]| {
            let mut v = vec!["serve".to_string()];
            v.extend(rest.iter().map(|s| s.to_string()));
            v
        };
        if sv.listen.as_ref().is_some_and(Vec::is_empty) {
            out.push((
                k(&["listen"]),
                "no address to listen on: give at least one, e.g. [\"127.0.0.1:2525\"]".into(),
            ));
        }
        for n in sv.networks.iter().flatten() {
            if parse_network(n).is_none() {
                out.push((
                    k(&["networks"]),
                    format!("\"{n}\" is not a network: give CIDR (192.168.10.0/24) or an address"),
                ));
            }
        }
        match (&sv.tls_cert, &sv.tls_key) {
            (Some(_), None) => out.push((
                k(&["tls_cert"]),
                "a certificate needs its key: set tls_key too".into(),
            )),
            (None, Some(_)) => out.push((
                k(&["tls_key"]),
                "a key needs its certificate: set tls_cert too".into(),
            )),
            _ => {}
        }
        let pattern_ok = |p: &str| {
            p == "*" || plausible_address(p) || p.strip_prefix("*@").is_some_and(plausible_domain)
        };
        for p in sv.senders.iter().flatten() {
            if !pattern_ok(p) {
                out.push((
                    k(&["senders"]),
                    format!("\"{p}\" is not an address, *@domain or *"),
                ));
            }
        }
        let profile_ok =
            |name: &Option<String>| name.as_ref().is_none_or(|n| self.profiles.contains_key(n));
        if !profile_ok(&sv.profile) {
            out.push((
                k(&["profile"]),
                format!(
                    "there is no such profile; defined: {}",
                    self.profile_names()
                ),
            ));
        }
        if let Some(h) = &sv.hostname
            && !plausible_domain(h)
        {
            out.push((k(&["hostname"]), format!("\"{h}\" is not a host name")));
        }
        for (field, value, min, max) in [
            (
                "max_connections",
                sv.max_connections.map(|n| n as u64),
                1,
                100_000,
            ),
            ("max_message_size", sv.max_message_size, 1, u64::MAX),
            (
                "max_recipients",
                sv.max_recipients.map(|n| n as u64),
                1,
                100_000,
            ),
            ("auth_failures", sv.auth_failures.map(u64::from), 1, 1000),
            ("lockout_minutes", sv.lockout_minutes, 1, 7 * 24 * 60),
            ("idle_timeout", sv.idle_timeout, 1, MAX_TIMEOUT_SECS),
            ("queue_interval", sv.queue_interval, 1, MAX_TIMEOUT_SECS),
            ("shutdown_timeout", sv.shutdown_timeout, 0, 3600),
        ] {
            if let Some(v) = value
                && !(min..=max).contains(&v)
            {
                out.push((
                    k(&[field]),
                    format!("{v} is out of range: give {min} to {max}"),
                ));
            }
        }
        if sv.require_auth && sv.users.is_empty() {
            out.push((
                k(&["require_auth"]),
                "nobody could send: define at least one [serve.users.NAME] or set \
                 require_auth = false"
                    .into(),
            ));
        }
        for (name, u) in &sv.users {
            let ku = |field: &str| k(&["users", name, field]);
            if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                out.push((
                    k(&["users", name]),
                    "a user name may not be empty or hold spaces".into(),
                ));
            }
            match (&u.password_hash, &u.password_hash_file) {
                (None, None) => out.push((
                    ku("password_hash"),
                    "the user needs password_hash or password_hash_file (an argon2 or \
                     SHA-512-crypt hash, never the password itself)"
                        .into(),
                )),
                (Some(_), Some(_)) => out.push((
                    ku("password_hash"),
                    "give only one of password_hash and password_hash_file".into(),
                )),
                _ => {}
            }
            if u.senders.is_empty() {
                out.push((
                    ku("senders"),
                    "list the envelope senders this user may use (an address, *@domain or *)"
                        .into(),
                ));
            }
            for p in &u.senders {
                if !pattern_ok(p) {
                    out.push((
                        ku("senders"),
                        format!("\"{p}\" is not an address, *@domain or *"),
                    ));
                }
            }
            if !profile_ok(&u.profile) {
                out.push((
                    ku("profile"),
                    format!(
                        "there is no such profile; defined: {}",
                        self.profile_names()
                    ),
                ));
            }
        }
    }

    /// The profile names, for messages: `"app", "cron"`.
    pub fn profile_names(&self) -> String {
        if self.profiles.is_empty() {
            return "none".into();
        }
        self.profiles
            .keys()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn file_name(&self) -> String {
        self.path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the configuration".into())
    }

    /// Choose the profile: `name` (`--profile`), else the one whose `sender`, `mailbox` or
    /// `addresses` match the envelope sender (case-insensitively; as msmtp picks an account by
    /// -f), else `default_profile`, else the only profile. The result has `name` set.
    pub fn select_profile(
        &self,
        name: Option<&str>,
        envelope_from: Option<&str>,
    ) -> Result<Profile, Failure> {
        let named = |n: &str| {
            let mut p = self.profiles.get(n).cloned()?;
            p.name = n.to_owned();
            Some(p)
        };
        if let Some(n) = name {
            return named(n).ok_or_else(|| {
                Failure::config(format!(
                    "there is no profile \"{n}\" in {}; defined: {}",
                    self.file_name(),
                    self.profile_names()
                ))
            });
        }
        if let Some(from) = envelope_from.map(bare_address).filter(|f| !f.is_empty()) {
            let matching: Vec<&String> = self
                .profiles
                .iter()
                .filter(|(_, p)| p.answers_to(&from))
                .map(|(n, _)| n)
                .collect();
            let pick = matching
                .iter()
                .find(|n| Some(n.as_str()) == self.default_profile.as_deref())
                .or(matching.first());
            if let Some(n) = pick {
                tracing::debug!(profile = %n, sender = %from, "profile chosen by envelope sender");
                if let Some(p) = named(n) {
                    return Ok(p);
                }
            }
        }
        if let Some(d) = &self.default_profile {
            return named(d).ok_or_else(|| {
                Failure::config(format!(
                    "default_profile \"{d}\" is not defined in {}; defined: {}",
                    self.file_name(),
                    self.profile_names()
                ))
            });
        }
        if self.profiles.len() == 1
            && let Some(n) = self.profiles.keys().next()
            && let Some(p) = named(n)
        {
            return Ok(p);
        }
        if self.profiles.is_empty() {
            // A configuration without profiles loads (mailq, `queue list` and doctor work on a
            // fresh install); only sending needs one.
            return Err(Failure::config(format!(
                "{}: no profile is defined; add a [profiles.NAME] table (see config.example.toml)",
                self.file_name()
            )));
        }
        Err(Failure::config(format!(
            "{} defines {} and no default_profile: set default_profile, or give --profile NAME",
            self.file_name(),
            if self.profiles.is_empty() {
                "no profile".to_string()
            } else {
                format!("profiles {}", self.profile_names())
            }
        )))
    }
}

/// What is wrong with a profile's Graph settings: (key, message).
fn graph_problems(p: &Profile) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if p.fallback == Fallback::Graph && p.mode != Mode::Submit {
        out.push((
            "fallback",
            format!(
                "fallback = \"graph\" is for mode \"submit\" (this profile is mode \"{}\")",
                p.mode.as_str()
            ),
        ));
    }
    if p.mode == Mode::Graph || p.fallback == Fallback::Graph {
        if matches!(p.auth.method, AuthMethod::Password | AuthMethod::None) {
            out.push((
                "auth",
                "Microsoft Graph takes only OAuth: remove auth.method or set it to \"oauth\""
                    .into(),
            ));
        }
        if p.mailbox.is_none() {
            out.push((
                "mailbox",
                "Microsoft Graph sends as a mailbox: set `mailbox` (e.g. app@contoso.com)".into(),
            ));
        }
    }
    if let Some(h) = &p.graph_host {
        let name = h.rsplit_once(':').map_or(h.as_str(), |(n, port)| {
            if port.parse::<u16>().is_ok_and(|p| p != 0) {
                n
            } else {
                h
            }
        });
        if !plausible_domain(name) && name.parse::<std::net::IpAddr>().is_err() {
            out.push((
                "graph_host",
                format!("\"{h}\" is not a host name (HOST or HOST:PORT, no https://)"),
            ));
        }
    }
    out
}

impl Profile {
    /// A profile built from the command line alone (`--dry-run --mode MODE` with no file).
    pub fn for_mode(mode: Mode) -> Profile {
        Profile {
            name: "command-line".into(),
            mode,
            ..Profile::default()
        }
    }

    /// Apply `--mode` over the profile's `mode`.
    pub fn with_mode(mut self, mode: Option<Mode>) -> Profile {
        if let Some(m) = mode {
            self.mode = m;
        }
        self
    }

    /// Whether `address` (bare, as given to -f) selects this profile.
    pub fn answers_to(&self, address: &str) -> bool {
        let matches = |pattern: &str| address_matches(pattern, address);
        self.sender.as_deref().is_some_and(matches)
            || self.mailbox.as_deref().is_some_and(matches)
            || self.addresses.iter().any(|a| matches(a))
    }
}

impl AuthConfig {
    /// Every secret setting with its key name.
    pub fn secret_sources(&self) -> [(&'static str, &SecretSource); 4] {
        [
            ("password", &self.password),
            ("token", &self.token),
            ("client_secret", &self.client_secret),
            ("refresh_token", &self.refresh_token),
        ]
    }
}

/// Refuse a file that holds an inline secret and is readable by group or others.
pub fn check_permissions(path: &Path, config: &Config) -> Result<(), Failure> {
    let inline: Vec<String> = config
        .profiles
        .iter()
        .flat_map(|(name, p)| {
            p.auth
                .secret_sources()
                .into_iter()
                .filter(|(_, s)| s.value.is_some())
                .map(move |(field, _)| format!("profiles.{name}.auth.{field}.value"))
        })
        .collect();
    if inline.is_empty() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| Failure::config(format!("cannot read {}: {e}", path.display())))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            return Err(Failure::config(format!(
                "{} holds a secret inline ({}) but is readable by {} (mode {mode:04o}); \
                 run `chmod 600 {}`, or move the secret out with env, file or command",
                path.display(),
                inline.join(", "),
                if mode & 0o040 != 0 && mode & 0o004 != 0 {
                    "group and others"
                } else if mode & 0o040 != 0 {
                    "its group"
                } else {
                    "others"
                },
                shell_quote(&path.display().to_string()),
            )));
        }
    }
    Ok(())
}

/// Quote a path for a shell command the user may paste.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `Name <a@b>` → `a@b`; `a@b` → `a@b`.
pub fn bare_address(s: &str) -> String {
    let s = s.trim();
    match (s.rfind('<'), s.rfind('>')) {
        (Some(l), Some(r)) if l < r => s[l + 1..r].trim().to_owned(),
        _ => s.to_owned(),
    }
}

fn plausible_local(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>@,;\"".contains(c))
}

fn plausible_domain(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// `local@domain` with nothing odd in it (a plausibility check, not RFC 5321).
fn plausible_address(s: &str) -> bool {
    match s.rsplit_once('@') {
        Some((local, domain)) => plausible_local(local) && plausible_domain(domain),
        None => false,
    }
}

/// Settings that exist only at the top of the file.
const TOP_LEVEL_ONLY: &[&str] = &[
    "default_profile",
    "trusted_users",
    "spool_dir",
    "queue_lifetime_days",
    "cache_dir",
    "log",
];

/// The parser's message for the value at `key`, made actionable, and never quoting a value
/// that may be a secret (`password = "hunter2"` must not be echoed to stderr or a log).
fn explain_parse_error(message: &str, key: Option<&str>) -> String {
    let last = key.and_then(|k| k.rsplit('.').next()).unwrap_or("");
    let secret_field = key.is_some_and(|k| {
        k.split('.')
            .any(|part| ["password", "token", "client_secret", "refresh_token"].contains(&part))
    });
    if secret_field && !message.starts_with("unknown field") {
        return "a secret is written as a table naming where it comes from: { env = \"VAR\" }, \
                { file = \"/path\" }, { command = \"...\" }, or { value = \"...\" } (inline: \
                the file must then be chmod 600)"
            .into();
    }
    if message.ends_with("expected a sequence") {
        return format!("{message}: write a list, even of one, e.g. {last} = [\"...\"]");
    }
    if last == "dns_server" {
        return format!("{message}: give IP:PORT, e.g. dns_server = \"10.0.0.53:53\"");
    }
    if last == "min_version" {
        return "expected \"1.2\" or \"1.3\" (a quoted string)".into();
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, _)) = rest.split_once('`')
        && TOP_LEVEL_ONLY.contains(&field)
    {
        return format!(
            "unknown field `{field}` here: `{field}` is a top-level setting; write it above the \
             first [table] header (every key after a [header] belongs to that table)"
        );
    }
    suggest(message)
}

/// serde's "unknown field `sendr`, expected one of `mode`, ..., `sender`, ..." becomes
/// "unknown field `sendr`; did you mean `sender`?" when one expected name is close.
fn suggest(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|c| (edit_distance(field, c), c))
        .min();
    match best {
        Some((d, c)) if d <= 2.max(field.len() / 4) => {
            format!("unknown field `{field}`; did you mean `{c}`?")
        }
        _ => message.to_owned(),
    }
}

/// Levenshtein distance (short keys only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A parse error as the user reads it, built from the error's position, the key path and the
/// parser's message with every value taken out. No part of any value may reach stderr, a log
/// or a dead letter's failure header: the value may be a secret. Two traps are avoided: serde's
/// messages quote the value (`invalid type: string "hunter2"`), and after a syntax error the
/// recovering parser turns fragments of a broken string into "keys" (`value = "ab"cd"` yields
/// a key `cd"`), so a key path is only built from keys written before the error.
fn parse_failure(text: &str, path: &Path, e: &toml::de::Error) -> Failure {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    let syntax_ok = syntax_errors.is_empty();
    let mut place = path.display().to_string();
    let mut key = None;
    let span = e.span();
    if let Some(span) = &span {
        let (line, col) = line_col(text, span.start);
        place = format!("{place}:{line}:{col}");
        key = key_at(text, doc.get_ref(), span.start, syntax_ok);
    }
    // Syntax messages are the parser's fixed texts; data messages may quote the value.
    let raw = e.message().trim_end();
    let mut raw = if syntax_ok {
        without_values(raw)
    } else {
        raw.to_owned()
    };
    if let Some(span) = span
        && quotes_a_value(&raw, text, doc.get_ref(), span)
    {
        raw = "this value is not valid here (it is not shown: it may be a secret)".into();
    }
    let message = explain_parse_error(&raw, key.as_deref());
    match key {
        Some(key) => Failure::config(format!("{place}: {key}: {message}")),
        None => Failure::config(format!("{place}: {message}")),
    }
}

/// serde's message with the offending value replaced by its kind: `invalid type: string
/// "hunter2", expected u32` becomes `invalid type: a string, expected u32`, and `unknown
/// variant `smtp`, expected one of ...` becomes `unknown value, expected one of ...`.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kinds = [
                ("string \"", "a string", '"'),
                ("integer `", "an integer", '`'),
                ("floating point `", "a number", '`'),
                ("boolean `", "a boolean", '`'),
                ("character `", "a character", '`'),
            ];
            for (start, kind, close) in kinds {
                if let Some(quoted) = rest.strip_prefix(start) {
                    // The string is Debug-quoted: skip escaped characters to its end.
                    let mut escaped = false;
                    let end = quoted.char_indices().find_map(|(i, c)| match c {
                        _ if escaped => {
                            escaped = false;
                            None
                        }
                        '\\' if close == '"' => {
                            escaped = true;
                            None
                        }
                        c if c == close => Some(i + c.len_utf8()),
                        _ => None,
                    });
                    return match end {
                        Some(end) => format!("{prefix}{kind}{}", &quoted[end..]),
                        None => format!("{prefix}{kind}"),
                    };
                }
            }
            return message.to_owned();
        }
    }
    if message.starts_with("unknown variant `") {
        // The accepted values come last, after the value itself (which may contain anything).
        return match message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("unknown value, expected {expected}"),
            None => "unknown value".into(),
        };
    }
    message.to_owned()
}

/// Whether `message` still holds the value the error points at, or any secret written in the
/// file (the last guard: whatever the parser said, a secret is never repeated).
fn quotes_a_value(
    message: &str,
    text: &str,
    doc: &DeTable<'_>,
    span: std::ops::Range<usize>,
) -> bool {
    let mut values: Vec<String> = Vec::new();
    // The scalar at the error, as written (quotes and all) and without its quotes; for an
    // unknown or duplicate field the error points at a key, which is shown.
    let at_key = ["unknown field `", "duplicate"]
        .iter()
        .any(|p| message.contains(p));
    if let Some(written) = text.get(span.clone()).filter(|_| !at_key) {
        let written = written.trim();
        if !written.starts_with(['{', '[']) {
            values.push(written.to_owned());
            values.push(written.trim_matches(['"', '\'']).to_owned());
        }
    }
    fn secrets(table: &DeTable<'_>, under_secret: bool, out: &mut Vec<String>) {
        for (k, v) in table.iter() {
            let secret = under_secret
                || [
                    "password",
                    "token",
                    "client_secret",
                    "refresh_token",
                    "command",
                    "value",
                ]
                .contains(&k.get_ref().as_ref());
            collect(v.get_ref(), secret, out);
        }
    }
    fn collect(v: &DeValue<'_>, secret: bool, out: &mut Vec<String>) {
        match v {
            DeValue::String(s) if secret => out.push(s.to_string()),
            DeValue::Table(t) => secrets(t, secret, out),
            DeValue::Array(a) => a.iter().for_each(|i| collect(i.get_ref(), secret, out)),
            _ => {}
        }
    }
    secrets(doc, false, &mut values);
    values
        .iter()
        .filter(|v| v.chars().count() >= 3)
        .any(|v| message.contains(v.as_str()))
}

/// A key as written in the file is a bare key (letters, digits, `_`, `-`), the only kind named
/// after a syntax error: the recovering parser also makes keys of broken text
/// (`pass"s3cr3t"word`, a quoted secret alone on a line), which may be pieces of a value.
fn bare_key(written: &str) -> bool {
    !written.is_empty()
        && written
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The dotted key path at the error `offset`: the deepest key whose key or value covers it.
/// After a syntax error (`syntax_ok` false) only keys written wholly before the error count,
/// with their values ending before it when these are no table (what follows the error may be a broken string
/// read as keys and values; a word with no value, such as a
/// secret pasted alone on a line, is no key to the parser either), and a key on the error's
/// line stands for it when nothing covers the offset (an unclosed inline table).
fn key_at(text: &str, doc: &DeTable<'_>, offset: usize, syntax_ok: bool) -> Option<String> {
    let error_line = line_col(text, offset).0;
    let mut best: Vec<String> = Vec::new();
    let mut best_covers = false;
    struct Walk<'a> {
        text: &'a str,
        offset: usize,
        error_line: usize,
        syntax_ok: bool,
    }
    fn walk(
        w: &Walk<'_>,
        table: &DeTable<'_>,
        path: &mut Vec<String>,
        best: &mut Vec<String>,
        best_covers: &mut bool,
    ) {
        for (k, v) in table.iter() {
            let (ks, vs) = (k.span(), v.span());
            let scalar = !matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_));
            if !w.syntax_ok
                && (ks.end > w.offset
                    || (scalar && (vs.end >= w.offset || vs.is_empty()))
                    || !bare_key(w.text.get(ks.clone()).unwrap_or("\"")))
            {
                continue;
            }
            path.push(k.get_ref().to_string());
            let covers = |s: &std::ops::Range<usize>| {
                s.start <= w.offset && w.offset < s.end.max(s.start + 1)
            };
            let on_line = !w.syntax_ok && line_col(w.text, ks.start).0 == w.error_line;
            let here = covers(&ks) || covers(&vs);
            // A covering key beats one merely on the error's line; deeper beats shallower.
            if (here || on_line)
                && ((here && !*best_covers) || (here == *best_covers && path.len() > best.len()))
            {
                *best = path.clone();
                *best_covers = here;
            }
            walk_value(w, v, path, best, best_covers);
            path.pop();
        }
    }
    fn walk_value(
        w: &Walk<'_>,
        v: &Spanned<DeValue<'_>>,
        path: &mut Vec<String>,
        best: &mut Vec<String>,
        best_covers: &mut bool,
    ) {
        match v.get_ref() {
            DeValue::Table(t) => walk(w, t, path, best, best_covers),
            DeValue::Array(a) => {
                for item in a.iter() {
                    walk_value(w, item, path, best, best_covers);
                }
            }
            _ => {}
        }
    }
    let w = Walk {
        text,
        offset,
        error_line,
        syntax_ok,
    };
    walk(&w, doc, &mut Vec::new(), &mut best, &mut best_covers);
    (!best.is_empty()).then(|| best.join("."))
}

/// The line on which the key `path` is written (falling back to its nearest written parent).
fn line_of(text: &str, path: &[String]) -> Option<usize> {
    let (doc, _) = DeTable::parse_recoverable(text);
    let mut table = doc.get_ref();
    let mut line = None;
    for part in path {
        let Some((k, v)) = table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == part.as_str())
        else {
            break;
        };
        let span = k.span();
        if span.end > span.start {
            line = Some(line_col(text, span.start).0);
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config.example.toml");

    #[test]
    fn not_found_points_to_the_example() {
        let f = not_found();
        assert_eq!(f.exit, crate::exit::Exit::Config);
        assert!(f.message.contains("config.example.toml"));
    }

    /// A command's failure is named by its program: the command line (a vault token in an
    /// argument or a variable) is not in the message, nor in Debug output.
    #[test]
    fn secret_command_messages_name_the_program_only() {
        let src = SecretSource {
            command: Some("printf 's3cret\\n'; echo noise >&2".into()),
            ..SecretSource::default()
        };
        assert_eq!(src.resolve("auth.password").unwrap().expose(), "s3cret");

        let failing = SecretSource {
            command: Some("VAULT_TOKEN=hvs.tok3n sh -c 'exit 3' vault-token-arg".into()),
            ..SecretSource::default()
        };
        let f = failing.resolve("auth.password").unwrap_err();
        assert_eq!(f.exit, crate::exit::Exit::Config);
        assert!(
            f.message
                .starts_with("auth.password: command `sh` failed (exit status: 3)"),
            "{}",
            f.message
        );
        let shown = format!("{} {failing:?}", f.message);
        assert!(
            !shown.contains("tok3n") && !shown.contains("vault-token-arg"),
            "{shown}"
        );

        let hung = SecretSource {
            command: Some("sleep 20 # hvs.tok3n".into()),
            timeout_secs: Some(1),
            ..SecretSource::default()
        };
        let started = std::time::Instant::now();
        let f = hung.resolve("auth.client_secret").unwrap_err();
        assert_eq!(f.exit, crate::exit::Exit::TempFail);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            f.message
                .contains("command `sleep` did not finish within 1 s"),
            "{}",
            f.message
        );
        assert!(!f.message.contains("tok3n"), "{}", f.message);

        let big = SecretSource {
            command: Some("head -c 100000 /dev/zero".into()),
            ..SecretSource::default()
        };
        let f = big.resolve("auth.token").unwrap_err();
        assert!(f.message.contains("more than 64 KiB"), "{}", f.message);
    }

    fn parse(text: &str) -> Result<Config, Failure> {
        Config::parse(text, Path::new("/etc/m365send/config.toml"))
    }

    #[test]
    fn example_parses_and_documents_every_key() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.default_profile.as_deref(), Some("cron"));
        let cron = &c.profiles["cron"];
        assert_eq!(cron.mode, Mode::Relay);
        assert!(cron.tls.client_cert.is_some());
        assert_eq!(c.profiles["app"].auth_method(), AuthMethod::OAuth);
        assert_eq!(c.profiles["legacy"].auth_method(), AuthMethod::Password);
        assert_eq!(c.profiles["lab"].mode, Mode::Direct);
        assert_eq!(c.profiles["me"].auth.flow, OAuthFlow::Delegated);
        // Every key of Config and Profile appears in the example (commented or not).
        // Keep this list in step with the structs.
        for key in [
            "default_profile",
            "dead_letter",
            "log",
            "syslog",
            "file",
            "spool_dir",
            "queue_lifetime_days",
            "cache_dir",
            "trusted_users",
            "profiles",
            "mode",
            "cloud",
            "tenant",
            "mailbox",
            "sender",
            "rewrite_from",
            "addresses",
            "accepted_domains",
            "default_domain",
            "aliases",
            "aliases_file",
            "endpoint",
            "host",
            "port",
            "mx_host",
            "mx_domain",
            "dns_server",
            "allow_any_mx",
            "tls",
            "min_version",
            "ca_file",
            "client_cert",
            "client_key",
            "auth",
            "method",
            "user",
            "password",
            "token",
            "flow",
            "client_id",
            "client_secret",
            "certificate",
            "private_key",
            "refresh_token",
            "authority",
            "scope",
            "refresh_window_secs",
            "assertion_alg",
            "save_to_sent_items",
            "graph_host",
            "fallback",
            "helo",
            "max_size",
            "timeouts",
            "connect",
            "command",
            "data_end",
            "retry",
            "attempts",
            "initial_delay_ms",
            "chunking",
            "max_recipients",
            "queue_connections",
            "queue",
            "rate_per_minute",
            "env",
            "value",
            "timeout_secs",
            "serve",
            "listen",
            "networks",
            "hostname",
            "tls_cert",
            "tls_key",
            "plaintext_auth",
            "require_auth",
            "senders",
            "profile",
            "max_connections",
            "max_message_size",
            "max_recipients",
            "client_rate_per_minute",
            "auth_failures",
            "lockout_minutes",
            "idle_timeout",
            "queue_interval",
            "shutdown_timeout",
            "users",
            "password_hash",
            "password_hash_file",
        ] {
            let written = EXAMPLE.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
                    || l.starts_with(&format!("[{key}"))
                    || l.contains(&format!(".{key}]"))
                    || l.contains(&format!("{{ {key} ="))
                    || l.contains(&format!(", {key} ="))
            });
            assert!(written, "config.example.toml does not document `{key}`");
        }
    }

    #[test]
    fn chunking_is_auto_true_or_false() {
        let chunking = |v: &str| {
            parse(&format!("[profiles.a]\nmode = \"relay\"\n{v}\n"))
                .map(|c| c.profiles["a"].chunking)
        };
        assert_eq!(chunking("").unwrap(), Chunking::Auto);
        assert_eq!(chunking("chunking = \"auto\"").unwrap(), Chunking::Auto);
        assert_eq!(chunking("chunking = true").unwrap(), Chunking::On);
        assert_eq!(chunking("chunking = false").unwrap(), Chunking::Off);
        assert!(Chunking::Auto.enabled() && Chunking::On.enabled());
        assert!(!Chunking::Off.enabled());
        let e = chunking("chunking = \"yes\"").unwrap_err();
        assert!(
            e.message.contains("profiles.a.chunking")
                && e.message.contains("expected \"auto\", true or false")
                && !e.message.contains("yes"),
            "{}",
            e.message
        );
    }

    #[test]
    fn serve_section_is_checked() {
        let base = "[profiles.a]\nmode = \"relay\"\n";
        let ok = parse(&format!(
            "{base}[serve]\nnetworks = [\"10.0.0.0/8\", \"192.0.2.7\"]\n"
        ))
        .unwrap();
        let nets = ok.serve.networks();
        assert_eq!(nets.len(), 2);
        assert!(nets[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
        assert_eq!(
            ok.serve.listen(),
            vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
        );
        for (serve, needle) in [
            (
                "[serve]\nnetworks = [\"10.0.0.0/33\"]\n",
                ":4: serve.networks: \"10.0.0.0/33\" is not a network",
            ),
            (
                "[serve]\ntls_cert = \"/x\"\n",
                "serve.tls_cert: a certificate needs its key",
            ),
            (
                "[serve]\nprofile = \"nope\"\n",
                "serve.profile: there is no such profile",
            ),
            (
                "[serve]\nlisten = []\n",
                "serve.listen: no address to listen on",
            ),
            (
                "[serve]\nmax_connections = 0\n",
                "serve.max_connections: 0 is out of range",
            ),
            (
                "[serve]\nsenders = [\"a b\"]\n",
                "serve.senders: \"a b\" is not an address",
            ),
            (
                "[serve.users.u]\nsenders = [\"*\"]\n",
                "serve.users.u.password_hash: the user needs password_hash",
            ),
            (
                "[serve.users.u]\npassword_hash = \"$6$x$y\"\n",
                "serve.users.u.senders: list the envelope senders",
            ),
            (
                "[serve.users.u]\npassword = \"x\"\n",
                "unknown field `password`",
            ),
        ] {
            let e = parse(&format!("{base}{serve}")).unwrap_err();
            assert!(e.message.contains(needle), "{serve}: {}", e.message);
        }
        assert!(sender_matches("*", "a@b"));
        assert!(sender_matches("*@Contoso.com", "x@contoso.COM"));
        assert!(!sender_matches("*@contoso.com", "x@evil.com"));
        assert!(sender_matches("A@contoso.com", "a@contoso.com"));
        assert!(!sender_matches("a@contoso.com", ""));
    }

    #[test]
    fn parse_error_names_file_line_and_key() {
        let text = "default_profile = \"a\"\n\n[profiles.a]\nmode = \"relay\"\ntsl = {}\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.exit, crate::exit::Exit::Config);
        assert!(
            e.message
                .starts_with("/etc/m365send/config.toml:5:1: profiles.a.tsl: "),
            "{}",
            e.message
        );
        assert!(e.message.contains("unknown field"), "{}", e.message);

        let text = "[profiles.a]\nmode = \"relay\"\ntls = { min_version = \"1.1\" }\n";
        let e = parse(text).unwrap_err();
        assert!(
            e.message.contains(":3:") && e.message.contains("profiles.a.tls.min_version"),
            "{}",
            e.message
        );

        let text = "[profiles.a]\nmode = \"smtp\"\n";
        let e = parse(text).unwrap_err();
        assert!(
            e.message.contains(":2:") && e.message.contains("profiles.a.mode"),
            "{}",
            e.message
        );

        let e = parse("[profiles.a]\naliases = { root = \"x\"\n").unwrap_err();
        assert!(
            e.message.contains(":2:") && e.message.contains("profiles.a.aliases"),
            "{}",
            e.message
        );

        let e = parse("[profiles.a\n").unwrap_err();
        assert!(
            e.message.starts_with("/etc/m365send/config.toml:1:"),
            "{}",
            e.message
        );
    }

    #[test]
    fn alias_targets_as_a_string_or_a_list() {
        let c = parse(
            "[profiles.a]\naliases = { root = [\"a@contoso.com\", \"b@contoso.com\"], pm = \"root\" }\n",
        )
        .unwrap();
        let a = &c.profiles["a"].aliases;
        assert_eq!(a["root"], "a@contoso.com, b@contoso.com");
        assert_eq!(a["pm"], "root");
        let e = parse("[profiles.a]\naccepted_domains = \"contoso.com\"\n").unwrap_err();
        assert!(
            e.message.contains("accepted_domains = [\"...\"]"),
            "{}",
            e.message
        );
        let e = parse("[profiles.a]\naliases = { root = 1 }\n").unwrap_err();
        assert!(
            e.message.contains(":2:") && e.message.contains("a list of address strings"),
            "{}",
            e.message
        );
    }

    #[test]
    fn parse_errors_never_quote_a_secret_and_say_what_to_write() {
        for text in [
            "[profiles.a]\nauth = { password = \"hunter2\" }\n",
            "[profiles.a.auth]\nclient_secret = \"hunter2\"\n",
            "[profiles.a.auth]\ntoken = { value = [\"hunter2\"] }\n",
        ] {
            let e = parse(text).unwrap_err();
            assert!(!e.message.contains("hunter2"), "{}", e.message);
            assert!(e.message.contains("{ env = \"VAR\" }"), "{}", e.message);
        }
        let e = parse("[profiles.a.auth]\nclient_secret = { valu = \"hunter2\" }\n").unwrap_err();
        assert!(e.message.contains("did you mean `value`"), "{}", e.message);
        assert!(!e.message.contains("hunter2"), "{}", e.message);

        let e = parse("[profiles.a.tls]\nmin_version = 1.2\n").unwrap_err();
        assert!(
            e.message.contains(":2:") && e.message.contains("expected \"1.2\" or \"1.3\""),
            "{}",
            e.message
        );
        let e = parse("[profiles.a]\nendpoint = { dns_server = \"10.0.0.53\" }\n").unwrap_err();
        assert!(
            e.message.contains("profiles.a.endpoint.dns_server")
                && e.message.contains("give IP:PORT"),
            "{}",
            e.message
        );
        // A top-level key written after a [table] header lands in that table.
        let e = parse("[profiles.a]\nmode = \"relay\"\nqueue_lifetime_days = 3\n").unwrap_err();
        assert!(
            e.message.contains(":3:") && e.message.contains("above the first [table] header"),
            "{}",
            e.message
        );
    }

    /// No part of a value reaches a parse error: not serde's quoted value, not fragments of a
    /// broken string that the recovering parser reads as keys.
    #[test]
    fn parse_errors_show_no_part_of_any_value() {
        for text in [
            "[profiles.a.auth]\nclient_secret = { value = \"s3cr3t-abc\"LEAK-def\" }\n",
            "[profiles.a.auth]\nclient_secret = { value = 's3cr3t-abc'LEAKx }\n",
            "[profiles.a.auth]\nclient_secret = { value = \"s3cr3t-abc\" \"LEAK-zzz\" }\n",
            "[profiles.a.auth]\nclient_secret = { value = \"s3cr3t-abc\", other = s3cr3t-LEAK }\n",
            "[profiles.a.auth]\nclient_secret = { value = \"s3cr3t-LEAK\\q\" }\n",
            "[profiles.a.auth]\nclient_secret = { value = \"s3cr3t-LEAK def }\n",
            "[profiles.a.auth]\nclient_secret = { value = s3cr3t-LEAK }\n",
            "[profiles.a]\nauth = \"s3cr3t-LEAK\"\n",
            "[profiles.a]\nhelo = 123456789\n",
            "[profiles.a]\nmode = \"LEAK-mode\"\n",
            "[profiles.a]\ns3cr3t-LEAK-pasted-alone\n",
            "[profiles.a]\nx = { a = 1 \"LEAK\" }\n",
            "[profiles]\na = { auth = { password = { command = \"vault LEAK\" } }, \"LEAK2\" }\n",
            // Found by fuzz/config_parse: broken keys made of a value's pieces, before the
            // error, and a quoted string alone on the line after a broken one.
            "[profiles.a]\nauth = { pasauth = { pass\"s3cr3t-LEAK\"wordsword. = \"s3cr3t-LEAK\" }\n",
            "[ =r2-s3cr3profil\\es.a'.auth]\nclient_secret = { valu =r2-s3cr3t\" }\n \"s3cr3t-LEAK\" }\n",
            "[+rofil   es.afil   es.a.aut\"LEAK.aut\"s3cr3t-LEAK }\n",
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.exit, crate::exit::Exit::Config);
            for part in ["s3cr3t", "LEAK", "123456789"] {
                assert!(
                    !e.message.contains(part),
                    "{part} in {:?}\nfrom {text:?}",
                    e.message
                );
            }
            assert!(
                e.message.starts_with("/etc/m365send/config.toml:"),
                "{}",
                e.message
            );
        }
        // What is left still says where and what.
        let e = parse("[profiles.a]\nmode = \"smtp\"\n").unwrap_err();
        assert!(
            e.message
                .ends_with("profiles.a.mode: unknown value, expected one of `submit`, `relay`, `direct`, `hve`, `acs`, `graph`"),
            "{}",
            e.message
        );
        let e = parse("[profiles.a]\nhelo = 12\n").unwrap_err();
        assert!(
            e.message
                .ends_with("profiles.a.helo: invalid type: an integer, expected a string"),
            "{}",
            e.message
        );
        let e = parse("[profiles.a.auth]\nclient_secret = { value = \"ab\"cd\" }\n").unwrap_err();
        assert!(
            e.message.contains(":2:") && e.message.contains(": profiles.a.auth.client_secret: "),
            "{}",
            e.message
        );
        assert_eq!(
            without_values(r#"invalid type: string "a\"b, expected c", expected u32"#),
            "invalid type: a string, expected u32"
        );
    }

    #[test]
    fn validation_names_key_and_line() {
        let cases = [
            (
                "default_profile = \"b\"\n[profiles.a]\n",
                "default_profile",
                1,
            ),
            ("[profiles.a]\nsender = \"root\"\n", "profiles.a.sender", 2),
            (
                "[profiles.a]\nmailbox = \"Alice <a@b.c>\"\n",
                "profiles.a.mailbox",
                2,
            ),
            (
                "[profiles.a]\naccepted_domains = [\"@contoso.com\"]\n",
                "profiles.a.accepted_domains",
                2,
            ),
            (
                "[profiles.a]\n\n[profiles.a.tls]\nclient_cert = \"/x.crt\"\n",
                "profiles.a.tls.client_cert",
                4,
            ),
            (
                "[profiles.a]\nauth = { method = \"password\" }\n",
                "profiles.a.auth.password",
                2,
            ),
            (
                "[profiles.a]\nauth = { client_secret = { env = \"X\", file = \"/x\" } }\n",
                "profiles.a.auth.client_secret",
                2,
            ),
            ("[profiles.\"a b\"]\n", "profiles.a b", 1),
            (
                "queue_lifetime_days = 0\n[profiles.a]\n",
                "queue_lifetime_days",
                1,
            ),
            (
                "queue_lifetime_days = 4000000000\n[profiles.a]\n",
                "queue_lifetime_days",
                1,
            ),
            (
                "[profiles.a]\ntimeouts = { connect = 0 }\n",
                "profiles.a.timeouts.connect",
                2,
            ),
            (
                "[profiles.a]\nauth = { refresh_window_secs = 7200 }\n",
                "profiles.a.auth.refresh_window_secs",
                2,
            ),
            (
                "[profiles.a]\n[profiles.a.retry]\nattempts = 0\n",
                "profiles.a.retry.attempts",
                3,
            ),
            (
                "[profiles.a]\nretry = { initial_delay_ms = 18446744073709551615 }\n",
                "profiles.a.retry.initial_delay_ms",
                2,
            ),
        ];
        for (text, key, line) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.exit, crate::exit::Exit::Config);
            let place = if line > 0 {
                format!("config.toml:{line}: {key}: ")
            } else {
                format!("config.toml: {key}: ")
            };
            assert!(
                e.message.contains(&place),
                "want {place:?} in {:?}",
                e.message
            );
        }
    }

    fn three() -> Config {
        parse(
            "default_profile = \"cron\"\n\
             [profiles.cron]\nmode = \"relay\"\nsender = \"alerts@contoso.com\"\naddresses = [\"root\", \"*@web1.contoso.com\"]\n\
             [profiles.app]\nmailbox = \"App@Contoso.com\"\n\
             [profiles.me]\nmailbox = \"alice@contoso.com\"\naddresses = [\"alice\"]\n",
        )
        .unwrap()
    }

    #[test]
    fn profile_choice() {
        let c = three();
        let pick =
            |name: Option<&str>, from: Option<&str>| c.select_profile(name, from).unwrap().name;
        assert_eq!(pick(Some("me"), Some("app@contoso.com")), "me");
        assert_eq!(pick(None, Some("app@contoso.com")), "app");
        assert_eq!(pick(None, Some("APP@contoso.COM")), "app");
        assert_eq!(pick(None, Some("App <app@contoso.com>")), "app");
        assert_eq!(pick(None, Some("alice")), "me");
        assert_eq!(pick(None, Some("x@web1.contoso.com")), "cron");
        assert_eq!(pick(None, Some("nobody@example.com")), "cron");
        assert_eq!(pick(None, None), "cron");
        let e = c.select_profile(Some("nope"), None).unwrap_err();
        assert_eq!(e.exit, crate::exit::Exit::Config);
        assert!(
            e.message.contains("\"app\", \"cron\", \"me\""),
            "{}",
            e.message
        );

        let mut c = three();
        c.default_profile = None;
        assert!(c.select_profile(None, None).is_err());
        c.profiles.retain(|n, _| n == "me");
        assert_eq!(c.select_profile(None, None).unwrap().name, "me");
    }

    #[test]
    fn mode_override() {
        let p = three().select_profile(Some("cron"), None).unwrap();
        assert_eq!(p.clone().with_mode(None).mode, Mode::Relay);
        assert_eq!(p.with_mode(Some(Mode::Direct)).mode, Mode::Direct);
        let p = Profile::for_mode(Mode::Relay);
        assert_eq!(p.mode, Mode::Relay);
        assert_eq!(p.auth_method(), AuthMethod::None);
    }

    #[test]
    fn search_order() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            search_paths(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            vec![
                PathBuf::from("/x/m365send/config.toml"),
                PathBuf::from(SYSTEM_CONFIG)
            ]
        );
        assert_eq!(
            search_paths(&env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/h")])),
            vec![
                PathBuf::from("/h/.config/m365send/config.toml"),
                PathBuf::from(SYSTEM_CONFIG)
            ]
        );
        assert_eq!(search_paths(&env(&[])), vec![PathBuf::from(SYSTEM_CONFIG)]);
    }

    #[cfg(unix)]
    #[test]
    fn files_and_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let env_dir = dir.path().to_owned();
        let env =
            move |name: &str| (name == "XDG_CONFIG_HOME").then(|| env_dir.clone().into_os_string());
        // Nothing anywhere (the system file may exist on a developer's machine).
        if !Path::new(SYSTEM_CONFIG).exists() {
            assert!(load_with_env(None, &env).unwrap().is_none());
        }
        // An explicit missing file is an error naming it.
        let missing = dir.path().join("nope.toml");
        let e = load_with_env(Some(&missing), &env).unwrap_err();
        assert!(e.message.contains("nope.toml"), "{}", e.message);
        // Found by XDG.
        let file = dir.path().join("m365send/config.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(
            &file,
            "[profiles.a]\nauth = { password = { value = \"hunter2\" } }\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_with_env(None, &env).unwrap_err();
        assert_eq!(e.exit, crate::exit::Exit::Config);
        assert!(
            e.message.contains(&format!("chmod 600 {}", file.display())),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("profiles.a.auth.password.value"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("hunter2"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = load_with_env(None, &env).unwrap().unwrap();
        assert_eq!(c.path.as_deref(), Some(file.as_path()));
        // No inline secret: any mode is fine.
        std::fs::write(
            &file,
            "[profiles.a]\nauth = { password = { env = \"P\" } }\n",
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load_with_env(None, &env).unwrap().is_some());
    }

    #[test]
    fn close_key_names_are_suggested() {
        let e = parse("[profiles.a]\nsendr = \"a@b.c\"\n").unwrap_err();
        assert!(
            e.message
                .ends_with("profiles.a.sendr: unknown field `sendr`; did you mean `sender`?"),
            "{}",
            e.message
        );
        let e = parse("defaultprofile = \"a\"\n").unwrap_err();
        assert!(
            e.message.contains("did you mean `default_profile`?"),
            "{}",
            e.message
        );
        let e = parse("[profiles.a]\nfrobnicate = 1\n").unwrap_err();
        assert!(e.message.contains("expected one of"), "{}", e.message);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn quoting() {
        assert_eq!(
            shell_quote("/etc/m365send/config.toml"),
            "/etc/m365send/config.toml"
        );
        assert_eq!(shell_quote("/tmp/my conf.toml"), "'/tmp/my conf.toml'");
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(bare_address(" Cron <root@x> "), "root@x");
    }
}
