//! App-only access tokens: OAuth 2.0 client credentials against Entra ID.
//!
//! Two credentials: a client secret, or a certificate whose private key signs a JWT client
//! assertion (RS256 + `x5t` by default, PS256 + `x5t#S256` on request). Tokens are cached and
//! fetched again before they expire; concurrent callers share one fetch. Invariants: a secret,
//! a private key or an access token never reaches `Debug`, `Display`, a log field or an error
//! message; an error from the token endpoint carries its AADSTS code and a one-line hint.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use tokio::sync::Mutex;

use crate::config::{AssertionAlg, AuthConfig};
use crate::graph::paths;

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
    #[error("cannot sign the client assertion: {0}")]
    Sign(jsonwebtoken::errors::Error),
    #[error("the token endpoint refused the credentials ({status} {error}{}): {description}{}",
        aadsts.map(|c| format!(", AADSTS{c}")).unwrap_or_default(),
        hint.map(|h| format!("\n  hint: {h}")).unwrap_or_default())]
    Rejected {
        status: u16,
        error: String,
        aadsts: Option<u32>,
        description: String,
        hint: Option<&'static str>,
    },
    #[error("the token endpoint is unavailable ({status} {error}): {description}")]
    Unavailable {
        status: u16,
        error: String,
        description: String,
    },
    #[error("cannot reach the token endpoint: {0}")]
    Transport(reqwest::Error),
    #[error("the token endpoint answered {status} with a body that is not a token response")]
    Malformed { status: u16 },
}

impl AuthError {
    /// Credentials that the endpoint refused will be refused again: stop instead of retrying.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            AuthError::Unavailable { .. } | AuthError::Transport(_) | AuthError::Malformed { .. }
        )
    }
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

enum Credential {
    Secret(SecretString),
    Certificate {
        key: EncodingKey,
        x5t: String,
        x5t_s256: String,
        alg: AssertionAlg,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Secret(_) => f.write_str("Secret([redacted])"),
            Credential::Certificate { x5t, alg, .. } => f
                .debug_struct("Certificate")
                .field("x5t", x5t)
                .field("alg", alg)
                .finish_non_exhaustive(),
        }
    }
}

