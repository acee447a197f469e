//! The planner: one pass over what a [`Scope`] covers, in the order data moves. The walk (on
//! the blocking pool) streams what it finds; each photo is mapped to its target, checked for
//! conflicts, decided from its stat alone when possible ([`super::decide`]), otherwise read and
//! hashed (reads into buffers allocated here, on the planner's thread), and queued for the
//! workers, after a user lookup when its target needs one ([`super::lookups`]). After a whole
//! walk, what the ledger knows that was not found is gone ([`super::deletions`]).
//!
//! The planner reads the ledger's snapshot once per pass and writes only through the writer.
//! Everything a worker needs travels in its [`Job`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::config::SourceConfig;
use crate::graph::GraphError;
use crate::ledger::{now_ms, FastHash, Ledger, Op, Snapshot};
use crate::mapping::Rules;
use crate::report::Row;
use crate::source::{self, probe, FileEntry, Found};
use crate::stats::Stats;

use super::conflicts::Claims;
use super::decide::Policy;
use super::deletions::Gone;
use super::lookups::{Lookups, Resolutions};
use super::outcome::{ItemError, LocalProblem, Recorder};
use super::preview::Preview;
use super::queue::Queue;
use super::rules::RulesCache;
use super::worker::{Deps, Job};
use super::{millis, panic_message, EngineError, Order, PassOptions, PassReport, Scope};

mod by_content;
mod file;
mod gone;
mod read;
mod upload;

use self::by_content::Pending;
use self::read::{read, PendingRead, ReadDone};

/// Walk results queued while the ledger snapshot loads: at about 150 bytes each, 16 MiB at most.
const WALK_QUEUE: usize = 1 << 16;

/// What every pass plans with: the engine's parts the planner feeds.
pub struct Intake {
    pub deps: Arc<Deps>,
    pub queue: Arc<Queue<Job>>,
    /// Bytes of photos held in the queue, in KiB permits, so memory stays bounded whatever
    /// the size of the files.
    pub memory: Arc<Semaphore>,
    pub recorder: Recorder,
    pub sources: Arc<[SourceConfig]>,
    pub resolutions: Resolutions,
    pub rules: Arc<RulesCache>,
    /// Where a dry run's plan goes (the CLI prints it).
    pub previews: Option<mpsc::UnboundedSender<Preview>>,
    /// The engine only plans: no writer, no workers.
    pub dry_run: bool,
}

/// What the ledger knows, read once at the start of a pass.
#[derive(Default)]
struct LedgerView {
    snapshot: Snapshot,
    /// Parked targets → when they were first parked.
    parked_since: HashMap<String, i64>,
    /// Files the ledger maps to a shared target → their mtime, for those that exist.
    rival_mtimes: HashMap<String, i64>,
}

/// Plans one pass.
pub async fn run_pass(
    intake: &Intake,
    ledger: Option<&Ledger>,
    scope: Scope,
    opts: PassOptions,
) -> Result<PassReport, EngineError> {
    let rules = {
        let (cache, sources, stats) = (
            intake.rules.clone(),
            intake.sources.clone(),
            intake.recorder.stats.clone(),
        );
        tokio::task::spawn_blocking(move || cache.refresh(&sources, &stats))
            .await
            .map_err(|e| EngineError::Panicked {
                task: "mapping file reader",
                message: panic_message(e),
            })?
    };
    let whole_tree = matches!(scope, Scope::All);
    // The walk starts before the ledger snapshot is loaded and runs beside it; the queue
    // holds what it finds meanwhile (up to `WALK_QUEUE` entries).
    let (walkers, rx) = start_walks(intake, scope);
    let known = match ledger {
        Some(l) => load_known(l).await,
        None => Ok(LedgerView::default()),
    };
    let known = match known {
        Ok(k) => k,
        Err(e) => {
            drop(rx);
            join_walkers(walkers).await?;
            return Err(e);
        }
    };
    let mut planner = Planner::new(intake, &known, opts, whole_tree, rules);
    let feed = if opts.order == Order::NewestFirst {
        planner.newest_first(rx).await
    } else {
        Feed::Walk(rx)
    };
    planner.plan_all(feed).await;
    planner.resolve_lookups(None).await;
    planner.send_deferred().await;
    join_walkers(walkers).await?;
    if let Some(e) = planner.fatal.take() {
        return Err(EngineError::from_graph(e));
    }
    if whole_tree && !planner.budget_spent() && !intake.deps.cancel.is_cancelled() {
        planner.forget_unseen_skips().await;
    }
    Ok(if planner.budget_spent() {
        // Files after the budget were not looked at: they are not gone.
        PassReport {
            budget_reached: true,
            ..PassReport::default()
        }
    } else if intake.deps.cancel.is_cancelled() {
        PassReport::default()
    } else {
        planner.deletions().await
    })
}

