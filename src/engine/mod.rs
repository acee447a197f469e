//! The engine: one planner, one queue, one worker pool and one ledger writer, for every driver.
//!
//! Data flows one way, a file per stage: [`planner`] (mapping + ledger snapshot + hashing, with
//! [`conflicts`], [`lookups`] and [`deletions`] as decisions) → [`queue`] → [`worker`] (image
//! pipeline on the blocking pool, [`limiter`], [`retry`], Graph) → [`writer`]. Nothing calls back
//! up that chain; outcomes travel as messages ([`outcome`]).
//!
//! Invariants:
//! - per-item errors are recorded and counted, never stop the rest; only a fatal error (the
//!   ledger is unusable, credentials refused) stops the run, and it reaches the caller through
//!   the result of the task that met it;
//! - a target is recorded as synced only after Graph answered 2xx;
//! - shutdown (cancellation) stops intake, lets in-flight uploads finish within the grace period,
//!   flushes the ledger, and joins every task, inspecting its result.

pub(crate) mod conflicts;
pub(crate) mod decide;
pub(crate) mod deletions;
pub mod limiter;
pub(crate) mod lookups;
pub(crate) mod outcome;
pub(crate) mod planner;
pub(crate) mod preview;
pub(crate) mod queue;
pub(crate) mod retry;
pub(crate) mod rules;
pub(crate) mod settings;
pub(crate) mod worker;
pub(crate) mod writer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use self::limiter::Limiter;
use self::lookups::Resolutions;
use self::outcome::Recorder;
use self::planner::Intake;
use self::preview::Preview;
use self::queue::Queue;
use self::retry::Sent;
use self::settings::Settings;
use self::worker::Deps;
use crate::config::Config;
use crate::graph::auth::AuthError;
use crate::graph::GraphError;
use crate::image::Pipeline;
use crate::ledger::{now_ms, Ledger, LedgerError, Op};
use crate::mapping::Target;
use crate::stats::Stats;

/// Files larger than this are not photos; they are refused without being read.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

const MEMORY_BUDGET_KIB: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] LedgerError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Graph(GraphError),
    #[error("cannot build the HTTP client: {0}")]
    Http(reqwest::Error),
    #[error("a {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    /// The ledger error names the database and its cause.
    #[error("{error}; the run stopped, and what was uploaded but not recorded is uploaded again by the next run")]
    LedgerWrite { error: LedgerError },
}

impl EngineError {
    /// A fatal Graph error (credentials refused) as the run's error.
    pub fn from_graph(e: GraphError) -> EngineError {
        match e {
            GraphError::Auth(a) => EngineError::Auth(a),
            other => EngineError::Graph(other),
        }
    }
}

/// How one pass plans.
#[derive(Debug, Clone, Copy, Default)]
pub struct PassOptions {
    /// Upload even unchanged photos.
    pub force: bool,
    /// Print the plan; touch neither Graph nor the ledger.
    pub dry_run: bool,
    /// Retry transient failures now, whatever their `next_attempt_at` says.
    pub retry_transient_now: bool,
    /// Queue at most this many uploads in this pass (newest files first); the rest wait for
    /// the next run.
    pub max_uploads: Option<u64>,
    /// The order files are planned in.
    pub order: Order,
}

/// The order a pass plans files in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// As the walk finds them: work starts at once, nothing is held.
    #[default]
    AsFound,
    /// Newest modification time first (budgeted runs: what HR changed last goes out first).
    /// The walk's stat results are collected and sorted before planning starts.
    NewestFirst,
}

/// What a pass looks at.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every source, walked from its root. Files the ledger knows that were not found are gone.
    All,
    /// These paths only (from the watcher): files, new folders, or paths that disappeared.
    Paths(Vec<PathBuf>),
}

/// What a pass did beyond counting.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    /// Deletions that the safety limit refused (the tree looked emptied).
    pub deletions_refused: usize,
    /// Deletions queued (or, in a dry run, that would be).
    pub deletions: usize,
    /// The pass stopped at `max_uploads`; files after that point were not planned.
    pub budget_reached: bool,
}

/// Why the current etag of a photo could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EtagError {
    #[error(transparent)]
    Graph(GraphError),
    /// Credentials refused: the run was stopped.
    #[error(transparent)]
    Fatal(EngineError),
    #[error("stopped")]
    Stopped,
}