/// Refuses a file holding a secret or a private key that other users may read.
pub fn check_private(path: &Path, allow_insecure: bool) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|error| AuthError::CredentialFile {
        path: path.to_owned(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 && !allow_insecure {
        return Err(AuthError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Reads the credential named by the config: `$PHOTOSYNC_CLIENT_SECRET` wins over the file or
/// inline secret; a certificate file holds the certificate and its private key.
fn load_credential(cfg: &AuthConfig) -> Result<Credential, AuthError> {
    load_credential_with(cfg, std::env::var("PHOTOSYNC_CLIENT_SECRET").ok())
}

/// [`load_credential`] with the environment's secret given (tests leave the process's alone).
fn load_credential_with(
    cfg: &AuthConfig,
    env_secret: Option<String>,
) -> Result<Credential, AuthError> {
    if let Some(path) = &cfg.certificate_file {
        check_private(path, cfg.allow_insecure_permissions)?;
        return load_certificate(path, cfg.assertion);
    }
    if let Some(s) = env_secret {
        if !s.trim().is_empty() {
            return Ok(Credential::Secret(SecretString::from(s.trim().to_owned())));
        }
    }
    if let Some(path) = &cfg.client_secret_file {
        check_private(path, cfg.allow_insecure_permissions)?;
        let text = std::fs::read_to_string(path).map_err(|error| AuthError::CredentialFile {
            path: path.clone(),
            error,
        })?;
        let s = text.trim();
        if s.is_empty() {
            return Err(AuthError::EmptyCredential { path: path.clone() });
        }
        return Ok(Credential::Secret(SecretString::from(s.to_owned())));
    }
    match &cfg.client_secret {
        Some(s) => Ok(Credential::Secret(s.clone())),
        // Config validation accepts a set $PHOTOSYNC_CLIENT_SECRET in place of the keys; it may
        // still be blank.
        None => Err(AuthError::NoCredential),
    }
}

fn load_certificate(path: &Path, alg: AssertionAlg) -> Result<Credential, AuthError> {
    let bad = |reason: &str| AuthError::Certificate {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::fs::read(path).map_err(|error| AuthError::CredentialFile {
        path: path.to_owned(),
        error,
    })?;
    let blocks = pem::parse_many(&text).map_err(|_| bad("not a PEM file"))?;
    let cert = blocks
        .iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .ok_or_else(|| {
            bad("no CERTIFICATE block: the file must hold the certificate and its private key")
        })?;
    let key = blocks
        .iter()
        .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
        .ok_or_else(|| {
            if blocks.iter().any(|b| b.tag() == "ENCRYPTED PRIVATE KEY") {
                bad("the private key is encrypted: store it unencrypted, readable only by photosync")
            } else {
                bad("no PRIVATE KEY block: the file must hold the certificate and its private key")
            }
        })?;
    let key = EncodingKey::from_rsa_pem(pem::encode(key).as_bytes())
        .map_err(|_| bad("the private key is not an RSA key"))?;
    if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.contents()) {
        if !parsed.validity().is_valid() {
            tracing::warn!(
                path = %path.display(),
                not_after = %parsed.validity().not_after,
                "certificate is outside its validity period; Entra will refuse it"
            );
        }
    } else {
        return Err(bad("the CERTIFICATE block is not an X.509 certificate"));
    }
    let der = cert.contents();
    Ok(Credential::Certificate {
        key,
        x5t: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(der)),
        x5t_s256: URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)),
        alg,
    })
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

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// Fetches and caches app-only tokens for one tenant and one Graph host.
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    scope: String,
    client_id: String,
    credential: Credential,
    cached: Mutex<Option<(AccessToken, Instant)>>,
    generation: AtomicU64,
    refresh_failures: AtomicU64,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(
        cfg: &AuthConfig,
        login_url: &str,
        graph_url: &str,
        http: reqwest::Client,
    ) -> Result<TokenSource, AuthError> {
        Ok(TokenSource {
            http,
            token_url: paths::token_url(login_url, &cfg.tenant_id),
            scope: paths::scope(graph_url),
            client_id: cfg.client_id.clone(),
            credential: load_credential(cfg)?,
            cached: Mutex::new(None),
            generation: AtomicU64::new(0),
            refresh_failures: AtomicU64::new(0),
        })
    }

    /// Whether a token is cached and not expired; `None` while one is being fetched.
    pub fn has_token(&self) -> Option<bool> {
        let cached = self.cached.try_lock().ok()?;
        Some(
            cached
                .as_ref()
                .is_some_and(|(t, _)| t.expires_at > SystemTime::now()),
        )
    }

    /// How often fetching a token failed since start (for metrics).
    pub fn refresh_failures(&self) -> u64 {
        self.refresh_failures.load(Ordering::Relaxed)
    }

    /// A token valid for a while yet; fetched when none is cached or the cached one is close to
    /// expiry (within a quarter of its life, at most 5 minutes).
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some((tok, refresh_at)) = cached.as_ref() {
            if Instant::now() < *refresh_at {
                return Ok(tok.clone());
            }
        }
        match self.fetch().await {
            Ok((tok, life)) => {
                let margin = (life / 4).min(Duration::from_secs(300));
                *cached = Some((tok.clone(), Instant::now() + life.saturating_sub(margin)));
                Ok(tok)
            }
            Err(e) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Forgets `stale` (after Graph answered 401 to it) so the next call fetches a new token.
    /// A token fetched meanwhile by another caller is kept.
    pub async fn invalidate(&self, stale: &AccessToken) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|(t, _)| t.generation == stale.generation)
        {
            *cached = None;
        }
    }

    #[tracing::instrument(skip_all, fields(client_id = %self.client_id))]
    async fn fetch(&self) -> Result<(AccessToken, Duration), AuthError> {
        let resp = self
            .http
            .post(&self.token_url)
            .form(&self.form()?)
            .send()
            .await
            .map_err(|e| AuthError::Transport(e.without_url()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| AuthError::Transport(e.without_url()))?;
        if !(200..300).contains(&status) {
            return Err(refusal(status, &body));
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| AuthError::Malformed { status })?;
        // Bounded: an absurd expires_in must not overflow the clock arithmetic below.
        let life = Duration::from_secs(t.expires_in.clamp(1, 24 * 3600));
        let tok = AccessToken {
            value: Arc::new(SecretString::from(t.access_token)),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            expires_at: SystemTime::now() + life,
        };
        tracing::debug!(expires_in = t.expires_in, "token obtained");
        Ok((tok, life))
    }

    /// The client-credentials request: the secret, or a freshly signed assertion.
    fn form(&self) -> Result<Vec<(&'static str, String)>, AuthError> {
        let mut form = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &self.credential {
            Credential::Secret(s) => form.push(("client_secret", s.expose_secret().to_owned())),
            Credential::Certificate {
                key,
                x5t,
                x5t_s256,
                alg,
            } => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push((
                    "client_assertion",
                    self.assertion(key, x5t, x5t_s256, *alg)?,
                ));
            }
        }
        Ok(form)
    }

    fn assertion(
        &self,
        key: &EncodingKey,
        x5t: &str,
        x5t_s256: &str,
        alg: AssertionAlg,
    ) -> Result<String, AuthError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = Header::new(match alg {
            AssertionAlg::Rs256 => Algorithm::RS256,
            AssertionAlg::Ps256 => Algorithm::PS256,
        });
        header.typ = Some("JWT".into());
        match alg {
            AssertionAlg::Rs256 => header.x5t = Some(x5t.to_owned()),
            AssertionAlg::Ps256 => header.x5t_s256 = Some(x5t_s256.to_owned()),
        }
        let claims = AssertionClaims {
            aud: &self.token_url,
            iss: &self.client_id,
            sub: &self.client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + 300,
        };
        jsonwebtoken::encode(&header, &claims, key).map_err(AuthError::Sign)
    }
}

