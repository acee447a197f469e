//! `photosync verify [--repair]`: drift detection. After each upload photosync records the
//! photo's `mediaEtag`; verify reads every synced user's and group's photo metadata again
//! (through the same limiter) and reports photos changed or removed outside photosync since.
//! Graph re-encodes what it stores, so bytes are never compared. `--repair` uploads those
//! photos again from the tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::engine::{Engine, PassOptions, Scope};
use crate::ledger::{now_ms, Op, SyncedTarget};
use crate::mapping::Target;
use crate::stats::Stats;

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Upload the photos found changed or removed again, from the files in the tree.
    #[arg(long)]
    pub repair: bool,
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
    let ledger = match super::open_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let workers = cfg.upload.workers;
    let stats = Arc::new(Stats::default());
    let cancel = tokio_util::sync::CancellationToken::new();
    super::stop_on_signals(cancel.clone());
    let engine = match Engine::start(
        cfg,
        Some(ledger.clone()),
        false,
        stats.clone(),
        cancel.clone(),
    ) {
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
    let engine_ref = &engine;
    let results: Vec<(SyncedTarget, Found)> = stream::iter(targets)
        .map(|t| async move {
            let found = check_one(engine_ref, &t).await;
            (t, found)
        })
        .buffer_unordered(workers)
        .collect()
        .await;
    let mut drifted: Vec<PathBuf> = Vec::new();
    let mut drift = 0usize;
    let mut ops = Vec::new();
    let (mut same, mut unknown) = (0usize, 0usize);
    for (t, found) in results {
        let what = match found {
            Found::Same => {
                same += 1;
                continue;
            }
            Found::Baseline(etag) => {
                same += 1;
                ops.push(Op::Etag {
                    target_key: t.target_key.clone(),
                    graph_id: None,
                    media_etag: etag,
                });
                continue;
            }
            Found::Unknown(why) => {
                unknown += 1;
                eprintln!("cannot check {}: {why}", t.target_key);
                continue;
            }
            Found::Changed => "changed",
            Found::Removed => "removed",
        };
        println!(
            "{what}: {} (photo {what} outside photosync since its upload{})",
            t.target_key,
            t.path
                .as_deref()
                .map(|p| format!("; file {p}"))
                .unwrap_or_default()
        );
        drift += 1;
        if args.repair {
            ops.push(Op::Drifted {
                target_key: t.target_key.clone(),
                now: now_ms(),
            });
            if let Some(p) = t.path {
                drifted.push(PathBuf::from(p));
            }
        }
    }
    if let Err(e) = ledger.apply(&ops).await {
        eprintln!("error: {e}");
        return exit::FATAL;
    }
    let mut code = exit::OK;
    if args.repair && !drifted.is_empty() {
        let planned = engine
            .plan(Scope::Paths(drifted), PassOptions::default())
            .await;
        let drained = match planned {
            Ok(_) => engine.drain().await,
            Err(e) => Err(e),
        };
        if let Err(e) = drained {
            eprintln!("error: {e}");
            code = exit::FATAL;
        }
    }
    let shutdown = engine.shutdown(std::time::Duration::from_secs(30)).await;
    ledger.close().await;
    if let Err(e) = shutdown {
        eprintln!("error: {e}");
        return exit::FATAL;
    }
    let repaired = Stats::get(&stats.uploaded);
    println!(
        "{total} synced photos checked: {same} as uploaded, {} changed or removed outside photosync{}, {unknown} could not be checked",
        drift,
        if args.repair {
            format!(" ({repaired} uploaded again)")
        } else {
            String::new()
        },
    );
    if code != exit::OK {
        return code;
    }
    let unrepaired = !args.repair && drift > 0;
    if unrepaired || unknown > 0 || Stats::get(&stats.failed) > 0 {
        exit::ITEMS_FAILED
    } else {
        exit::OK
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
        Err(Some(e)) => Found::Unknown(e.to_string()),
        Err(None) => Found::Unknown("stopped".into()),
    }
}
