//! Pacing for every request photosync sends: one rate limiter and one gate, shared.
//!
//! Graph's limits are per app and tenant, so workers must not each rediscover a 429: the first
//! one closes the gate for everybody until its `Retry-After` has passed. A token bucket (GCRA:
//! one theoretical arrival time, no timer task) keeps the steady rate under the configured
//! ceiling; no window of one second ever holds more than `burst + requests_per_second` requests.
//!
//! Two kinds of answer close the gate, and only one of them says anything about the rate:
//! - **Throttling** (a 429, or a 503 that says it throttled): the configured rate is more than
//!   the service takes right now, and reopening the gate at that rate only earns the next 429 a
//!   moment later. So the first throttle of a closed-gate episode drops the rate to just under
//!   what the service admitted in the last second the gate was open (its limit, as observed),
//!   without bursts, starting when the gate reopens; a throttle before anything got through
//!   again only closes the gate (the service is still busy, which says nothing about the rate).
//!   From there the rate grows along a cubic curve: it stays within a few per cent of that limit
//!   for about 20 s, then probes above it faster and faster, so a limit that was raised (or a
//!   throttle that was a passing storm) is found again within minutes.
//! - **Unavailable** (a 503 or 504 with `Retry-After` that does not say it throttled): the
//!   service is busy, not refusing our rate. The gate closes for the `Retry-After` and the rate
//!   stays. Turns the closed gate kept from being used are given back, so when it reopens the
//!   bucket holds what it would after any idle time (up to `burst`): a storm of them costs
//!   little more than the failed requests.
//!
//! What the service admitted is counted by the time each request was *sent*, not the time its
//! answer came: an answer that arrives late (a slow upload, a stall, after the gate closed or
//! even after it reopened) still counts for the second it was sent in. Slow answers therefore
//! never make the limit look lower than it is, and repeated throttling episodes do not ratchet
//! the rate below what the service let through. The effective rate and burst never exceed the
//! configured ones.

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
/// The adapted rate never goes below this share of the configured one: a last line of defence
/// should a run of throttles out of the blue (nothing admitted: the rate halves) come. Below
/// this floor the gate alone paces: at most one throttle per Retry-After.
const MIN_SHARE: f64 = 0.1;
/// The rate the service admits is estimated from the requests sent in this last stretch of time.
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
    /// Closed until then by a throttling or unavailable answer.
    gate: Option<Instant>,
    /// Set by a throttle: the rate then grows back from `limit` as time passes since `since`.
    adapted: Option<Adapted>,
    /// When the gate last reopened after a throttle.
    reopened: Option<Instant>,
    /// When the gate last reopened after any closure: time it was closed says nothing about
    /// what the service admits.
    opened: Option<Instant>,
    /// When the admitted requests of the last [`WINDOW`] were sent (in the order answered).
    admitted: VecDeque<Instant>,
    /// Counts the times a throttle threw the schedule away: a slot booked before is void.
    epoch: u64,
}

#[derive(Debug, Clone, Copy)]
struct Adapted {
    /// The rate in effect when the service throttled.
    was: f64,
    /// Admitted requests sent over `window` seconds from `from` up to the throttle at `at`:
    /// those answered by then, and those answered later (`sent_before`, added as they come).
    counted: usize,
    sent_before: usize,
    /// Answers of unknown send time that came while the gate was closed.
    late: usize,
    window: f64,
    /// For a stretch shorter than [`WINDOW`]: the most it may say (see [`Adapted::limit`]).
    cap: Option<f64>,
    from: Instant,
    at: Instant,
    /// When the gate reopened: growth starts then.
    since: Instant,
}

