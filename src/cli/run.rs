//! `photosync run`: the daemon. Reconciles every source (the same pass as `backfill`), then
//! follows the tree: watcher events (debounced until files are stable), a full rescan every
//! `rescan_interval`, polling for roots that cannot be watched. One engine at a time does the
//! work; a SIGHUP with a valid config replaces it (in-flight uploads finish first, queued work
//! is planned again by the new engine's reconcile pass), an invalid one is logged and ignored.
//!
//! systemd: `Type=notify` (READY, STATUS, STOPPING, WATCHDOG); without systemd the notify calls
//! do nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, EngineError, PassOptions, PassReport, Scope};
use crate::source::watch::{self, Debounce};
use crate::stats::Stats;

use super::exit;

/// How often the roots' identities are checked (see [`watch::Identity`]).
const ROOT_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct Args {}

/// Why the inner loop ended.
enum Next {
    Stop,
    Reload(Box<Config>),
}

pub async fn run(config_path: &Path, _args: Args) -> u8 {
    let mut cfg = match super::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ledger = match super::open_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let stats = Arc::new(Stats::default());
    Stats::flag(&stats.database_ok, true);
    let stop = CancellationToken::new();
    super::stop_on_signals(stop.clone());
    let server = match cfg.server.listen {
        Some(addr) => match crate::daemon::server::serve(addr, stats.clone(), stop.clone()).await {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("error: cannot listen on {addr} ([server] listen): {e}");
                return exit::USAGE;
            }
        },
        None => None,
    };
    let watchdog = start_watchdog(stop.clone());
    let mut ready_sent = false;
    let code = loop {
        let engine_stop = stop.child_token();
        let engine = match Engine::start(
            &cfg,
            Some(ledger.clone()),
            false,
            stats.clone(),
            engine_stop.clone(),
        ) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                eprintln!("error: {e}");
                break if matches!(e, EngineError::Auth(_)) {
                    exit::USAGE
                } else {
                    exit::FATAL
                };
            }
        };
        if let Err(e) = engine.warm_up().await {
            if e.is_fatal() {
                eprintln!("error: {e}");
                let _ = Arc::into_inner(engine).map(|e| e.shutdown(Duration::ZERO));
                break exit::FATAL;
            }
            tracing::warn!(error = %e, "no token yet; will retry");
        }
        let (next, result) = follow(&cfg, &engine, &stats, &stop, &mut ready_sent).await;
        let _ = sd_notify::notify(
            false,
            &[NotifyState::Status("stopping: finishing in-flight uploads")],
        );
        engine_stop.cancel();
        let shutdown = match Arc::into_inner(engine) {
            Some(e) => e.shutdown(cfg.upload.shutdown_grace).await,
            None => Ok(()),
        };
        if let Err(e) = result.and(shutdown) {
            eprintln!("error: {e}");
            break exit::FATAL;
        }
        match next {
            Next::Stop => break exit::OK,
            Next::Reload(new) => {
                tracing::info!("configuration reloaded; restarting the engine");
                cfg = *new;
            }
        }
    };
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
    stop.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    ledger.close().await;
    tracing::info!(code, "stopped");
    code
}

