//! After a whole walk: what the ledger knows that was not found is gone. The guard's facts are
//! gathered through the source layer, the decision is [`crate::engine::deletions`]'s.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::config::{OnDelete, TargetKind};
use crate::ledger::Op;
use crate::mapping::Target;
use crate::source::probe;

use crate::engine::conflicts::address;
use crate::engine::deletions::{self, Candidate, Facts, Gone};
use crate::engine::preview::Preview;
use crate::engine::worker::{Action, Job};
use crate::engine::PassReport;

use super::Planner;

impl Planner<'_> {
    pub(super) fn on_gone(&mut self, source: usize, path: &Path) {
        if let Some(p) = path.to_str() {
            self.forget_gone_skip(p);
            if self.snapshot.files.contains_key(p) {
                self.gone.push(Gone {
                    source,
                    path: p.to_owned(),
                });
            }
        }
    }

    /// After the walk: plans the deletions (see [`deletions`]), then forgets the gone files and
    /// queues the deletions it allows.
    pub(super) async fn deletions(&mut self) -> PassReport {
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
