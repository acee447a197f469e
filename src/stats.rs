//! Counters and the failure view of a run, shared by the planner, the workers and the CLI.
//!
//! Counting only: nothing here decides anything. Every photo seen ends in exactly one of
//! uploaded, unchanged, skipped, pending or failed, so the summary adds up.
//!
//! `failed` counts failure *events* (a known-bad file counts again on every pass that meets
//! it); the failure view holds one entry per failing file, the latest, so it is bounded by the
//! tree and does not grow with uptime. The daemon sweeps it with every full pass: what that
//! pass (or a later one) did not find failing has left it. The ledger stays the record.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// One item that did not sync, as the summary and `status` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub path: String,
    pub target: Option<String>,
    /// Stable snake_case reason, e.g. `truncated`, `not_found`, `throttled`.
    pub reason: String,
    pub message: String,
    pub code: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub files: AtomicU64,
    pub uploaded: AtomicU64,
    pub deleted: AtomicU64,
    pub unchanged: AtomicU64,
    pub pending: AtomicU64,
    /// Photos whose user does not exist yet (looked up again later).
    pub parked: AtomicU64,
    pub failed: AtomicU64,
    /// Identity lookups sent to Graph (each for up to 15 values).
    pub lookups: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    /// Gauges the daemon keeps current, for `/metrics`, `/readyz` and systemd's STATUS.
    pub queued: AtomicU64,
    pub in_flight: AtomicU64,
    /// Unix ms of the last successful upload.
    pub last_success_ms: AtomicI64,
    pub token_refresh_failures: AtomicU64,
    /// Passes the daemon finished (full and partial).
    pub passes: AtomicU64,
    pub token_ok: AtomicBool,
    pub database_ok: AtomicBool,
    pub watchers_ok: AtomicBool,
    /// Upload latency: counts per bucket of [`LATENCY_BUCKETS_MS`] (+ one for larger), and the sum.
    latency: Mutex<(Vec<u64>, f64)>,
    skipped: Mutex<BTreeMap<&'static str, u64>>,
    failures: Mutex<FailureView>,
    /// Per-item report rows go here when a report was asked for.
    report: Mutex<Option<crate::report::Sink>>,
    reporting: AtomicBool,
}

/// The current failures, one per path, in the order they first failed.
#[derive(Debug, Default)]
struct FailureView {
    /// By path: when it first failed (for the order), the sweep that last saw it fail, and
    /// the latest failure.
    entries: HashMap<String, (u64, u64, Failure)>,
    next: u64,
    sweep: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Upper bounds (ms) of the upload latency histogram's buckets.
pub const LATENCY_BUCKETS_MS: &[u64] =
    &[50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000];

impl Stats {
    pub fn set(counter: &AtomicU64, n: u64) {
        counter.store(n, Ordering::Relaxed);
    }

    pub fn flag(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::Relaxed);
    }

