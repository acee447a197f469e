//! The engine: one planner, one queue, one worker pool and one ledger writer, for every driver.
//!
//! Data flows one way: source walk → planner (mapping + ledger snapshot + hashing) → queue →
//! workers (image pipeline on the blocking pool, limiter, Graph) → ledger writer. Nothing calls
//! back up that chain; outcomes travel as messages.
//!
//! Invariants:
//! - per-item errors are recorded and counted, never stop the rest; only a fatal error (the
//!   ledger is unusable, credentials refused) stops the run;
//! - a target is recorded as synced only after Graph answered 2xx;
//! - shutdown (cancellation) stops intake, lets in-flight uploads finish within the grace period,
//!   flushes the ledger, and joins every task, inspecting its result.

pub mod decide;
pub mod limiter;
pub mod queue;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::decide::{Decision, Known, Policy, Quick, Reason};
use self::limiter::{backoff, Limiter};
use self::queue::{Keyed, Queue};
use crate::config::{Config, SourceConfig};
use crate::graph::auth::AuthError;
use crate::graph::resolve::{self, Outcome, MAX_PER_REQUEST};
use crate::graph::{ErrorClass, GraphClient, GraphError};
use crate::image::{Pipeline, Processed, MAX_UPLOAD_BYTES};
use crate::ledger::{
    now_ms, CachedResolution, ContentHash, FailureClass, FastHash, FileRow, Ledger, Op, Snapshot,
    StateError, TargetRow,
};
use crate::mapping::file::MapTable;
use crate::mapping::{map_with, Lookup, Mapped, Rules, Target};
use crate::report::Row;
use crate::source::{self, FileEntry, Found};
use crate::stats::{Failure, Stats};

/// Files larger than this are not photos; they are refused without being read.
pub const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;