/// What a non-2xx answer of the token endpoint means: a passing outage, a body that is not
/// Entra's, or credentials refused (with the AADSTS code and a hint when one is known).
fn refusal(status: u16, body: &[u8]) -> AuthError {
    let e: TokenErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let description = e.error_description.lines().next().unwrap_or("").to_owned();
    let aadsts = e
        .error_codes
        .first()
        .copied()
        .or_else(|| parse_aadsts(&description));
    if status >= 500 || e.error == "temporarily_unavailable" || status == 429 {
        return AuthError::Unavailable {
            status,
            error: e.error,
            description,
        };
    }
    if e.error.is_empty() {
        return AuthError::Malformed { status };
    }
    AuthError::Rejected {
        status,
        error: e.error,
        hint: aadsts.and_then(hint_for),
        aadsts,
        description,
    }
}

fn parse_aadsts(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_code_is_read_from_the_description() {
        assert_eq!(
            parse_aadsts("AADSTS7000215: Invalid client secret provided."),
            Some(7_000_215)
        );
        assert_eq!(parse_aadsts("nothing here"), None);
        assert!(hint_for(7_000_215).unwrap().contains("Value"));
    }

    #[test]
    fn token_endpoint_answers_are_classified() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#;
        match refusal(401, body) {
            AuthError::Rejected {
                aadsts,
                hint,
                description,
                ..
            } => {
                assert_eq!(aadsts, Some(7_000_215));
                assert!(hint.is_some());
                assert!(!description.contains("Trace ID"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            refusal(503, b"{}"),
            AuthError::Unavailable { status: 503, .. }
        ));
        assert!(matches!(
            refusal(400, b"<html>"),
            AuthError::Malformed { status: 400 }
        ));
    }

    fn auth() -> AuthConfig {
        AuthConfig {
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: None,
            client_secret_file: None,
            certificate_file: None,
            assertion: AssertionAlg::default(),
            allow_insecure_permissions: false,
        }
    }

    /// Was reported as a refusal by the token endpoint (status 0, AADSTS7000218) that no
    /// endpoint had sent.
    #[test]
    fn no_credential_is_its_own_error_and_stops_the_run() {
        let e = load_credential_with(&auth(), Some("  ".into())).unwrap_err();
        assert!(matches!(e, AuthError::NoCredential), "{e:?}");
        assert!(e.is_fatal());
        let msg = e.to_string();
        assert!(
            msg.contains("PHOTOSYNC_CLIENT_SECRET") && msg.contains("client_secret_file"),
            "{msg}"
        );
        assert!(!msg.contains("token endpoint"), "{msg}");
    }

    #[test]
    fn a_missing_secret_file_names_the_file_and_its_error_once() {
        let cfg = AuthConfig {
            client_secret_file: Some("/nonexistent/photosync-secret".into()),
            ..auth()
        };
        let e = load_credential_with(&cfg, None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/photosync-secret"), "{msg}");
        assert_eq!(msg.matches("No such file").count(), 1, "{msg}");
        assert!(
            std::error::Error::source(&e).is_none(),
            "printed in the message, so not chained as well"
        );
    }
}
