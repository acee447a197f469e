//! What a failed Graph request was, and what it means for the work it was part of.

use std::time::Duration;

use crate::graph::auth::AuthError;

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
}
