//! The Microsoft Graph client: photo upload, metadata and delete, with the token attached.
//!
//! One `reqwest::Client` for the process (connections are reused). Every request carries a fresh
//! `client-request-id`; every answer's `request-id` is kept for the ledger and the logs, because
//! that is what Microsoft support asks for. What an error means for the caller (retry, wait,
//! give up, stop) is decided in one place: [`GraphError::class`].

pub mod auth;
pub mod resolve;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::graph::auth::{AuthError, TokenSource};
use crate::mapping::Target;

/// What a failed request means for the work it was part of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorClass {
    /// Nothing will work until an operator acts (credentials refused): stop the run.
    Fatal,
    /// The service asked us to slow down: every request waits, then this one is retried.
    Throttled(Option<Duration>),
    /// Worth retrying after a backoff (5xx, timeouts, resets).
    Transient,
    /// Will fail the same way until the photo or the target changes.
    Permanent,
}

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("Graph answered {status}{}{}{}",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        message.as_deref().filter(|m| !m.is_empty()).map(|m| format!(": {m}")).unwrap_or_default(),
        request_id.as_deref().map(|r| format!(" (request-id {r})")).unwrap_or_default())]
    Status {
        status: u16,
        code: Option<String>,
        message: Option<String>,
        request_id: Option<String>,
        retry_after: Option<Duration>,
    },
    #[error("request failed: {kind}: {source}")]
    Transport {
        kind: TransportKind,
        #[source]
        source: reqwest::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("Graph rejected a freshly issued token (401{}): is [cloud] set to the tenant's cloud?",
        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default())]
    TokenRejected { code: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Timeout,
    Connect,
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Timeout => "timed out",
            TransportKind::Connect => "cannot connect",
            TransportKind::Other => "connection error",
        })
    }
}

/// Graph error codes that will not change by retrying the same photo for the same target.
const PERMANENT_CODES: &[&str] = &[
    "ErrorNonExistentMailbox",
    "MailboxNotHostedInExchangeOnline",
    "AppOnlyTokenNotSupportedForGroupUpdate",
    "AuthenticationError",
    "ImageCorrupted",
    "ErrorInvalidImage",
];

