//! What a pass deletes, decided as pure functions over facts gathered beforehand.
//!
//! After a walk, what the ledger knows that was not found is gone. The ledger forgets those
//! files; with `on_delete = "delete"` their targets' photos are deleted, unless that would be
//! more than `max_deletes_per_pass` or a root came back empty (an unmounted share looks like a
//! tree whose every photo was deleted). Which files still exist and which roots look emptied
//! are facts of the file system, gathered through [`crate::source::probe`] before [`decide`].

use std::collections::{BTreeSet, HashSet};

use crate::config::OnDelete;
use crate::ledger::{Snapshot, TargetState};

/// A photo file that is gone, under source `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    pub source: usize,
    pub path: String,
}

/// A gone file whose target's photo came from it: deleting the photo is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: usize,
    pub path: String,
    pub key: String,
    /// Other files the ledger maps to the same target: if one still exists, it names the
    /// target (a conflict, or a rename within it) and the photo stays.
    pub others: Vec<String>,
}

/// The candidates among `gone`: files whose target is synced from that very file and that no
/// file seen in this pass claims (`claimed`).
pub fn candidates(
    gone: &[Gone],
    snapshot: &Snapshot,
    claimed: impl Fn(&str) -> bool,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for g in gone {
        let Some(key) = snapshot
            .files
            .get(g.path.as_str())
            .and_then(|f| f.target_key.as_deref())
        else {
            continue;
        };
        let synced = snapshot.targets.get(key).is_some_and(|t| {
            t.state == TargetState::Synced && t.path.as_deref() == Some(g.path.as_str())
        });
        if !synced || claimed(key) {
            continue;
        }
        out.push(Candidate {
            source: g.source,
            path: g.path.clone(),
            key: key.to_owned(),
            others: snapshot
                .files_of(key)
                .iter()
                .filter(|p| **p != g.path)
                .cloned()
                .collect(),
        });
    }
    out
}

/// `gone` less the files at or under a path the walk could not read (a folder whose
/// permissions changed is not a folder whose photos were deleted), and how many were withheld.
pub fn withhold(gone: Vec<Gone>, unreadable: &[std::path::PathBuf]) -> (Vec<Gone>, usize) {
    if unreadable.is_empty() {
        return (gone, 0);
    }
    let before = gone.len();
    let kept: Vec<Gone> = gone
        .into_iter()
        .filter(|g| {
            !unreadable
                .iter()
                .any(|u| std::path::Path::new(&g.path).starts_with(u))
        })
        .collect();
    let withheld = before - kept.len();
    (kept, withheld)
}

/// What the file system says, gathered before deciding.
#[derive(Debug, Default)]
pub struct Facts {
    /// Which of the candidates' `others` exist.
    pub existing: HashSet<String>,
    /// Roots that look emptied: no file found by a whole-tree walk, or (a watcher pass, deleting)
    /// unreadable or holding no file at all.
    pub emptied: HashSet<usize>,
}

/// The decision.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Files the ledger forgets.
    pub forget: Vec<String>,
    /// Photos to delete.
    pub delete: Vec<Candidate>,
    /// Photos kept because `on_delete = "keep"`.
    pub kept: Vec<Candidate>,
    /// Roots that looked emptied: nothing under them is deleted or forgotten.
    pub empty_roots: BTreeSet<usize>,
    /// More deletions than the limit: nothing is deleted, nor forgotten.
    pub over_limit: Option<usize>,
    /// Deletions refused (by an empty root or the limit).
    pub refused: usize,
}

