//! [`TokenSource`]: one cached token for every caller, fetched again before it expires.
//!
//! Invariants: one fetch at a time, whoever asks; a passing failure (timeout, reset, 429,
//! 5xx) is retried here, with one backoff shared by all callers, and then handed to every
//! caller for a short pause without a new request; a refusal or an unusable answer is handed
//! to every later caller without a new request, so a bad credential costs one token request.
//! A refresh that fails while the current token is still valid keeps that token until it
//! expires (a rotated certificate that Entra does not know yet does not stop a running sync).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use secrecy::ExposeSecret;
use tokio::sync::Mutex;

use super::certificate::CertificateFile;
use super::federated::{self, TokenFile};
use super::managed::ManagedIdentity;
use super::secret::SecretFrom;
use super::{entra, AccessToken, AuthError, Issued};
use crate::config::{AuthConfig, CredentialKind};
use crate::graph::paths;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long passing failures are retried before the callers get the error.
const RETRY_FOR: Duration = Duration::from_secs(30);
const RETRY_CAP: Duration = Duration::from_secs(8);
/// After a passing failure was handed out: callers meanwhile get it without a new request.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// A token closer than this to expiry (or a tenth of its life, if less) is not kept after a
/// failed refresh.
const KEEP_MARGIN: Duration = Duration::from_secs(30);

enum Credential {
    Secret(SecretFrom),
    Certificate(CertificateFile),
    Federated(TokenFile),
    Managed(ManagedIdentity),
}

struct Failed {
    message: Arc<str>,
    fatal: bool,
    until: Instant,
}

#[derive(Default)]
struct State {
    /// The token, when to fetch the next one, and its lifetime.
    cached: Option<(AccessToken, Instant, Duration)>,
    failed: Option<Failed>,
}

