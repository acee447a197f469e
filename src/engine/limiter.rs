//! Pacing for every request photosync sends: one rate limiter and one throttle gate, shared.
//!
//! Graph's limits are per app and tenant, so workers must not each rediscover a 429: the first
//! one closes the gate for everybody until its `Retry-After` has passed. A token bucket (GCRA:
//! one theoretical arrival time, no timer task) keeps the steady rate under the configured
//! ceiling; no window of one second ever holds more than `burst + requests_per_second` requests.
//!
//! The rate adapts to the service. A throttling answer means the configured rate is more than the
//! service takes right now, and reopening the gate at that rate only earns the next 429 a moment
//! later. So the first throttle of a closed-gate episode drops the rate to just under what got
//! through in the last second the gate was open (the service's limit, as observed), without
//! bursts, starting when the gate reopens; a throttle before anything got through again only
//! closes the gate (the service is still busy, which says nothing about the rate). From there the rate grows along a cubic curve: it stays within a few per cent
//! of that limit for about 20 s, then probes above it faster and faster, so a limit that was
//! raised (or a throttle that was a passing storm) is found again within minutes. The effective
//! rate and burst never exceed the configured ones.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// After a throttle the rate restarts at this share of the observed limit.
const BACKOFF_SHARE: f64 = 0.98;
/// Time scale of the cubic growth: the rate is back at the observed limit after about 0.27 of
/// it and at twice that limit after about one.
const GROWTH_PERIOD_S: f64 = 80.0;
/// The adapted rate never goes below this share of the configured one. What got through in a
/// second is the service's limit only when photosync was sending as fast as it could; when
/// uploads were waiting on something else (timeouts, retries) it is less, and repeated throttles
/// would ratchet the rate down to nothing. Below this floor the gate alone paces: at most one
/// throttle per Retry-After.
const MIN_SHARE: f64 = 0.1;
/// The rate the service admits is estimated from the successes of this last stretch of time.
const WINDOW: Duration = Duration::from_secs(1);

pub struct Limiter {
    max_rate: f64,
    max_burst: u32,
    state: Mutex<State>,
    throttles: AtomicU64,
    consecutive_throttles: AtomicU64,
}

struct State {
    /// When the next request would be on time if no burst were allowed (GCRA).
    tat: Instant,
    /// Closed until then by a throttling answer.
    gate: Option<Instant>,
    /// Set by a throttle: the rate then grows back from `limit` as time passes since `since`.
    adapted: Option<Adapted>,
    /// When the gate last reopened after a throttle.
    reopened: Option<Instant>,
    /// Times of the successes of the last [`WINDOW`].
    successes: VecDeque<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Adapted {
    /// The rate in effect when the service throttled.
    was: f64,
    /// Successes counted over `window` seconds up to the throttle, and those that arrived while
    /// the gate was closed (answers to requests sent before it closed).
    counted: usize,
    late: usize,
    window: f64,
    /// When the gate reopened: growth starts then.
    since: Instant,
}

impl Adapted {
    /// Requests per second the service let through when it throttled us.
    fn limit(&self) -> f64 {
        let observed = (self.counted + self.late) as f64 / self.window;
        if self.counted > 0 && observed >= 1.0 {
            observed.min(self.was)
        } else {
            // Nothing got through lately (a throttle out of the blue), so answers still on the
            // wire say nothing about a rate either: halve, as a last resort.
            self.was / 2.0
        }
    }
}

impl State {
    /// The rate in effect at `now`, and whether bursts are allowed.
    fn rate(&mut self, max_rate: f64, now: Instant) -> (f64, bool) {
        let Some(a) = self.adapted else {
            return (max_rate, true);
        };
        let t = now.saturating_duration_since(a.since).as_secs_f64() / GROWTH_PERIOD_S;
        let rate = (a.limit() * (BACKOFF_SHARE + t * t * t)).max(max_rate * MIN_SHARE);
        if rate >= max_rate {
            self.adapted = None;
            return (max_rate, true);
        }
        (rate, false)
    }

    fn forget_old(&mut self, now: Instant) {
        while self
            .successes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= WINDOW)
        {
            self.successes.pop_front();
        }
    }

    /// Successes over the last [`WINDOW`] the gate was open, and how long that was (s); `None`
    /// when nothing went through since it last reopened (the service still throttles: that says
    /// nothing about the rate it takes).
    fn observed(&mut self, now: Instant) -> Option<(usize, f64)> {
        self.forget_old(now);
        let Some(reopened) = self
            .reopened
            .filter(|r| now.saturating_duration_since(*r) < WINDOW)
        else {
            return Some((self.successes.len(), WINDOW.as_secs_f64()));
        };
        let since = self
            .successes
            .iter()
            .rev()
            .take_while(|t| **t >= reopened)
            .count();
        // Over less than a quarter of the window a count says too little.
        let open = now.saturating_duration_since(reopened).max(WINDOW / 4);
        (since > 0).then_some((since, open.as_secs_f64()))
    }
}