/// Decides what to forget and delete.
pub fn decide(
    gone: &[Gone],
    candidates: Vec<Candidate>,
    facts: &Facts,
    on_delete: OnDelete,
    max_per_pass: usize,
) -> Verdict {
    let (deletes, _still_named): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .partition(|c| !c.others.iter().any(|o| facts.existing.contains(o)));
    let mut v = Verdict::default();
    if on_delete == OnDelete::Delete {
        v.empty_roots = deletes
            .iter()
            .map(|c| c.source)
            .filter(|n| facts.emptied.contains(n))
            .collect();
        let total = deletes.len();
        let allowed: Vec<Candidate> = deletes
            .into_iter()
            .filter(|c| !v.empty_roots.contains(&c.source))
            .collect();
        if allowed.len() > max_per_pass {
            v.over_limit = Some(allowed.len());
            v.refused = total;
            return v;
        }
        v.refused = total - allowed.len();
        v.delete = allowed;
    } else {
        // Nothing is deleted in Graph either way, but forgetting the files of an unmounted
        // share would cost reading and hashing every one of them when it is back.
        v.empty_roots = gone
            .iter()
            .map(|g| g.source)
            .filter(|n| facts.emptied.contains(n))
            .collect();
        v.kept = deletes;
    }
    v.forget = gone
        .iter()
        .filter(|g| !v.empty_roots.contains(&g.source))
        .map(|g| g.path.clone())
        .collect();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{FileRow, TargetRow};
    use std::path::PathBuf;
    use std::sync::Arc;

    #[test]
    fn files_under_an_unreadable_path_are_not_gone() {
        let g = vec![
            gone(0, "/r/a/x.jpg"),
            gone(0, "/r/ab/y.jpg"),
            gone(0, "/r/b.jpg"),
            gone(0, "/r/c.jpg"),
        ];
        let unreadable = [PathBuf::from("/r/a"), PathBuf::from("/r/b.jpg")];
        let (kept, withheld) = withhold(g, &unreadable);
        assert_eq!(withheld, 2);
        let paths: Vec<&str> = kept.iter().map(|g| g.path.as_str()).collect();
        assert_eq!(paths, ["/r/ab/y.jpg", "/r/c.jpg"]);
    }

    fn gone(source: usize, path: &str) -> Gone {
        Gone {
            source,
            path: path.into(),
        }
    }

    fn cand(source: usize, path: &str, others: &[&str]) -> Candidate {
        Candidate {
            source,
            path: path.into(),
            key: format!("user:{path}"),
            others: others.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    fn snapshot(files: &[(&str, &str, &str)]) -> Snapshot {
        let mut s = Snapshot::default();
        for (path, key, state) in files {
            let key: Arc<str> = (*key).into();
            s.files.insert(
                (*path).into(),
                FileRow {
                    source: "/r".into(),
                    size: 1,
                    mtime_ns: 1,
                    content_hash: None,
                    target_key: Some(key.clone()),
                },
            );
            let state = if *state == "synced" {
                TargetState::Synced
            } else {
                TargetState::Failed
            };
            s.targets.insert(
                key,
                TargetRow {
                    state,
                    path: Some((*path).into()),
                    ..TargetRow::default()
                },
            );
        }
        s
    }

    #[test]
    fn only_synced_photos_from_that_file_and_unclaimed_targets_are_candidates() {
        let s = snapshot(&[
            ("/r/a", "user:a", "synced"),
            ("/r/b", "user:b", "failed"),
            ("/r/c", "user:c", "synced"),
        ]);
        let g = [
            gone(0, "/r/a"),
            gone(0, "/r/b"),
            gone(0, "/r/c"),
            gone(0, "/r/unknown"),
        ];
        let c = candidates(&g, &s, |k| k == "user:c");
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].path.as_str(), c[0].key.as_str()), ("/r/a", "user:a"));
    }

    #[test]
    fn keep_forgets_the_files_and_deletes_nothing() {
        let g = [gone(0, "/r/a")];
        let v = decide(
            &g,
            vec![cand(0, "/r/a", &[])],
            &Facts::default(),
            OnDelete::Keep,
            10,
        );
        assert_eq!(v.forget, ["/r/a"]);
        assert!(v.delete.is_empty());
        assert_eq!(v.kept.len(), 1);
        assert_eq!(v.refused, 0);
    }

    #[test]
    fn delete_deletes_within_the_limit() {
        let g = [gone(0, "/r/a"), gone(0, "/r/b")];
        let c = vec![cand(0, "/r/a", &[]), cand(0, "/r/b", &[])];
        let v = decide(&g, c, &Facts::default(), OnDelete::Delete, 2);
        assert_eq!(v.delete.len(), 2);
        assert_eq!(v.forget.len(), 2);
        assert_eq!(v.over_limit, None);
    }

    #[test]
    fn over_the_limit_nothing_is_deleted_nor_forgotten() {
        let g = [gone(0, "/r/a"), gone(0, "/r/b"), gone(0, "/r/c")];
        let c = vec![
            cand(0, "/r/a", &[]),
            cand(0, "/r/b", &[]),
            cand(0, "/r/c", &[]),
        ];
        let v = decide(&g, c, &Facts::default(), OnDelete::Delete, 2);
        assert_eq!(v.over_limit, Some(3));
        assert_eq!(v.refused, 3);
        assert!(v.delete.is_empty() && v.forget.is_empty());
    }

    #[test]
    fn an_emptied_root_deletes_and_forgets_nothing_under_it() {
        let g = [gone(0, "/r/a"), gone(1, "/s/b")];
        let c = vec![cand(0, "/r/a", &[]), cand(1, "/s/b", &[])];
        let facts = Facts {
            emptied: HashSet::from([0]),
            ..Facts::default()
        };
        let v = decide(&g, c, &facts, OnDelete::Delete, 10);
        assert_eq!(v.empty_roots, BTreeSet::from([0]));
        assert_eq!(v.refused, 1);
        assert_eq!(v.delete.len(), 1);
        assert_eq!(v.delete[0].path, "/s/b");
        assert_eq!(v.forget, ["/s/b"]);
    }

    #[test]
    fn an_emptied_root_keeps_its_records_even_when_keeping_photos() {
        let g = [gone(0, "/r/a")];
        let facts = Facts {
            emptied: HashSet::from([0]),
            ..Facts::default()
        };
        let v = decide(&g, vec![], &facts, OnDelete::Keep, 10);
        assert!(v.forget.is_empty());
        assert_eq!(v.empty_roots, BTreeSet::from([0]));
    }

    #[test]
    fn a_target_another_existing_file_names_keeps_its_photo() {
        let g = [gone(0, "/r/a")];
        let facts = Facts {
            existing: HashSet::from(["/r/a2".to_owned()]),
            ..Facts::default()
        };
        let v = decide(
            &g,
            vec![cand(0, "/r/a", &["/r/a2"])],
            &facts,
            OnDelete::Delete,
            10,
        );
        assert!(v.delete.is_empty());
        assert_eq!(v.forget, ["/r/a"]);
        // The other file is gone too: the photo goes.
        let v = decide(
            &g,
            vec![cand(0, "/r/a", &["/r/a2"])],
            &Facts::default(),
            OnDelete::Delete,
            10,
        );
        assert_eq!(v.delete.len(), 1);
    }
}
