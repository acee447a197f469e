//! The state one emulator shares between its connections: configuration, the parsed
//! certificate, the token signing key, the directory, faults, issued tokens, records and
//! counters, each behind its own short-held lock.
//!
//! Invariant: no lock is held across an `.await` and no two locks are held at once, so the
//! hot path never waits long and cannot deadlock.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore;
use sha1::{Digest as _, Sha1};
use sha2::Sha256;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::Config;
use crate::directory::Directory;
use crate::faults::FaultState;
use crate::record::{Recorded, Stats, TokenRequest};

/// The registered certificate, as the assertion check needs it.
pub(crate) struct CertKey {
    /// base64url SHA-1 thumbprint of the DER certificate (`x5t`).
    pub x5t: String,
    /// base64url SHA-256 thumbprint (`x5t#S256`).
    pub x5t_s256: String,
    pub key: DecodingKey,
}

pub(crate) struct Shared {
    pub config: Config,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The tenant GUID put in tokens' `tid` (the configured tenant if it is a GUID).
    pub tid: String,
    /// Domain for UPNs of users created from a bare id.
    pub default_domain: String,
    pub cert: Option<CertKey>,
    pub signing_key: EncodingKey,
    pub started: Instant,
    pub dir: Mutex<Directory>,
    pub faults: Mutex<FaultState>,
    /// Issued access tokens and when each expires.
    pub tokens: Mutex<HashMap<String, Instant>>,
    pub records: Mutex<Vec<Recorded>>,
    pub token_requests: Mutex<Vec<TokenRequest>>,
    /// Federated assertions still to refuse with AADSTS70021.
    pub propagating: Mutex<u32>,
    /// Arc challenge keys handed out and not yet used, and their files.
    pub arc_keys: Mutex<Vec<(String, std::path::PathBuf)>>,
    pub stats: Mutex<Stats>,
    pub photo_source: Mutex<String>,
    pub in_flight: AtomicUsize,
}

/// Locks, ignoring poisoning: every critical section leaves its data consistent, so a
/// panicking holder elsewhere must not take the emulator down.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: Config, url: String) -> io::Result<Shared> {
        let cert = match &config.certificate_pem {
            Some(pem) => Some(parse_certificate(pem)?),
            None => None,
        };
        // A domain tenant gets a GUID derived from its name, stable across runs.
        let tid = if let Ok(u) = uuid::Uuid::parse_str(&config.tenant) {
            u.to_string()
        } else {
            let digest = Sha1::digest(config.tenant.to_lowercase().as_bytes());
            let mut b = [0u8; 16];
            b.copy_from_slice(&digest[..16]);
            uuid::Builder::from_sha1_bytes(b).into_uuid().to_string()
        };
        let default_domain = if config.tenant.contains('.') {
            config.tenant.to_lowercase()
        } else {
            "contoso.onmicrosoft.com".to_owned()
        };
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        let started = Instant::now();
        let photo_source = config.photo_update_source.clone();
        let propagating = config
            .federation
            .as_ref()
            .map_or(0, |f| f.propagation_refusals);
        Ok(Shared {
            config,
            url,
            tid,
            default_domain,
            cert,
            signing_key: EncodingKey::from_secret(&key),
            started,
            dir: Mutex::new(Directory::default()),
            faults: Mutex::new(FaultState::new()),
            tokens: Mutex::new(HashMap::new()),
            records: Mutex::new(Vec::new()),
            token_requests: Mutex::new(Vec::new()),
            propagating: Mutex::new(propagating),
            arc_keys: Mutex::new(Vec::new()),
            stats: Mutex::new(Stats::new(started)),
            photo_source: Mutex::new(photo_source),
            in_flight: AtomicUsize::new(0),
        })
    }

    pub fn has_any_role(&self, wanted: &[&str]) -> bool {
        self.config
            .roles
            .iter()
            .any(|r| wanted.iter().any(|w| r.eq_ignore_ascii_case(w)))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Takes the first CERTIFICATE block of a PEM text and its RSA public key.
fn parse_certificate(text: &str) -> io::Result<CertKey> {
    let blocks = pem::parse_many(text).map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    let der = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| invalid("certificate PEM holds no CERTIFICATE block".to_owned()))?
        .contents();
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| invalid(format!("certificate DER: {e}")))?;
    // For RSA keys the SubjectPublicKeyInfo bit string is the PKCS#1 RSAPublicKey that
    // jsonwebtoken's DER decoding key expects.
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
        return Err(invalid(
            "certificate key is not RSA; Entra client assertions need RSA".to_owned(),
        ));
    }
    let key = DecodingKey::from_rsa_der(&spki.subject_public_key.data);
    Ok(CertKey {
        x5t: URL_SAFE_NO_PAD.encode(Sha1::digest(der)),
        x5t_s256: URL_SAFE_NO_PAD.encode(Sha256::digest(der)),
        key,
    })
}