/// Throttling answers one item may meet before it is recorded as failed for now.
const MAX_THROTTLED_PER_ITEM: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Graph(GraphError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    #[error("a {task} task panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("cannot write the database {}: {source}; the run stopped, and what was uploaded but not recorded is uploaded again by the next run", path.display())]
    LedgerWrite {
        path: PathBuf,
        #[source]
        source: StateError,
    },
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

/// One request to make for a target.
pub struct Job {
    target: Target,
    key: String,
    path: String,
    action: Action,
}

enum Action {
    Upload {
        hash: String,
        bytes: Bytes,
        reason: Reason,
        _memory: OwnedSemaphorePermit,
    },
    /// The photo file is gone and `on_delete = "delete"`.
    Delete,
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

impl Keyed for Job {
    fn key(&self) -> &str {
        &self.key
    }
}

enum WriterMsg {
    Op(Box<Op>),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    cfg: Config,
    pipeline: Pipeline,
    fingerprint: String,
    graph: GraphClient,
    limiter: Limiter,
    queue: Queue<Job>,
    stats: Arc<Stats>,
    /// Stops intake and retries; in-flight requests run on.
    cancel: CancellationToken,
    fatal: Mutex<Option<EngineError>>,
    image_slots: Semaphore,
    /// Bytes of photos held in the queue, in KiB permits, so memory stays bounded whatever
    /// the size of the files.
    memory: Arc<Semaphore>,
    writer: mpsc::Sender<WriterMsg>,
    ledger: Option<Ledger>,
    /// Looked-up users (target key → object id), loaded from the ledger at the first pass.
    resolutions: Mutex<Option<HashMap<String, CachedResolution>>>,
    /// Per source: its compiled globs and mapping table, with the mapping file's mtime (the
    /// table is read again when the file changes).
    rules: Mutex<Vec<(Option<std::time::SystemTime>, Rules)>>,
}

/// The running engine. Start it, feed it passes, then [`Engine::shutdown`].
pub struct Engine {
    shared: Arc<Shared>,
    ledger: Option<Ledger>,
    dry_run: bool,
    workers: JoinSet<()>,
    writer_task: Option<tokio::task::JoinHandle<Result<(), StateError>>>,
}

const MEMORY_BUDGET_KIB: usize = 256 * 1024;

impl Engine {
    /// Builds the Graph client and starts the workers and the ledger writer. A dry-run engine
    /// starts neither: it only plans, reading `ledger` (opened read-only, or `None` when there
    /// is no database yet) and writing nothing.
    pub fn start(
        cfg: Config,
        ledger: Option<Ledger>,
        dry_run: bool,
        stats: Arc<Stats>,
        cancel: CancellationToken,
    ) -> Result<Engine, EngineError> {
        let graph = crate::graph::connect(&cfg).map_err(|e| match e {
            crate::graph::ConnectError::Http(e) => EngineError::Http(e),
            crate::graph::ConnectError::Auth(e) => EngineError::Auth(e),
        })?;
        let pipeline = Pipeline::new(cfg.image.settings());
        let fingerprint = pipeline.fingerprint();
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let (tx, rx) = mpsc::channel(4096);
        let shared = Arc::new(Shared {
            limiter: Limiter::new(cfg.upload.requests_per_second, cfg.upload.burst),
            queue: Queue::new(cfg.upload.workers * 4 + 16),
            image_slots: Semaphore::new(cores),
            memory: Arc::new(Semaphore::new(MEMORY_BUDGET_KIB)),
            cfg,
            pipeline,
            fingerprint,
            graph,
            stats,
            cancel,
            fatal: Mutex::new(None),
            writer: tx,
            ledger: ledger.clone(),
            resolutions: Mutex::new(None),
            rules: Mutex::new(Vec::new()),
        });
        let mut workers = JoinSet::new();
        let mut writer_task = None;
        if let Some(l) = ledger.clone().filter(|_| !dry_run) {
            for n in 0..shared.cfg.upload.workers {
                let s = shared.clone();
                workers.spawn(async move { worker(n, s).await });
            }
            let s = shared.clone();
            writer_task = Some(tokio::spawn(async move { writer(l, rx, s).await }));
        }
        Ok(Engine {
            shared,
            ledger,
            dry_run,
            workers,
            writer_task,
        })
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.shared.stats
    }

    pub fn fingerprint(&self) -> &str {
        &self.shared.fingerprint
    }

    /// Jobs queued and in flight.
    pub fn queue_depth(&self) -> (usize, usize) {
        (self.shared.queue.len(), self.shared.queue.in_flight())
    }

    /// Obtains a token now, so that bad credentials stop a daemon at start rather than at its
    /// first upload, and readiness can be reported before there is anything to upload.
    pub async fn warm_up(&self) -> Result<(), AuthError> {
        let r = self.shared.graph.tokens().token().await.map(|_| ());
        Stats::flag(&self.shared.stats.token_ok, r.is_ok());
        r
    }

    /// Copies queue depth and token state into the stats' gauges.
    pub fn refresh_gauges(&self) {
        let stats = &self.shared.stats;
        Stats::set(&stats.queued, self.shared.queue.len() as u64);
        Stats::set(&stats.in_flight, self.shared.queue.in_flight() as u64);
        let tokens = self.shared.graph.tokens();
        Stats::set(&stats.token_refresh_failures, tokens.refresh_failures());
        if let Some(ok) = tokens.has_token() {
            // An expired cached token is refreshed on next use; only failures make us unready.
            Stats::flag(&stats.token_ok, ok || tokens.refresh_failures() == 0);
        }
    }

    /// Walks every source once and plans every photo found: unchanged ones are counted, the rest
    /// queued for the workers (or, in a dry run, printed). Returns when everything is planned,
    /// not when it is uploaded; see [`Engine::drain`].
    #[tracing::instrument(skip_all, fields(force = opts.force, dry_run = opts.dry_run))]
    pub async fn plan_pass(&self, opts: PassOptions) -> Result<PassReport, EngineError> {
        self.plan(Scope::All, opts).await
    }

    /// Plans what `scope` covers; see [`Engine::plan_pass`].
    pub async fn plan(&self, scope: Scope, opts: PassOptions) -> Result<PassReport, EngineError> {
        if self.ledger.is_some() {
            self.flush().await;
        }
        self.load_resolutions().await?;
        let shared = self.shared.clone();
        let rules = tokio::task::spawn_blocking(move || refresh_rules(&shared))
            .await
            .map_err(|e| EngineError::Panicked {
                task: "mapping file reader",
                message: panic_message(e),
            })?;
        // The walk starts before the ledger snapshot is loaded and runs beside it; the queue
        // holds what it finds meanwhile (up to `WALK_QUEUE` entries).
        let (tx, mut rx) = mpsc::channel::<Found>(WALK_QUEUE);
        let mut walkers = JoinSet::new();
        let whole_tree = matches!(scope, Scope::All);
        if let Scope::Paths(paths) = scope {
            let roots: Vec<PathBuf> = self
                .shared
                .cfg
                .sources
                .iter()
                .map(|s| s.root.clone())
                .collect();
            let tx = tx.clone();
            walkers.spawn_blocking(move || source::visit_paths(&roots, paths, &tx));
        }
        for (n, src) in self
            .shared
            .cfg
            .sources
            .iter()
            .enumerate()
            .filter(|_| whole_tree)
        {
            let tx = tx.clone();
            let root = src.root.clone();
            let stats = self.shared.stats.clone();
            walkers.spawn_blocking(move || {
                if let Err(e) = source::walk(n, &root, &tx) {
                    tracing::error!(root = %root.display(), error = %e, "source root unreadable");
                    stats.fail(Failure::local(
                        root.display().to_string(),
                        None,
                        "source_unreadable",
                        e.to_string(),
                    ));
                }
            });
        }
        drop(tx);
        let snapshot = match &self.ledger {
            Some(l) => {
                let started = std::time::Instant::now();
                let snapshot = l.snapshot().await?;
                tracing::debug!(
                    files = snapshot.files.len(),
                    targets = snapshot.targets.len(),
                    ms = millis(started.elapsed()),
                    "ledger snapshot loaded"
                );
                snapshot
            }
            None => Snapshot::default(),
        };
        let mut planner = Planner {
            shared: &self.shared,
            snapshot: &snapshot,
            opts,
            policy_now: now_ms(),
            seen: Claims::default(),
            seen_paths: HashSet::default(),
            whole_tree,
            root_files: vec![None; self.shared.cfg.sources.len()],
            gone: Vec::new(),
            deferred: Vec::new(),
            dry_run_ledger: self.dry_run || self.ledger.is_none() || opts.dry_run,
            rules,
            awaiting: Vec::new(),
            uploads_queued: 0,
        };
        if opts.order == Order::NewestFirst {
            rx = planner.newest_first(rx).await;
        }
        // A budget spends itself in the order reads finish: one at a time keeps it newest first.
        let max_reads = if opts.max_uploads.is_some() {
            1
        } else {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get) * 2
        };
        let mut reads = FuturesUnordered::new();
        let mut walking = true;
        while walking || !reads.is_empty() {
            if self.shared.cancel.is_cancelled() {
                break;
            }
            if planner.budget_spent() {
                walking = false;
                if reads.is_empty() {
                    break;
                }
            }
            tokio::select! {
                Some(done) = reads.next(), if !reads.is_empty() => planner.after_read(done).await,
                found = rx.recv(), if walking && reads.len() < max_reads => match found {
                    Some(Found::File(entry)) => {
                        if let Some(read) = planner.on_file(entry) {
                            reads.push(read);
                        }
                    }
                    Some(Found::Problem { path, problem, message }) => {
                        count_problem(&planner.shared.stats, &path, problem, message);
                    }
                    Some(Found::Gone { source, path }) => planner.on_gone(source, &path),
                    Some(Found::RootDone { source, files }) => planner.root_files[source] = Some(files),
                    None => walking = false,
                },
            }
        }
        planner.resolve_awaiting(None).await;
        planner.send_deferred().await;
        drop(rx);
        while let Some(r) = walkers.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    return Err(EngineError::Panicked {
                        task: "source walk",
                        message: panic_message(e),
                    });
                }
            }
        }
        let report = if planner.budget_spent() {
            // Files after the budget were not looked at: they are not gone.
            PassReport {
                budget_reached: true,
                ..PassReport::default()
            }
        } else if self.shared.cancel.is_cancelled() {
            PassReport::default()
        } else {
            planner.deletions().await
        };
        self.take_fatal().map(|()| report)
    }

    /// Resolves once the engine has stopped: cancelled, or stopped by a fatal error (the
    /// ledger cannot be written, the credentials were refused) that [`Engine::shutdown`]
    /// returns. A daemon must not keep watching with an engine that no longer works.
    pub async fn stopped(&self) {
        self.shared.cancel.cancelled().await;
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
    /// shared limiter and retry policy. `Err(None)` when the run was stopped.
    pub async fn photo_etag(&self, target: &Target) -> Result<Option<String>, Option<GraphError>> {
        match current_etag(&self.shared, target, &target.key()).await {
            Sent::Done(etag) => Ok(etag),
            Sent::Failed(e, _, _) => Err(Some(e)),
            Sent::Stopped => Err(self.take_fatal().err().map(|e| match e {
                EngineError::Graph(g) => g,
                other => GraphError::Status {
                    status: 0,
                    code: None,
                    message: Some(other.to_string()),
                    request_id: None,
                    retry_after: None,
                },
            })),
        }
    }

    /// Loads the resolution cache from the ledger, once per engine.
    async fn load_resolutions(&self) -> Result<(), EngineError> {
        let loaded = lock(&self.shared.resolutions).is_some();
        if loaded {
            return Ok(());
        }
        let cache = match &self.shared.ledger {
            Some(l) => l.resolutions(now_ms()).await?,
            None => HashMap::new(),
        };
        *lock(&self.shared.resolutions) = Some(cache);
        Ok(())
    }

    /// Waits until every queued upload is done (or the run is cancelled).
    pub async fn drain(&self) -> Result<(), EngineError> {
        tokio::select! {
            () = self.shared.queue.idle() => {}
            () = self.shared.cancel.cancelled() => {}
        }
        self.flush().await;
        self.take_fatal()
    }

    /// Waits until the ledger has written everything sent to it so far.
    pub async fn flush(&self) {
        if self.writer_task.is_none() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.shared.writer.send(WriterMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    fn take_fatal(&self) -> Result<(), EngineError> {
        match self
            .shared
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stops the workers: those with an upload in flight get `grace` to finish it, then are
    /// aborted. Jobs not started are dropped (the next pass plans them again). The ledger is
    /// flushed (not closed) and every task joined.
    pub async fn shutdown(mut self, grace: Duration) -> Result<(), EngineError> {
        self.shared.queue.close();
        self.shared.cancel.cancel();
        let dropped = self.shared.queue.clear();
        if dropped > 0 {
            tracing::info!(dropped, "queued uploads left for the next run");
        }
        let mut result = self.take_fatal();
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = self.workers.join_next() => match r {
                    None => break,
                    Some(Err(e)) if e.is_panic() => {
                        let message = panic_message(e);
                        tracing::error!(%message, "worker panicked");
                        result = Err(EngineError::Panicked { task: "worker", message });
                    }
                    Some(_) => {}
                },
                () = &mut deadline => {
                    tracing::warn!(in_flight = self.workers.len(), "grace period over; aborting in-flight uploads");
                    self.workers.abort_all();
                    while self.workers.join_next().await.is_some() {}
                    break;
                }
            }
        }
        self.flush().await;
        // The writer ends when every sender is gone: ours is the last one besides the tasks
        // already joined.
        let writer_task = self.writer_task.take();
        drop(self.shared);
        if let Some(w) = writer_task {
            match w.await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    result = result.and(Err(EngineError::LedgerWrite {
                        path: self
                            .ledger
                            .as_ref()
                            .map(|l| l.path().to_owned())
                            .unwrap_or_default(),
                        source,
                    }));
                }
                Err(e) => {
                    result = result.and(Err(EngineError::Panicked {
                        task: "ledger writer",
                        message: panic_message(e),
                    }));
                }
            }
        }
        // The ledger belongs to the caller (the daemon reuses it for the next engine).
        result
    }
}

