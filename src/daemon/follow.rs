//! One engine's time in the daemon: the reconcile pass, then following the tree (watcher
//! events, debounced, and whatever the triggers fire), one pass at a time, until a stop, a
//! valid reload or a fatal error.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::triggers::{Fired, Triggers};
use super::{notify, Context, Progress};
use crate::config::{Config, WatchMode};
use crate::engine::{Engine, EngineError, PassOptions, PassReport, Scope};
use crate::source::watch::{self, Watch};
use crate::stats::Stats;

/// Why following ended.
pub(super) enum Next {
    Stop,
    Reload(Box<Config>),
}

/// Follows the tree with `engine` until a stop or a valid reload. The pass under way when it
/// ends is awaited, so that nothing else holds the engine afterwards.
pub(super) async fn follow(
    cfg: &Config,
    engine: &Arc<Engine>,
    cx: &mut Context,
) -> (Next, Result<(), EngineError>) {
    let mut f = Follower::start(cfg, engine, cx.stats.clone()).await;
    f.start_pass(&cx.progress);
    let tick = (cfg.sync.debounce / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(1),
    );
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let next = loop {
        tokio::select! {
            () = cx.stop.cancelled() => break Next::Stop,
            // Stopped by a fatal error, which its shutdown reports.
            () = engine.stopped() => break Next::Stop,
            () = cx.reloads.requested() => match cx.reloads.load(&cfg.path).await {
                Some(new) => break Next::Reload(Box::new(new)),
                None => cx.progress.send_modify(|p| p.reloads_refused += 1),
            },
            Some(path) = f.events.recv() => {
                f.triggers.touch(path);
                while let Ok(p) = f.events.try_recv() {
                    f.triggers.touch(p);
                }
            }
            _ = ticker.tick() => {}
        }
        if let Err(e) = f.step(&cx.progress).await {
            return (Next::Stop, Err(e));
        }
    };
    let finished = match f.planning.take() {
        Some(pass) => pass.join().await.map(|_| ()),
        None => Ok(()),
    };
    (next, finished)
}

/// The pass under way.
struct Pass {
    task: JoinHandle<Result<PassReport, EngineError>>,
    whole_tree: bool,
}

impl Pass {
    fn spawn(engine: &Arc<Engine>, scope: Scope) -> Pass {
        let whole_tree = matches!(scope, Scope::All);
        let engine = engine.clone();
        let task = tokio::spawn(async move { engine.plan(scope, PassOptions::default()).await });
        Pass { task, whole_tree }
    }

    async fn join(self) -> Result<PassReport, EngineError> {
        self.task.await.unwrap_or_else(|e| {
            Err(EngineError::Panicked {
                task: "planner",
                message: e.to_string(),
            })
        })
    }
}

struct Follower<'a> {
    engine: &'a Arc<Engine>,
    stats: Arc<Stats>,
    mode: WatchMode,
    roots: Vec<PathBuf>,
    /// Kept to watch a root again.
    tx: mpsc::Sender<PathBuf>,
    events: mpsc::Receiver<PathBuf>,
    watch: Watch,
    triggers: Triggers,
    /// The reconcile pass runs like any rescan: in the background, so that stops, reloads and
    /// the watchdog are served while a first import of thousands of photos is under way.
    planning: Option<Pass>,
    rescan_due: bool,
    /// Stable changed paths and due retries, planned when no pass is under way.
    queued: Vec<PathBuf>,
}

