//! App-only access tokens for Graph, from whichever credential `[auth]` names: a client secret,
//! a certificate (PEM or PKCS#12) whose key signs a client assertion, a JWT file a workload
//! identity platform writes (federation), or this machine's managed identity (Azure VM
//! metadata endpoint, Arc agent). [`TokenSource`] caches the token and fetches the next one.
//!
//! Invariants: a secret, a private key, a password, an assertion or an access token never
//! reaches `Debug`, `Display`, a log field or an error message; an error from the token
//! endpoint carries its AADSTS code and a one-line hint; credential files are read again for
//! every token request, so a rotated file is used without a restart.

mod certificate;
mod entra;
mod federated;
mod files;
mod managed;
mod secret;
mod source;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

pub use files::check_private;
pub use source::TokenSource;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read credential file {path}: {error}")]
    CredentialFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no credential: $PHOTOSYNC_CLIENT_SECRET is empty and none of [auth] client_secret, client_secret_file and certificate_file is set")]
    NoCredential,
    #[error("credential file {path} is empty")]
    EmptyCredential { path: PathBuf },
    #[error("{path} is readable by other users (mode {mode:03o}): `chmod 600` it (and chown it to photosync's user), or pass --allow-insecure-permissions")]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("certificate file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("federated token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: &'static str },
    #[error("cannot sign the client assertion: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("the token endpoint refused the credentials ({status} {error}{}): {description}{}",
        aadsts.map(|c| format!(", AADSTS{c}")).unwrap_or_default(),
        hint.as_ref().map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: String,
        aadsts: Option<u32>,
        description: String,
        hint: Option<String>,
    },
    #[error("the token endpoint is unavailable ({status} {error}): {description}")]
    Unavailable {
        status: u16,
        error: String,
        description: String,
    },
    #[error("cannot reach the token endpoint: {0}")]
    Transport(reqwest::Error),
    /// An answer that holds no token photosync could use: retrying would get the same.
    #[error("the token endpoint answered {status} without a usable token: {what}")]
    Unusable { status: u16, what: String },
    #[error("the managed identity endpoint {endpoint} answered {status}: {message}")]
    ManagedIdentity {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("the Arc agent's challenge names {realm}, which photosync does not read: {reason}; nothing was sent")]
    ArcChallenge {
        realm: PathBuf,
        reason: &'static str,
    },
    /// A failure already met by another request, handed to every caller that asks before the
    /// next attempt is due (so workers do not each ask the endpoint).
    #[error("{message}")]
    Repeated { message: Arc<str>, fatal: bool },
}

impl AuthError {
    /// Credentials that the endpoint refused will be refused again: stop instead of retrying.
    pub fn is_fatal(&self) -> bool {
        match self {
            AuthError::Repeated { fatal, .. } => *fatal,
            AuthError::ManagedIdentity { status, .. } => !is_transient_status(*status),
            other => !other.is_transient(),
        }
    }

    /// A passing failure: a timeout, a refused or reset connection, 429 or 5xx.
    fn is_transient(&self) -> bool {
        match self {
            AuthError::Unavailable { .. } | AuthError::Transport(_) => true,
            AuthError::ManagedIdentity { status, .. } => is_transient_status(*status),
            AuthError::Repeated { fatal, .. } => !fatal,
            _ => false,
        }
    }

    fn aadsts(&self) -> Option<u32> {
        match self {
            AuthError::Rejected { aadsts, .. } => *aadsts,
            _ => None,
        }
    }
}

/// Status 0 stands for no answer at all (a timeout, a reset).
fn is_transient_status(status: u16) -> bool {
    status == 0 || status == 429 || status >= 500
}

/// A one-line fix for the AADSTS codes operators actually meet.
pub fn hint_for(code: u32) -> Option<&'static str> {
    Some(match code {
        7_000_215 => "invalid client secret: paste the secret's Value, not its Secret ID",
        7_000_222 => "the client secret has expired: create a new one in the app registration",
        7_000_218 => "no credential was sent: set client_secret_file or certificate_file",
        700_027 => "the assertion signature did not verify: upload this certificate to the app registration (or check [auth] assertion)",
        700_024 => "the assertion is outside its valid time: check this server's clock",
        700_016 => "the app (client_id) was not found in this tenant: check client_id and tenant_id, and that admin consent was granted",
        90_002 => "tenant not found: check tenant_id, and [cloud] name for government or China clouds",
        500_011 => "the resource was not found in the tenant: check [cloud] name, or grant admin consent",
        53_003 => "blocked by a Conditional Access policy: exclude this workload identity or allow its location",
        65_001 => "admin consent is missing: grant admin consent for the app's API permissions",
        _ => return None,
    })
}

/// An access token. Never printed.
#[derive(Clone)]
pub struct AccessToken {
    value: Arc<SecretString>,
    generation: u64,
    pub expires_at: SystemTime,
}

impl AccessToken {
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value.expose_secret())
    }

    /// The app roles granted to this token (its `roles` claim); empty if it cannot be read.
    pub fn roles(&self) -> Vec<String> {
        #[derive(Deserialize)]
        struct Claims {
            #[serde(default)]
            roles: Vec<String>,
        }
        let payload = self.value.expose_secret().split('.').nth(1).unwrap_or("");
        URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice::<Claims>(&b).ok())
            .map(|c| c.roles)
            .unwrap_or_default()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// A token as an endpoint issued it, before the cache holds it.
struct Issued {
    value: SecretString,
    lifetime: std::time::Duration,
}
