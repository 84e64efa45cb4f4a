//! TLS configuration: the client (rustls with the ring provider, TLS 1.2 minimum, 1.3 on
//! request, the system roots plus an optional extra CA file, and an optional client
//! certificate), and the server side of `m365send serve` (a certificate and key from PEM files).
//! There is deliberately no way to turn certificate verification off. The CA file, the client
//! certificate and its key, and serve's certificate and key are read only when no other user
//! could have written them (`trust`).

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

/// Read a file that decides whom we trust or who we are (CA file, client certificate and
/// key) after the `trust` check: another user who could write it could add a CA of theirs.
fn read_checked(path: &Path, what: &str) -> Result<Vec<u8>, TlsSetupError> {
    crate::trust::read_file(path, 16 * 1024 * 1024)
        .map_err(|e| TlsSetupError(format!("cannot read {what} {}: {e}", path.display())))
}

/// The certificates of a PEM file (`what` names it in errors: "client certificate").
pub(crate) fn load_certs(
    path: &Path,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_checked(path, what)?;
    let iter = CertificateDer::pem_slice_iter(&pem);
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
            let pem = read_checked(&cc.key, "client key")?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
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

/// The server side of STARTTLS (`m365send serve`): this certificate chain and key, TLS 1.2 and
/// 1.3, no client certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(cert, "server certificate")?;
    let key_pem = read_checked(key, "server key")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        TlsSetupError(format!(
            "server key {}: no usable RSA, EC or PKCS#8 private key: {e}",
            key.display()
        ))
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            TlsSetupError(format!(
                "server certificate {} and key {} do not work together: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA file or client key another user owns is refused: a CA of theirs would let them
    /// read the session (and the token in it).
    #[test]
    fn files_another_user_could_write_are_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = dir.path().join("client.key");
        std::fs::copy(data.join("test-rsa.crt"), &ca).unwrap();
        std::fs::copy(data.join("test-rsa-pkcs8.key"), &key).unwrap();
        let settings = TlsSettings {
            min_version: TlsVersion::V1_2,
            ca_file: Some(ca.clone()),
            client_cert: Some(crate::route::ClientCert {
                cert: ca.clone(),
                key: key.clone(),
            }),
        };
        assert!(client_config(&settings).is_ok());
        std::os::unix::fs::chown(&key, Some(65534), None).unwrap();
        let e = client_config(&settings).unwrap_err().0;
        assert!(
            e.starts_with(&format!(
                "cannot read client key {}: refused",
                key.display()
            )) && e.contains("owned by uid 65534"),
            "{e}"
        );
        std::os::unix::fs::chown(&key, Some(0), None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = client_config(&settings).unwrap_err().0;
        assert!(e.contains("CA file") && e.contains("writable by"), "{e}");
    }
}
