//! `photosync backfill`: one pass over every source, drain the queue, print a summary, exit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::{Engine, EngineError, Order, PassOptions};
use crate::ledger::Ledger;
use crate::stats::Stats;

use super::progress::Monitor;
use super::{exit, json, print};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what would be uploaded and why (new, changed, forced), and what the image pipeline
    /// would make of each photo; touch neither Graph nor the database.
    #[arg(long)]
    pub dry_run: bool,

    /// Upload every photo, even unchanged ones.
    #[arg(long)]
    pub force: bool,

    /// Write one row per photo (path, target, action, result, bytes before/after, error,
    /// request-id) to this file; `.csv` or `.json`.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,

    /// Upload at most this many photos, newest files first; the next run goes on from there.
    #[arg(long, value_name = "N")]
    pub max_uploads: Option<u64>,

    /// Stop cleanly after this long (e.g. "2h"), newest files first; the next run goes on from
    /// there. Uploads in flight finish (within upload.shutdown_grace).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub max_duration: Option<Duration>,

    /// JSON lines on stdout instead of the summary: status lines (at most once a second), one
    /// item per photo acted on or failed, and a final summary. Stable; see the README.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Path, args: Args, interactive: bool) -> u8 {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A dry run writes nothing: it reads beside a running writer.
    let _lock = if args.dry_run {
        None
    } else {
        match super::lock_ledger(&cfg).await {
            Ok(l) => Some(l),
            Err(code) => return code,
        }
    };
    let ledger = match open_ledger(&cfg.state.database, args.dry_run).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let stats = Arc::new(Stats::default());
    let report = match start_report(args.report.as_deref(), &stats, args.json) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    super::stop_on_signals(cancel.clone());
    let engine = match Engine::start(
        &cfg,
        ledger.clone(),
        args.dry_run,
        stats.clone(),
        cancel.clone(),
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return if matches!(e, EngineError::Auth(_)) {
                exit::USAGE
            } else {
                exit::FATAL
            };
        }
    };
    let started = Instant::now();
    let mut monitor = Monitor::new(stats.clone(), interactive, args.json);
    // With --json the plan is in the item lines; the human form would break them.
    let previews = engine
        .previews()
        .filter(|_| !args.json)
        .map(print::previews);
    let pass = sync(&engine, &args, &cancel, &mut monitor).await;
    let shutdown = engine.shutdown(cfg.upload.shutdown_grace).await;
    if let Some(l) = ledger {
        l.close().await;
    }
    monitor.finish();
    if let Some(p) = previews {
        let _ = p.await;
    }
    stats.end_report();
    report.finish(args.report.as_deref()).await;
    let stopped = pass.stopped();
    let code = pass.exit_code(shutdown, &stats);
    print_end(&stats, &args, started.elapsed(), stopped, code);
    code
}

/// The summary: the last JSON line, or the human lines.
fn print_end(
    stats: &Stats,
    args: &Args,
    elapsed: Duration,
    stopped: Option<&'static str>,
    code: u8,
) {
    if args.json {
        let mut summary = json::Summary::of(stats, elapsed, args.dry_run);
        summary.stopped = stopped;
        summary.exit_code = code;
        json::line("summary", &summary);
    } else {
        print_budget(stopped);
        print::summary(stats, elapsed, args.dry_run);
    }
}

/// The ledger: opened read-only for a dry run (`None` when there is none yet).
async fn open_ledger(path: &Path, dry_run: bool) -> Result<Option<Ledger>, u8> {
    let ledger = if dry_run {
        Ledger::open_read_only(path).await
    } else {
        Ledger::open(path).await.map(Some)
    };
    ledger.map_err(|e| {
        eprintln!("error: {e}");
        exit::FATAL
    })
}