/// Compiles each source's globs and (re)reads its mapping file when it changed (file I/O: run
/// it off the runtime's threads). A mapping file that cannot be read leaves the previous table
/// in place (or none), with an error for every file it would have named; bad rows are reported
/// and the rest apply.
fn refresh_rules(shared: &Shared) -> Vec<Rules> {
    let mut rules = lock(&shared.rules);
    let sources = &shared.cfg.sources;
    if rules.len() != sources.len() {
        *rules = sources
            .iter()
            .map(|s| (None, Rules::new(s, None)))
            .collect();
    }
    for (n, src) in sources.iter().enumerate() {
        let Some(path) = &src.mapping else { continue };
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        if mtime.is_some() && rules[n].0 == mtime {
            continue;
        }
        match MapTable::load(path, &src.column_file, &src.column_target, src.key) {
            Ok((table, problems)) => {
                tracing::info!(mapping = %path.display(), rows = table.len(), bad_rows = problems.len(), "mapping file read");
                for p in problems {
                    tracing::warn!(mapping = %path.display(), line = p.line, problem = %p.message, "mapping row left out");
                    shared.stats.fail(Failure::local(
                        format!("{}:{}", path.display(), p.line),
                        None,
                        "mapping_row",
                        p.message,
                    ));
                }
                rules[n] = (mtime, Rules::new(src, Some(Arc::new(table))));
            }
            Err(e) => {
                tracing::error!(error = %e, "mapping file unusable");
                shared.stats.fail(Failure::local(
                    path.display().to_string(),
                    None,
                    "mapping_file",
                    e.to_string(),
                ));
                if rules[n].0.is_none() {
                    // Without a table every file would be "not in the mapping": say so once
                    // per file with an empty table rather than guess targets from names.
                    rules[n] = (None, Rules::new(src, Some(Arc::new(MapTable::empty(path)))));
                }
            }
        }
    }
    rules.iter().map(|(_, r)| r.clone()).collect()
}

/// Targets claimed by a file in this pass, with that file's mtime and path (for conflicts).
/// A target the ledger knows is keyed by the address of the snapshot's key: hashing a pointer
/// instead of the key string, 100,000 times a rescan.
#[derive(Default)]
struct Claims<'a> {
    known: HashMap<usize, (i64, Cow<'a, Path>), FastHash>,
    new: HashMap<String, (i64, Cow<'a, Path>), FastHash>,
}

#[derive(Clone, Copy)]
enum ClaimKey<'k> {
    Known(usize),
    New(&'k str),
}

impl<'k> ClaimKey<'k> {
    /// `known` is the snapshot's entry for `key`, if it has one.
    fn of(known: Option<&Arc<str>>, key: &'k str) -> Self {
        match known {
            Some(k) => ClaimKey::Known(address(k)),
            None => ClaimKey::New(key),
        }
    }
}

impl<'a> Claims<'a> {
    fn get(&self, key: &ClaimKey<'_>) -> Option<&(i64, Cow<'a, Path>)> {
        match key {
            ClaimKey::Known(a) => self.known.get(a),
            ClaimKey::New(k) => self.new.get(*k),
        }
    }

    fn insert(&mut self, key: ClaimKey<'_>, claim: (i64, Cow<'a, Path>)) {
        match key {
            ClaimKey::Known(a) => self.known.insert(a, claim),
            ClaimKey::New(k) => self.new.insert(k.to_owned(), claim),
        };
    }
}

/// The address of a snapshot string: its identity while the snapshot lives.
/// A link the walk did not follow is a skip; a file or folder it could not read is a failure
/// naming the path (see [`source::Problem::is_failure`]).
fn count_problem(stats: &Stats, path: &Path, problem: source::Problem, message: String) {
    let reason = problem.as_str();
    if problem.is_failure() {
        tracing::warn!(path = %path.display(), reason, %message, "cannot read");
        stats.fail(Failure::local(
            path.display().to_string(),
            None,
            reason,
            message,
        ));
    } else {
        tracing::warn!(path = %path.display(), reason, %message, "skipped");
        stats.skip(reason);
    }
}

fn address(s: &Arc<str>) -> usize {
    s.as_ptr() as usize
}

/// Walk results queued while the ledger snapshot loads: at about 150 bytes each, 16 MiB at most.
const WALK_QUEUE: usize = 1 << 16;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `std::fs::read` into a buffer the caller allocated.
fn read_into(path: &Path, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
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

type ReadResult = (
    FileEntry,
    Target,
    Result<(Bytes, ContentHash), std::io::Error>,
);

struct Planner<'a> {
    shared: &'a Arc<Shared>,
    snapshot: &'a Snapshot,
    opts: PassOptions,
    policy_now: i64,
    /// Targets seen in this pass, with the file that claimed each (for conflicts); borrowed
    /// from the snapshot where it knows them, so that most claims cost no allocation.
    seen: Claims<'a>,
    /// Every known photo path seen in a whole-tree pass (what the ledger knows beyond it is
    /// gone), borrowed from the snapshot.
    seen_paths: HashSet<usize, FastHash>,
    whole_tree: bool,
    /// Files found under each root, once its walk finished.
    root_files: Vec<Option<u64>>,
    /// Known photo files that are gone: (source, path).
    gone: Vec<(usize, String)>,
    /// Ledger writes decided where nothing can be awaited, sent at the next await point.
    deferred: Vec<Op>,
    dry_run_ledger: bool,
    /// Per source: globs and mapping table.
    rules: Vec<Rules>,
    /// Uploads whose user must be looked up first, gathered so one request resolves many.
    awaiting: Vec<Job>,
    /// Uploads queued in this pass (for `max_uploads`).
    uploads_queued: u64,
}

