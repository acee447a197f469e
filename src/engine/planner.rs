//! The planner: one pass over what a [`Scope`] covers, in the order data moves. The walk (on
//! the blocking pool) streams what it finds; each photo is mapped to its target, checked for
//! conflicts, decided from its stat alone when possible ([`super::decide`]), otherwise read and
//! hashed (reads into buffers allocated here, on the planner's thread), and queued for the
//! workers, after a user lookup when its target needs one ([`super::lookups`]). After a whole
//! walk, what the ledger knows that was not found is gone ([`super::deletions`]).
//!
//! The planner reads the ledger's snapshot once per pass and writes only through the writer.
//! Everything a worker needs travels in its [`Job`].

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::{JoinError, JoinHandle, JoinSet};

use crate::config::{OnDelete, SourceConfig, TargetKind};
use crate::graph::GraphError;
use crate::ledger::{
    now_ms, ContentHash, FastHash, FileRow, Ledger, Op, Snapshot, TargetRow, TargetState,
};
use crate::mapping::{map_with, Mapped, Rules, Skip, Target};
use crate::report::Row;
use crate::source::{self, probe, FileEntry, Found};
use crate::stats::Stats;

use super::conflicts::{address, contest, ClaimKey, Claims, Contest};
use super::decide::{self, Decision, Known, Policy, Quick, Reason};
use super::deletions::{self, Candidate, Facts, Gone};
use super::lookups::{LookupCtx, Lookups, Resolutions};
use super::outcome::{ItemError, LocalProblem, MappingProblem, Recorder};
use super::preview::Preview;
use super::queue::Queue;
use super::rules::RulesCache;
use super::worker::{run_pipeline, Action, Deps, Job};
use super::{
    millis, panic_message, EngineError, Order, PassOptions, PassReport, Scope, MAX_INPUT_BYTES,
    MEMORY_BUDGET_KIB,
};

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

type ReadResult = (FileEntry, Target, std::io::Result<(Bytes, ContentHash)>);

/// A file being read and hashed on the blocking pool. It keeps the file's path and target, so
/// that a read that panicked is still counted against its file.
struct PendingRead {
    path: PathBuf,
    key: String,
    handle: JoinHandle<ReadResult>,
}

struct ReadDone {
    path: PathBuf,
    key: String,
    result: Result<ReadResult, JoinError>,
}

impl Future for PendingRead {
    type Output = ReadDone;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReadDone> {
        let result = std::task::ready!(Pin::new(&mut self.handle).poll(cx));
        Poll::Ready(ReadDone {
            path: std::mem::take(&mut self.path),
            key: std::mem::take(&mut self.key),
            result,
        })
    }
}

