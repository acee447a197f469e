//! The client: one request at a time, with a token, a fresh `client-request-id`, and the
//! answer's `request-id` kept.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::config::Config;
use crate::graph::auth::{AccessToken, AuthError, TokenSource};
use crate::graph::error::{GraphError, TransportKind};
use crate::graph::paths;
use crate::mapping::Target;

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

/// What stops a Graph client from being built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
    /// The credential cannot be loaded (missing, unreadable, insecure, not a certificate).
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// The HTTP client, the token source and the Graph client, wired from `cfg` the one way every
/// command uses them. No request is sent: a credential the endpoint refuses shows with the
/// first one.
pub fn connect(cfg: &Config) -> Result<GraphClient, ConnectError> {
    let http = http_client(cfg.upload.request_timeout, cfg.upload.connect_timeout)
        .map_err(ConnectError::Http)?;
    let graph_url = cfg.cloud.graph_url();
    let tokens = TokenSource::new(&cfg.auth, &cfg.cloud.login_url(), &graph_url, http.clone())?;
    Ok(GraphClient::new(http, &graph_url, Arc::new(tokens)))
}

pub struct GraphClient {
    http: reqwest::Client,
    /// The Graph host without a trailing slash or version.
    host: String,
    tokens: Arc<TokenSource>,
}

impl GraphClient {
    /// `graph_url` is the host (e.g. `https://graph.microsoft.com`), without a version.
    pub fn new(http: reqwest::Client, graph_url: &str, tokens: Arc<TokenSource>) -> GraphClient {
        GraphClient {
            http,
            host: graph_url.trim_end_matches('/').to_owned(),
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
        let url = format!(
            "{}{}{}",
            self.host,
            paths::VERSION,
            paths::photo_value_path(target)
        );
        self.send(method, &url, Some((body, content_type))).await
    }

    /// Removes the photo of a user or group.
    pub async fn delete_photo(&self, target: &Target) -> Result<Reply, GraphError> {
        let url = format!(
            "{}{}{}",
            self.host,
            paths::VERSION,
            paths::photo_value_path(target)
        );
        self.send(Method::DELETE, &url, None).await
    }

    /// Reads the photo's metadata (its `mediaEtag` changes whenever the photo does).
    pub async fn photo_meta(&self, target: &Target) -> Result<PhotoMeta, GraphError> {
        let url = format!(
            "{}{}{}",
            self.host,
            paths::VERSION,
            paths::photo_path(target)
        );
        let reply = self.send(Method::GET, &url, None).await?;
        serde_json::from_slice(&reply.body).map_err(|_| GraphError::Status {
            status: reply.status,
            code: Some("MalformedResponse".into()),
            message: Some("photo metadata was not JSON".into()),
            request_id: reply.request_id,
            retry_after: None,
            throttling: false,
        })
    }

    /// A GET of any Graph path below the host (e.g. `/v1.0/users?$top=1`), for probes.
    pub async fn get(&self, path_and_query: &str) -> Result<Reply, GraphError> {
        let url = format!("{}{path_and_query}", self.host);
        self.send(Method::GET, &url, None).await
    }

    /// A directory query (`/v1.0/users?$filter=…`) sent the way advanced queries need it
    /// (`ConsistencyLevel: eventual`, for `$count=true`).
    pub async fn query(&self, path_and_query: &str) -> Result<Reply, GraphError> {
        self.send_with(
            Method::GET,
            &format!("{}{path_and_query}", self.host),
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
            match self
                .send_once(&method, url, body.as_ref(), header, &token)
                .await
            {
                // The cached token may have been revoked or rotated: one fresh token, once.
                Err(GraphError::TokenRejected { .. }) if !refreshed => {
                    refreshed = true;
                    self.tokens.invalidate(&token).await;
                }
                answer => return answer,
            }
        }
    }

    /// One request with `token`; a 401 comes back as [`GraphError::TokenRejected`].
    async fn send_once(
        &self,
        method: &Method,
        url: &str,
        body: Option<&(Bytes, &'static str)>,
        header: Option<(&'static str, &'static str)>,
        token: &AccessToken,
    ) -> Result<Reply, GraphError> {
        let client_request_id = uuid::Uuid::new_v4().to_string();
        let mut req = self
            .http
            .request(method.clone(), url)
            .header("Authorization", token.bearer())
            .header("client-request-id", &client_request_id)
            .header("return-client-request-id", "true");
        if let Some((bytes, ct)) = body {
            req = req.header(CONTENT_TYPE, *ct).body(bytes.clone());
        }
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        let resp = req.send().await.map_err(|e| {
            tracing::debug!(%client_request_id, error = %e, "request failed");
            transport_error(e)
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let request_id = header_str(&headers, "request-id");
        let body = resp.bytes().await.map_err(transport_error)?;
        if status.is_success() {
            return Ok(Reply {
                status: status.as_u16(),
                request_id,
                client_request_id,
                body,
            });
        }
        let (code, message) = parse_error_body(&body);
        tracing::debug!(
            status = status.as_u16(),
            code = code.as_deref().unwrap_or(""),
            request_id = request_id.as_deref().unwrap_or(""),
            %client_request_id,
            diagnostic = header_str(&headers, "x-ms-ags-diagnostic").as_deref().unwrap_or(""),
            "graph error"
        );
        if status == StatusCode::UNAUTHORIZED {
            return Err(GraphError::TokenRejected { code });
        }
        let throttling = super::error::throttle_signal(
            headers.keys().map(reqwest::header::HeaderName::as_str),
            code.as_deref(),
            message.as_deref(),
        );
        Err(GraphError::Status {
            status: status.as_u16(),
            code,
            message,
            request_id,
            retry_after: parse_retry_after(&headers, SystemTime::now()),
            throttling,
        })
    }
}

/// A request that got no answer, or whose answer was cut off.
fn transport_error(e: reqwest::Error) -> GraphError {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    GraphError::Transport {
        kind,
        error: e.without_url(),
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
    fn error_body_is_parsed() {
        let (c, m) = parse_error_body(
            br#"{"error":{"code":"TooManyRequests","message":"Please retry again later.","innerError":{"request-id":"x"}}}"#,
        );
        assert_eq!(c.as_deref(), Some("TooManyRequests"));
        assert_eq!(m.as_deref(), Some("Please retry again later."));
        assert_eq!(parse_error_body(b"<html>"), (None, None));
    }
}
