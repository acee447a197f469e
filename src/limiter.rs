//! Pacing for every request photosync sends: one rate limiter and one throttle gate, shared.
//!
//! Graph's limits are per app and tenant, so workers must not each rediscover a 429: the first
//! one closes the gate for everybody until its `Retry-After` has passed. The governor quota
//! (`requests_per_second`, `burst`) keeps the steady rate under the configured ceiling; no
//! window of one second ever holds more than `burst + requests_per_second` requests.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use tokio::time::Instant;

pub struct Limiter {
    rate: DefaultDirectRateLimiter,
    gate: Mutex<Option<Instant>>,
    throttles: AtomicU64,
    consecutive_throttles: AtomicU64,
}

impl Limiter {
    pub fn new(requests_per_second: f64, burst: u32) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / requests_per_second.max(0.001));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Limiter {
            rate: RateLimiter::direct(quota),
            gate: Mutex::new(None),
            throttles: AtomicU64::new(0),
            consecutive_throttles: AtomicU64::new(0),
        }
    }

    /// Waits until the gate is open and the rate allows one more request.
    pub async fn acquire(&self) {
        loop {
            self.wait_gate().await;
            self.rate.until_ready().await;
            // The gate may have closed while we waited for the rate permit.
            if self.gate_until().is_none_or(|t| t <= Instant::now()) {
                return;
            }
        }
    }

    async fn wait_gate(&self) {
        while let Some(until) = self.gate_until() {
            if until <= Instant::now() {
                return;
            }
            tokio::time::sleep_until(until).await;
        }
    }

    fn gate_until(&self) -> Option<Instant> {
        *self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the gate for every worker: for `retry_after` when the service said how long, else
    /// for an exponential backoff (1 s, 2 s, 4 s … 60 s) that grows while throttling lasts.
    /// Returns how long the gate stays closed from now.
    pub fn throttled(&self, retry_after: Option<Duration>) -> Duration {
        self.throttles.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_throttles.fetch_add(1, Ordering::Relaxed);
        let wait = retry_after.unwrap_or_else(|| {
            let base = Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60));
            jitter(base)
        });
        let until = Instant::now() + wait;
        let mut gate = self
            .gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if gate.is_none_or(|g| g < until) {
            *gate = Some(until);
        }
        gate.map_or(wait, |g| g.saturating_duration_since(Instant::now()))
    }

    /// A request went through: throttling, if any, is over.
    pub fn succeeded(&self) {
        self.consecutive_throttles.store(0, Ordering::Relaxed);
    }

    /// How many throttling answers (429, or 503/504 with Retry-After) were seen.
    pub fn throttle_count(&self) -> u64 {
        self.throttles.load(Ordering::Relaxed)
    }
}

/// The delay before retry number `attempt` (1-based) of a transient failure: exponential from
/// `base`, capped at `max`, with jitter so that workers that failed together do not retry together.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    jitter(exp.min(max))
}

/// Between half and all of `d`.
fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::thread_rng().gen_range(0.5..=1.0);
    d.mul_f64(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        for _ in 0..50 {
            let d1 = backoff(1, b, m);
            assert!(d1 >= Duration::from_millis(50) && d1 <= b);
            let d3 = backoff(3, b, m);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            assert!(backoff(30, b, m) <= m);
        }
    }

    // Real time, lower bounds only: the gate must hold everybody back at least Retry-After.
    #[tokio::test]
    async fn gate_holds_every_caller_until_retry_after() {
        let l = std::sync::Arc::new(Limiter::new(1000.0, 10));
        l.acquire().await;
        let start = std::time::Instant::now();
        l.throttled(Some(Duration::from_millis(300)));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire().await;
                start.elapsed()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap() >= Duration::from_millis(300));
        }
        assert_eq!(l.throttle_count(), 1);
    }
}