impl<'a> Planner<'a> {
    fn policy(&self) -> Policy<'_> {
        Policy {
            fingerprint: &self.shared.fingerprint,
            force: self.opts.force,
            retry_transient_now: self.opts.retry_transient_now,
            now_ms: self.policy_now,
        }
    }

    fn source(&self, n: usize) -> &SourceConfig {
        &self.shared.cfg.sources[n]
    }

    fn budget_spent(&self) -> bool {
        self.opts
            .max_uploads
            .is_some_and(|max| self.uploads_queued >= max)
    }

    /// Budgeted passes plan the newest files first: collects the walk (stat results only, no
    /// file contents), handles everything but files at once, and returns the files newest first.
    async fn newest_first(&mut self, mut rx: mpsc::Receiver<Found>) -> mpsc::Receiver<Found> {
        let mut files = Vec::new();
        while let Some(found) = rx.recv().await {
            match found {
                Found::File(entry) => files.push(entry),
                Found::Problem {
                    path,
                    problem,
                    message,
                } => count_problem(&self.shared.stats, &path, problem, message),
                Found::Gone { source, path } => self.on_gone(source, &path),
                Found::RootDone { source, files } => self.root_files[source] = Some(files),
            }
        }
        files.sort_by(|a, b| {
            b.mtime_ns
                .cmp(&a.mtime_ns)
                .then_with(|| a.path.cmp(&b.path))
        });
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            for entry in files {
                if tx.send(Found::File(entry)).await.is_err() {
                    break;
                }
            }
        });
        rx
    }

    fn row(&self, path: &str, target: &str, action: &'static str, result: &str, size: u64) {
        if self.shared.stats.reporting() {
            self.shared.stats.row(Row {
                path: path.to_owned(),
                target: target.to_owned(),
                action,
                result: result.to_owned(),
                bytes_before: Some(size),
                ..Row::default()
            });
        }
    }

    /// Queues an upload, or holds it until its user is looked up.
    async fn enqueue(&mut self, mut job: Job) {
        if let Some(lookup) = job.target.lookup {
            let cached = lock(&self.shared.resolutions)
                .as_ref()
                .and_then(|c| c.get(&job.key).cloned())
                .filter(|r| r.expires_at > now_ms());
            if let Some(r) = cached {
                job.target = Target::user(&r.object_id);
            } else {
                self.awaiting.push(job);
                let same = self
                    .awaiting
                    .iter()
                    .filter(|j| j.target.lookup == Some(lookup))
                    .count();
                if same >= MAX_PER_REQUEST {
                    self.resolve_awaiting(Some(lookup)).await;
                }
                return;
            }
        }
        self.push_upload(job).await;
    }

    /// Queues an upload within the pass's budget; over it, the next run plans the file again.
    async fn push_upload(&mut self, job: Job) {
        if self.budget_spent() {
            return;
        }
        self.uploads_queued += 1;
        tokio::select! {
            _ = self.shared.queue.push(job) => {}
            () = self.shared.cancel.cancelled() => {}
        }
    }

    /// Looks up the users of the uploads held for `lookup` (all kinds when `None`), up to 15
    /// values per request, and queues those found. No user yet: parked. Several: failed.
    async fn resolve_awaiting(&mut self, lookup: Option<Lookup>) {
        let (mine, rest): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|j| lookup.is_none() || j.target.lookup == lookup);
        self.awaiting = rest;
        let mut by_kind: HashMap<Lookup, Vec<Job>> = HashMap::new();
        for j in mine {
            if let Some(l) = j.target.lookup {
                by_kind.entry(l).or_default().push(j);
            }
        }
        for (kind, jobs) in by_kind {
            let mut values: Vec<String> = jobs.iter().map(|j| j.target.id.clone()).collect();
            values.sort();
            values.dedup();
            let mut found: HashMap<String, Outcome> = HashMap::new();
            let mut failed: Option<(GraphError, FailureClass)> = None;
            for chunk in values.chunks(MAX_PER_REQUEST) {
                let q = resolve::query(kind, chunk);
                Stats::add(&self.shared.stats.lookups, 1);
                let what = format!("{} lookup", kind.property());
                match with_retries(self.shared, &what, || self.shared.graph.query(&q)).await {
                    Sent::Done(reply) => match resolve::outcomes(kind, chunk, &reply.body) {
                        Some(o) => found.extend(o),
                        None => {
                            failed = Some((
                                GraphError::Status {
                                    status: reply.status,
                                    code: Some("MalformedResponse".into()),
                                    message: Some(
                                        "the user query's answer was not a user list".into(),
                                    ),
                                    request_id: reply.request_id,
                                    retry_after: None,
                                },
                                FailureClass::Transient,
                            ));
                        }
                    },
                    Sent::Failed(e, class, _) => failed = Some((e, class)),
                    Sent::Stopped => return,
                }
            }
            for job in jobs {
                let outcome = found.get(&job.target.id).cloned();
                self.after_lookup(kind, job, outcome, failed.as_ref()).await;
            }
        }
    }

    async fn after_lookup(
        &mut self,
        kind: Lookup,
        mut job: Job,
        outcome: Option<Outcome>,
        failed: Option<&(GraphError, FailureClass)>,
    ) {
        let value = job.target.id.clone();
        match outcome {
            Some(Outcome::Found(r)) => {
                let now = now_ms();
                let expires_at = now.saturating_add(millis(self.shared.cfg.sync.resolve_ttl));
                tracing::debug!(target = %job.key, upn = %r.upn, "looked up");
                if let Some(c) = lock(&self.shared.resolutions).as_mut() {
                    c.insert(
                        job.key.clone(),
                        CachedResolution {
                            object_id: r.id.clone(),
                            upn: r.upn.clone(),
                            expires_at,
                        },
                    );
                }
                self.send(Op::Resolved {
                    lookup_key: job.key.clone(),
                    object_id: r.id.clone(),
                    upn: r.upn,
                    now,
                    expires_at,
                })
                .await;
                job.target = Target::user(&r.id);
                self.push_upload(job).await;
            }
            Some(o @ Outcome::Ambiguous(_)) => {
                let message = o.message(kind, &value).unwrap_or_default();
                tracing::warn!(path = %job.path, target = %job.key, %message, "ambiguous lookup");
                let f = local_failure("ambiguous_user", message);
                record_failure(self.shared, &job, FailureClass::Permanent, f, None, 0).await;
            }
            Some(Outcome::NoMatch) | None if failed.is_none() => {
                let message = Outcome::NoMatch.message(kind, &value).unwrap_or_default();
                self.park(&job, message).await;
            }
            _ => {
                let Some((e, class)) = failed else { return };
                let message = format!("cannot look up {} {value}: {e}", kind.property());
                let f = graph_failure(e, &graph_reason(e), message);
                record_failure(self.shared, &job, *class, f, e.status(), 1).await;
            }
        }
    }

    /// No user has the value yet (a new hire whose account is not there): look again every
    /// `parked_retry`, for `parked_max_age` from the first time, then give up.
    async fn park(&self, job: &Job, message: String) {
        park(self.shared, job, "no_such_user", message, None).await;
    }

    /// Step 1: mapping, conflicts, and the stat-only check. Returns a read to run when the
    /// content has to be looked at.
    fn on_file(&mut self, entry: FileEntry) -> Option<tokio::task::JoinHandle<ReadResult>> {
        let stats = &self.shared.stats;
        let target = match map_with(
            self.source(entry.source),
            &self.rules[entry.source],
            entry.rel(),
        ) {
            Mapped::Skipped(why) => {
                stats.skip(why.as_str());
                if why == crate::mapping::Skip::Excluded {
                    self.row(
                        &entry.path.display().to_string(),
                        "",
                        "skip",
                        "excluded",
                        entry.size,
                    );
                }
                return None;
            }
            Mapped::Invalid(e) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "no target for file");
                stats.fail(Failure::local(
                    entry.path.display().to_string(),
                    None,
                    "bad_name",
                    e.to_string(),
                ));
                return None;
            }
            Mapped::Photo(t) => t,
        };
        Stats::add(&stats.files, 1);
        let key = target.key();
        // One lookup in each map per file: this runs 100,000 times in a rescan.
        let snapshot: &'a Snapshot = self.snapshot;
        let known_file = entry
            .path
            .to_str()
            .and_then(|p| snapshot.files.get_key_value(p));
        let known_target = snapshot.targets.get_key_value(key.as_str());
        if self.whole_tree {
            if let Some((p, _)) = known_file {
                self.seen_paths.insert(address(p));
            }
        }
        if self.loses_conflict(&key, &entry, known_file, known_target) {
            return None;
        }
        let Some(path) = entry.path.to_str() else {
            stats.fail(Failure::local(
                entry.path.display().to_string(),
                Some(key),
                "bad_name",
                "path is not valid UTF-8",
            ));
            return None;
        };
        if entry.size > MAX_INPUT_BYTES {
            stats.fail(Failure::local(
                path,
                Some(key),
                "too_large",
                format!(
                    "{} bytes is larger than any photo ({} MiB limit)",
                    entry.size,
                    MAX_INPUT_BYTES >> 20
                ),
            ));
            return None;
        }
        let known = Known {
            file: known_file.map(|(_, f)| f),
            target: known_target.map(|(_, t)| t),
        };
        match decide::quick(&known, &key, entry.size, entry.mtime_ns, &self.policy()) {
            Quick::Unchanged => {
                Stats::add(&stats.unchanged, 1);
                self.row(path, &key, "none", "unchanged", entry.size);
                None
            }
            Quick::KnownBad => {
                self.known_bad(path, &key);
                None
            }
            Quick::NotDue => {
                self.not_due(path, &key, entry.size);
                None
            }
            Quick::Read => {
                // The buffer is allocated here, on a runtime thread, not on whichever of the
                // blocking pool's threads reads into it: each of those would keep its own
                // pages of photo-sized blocks (a touched rescan's RSS grew by a fifth).
                let cap = usize::try_from(entry.size).map_or(0, |n| n.saturating_add(1));
                let buf = Vec::with_capacity(cap);
                Some(tokio::task::spawn_blocking(move || {
                    let read = read_into(&entry.path, buf).map(|b| {
                        let hash = blake3::hash(&b);
                        (Bytes::from(b), hash)
                    });
                    (entry, target, read)
                }))
            }
        }
    }

    /// Two files for one target: the newest wins (ties: the greater path), the other is skipped
    /// and reported. Looks at files seen in this pass and at files the ledger knows.
    /// `known_file` and `known_target` are the snapshot's entries for `entry` and `key`.
    fn loses_conflict(
        &mut self,
        key: &str,
        entry: &FileEntry,
        known_file: Option<(&'a Arc<str>, &'a FileRow)>,
        known_target: Option<(&'a Arc<str>, &'a TargetRow)>,
    ) -> bool {
        let claim = ClaimKey::of(known_target.map(|(k, _)| k), key);
        let mut rival: Option<(i64, PathBuf)> = self
            .seen
            .get(&claim)
            .map(|(mtime, path)| (*mtime, path.to_path_buf()));
        if !self.snapshot.shared_targets.is_empty() {
            for other in self.snapshot.files_of(key) {
                let other = PathBuf::from(other);
                if other == entry.path || rival.as_ref().is_some_and(|r| r.1 == other) {
                    continue;
                }
                if let Ok(meta) = std::fs::metadata(&other) {
                    let candidate = (source::mtime_ns(&meta), other);
                    if rival.as_ref().is_none_or(|r| candidate > *r) {
                        rival = Some(candidate);
                    }
                }
            }
        }
        let Some(rival) = rival else {
            // Borrowed from the snapshot when it knows the path: most claims allocate nothing.
            let path = known_file.map_or_else(
                || entry.path.clone().into(),
                |(p, _)| Cow::Borrowed(Path::new(&**p)),
            );
            self.seen.insert(claim, (entry.mtime_ns, path));
            return false;
        };
        let mine = (entry.mtime_ns, entry.path.clone());
        if rival > mine {
            self.remember_loser(entry, key);
            self.row(
                &entry.path.display().to_string(),
                key,
                "skip",
                "conflict",
                entry.size,
            );
            tracing::warn!(
                target = key,
                path = %entry.path.display(),
                winner = %rival.1.display(),
                "two files name one target; the newest wins"
            );
            self.shared.stats.skip("conflict");
            self.seen.insert(claim, (rival.0, rival.1.into()));
            true
        } else {
            if rival.1 != mine.1 {
                tracing::warn!(
                    target = key,
                    path = %rival.1.display(),
                    winner = %entry.path.display(),
                    "two files name one target; the newest wins"
                );
                self.shared.stats.skip("conflict");
            }
            self.seen.insert(claim, (mine.0, mine.1.into()));
            false
        }
    }

    fn claim_key<'k>(&self, key: &'k str) -> ClaimKey<'k> {
        ClaimKey::of(
            self.snapshot.targets.get_key_value(key).map(|(k, _)| k),
            key,
        )
    }

    fn on_gone(&mut self, source: usize, path: &std::path::Path) {
        if let Some(p) = path.to_str() {
            if self.snapshot.files.contains_key(p) {
                self.gone.push((source, p.to_owned()));
            }
        }
    }

    /// After the walk: what the ledger knows that was not found is gone. The ledger forgets those
    /// files; with `on_delete = "delete"` their targets' photos are deleted, unless that would be
    /// more than `max_deletes_per_pass` or a root came back empty (an unmounted share looks like
    /// a tree whose every photo was deleted).
    async fn deletions(&mut self) -> PassReport {
        let cfg = &self.shared.cfg;
        if self.whole_tree {
            let roots: Vec<String> = cfg
                .sources
                .iter()
                .map(|s| s.root.display().to_string())
                .collect();
            for (path, row) in &self.snapshot.files {
                let Some(n) = roots.iter().position(|r| **r == *row.source) else {
                    continue;
                };
                // Only roots whose walk completed can say a file is gone.
                if self.root_files[n].is_some() && !self.seen_paths.contains(&address(path)) {
                    self.gone.push((n, path.to_string()));
                }
            }
        }
        let mut report = PassReport::default();
        if self.gone.is_empty() {
            return report;
        }
        let gone = std::mem::take(&mut self.gone);
        let mut deletes = Vec::new();
        for (n, path) in &gone {
            let Some(key) = self
                .snapshot
                .files
                .get(path.as_str())
                .and_then(|f| f.target_key.as_deref().map(str::to_owned))
            else {
                continue;
            };
            let synced =
                self.snapshot.targets.get(key.as_str()).is_some_and(|t| {
                    t.state == "synced" && t.path.as_deref() == Some(path.as_str())
                });
            // Another file still names this target (a conflict, or a rename within it).
            let still_named = self.seen.get(&self.claim_key(&key)).is_some()
                || self
                    .snapshot
                    .files_of(&key)
                    .iter()
                    .any(|p| p != path && std::path::Path::new(p).exists());
            if synced && !still_named {
                deletes.push((*n, path.clone(), key));
            }
        }
        let mut refused_roots = HashSet::new();
        if cfg.sync.on_delete == crate::config::OnDelete::Delete {
            for (n, _, _) in &deletes {
                if refused_roots.contains(n) {
                    continue;
                }
                let emptied = if self.whole_tree {
                    self.root_files[*n] == Some(0)
                } else {
                    // The watcher reported paths, not the state of the root: files deleted
                    // one by one (a share wiped, or unmounted under the watch) would otherwise
                    // pass as ordinary deletions, a few per pass.
                    let root = cfg.sources[*n].root.clone();
                    tokio::task::spawn_blocking(move || source::looks_emptied(&root))
                        .await
                        .unwrap_or(true)
                };
                if emptied {
                    refused_roots.insert(*n);
                }
            }
            for n in &refused_roots {
                tracing::error!(
                    root = %cfg.sources[*n].root.display(),
                    "source root is empty but the ledger knows photos under it; is the share mounted? refusing to delete any photo"
                );
            }
            let allowed: Vec<_> = deletes
                .iter()
                .filter(|(n, _, _)| !refused_roots.contains(n))
                .collect();
            if allowed.len() > cfg.sync.max_deletes_per_pass {
                tracing::error!(
                    deletions = allowed.len(),
                    limit = cfg.sync.max_deletes_per_pass,
                    "refusing to delete this many photos in one pass (sync.max_deletes_per_pass); if this is intended, raise the limit"
                );
                report.deletions_refused = deletes.len();
                self.shared.stats.skip("delete_refused");
                return report;
            }
            report.deletions_refused = deletes.len() - allowed.len();
        } else if self.whole_tree {
            // Nothing is deleted in Graph either way, but forgetting the files of an unmounted
            // share would cost reading and hashing every one of them when it is back.
            for (n, _) in &gone {
                if self.root_files[*n] == Some(0) && refused_roots.insert(*n) {
                    tracing::warn!(
                        root = %cfg.sources[*n].root.display(),
                        "source root is empty but the ledger knows photos under it; is the share mounted? keeping their records until it is back"
                    );
                }
            }
        }
        // Forget the files (not those under a root that looked unmounted: they may come back).
        for (n, path) in &gone {
            if refused_roots.contains(n) || self.dry_run_ledger {
                continue;
            }
            self.send(Op::ForgetFile { path: path.clone() }).await;
        }
        if cfg.sync.on_delete != crate::config::OnDelete::Delete {
            for (_, path, key) in &deletes {
                tracing::info!(%path, target = %key, "photo file removed; the photo in Graph is kept (sync.on_delete = \"keep\")");
            }
            return report;
        }
        for (n, path, key) in deletes {
            if refused_roots.contains(&n) {
                continue;
            }
            let Some(mut target) = Target::from_key(&key) else {
                continue;
            };
            if target.lookup.is_some() {
                // Named by mail or employee id: delete where the photo went, or not at all.
                let cached = lock(&self.shared.resolutions)
                    .as_ref()
                    .and_then(|c| c.get(&key).map(|r| r.object_id.clone()));
                let Some(id) = cached else {
                    tracing::warn!(%path, target = %key, "photo file removed, but its user's id is no longer cached; the photo in Graph is kept");
                    continue;
                };
                target = Target::user(&id);
            }
            if target.kind == crate::config::TargetKind::Contact {
                tracing::info!(%path, target = %key, "contact photos cannot be deleted through Graph; left as is");
                continue;
            }
            report.deletions += 1;
            if self.dry_run_ledger {
                println!("would delete the photo of {key} ({path} was removed)");
                continue;
            }
            let job = Job {
                target,
                key,
                path,
                action: Action::Delete,
            };
            tokio::select! {
                _ = self.shared.queue.push(job) => {}
                () = self.shared.cancel.cancelled() => break,
            }
        }
        report
    }

    /// The ledger must know a conflict's losing file too, so that the next pass sees the
    /// conflict whichever file it meets first.
    fn remember_loser(&mut self, entry: &FileEntry, key: &str) {
        if self.dry_run_ledger {
            return;
        }
        if let Some(path) = entry.path.to_str() {
            self.deferred.push(Op::File {
                path: path.to_owned(),
                source: self.source(entry.source).root.display().to_string(),
                size: entry.size as i64,
                mtime_ns: entry.mtime_ns,
                content_hash: None,
                target_key: Some(key.to_owned()),
                now: now_ms(),
            });
        }
    }

    async fn send_deferred(&mut self) {
        for op in std::mem::take(&mut self.deferred) {
            self.send(op).await;
        }
    }

    /// A failure whose retry is not due, or a parked photo whose next lookup is not due.
    fn not_due(&self, path: &str, key: &str, size: u64) {
        let parked = self
            .snapshot
            .targets
            .get(key)
            .is_some_and(|t| t.state == "parked");
        if parked {
            Stats::add(&self.shared.stats.parked, 1);
        } else {
            Stats::add(&self.shared.stats.pending, 1);
        }
        self.row(
            path,
            key,
            "skip",
            if parked { "parked" } else { "retry_later" },
            size,
        );
    }

    fn known_bad(&self, path: &str, key: &str) {
        let t = self.snapshot.targets.get(key);
        self.shared.stats.fail(Failure::local(
            path,
            Some(key.to_owned()),
            t.and_then(|t| t.failure.as_ref()?.reason.as_deref())
                .unwrap_or("failed"),
            "failed before with this exact content; not retried until the file changes or `photosync retry`",
        ));
    }

    /// Steps 2–4 once the content is read.
    async fn after_read(&mut self, done: Result<ReadResult, tokio::task::JoinError>) {
        let (entry, target, read) = match done {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "read task failed");
                return;
            }
        };
        let stats = &self.shared.stats;
        let path = entry.path.to_str().unwrap_or_default().to_owned();
        let key = target.key();
        // Reads finish in any order: a file that lost a conflict while it was being read must
        // not be queued after the winner (it would replace the newer photo). Already reported.
        if self
            .seen
            .get(&self.claim_key(&key))
            .is_some_and(|(_, p)| *p != entry.path)
        {
            self.remember_loser(&entry, &key);
            self.send_deferred().await;
            return;
        }
        self.send_deferred().await;
        let (bytes, hash) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot read photo");
                stats.fail(Failure::local(path, Some(key), "unreadable", e.to_string()));
                return;
            }
        };
        Stats::add(&stats.bytes_read, bytes.len() as u64);
        if !self.dry_run_ledger {
            self.send(Op::File {
                path: path.clone(),
                source: self.source(entry.source).root.display().to_string(),
                size: entry.size as i64,
                mtime_ns: entry.mtime_ns,
                content_hash: Some(hash.to_hex().to_string()),
                target_key: Some(key.clone()),
                now: now_ms(),
            })
            .await;
        }
        match decide::after_hash(
            self.snapshot.targets.get(key.as_str()),
            &hash,
            &self.policy(),
        ) {
            Decision::Unchanged => {
                Stats::add(&stats.unchanged, 1);
                self.row(&path, &key, "none", "unchanged", entry.size);
            }
            Decision::KnownBad => self.known_bad(&path, &key),
            Decision::NotDue => self.not_due(&path, &key, entry.size),
            Decision::Upload(reason) if self.opts.dry_run || self.dry_run_ledger => {
                self.describe(&target, &path, bytes, reason).await;
            }
            Decision::Upload(reason) => {
                let kib = (bytes.len() / 1024 + 1).min(MEMORY_BUDGET_KIB) as u32;
                let Ok(memory) = self.shared.memory.clone().acquire_many_owned(kib).await else {
                    return;
                };
                let job = Job {
                    target,
                    key,
                    path,
                    action: Action::Upload {
                        hash: hash.to_hex().to_string(),
                        bytes,
                        reason,
                        _memory: memory,
                    },
                };
                self.enqueue(job).await;
            }
        }
    }

    async fn send(&self, op: Op) {
        if self
            .shared
            .writer
            .send(WriterMsg::Op(Box::new(op)))
            .await
            .is_err()
        {
            tracing::debug!("ledger writer gone");
        }
    }

    /// Dry run: say what would be uploaded and what the image pipeline would make of it.
    async fn describe(&self, target: &Target, path: &str, bytes: Bytes, reason: Reason) {
        let stats = &self.shared.stats;
        let size = bytes.len();
        match self.process(bytes).await {
            Ok(p) => {
                Stats::add(&stats.pending, 1);
                if stats.reporting() {
                    stats.row(Row {
                        path: path.to_owned(),
                        target: target.key(),
                        action: "upload",
                        result: format!("would_upload ({})", reason.as_str()),
                        bytes_before: Some(size as u64),
                        bytes_after: Some(p.bytes.len() as u64),
                        ..Row::default()
                    });
                }
                println!(
                    "would upload {target} ({}) from {path}: {} {}x{} {} -> {}x{} {}{}{}",
                    reason.as_str(),
                    p.input_format.name(),
                    p.input_size.0,
                    p.input_size.1,
                    human_bytes(size as u64),
                    p.output_size.0,
                    p.output_size.1,
                    human_bytes(p.bytes.len() as u64),
                    if p.orientation > 1 {
                        format!(", EXIF orientation {} applied", p.orientation)
                    } else {
                        String::new()
                    },
                    if p.metadata_stripped {
                        ", metadata stripped"
                    } else {
                        ""
                    },
                );
            }
            Err(f) => {
                println!("would refuse {path} for {target}: {}", f.message);
                stats.fail(Failure {
                    path: path.to_owned(),
                    target: Some(target.key()),
                    ..f
                });
            }
        }
    }

    async fn process(&self, bytes: Bytes) -> Result<Processed, Failure> {
        run_pipeline(self.shared, bytes).await
    }
}