/// Reconcile, then follow the tree until a stop or a valid reload.
async fn follow(
    cfg: &Config,
    engine: &Arc<Engine>,
    stats: &Arc<Stats>,
    stop: &CancellationToken,
    ready_sent: &mut bool,
) -> (Next, Result<(), EngineError>) {
    let roots: Vec<PathBuf> = cfg.sources.iter().map(|s| s.root.clone()).collect();
    let (tx, mut events) = mpsc::channel::<PathBuf>(8192);
    let mut watch = watch::start(&roots, cfg.sync.watch, &tx);
    Stats::flag(
        &stats.watchers_ok,
        watch.all_watched() || cfg.sync.watch == crate::config::WatchMode::Poll,
    );
    // A root unmounted or mounted over leaves a deaf watch behind; its identity is checked off
    // the event loop (a hung network share must not stall it).
    let mut root_check: Option<tokio::task::JoinHandle<Vec<watch::Identity>>> = None;
    let mut last_root_check = Instant::now();
    let mut debounce = Debounce::default();
    let opts = PassOptions::default();
    // The reconcile pass runs like any rescan: in the background, so signals, reloads and
    // the watchdog are served while a first import of thousands of photos is under way.
    let mut planning: Option<tokio::task::JoinHandle<Result<PassReport, EngineError>>> =
        Some(spawn_plan(engine, Scope::All, opts));
    let mut rescan_due = false;
    let mut last_rescan = Instant::now();
    let mut last_poll = Instant::now();
    let mut queued_paths: Vec<PathBuf> = Vec::new();
    // Parked photos and transient failures come due without any file changing.
    let due_every = cfg
        .sync
        .parked_retry
        .min(cfg.sync.retry_failed_after)
        .min(Duration::from_secs(60));
    let mut last_due_check = Instant::now();
    // A changed mapping file re-targets files that did not change: rescan when one changes.
    let mapping_mtimes = || -> Vec<Option<std::time::SystemTime>> {
        cfg.sources
            .iter()
            .filter_map(|s| s.mapping.as_ref())
            .map(|m| std::fs::metadata(m).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut mappings = mapping_mtimes();
    let tick = (cfg.sync.debounce / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            () = stop.cancelled() => return (Next::Stop, finish(planning).await),
            // Stopped by a fatal error, which its shutdown reports.
            () = engine.stopped() => return (Next::Stop, finish(planning).await),
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                match super::try_load_config(&cfg.path) {
                    Ok(new) => return (Next::Reload(Box::new(new)), finish(planning).await),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the new configuration is refused; keeping the running one"),
                }
            }
            Some(path) = events.recv() => {
                debounce.touch(path);
                while let Ok(p) = events.try_recv() {
                    debounce.touch(p);
                }
            }
            _ = ticker.tick() => {}
        }
        // A finished pass: report it, surface a fatal error.
        if planning
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            if let Some(h) = planning.take() {
                match h.await {
                    Ok(Ok(report)) => {
                        if report.deletions_refused > 0 {
                            tracing::error!(
                                refused = report.deletions_refused,
                                "photo deletions refused by the safety limit"
                            );
                        }
                    }
                    Ok(Err(e)) => return (Next::Stop, Err(e)),
                    Err(e) => {
                        return (
                            Next::Stop,
                            Err(EngineError::Panicked {
                                task: "planner",
                                message: e.to_string(),
                            }),
                        )
                    }
                }
            }
            if !*ready_sent {
                *ready_sent = true;
                let _ = sd_notify::notify(false, &[NotifyState::Ready]);
                tracing::info!("reconciled; watching for changes");
            }
        }
        if let Some(check) = root_check.take_if(|h| h.is_finished()) {
            let now = check.await.unwrap_or_default();
            let moved = watch.moved(&now);
            if !moved.is_empty() {
                for root in moved {
                    tracing::warn!(root = %root.display(), "source root was unmounted, mounted or replaced; watching it again and rescanning");
                }
                watch = watch::start(&roots, cfg.sync.watch, &tx);
                Stats::flag(
                    &stats.watchers_ok,
                    watch.all_watched() || cfg.sync.watch == crate::config::WatchMode::Poll,
                );
                rescan_due = true;
            }
        }
        if root_check.is_none() && last_root_check.elapsed() >= ROOT_CHECK_EVERY {
            last_root_check = Instant::now();
            let roots = roots.clone();
            root_check = Some(tokio::task::spawn_blocking(move || {
                watch::identities(&roots)
            }));
        }
        if watch.rescan.swap(false, Ordering::Relaxed) {
            rescan_due = true;
        }
        if last_rescan.elapsed() >= cfg.sync.rescan_interval {
            rescan_due = true;
        }
        if !mappings.is_empty() {
            let now = mapping_mtimes();
            if now != mappings {
                tracing::info!("a mapping file changed; rescanning");
                mappings = now;
                rescan_due = true;
            }
        }
        if !watch.polled.is_empty() && last_poll.elapsed() >= cfg.sync.poll_interval {
            last_poll = Instant::now();
            rescan_due = true;
        }
        queued_paths.extend(debounce.due(cfg.sync.debounce));
        if planning.is_none() && !rescan_due && last_due_check.elapsed() >= due_every {
            last_due_check = Instant::now();
            match engine.due_paths().await {
                Ok(due) if !due.is_empty() => {
                    tracing::info!(
                        photos = due.len(),
                        "retries due (parked new hires, transient failures)"
                    );
                    queued_paths.extend(due);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read due retries from the ledger"),
            }
        }
        if planning.is_none() {
            if rescan_due {
                rescan_due = false;
                last_rescan = Instant::now();
                queued_paths.clear();
                planning = Some(spawn_plan(engine, Scope::All, opts));
            } else if !queued_paths.is_empty() {
                let paths = std::mem::take(&mut queued_paths);
                tracing::debug!(paths = paths.len(), "changes are stable; planning them");
                planning = Some(spawn_plan(engine, Scope::Paths(paths), opts));
            }
        }
        engine.refresh_gauges();
        let line = format!(
            "{} queued, {} uploading, {} uploaded, {} failed{}",
            Stats::get(&stats.queued),
            Stats::get(&stats.in_flight),
            Stats::get(&stats.uploaded),
            Stats::get(&stats.failed),
            if watch.polled.is_empty() {
                ""
            } else {
                ", some roots polled"
            }
        );
        let _ = sd_notify::notify(false, &[NotifyState::Status(&line)]);
    }
}

fn spawn_plan(
    engine: &Arc<Engine>,
    scope: Scope,
    opts: PassOptions,
) -> tokio::task::JoinHandle<Result<PassReport, EngineError>> {
    let engine = engine.clone();
    tokio::spawn(async move { engine.plan(scope, opts).await })
}

async fn finish(
    planning: Option<tokio::task::JoinHandle<Result<PassReport, EngineError>>>,
) -> Result<(), EngineError> {
    match planning {
        Some(h) => match h.await {
            Ok(r) => r.map(|_| ()),
            Err(e) => Err(EngineError::Panicked {
                task: "planner",
                message: e.to_string(),
            }),
        },
        None => Ok(()),
    }
}

/// Pings systemd's watchdog at half its interval while the runtime is responsive.
fn start_watchdog(stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }))
}
