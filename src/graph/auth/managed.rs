//! Managed identity: the token comes from the machine's identity endpoint, with no credential
//! stored on it. On an Azure VM that is the instance metadata endpoint; on an Arc-enabled
//! server it is the Arc agent, which first answers 401 naming a key file that only members of
//! the `himds` group can read, and wants that file's content back.
//!
//! Invariants: the challenge's file is read only if it is a regular file (not a symlink)
//! directly in the agent's token folder, ends in `.key` and is at most 4,096 bytes; otherwise
//! nothing is sent. An identity just assigned answers 404/410 for a while: those, 429 and 5xx
//! are retried with backoff for about 70 seconds before the answer is returned as the error.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{entra, AuthError, Issued};
use crate::config::AuthConfig;

/// The Azure VM instance metadata service's token endpoint.
const IMDS: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// Where the Arc agent puts the challenge files (Linux).
pub(super) const ARC_TOKEN_DIR: &str = "/var/opt/azcmagent/tokens";
const ARC_KEY_MAX_BYTES: u64 = 4096;
/// How long an endpoint that answers 404/410/429/5xx is retried.
const RETRY_FOR: Duration = Duration::from_secs(70);
const RETRY_CAP: Duration = Duration::from_secs(16);

pub(super) struct ManagedIdentity {
    endpoint: String,
    api_version: &'static str,
    /// The query parameter naming a user-assigned identity, and its value.
    id: Option<(&'static str, String)>,
    resource: String,
    arc: bool,
}

impl fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl ManagedIdentity {
    /// The endpoint is, first found: `[auth] managed_identity_endpoint`, the Arc agent's
    /// (`IDENTITY_ENDPOINT` with `IMDS_ENDPOINT`), `AZURE_POD_IDENTITY_AUTHORITY_HOST`'s, the
    /// VM's. `resource` is the Graph root the token is for.
    pub(super) fn new(
        cfg: &AuthConfig,
        resource: &str,
        var: impl Fn(&str) -> Option<String>,
    ) -> ManagedIdentity {
        let var = |n: &str| var(n).filter(|v| !v.trim().is_empty());
        let arc_endpoint = var("IDENTITY_ENDPOINT").filter(|_| var("IMDS_ENDPOINT").is_some());
        let (endpoint, arc) = if let Some(url) = &cfg.managed_identity_endpoint {
            (url.clone(), false)
        } else if let Some(url) = arc_endpoint {
            (url, true)
        } else if let Some(host) = var("AZURE_POD_IDENTITY_AUTHORITY_HOST") {
            (
                format!(
                    "{}/metadata/identity/oauth2/token",
                    host.trim_end_matches('/')
                ),
                false,
            )
        } else {
            (IMDS.to_owned(), false)
        };
        let id = cfg
            .managed_identity_client_id
            .clone()
            .map(|v| ("client_id", v))
            .or_else(|| {
                cfg.managed_identity_object_id
                    .clone()
                    .map(|v| ("object_id", v))
            })
            .or_else(|| {
                cfg.managed_identity_resource_id
                    .clone()
                    .map(|v| ("msi_res_id", v))
            });
        ManagedIdentity {
            endpoint,
            api_version: if arc { "2020-06-01" } else { "2018-02-01" },
            id,
            resource: resource.trim_end_matches('/').to_owned(),
            arc,
        }
    }

    pub(super) fn describe(&self) -> String {
        let which = match &self.id {
            None => "system-assigned".to_owned(),
            Some((param, v)) => format!("user-assigned, {param} {v}"),
        };
        let place = if self.arc {
            "the Arc agent"
        } else {
            "the identity endpoint"
        };
        format!("managed identity ({which}) from {place} {}", self.endpoint)
    }