/// Runs the image pipeline on the blocking pool, at most one image per core at a time; a
/// header-only pipeline (passthrough) runs in place, as a hop to the pool would cost more.
async fn run_pipeline(shared: &Arc<Shared>, bytes: Bytes) -> Result<Processed, Failure> {
    let processed = if shared.pipeline.is_header_only() {
        shared.pipeline.process_shared(&bytes)
    } else {
        let Ok(_slot) = shared.image_slots.acquire().await else {
            return Err(local_failure("cancelled", "shutting down".into()));
        };
        let s = shared.clone();
        tokio::task::spawn_blocking(move || s.pipeline.process_shared(&bytes))
            .await
            .map_err(|e| local_failure("panic", format!("image pipeline panicked: {e}")))?
    };
    match processed {
        Ok(p) if p.bytes.len() > MAX_UPLOAD_BYTES => Err(local_failure(
            "too_large",
            format!(
                "{} after processing is over Graph's 4 MB request limit",
                human_bytes(p.bytes.len() as u64)
            ),
        )),
        Ok(p) => Ok(p),
        Err(e) => Err(local_failure(e.reason(), e.to_string())),
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

/// A worker: takes a job, makes the photo, uploads it with retries, reports the outcome.
async fn worker(n: usize, shared: Arc<Shared>) {
    loop {
        let job = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            job = shared.queue.pop() => match job {
                Some(j) => j,
                None => return,
            },
        };
        let key = job.key.clone();
        let span = tracing::info_span!("upload", worker = n, target = %key);
        tracing::Instrument::instrument(handle(&shared, job), span).await;
        shared.queue.finish(&key);
    }
}

async fn handle(shared: &Arc<Shared>, job: Job) {
    match &job.action {
        Action::Upload {
            hash,
            bytes,
            reason,
            ..
        } => upload(shared, &job, hash, bytes.clone(), *reason).await,
        Action::Delete => delete(shared, &job).await,
    }
}

async fn upload(shared: &Arc<Shared>, job: &Job, hash: &str, bytes: Bytes, reason: Reason) {
    let bytes_before = bytes.len() as u64;
    let processed = match run_pipeline(shared, bytes).await {
        Ok(p) => p,
        Err(f) => {
            tracing::warn!(path = %job.path, reason = %f.reason, error = %f.message, "photo refused");
            record_failure(shared, job, FailureClass::Local, f, None, 0).await;
            return;
        }
    };
    let method = shared.cfg.upload.method.as_reqwest();
    let started = std::time::Instant::now();
    let outcome = with_retries(shared, &job.path, || {
        shared.graph.upload_photo(
            method.clone(),
            &job.target,
            processed.bytes.clone(),
            processed.content_type,
        )
    })
    .await;
    match outcome {
        Sent::Done(reply) => {
            let stats = &shared.stats;
            Stats::add(&stats.uploaded, 1);
            Stats::add(&stats.bytes_uploaded, processed.bytes.len() as u64);
            stats.observe_upload(started.elapsed());
            tracing::info!(
                path = %job.path,
                reason = reason.as_str(),
                bytes = processed.bytes.len(),
                request_id = reply.request_id.as_deref().unwrap_or(""),
                ms = started.elapsed().as_millis() as u64,
                "uploaded"
            );
            if stats.reporting() {
                stats.row(Row {
                    path: job.path.clone(),
                    target: job.key.clone(),
                    action: "upload",
                    result: format!("uploaded ({})", reason.as_str()),
                    bytes_before: Some(bytes_before),
                    bytes_after: Some(processed.bytes.len() as u64),
                    error: None,
                    request_id: reply.request_id.clone(),
                });
            }
            send(
                shared,
                Op::Uploaded {
                    target_key: job.key.clone(),
                    kind: job.target.kind.as_str(),
                    path: job.path.clone(),
                    content_hash: hash.to_owned(),
                    fingerprint: shared.fingerprint.clone(),
                    bytes: processed.bytes.len() as i64,
                    http_status: reply.status,
                    request_id: reply.request_id,
                    client_request_id: Some(reply.client_request_id),
                    action: "upload",
                    now: now_ms(),
                },
            )
            .await;
            if shared.cfg.upload.record_etag
                && job.target.kind != crate::config::TargetKind::Contact
            {
                record_etag(shared, job).await;
            }
        }
        Sent::Failed(e, FailureClass::Permanent, _) if user_not_there_yet(&job.target, &e) => {
            let message = format!("Graph does not know user {} (yet): {e}", job.target.id);
            park(shared, job, "not_found", message, Some(&e)).await;
        }
        Sent::Failed(e, class, attempts) => fail_graph(shared, job, &e, class, attempts).await,
        Sent::Stopped => {}
    }
}

/// Reads the photo's metadata back after an upload and records its `mediaEtag`, the baseline
/// `verify` compares with. A failure here costs only that baseline: the upload stands.
async fn record_etag(shared: &Arc<Shared>, job: &Job) {
    let etag = match current_etag(shared, &job.target, &job.path).await {
        Sent::Done(etag) => etag,
        Sent::Failed(e, _, _) => {
            tracing::warn!(path = %job.path, error = %e, "uploaded, but its metadata could not be read back; verify cannot check this photo until it is uploaded again");
            None
        }
        Sent::Stopped => return,
    };
    let graph_id = job.key.starts_with("user(").then(|| job.target.id.clone());
    send(
        shared,
        Op::Etag {
            target_key: job.key.clone(),
            graph_id,
            media_etag: etag,
        },
    )
    .await;
}

/// The photo's current `mediaEtag`, through the limiter and retry policy; `None` when the
/// target has no photo (a 404, or Graph's 1x1 placeholder with an empty etag).
async fn current_etag(shared: &Arc<Shared>, target: &Target, what: &str) -> Sent<Option<String>> {
    match with_retries(shared, what, || shared.graph.photo_meta(target)).await {
        Sent::Done(meta) => {
            let etag = meta.etag.filter(|e| !e.is_empty());
            Sent::Done(etag.filter(|_| meta.id.as_deref() != Some("1x1")))
        }
        Sent::Failed(e, _, _) if e.status() == Some(404) => Sent::Done(None),
        Sent::Failed(e, class, attempts) => Sent::Failed(e, class, attempts),
        Sent::Stopped => Sent::Stopped,
    }
}

async fn delete(shared: &Arc<Shared>, job: &Job) {
    let outcome = with_retries(shared, &job.path, || shared.graph.delete_photo(&job.target)).await;
    let (status, request_id) = match outcome {
        Sent::Done(reply) => (reply.status, reply.request_id),
        // Nothing to delete is what we wanted.
        Sent::Failed(
            GraphError::Status {
                status: 404,
                request_id,
                ..
            },
            _,
            _,
        ) => (404, request_id),
        Sent::Failed(e, class, attempts) => {
            fail_graph(shared, job, &e, class, attempts).await;
            return;
        }
        Sent::Stopped => return,
    };
    Stats::add(&shared.stats.deleted, 1);
    shared.stats.row(Row {
        path: job.path.clone(),
        target: job.key.clone(),
        action: "delete",
        result: "deleted".into(),
        request_id: request_id.clone(),
        ..Row::default()
    });
    tracing::info!(path = %job.path, request_id = request_id.as_deref().unwrap_or(""), "photo deleted");
    send(
        shared,
        Op::Deleted {
            target_key: job.key.clone(),
            kind: job.target.kind.as_str(),
            path: job.path.clone(),
            http_status: status,
            request_id,
            now: now_ms(),
        },
    )
    .await;
}

enum Sent<T = crate::graph::Reply> {
    Done(T),
    Failed(GraphError, FailureClass, u32),
    /// Cancelled, or a fatal error stopped the run.
    Stopped,
}

/// Sends a request until it succeeds or its error class says to stop: throttling closes the
/// shared gate and retries (up to a generous cap), transient errors back off up to
/// `max_attempts`, permanent ones return at once, a fatal one stops the run.
async fn with_retries<T, F, Fut>(shared: &Arc<Shared>, what: &str, mut send: F) -> Sent<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, GraphError>>,
{
    let mut attempts = 0u32;
    let mut throttled = 0u32;
    loop {
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return Sent::Stopped,
            () = shared.limiter.acquire() => {}
        }
        attempts += 1;
        let e = match send().await {
            Ok(reply) => {
                shared.limiter.succeeded();
                return Sent::Done(reply);
            }
            Err(e) => e,
        };
        match e.class() {
            ErrorClass::Fatal => {
                tracing::error!(error = %e, "fatal error; stopping");
                let mut fatal = shared
                    .fatal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if fatal.is_none() {
                    *fatal = Some(match e {
                        GraphError::Auth(a) => EngineError::Auth(a),
                        other => EngineError::Graph(other),
                    });
                }
                drop(fatal);
                shared.cancel.cancel();
                return Sent::Stopped;
            }
            ErrorClass::Throttled(retry_after) => {
                throttled += 1;
                attempts -= 1;
                Stats::add(&shared.stats.throttled, 1);
                let wait = shared.limiter.throttled(retry_after);
                tracing::warn!(
                    status = e.status().unwrap_or(0),
                    retry_after_ms = wait.as_millis() as u64,
                    rate_per_s = shared.limiter.current_rate(),
                    request_id = e.request_id().unwrap_or(""),
                    "throttled; every worker pauses"
                );
                if throttled >= MAX_THROTTLED_PER_ITEM {
                    return Sent::Failed(e, FailureClass::Transient, attempts);
                }
            }
            ErrorClass::Transient => {
                if attempts >= shared.cfg.upload.max_attempts {
                    tracing::warn!(what, attempts, error = %e, "giving up for now");
                    return Sent::Failed(e, FailureClass::Transient, attempts);
                }
                Stats::add(&shared.stats.retries, 1);
                let wait = backoff(
                    attempts,
                    Duration::from_millis(500),
                    Duration::from_secs(60),
                );
                tracing::info!(attempt = attempts, retry_in_ms = wait.as_millis() as u64, error = %e, "retrying");
                tokio::select! {
                    () = shared.cancel.cancelled() => return Sent::Stopped,
                    () = tokio::time::sleep(wait) => {}
                }
            }
            ErrorClass::Permanent => {
                tracing::warn!(what, error = %e, "request refused");
                return Sent::Failed(e, FailureClass::Permanent, attempts);
            }
        }
    }
}

