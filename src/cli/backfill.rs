//! `photosync backfill`: one pass over every source, drain the queue, print a summary, exit.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{human_bytes, Engine, EngineError, Order, PassOptions};
use crate::ledger::Ledger;
use crate::stats::Stats;

use super::exit;

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
    let ledger = if args.dry_run {
        Ledger::open_read_only(&cfg.state.database).await
    } else {
        Ledger::open(&cfg.state.database).await.map(Some)
    };
    let ledger = match ledger {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FATAL;
        }
    };
    let grace = cfg.upload.shutdown_grace;
    let stats = Arc::new(Stats::default());
    let report = match args
        .report
        .as_deref()
        .map(crate::report::create)
        .transpose()
    {
        Ok(r) => r.map(|(sink, writer)| {
            stats.report_to(sink);
            writer
        }),
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    super::stop_on_signals(cancel.clone());
    let engine = match Engine::start(
        cfg,
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
    let opts = PassOptions {
        force: args.force,
        dry_run: args.dry_run,
        retry_transient_now: true,
        max_uploads: args.max_uploads,
        order: if args.max_uploads.is_some() || args.max_duration.is_some() {
            Order::NewestFirst
        } else {
            Order::AsFound
        },
    };
    // The time budget stops the run the way a signal does (intake stops, in-flight uploads
    // finish), but it is not an interruption: the exit code says how the items ended.
    let out_of_time = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let timer = args.max_duration.map(|d| {
        let (cancel, out_of_time) = (cancel.clone(), out_of_time.clone());
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            out_of_time.store(true, std::sync::atomic::Ordering::SeqCst);
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
    if let Some(t) = timer {
        t.abort();
    }
    let out_of_time = out_of_time.load(std::sync::atomic::Ordering::SeqCst);
    let interrupted = cancel.is_cancelled() && !out_of_time;
    let shutdown = engine.shutdown(grace).await;
    if let Some(l) = ledger {
        l.close().await;
    }
    if let Some(p) = progress {
        p.abort();
    }
    let result = result.and(shutdown);
    stats.end_report();
    if let (Some(w), Some(path)) = (report, args.report.as_deref()) {
        match w.finish().await {
            Ok(rows) => eprintln!("report: {rows} rows written to {}", path.display()),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    print_summary(&stats, started.elapsed(), args.dry_run);
    if budget_reached || out_of_time {
        println!(
            "budget reached ({}): stopped cleanly; the next run goes on with the photos not yet uploaded",
            if out_of_time {
                "--max-duration"
            } else {
                "--max-uploads"
            }
        );
    }
    match result {
        Err(e) => {
            eprintln!("error: {e}");
            exit::FATAL
        }
        Ok(()) if interrupted => {
            eprintln!("interrupted: photos not yet uploaded will be picked up by the next run");
            exit::ITEMS_FAILED
        }
        Ok(()) if Stats::get(&stats.failed) > 0 => exit::ITEMS_FAILED,
        Ok(()) => exit::OK,
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

fn print_summary(stats: &Stats, elapsed: Duration, dry_run: bool) {
    let skipped = stats.skipped();
    let skipped_detail = skipped
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let verb = if dry_run { "to upload" } else { "uploaded" };
    let done = if dry_run {
        Stats::get(&stats.pending)
    } else {
        Stats::get(&stats.uploaded)
    };
    let deleted = Stats::get(&stats.deleted);
    let parked = Stats::get(&stats.parked);
    println!(
        "{} photos: {done} {verb}, {} unchanged, {}{} failed, {} skipped{}{}{}",
        Stats::get(&stats.files),
        Stats::get(&stats.unchanged),
        if parked > 0 {
            format!("{parked} parked (user not found yet), ")
        } else {
            String::new()
        },
        Stats::get(&stats.failed),
        stats.skipped_total(),
        if skipped_detail.is_empty() {
            String::new()
        } else {
            format!(" ({skipped_detail})")
        },
        if deleted > 0 {
            format!("; {deleted} photos deleted")
        } else {
            String::new()
        },
        if dry_run {
            String::new()
        } else {
            format!(
                "; {} retries, {} throttled; {} sent in {:.1}s",
                Stats::get(&stats.retries),
                Stats::get(&stats.throttled),
                human_bytes(Stats::get(&stats.bytes_uploaded)),
                elapsed.as_secs_f64()
            )
        }
    );
    let failures = stats.failures();
    if !failures.is_empty() {
        println!("failed:");
        for f in failures {
            println!(
                "  {}{}: {}: {}",
                f.path,
                f.target.map(|t| format!(" ({t})")).unwrap_or_default(),
                f.reason,
                f.message
            );
        }
    }
}