impl Adapted {
    /// Requests per second the service let through when it throttled us. After a full
    /// second open that count is the limit, whatever rate we were at (capping it by that rate
    /// would take the rate lower with every throttle that timing jitter earns just under the
    /// limit). A shorter stretch since the gate reopened overstates it (a service that
    /// counts by the second lets a burst through after a pause): it may lower the limit, not
    /// raise it above the last one.
    fn limit(&self) -> f64 {
        let known = self.counted + self.sent_before;
        let observed = (known + self.late) as f64 / self.window;
        if known > 0 && observed >= 1.0 {
            self.cap.map_or(observed, |cap| observed.min(cap))
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
        // Answers come out of order; the queue holds about a second's worth of requests.
        self.admitted
            .retain(|t| now.saturating_duration_since(*t) < WINDOW);
    }

    /// Admitted requests sent over the last [`WINDOW`] the gate was open, when that stretch
    /// began and how long it was (s); `None` when nothing sent since it last reopened got
    /// through (the service still throttles: that says nothing about the rate it takes).
    fn observed(&mut self, now: Instant) -> Option<(usize, Instant, f64)> {
        self.forget_old(now);
        let Some(reopened) = self
            .opened
            .filter(|r| now.saturating_duration_since(*r) < WINDOW)
        else {
            let from = now.checked_sub(WINDOW).unwrap_or(now);
            return Some((self.admitted.len(), from, WINDOW.as_secs_f64()));
        };
        let since = self.admitted.iter().filter(|t| **t >= reopened).count();
        // Over less than a quarter of the window a count says too little.
        let open = now.saturating_duration_since(reopened).max(WINDOW / 4);
        (since > 0).then_some((since, reopened, open.as_secs_f64()))
    }

    /// Closes the gate until at least `until`; returns when it reopens.
    fn close(&mut self, until: Instant) -> Instant {
        if self.gate.is_none_or(|g| g < until) {
            self.gate = Some(until);
        }
        self.gate.unwrap_or(until)
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
                opened: None,
                admitted: VecDeque::new(),
                epoch: 0,
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

    /// Waits until the gate is open and the rate allows one more request; returns when that
    /// was (the request's send time, for [`Limiter::admitted`]).
    pub async fn acquire(&self) -> Instant {
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
                        Ok((slot, s.epoch, interval))
                    }
                }
            };
            match slot {
                Err(gate) => tokio::time::sleep_until(gate).await,
                Ok((slot, epoch, interval)) => {
                    tokio::time::sleep_until(slot).await;
                    let now = Instant::now();
                    let mut s = self.state();
                    // A throttle rebooked every turn at a lower rate: ours is void.
                    if s.epoch != epoch {
                        continue;
                    }
                    if s.gate.is_none_or(|t| t <= now) {
                        return now;
                    }
                    // The gate closed before our turn came: the turn went unused, so it is
                    // given back (a pause for an unavailable service costs the rate nothing).
                    s.tat = s.tat.checked_sub(interval).unwrap_or(s.tat);
                }
            }
        }
    }

    /// Closes the gate for every worker: for `retry_after` when the service said how long, else
    /// for an exponential backoff (1 s, 2 s, 4 s … 60 s) that grows while throttling lasts. The
    /// first throttle while the gate is open also lowers the rate (see the module docs).
    /// Returns how long the gate stays closed from now.
    #[cfg(test)]
    pub(crate) fn throttled(&self, retry_after: Option<Duration>) -> Duration {
        self.throttled_at(Instant::now(), retry_after)
    }

    /// [`Limiter::throttled`] for a request sent at `sent` (as [`Limiter::acquire`] returned).
    /// A request sent before the gate last reopened belongs to the episode that closed it: the
    /// gate already waited for it, and its (late) answer says nothing new about the rate.
    pub fn throttled_at(&self, sent: Instant, retry_after: Option<Duration>) -> Duration {
        self.throttles.fetch_add(1, Ordering::Relaxed);
        {
            let s = self.state();
            if s.reopened.is_some_and(|r| sent < r) {
                let now = Instant::now();
                return s
                    .gate
                    .map_or(Duration::ZERO, |g| g.saturating_duration_since(now));
            }
        }
        let n = self.consecutive_throttles.fetch_add(1, Ordering::Relaxed);
        let wait = retry_after.unwrap_or_else(|| {
            let base = Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60));
            jitter(base)
        });
        let now = Instant::now();
        let mut s = self.state();
        let open = s.gate.is_none_or(|g| g <= now);
        let reopens = s.close(now + wait);
        if open {
            // Answers to requests already on the wire belong to the same episode: only its
            // first one says anything about the rate.
            let (rate, _) = s.rate(self.max_rate, now);
            if let Some((counted, from, window)) = s.observed(now) {
                let short = window < WINDOW.as_secs_f64();
                let last = s.adapted.map_or(rate, |a| a.limit().max(rate));
                s.adapted = Some(Adapted {
                    was: rate,
                    counted,
                    sent_before: 0,
                    late: 0,
                    window,
                    cap: short.then_some(last),
                    from,
                    at: now,
                    since: reopens,
                });
            }
            s.reopened = Some(reopens);
            s.opened = Some(reopens);
            // No catching up on the time the gate was closed: paced from its reopening, and
            // turns booked at the old rate are void.
            s.tat = reopens;
            s.epoch += 1;
        }
        reopens.saturating_duration_since(now)
    }

    /// The service is unavailable for `retry_after` (a 503 or 504 that does not say it
    /// throttled): closes the gate for every worker and leaves the rate and the schedule as
    /// they are (see the module docs). Returns how long the gate stays closed from now.
    pub fn unavailable(&self, retry_after: Duration) -> Duration {
        let now = Instant::now();
        let mut s = self.state();
        let reopens = s.close(now + retry_after);
        s.opened = Some(reopens);
        reopens.saturating_duration_since(now)
    }

    /// A request sent at `sent` (as [`Limiter::acquire`] returned) got an answer that was
    /// not a throttle: the service admitted it, and throttling, if any, is over.
    pub fn admitted(&self, sent: Instant) {
        self.consecutive_throttles.store(0, Ordering::Relaxed);
        let now = Instant::now();
        let mut s = self.state();
        s.forget_old(now);
        if now.saturating_duration_since(sent) < WINDOW {
            s.admitted.push_back(sent);
        }
        // Sent before the throttle, answered after it: it counts for the rate it was sent at,
        // however slow its answer was.
        if let Some(a) = s
            .adapted
            .as_mut()
            .filter(|a| sent >= a.from && sent < a.at && now >= a.at)
        {
            a.sent_before += 1;
        }
    }

    #[cfg(test)]
    /// A request went through, answered just now, sent at an unknown time: counted as sent now,
    /// and towards the last throttle when it comes while the gate is still closed.
    pub(crate) fn succeeded(&self) {
        let now = Instant::now();
        self.admitted(now);
        let mut s = self.state();
        if let Some(a) = s.adapted.as_mut().filter(|a| now < a.since) {
            a.late += 1;
        }
    }

    #[cfg(test)]
    /// How many throttling answers (429, or a 503 that said it throttled) were seen.
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
        against_slow_sliding_window(limit, secs, workers, |_| Duration::from_millis(1)).await
    }

    /// The same, with the `n`th request's answer taking `latency(n)` on the wire.
    async fn against_slow_sliding_window(
        limit: usize,
        secs: u64,
        workers: usize,
        latency: fn(u64) -> Duration,
    ) -> (Vec<Duration>, usize) {
        let sent_count = Arc::new(AtomicU64::new(0));
        let l = Arc::new(Limiter::new(100.0, 100));
        let t0 = Instant::now();
        let server = Arc::new(Mutex::new((Vec::<Duration>::new(), 0usize)));
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (l, server, sent_count) = (l.clone(), server.clone(), sent_count.clone());
            tasks.push(tokio::spawn(async move {
                while t0.elapsed() < Duration::from_secs(secs) {
                    let sent = l.acquire().await;
                    let n = sent_count.fetch_add(1, Ordering::Relaxed);
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
                    tokio::time::sleep(latency(n)).await;
                    if admitted {
                        l.admitted(sent);
                    } else {
                        l.throttled_at(sent, Some(Duration::from_secs(1)));
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

    #[tokio::test(start_paused = true)]
    async fn slow_answers_do_not_lower_the_observed_limit() {
        let l = Limiter::new(100.0, 100);
        // 20 requests sent within the last second; only 4 answered before the throttle.
        let mut sent = Vec::new();
        for _ in 0..20 {
            sent.push(l.acquire().await);
            tokio::time::advance(Duration::from_millis(45)).await;
        }
        for s in &sent[..4] {
            l.admitted(*s);
        }
        l.throttled(Some(Duration::from_secs(1)));
        assert!(l.current_rate() <= 10.0, "{}", l.current_rate());
        // The other 16 were admitted too; their answers took three seconds.
        tokio::time::advance(Duration::from_secs(3)).await;
        for s in &sent[4..] {
            l.admitted(*s);
        }
        let rate = l.current_rate();
        assert!((19.0..=20.5).contains(&rate), "{rate}");
    }

    #[tokio::test(start_paused = true)]
    async fn settles_just_under_the_limit_however_slow_some_answers_are() {
        // One answer in seven takes 2.5 s (a stall, a slow upload): many throttling episodes,
        // none of which may take the rate below what the service admitted.
        let (admitted, throttled) = against_slow_sliding_window(20, 90, 64, |n| {
            if n % 7 == 3 {
                Duration::from_millis(2500)
            } else {
                Duration::from_millis(20)
            }
        })
        .await;
        let settled: Vec<_> = admitted
            .iter()
            .filter(|t| **t >= Duration::from_secs(30))
            .collect();
        let span = settled[settled.len() - 1].saturating_sub(*settled[0]);
        let rate = (settled.len() - 1) as f64 / span.as_secs_f64();
        assert!(rate >= 18.0, "{rate:.2}/s, {throttled} throttled");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_service_closes_the_gate_but_leaves_the_rate() {
        let l = Limiter::new(10.0, 1);
        for _ in 0..20 {
            l.succeeded();
        }
        let t0 = Instant::now();
        assert_eq!(
            l.unavailable(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert!((l.current_rate() - 10.0).abs() < f64::EPSILON);
        assert_eq!(l.throttle_count(), 0);
        l.acquire().await;
        assert!(t0.elapsed() >= Duration::from_secs(2));
        assert!((l.current_rate() - 10.0).abs() < f64::EPSILON);
    }

    #[tokio::test(start_paused = true)]
    async fn time_lost_to_an_unavailable_service_is_caught_up_within_the_window_bound() {
        let l = Arc::new(Limiter::new(10.0, 10));
        let t0 = Instant::now();
        let mut times = Vec::new();
        for i in 0..100 {
            l.acquire().await;
            times.push(t0.elapsed());
            // One request in ten meets a 503 with Retry-After: 1.
            if i % 10 == 9 {
                l.unavailable(Duration::from_secs(1));
            }
        }
        // 100 at 10/s take 10 s; ten pauses of a second, lost, would make it 19.
        let took = times[99].as_secs_f64();
        assert!(took <= 11.0, "{took:.2}s");
        assert!(most_in_any_window(&times, Duration::from_secs(1)) <= 20);
    }

    #[tokio::test(start_paused = true)]
    async fn time_lost_to_a_throttle_is_not_caught_up() {
        let l = Limiter::new(10.0, 1);
        l.acquire().await;
        l.throttled(Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.acquire().await;
        }
        // Paced from the reopening, at the lowered rate: no burst of what the pause held back.
        assert!(
            t0.elapsed() >= Duration::from_millis(1100),
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_of_unavailable_answers_costs_only_the_failed_requests() {
        // 8 workers at a configured 8/s; one answer in ten is a 503 with Retry-After: 1.
        let l = Arc::new(Limiter::new(8.0, 8));
        let t0 = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (l, sent) = (l.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                while t0.elapsed() < Duration::from_secs(60) {
                    let at = l.acquire().await;
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    l.admitted(at);
                    if n % 10 == 7 {
                        l.unavailable(Duration::from_secs(1));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rate = sent.load(Ordering::Relaxed) as f64 / 60.0;
        assert!(rate >= 7.5, "{rate:.2}/s sent at a configured 8/s");
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_gate_was_closed_for_an_unavailable_service_does_not_lower_the_estimate() {
        let l = Limiter::new(100.0, 100);
        l.unavailable(Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        // Half a second open, 10 admitted: 20/s, though the last second holds only those 10.
        for _ in 0..10 {
            l.succeeded();
            tokio::time::advance(Duration::from_millis(50)).await;
        }
        l.throttled(Some(Duration::from_secs(1)));
        let rate = l.current_rate();
        assert!((19.0..=20.0).contains(&rate), "{rate}");
    }
}
