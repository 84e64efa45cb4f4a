//! Route: from a profile's mode to the endpoint to connect to.
//!
//! Owns: the host/port/TLS/auth policy of each mode, the MX lookup for relay and direct
//! (hickory-resolver; a configured DNS server for tests), the refusal of port 465 for
//! submission, and the recipient/sender domain checks of direct send and relay.
//! Must not: open SMTP connections.

use std::path::PathBuf;

use crate::config::{Mode, TlsVersion};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// STARTTLS must succeed before anything else is sent.
    Required,
    /// STARTTLS when offered (direct send).
    Opportunistic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    None,
    Password,
    OAuth,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Host name (or IP literal) to connect to; also the name the certificate must match.
    pub name: String,
    pub port: u16,
    /// MX preference when the host came from an MX lookup.
    pub preference: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub mode: Mode,
    /// Hosts in the order to try them.
    pub hosts: Vec<Host>,
    pub tls: TlsPolicy,
    pub tls_min: TlsVersion,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<ClientCert>,
    pub auth: AuthKind,
    /// Where the hosts came from, for the user: "MX of contoso.com", "profile endpoint.host",
    /// "--server", "default for submit".
    pub source: String,
}

/// The endpoint for this profile and envelope. `server` is `--server HOST[:PORT]`, which
/// overrides the hosts of any mode (keeping its TLS and auth policy).
pub async fn resolve(
    _profile: &crate::config::Profile,
    _envelope: &crate::message::Envelope,
    _server: Option<&str>,
) -> Result<Endpoint, crate::exit::Failure> {
    Err(crate::exit::Failure::new(
        crate::exit::Exit::Software,
        "routing is not implemented yet",
    ))
}
