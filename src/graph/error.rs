//! What a failed Graph request was, and what it means for the work it was part of.

use std::time::Duration;

use crate::graph::auth::AuthError;

/// What a failed request means for the work it was part of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorClass {
    /// Nothing will work until an operator acts (credentials refused): stop the run.
    Fatal,
    /// The service asked us to slow down (a 429, or a 503 that says it throttled): every
    /// request waits, the shared rate adapts, then this one is retried.
    Throttled(Option<Duration>),
    /// The service is busy and said for how long (a 503 or 504 with `Retry-After` that does
    /// not say it throttled): every request waits that long, the rate stays, this one is retried.
    Unavailable(Duration),
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
        /// The answer said it throttled (see [`throttle_signal`]).
        throttling: bool,
    },
    // The transport error is printed, not chained: every place that shows a GraphError
    // shows its Display alone.
    #[error("request failed: {kind}: {error}")]
    Transport {
        kind: TransportKind,
        error: reqwest::Error,
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
                throttling,
                ..
            } => match (*status, *retry_after) {
                (429, _) => ErrorClass::Throttled(*retry_after),
                (503, _) if *throttling => ErrorClass::Throttled(*retry_after),
                (503 | 504, Some(wait)) => ErrorClass::Unavailable(wait),
                (status, _) => Self::class_of_status(status, code.as_deref()),
            },
            GraphError::Auth(e) if e.is_fatal() => ErrorClass::Fatal,
            GraphError::TokenRejected { .. } => ErrorClass::Fatal,
            GraphError::Transport { .. } | GraphError::Auth(_) => ErrorClass::Transient,
        }
    }

    fn class_of_status(status: u16, code: Option<&str>) -> ErrorClass {
        match status {
            _ if code.is_some_and(|c| PERMANENT_CODES.contains(&c)) => ErrorClass::Permanent,
            408 | 409 | 425 => ErrorClass::Transient,
            s if s >= 500 => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
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
}

/// Whether an error answer says the request was throttled, rather than that the service is
/// unavailable: Graph's `x-ms-throttle-*` headers (`x-ms-throttle-scope`,
/// `x-ms-throttle-information`, `x-ms-throttle-limit-percentage`, …), a `TooManyRequests` or
/// throttling error code, or a message that speaks of throttling.
pub fn throttle_signal<'h>(
    header_names: impl IntoIterator<Item = &'h str>,
    code: Option<&str>,
    message: Option<&str>,
) -> bool {
    let mentions = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.contains("throttl") || s.contains("toomanyrequests") || s.contains("too many requests")
    };
    header_names
        .into_iter()
        .any(|h| h.to_ascii_lowercase().starts_with("x-ms-throttle-"))
        || code.is_some_and(mentions)
        || message.is_some_and(mentions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let st = |status, code: Option<&str>, ra| GraphError::Status {
            status,
            code: code.map(Into::into),
            message: None,
            request_id: None,
            retry_after: ra,
            throttling: false,
        };
        let second = Some(Duration::from_secs(1));
        assert_eq!(st(429, None, None).class(), ErrorClass::Throttled(None));
        assert_eq!(
            st(503, None, second).class(),
            ErrorClass::Unavailable(Duration::from_secs(1))
        );
        assert_eq!(
            st(504, None, second).class(),
            ErrorClass::Unavailable(Duration::from_secs(1))
        );
        let throttling_503 = GraphError::Status {
            status: 503,
            code: None,
            message: None,
            request_id: None,
            retry_after: second,
            throttling: true,
        };
        assert_eq!(throttling_503.class(), ErrorClass::Throttled(second));
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
    fn throttle_signals() {
        assert!(throttle_signal(["x-ms-throttle-scope"], None, None));
        assert!(throttle_signal(["X-MS-Throttle-Information"], None, None));
        assert!(throttle_signal([], Some("TooManyRequests"), None));
        assert!(throttle_signal(
            [],
            None,
            Some("The request has been throttled")
        ));
        assert!(!throttle_signal(
            ["retry-after", "request-id"],
            Some("serviceNotAvailable"),
            Some("The service is temporarily unavailable")
        ));
    }
}
