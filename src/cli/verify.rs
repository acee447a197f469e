//! `photosync verify [--repair]`: drift detection. After each upload photosync records the
//! photo's `mediaEtag`; verify reads every synced user's and group's photo metadata again
//! (through the same limiter) and reports photos changed or removed outside photosync since.
//! Graph re-encodes what it stores, so bytes are never compared. `--repair` uploads those
//! photos again from the tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::engine::{Engine, EngineError, PassOptions, Scope};
use crate::ledger::SyncedTarget;
use crate::mapping::Target;
use crate::stats::Stats;

use super::{exit, json};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Upload the photos found changed or removed again, from the files in the tree.
    #[arg(long)]
    pub repair: bool,

    /// JSON lines on stdout: one item per photo changed, removed, not checkable or uploaded
    /// again, then a summary. Stable; see the README.
    #[arg(long)]
    pub json: bool,
}

enum Found {
    Same,
    /// No etag was recorded (uploaded before etags were kept): the current one becomes the
    /// baseline.
    Baseline(Option<String>),
    Changed,
    Removed,
    Unknown(String),
}

pub async fn run(config: &Path, args: Args) -> u8 {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _lock = match super::lock_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let ledger = match super::open_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let stats = Arc::new(Stats::default());
    let items = args.json.then(|| item_lines(&stats));
    let cancel = tokio_util::sync::CancellationToken::new();
    super::stop_on_signals(cancel.clone());
    let engine = match Engine::start(&cfg, Some(ledger.clone()), false, stats.clone(), cancel) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FATAL;
        }
    };
    let targets = match ledger.synced_targets().await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FATAL;
        }
    };
    let total = targets.len();
    let tally = check_all(&engine, targets, cfg.upload.workers, &args).await;
    let mut code = exit::OK;
    if args.repair && !tally.drifted.is_empty() {
        if let Err(e) = repair(&engine, tally.drifted.clone()).await {
            eprintln!("error: {e}");
            code = exit::FATAL;
        }
    }
    let shutdown = engine.shutdown(cfg.upload.shutdown_grace).await;
    ledger.close().await;
    stats.end_report();
    if let Some(task) = items {
        let _ = task.await;
    }
    let stopped_cleanly = shutdown.map_err(|e| eprintln!("error: {e}")).is_ok();
    code = if stopped_cleanly { code } else { exit::FATAL };
    let repaired = args.repair.then(|| Stats::get(&stats.uploaded));
    let unrepaired = !args.repair && tally.drift > 0;
    if code == exit::OK && (unrepaired || tally.unknown > 0 || Stats::get(&stats.failed) > 0) {
        code = exit::ITEMS_FAILED;
    }
    if args.json {
        json::line("summary", &tally.summary(total, repaired, &stats, code));
    } else if stopped_cleanly {
        tally.print(total, repaired);
    }
    code
}

/// The repair's uploads are item lines too.
fn item_lines(stats: &Stats) -> tokio::task::JoinHandle<()> {
    let (sink, task) = json::items(None);
    stats.report_to(sink);
    task
}

/// Plans the drifted photos' files again (their targets are pending now) and uploads them.
async fn repair(engine: &Engine, drifted: Vec<PathBuf>) -> Result<(), EngineError> {
    engine
        .plan(Scope::Paths(drifted), PassOptions::default())
        .await?;
    engine.drain().await
}

/// What the checks found.
#[derive(Default)]
struct Tally {
    same: usize,
    drift: usize,
    unknown: usize,
    /// Files of drifted photos, to upload again (`--repair`).
    drifted: Vec<PathBuf>,
}

/// The last `--json` line of a verify. Fields are stable: only ever added.
#[derive(serde::Serialize)]
struct Summary {
    /// The run's id: `null` until the ledger records runs (see backfill's summary).
    run: Option<String>,
    checked: usize,
    same: usize,
    /// Changed or removed outside photosync.
    drifted: usize,
    unchecked: usize,
    /// With `--repair`: photos uploaded again; `null` without.
    repaired: Option<u64>,
    failed: u64,
    exit_code: u8,
}

impl Tally {
    fn summary(&self, total: usize, repaired: Option<u64>, stats: &Stats, code: u8) -> Summary {
        Summary {
            run: None,
            checked: total,
            same: self.same,
            drifted: self.drift,
            unchecked: self.unknown,
            repaired,
            failed: Stats::get(&stats.failed),
            exit_code: code,
        }
    }

    /// The summary line; `repaired` when `--repair` was given.
    fn print(&self, total: usize, repaired: Option<u64>) {
        println!(
            "{total} synced photos checked: {} as uploaded, {} changed or removed outside photosync{}, {} could not be checked",
            self.same,
            self.drift,
            repaired
                .map(|n| format!(" ({n} uploaded again)"))
                .unwrap_or_default(),
            self.unknown,
        );
    }
}

/// Checks every target (as many at a time as there are workers), prints each drift, and has
/// the engine record baselines and (with `repair`) drifts.
async fn check_all(
    engine: &Engine,
    targets: Vec<SyncedTarget>,
    workers: usize,
    args: &Args,
) -> Tally {
    let results: Vec<(SyncedTarget, Found)> = stream::iter(targets)
        .map(|t| async move {
            let found = check_one(engine, &t).await;
            (t, found)
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let mut tally = Tally::default();
    for (t, found) in results {
        let what = match found {
            Found::Same => {
                tally.same += 1;
                continue;
            }
            Found::Baseline(etag) => {
                tally.same += 1;
                engine.record_baseline(&t.target_key, etag).await;
                continue;
            }
            Found::Unknown(why) => {
                tally.unknown += 1;
                if args.json {
                    json::item(&finding(&t, "unchecked", Some(why)));
                } else {
                    eprintln!("cannot check {}: {why}", t.target_key);
                }
                continue;
            }
            Found::Changed => "changed",
            Found::Removed => "removed",
        };
        if args.json {
            json::item(&finding(&t, what, None));
        } else {
            println!(
                "{what}: {} (photo {what} outside photosync since its upload{})",
                t.target_key,
                t.path
                    .as_deref()
                    .map(|p| format!("; file {p}"))
                    .unwrap_or_default()
            );
        }
        tally.drift += 1;
        if args.repair {
            engine.record_drift(&t.target_key).await;
            tally.drifted.extend(t.path.map(PathBuf::from));
        }
    }
    tally
}

/// An item line for one finding: `changed`, `removed` or `unchecked` (with why).
fn finding(t: &SyncedTarget, result: &str, error: Option<String>) -> crate::report::Row {
    crate::report::Row {
        path: t.path.clone().unwrap_or_default(),
        target: t.target_key.clone(),
        action: "verify",
        result: result.to_owned(),
        error,
        ..crate::report::Row::default()
    }
}

async fn check_one(engine: &Engine, t: &SyncedTarget) -> Found {
    let target = match (&t.graph_id, Target::from_key(&t.target_key)) {
        (Some(id), Some(_)) => Target::user(id),
        (None, Some(target)) if target.lookup.is_none() => target,
        _ => return Found::Unknown("its object id was not recorded; upload it again".into()),
    };
    match engine.photo_etag(&target).await {
        Ok(current) => match (&t.media_etag, current) {
            (None, current) => Found::Baseline(current),
            (Some(_), None) => Found::Removed,
            (Some(recorded), Some(current)) if *recorded == current => Found::Same,
            (Some(_), Some(_)) => Found::Changed,
        },
        Err(e) => Found::Unknown(e.to_string()),
    }
}