/// No user has the value yet (a new hire whose account is not there), or Graph does not know
/// the user yet: look again every `parked_retry`, for `parked_max_age` from the first time, then
/// give up with a permanent failure.
async fn park(
    shared: &Arc<Shared>,
    job: &Job,
    reason: &str,
    message: String,
    e: Option<&GraphError>,
) {
    let sync = &shared.cfg.sync;
    let now = now_ms();
    let since = match &shared.ledger {
        Some(l) => l.parked_since(&job.key).await.ok().flatten(),
        None => None,
    }
    .unwrap_or(now);
    let max_age = millis(sync.parked_max_age);
    let gave_up = now.saturating_sub(since) > max_age;
    let message = if gave_up {
        format!(
            "{message} (looked for since {}; parked_max_age {} is over)",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(since as u64)
            ),
            humantime::format_duration(sync.parked_max_age)
        )
    } else {
        message
    };
    let f = match e {
        Some(e) => graph_failure(e, reason, message),
        None => local_failure(reason, message),
    };
    let status = e.and_then(GraphError::status);
    if gave_up {
        tracing::warn!(path = %job.path, target = %job.key, message = %f.message, "giving up on parked photo");
        record_failure(shared, job, FailureClass::Permanent, f, status, 0).await;
    } else {
        tracing::info!(path = %job.path, target = %job.key, message = %f.message, retry_in = %humantime::format_duration(sync.parked_retry), "parked until the user exists");
        record_failure(shared, job, FailureClass::Parked, f, status, 0).await;
    }
}

