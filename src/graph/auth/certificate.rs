//! Certificate credentials: a PEM file (certificate and unencrypted private key) or a PKCS#12
//! file (optionally password-protected), turned into a signer of client assertions.
//!
//! Invariants: the certificate used is the one whose public key matches the private key (a
//! PKCS#12 file often lists its CA first); only RSA keys are accepted (Entra takes RS256 and
//! PS256 assertions only); a certificate outside its validity period is refused before any
//! request, since Entra would refuse it.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;
use sha1::Digest as _;

use super::{files, AuthError};
use crate::config::{AssertionAlg, AuthConfig};

const RSA_OID: &str = "1.2.840.113549.1.1.1";
/// Lifetime of a client assertion; Entra accepts at most 10 minutes.
const ASSERTION_LIFETIME: u64 = 300;

/// Where the certificate comes from; read again for every token request.
#[derive(Debug)]
pub(super) struct CertificateFile {
    path: PathBuf,
    password_file: Option<PathBuf>,
    alg: AssertionAlg,
    allow_insecure: bool,
}

/// A loaded certificate and its key.
pub(super) struct Signer {
    key: EncodingKey,
    x5t: String,
    x5t_s256: String,
    alg: AssertionAlg,
    pub not_after: SystemTime,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("x5t", &self.x5t)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl CertificateFile {
    pub(super) fn new(cfg: &AuthConfig, path: &Path) -> CertificateFile {
        CertificateFile {
            path: path.to_owned(),
            password_file: cfg.certificate_password_file.clone(),
            alg: cfg.assertion,
            allow_insecure: cfg.allow_insecure_permissions,
        }
    }

    /// Reads the file (and its password) as they are now.
    pub(super) fn load(&self) -> Result<Signer, AuthError> {
        files::check_private(&self.path, self.allow_insecure)?;
        let bytes = files::read(&self.path)?;
        let (key, cert) = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            self.read_pem(&bytes)?
        } else {
            self.read_pkcs12(&bytes)?
        };
        let not_after = self.check_validity(&cert)?;
        Ok(Signer {
            key,
            x5t: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(&cert)),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&cert)),
            alg: self.alg,
            not_after,
        })
    }

    pub(super) fn describe(&self, signer: Option<&Signer>) -> String {
        let format = if self.password_file.is_some() {
            "PKCS#12 with a password"
        } else {
            "certificate file"
        };
        let mut s = format!("certificate {} ({format}", self.path.display());
        if let Some(sg) = signer {
            let _ = write!(
                s,
                ", thumbprint {}, {}, expires {}",
                match sg.alg {
                    AssertionAlg::Rs256 => &sg.x5t,
                    AssertionAlg::Ps256 => &sg.x5t_s256,
                },
                match sg.alg {
                    AssertionAlg::Rs256 => "RS256 + x5t",
                    AssertionAlg::Ps256 => "PS256 + x5t#S256",
                },
                humantime::format_rfc3339_seconds(sg.not_after)
            );
        }
        s.push(')');
        s
    }

    fn bad(&self, reason: impl Into<String>) -> AuthError {
        AuthError::Certificate {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    fn read_pem(&self, text: &[u8]) -> Result<(EncodingKey, Vec<u8>), AuthError> {
        let blocks = pem::parse_many(text).map_err(|_| self.bad("not a PEM file"))?;
        let key = blocks
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
            .ok_or_else(|| {
                if blocks.iter().any(|b| b.tag() == "ENCRYPTED PRIVATE KEY") {
                    self.bad("the private key is encrypted: store it unencrypted, readable only by photosync, or use a password-protected .pfx with certificate_password_file")
                } else {
                    self.bad("no PRIVATE KEY block: the file must hold the certificate and its private key")
                }
            })?;
        let key = EncodingKey::from_rsa_pem(pem::encode(key).as_bytes())
            .map_err(|_| self.bad("the private key is not an RSA key"))?;
        let certs: Vec<Vec<u8>> = blocks
            .iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.contents().to_vec())
            .collect();
        if certs.is_empty() {
            return Err(self.bad(
                "no CERTIFICATE block: the file must hold the certificate and its private key",
            ));
        }
        let cert = self.matching(&key, &certs)?;
        Ok((key, cert))
    }

    fn read_pkcs12(&self, bytes: &[u8]) -> Result<(EncodingKey, Vec<u8>), AuthError> {
        let password = match &self.password_file {
            Some(p) => {
                files::check_private(p, self.allow_insecure)?;
                let text = String::from_utf8_lossy(&files::read(p)?).into_owned();
                // Only the line end an editor or `echo` adds: spaces may be the password's.
                let line = text.strip_suffix('\n').unwrap_or(&text);
                line.strip_suffix('\r').unwrap_or(line).to_owned()
            }
            None => String::new(),
        };
        let archive =
            p12_keystore::Pkcs12Archive::from_pkcs12(bytes, &password).map_err(|e| match e {
                p12_keystore::error::Error::MacError(_)
                | p12_keystore::error::Error::UnpadError => {
                    self.bad(if self.password_file.is_some() {
                        "wrong password (certificate_password_file), or the file is damaged"
                    } else {
                        "the file is password-protected: set certificate_password_file"
                    })
                }
                p12_keystore::error::Error::DerError(_) => {
                    self.bad("neither a PEM file nor a PKCS#12 (.pfx) file")
                }
                other => self.bad(format!("cannot read the PKCS#12 file: {other}")),
            })?;
        let key = archive
            .keys
            .first()
            .ok_or_else(|| self.bad("the PKCS#12 file holds no private key: export the certificate with its private key"))?
            .key
            .clone();
        if key.oid().to_string() != RSA_OID {
            return Err(self.bad(
                "the private key is not an RSA key: Entra accepts RS256 and PS256 assertions only",
            ));
        }
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", key.as_der().to_vec()));
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|_| self.bad("the private key is not a usable RSA key"))?;
        let certs: Vec<Vec<u8>> = archive
            .certs
            .iter()
            .map(|c| c.cert.as_der().to_vec())
            .collect();
        let cert = self.matching(&key, &certs)?;
        Ok((key, cert))
    }

    /// The certificate whose public key verifies what the private key signs.
    fn matching(&self, key: &EncodingKey, certs: &[Vec<u8>]) -> Result<Vec<u8>, AuthError> {
        let probe = b"photosync certificate match";
        let signature = jsonwebtoken::crypto::sign(probe, key, Algorithm::RS256)
            .map_err(|_| self.bad("the private key cannot sign"))?;
        certs
            .iter()
            .find(|der| {
                let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
                    return false;
                };
                let spki = cert.public_key();
                if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
                    return false;
                }
                let public = DecodingKey::from_rsa_der(&spki.subject_public_key.data);
                jsonwebtoken::crypto::verify(&signature, probe, &public, Algorithm::RS256)
                    .unwrap_or(false)
            })
            .cloned()
            .ok_or_else(|| self.bad("no certificate in the file matches its private key"))
    }

    fn check_validity(&self, der: &[u8]) -> Result<SystemTime, AuthError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| self.bad("the certificate is not an X.509 certificate"))?;
        let validity = cert.validity();
        let not_after = UNIX_EPOCH
            + std::time::Duration::from_secs(validity.not_after.timestamp().max(0) as u64);
        if !validity.is_valid() {
            let when = if SystemTime::now() > not_after {
                format!("expired on {}", validity.not_after)
            } else {
                format!("is not valid before {}", validity.not_before)
            };
            return Err(self.bad(format!(
                "the certificate {when}, and Entra refuses it: renew it and upload the new one to the app registration"
            )));
        }
        Ok(not_after)
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl Signer {
    /// A fresh client assertion for `client_id` at `token_url` (its `aud`).
    pub(super) fn assertion(&self, token_url: &str, client_id: &str) -> Result<String, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = Header::new(match self.alg {
            AssertionAlg::Rs256 => Algorithm::RS256,
            AssertionAlg::Ps256 => Algorithm::PS256,
        });
        header.typ = Some("JWT".into());
        match self.alg {
            AssertionAlg::Rs256 => header.x5t = Some(self.x5t.clone()),
            AssertionAlg::Ps256 => header.x5t_s256 = Some(self.x5t_s256.clone()),
        }
        let claims = AssertionClaims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(AuthError::Sign)
    }
}
