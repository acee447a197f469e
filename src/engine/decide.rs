//! The planner's decision for one photo file, cheapest test first. Pure: no I/O.
//!
//! 1. Size and mtime equal to the ledger's row, and the target's last successful upload has the
//!    same content hash and pipeline fingerprint → unchanged, without reading the file.
//! 2. Otherwise the file is read and hashed; a hash equal to the last successful upload (same
//!    fingerprint) → unchanged (only the stat is refreshed).
//! 3. A permanent failure recorded for this exact content → skipped until the file changes or an
//!    operator runs `retry`.
//! 4. Everything else → upload, with the reason (new, changed, forced, pipeline changed, retry).

use crate::ledger::{ContentHash, FailureClass, FileRow, LastFailure, TargetRow, TargetState};

const NO_FAILURE: LastFailure = LastFailure {
    hash: None,
    fingerprint: None,
    class: None,
    reason: None,
    next_attempt_at: None,
};

/// Why a photo is uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    New,
    Changed,
    Forced,
    PipelineChanged,
    Retry,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::New => "new",
            Reason::Changed => "changed",
            Reason::Forced => "forced",
            Reason::PipelineChanged => "pipeline changed",
            Reason::Retry => "retry",
        }
    }
}

/// The outcome of step 1 (stat only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quick {
    Unchanged,
    /// A permanent failure is recorded for this content; not retried.
    KnownBad,
    /// A transient failure is recorded and its retry is not due yet.
    NotDue,
    /// The content has to be read.
    Read,
}

/// What the ledger says about a file and its target, for one decision.
pub struct Known<'a> {
    pub file: Option<&'a FileRow>,
    pub target: Option<&'a TargetRow>,
}

pub struct Policy<'a> {
    pub fingerprint: &'a str,
    pub force: bool,
    /// Retry transient failures now even when their `next_attempt_at` lies ahead (backfill).
    pub retry_transient_now: bool,
    pub now_ms: i64,
}

/// Step 1: decide from the stat alone when possible.
pub fn quick(
    known: &Known<'_>,
    target_key: &str,
    size: u64,
    mtime_ns: i64,
    policy: &Policy<'_>,
) -> Quick {
    if policy.force {
        return Quick::Read;
    }
    let Some(file) = known.file else {
        return Quick::Read;
    };
    let same_stat = file.size == size as i64
        && file.mtime_ns == mtime_ns
        && file.target_key.as_deref() == Some(target_key);
    let (Some(hash), true) = (file.content_hash, same_stat) else {
        return Quick::Read;
    };
    match after_hash(known.target, &hash, policy) {
        Decision::Unchanged => Quick::Unchanged,
        Decision::KnownBad => Quick::KnownBad,
        Decision::NotDue => Quick::NotDue,
        Decision::Upload(_) => Quick::Read,
    }
}

/// Steps 2–4, once the content hash is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Unchanged,
    KnownBad,
    NotDue,
    Upload(Reason),
}