/// `std::fs::read` into a buffer the caller allocated.
fn read_into(path: &Path, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
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
                Some(done) = reads.next(), if !reads.is_empty() => self.after_read(done).await,
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
    fn on_found(&mut self, found: Found) -> Option<PendingRead> {
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

    fn on_gone(&mut self, source: usize, path: &Path) {
        if let Some(p) = path.to_str() {
            if self.snapshot.files.contains_key(p) {
                self.gone.push(Gone {
                    source,
                    path: p.to_owned(),
                });
            }
        }
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

    /// The target a file names, or `None` (counted as skipped or failed).
    fn map(&self, entry: &FileEntry) -> Option<Target> {
        let src = self.source(entry.source);
        match map_with(src, &self.rules[entry.source], entry.rel()) {
            Mapped::Skipped(why) => {
                self.stats().skip(why.as_str());
                if why == Skip::Excluded {
                    let path = entry.path.display().to_string();
                    self.row(&path, "", "skip", "excluded", entry.size);
                }
                None
            }
            Mapped::Invalid(e) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "no target for file");
                let e = ItemError::from(MappingProblem::Name(e));
                self.fail(entry.path.display().to_string(), None, &e);
                None
            }
            Mapped::Photo(t) => Some(t),
        }
    }

    /// Step 1: mapping, conflicts, and the stat-only check. Returns a read to run when the
    /// content has to be looked at.
    fn on_file(&mut self, entry: FileEntry) -> Option<PendingRead> {
        let target = self.map(&entry)?;
        Stats::add(&self.stats().files, 1);
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
        let path = self.readable_path(&entry, &key)?;
        let known = Known {
            file: known_file.map(|(_, f)| f),
            target: known_target.map(|(_, t)| t),
        };
        match decide::quick(&known, &key, entry.size, entry.mtime_ns, &self.policy()) {
            Quick::Unchanged => {
                Stats::add(&self.stats().unchanged, 1);
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
            Quick::Read => Some(read(entry, target, key)),
        }
    }

    /// The file's path as the ledger keeps it, if the file can be a photo at all.
    fn readable_path<'e>(&self, entry: &'e FileEntry, key: &str) -> Option<&'e str> {
        let Some(path) = entry.path.to_str() else {
            let e = ItemError::from(MappingProblem::PathNotUtf8);
            self.fail(entry.path.display().to_string(), Some(key.to_owned()), &e);
            return None;
        };
        if entry.size > MAX_INPUT_BYTES {
            let e = ItemError::from(LocalProblem::TooLarge { bytes: entry.size });
            self.fail(path, Some(key.to_owned()), &e);
            return None;
        }
        Some(path)
    }

    /// Two files for one target: the newest wins (see [`contest`]), the other is skipped and
    /// reported. Looks at files seen in this pass and at files the ledger knows.
    /// `known_file` and `known_target` are the snapshot's entries for `entry` and `key`.
    fn loses_conflict(
        &mut self,
        key: &str,
        entry: &FileEntry,
        known_file: Option<(&'a Arc<str>, &'a FileRow)>,
        known_target: Option<(&'a Arc<str>, &'a TargetRow)>,
    ) -> bool {
        let claim = ClaimKey::of(known_target.map(|(k, _)| k), key);
        let claimed = self.seen.get(&claim).map(|(m, p)| (*m, p.to_path_buf()));
        let rival_mtimes = self.rival_mtimes;
        let others = self.snapshot.files_of(key).iter().filter_map(|p| {
            rival_mtimes
                .get(p.as_str())
                .map(|m| (*m, Path::new(p.as_str())))
        });
        let mine = (entry.mtime_ns, entry.path.as_path());
        let claimed_ref = claimed.as_ref().map(|(m, p)| (*m, p.as_path()));
        match contest(mine, claimed_ref, others) {
            Contest::Alone | Contest::Same => {
                // Borrowed from the snapshot when it knows the path: most claims allocate nothing.
                let path = known_file.map_or_else(
                    || entry.path.clone().into(),
                    |(p, _)| Cow::Borrowed(Path::new(&**p)),
                );
                self.seen.insert(claim, (entry.mtime_ns, path));
                false
            }
            Contest::Wins { loser } => {
                conflict_warning(key, loser.1, &entry.path);
                self.stats().skip("conflict");
                self.seen.insert(claim, (mine.0, entry.path.clone().into()));
                false
            }
            Contest::Loses { winner } => {
                let winner = (winner.0, winner.1.to_path_buf());
                self.remember_loser(entry, key);
                let path = entry.path.display().to_string();
                self.row(&path, key, "skip", "conflict", entry.size);
                conflict_warning(key, &entry.path, &winner.1);
                self.stats().skip("conflict");
                self.seen.insert(claim, (winner.0, winner.1.into()));
                true
            }
        }
    }

    fn claim_key<'k>(&self, key: &'k str) -> ClaimKey<'k> {
        ClaimKey::of(
            self.snapshot.targets.get_key_value(key).map(|(k, _)| k),
            key,
        )
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
            self.intake.recorder.send(op).await;
        }
    }

    /// A failure whose retry is not due, or a parked photo whose next lookup is not due.
    fn not_due(&self, path: &str, key: &str, size: u64) {
        let parked = self.is_parked(key);
        let stats = self.stats();
        Stats::add(
            if parked {
                &stats.parked
            } else {
                &stats.pending
            },
            1,
        );
        let result = if parked { "parked" } else { "retry_later" };
        self.row(path, key, "skip", result, size);
    }

    fn is_parked(&self, key: &str) -> bool {
        self.snapshot
            .targets
            .get(key)
            .is_some_and(|t| t.state == TargetState::Parked)
    }

    fn known_bad(&self, path: &str, key: &str) {
        let t = self.snapshot.targets.get(key);
        let reason = t
            .and_then(|t| t.failure.as_ref()?.reason.as_deref())
            .unwrap_or("failed");
        let e = ItemError::from(LocalProblem::KnownBad {
            reason: reason.to_owned(),
        });
        self.fail(path, Some(key.to_owned()), &e);
    }

    /// Steps 2–4 once the content is read.
    async fn after_read(&mut self, done: ReadDone) {
        let (entry, target, read) = match done.result {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(path = %done.path.display(), error = %e, "read task failed");
                let e = ItemError::from(LocalProblem::Panicked {
                    task: "photo read",
                    message: panic_message(e),
                });
                self.fail(done.path.display().to_string(), Some(done.key), &e);
                return;
            }
        };
        let key = done.key;
        let path = entry.path.to_str().unwrap_or_default().to_owned();
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
                self.fail(path, Some(key), &ItemError::Io(e));
                return;
            }
        };
        Stats::add(&self.stats().bytes_read, bytes.len() as u64);
        self.record_file(&entry, &path, &key, &hash).await;
        let target_row = self.snapshot.targets.get(key.as_str());
        match decide::after_hash(target_row, &hash, &self.policy()) {
            Decision::Unchanged => {
                Stats::add(&self.stats().unchanged, 1);
                self.row(&path, &key, "none", "unchanged", entry.size);
            }
            Decision::KnownBad => self.known_bad(&path, &key),
            Decision::NotDue => self.not_due(&path, &key, entry.size),
            Decision::Upload(reason) if self.dry_run_ledger => {
                self.describe(&target, &path, bytes, reason).await;
            }
            Decision::Upload(reason) => {
                let up = (bytes, hash.to_hex().to_string(), reason);
                self.queue_upload(target, key, path, up).await;
            }
        }
    }

    async fn record_file(&self, entry: &FileEntry, path: &str, key: &str, hash: &ContentHash) {
        if self.dry_run_ledger {
            return;
        }
        let op = Op::File {
            path: path.to_owned(),
            source: self.source(entry.source).root.display().to_string(),
            size: entry.size as i64,
            mtime_ns: entry.mtime_ns,
            content_hash: Some(hash.to_hex().to_string()),
            target_key: Some(key.to_owned()),
            now: now_ms(),
        };
        self.intake.recorder.send(op).await;
    }

    async fn queue_upload(
        &mut self,
        target: Target,
        key: String,
        path: String,
        (bytes, hash, reason): (Bytes, String, Reason),
    ) {
        let kib = (bytes.len() / 1024 + 1).min(MEMORY_BUDGET_KIB) as u32;
        let Ok(memory) = self.intake.memory.clone().acquire_many_owned(kib).await else {
            return;
        };
        let parked_since = self.parked_since(&key);
        let job = Job {
            target,
            key,
            path,
            action: Action::Upload {
                hash,
                bytes,
                reason,
                _memory: memory,
            },
            parked_since,
        };
        self.enqueue(job).await;
    }

    /// When `key` was first parked, from the ledger; a parked target without that time is
    /// reported, and its clock starts again.
    fn parked_since(&self, key: &str) -> Option<i64> {
        let since = self.parked_since.get(key).copied();
        if since.is_none() && self.is_parked(key) {
            tracing::warn!(target = %key, "parked, but the ledger has no time it was first parked; parked_max_age counts from now");
        }
        since
    }

    /// Queues an upload, or holds it until its user is looked up.
    async fn enqueue(&mut self, mut job: Job) {
        if let Some(lookup) = job.target.lookup {
            let Some(id) = self.intake.resolutions.valid(&job.key, now_ms()) else {
                if self.lookups.hold(job, lookup) {
                    self.resolve_lookups(Some(lookup)).await;
                }
                return;
            };
            job.target = Target::user(&id);
        }
        self.push_upload(job).await;
    }

    /// Looks up the users of the uploads held for `lookup` (all kinds when `None`) and queues
    /// those found.
    async fn resolve_lookups(&mut self, lookup: Option<crate::mapping::Lookup>) {
        let intake = self.intake;
        let ctx = LookupCtx {
            deps: &intake.deps,
            recorder: &intake.recorder,
            cache: &intake.resolutions,
        };
        match self.lookups.resolve(lookup, &ctx).await {
            Ok(ready) => {
                for job in ready {
                    self.push_upload(job).await;
                }
            }
            Err(e) => {
                self.fatal.get_or_insert(e);
            }
        }
    }

    /// Queues an upload within the pass's budget; over it, the next run plans the file again.
    async fn push_upload(&mut self, job: Job) {
        if self.budget_spent() {
            return;
        }
        self.uploads_queued += 1;
        tokio::select! {
            _ = self.intake.queue.push(job) => {}
            () = self.intake.deps.cancel.cancelled() => {}
        }
    }

    /// Dry run: say what would be uploaded and what the image pipeline would make of it.
    async fn describe(&self, target: &Target, path: &str, bytes: Bytes, reason: Reason) {
        let stats = self.stats();
        let size = bytes.len() as u64;
        match run_pipeline(&self.intake.deps, bytes).await {
            Ok(p) => {
                Stats::add(&stats.pending, 1);
                let bytes_after = p.bytes.len() as u64;
                if stats.reporting() {
                    stats.row(Row {
                        path: path.to_owned(),
                        target: target.key(),
                        action: "upload",
                        result: format!("would_upload ({})", reason.as_str()),
                        bytes_before: Some(size),
                        bytes_after: Some(bytes_after),
                        ..Row::default()
                    });
                }
                self.preview(Preview::Upload {
                    target: target.to_string(),
                    path: path.to_owned(),
                    reason,
                    input_format: p.input_format,
                    input_size: p.input_size,
                    output_size: p.output_size,
                    bytes_before: size,
                    bytes_after,
                    orientation: p.orientation,
                    metadata_stripped: p.metadata_stripped,
                });
            }
            Err(e) => {
                self.preview(Preview::Refuse {
                    target: target.to_string(),
                    path: path.to_owned(),
                    message: e.to_string(),
                });
                self.fail(path, Some(target.key()), &e);
            }
        }
    }

    fn preview(&self, p: Preview) {
        if let Some(tx) = &self.intake.previews {
            let _ = tx.send(p);
        }
    }

    /// After the walk: plans the deletions (see [`deletions`]), then forgets the gone files and
    /// queues the deletions it allows.
    async fn deletions(&mut self) -> PassReport {
        if self.whole_tree {
            self.gather_unseen();
        }
        let mut report = PassReport::default();
        if self.gone.is_empty() {
            return report;
        }
        let (gone, withheld) =
            deletions::withhold(std::mem::take(&mut self.gone), &self.unreadable);
        if withheld > 0 {
            tracing::warn!(
                files = withheld,
                "photo files under paths that could not be read are kept, not taken for deleted"
            );
        }
        let candidates = deletions::candidates(&gone, self.snapshot, |k| {
            self.seen.get(&self.claim_key(k)).is_some()
        });
        let sync = &self.intake.recorder.sync;
        let facts = self.gather_facts(&candidates, sync.on_delete).await;
        let v = deletions::decide(
            &gone,
            candidates,
            &facts,
            sync.on_delete,
            sync.max_deletes_per_pass,
        );
        self.log_guard(&v);
        report.deletions_refused = v.refused;
        if v.over_limit.is_some() {
            self.stats().skip("delete_refused");
            return report;
        }
        if !self.dry_run_ledger {
            for path in v.forget {
                self.intake.recorder.send(Op::ForgetFile { path }).await;
            }
        }
        for c in &v.kept {
            tracing::info!(path = %c.path, target = %c.key, "photo file removed; the photo in Graph is kept (sync.on_delete = \"keep\")");
        }
        for c in v.delete {
            if self.intake.deps.cancel.is_cancelled() {
                break;
            }
            report.deletions += usize::from(self.delete(c).await);
        }
        report
    }

    /// What the ledger knows under roots whose walk completed, and this pass did not find.
    fn gather_unseen(&mut self) {
        let roots: Vec<String> = self
            .intake
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
                self.gone.push(Gone {
                    source: n,
                    path: path.to_string(),
                });
            }
        }
    }

    /// The file-system facts the deletion guard needs, stat'ed through the source layer on the
    /// blocking pool. A probe that fails counts everything as present: nothing is deleted.
    async fn gather_facts(&self, candidates: &[Candidate], on_delete: OnDelete) -> Facts {
        let others: Vec<String> = candidates.iter().flat_map(|c| c.others.clone()).collect();
        let mut probe_roots: Vec<(usize, PathBuf)> = Vec::new();
        if on_delete == OnDelete::Delete && !self.whole_tree {
            // The watcher reported paths, not the state of the root: files deleted one by one
            // (a share wiped, or unmounted under the watch) would otherwise pass as ordinary
            // deletions, a few per pass.
            let mut seen = HashSet::new();
            for c in candidates {
                if seen.insert(c.source) {
                    probe_roots.push((c.source, self.source(c.source).root.clone()));
                }
            }
        }
        let mut facts = Facts::default();
        if self.whole_tree {
            facts.emptied = (0..self.root_files.len())
                .filter(|n| self.root_files[*n] == Some(0))
                .collect();
        }
        if others.is_empty() && probe_roots.is_empty() {
            return facts;
        }
        let all = (
            others.clone(),
            probe_roots.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        );
        let probed = tokio::task::spawn_blocking(move || {
            (
                probe::mtimes(&others).into_keys().collect(),
                probe::emptied(&probe_roots),
            )
        })
        .await;
        let (existing, emptied): (HashSet<String>, Vec<usize>) = probed.unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot look at the tree; nothing is deleted");
            (all.0.into_iter().collect(), all.1)
        });
        facts.existing = existing;
        facts.emptied.extend(emptied);
        facts
    }

    fn log_guard(&self, v: &deletions::Verdict) {
        let sync = &self.intake.recorder.sync;
        for n in &v.empty_roots {
            let root = self.source(*n).root.display();
            if sync.on_delete == OnDelete::Delete {
                tracing::error!(%root, "source root is empty but the ledger knows photos under it; is the share mounted? refusing to delete any photo");
            } else {
                tracing::warn!(%root, "source root is empty but the ledger knows photos under it; is the share mounted? keeping their records until it is back");
            }
        }
        if let Some(n) = v.over_limit {
            tracing::error!(
                deletions = n,
                limit = sync.max_deletes_per_pass,
                "refusing to delete this many photos in one pass (sync.max_deletes_per_pass); if this is intended, raise the limit"
            );
        }
    }

    /// Queues (or, in a dry run, previews) one deletion; `false` when it cannot be made.
    async fn delete(&self, c: Candidate) -> bool {
        let Some(mut target) = Target::from_key(&c.key) else {
            return false;
        };
        if target.lookup.is_some() {
            // Named by mail or employee id: delete where the photo went, or not at all.
            let Some(id) = self.intake.resolutions.any(&c.key) else {
                tracing::warn!(path = %c.path, target = %c.key, "photo file removed, but its user's id is no longer cached; the photo in Graph is kept");
                return false;
            };
            target = Target::user(&id);
        }
        if target.kind == TargetKind::Contact {
            tracing::info!(path = %c.path, target = %c.key, "contact photos cannot be deleted through Graph; left as is");
            return false;
        }
        if self.dry_run_ledger {
            self.preview(Preview::Delete {
                key: c.key,
                path: c.path,
            });
            return true;
        }
        let job = Job {
            target,
            key: c.key,
            path: c.path,
            action: Action::Delete,
            parked_since: None,
        };
        tokio::select! {
            _ = self.intake.queue.push(job) => {}
            () = self.intake.deps.cancel.cancelled() => {}
        }
        true
    }
}

