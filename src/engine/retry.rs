//! The one retry policy: what a failed request means for the next attempt. Throttling closes the
//! shared gate and lowers the shared rate, an unavailable service (503/504 with `Retry-After`)
//! closes the gate alone; both retry up to a generous cap. Transient errors back off with jitter
//! up to `max_attempts`, permanent ones return at once, a fatal one stops the run. Every answer
//! that is not a throttle tells the limiter the service admitted the request.

use std::time::Duration;

use crate::config::UploadConfig;
use crate::graph::{ErrorClass, GraphError};
use crate::stats::Stats;

use super::limiter::backoff;
use super::worker::Deps;

/// How often, and how patiently, one request is retried.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts (throttled ones aside) before a transient failure is recorded.
    pub max_attempts: u32,
    /// The first backoff; each attempt doubles it, up to `backoff_max`, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Throttling or unavailable answers one item may meet before it is recorded as failed
    /// for now.
    pub max_throttled: u32,
}

impl RetryPolicy {
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
    pub const DEFAULT_MAX_THROTTLED: u32 = 50;

    pub fn from_config(upload: &UploadConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: upload.max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// The wait before attempt `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> Duration {
        backoff(attempts, self.backoff_base, self.backoff_max)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: UploadConfig::default().max_attempts,
            backoff_base: Self::DEFAULT_BACKOFF_BASE,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            max_throttled: Self::DEFAULT_MAX_THROTTLED,
        }
    }
}

/// How a request ended after its retries.
#[derive(Debug)]
pub enum Sent<T = crate::graph::Reply> {
    Done(T),
    /// Refused for good, or transient attempts used up: the error and the attempts made.
    Failed(GraphError, u32),
    /// Nothing will work until an operator acts; the run was cancelled.
    Fatal(GraphError),
    /// The run was cancelled.
    Stopped,
}

/// Sends a request until it succeeds or the policy says to stop (see the module doc).
pub async fn with_retries<T, F, Fut>(deps: &Deps, what: &str, mut send: F) -> Sent<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GraphError>>,
{
    let policy = &deps.retry;
    let mut attempts = 0u32;
    let mut throttled = 0u32;
    loop {
        let sent_at = tokio::select! {
            biased;
            () = deps.cancel.cancelled() => return Sent::Stopped,
            at = deps.limiter.acquire() => at,
        };
        attempts += 1;
        let e = match send().await {
            Ok(reply) => {
                deps.limiter.admitted(sent_at);
                return Sent::Done(reply);
            }
            Err(e) => e,
        };
        let class = e.class();
        // Any answer but a throttle passed the service's throttling.
        if e.status().is_some() && !matches!(class, ErrorClass::Throttled(_)) {
            deps.limiter.admitted(sent_at);
        }
        match class {
            ErrorClass::Fatal => {
                // Once: the other workers meet the same error as the run stops.
                if !deps.cancel.is_cancelled() {
                    tracing::error!(error = %e, "fatal error; stopping");
                }
                deps.cancel.cancel();
                return Sent::Fatal(e);
            }
            ErrorClass::Throttled(retry_after) => {
                throttled += 1;
                attempts -= 1;
                Stats::add(&deps.stats.throttled, 1);
                let wait = deps.limiter.throttled_at(sent_at, retry_after);
                tracing::warn!(
                    status = e.status().unwrap_or(0),
                    retry_after_ms = wait.as_millis() as u64,
                    rate_per_s = deps.limiter.current_rate(),
                    request_id = e.request_id().unwrap_or(""),
                    "throttled; every worker pauses"
                );
                if throttled >= policy.max_throttled {
                    return Sent::Failed(e, attempts);
                }
            }
            ErrorClass::Unavailable(retry_after) => {
                throttled += 1;
                attempts -= 1;
                Stats::add(&deps.stats.retries, 1);
                let wait = deps.limiter.unavailable(retry_after);
                tracing::info!(
                    status = e.status().unwrap_or(0),
                    retry_after_ms = wait.as_millis() as u64,
                    request_id = e.request_id().unwrap_or(""),
                    "service unavailable; every worker pauses"
                );
                if throttled >= policy.max_throttled {
                    return Sent::Failed(e, attempts);
                }
            }
            ErrorClass::Transient => {
                if attempts >= policy.max_attempts {
                    tracing::warn!(what, attempts, error = %e, "giving up for now");
                    return Sent::Failed(e, attempts);
                }
                Stats::add(&deps.stats.retries, 1);
                let wait = policy.backoff(attempts);
                tracing::info!(attempt = attempts, retry_in_ms = wait.as_millis() as u64, error = %e, "retrying");
                tokio::select! {
                    () = deps.cancel.cancelled() => return Sent::Stopped,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            ErrorClass::Permanent => {
                tracing::warn!(what, error = %e, "request refused");
                return Sent::Failed(e, attempts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_backoff() {
        let p = RetryPolicy::from_config(&UploadConfig::default());
        assert_eq!(p.backoff_base, Duration::from_millis(500));
        assert_eq!(p.backoff_max, Duration::from_secs(60));
        assert_eq!(p.max_attempts, UploadConfig::default().max_attempts);
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let p = RetryPolicy {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        for attempt in 1..20 {
            assert!(p.backoff(attempt) <= Duration::from_secs(1));
        }
    }
}