/// A 404 for a user (not a mailbox error): the account may be minutes old (Graph and Exchange
/// take a while to know a new user), or be created later by HR's provisioning. Parked, like a
/// lookup that found no one, rather than failed for good.
fn user_not_there_yet(target: &Target, e: &GraphError) -> bool {
    target.kind == crate::config::TargetKind::User
        && e.status() == Some(404)
        && !matches!(
            e.code(),
            Some("ErrorNonExistentMailbox" | "MailboxNotHostedInExchangeOnline")
        )
}

/// A duration as the ledger's milliseconds (saturating: configs cap them far below).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A failure decided here rather than answered by Graph.
fn local_failure(reason: &str, message: String) -> Failure {
    Failure::local(String::new(), None, reason, message)
}

/// A failure Graph answered: its error code and request id travel with it.
fn graph_failure(e: &GraphError, reason: &str, message: String) -> Failure {
    Failure {
        code: e.code().map(ToOwned::to_owned),
        request_id: e.request_id().map(ToOwned::to_owned),
        ..local_failure(reason, message)
    }
}

/// A stable snake_case reason for a Graph error, for `status` and the summary.
fn graph_reason(e: &GraphError) -> String {
    match (e.status(), e.code()) {
        (_, Some(code)) if !code.is_empty() => code.to_owned(),
        (Some(404), _) => "not_found".into(),
        (Some(403), _) => "forbidden".into(),
        (Some(429), _) => "throttled".into(),
        (Some(s), _) => format!("http_{s}"),
        (None, _) => "network".into(),
    }
}