fn start_walks(intake: &Intake, scope: Scope) -> (JoinSet<()>, mpsc::Receiver<Found>) {
    let (tx, rx) = mpsc::channel::<Found>(WALK_QUEUE);
    let mut walkers = JoinSet::new();
    match scope {
        Scope::Paths(paths) => {
            let roots: Vec<PathBuf> = intake.sources.iter().map(|s| s.root.clone()).collect();
            let tx = tx.clone();
            walkers.spawn_blocking(move || source::visit_paths(&roots, paths, &tx));
        }
        Scope::All => {
            for (n, src) in intake.sources.iter().enumerate() {
                let tx = tx.clone();
                let root = src.root.clone();
                let stats = intake.recorder.stats.clone();
                walkers.spawn_blocking(move || {
                    if let Err(e) = source::walk(n, &root, &tx) {
                        tracing::error!(root = %root.display(), error = %e, "source root unreadable");
                        let e = ItemError::from(LocalProblem::SourceUnreadable(e));
                        stats.fail(e.failure(root.display().to_string(), None));
                    }
                });
            }
        }
    }
    (walkers, rx)
}

async fn join_walkers(mut walkers: JoinSet<()>) -> Result<(), EngineError> {
    let mut result = Ok(());
    while let Some(r) = walkers.join_next().await {
        if let Err(e) = r {
            if e.is_panic() {
                result = Err(EngineError::Panicked {
                    task: "source walk",
                    message: panic_message(e),
                });
            }
        }
    }
    result
}

/// The snapshot, when parked targets were first parked, and the mtimes of files that share a
/// target (stat'ed through the source layer, on the blocking pool).
async fn load_known(ledger: &Ledger) -> Result<LedgerView, EngineError> {
    let started = std::time::Instant::now();
    let snapshot = ledger.snapshot().await?;
    tracing::debug!(
        files = snapshot.files.len(),
        targets = snapshot.targets.len(),
        ms = millis(started.elapsed()),
        "ledger snapshot loaded"
    );
    let parked_since = ledger
        .parked()
        .await?
        .into_iter()
        .filter_map(|p| Some((p.target, p.at?)))
        .collect();
    let shared: Vec<String> = snapshot
        .shared_targets
        .values()
        .flatten()
        .cloned()
        .collect();
    let rival_mtimes = if shared.is_empty() {
        HashMap::new()
    } else {
        tokio::task::spawn_blocking(move || probe::mtimes(&shared))
            .await
            .map_err(|e| EngineError::Panicked {
                task: "file stat",
                message: panic_message(e),
            })?
    };
    Ok(LedgerView {
        snapshot,
        parked_since,
        rival_mtimes,
    })
}

/// Where the planner's files come from: the walk as it goes, or (budgeted passes) the walk's
/// files sorted newest first.
enum Feed {
    Walk(mpsc::Receiver<Found>),
    Sorted(std::vec::IntoIter<FileEntry>),
}

impl Feed {
    async fn next(&mut self) -> Option<Found> {
        match self {
            Feed::Walk(rx) => rx.recv().await,
            Feed::Sorted(files) => files.next().map(Found::File),
        }
    }
}

struct Planner<'a> {
    intake: &'a Intake,
    snapshot: &'a Snapshot,
    parked_since: &'a HashMap<String, i64>,
    rival_mtimes: &'a HashMap<String, i64>,
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
    /// Known photo files that are gone.
    gone: Vec<Gone>,
    /// Files and folders the walk could not read: what the ledger knows under them is not gone.
    unreadable: Vec<PathBuf>,
    /// Ledger writes decided where nothing can be awaited, sent at the next await point.
    deferred: Vec<Op>,
    /// Nothing is written: a dry run, or no ledger yet.
    dry_run_ledger: bool,
    /// Per source: globs and mapping table.
    rules: Vec<Rules>,
    /// Uploads whose user must be looked up first, gathered so one request resolves many.
    lookups: Lookups,
    /// Uploads queued in this pass (for `max_uploads`).
    uploads_queued: u64,
    /// A lookup met a fatal error: the pass stops and returns it.
    fatal: Option<GraphError>,
}