    /// A token, retrying what an identity endpoint answers while it is not ready yet.
    pub(super) async fn request(&self, http: &reqwest::Client) -> Result<Issued, AuthError> {
        let start = Instant::now();
        let mut delay = Duration::from_secs(1);
        loop {
            match self.attempt(http).await {
                Err(e) if retryable(&e) && start.elapsed() + delay < RETRY_FOR => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "managed identity endpoint not ready; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_CAP);
                }
                answer => return answer,
            }
        }
    }

    fn url(&self) -> String {
        let mut url = self.endpoint.clone();
        let mut sep = if url.contains('?') { '&' } else { '?' };
        let mut push = |k: &str, v: &str| {
            url.push(sep);
            sep = '&';
            url.push_str(k);
            url.push('=');
            url.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        };
        if !self.endpoint.contains("api-version=") {
            push("api-version", self.api_version);
        }
        push("resource", &self.resource);
        if let Some((param, v)) = &self.id {
            push(param, v);
        }
        url
    }

    /// One request, and the Arc challenge's second one if the endpoint asks for it.
    async fn attempt(&self, http: &reqwest::Client) -> Result<Issued, AuthError> {
        let (status, headers, body) = self.send(http, None).await?;
        if status == 401 {
            if let Some(realm) = basic_realm(&headers) {
                let key = read_arc_key(Path::new(&realm))?;
                let (status, headers, body) = self.send(http, Some(&key)).await?;
                return self.answer(status, &headers, &body);
            }
        }
        self.answer(status, &headers, &body)
    }

    async fn send(
        &self,
        http: &reqwest::Client,
        key: Option<&SecretString>,
    ) -> Result<(u16, reqwest::header::HeaderMap, bytes::Bytes), AuthError> {
        let mut req = http.get(self.url()).header("Metadata", "true");
        if let Some(key) = key {
            req = req.header(
                reqwest::header::AUTHORIZATION,
                format!("Basic {}", key.expose_secret()),
            );
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AuthError::Transport(e.without_url()))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| AuthError::Transport(e.without_url()))?;
        tracing::debug!(
            status,
            challenged = key.is_some(),
            "managed identity answer"
        );
        Ok((status, headers, body))
    }

    fn answer(
        &self,
        status: u16,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<Issued, AuthError> {
        let ct = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if (200..300).contains(&status) {
            return entra::issued(status, ct, body);
        }
        let e: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let message = match (e.error.as_str(), e.error_description.lines().next()) {
            ("", None | Some("")) => format!("a body of {} bytes with no error in it", body.len()),
            (err, None | Some("")) => err.to_owned(),
            ("", Some(d)) => d.to_owned(),
            (err, Some(d)) => format!("{err}: {d}"),
        };
        Err(AuthError::ManagedIdentity {
            endpoint: self.endpoint.clone(),
            status,
            message,
        })
    }
}

fn retryable(e: &AuthError) -> bool {
    match e {
        AuthError::ManagedIdentity { status, .. } => {
            matches!(status, 404 | 410 | 429) || *status >= 500
        }
        AuthError::Transport(_) => true,
        _ => false,
    }
}

/// The path in `WWW-Authenticate: Basic realm=<path>`.
fn basic_realm(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers
        .get(reqwest::header::WWW_AUTHENTICATE)?
        .to_str()
        .ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let realm = rest.trim().strip_prefix("realm=")?;
    Some(realm.trim_matches('"').to_owned())
}