async fn fail_graph(
    shared: &Arc<Shared>,
    job: &Job,
    e: &GraphError,
    class: FailureClass,
    attempts: u32,
) {
    let f = graph_failure(e, &graph_reason(e), e.to_string());
    record_failure(shared, job, class, f, e.status(), attempts).await;
}

async fn record_failure(
    shared: &Arc<Shared>,
    job: &Job,
    class: FailureClass,
    f: Failure,
    http_status: Option<u16>,
    attempts: u32,
) {
    let now = now_ms();
    let after = match class {
        FailureClass::Transient => Some(shared.cfg.sync.retry_failed_after),
        FailureClass::Parked => Some(shared.cfg.sync.parked_retry),
        FailureClass::Permanent | FailureClass::Local => None,
    };
    let next_attempt_at = after.map(|d| now.saturating_add(millis(d)));
    let (content_hash, action) = match &job.action {
        Action::Upload { hash, .. } => (Some(hash.clone()), "upload"),
        Action::Delete => (None, "delete"),
    };
    let f = Failure {
        path: job.path.clone(),
        target: Some(job.key.clone()),
        ..f
    };
    send(
        shared,
        Op::Failed {
            target_key: job.key.clone(),
            kind: job.target.kind.as_str(),
            path: job.path.clone(),
            content_hash,
            fingerprint: shared.fingerprint.clone(),
            class,
            reason: f.reason.clone(),
            http_status,
            code: f.code.clone(),
            message: f.message.clone(),
            request_id: f.request_id.clone(),
            attempts,
            next_attempt_at,
            action,
            now,
        },
    )
    .await;
    if class == FailureClass::Parked {
        Stats::add(&shared.stats.parked, 1);
        shared.stats.row(Row {
            path: f.path,
            target: f.target.unwrap_or_default(),
            action: "skip",
            result: "parked".into(),
            error: Some(f.message),
            ..Row::default()
        });
    } else {
        shared.stats.fail_as(f, action);
    }
}

async fn send(shared: &Arc<Shared>, op: Op) {
    if shared
        .writer
        .send(WriterMsg::Op(Box::new(op)))
        .await
        .is_err()
    {
        tracing::error!("ledger writer gone; outcome not recorded");
    }
}

/// Applies ledger writes in batches: whatever has arrived since the last commit goes into one
/// transaction. A failed commit is fatal: the run stops rather than upload what it cannot record.
async fn writer(
    ledger: Ledger,
    mut rx: mpsc::Receiver<WriterMsg>,
    shared: Arc<Shared>,
) -> Result<(), StateError> {
    let weak = Arc::downgrade(&shared);
    drop(shared);
    let mut batch = Vec::with_capacity(512);
    let mut flushes = Vec::new();
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Op(op) => batch.push(*op),
                WriterMsg::Flush(done) => flushes.push(done),
            }
            if batch.len() < 1000 {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let applied = ledger.apply(&batch).await;
            if let Some(s) = weak.upgrade() {
                Stats::flag(&s.stats.database_ok, applied.is_ok());
            }
            if let Err(e) = applied {
                tracing::error!(error = %e, database = %ledger.path().display(), "cannot write the ledger; stopping");
                if let Some(s) = weak.upgrade() {
                    s.cancel.cancel();
                }
                return Err(e);
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    Ok(())
}
