//! How far a backfill is, for people and for scripts: a spinner while the walk is still finding
//! photos, a bar (done/total, rate, ETA, failures) once it knows how many there are, and
//! `{"type":"status",…}` lines for `--json`. Read-only: it looks at [`Stats`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::engine::Engine;
use crate::stats::Stats;

use super::json;

/// How often the bar is redrawn (status lines are further limited to one a second).
const TICK: Duration = Duration::from_millis(200);
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Where a run stands. Fields are stable (`--json`): only ever added.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// `walking` (the total is not known yet) or `syncing` (the walk is done).
    pub phase: &'static str,
    pub elapsed_seconds: f64,
    /// Photos found so far.
    pub files: u64,
    /// Photos and deletions of this pass; `null` while walking.
    pub total: Option<u64>,
    /// Of `total`, how many have ended; `null` while walking.
    pub done: Option<u64>,
    pub uploaded: u64,
    pub unchanged: u64,
    pub failed: u64,
    pub parked: u64,
    pub skipped: u64,
    pub deleted: u64,
    pub queued: u64,
    pub in_flight: u64,
    pub retries: u64,
    pub throttled: u64,
    pub bytes_uploaded: u64,
}

impl Snapshot {
    fn of(stats: &Stats, started: Instant, total: Option<u64>) -> Snapshot {
        let g = Stats::get;
        let (queued, in_flight) = (g(&stats.queued), g(&stats.in_flight));
        Snapshot {
            phase: if total.is_some() {
                "syncing"
            } else {
                "walking"
            },
            elapsed_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            files: g(&stats.files),
            total,
            // Once the walk is done every photo is decided, queued or in flight.
            done: total.map(|t| t.saturating_sub(queued + in_flight)),
            uploaded: g(&stats.uploaded),
            unchanged: g(&stats.unchanged),
            failed: g(&stats.failed),
            parked: g(&stats.parked),
            skipped: stats.skipped_total(),
            deleted: g(&stats.deleted),
            queued,
            in_flight,
            retries: g(&stats.retries),
            throttled: g(&stats.throttled),
            bytes_uploaded: g(&stats.bytes_uploaded),
        }
    }
}

/// The bar on screen, if any: log lines are written around it (see [`StderrAroundBar`]).
static ON_SCREEN: Mutex<Option<indicatif::ProgressBar>> = Mutex::new(None);

fn on_screen() -> std::sync::MutexGuard<'static, Option<indicatif::ProgressBar>> {
    ON_SCREEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stderr for the log: a warning printed while the bar is drawn would leave half a bar on the
/// screen, so the bar is taken away for the line and drawn again below it.
pub struct StderrAroundBar;

impl std::io::Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = on_screen().clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf).map(|()| buf.len())),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for StderrAroundBar {
    type Writer = StderrAroundBar;

    fn make_writer(&'a self) -> Self::Writer {
        StderrAroundBar
    }
}

/// Watches one run: a bar on a terminal, status lines for `--json`, or both, or nothing.
pub struct Monitor {
    stats: Arc<Stats>,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    json: bool,
    last_status: Option<Instant>,
    /// Known once the walk is done.
    total: Option<u64>,
}

impl Monitor {
    pub fn new(stats: Arc<Stats>, terminal: bool, json: bool) -> Monitor {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(style("{spinner} {elapsed} walking: {msg}"));
            *on_screen() = Some(bar.clone());
            bar
        });
        Monitor {
            stats,
            started: Instant::now(),
            bar,
            json,
            last_status: None,
            total: None,
        }
    }

    /// The walk is done: `total` photos and deletions to end. The spinner becomes a bar.
    pub fn walked(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_style(style(
                "{bar:30} {pos}/{len} photos  {per_sec}  ETA {eta}  {msg}",
            ));
            bar.reset_eta();
        }
    }

    /// Runs `work`, redrawing and reporting every [`TICK`] meanwhile.
    pub async fn around<T>(&mut self, engine: &Engine, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut every = tokio::time::interval(TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            // The tick first: its first one is ready at once, so every phase is reported.
            tokio::select! {
                biased;
                _ = every.tick() => {
                    engine.refresh_gauges();
                    self.tick();
                }
                out = &mut work => return out,
            }
        }
    }

    fn tick(&mut self) {
        let now = Snapshot::of(&self.stats, self.started, self.total);
        if let Some(bar) = &self.bar {
            match now.done {
                None => bar.set_message(format!(
                    "{} photos found, {} uploaded, {} unchanged, {} failed",
                    now.files, now.uploaded, now.unchanged, now.failed
                )),
                Some(done) => {
                    bar.set_position(done);
                    bar.set_message(format!(
                        "{} uploaded, {} failed{}",
                        now.uploaded,
                        now.failed,
                        if now.throttled > 0 {
                            format!(", throttled {}x", now.throttled)
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            bar.tick();
        }
        if self.json && self.last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
            self.last_status = Some(Instant::now());
            json::line("status", &now);
        }
    }

    /// Clears the bar, so that the summary starts on a clean line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            on_screen().take();
            bar.finish_and_clear();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.finish();
    }
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}