impl<'a> Follower<'a> {
    async fn start(cfg: &Config, engine: &'a Arc<Engine>, stats: Arc<Stats>) -> Follower<'a> {
        let roots: Vec<PathBuf> = cfg.sources.iter().map(|s| s.root.clone()).collect();
        let (tx, events) = mpsc::channel::<PathBuf>(8192);
        let watch = start_watch(&roots, cfg.sync.watch, &tx).await;
        let f = Follower {
            engine,
            stats,
            mode: cfg.sync.watch,
            roots,
            tx,
            events,
            watch,
            triggers: Triggers::new(cfg).await,
            planning: None,
            rescan_due: true,
            queued: Vec::new(),
        };
        f.flag_watchers();
        f
    }

    /// One turn after an event or a tick: collect a finished pass, read the triggers, start
    /// the next pass if one is due and none is under way.
    async fn step(
        &mut self,
        progress: &tokio::sync::watch::Sender<Progress>,
    ) -> Result<(), EngineError> {
        if let Some(pass) = self.planning.take_if(|p| p.task.is_finished()) {
            let whole_tree = pass.whole_tree;
            let report = pass.join().await?;
            if whole_tree {
                self.stats.end_sweep();
            }
            Stats::add(&self.stats.passes, 1);
            passed(progress, &report, whole_tree);
        }
        let fired = self.triggers.tick(&self.watch).await;
        self.apply(fired).await;
        if self.planning.is_none() && !self.rescan_due && self.triggers.retries_due() {
            self.queue_due_retries().await;
        }
        if self.planning.is_none() {
            self.start_pass(progress);
        }
        self.engine.refresh_gauges();
        notify::status(&self.status_line());
        Ok(())
    }

    async fn apply(&mut self, fired: Fired) {
        if !fired.moved_roots.is_empty() {
            for root in &fired.moved_roots {
                tracing::warn!(root = %root.display(), "source root was unmounted, mounted or replaced; watching it again and rescanning");
            }
            self.watch = start_watch(&self.roots, self.mode, &self.tx).await;
            self.flag_watchers();
            self.rescan_due = true;
        }
        self.rescan_due |= fired.rescan;
        self.queued.extend(fired.stable);
    }

    async fn queue_due_retries(&mut self) {
        match self.engine.due_paths().await {
            Ok(due) if !due.is_empty() => {
                tracing::info!(
                    photos = due.len(),
                    "retries due (parked new hires, transient failures)"
                );
                self.queued.extend(due);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read due retries from the ledger"),
        }
    }

    fn start_pass(&mut self, progress: &tokio::sync::watch::Sender<Progress>) {
        if self.rescan_due {
            self.rescan_due = false;
            self.triggers.rescan_started();
            // The rescan looks at them too.
            self.queued.clear();
            // What the rescan finds failing is the failure view from now on.
            self.stats.begin_sweep();
            self.planning = Some(Pass::spawn(self.engine, Scope::All));
            progress.send_modify(|p| p.rescans_started += 1);
        } else if !self.queued.is_empty() {
            let paths = std::mem::take(&mut self.queued);
            tracing::debug!(paths = paths.len(), "changes are stable; planning them");
            self.planning = Some(Pass::spawn(self.engine, Scope::Paths(paths)));
        }
    }

    fn flag_watchers(&self) {
        Stats::flag(
            &self.stats.watchers_ok,
            self.watch.all_watched() || self.mode == WatchMode::Poll,
        );
    }

    fn status_line(&self) -> String {
        format!(
            "{} queued, {} uploading, {} uploaded, {} failing{}",
            Stats::get(&self.stats.queued),
            Stats::get(&self.stats.in_flight),
            Stats::get(&self.stats.uploaded),
            self.stats.failing(),
            if self.watch.polled.is_empty() {
                ""
            } else {
                ", some roots polled"
            }
        )
    }
}

/// Records a finished pass; the first one makes the daemon ready.
fn passed(progress: &tokio::sync::watch::Sender<Progress>, report: &PassReport, whole_tree: bool) {
    if report.deletions_refused > 0 {
        tracing::error!(
            refused = report.deletions_refused,
            "photo deletions refused by the safety limit"
        );
    }
    let mut first = false;
    progress.send_modify(|p| {
        first = !p.ready;
        p.ready = true;
        p.passes += 1;
        if whole_tree {
            p.rescans += 1;
        }
        p.deletions_refused += report.deletions_refused as u64;
    });
    if first {
        notify::ready();
        tracing::info!("reconciled; watching for changes");
    }
}

/// Watches `roots` (walking each tree to set its watches: file-system work, done on the
/// blocking pool).
async fn start_watch(roots: &[PathBuf], mode: WatchMode, tx: &mpsc::Sender<PathBuf>) -> Watch {
    let roots = roots.to_vec();
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || watch::start(&roots, mode, &tx))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