/// The tasks the engine owns: every one is joined by [`Engine::shutdown`] (or, for one that
/// ended early, by [`Engine::drain`]) and its result inspected.
#[derive(Default)]
struct Tasks {
    workers: JoinSet<Result<(), GraphError>>,
    writer: Option<JoinHandle<Result<(), LedgerError>>>,
}

/// The running engine. Start it, feed it passes, then [`Engine::shutdown`].
pub struct Engine {
    intake: Intake,
    ledger: Option<Ledger>,
    tasks: tokio::sync::Mutex<Tasks>,
    previews: Mutex<Option<mpsc::UnboundedReceiver<Preview>>>,
}

impl Engine {
    /// Builds the Graph client and starts the workers and the ledger writer. A dry-run engine
    /// starts neither: it only plans, reading `ledger` (opened read-only, or `None` when there
    /// is no database yet) and writing nothing; its plan is available from
    /// [`Engine::previews`].
    pub fn start(
        cfg: &Config,
        ledger: Option<Ledger>,
        dry_run: bool,
        stats: Arc<Stats>,
        cancel: CancellationToken,
    ) -> Result<Engine, EngineError> {
        let settings = Settings::from_config(cfg);
        let deps = Arc::new(deps(cfg, &settings, stats.clone(), cancel)?);
        let queue = Arc::new(Queue::new(settings.upload.workers * 4 + 16));
        let mut tasks = Tasks::default();
        let sink = match ledger.clone().filter(|_| !dry_run) {
            Some(l) => {
                let (sink, task) = writer::start(l, stats.clone(), deps.cancel.clone());
                tasks.writer = Some(task);
                Some(sink)
            }
            None => None,
        };
        let recorder = Recorder {
            stats,
            sink,
            sync: settings.sync.clone(),
            fingerprint: deps.pipeline.fingerprint(),
        };
        if recorder.sink.is_some() {
            for n in 0..settings.upload.workers {
                let run = worker::run(n, deps.clone(), queue.clone(), recorder.clone());
                tasks.workers.spawn(run);
            }
        }
        let (previews_tx, previews_rx) = mpsc::unbounded_channel();
        let intake = Intake {
            deps,
            queue,
            memory: Arc::new(Semaphore::new(MEMORY_BUDGET_KIB)),
            recorder,
            sources: settings.sources.into(),
            resolutions: Resolutions::default(),
            rules: Arc::default(),
            previews: dry_run.then_some(previews_tx),
            dry_run,
        };
        Ok(Engine {
            intake,
            ledger,
            tasks: tokio::sync::Mutex::new(tasks),
            previews: Mutex::new(dry_run.then_some(previews_rx)),
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.intake.recorder.stats
    }

    /// A dry run's plan, as it is made (once: the receiver is handed out to one caller). It
    /// ends when the engine is shut down.
    pub fn previews(&self) -> Option<mpsc::UnboundedReceiver<Preview>> {
        lock(&self.previews).take()
    }

    /// Obtains a token now, so that bad credentials stop a daemon at start rather than at its
    /// first upload, and readiness can be reported before there is anything to upload.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        let r = self.intake.deps.graph.tokens().token().await.map(|_| ());
        Stats::flag(&self.stats().token_ok, r.is_ok());
        r
    }

    /// Copies queue depth and token state into the stats' gauges.
    pub fn refresh_gauges(&self) {
        let stats = self.stats();
        let queue = &self.intake.queue;
        Stats::set(&stats.queued, queue.len() as u64);
        Stats::set(&stats.in_flight, queue.in_flight() as u64);
        let tokens = self.intake.deps.graph.tokens();
        Stats::set(&stats.token_refresh_failures, tokens.refresh_failures());
        if let Some(ok) = tokens.has_token() {
            // An expired cached token is refreshed on next use; only failures make us unready.
            Stats::flag(&stats.token_ok, ok || tokens.refresh_failures() == 0);
        }
    }

    /// Walks every source once and plans every photo found: unchanged ones are counted, the rest
    /// queued for the workers (or, in a dry run, previewed). Returns when everything is planned,
    /// not when it is uploaded; see [`Engine::drain`].
    #[tracing::instrument(skip_all, fields(force = opts.force, dry_run = opts.dry_run))]
    pub async fn plan_pass(&self, opts: PassOptions) -> Result<PassReport, EngineError> {
        self.plan(Scope::All, opts).await
    }

    /// Plans what `scope` covers; see [`Engine::plan_pass`]. A fatal error met by a lookup is
    /// returned; one met by a worker or the writer stops the pass and is returned by
    /// [`Engine::drain`] or [`Engine::shutdown`].
    pub async fn plan(&self, scope: Scope, opts: PassOptions) -> Result<PassReport, EngineError> {
        self.flush().await;
        self.load_resolutions().await?;
        planner::run_pass(&self.intake, self.ledger.as_ref(), scope, opts).await
    }

    /// Resolves once the engine has stopped: cancelled, or stopped by a fatal error (the
    /// ledger cannot be written, the credentials were refused) that [`Engine::shutdown`]
    /// returns. A daemon must not keep watching with an engine that no longer works.
    pub async fn stopped(&self) {
        self.intake.deps.cancel.cancelled().await;
    }

    /// Files whose retry is due now: parked photos (their user may exist by now) and transient
    /// failures past their `next_attempt_at`. The daemon plans them without waiting for a change.
    pub async fn due_paths(&self) -> Result<Vec<PathBuf>, EngineError> {
        match &self.ledger {
            Some(l) => Ok(l
                .due_paths(now_ms())
                .await?
                .into_iter()
                .map(PathBuf::from)
                .collect()),
            None => Ok(Vec::new()),
        }
    }

    /// The current `mediaEtag` of `target`'s photo (`None`: it has no photo), read through the
    /// shared limiter and retry policy.
    pub async fn photo_etag(&self, target: &Target) -> Result<Option<String>, EtagError> {
        match worker::current_etag(&self.intake.deps, target, &target.key()).await {
            Sent::Done(etag) => Ok(etag),
            Sent::Failed(e, _) => Err(EtagError::Graph(e)),
            Sent::Fatal(e) => Err(EtagError::Fatal(EngineError::from_graph(e))),
            Sent::Stopped => Err(EtagError::Stopped),
        }
    }

    /// `verify` found `target_key`'s photo changed or removed outside photosync: the ledger
    /// marks it pending, so that the next pass uploads it again.
    pub async fn record_drift(&self, target_key: &str) {
        let op = Op::Drifted {
            target_key: target_key.to_owned(),
            now: now_ms(),
        };
        self.intake.recorder.send(op).await;
    }

    /// `verify` read a photo uploaded before etags were recorded: its current etag becomes the
    /// baseline later checks compare with.
    pub async fn record_baseline(&self, target_key: &str, media_etag: Option<String>) {
        let op = Op::Etag {
            target_key: target_key.to_owned(),
            graph_id: None,
            media_etag,
        };
        self.intake.recorder.send(op).await;
    }

    /// Loads the resolution cache from the ledger, once per engine.
    async fn load_resolutions(&self) -> Result<(), EngineError> {
        if self.intake.resolutions.is_loaded() {
            return Ok(());
        }
        let cache = match &self.ledger {
            Some(l) => l.resolutions(now_ms()).await?,
            None => std::collections::HashMap::new(),
        };
        self.intake.resolutions.load(cache);
        Ok(())
    }

    /// Waits until every queued upload is done, the run is cancelled, or a task stops with a
    /// fatal error (returned here).
    pub async fn drain(&self) -> Result<(), EngineError> {
        let mut tasks = self.tasks.lock().await;
        let result = tokio::select! {
            () = self.intake.queue.idle() => Ok(()),
            () = self.intake.deps.cancel.cancelled() => Ok(()),
            Some(ended) = tasks.workers.join_next(), if !tasks.workers.is_empty() => worker_result(ended),
        };
        drop(tasks);
        self.flush().await;
        if result.is_ok() && self.intake.deps.cancel.is_cancelled() {
            // Stopped: by a signal, or by a fatal error that a task returns.
            return self.first_failure().await;
        }
        result
    }

    /// Joins the tasks that have ended already and returns the first failure among them.
    async fn first_failure(&self) -> Result<(), EngineError> {
        let mut tasks = self.tasks.lock().await;
        let mut result = Ok(());
        while let Some(ended) = tasks.workers.try_join_next() {
            result = result.and(worker_result(ended));
        }
        if tasks.writer.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(w) = tasks.writer.take() {
                result = result.and(writer_result(w.await));
            }
        }
        result
    }