/// The Arc agent's key file, if it is the kind of file the agent writes where it writes them.
fn read_arc_key(realm: &Path) -> Result<SecretString, AuthError> {
    let refuse = |reason| AuthError::ArcChallenge {
        realm: realm.to_owned(),
        reason,
    };
    let dir = Path::new(ARC_TOKEN_DIR);
    if realm.parent() != Some(dir) {
        return Err(refuse(
            "it is not directly in the agent's token folder /var/opt/azcmagent/tokens",
        ));
    }
    if !realm
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".key"))
    {
        return Err(refuse("its name does not end in .key"));
    }
    let meta = std::fs::symlink_metadata(realm).map_err(|_| {
        refuse("it cannot be read: is photosync's user in the himds group (SupplementaryGroups=himds)?")
    })?;
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link"));
    }
    if !meta.is_file() {
        return Err(refuse("it is not a regular file"));
    }
    if meta.len() > ARC_KEY_MAX_BYTES {
        return Err(refuse("it is larger than 4,096 bytes"));
    }
    let canonical_dir = std::fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir));
    let inside = std::fs::canonicalize(realm)
        .ok()
        .is_some_and(|p| p.parent() == Some(canonical_dir.as_path()));
    if !inside {
        return Err(refuse("it lies outside the agent's token folder"));
    }
    let text = std::fs::read_to_string(realm).map_err(|_| {
        refuse("it cannot be read: is photosync's user in the himds group (SupplementaryGroups=himds)?")
    })?;
    Ok(SecretString::from(text.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig {
            managed_identity: true,
            ..AuthConfig::default()
        }
    }

    #[test]
    fn the_endpoint_is_chosen_the_way_the_azure_sdks_choose_it() {
        let none = |_: &str| None;
        let vm = ManagedIdentity::new(&cfg(), "https://graph.microsoft.com/", none);
        assert_eq!(
            vm.url(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com"
        );
        let arc = |n: &str| match n {
            "IDENTITY_ENDPOINT" => {
                Some("http://localhost:40342/metadata/identity/oauth2/token".to_owned())
            }
            "IMDS_ENDPOINT" => Some("http://localhost:40342".to_owned()),
            _ => None,
        };
        let a = ManagedIdentity::new(&cfg(), "https://graph.microsoft.com", arc);
        assert!(a.arc);
        assert!(
            a.url().starts_with(
                "http://localhost:40342/metadata/identity/oauth2/token?api-version=2020-06-01&"
            ),
            "{}",
            a.url()
        );
        let pod = |n: &str| {
            (n == "AZURE_POD_IDENTITY_AUTHORITY_HOST").then(|| "http://10.0.0.9:2579/".to_owned())
        };
        let p = ManagedIdentity::new(&cfg(), "https://graph.microsoft.com", pod);
        assert!(
            p.url()
                .starts_with("http://10.0.0.9:2579/metadata/identity/oauth2/token?"),
            "{}",
            p.url()
        );
        let user = AuthConfig {
            managed_identity_client_id: Some("abc".into()),
            managed_identity_endpoint: Some("http://127.0.0.1:9/token".into()),
            ..AuthConfig::default()
        };
        let u = ManagedIdentity::new(&user, "https://graph.microsoft.com", arc);
        assert!(u
            .url()
            .starts_with("http://127.0.0.1:9/token?api-version=2018-02-01&"));
        assert!(u.url().ends_with("&client_id=abc"), "{}", u.url());
    }

    #[test]
    fn challenge_files_outside_the_token_folder_are_refused_unread() {
        for (realm, says) in [
            ("/etc/shadow", "not directly in"),
            (
                "/var/opt/azcmagent/tokens/../../../etc/x.key",
                "not directly in",
            ),
            ("/var/opt/azcmagent/tokens/x.txt", "does not end in .key"),
        ] {
            let e = read_arc_key(Path::new(realm)).unwrap_err();
            assert!(e.to_string().contains(says), "{realm}: {e}");
            assert!(e.to_string().contains("nothing was sent"), "{e}");
        }
    }

    #[test]
    fn realm_is_read_from_the_basic_challenge() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::WWW_AUTHENTICATE,
            "Basic realm=/var/opt/azcmagent/tokens/a.key"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            basic_realm(&h).as_deref(),
            Some("/var/opt/azcmagent/tokens/a.key")
        );
        h.insert(
            reqwest::header::WWW_AUTHENTICATE,
            "Bearer realm=x".parse().unwrap(),
        );
        assert_eq!(basic_realm(&h), None);
    }
}