    pub fn is(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    pub fn observe_upload(&self, took: std::time::Duration) {
        self.last_success_ms
            .store(crate::ledger::now_ms(), Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        let mut l = lock(&self.latency);
        if l.0.is_empty() {
            l.0 = vec![0; LATENCY_BUCKETS_MS.len() + 1];
        }
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        l.0[i] += 1;
        l.1 += took.as_secs_f64();
    }

    /// Per-bucket counts (not cumulative) and the sum in seconds.
    pub fn latency(&self) -> (Vec<u64>, f64) {
        let l = lock(&self.latency);
        let mut counts = l.0.clone();
        counts.resize(LATENCY_BUCKETS_MS.len() + 1, 0);
        (counts, l.1)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn skip(&self, reason: &'static str) {
        *lock(&self.skipped).entry(reason).or_default() += 1;
    }

    pub fn skipped(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.skipped).clone()
    }

    pub fn skipped_total(&self) -> u64 {
        lock(&self.skipped).values().sum()
    }

    pub fn fail(&self, failure: Failure) {
        self.fail_as(failure, "skip");
    }

    /// A failure of an item whose `action` (upload, delete, skip) was attempted.
    pub fn fail_as(&self, failure: Failure, action: &'static str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if self.reporting() {
            self.row(crate::report::Row {
                path: failure.path.clone(),
                target: failure.target.clone().unwrap_or_default(),
                action,
                result: format!("failed: {}", failure.reason),
                error: Some(failure.message.clone()),
                request_id: failure.request_id.clone(),
                ..Default::default()
            });
        }
        let mut view = lock(&self.failures);
        let (seq, sweep) = (view.next, view.sweep);
        view.next += 1;
        match view.entries.get_mut(&failure.path) {
            Some(e) => {
                e.1 = sweep;
                e.2 = failure;
            }
            None => {
                view.entries
                    .insert(failure.path.clone(), (seq, sweep, failure));
            }
        }
    }

    /// A full pass begins: failures it (or a later pass) reports are current; at
    /// [`Stats::end_sweep`] the others leave the view.
    pub fn begin_sweep(&self) {
        lock(&self.failures).sweep += 1;
    }

    /// The full pass begun by the last [`Stats::begin_sweep`] is done: drops the failures
    /// that no pass since reported.
    pub fn end_sweep(&self) {
        let mut view = lock(&self.failures);
        let sweep = view.sweep;
        view.entries.retain(|_, e| e.1 >= sweep);
    }

    /// Distinct files failing now (the size of the failure view).
    pub fn failing(&self) -> u64 {
        lock(&self.failures).entries.len() as u64
    }

    /// Sends every later item's row to `sink`.
    pub fn report_to(&self, sink: crate::report::Sink) {
        *lock(&self.report) = Some(sink);
        self.reporting.store(true, Ordering::Relaxed);
    }

    /// Stops reporting and drops the sink, so that the report's writer can finish.
    pub fn end_report(&self) {
        self.reporting.store(false, Ordering::Relaxed);
        lock(&self.report).take();
    }

    /// Whether rows are wanted (callers skip building them otherwise).
    pub fn reporting(&self) -> bool {
        self.reporting.load(Ordering::Relaxed)
    }

    /// One report row, if a report was asked for.
    pub fn row(&self, row: crate::report::Row) {
        if let Some(r) = lock(&self.report).as_ref() {
            r.row(row);
        }
    }

    /// The failure view, in the order the files first failed.
    pub fn failures(&self) -> Vec<Failure> {
        let view = lock(&self.failures);
        let mut all: Vec<_> = view.entries.values().collect();
        all.sort_by_key(|e| e.0);
        all.into_iter().map(|e| e.2.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(path: &str, reason: &str) -> Failure {
        Failure {
            path: path.into(),
            target: None,
            reason: reason.into(),
            message: String::new(),
            code: None,
            request_id: None,
        }
    }

    #[test]
    fn the_view_holds_one_entry_per_file_and_counts_every_event() {
        let s = Stats::default();
        for _ in 0..3 {
            s.fail(failure("b.jpg", "truncated"));
            s.fail(failure("a.jpg", "not_found"));
        }
        s.fail(failure("b.jpg", "corrupt"));
        assert_eq!(Stats::get(&s.failed), 7);
        assert_eq!(s.failing(), 2);
        let view = s.failures();
        assert_eq!(view[0].path, "b.jpg");
        assert_eq!(view[0].reason, "corrupt");
        assert_eq!(view[1].path, "a.jpg");
    }

    #[test]
    fn a_sweep_drops_what_no_pass_since_found_failing() {
        let s = Stats::default();
        s.fail(failure("fixed.jpg", "truncated"));
        s.fail(failure("bad.jpg", "truncated"));
        s.begin_sweep();
        s.fail(failure("bad.jpg", "truncated"));
        s.end_sweep();
        let view = s.failures();
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].path, "bad.jpg");
    }
}