/// Where the per-item rows go: a report file, `--json` item lines, both, or nowhere.
#[derive(Default)]
struct Reporting {
    file: Option<crate::report::Writer>,
    json: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the per-item report and the item lines, when they were asked for.
fn start_report(path: Option<&Path>, stats: &Stats, json: bool) -> Result<Reporting, u8> {
    let mut out = Reporting::default();
    let mut sink = None;
    if let Some(path) = path {
        match crate::report::create(path) {
            Ok((s, writer)) => {
                sink = Some(s);
                out.file = Some(writer);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return Err(exit::USAGE);
            }
        }
    }
    if json {
        let (s, task) = json::items(sink.take());
        sink = Some(s);
        out.json = Some(task);
    }
    if let Some(s) = sink {
        stats.report_to(s);
    }
    Ok(out)
}

impl Reporting {
    /// Waits for every row to be printed and written (the sinks must be dropped already).
    async fn finish(self, path: Option<&Path>) {
        if let Some(task) = self.json {
            let _ = task.await;
        }
        if let (Some(w), Some(path)) = (self.file, path) {
            match w.finish().await {
                Ok(rows) => eprintln!("report: {rows} rows written to {}", path.display()),
                Err(e) => eprintln!("error: {e}"),
            }
        }
    }
}

/// How the pass ended, before shutdown.
struct PassEnd {
    result: Result<(), EngineError>,
    budget_reached: bool,
    out_of_time: bool,
    interrupted: bool,
}

/// One pass, drained; a `--max-duration` stops it the way a signal does (intake stops, in-flight
/// uploads finish), but it is not an interruption: the exit code says how the items ended.
async fn sync(
    engine: &Engine,
    args: &Args,
    cancel: &tokio_util::sync::CancellationToken,
    monitor: &mut Monitor,
) -> PassEnd {
    let budgeted = args.max_uploads.is_some() || args.max_duration.is_some();
    let opts = PassOptions {
        force: args.force,
        dry_run: args.dry_run,
        retry_transient_now: true,
        max_uploads: args.max_uploads,
        order: if budgeted {
            Order::NewestFirst
        } else {
            Order::AsFound
        },
    };
    let out_of_time = Arc::new(AtomicBool::new(false));
    let timer = args.max_duration.map(|d| {
        let (cancel, out_of_time) = (cancel.clone(), out_of_time.clone());
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            out_of_time.store(true, Ordering::SeqCst);
            cancel.cancel();
        })
    });
    let mut budget_reached = false;
    let planned = monitor.around(engine, engine.plan_pass(opts)).await;
    let mut result = planned.map(|report| {
        budget_reached = report.budget_reached;
        monitor.walked(Stats::get(&engine.stats().files) + report.deletions as u64);
        if report.deletions_refused > 0 {
            eprintln!(
                "warning: {} photo deletions refused by the safety limit (sync.max_deletes_per_pass)",
                report.deletions_refused
            );
        }
    });
    if result.is_ok() {
        result = monitor.around(engine, engine.drain()).await;
    }
    stop(timer).await;
    let out_of_time = out_of_time.load(Ordering::SeqCst);
    PassEnd {
        result,
        budget_reached,
        out_of_time,
        interrupted: cancel.is_cancelled() && !out_of_time,
    }
}

impl PassEnd {
    /// Why the pass ended early, as `--json` names it.
    fn stopped(&self) -> Option<&'static str> {
        if self.out_of_time {
            Some("max_duration")
        } else if self.budget_reached {
            Some("max_uploads")
        } else if self.interrupted {
            Some("interrupted")
        } else {
            None
        }
    }

    fn exit_code(self, shutdown: Result<(), EngineError>, stats: &Stats) -> u8 {
        match self.result.and(shutdown) {
            Err(e) => {
                eprintln!("error: {e}");
                exit::FATAL
            }
            Ok(()) if self.interrupted => {
                eprintln!("interrupted: photos not yet uploaded will be picked up by the next run");
                exit::ITEMS_FAILED
            }
            Ok(()) if Stats::get(&stats.failed) > 0 => exit::ITEMS_FAILED,
            Ok(()) => exit::OK,
        }
    }
}

/// The human line for a pass that a budget ended.
fn print_budget(stopped: Option<&str>) {
    let flag = match stopped {
        Some("max_duration") => "--max-duration",
        Some("max_uploads") => "--max-uploads",
        _ => return,
    };
    println!(
        "budget reached ({flag}): stopped cleanly; the next run goes on with the photos not yet uploaded"
    );
}

/// Ends a helper task and joins it.
async fn stop(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(t) = task {
        t.abort();
        let _ = t.await;
    }
}