/// Fetches and caches app-only tokens for one tenant and one Graph host.
pub struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    scope: String,
    client_id: String,
    credential: Credential,
    state: Mutex<State>,
    generation: AtomicU64,
    refresh_failures: AtomicU64,
    issued_once: AtomicBool,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field(
                "credential",
                &match &self.credential {
                    Credential::Secret(_) => "client secret",
                    Credential::Certificate(_) => "certificate",
                    Credential::Federated(_) => "federated token file",
                    Credential::Managed(_) => "managed identity",
                },
            )
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    /// Loads the credential once, so that a missing, unreadable or unusable one is refused
    /// before any request.
    pub fn new(
        cfg: &AuthConfig,
        login_url: &str,
        graph_url: &str,
        http: reqwest::Client,
    ) -> Result<TokenSource, AuthError> {
        let env = |name: &str| std::env::var(name).ok();
        let credential = match cfg.kind() {
            CredentialKind::Secret => {
                Credential::Secret(SecretFrom::new(cfg, env("PHOTOSYNC_CLIENT_SECRET"))?)
            }
            CredentialKind::Certificate => {
                let path = cfg
                    .certificate_file
                    .as_deref()
                    .unwrap_or_else(|| unreachable!());
                let c = CertificateFile::new(cfg, path);
                c.load()?;
                Credential::Certificate(c)
            }
            CredentialKind::Federated => {
                let path = cfg
                    .federated_token_file
                    .as_deref()
                    .unwrap_or_else(|| unreachable!());
                let f = TokenFile::new(path);
                f.read()?;
                Credential::Federated(f)
            }
            CredentialKind::ManagedIdentity => {
                Credential::Managed(ManagedIdentity::new(cfg, graph_url, env))
            }
        };
        let authority = cfg.authority_host.as_deref().unwrap_or(login_url);
        Ok(TokenSource {
            http,
            token_url: paths::token_url(authority.trim_end_matches('/'), cfg.tenant()),
            scope: paths::scope(graph_url),
            client_id: cfg.client().to_owned(),
            credential,
            state: Mutex::new(State::default()),
            generation: AtomicU64::new(0),
            refresh_failures: AtomicU64::new(0),
            issued_once: AtomicBool::new(false),
        })
    }

    /// Which credential is in use, where it comes from and, where it has one, its expiry.
    pub fn describe(&self) -> String {
        match &self.credential {
            Credential::Secret(s) => s.describe(),
            Credential::Certificate(c) => c.describe(c.load().ok().as_ref()),
            Credential::Federated(f) => f.describe(),
            Credential::Managed(m) => m.describe(),
        }
    }

    /// When the credential itself expires, where it says (a certificate, a federated token).
    pub fn credential_expires_at(&self) -> Option<SystemTime> {
        match &self.credential {
            Credential::Certificate(c) => c.load().ok().map(|s| s.not_after),
            Credential::Federated(f) => f.expires_at(),
            Credential::Secret(_) | Credential::Managed(_) => None,
        }
    }

    /// Whether a token is cached and not expired; `None` while one is being fetched.
    pub fn has_token(&self) -> Option<bool> {
        let state = self.state.try_lock().ok()?;
        Some(
            state
                .cached
                .as_ref()
                .is_some_and(|(t, _, _)| t.expires_at > SystemTime::now()),
        )
    }

    /// How often fetching a token failed since start (for metrics).
    pub fn refresh_failures(&self) -> u64 {
        self.refresh_failures.load(Ordering::Relaxed)
    }

    /// A token valid for a while yet; fetched when none is cached or the cached one is close to
    /// expiry (within a quarter of its life, at most 5 minutes).
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some((tok, refresh_at, _)) = &state.cached {
            if now < *refresh_at {
                return Ok(tok.clone());
            }
        }
        if let Some(f) = &state.failed {
            if f.fatal || now < f.until {
                return Err(AuthError::Repeated {
                    message: Arc::clone(&f.message),
                    fatal: f.fatal,
                });
            }
        }
        match self.fetch().await {
            Ok(issued) => {
                let tok = self.cache(&mut state, issued);
                Ok(tok)
            }
            Err(e) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                if let Some(tok) = keep_current(&mut state, &e) {
                    return Ok(tok);
                }
                state.failed = Some(Failed {
                    message: e.to_string().into(),
                    fatal: e.is_fatal(),
                    until: Instant::now() + PAUSE_AFTER_FAILURE,
                });
                Err(e)
            }
        }
    }

    fn cache(&self, state: &mut State, issued: Issued) -> AccessToken {
        let life = issued.lifetime;
        let tok = AccessToken {
            value: Arc::new(issued.value),
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            expires_at: SystemTime::now() + life,
        };
        let margin = (life / 4).min(Duration::from_secs(300));
        state.cached = Some((
            tok.clone(),
            Instant::now() + life.saturating_sub(margin),
            life,
        ));
        state.failed = None;
        self.issued_once.store(true, Ordering::Relaxed);
        tracing::debug!(expires_in = life.as_secs(), "token obtained");
        tok
    }

    /// Forgets `stale` (after Graph answered 401 to it) so the next call fetches a new token.
    /// A token fetched meanwhile by another caller is kept.
    pub async fn invalidate(&self, stale: &AccessToken) {
        let mut held = self.state.lock().await;
        if held
            .cached
            .as_ref()
            .is_some_and(|(t, _, _)| t.generation == stale.generation)
        {
            held.cached = None;
        }
    }

    /// A token, retrying passing failures (and, before the first token, a federated
    /// credential that has not propagated yet) with backoff, for all callers at once.
    #[tracing::instrument(skip_all, fields(client_id = %self.client_id))]
    async fn fetch(&self) -> Result<Issued, AuthError> {
        let start = Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            match self.fetch_once().await {
                Err(e) if self.worth_retrying(&e) && start.elapsed() + delay < RETRY_FOR => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "token request failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_CAP);
                }
                answer => return answer,
            }
        }
    }

    fn worth_retrying(&self, e: &AuthError) -> bool {
        match &self.credential {
            // The identity endpoint's own retries have run their course.
            Credential::Managed(_) => false,
            Credential::Federated(_)
                if e.aadsts() == Some(federated::NO_MATCHING_RECORD)
                    && !self.issued_once.load(Ordering::Relaxed) =>
            {
                true
            }
            _ => e.is_transient(),
        }
    }

    /// One token request with the credential as it is on disk now.
    async fn fetch_once(&self) -> Result<Issued, AuthError> {
        let assertion = |value: String| {
            [
                ("client_assertion_type", ASSERTION_TYPE.to_owned()),
                ("client_assertion", value),
            ]
        };
        let extra: Vec<(&'static str, String)> = match &self.credential {
            Credential::Managed(m) => return m.request(&self.http).await,
            Credential::Secret(s) => {
                vec![("client_secret", s.read()?.expose_secret().to_owned())]
            }
            Credential::Certificate(c) => {
                let jwt = c.load()?.assertion(&self.token_url, &self.client_id)?;
                assertion(jwt).to_vec()
            }
            Credential::Federated(f) => assertion(f.read()?.expose_secret().to_owned()).to_vec(),
        };
        // The fields MSAL sends (client_info included, though app-only tokens have no
        // account), so Entra sees photosync as it sees Microsoft's libraries.
        let mut form = vec![
            ("client_id", self.client_id.clone()),
            ("client_info", "1".to_owned()),
            ("grant_type", "client_credentials".to_owned()),
            ("scope", self.scope.clone()),
        ];
        form.extend(extra);
        let answer = entra::request(&self.http, &self.token_url, &form).await;
        match (answer, &self.credential) {
            (
                Err(AuthError::Rejected {
                    status,
                    error,
                    aadsts,
                    description,
                    hint,
                }),
                Credential::Federated(f),
            ) => Err(AuthError::Rejected {
                hint: f.hint(aadsts).or(hint),
                status,
                error,
                aadsts,
                description,
            }),
            (answer, _) => answer,
        }
    }
}

/// After a failed refresh: the current token, if it is valid a while yet; the next refresh
/// is tried in a minute (or halfway to expiry, if sooner).
fn keep_current(state: &mut State, e: &AuthError) -> Option<AccessToken> {
    let (tok, refresh_at, life) = state.cached.as_mut()?;
    let left = tok.expires_at.duration_since(SystemTime::now()).ok()?;
    if left <= KEEP_MARGIN.min(*life / 10) {
        return None;
    }
    tracing::warn!(
        error = %e,
        expires_in_s = left.as_secs(),
        "cannot get a new token; using the current one until it expires"
    );
    *refresh_at = Instant::now() + (left / 2).min(Duration::from_secs(60));
    Some(tok.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AuthConfig {
        AuthConfig {
            tenant_id: Some("t".into()),
            client_id: Some("c".into()),
            ..AuthConfig::default()
        }
    }

    /// Was reported as a refusal by the token endpoint (status 0, AADSTS7000218) that no
    /// endpoint had sent.
    #[test]
    fn no_credential_is_its_own_error_and_stops_the_run() {
        let e = SecretFrom::new(&auth(), Some("  ".into())).unwrap_err();
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
        let e = SecretFrom::new(&cfg, None).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/photosync-secret"), "{msg}");
        assert_eq!(msg.matches("No such file").count(), 1, "{msg}");
        assert!(
            std::error::Error::source(&e).is_none(),
            "printed in the message, so not chained as well"
        );
    }
}