fn conflict_warning(key: &str, loser: &Path, winner: &Path) {
    tracing::warn!(
        target = key,
        path = %loser.display(),
        winner = %winner.display(),
        "two files name one target; the newest wins"
    );
}

/// Reads and hashes `entry` on the blocking pool. The buffer is allocated here, on a runtime
/// thread, not on whichever of the blocking pool's threads reads into it: each of those would
/// keep its own pages of photo-sized blocks (a touched rescan's RSS grew by a fifth).
fn read(entry: FileEntry, target: Target, key: String) -> PendingRead {
    let cap = usize::try_from(entry.size).map_or(0, |n| n.saturating_add(1));
    let buf = Vec::with_capacity(cap);
    let path = entry.path.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let read = read_into(&entry.path, buf).map(|b| {
            let hash = blake3::hash(&b);
            (Bytes::from(b), hash)
        });
        (entry, target, read)
    });
    PendingRead { path, key, handle }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_read_that_panicked_still_names_its_file() {
        let handle: JoinHandle<ReadResult> = tokio::spawn(async { panic!("disk on fire") });
        let done = PendingRead {
            path: PathBuf::from("/photos/alice.jpg"),
            key: "user:alice@contoso.com".into(),
            handle,
        }
        .await;
        assert_eq!(done.path, Path::new("/photos/alice.jpg"));
        assert_eq!(done.key, "user:alice@contoso.com");
        let e = done.result.err().map(panic_message);
        assert_eq!(e.as_deref(), Some("disk on fire"));
    }
}