impl Limiter {
    pub fn new(requests_per_second: f64, burst: u32) -> Limiter {
        let now = Instant::now();
        Limiter {
            max_rate: requests_per_second.max(0.001),
            max_burst: burst.max(1),
            state: Mutex::new(State {
                tat: now,
                gate: None,
                adapted: None,
                reopened: None,
                successes: VecDeque::new(),
            }),
            throttles: AtomicU64::new(0),
            consecutive_throttles: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the gate is open and the rate allows one more request.
    pub async fn acquire(&self) {
        loop {
            let slot = {
                let mut s = self.state();
                let now = Instant::now();
                match s.gate {
                    Some(until) if until > now => Err(until),
                    _ => {
                        let (rate, bursts) = s.rate(self.max_rate, now);
                        let interval = Duration::from_secs_f64(1.0 / rate);
                        let burst = if bursts { self.max_burst } else { 1 };
                        let tolerance = interval * (burst - 1);
                        let slot = s.tat.checked_sub(tolerance).map_or(now, |t| t.max(now));
                        s.tat = s.tat.max(slot) + interval;
                        Ok(slot)
                    }
                }
            };
            match slot {
                Err(gate) => tokio::time::sleep_until(gate).await,
                Ok(slot) => {
                    tokio::time::sleep_until(slot).await;
                    // The gate may have closed while we waited for our turn.
                    if self.state().gate.is_none_or(|t| t <= Instant::now()) {
                        return;
                    }
                }
            }
        }
    }

    /// Closes the gate for every worker: for `retry_after` when the service said how long, else
    /// for an exponential backoff (1 s, 2 s, 4 s … 60 s) that grows while throttling lasts. The
    /// first throttle while the gate is open also lowers the rate (see the module docs).
    /// Returns how long the gate stays closed from now.
    pub fn throttled(&self, retry_after: Option<Duration>) -> Duration {
        self.throttles.fetch_add(1, Ordering::Relaxed);
        let n = self.consecutive_throttles.fetch_add(1, Ordering::Relaxed);
        let wait = retry_after.unwrap_or_else(|| {
            let base = Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60));
            jitter(base)
        });
        let now = Instant::now();
        let until = now + wait;
        let mut s = self.state();
        let open = s.gate.is_none_or(|g| g <= now);
        if s.gate.is_none_or(|g| g < until) {
            s.gate = Some(until);
        }
        let reopens = s.gate.unwrap_or(until);
        if open {
            // Answers to requests already on the wire belong to the same episode: only its
            // first one says anything about the rate.
            let (rate, _) = s.rate(self.max_rate, now);
            if let Some((counted, window)) = s.observed(now) {
                s.adapted = Some(Adapted {
                    was: rate,
                    counted,
                    late: 0,
                    window,
                    since: reopens,
                });
            }
            s.reopened = Some(reopens);
            // No catching up on the time the gate was closed: paced from its reopening.
            s.tat = reopens;
        }
        reopens.saturating_duration_since(now)
    }

    /// A request went through: throttling, if any, is over.
    pub fn succeeded(&self) {
        self.consecutive_throttles.store(0, Ordering::Relaxed);
        let now = Instant::now();
        let mut s = self.state();
        s.forget_old(now);
        s.successes.push_back(now);
        if let Some(a) = s.adapted.as_mut().filter(|a| now < a.since) {
            a.late += 1;
        }
    }

    #[cfg(test)]
    /// How many throttling answers (429, or 503/504 with Retry-After) were seen.
    pub(crate) fn throttle_count(&self) -> u64 {
        self.throttles.load(Ordering::Relaxed)
    }