pub fn after_hash(target: Option<&TargetRow>, hash: &ContentHash, policy: &Policy<'_>) -> Decision {
    if policy.force {
        return Decision::Upload(Reason::Forced);
    }
    let Some(t) = target else {
        return Decision::Upload(Reason::New);
    };
    let fp = Some(policy.fingerprint);
    if t.state == TargetState::Synced && t.last_hash.as_ref() == Some(hash) {
        return if t.last_fingerprint.as_deref() == fp {
            Decision::Unchanged
        } else {
            Decision::Upload(Reason::PipelineChanged)
        };
    }
    let failure = t.failure.as_deref().unwrap_or(&NO_FAILURE);
    if t.state == TargetState::Failed && failure.hash.as_ref() == Some(hash) {
        let same_fp = failure.fingerprint.as_deref() == fp;
        match failure.class {
            Some(FailureClass::Permanent | FailureClass::Local) if same_fp => {
                return Decision::KnownBad
            }
            Some(FailureClass::Transient)
                if same_fp
                    && !policy.retry_transient_now
                    && failure.next_attempt_at.is_some_and(|at| at > policy.now_ms) =>
            {
                return Decision::NotDue
            }
            _ => return Decision::Upload(Reason::Retry),
        }
    }
    if t.state == TargetState::Parked && failure.hash.as_ref() == Some(hash) {
        // The user did not exist at the last lookup: look again when due (a backfill: now).
        if !policy.retry_transient_now
            && failure.next_attempt_at.is_some_and(|at| at > policy.now_ms)
        {
            return Decision::NotDue;
        }
        return Decision::Upload(Reason::Retry);
    }
    if t.state == TargetState::Pending {
        // An operator cleared a failure with `photosync retry`.
        return Decision::Upload(Reason::Retry);
    }
    if t.last_hash.is_none() {
        return Decision::Upload(Reason::New);
    }
    Decision::Upload(Reason::Changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(content: &str) -> ContentHash {
        blake3::hash(content.as_bytes())
    }

    fn policy(force: bool) -> Policy<'static> {
        Policy {
            fingerprint: "fp1",
            force,
            retry_transient_now: false,
            now_ms: 1000,
        }
    }

    fn synced(hash: &str, fp: &str) -> TargetRow {
        TargetRow {
            state: TargetState::Synced,
            last_hash: Some(h(hash)),
            last_fingerprint: Some(fp.into()),
            ..TargetRow::default()
        }
    }

    fn file(size: i64, mtime: i64, hash: &str) -> FileRow {
        FileRow {
            source: std::sync::Arc::from("/r"),
            size,
            mtime_ns: mtime,
            content_hash: Some(h(hash)),
            target_key: Some("user:a@x".into()),
        }
    }

    #[test]
    fn unchanged_stat_and_synced_hash_needs_no_read() {
        let f = file(10, 5, "h");
        let t = synced("h", "fp1");
        let k = Known {
            file: Some(&f),
            target: Some(&t),
        };
        assert_eq!(
            quick(&k, "user:a@x", 10, 5, &policy(false)),
            Quick::Unchanged
        );
        assert_eq!(quick(&k, "user:a@x", 10, 6, &policy(false)), Quick::Read);
        assert_eq!(quick(&k, "user:b@x", 10, 5, &policy(false)), Quick::Read);
        assert_eq!(quick(&k, "user:a@x", 10, 5, &policy(true)), Quick::Read);
    }

    #[test]
    fn hash_decides_after_a_touch() {
        let t = synced("h", "fp1");
        assert_eq!(
            after_hash(Some(&t), &h("h"), &policy(false)),
            Decision::Unchanged
        );
        assert_eq!(
            after_hash(Some(&t), &h("h2"), &policy(false)),
            Decision::Upload(Reason::Changed)
        );
        assert_eq!(
            after_hash(Some(&synced("h", "fp0")), &h("h"), &policy(false)),
            Decision::Upload(Reason::PipelineChanged)
        );
        assert_eq!(
            after_hash(None, &h("h"), &policy(false)),
            Decision::Upload(Reason::New)
        );
        assert_eq!(
            after_hash(Some(&t), &h("h"), &policy(true)),
            Decision::Upload(Reason::Forced)
        );
    }

    #[test]
    fn failures_are_skipped_or_retried_by_class() {
        let failed = |class: &'static str, next: Option<i64>| TargetRow {
            state: TargetState::Failed,
            failure: Some(Box::new(LastFailure {
                hash: Some(h("h")),
                fingerprint: Some("fp1".into()),
                class: class.parse().ok(),
                next_attempt_at: next,
                ..LastFailure::default()
            })),
            ..TargetRow::default()
        };
        let p = policy(false);
        assert_eq!(
            after_hash(Some(&failed("permanent", None)), &h("h"), &p),
            Decision::KnownBad
        );
        assert_eq!(
            after_hash(Some(&failed("permanent", None)), &h("h2"), &p),
            Decision::Upload(Reason::New)
        );
        assert_eq!(
            after_hash(Some(&failed("transient", Some(2000))), &h("h"), &p),
            Decision::NotDue
        );
        assert_eq!(
            after_hash(Some(&failed("transient", Some(500))), &h("h"), &p),
            Decision::Upload(Reason::Retry)
        );
        let now = Policy {
            retry_transient_now: true,
            ..policy(false)
        };
        assert_eq!(
            after_hash(Some(&failed("transient", Some(2000))), &h("h"), &now),
            Decision::Upload(Reason::Retry)
        );
    }
}