    /// Waits until the ledger has written everything sent to it so far.
    pub async fn flush(&self) {
        if let Some(sink) = &self.intake.recorder.sink {
            sink.flush().await;
        }
    }

    /// Stops the workers: those with an upload in flight get `grace` to finish it, then are
    /// aborted. Jobs not started are dropped (the next pass plans them again). The ledger is
    /// flushed (not closed) and every task joined.
    pub async fn shutdown(self, grace: Duration) -> Result<(), EngineError> {
        let queue = &self.intake.queue;
        queue.close();
        self.intake.deps.cancel.cancel();
        let dropped = queue.clear();
        if dropped > 0 {
            tracing::info!(dropped, "queued uploads left for the next run");
        }
        let mut tasks = self.tasks.into_inner();
        let mut result = join_workers(&mut tasks.workers, grace).await;
        let Engine { intake, .. } = self;
        if let Some(sink) = &intake.recorder.sink {
            sink.flush().await;
        }
        // The writer ends when every sink is gone: the workers' went with them, the planner's
        // with its pass, and this is the last one.
        drop(intake);
        if let Some(w) = tasks.writer.take() {
            result = result.and(writer_result(w.await));
        }
        // The ledger belongs to the caller (the daemon reuses it for the next engine).
        result
    }
}

/// The Graph client and what workers share, built from the config.
fn deps(
    cfg: &Config,
    settings: &Settings,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<Deps, EngineError> {
    let graph = crate::graph::connect(cfg).map_err(|e| match e {
        crate::graph::ConnectError::Http(e) => EngineError::Http(e),
        crate::graph::ConnectError::Auth(e) => EngineError::Auth(e),
    })?;
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    Ok(Deps {
        graph,
        limiter: Limiter::new(settings.upload.requests_per_second, settings.upload.burst),
        pipeline: Pipeline::new(cfg.image.settings()),
        image_slots: Semaphore::new(cores),
        retry: settings.retry.clone(),
        upload: settings.upload.clone(),
        parked_max_age: settings.sync.parked_max_age,
        stats,
        cancel,
    })
}

/// Joins every worker: `grace` for those still running, then they are aborted.
async fn join_workers(
    workers: &mut JoinSet<Result<(), GraphError>>,
    grace: Duration,
) -> Result<(), EngineError> {
    let mut result = Ok(());
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = workers.join_next() => match r {
                None => break,
                Some(ended) => result = result.and(worker_result(ended)),
            },
            () = &mut deadline => {
                tracing::warn!(in_flight = workers.len(), "grace period over; aborting in-flight uploads");
                workers.abort_all();
                while let Some(ended) = workers.join_next().await {
                    result = result.and(worker_result(ended));
                }
                break;
            }
        }
    }
    result
}

fn worker_result(
    ended: Result<Result<(), GraphError>, tokio::task::JoinError>,
) -> Result<(), EngineError> {
    match ended {
        // Ended, or aborted after the grace period.
        Ok(Ok(())) => Ok(()),
        Err(e) if e.is_cancelled() => Ok(()),
        Ok(Err(e)) => Err(EngineError::from_graph(e)),
        Err(e) if e.is_panic() => {
            let message = panic_message(e);
            tracing::error!(%message, "worker panicked");
            Err(EngineError::Panicked {
                task: "worker",
                message,
            })
        }
        Err(e) => Err(EngineError::Panicked {
            task: "worker",
            message: e.to_string(),
        }),
    }
}

fn writer_result(
    r: Result<Result<(), LedgerError>, tokio::task::JoinError>,
) -> Result<(), EngineError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(EngineError::LedgerWrite { error }),
        Err(e) => Err(EngineError::Panicked {
            task: "ledger writer",
            message: panic_message(e),
        }),
    }
}

pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// A duration as the ledger's milliseconds (saturating: configs cap them far below).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(e) => e.to_string(),
    }
}