    /// The rate in effect now, in requests per second (lower than configured after throttling).
    pub fn current_rate(&self) -> f64 {
        self.state().rate(self.max_rate, Instant::now()).0
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
    use std::sync::Arc;

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
        let l = Arc::new(Limiter::new(1000.0, 10));
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

    /// Start times (since `t0`) of `n` acquisitions by `workers` concurrent callers.
    async fn acquire_times(l: &Arc<Limiter>, n: usize, workers: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let left = Arc::new(AtomicU64::new(n as u64));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (l, left) = (l.clone(), left.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                    .is_ok()
                {
                    l.acquire().await;
                    mine.push(t0.elapsed());
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        all
    }

    fn most_in_any_window(times: &[Duration], window: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| t.saturating_sub(times[i]) < window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate_and_never_more_than_burst_plus_rate_a_second() {
        let l = Arc::new(Limiter::new(50.0, 10));
        let times = acquire_times(&l, 260, 8).await;
        assert!(times[..10].iter().all(|t| *t < Duration::from_millis(1)));
        // 250 after the burst, one every 20 ms.
        let span = times[259].saturating_sub(times[10]);
        assert!((span.as_secs_f64() - 249.0 / 50.0).abs() < 0.01, "{span:?}");
        assert!(most_in_any_window(&times, Duration::from_secs(1)) <= 60);
    }

    /// A service that admits `limit` requests in any sliding second and throttles the rest
    /// with `Retry-After: 1`, driven by `workers` callers at a configured 100/s: returns the
    /// times of the admitted requests and the number of throttled ones.
    async fn against_sliding_window(
        limit: usize,
        secs: u64,
        workers: usize,
    ) -> (Vec<Duration>, usize) {
        let l = Arc::new(Limiter::new(100.0, 100));
        let t0 = Instant::now();
        let server = Arc::new(Mutex::new((Vec::<Duration>::new(), 0usize)));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (l, server) = (l.clone(), server.clone());
            tasks.push(tokio::spawn(async move {
                while t0.elapsed() < Duration::from_secs(secs) {
                    l.acquire().await;
                    let now = t0.elapsed();
                    let admitted = {
                        let mut s = server.lock().unwrap();
                        let recent =
                            s.0.iter()
                                .rev()
                                .take_while(|t| now.saturating_sub(**t) < WINDOW)
                                .count();
                        if recent < limit {
                            s.0.push(now);
                            true
                        } else {
                            s.1 += 1;
                            false
                        }
                    };
                    // A millisecond on the wire.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if admitted {
                        l.succeeded();
                    } else {
                        l.throttled(Some(Duration::from_secs(1)));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let s = server.lock().unwrap();
        (s.0.clone(), s.1)
    }

    #[tokio::test(start_paused = true)]
    async fn settles_just_under_a_throttling_service_limit() {
        let (admitted, throttled) = against_sliding_window(20, 60, 16).await;
        // Fewer than one 429 per Retry-After window, and at least 90% of what the service allows.
        assert!(throttled < 60, "{throttled} throttled in 60 s");
        let rate = (admitted.len() - 20) as f64
            / admitted[admitted.len() - 1]
                .saturating_sub(admitted[0])
                .as_secs_f64();
        assert!(rate >= 18.0, "{rate:.2}/s, {throttled} throttled");
    }

    #[tokio::test(start_paused = true)]
    async fn grows_back_to_the_configured_rate_once_throttling_stops() {
        let l = Limiter::new(100.0, 100);
        for _ in 0..20 {
            l.succeeded();
        }
        l.throttled(Some(Duration::from_secs(1)));
        let dropped = l.current_rate();
        assert!((15.0..=20.0).contains(&dropped), "{dropped}");
        // A second answer of the same episode does not lower it again.
        l.throttled(Some(Duration::from_secs(1)));
        assert!((l.current_rate() - dropped).abs() < 0.5);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(l.current_rate() < 21.0);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert!((l.current_rate() - 100.0).abs() < f64::EPSILON);
    }

    #[tokio::test(start_paused = true)]
    async fn throttles_before_anything_got_through_again_only_close_the_gate() {
        let l = Limiter::new(200.0, 20);
        for _ in 0..40 {
            l.succeeded();
        }
        l.throttled(Some(Duration::from_millis(500)));
        let dropped = l.current_rate();
        assert!((35.0..=40.0).contains(&dropped), "{dropped}");
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(501)).await;
            l.throttled(Some(Duration::from_millis(500)));
            assert!(
                (l.current_rate() - dropped).abs() < 0.5,
                "{}",
                l.current_rate()
            );
        }
        // Half a second open with 10 through: 20/s, however long the gate was closed before.
        tokio::time::advance(Duration::from_millis(501)).await;
        for _ in 0..10 {
            l.succeeded();
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        l.throttled(Some(Duration::from_millis(500)));
        assert!(
            (19.0..=20.0).contains(&l.current_rate()),
            "{}",
            l.current_rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_that_arrive_while_the_gate_is_closed_count_towards_the_limit() {
        let l = Limiter::new(100.0, 100);
        for _ in 0..15 {
            l.succeeded();
        }
        l.throttled(Some(Duration::from_secs(1)));
        // Requests sent before the gate closed, admitted, answered after the 429.
        tokio::time::advance(Duration::from_millis(5)).await;
        for _ in 0..5 {
            l.succeeded();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            (l.current_rate() - 19.6).abs() < 0.05,
            "{}",
            l.current_rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_with_nothing_admitted_halves_the_rate() {
        let l = Limiter::new(200.0, 20);
        l.throttled(Some(Duration::from_millis(500)));
        // An answer to a request that was already on the wire changes nothing.
        l.succeeded();
        assert!(
            (l.current_rate() - 98.0).abs() < 1.0,
            "{}",
            l.current_rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_throttles_never_take_the_rate_below_a_tenth() {
        let l = Limiter::new(200.0, 20);
        for _ in 0..10 {
            l.succeeded();
            l.throttled(Some(Duration::from_millis(500)));
            tokio::time::advance(Duration::from_millis(501)).await;
        }
        assert!(
            (l.current_rate() - 20.0).abs() < 0.5,
            "{}",
            l.current_rate()
        );
    }
}
