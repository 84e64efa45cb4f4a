//! The JWT client assertion for app-only authentication with a certificate.
//!
//! Owns: loading an RSA key (PEM, PKCS#8 or PKCS#1) and its certificate (PEM), and signing the
//! assertion with ring: PS256 (default) or RS256. Header `{alg, typ: JWT, x5t#S256}` (plus the
//! legacy SHA-1 `x5t` with RS256); claims aud = token endpoint, iss = sub = client id, random
//! jti, nbf = iat = now, exp = now + 5 minutes. Must not: print the key or the assertion
//! (the assertion is returned as a `Secret`).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::AssertionAlgorithm;
use crate::exit::Failure;
use crate::secret::Secret;

/// Lifetime of an assertion, seconds (Microsoft accepts at most 10 minutes).
pub const LIFETIME_SECS: i64 = 300;

/// A loaded certificate and its private key.
pub struct Signer {
    key: RsaKeyPair,
    cert_der: Vec<u8>,
    alg: AssertionAlgorithm,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("alg", &self.alg)
            .field("x5t#S256", &self.thumbprint_s256())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Signer {
    /// Load `cert` (PEM, the first certificate) and `key` (PEM RSA key, PKCS#8 or PKCS#1).
    pub fn load(cert: &Path, key: &Path, alg: AssertionAlgorithm) -> Result<Signer, Failure> {
        let cert_der = CertificateDer::from_pem_file(cert).map_err(|e| {
            Failure::config(format!(
                "auth.certificate: cannot read a PEM certificate from {}: {e}",
                cert.display()
            ))
        })?;
        // Checked as the configuration is (owner, mode, the directories above it).
        let pem = crate::trust::read_file(key, 1024 * 1024).map_err(|e| {
            Failure::config(format!(
                "auth.private_key: cannot read {}: {e}",
                key.display()
            ))
        })?;
        let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            Failure::config(format!(
                "auth.private_key: cannot read a PEM private key from {}: {e}",
                key.display()
            ))
        })?;
        let bad = |what: &str| {
            Failure::config(format!(
                "auth.private_key: {} is not a usable RSA private key ({what}); \
                 give an RSA key (2048 bits or more) in PKCS#8 or PKCS#1 PEM",
                key.display()
            ))
        };
        let keypair = match &key_der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            PrivateKeyDer::Sec1(_) => return Err(bad("EC keys are not supported")),
            _ => return Err(bad("unknown key type")),
        }
        .map_err(|e| bad(&e.to_string()))?;
        let signer = Signer {
            key: keypair,
            cert_der: cert_der.as_ref().to_vec(),
            alg,
        };
        // The certificate's SubjectPublicKeyInfo holds the RSAPublicKey DER verbatim.
        let public = signer.key.public_key().as_ref();
        if !contains(&signer.cert_der, public) {
            return Err(Failure::config(format!(
                "auth.private_key {} does not belong to auth.certificate {}",
                key.display(),
                cert.display()
            )));
        }
        Ok(signer)
    }

    /// base64url(SHA-256(certificate DER)): the `x5t#S256` header value.
    pub fn thumbprint_s256(&self) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &self.cert_der))
    }

    fn thumbprint_sha1(&self) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &self.cert_der,
        ))
    }

    /// A signed assertion for `client_id` at token endpoint `aud`, valid from `now` (unix).
    pub fn assertion(&self, client_id: &str, aud: &str, now: i64) -> Result<Secret, Failure> {
        let rng = SystemRandom::new();
        let mut jti = [0u8; 16];
        rng.fill(&mut jti)
            .map_err(|_| Failure::new(crate::exit::Exit::OsErr, "no random numbers available"))?;
        let mut header = serde_json::json!({
            "alg": self.alg.as_str(),
            "typ": "JWT",
            "x5t#S256": self.thumbprint_s256(),
        });
        if self.alg == AssertionAlgorithm::Rs256 {
            header["x5t"] = serde_json::Value::String(self.thumbprint_sha1());
        }
        let claims = serde_json::json!({
            "aud": aud,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid_like(&jti),
            "nbf": now,
            "iat": now,
            "exp": now + LIFETIME_SECS,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let padding: &dyn signature::RsaEncoding = match self.alg {
            AssertionAlgorithm::Ps256 => &signature::RSA_PSS_SHA256,
            AssertionAlgorithm::Rs256 => &signature::RSA_PKCS1_SHA256,
        };
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(padding, &rng, signing_input.as_bytes(), &mut sig)
            .map_err(|_| {
                Failure::config("auth.private_key: signing the client assertion failed")
            })?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig)
        )))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn uuid_like(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
