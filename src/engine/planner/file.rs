//! One file: its target (or why it has none), conflicts, the stat-only check, then (once read
//! and hashed) the decision to upload, skip or count it unchanged. Files whose name is not a
//! photo's take a detour through [`super::by_content`] first.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::ledger::{now_ms, ContentHash, FileRow, Op, Snapshot, TargetRow, TargetState};
use crate::mapping::{map_with, Mapped, Target};
use crate::source::FileEntry;
use crate::stats::Stats;

use crate::engine::conflicts::{address, contest, ClaimKey, Contest};
use crate::engine::decide::{self, Decision, Known, Quick, Reason};
use crate::engine::outcome::{ItemError, LocalProblem, MappingProblem};
use crate::engine::worker::{Action, Job};
use crate::engine::{panic_message, MAX_INPUT_BYTES, MEMORY_BUDGET_KIB};

use super::{read, Pending, PendingRead, Planner, ReadDone};

impl<'a> Planner<'a> {
    /// What a file is: `Photo` or `ByContent` with its target, or `None` (counted as skipped or
    /// failed).
    fn map(&mut self, entry: &FileEntry) -> Option<Mapped> {
        let src = self.source(entry.source);
        match map_with(src, &self.rules[entry.source], entry.rel()) {
            Mapped::Skipped(why) => {
                self.skip_file(entry, why);
                None
            }
            Mapped::Invalid(e) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "no target for file");
                let e = ItemError::from(MappingProblem::Name(e));
                self.fail(entry.path.display().to_string(), None, &e);
                None
            }
            photo => Some(photo),
        }
    }

    /// Step 1: mapping; a photo's name goes on to [`Self::on_photo`], another name to the
    /// check of its content ([`Self::on_other_name`]). Returns a read to run when the content
    /// has to be looked at.
    pub(super) fn on_file(&mut self, entry: FileEntry) -> Option<Pending> {
        match self.map(&entry)? {
            Mapped::Photo(target) => self.on_photo(entry, target).map(Pending::Read),
            Mapped::ByContent(target) => self.on_other_name(entry, target),
            Mapped::Skipped(_) | Mapped::Invalid(_) => None,
        }
    }

    /// Conflicts and the stat-only check of a photo. Returns a read to run when the content
    /// has to be looked at.
    pub(super) fn on_photo(&mut self, entry: FileEntry, target: Target) -> Option<PendingRead> {
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

    pub(super) fn claim_key<'k>(&self, key: &'k str) -> ClaimKey<'k> {
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

    pub(super) async fn send_deferred(&mut self) {
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
    pub(super) async fn after_read(&mut self, done: ReadDone) {
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
        let (bytes, hash) = match read {
            Ok(r) => r,
            Err(e) => {
                self.send_deferred().await;
                tracing::warn!(%path, error = %e, "cannot read photo");
                self.fail(path, Some(key), &ItemError::Io(e));
                return;
            }
        };
        let gone_off = self.no_longer_a_photo(&entry, &bytes);
        self.send_deferred().await;
        if gone_off {
            return;
        }
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
}

fn conflict_warning(key: &str, loser: &Path, winner: &Path) {
    tracing::warn!(
        target = key,
        path = %loser.display(),
        winner = %winner.display(),
        "two files name one target; the newest wins"
    );
}
