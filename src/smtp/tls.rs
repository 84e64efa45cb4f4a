//! TLS client configuration: rustls with the ring provider, TLS 1.2 minimum (1.3 on request),
//! the system roots plus an optional extra CA file, and an optional client certificate.
//! There is deliberately no way to turn certificate verification off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsVersion;
use crate::route::ClientCert;

/// What the TLS client needs (taken from an `Endpoint`).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub min_version: TlsVersion,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<ClientCert>,
}

/// A problem with the local TLS setup (a configuration error, not the server's fault).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(pub String);

fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsSetupError(format!("cannot read {what} {}: {e}", path.display())))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError(format!("{what} {}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "{what} {}: no CERTIFICATE found",
            path.display()
        )));
    }
    Ok(certs)
}

/// The system's trusted CA certificates, read once per process: the queue runner may build
/// a TLS configuration per endpoint, and reading /etc/ssl/certs costs milliseconds each time.
fn system_roots() -> &'static [rustls_pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls_pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// Start reading the system's CA certificates on another thread, so that the milliseconds
/// it takes overlap with reading and spooling the message; `client_config` then finds them
/// read (or waits for the read to end).
pub fn preload_system_roots() {
    let _ = std::thread::Builder::new()
        .name("ca-roots".into())
        .spawn(|| {
            system_roots();
        });
}

/// Build the rustls client configuration.
pub fn client_config(s: &TlsSettings) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))?;

    let mut roots = RootCertStore::empty();
    for cert in system_roots() {
        let _ = roots.add(cert.clone());
    }
    if let Some(ca) = &s.ca_file {
        for cert in load_certs(ca, "CA file")? {
            roots.add(cert).map_err(|e| {
                TlsSetupError(format!(
                    "CA file {}: unusable certificate: {e}",
                    ca.display()
                ))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsSetupError(
            "no trusted CA certificates: the system store is empty and no tls.ca_file is set"
                .into(),
        ));
    }
    let builder = builder.with_root_certificates(roots);
    let config = match &s.client_cert {
        None => builder.with_no_client_auth(),
        Some(cc) => {
            let chain = load_certs(&cc.cert, "client certificate")?;
            let key = PrivateKeyDer::from_pem_file(&cc.key).map_err(|e| {
                TlsSetupError(format!(
                    "client key {}: no usable RSA, EC or PKCS#8 private key: {e}",
                    cc.key.display()
                ))
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                TlsSetupError(format!(
                    "client certificate {} and key {} do not work together: {e}",
                    cc.cert.display(),
                    cc.key.display()
                ))
            })?
        }
    };
    Ok(Arc::new(config))
}
