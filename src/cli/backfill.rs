//! `photosync backfill`: one pass over every source, drain the queue, print a summary, exit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use crate::engine::{Engine, EngineError, Order, PassOptions};
use crate::ledger::Ledger;
use crate::stats::Stats;

use super::{exit, print};

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
    let report = match start_report(args.report.as_deref(), &stats) {
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
    let progress = interactive.then(|| progress_bar(stats.clone()));
    let previews = engine.previews().map(print::previews);
    let pass = sync(&engine, &args, &cancel).await;
    let shutdown = engine.shutdown(cfg.upload.shutdown_grace).await;
    if let Some(l) = ledger {
        l.close().await;
    }
    stop(progress).await;
    if let Some(p) = previews {
        let _ = p.await;
    }
    stats.end_report();
    if let (Some(w), Some(path)) = (report, args.report.as_deref()) {
        match w.finish().await {
            Ok(rows) => eprintln!("report: {rows} rows written to {}", path.display()),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    print::summary(&stats, started.elapsed(), args.dry_run);
    pass.exit_code(shutdown, &stats)
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

/// Starts the per-item report, when one was asked for.
fn start_report(path: Option<&Path>, stats: &Stats) -> Result<Option<crate::report::Writer>, u8> {
    let Some(path) = path else { return Ok(None) };
    match crate::report::create(path) {
        Ok((sink, writer)) => {
            stats.report_to(sink);
            Ok(Some(writer))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(exit::USAGE)
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
    let mut result = engine.plan_pass(opts).await.map(|report| {
        budget_reached = report.budget_reached;
        if report.deletions_refused > 0 {
            eprintln!(
                "warning: {} photo deletions refused by the safety limit (sync.max_deletes_per_pass)",
                report.deletions_refused
            );
        }
    });
    if result.is_ok() {
        result = engine.drain().await;
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
    fn exit_code(self, shutdown: Result<(), EngineError>, stats: &Stats) -> u8 {
        if self.budget_reached || self.out_of_time {
            println!(
                "budget reached ({}): stopped cleanly; the next run goes on with the photos not yet uploaded",
                if self.out_of_time {
                    "--max-duration"
                } else {
                    "--max-uploads"
                }
            );
        }
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

/// Ends a helper task and joins it.
async fn stop(task: Option<tokio::task::JoinHandle<()>>) {
    if let Some(t) = task {
        t.abort();
        let _ = t.await;
    }
}

fn progress_bar(stats: Arc<Stats>) -> tokio::task::JoinHandle<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    tokio::spawn(async move {
        let _finish = scopeguard(bar.clone());
        loop {
            bar.set_message(format!(
                "{} photos: {} uploaded, {} unchanged, {} failed, {} retries",
                Stats::get(&stats.files),
                Stats::get(&stats.uploaded),
                Stats::get(&stats.unchanged),
                Stats::get(&stats.failed),
                Stats::get(&stats.retries),
            ));
            bar.tick();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Clears the spinner when its task ends (or is aborted).
fn scopeguard(bar: indicatif::ProgressBar) -> impl Drop {
    struct Clear(indicatif::ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    Clear(bar)
}