impl<'a> Planner<'a> {
    fn new(
        intake: &'a Intake,
        known: &'a LedgerView,
        opts: PassOptions,
        whole_tree: bool,
        rules: Vec<Rules>,
    ) -> Self {
        Planner {
            intake,
            snapshot: &known.snapshot,
            parked_since: &known.parked_since,
            rival_mtimes: &known.rival_mtimes,
            opts,
            policy_now: now_ms(),
            seen: Claims::default(),
            seen_paths: HashSet::default(),
            whole_tree,
            root_files: vec![None; intake.sources.len()],
            gone: Vec::new(),
            unreadable: Vec::new(),
            deferred: Vec::new(),
            dry_run_ledger: intake.dry_run || intake.recorder.sink.is_none() || opts.dry_run,
            rules,
            lookups: Lookups::default(),
            uploads_queued: 0,
            fatal: None,
        }
    }

    fn stats(&self) -> &'a Stats {
        &self.intake.recorder.stats
    }

    fn policy(&self) -> Policy<'_> {
        Policy {
            fingerprint: &self.intake.recorder.fingerprint,
            force: self.opts.force,
            retry_transient_now: self.opts.retry_transient_now,
            now_ms: self.policy_now,
        }
    }

    fn source(&self, n: usize) -> &'a SourceConfig {
        &self.intake.sources[n]
    }

    fn budget_spent(&self) -> bool {
        self.opts
            .max_uploads
            .is_some_and(|max| self.uploads_queued >= max)
    }

    fn stopped(&self) -> bool {
        self.intake.deps.cancel.is_cancelled() || self.fatal.is_some()
    }

    /// Plans everything `feed` yields, reading up to a few files at a time.
    async fn plan_all(&mut self, mut feed: Feed) {
        // A budget spends itself in the order reads finish: one at a time keeps it newest first.
        let max_reads = if self.opts.max_uploads.is_some() {
            1
        } else {
            std::thread::available_parallelism().map_or(2, std::num::NonZero::get) * 2
        };
        let mut reads = FuturesUnordered::new();
        let mut walking = true;
        while walking || !reads.is_empty() {
            if self.stopped() {
                break;
            }
            if self.budget_spent() {
                walking = false;
                if reads.is_empty() {
                    break;
                }
            }
            tokio::select! {
                Some(done) = reads.next(), if !reads.is_empty() => reads.extend(self.after(done).await),
                found = feed.next(), if walking && reads.len() < max_reads => match found {
                    Some(found) => reads.extend(self.on_found(found)),
                    None => walking = false,
                },
            }
        }
        // Stopped early: the walk ends when its receiver is gone; reads are joined, not used.
        drop(feed);
        while reads.next().await.is_some() {}
    }

    /// One thing the walk found; a read to run when a photo's content has to be looked at.
    fn on_found(&mut self, found: Found) -> Option<Pending> {
        match found {
            Found::File(entry) => return self.on_file(entry),
            Found::Problem {
                path,
                problem,
                message,
            } => self.on_problem(&path, problem, message),
            Found::Gone { source, path } => self.on_gone(source, &path),
            Found::RootDone { source, files } => self.root_files[source] = Some(files),
        }
        None
    }

    /// Budgeted passes plan the newest files first: collects the walk (stat results only, no
    /// file contents), handles everything but files at once, and returns the files newest first.
    async fn newest_first(&mut self, mut rx: mpsc::Receiver<Found>) -> Feed {
        let mut files = Vec::new();
        while let Some(found) = rx.recv().await {
            match found {
                Found::File(entry) => files.push(entry),
                other => {
                    self.on_found(other);
                }
            }
        }
        files.sort_by(|a, b| {
            b.mtime_ns
                .cmp(&a.mtime_ns)
                .then_with(|| a.path.cmp(&b.path))
        });
        Feed::Sorted(files.into_iter())
    }

    fn row(&self, path: &str, target: &str, action: &'static str, result: &str, size: u64) {
        let stats = self.stats();
        if stats.reporting() {
            stats.row(Row {
                path: path.to_owned(),
                target: target.to_owned(),
                action,
                result: result.to_owned(),
                bytes_before: Some(size),
                ..Row::default()
            });
        }
    }

    /// A link the walk did not follow is a skip; a file or folder it could not read is a
    /// failure naming the path (see [`source::Problem::is_failure`]).
    fn on_problem(&mut self, path: &Path, problem: source::Problem, message: String) {
        let reason = problem.as_str();
        if problem.is_failure() {
            self.unreadable.push(path.to_owned());
            tracing::warn!(path = %path.display(), reason, %message, "cannot read");
            let e = ItemError::from(LocalProblem::Walk { message });
            self.fail(path.display().to_string(), None, &e);
        } else {
            tracing::warn!(path = %path.display(), reason, %message, "skipped");
            self.stats().skip(reason);
        }
    }

    fn fail(&self, path: impl Into<String>, key: Option<String>, e: &ItemError) {
        self.stats().fail(e.failure(path, key));
    }
}