impl GraphError {
    pub fn class(&self) -> ErrorClass {
        match self {
            GraphError::Status {
                status,
                code,
                retry_after,
                ..
            } => match *status {
                429 => ErrorClass::Throttled(*retry_after),
                503 | 504 if retry_after.is_some() => ErrorClass::Throttled(*retry_after),
                _ if code
                    .as_deref()
                    .is_some_and(|c| PERMANENT_CODES.contains(&c)) =>
                {
                    ErrorClass::Permanent
                }
                408 | 409 | 425 => ErrorClass::Transient,
                s if s >= 500 => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            GraphError::Auth(e) if e.is_fatal() => ErrorClass::Fatal,
            GraphError::TokenRejected { .. } => ErrorClass::Fatal,
            GraphError::Transport { .. } | GraphError::Auth(_) => ErrorClass::Transient,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Status { code, .. } | GraphError::TokenRejected { code } => code.as_deref(),
            _ => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            GraphError::Status { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// A short stable name for metrics and the ledger.
    pub fn kind(&self) -> &'static str {
        match self.class() {
            ErrorClass::Fatal => "fatal",
            ErrorClass::Throttled(_) => "throttled",
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub request_id: Option<String>,
    pub client_request_id: String,
    pub body: Bytes,
}

/// Photo metadata (`GET .../photo`).
#[derive(Debug, Clone, Deserialize)]
pub struct PhotoMeta {
    #[serde(rename = "@odata.mediaEtag", default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub width: Option<u32>,
    #[serde(default)]
    pub height: Option<u32>,
}

/// Builds the process's one HTTP client.
pub fn http_client(
    request_timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("photosync/", env!("CARGO_PKG_VERSION")))
        .timeout(request_timeout)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_keepalive(Duration::from_secs(30))
        .build()
}

pub struct GraphClient {
    http: reqwest::Client,
    base: String,
    tokens: Arc<TokenSource>,
}

impl GraphClient {
    /// `graph_url` is the host (e.g. `https://graph.microsoft.com`), without a version.
    pub fn new(http: reqwest::Client, graph_url: &str, tokens: Arc<TokenSource>) -> GraphClient {
        GraphClient {
            http,
            base: format!("{}/v1.0", graph_url.trim_end_matches('/')),
            tokens,
        }
    }

    pub fn tokens(&self) -> &Arc<TokenSource> {
        &self.tokens
    }

    /// Uploads the photo of `target`. Any 2xx is success.
    #[tracing::instrument(skip_all, fields(target = %target, bytes = body.len()))]
    pub async fn upload_photo(
        &self,
        method: Method,
        target: &Target,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<Reply, GraphError> {
        let url = format!("{}{}/$value", self.base, target.photo_path());
        self.send(method, &url, Some((body, content_type))).await
    }

    /// Removes the photo of a user or group.
    pub async fn delete_photo(&self, target: &Target) -> Result<Reply, GraphError> {
        let url = format!("{}{}/$value", self.base, target.photo_path());
        self.send(Method::DELETE, &url, None).await
    }

    /// Reads the photo's metadata (its `mediaEtag` changes whenever the photo does).
    pub async fn photo_meta(&self, target: &Target) -> Result<PhotoMeta, GraphError> {
        let url = format!("{}{}", self.base, target.photo_path());
        let reply = self.send(Method::GET, &url, None).await?;
        serde_json::from_slice(&reply.body).map_err(|_| GraphError::Status {
            status: reply.status,
            code: Some("MalformedResponse".into()),
            message: Some("photo metadata was not JSON".into()),
            request_id: reply.request_id,
            retry_after: None,
        })
    }

    /// A GET of any Graph path below the host (e.g. `/v1.0/users?$top=1`), for probes.
    pub async fn get(&self, path_and_query: &str) -> Result<Reply, GraphError> {
        let host = self.base.trim_end_matches("/v1.0");
        self.send(Method::GET, &format!("{host}{path_and_query}"), None)
            .await
    }

    /// A directory query (`/v1.0/users?$filter=…`) sent the way advanced queries need it
    /// (`ConsistencyLevel: eventual`, for `$count=true`).
    pub async fn query(&self, path_and_query: &str) -> Result<Reply, GraphError> {
        let host = self.base.trim_end_matches("/v1.0");
        self.send_with(
            Method::GET,
            &format!("{host}{path_and_query}"),
            None,
            Some(("ConsistencyLevel", "eventual")),
        )
        .await
    }

    /// Sends once; on 401 fetches a new token and sends once more.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<(Bytes, &'static str)>,
    ) -> Result<Reply, GraphError> {
        self.send_with(method, url, body, None).await
    }

    async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Option<(Bytes, &'static str)>,
        header: Option<(&'static str, &'static str)>,
    ) -> Result<Reply, GraphError> {
        let mut refreshed = false;
        loop {
            let token = self.tokens.token().await?;
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let mut req = self
                .http
                .request(method.clone(), url)
                .header("Authorization", token.bearer())
                .header("client-request-id", &client_request_id)
                .header("return-client-request-id", "true");
            if let Some((bytes, ct)) = &body {
                req = req.header(CONTENT_TYPE, *ct).body(bytes.clone());
            }
            if let Some((name, value)) = header {
                req = req.header(name, value);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let kind = if e.is_timeout() {
                        TransportKind::Timeout
                    } else if e.is_connect() {
                        TransportKind::Connect
                    } else {
                        TransportKind::Other
                    };
                    tracing::debug!(%client_request_id, error = %e, "request failed");
                    return Err(GraphError::Transport {
                        kind,
                        source: e.without_url(),
                    });
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let request_id = header_str(&headers, "request-id");
            let body_bytes = resp.bytes().await.map_err(|e| GraphError::Transport {
                kind: if e.is_timeout() {
                    TransportKind::Timeout
                } else {
                    TransportKind::Other
                },
                source: e.without_url(),
            })?;
            if status.is_success() {
                return Ok(Reply {
                    status: status.as_u16(),
                    request_id,
                    client_request_id,
                    body: body_bytes,
                });
            }
            let (code, message) = parse_error_body(&body_bytes);
            tracing::debug!(
                status = status.as_u16(),
                code = code.as_deref().unwrap_or(""),
                request_id = request_id.as_deref().unwrap_or(""),
                %client_request_id,
                diagnostic = header_str(&headers, "x-ms-ags-diagnostic").as_deref().unwrap_or(""),
                "graph error"
            );
            if status == StatusCode::UNAUTHORIZED {
                if refreshed {
                    return Err(GraphError::TokenRejected { code });
                }
                refreshed = true;
                self.tokens.invalidate(&token).await;
                continue;
            }
            return Err(GraphError::Status {
                status: status.as_u16(),
                code,
                message,
                request_id,
                retry_after: parse_retry_after(&headers, SystemTime::now()),
            });
        }
    }
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(ToOwned::to_owned)
}

/// `Retry-After` as seconds (fractional allowed, e.g. `2.128`) or an HTTP-date.
pub fn parse_retry_after(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| Duration::from_secs_f64(secs.min(3600.0)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600)),
    )
}

/// Graph's `{"error":{"code","message"}}`; a body that is not that gives nothing.
fn parse_error_body(body: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(Deserialize)]
    struct Outer {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<Outer>(body) {
        Ok(o) => (
            o.error.code,
            o.error.message.map(|m| m.chars().take(300).collect()),
        ),
        Err(_) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn retry_after_seconds_fractional_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(&h("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after(&h("2.128"), now),
            Some(Duration::from_millis(2128))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            parse_retry_after(&h(&later), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(&h("soon"), now), None);
        assert_eq!(parse_retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn classes() {
        let st = |status, code: Option<&str>, ra| GraphError::Status {
            status,
            code: code.map(Into::into),
            message: None,
            request_id: None,
            retry_after: ra,
        };
        assert_eq!(st(429, None, None).class(), ErrorClass::Throttled(None));
        assert_eq!(
            st(503, None, Some(Duration::from_secs(1))).class(),
            ErrorClass::Throttled(Some(Duration::from_secs(1)))
        );
        assert_eq!(st(503, None, None).class(), ErrorClass::Transient);
        assert_eq!(st(500, None, None).class(), ErrorClass::Transient);
        assert_eq!(
            st(404, Some("ResourceNotFound"), None).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            st(500, Some("ErrorNonExistentMailbox"), None).class(),
            ErrorClass::Permanent
        );
        assert_eq!(st(403, None, None).class(), ErrorClass::Permanent);
    }

    #[test]
    fn error_body_is_parsed() {
        let (c, m) = parse_error_body(
            br#"{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{"request-id":"x"}}}"#,
        );
        assert_eq!(c.as_deref(), Some("TooManyRequests"));
        assert_eq!(m.as_deref(), Some("Please retry again later."));
        assert_eq!(parse_error_body(b"<html>"), (None, None));
    }
}
