//! What `status`, `retry`, `verify` and the daemon read from the ledger (and the one write
//! `retry` makes), each a query or two through the sqlx pool.

use std::collections::{BTreeMap, HashMap};

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use super::{now_ms, FailureClass, Ledger, LedgerError, TargetState};

/// One failed or parked target, as `status` shows it.
#[derive(Debug, Clone)]
pub struct FailureRow {
    pub target: String,
    pub path: Option<String>,
    /// `None` when none is recorded, or the text is one this version does not know.
    pub class: Option<FailureClass>,
    pub reason: Option<String>,
    pub http_status: Option<i64>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    pub attempts: i64,
    /// Unix ms of the failure (parked: when the photo was first parked).
    pub at: Option<i64>,
    /// Unix ms after which the daemon retries it (transient failures, parked photos).
    pub next_attempt_at: Option<i64>,
}

/// A looked-up user, as the resolution cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResolution {
    pub object_id: String,
    pub upn: String,
    pub expires_at: i64,
}

/// A synced target, as `verify` checks it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncedTarget {
    pub target_key: String,
    pub path: Option<String>,
    pub graph_id: Option<String>,
    pub media_etag: Option<String>,
}

impl Ledger {
    /// Counts of targets by state (for summaries and `status`), states without targets left
    /// out. Text this version does not know counts as pending, as the snapshot reads it.
    pub async fn counts_by_state(&self) -> Result<Vec<(TargetState, i64)>, LedgerError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM targets GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.read_error(e))?;
        let mut counts = BTreeMap::new();
        for (state, n) in rows {
            *counts.entry(TargetState::from_db(&state)).or_insert(0) += n;
        }
        Ok(counts.into_iter().collect())
    }

    /// Every failed target, oldest first.
    pub async fn failures(&self) -> Result<Vec<FailureRow>, LedgerError> {
        let rows = sqlx::query(
            "SELECT target_key, path, error_class, error_reason, error_status, error_code,
                    error_message, error_request_id, attempts, error_at, next_attempt_at
             FROM targets WHERE state = 'failed' ORDER BY error_at, target_key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))?;
        Ok(rows.iter().map(failure_row).collect())
    }

    /// Every parked target, first parked first.
    pub async fn parked(&self) -> Result<Vec<FailureRow>, LedgerError> {
        let rows = sqlx::query(
            "SELECT target_key, path, error_reason, error_message, error_at, next_attempt_at,
                    parked_since, error_status, error_code, error_request_id
             FROM targets WHERE state = 'parked' ORDER BY parked_since, target_key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))?;
        Ok(rows.iter().map(parked_row).collect())
    }

    /// Unix ms of the last successful upload, if any.
    pub async fn last_upload_at(&self) -> Result<Option<i64>, LedgerError> {
        sqlx::query_scalar("SELECT MAX(last_uploaded_at) FROM targets")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_error(e))
    }

    /// How many photo files the ledger knows.
    pub async fn file_count(&self) -> Result<i64, LedgerError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM files")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_error(e))
    }

    /// Clears the failure records of the given targets (target keys or file paths), or of every
    /// failed target when `targets` is empty, so the next pass attempts them again. Returns the
    /// target keys cleared.
    pub async fn clear_failures(&self, targets: &[String]) -> Result<Vec<String>, LedgerError> {
        let cleared = async {
            let mut tx = self.pool.begin().await?;
            let keys = failed_keys(&mut tx, targets).await?;
            for k in &keys {
                sqlx::query(
                    "UPDATE targets SET state = 'pending', attempts = 0, next_attempt_at = NULL,
                       failed_hash = NULL, failed_fingerprint = NULL, updated_at = ?2
                     WHERE target_key = ?1",
                )
                .bind(k)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(keys)
        };
        cleared.await.map_err(|e| self.write_error(e))
    }

    /// Every cached resolution that has not expired at `now`.
    pub async fn resolutions(
        &self,
        now: i64,
    ) -> Result<HashMap<String, CachedResolution>, LedgerError> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT lookup_key, object_id, upn, expires_at FROM resolutions WHERE expires_at > ?1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))?;
        Ok(rows
            .into_iter()
            .map(|(key, object_id, upn, expires_at)| {
                let r = CachedResolution {
                    object_id,
                    upn,
                    expires_at,
                };
                (key, r)
            })
            .collect())
    }

    #[cfg(test)]
    /// When `target_key` was first parked, if it is parked.
    pub(crate) async fn parked_since(&self, target_key: &str) -> Result<Option<i64>, LedgerError> {
        let since: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT parked_since FROM targets WHERE target_key = ?1 AND state = 'parked'",
        )
        .bind(target_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.read_error(e))?;
        Ok(since.flatten())
    }

    /// Files of targets whose retry is due at `now`: parked photos and transient failures.
    pub async fn due_paths(&self, now: i64) -> Result<Vec<String>, LedgerError> {
        sqlx::query_scalar(
            "SELECT path FROM targets WHERE path IS NOT NULL AND next_attempt_at <= ?1
               AND (state = 'parked' OR (state = 'failed' AND error_class = 'transient'))
               AND path IN (SELECT path FROM files)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))
    }

    /// Synced user and group targets, for `verify` (contact photos carry no etag to compare).
    pub async fn synced_targets(&self) -> Result<Vec<SyncedTarget>, LedgerError> {
        sqlx::query_as(
            "SELECT target_key, path, graph_id, media_etag FROM targets
             WHERE state = 'synced' AND kind IN ('user', 'group') ORDER BY target_key",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))
    }
}

/// The failed targets `retry` names (by key, path, or key in any case), or all of them.
async fn failed_keys(tx: &mut SqliteConnection, targets: &[String]) -> sqlx::Result<Vec<String>> {
    if targets.is_empty() {
        return sqlx::query_scalar("SELECT target_key FROM targets WHERE state = 'failed'")
            .fetch_all(tx)
            .await;
    }
    let mut keys = Vec::new();
    for t in targets {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT target_key FROM targets WHERE state = 'failed'
               AND (target_key = ?1 OR path = ?1 OR lower(target_key) = lower(?1))",
        )
        .bind(t)
        .fetch_all(&mut *tx)
        .await?;
        keys.extend(found);
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn failure_row(r: &SqliteRow) -> FailureRow {
    FailureRow {
        target: r.get(0),
        path: r.get(1),
        class: r.get::<Option<&str>, _>(2).and_then(FailureClass::from_db),
        reason: r.get(3),
        http_status: r.get(4),
        code: r.get(5),
        message: r.get(6),
        request_id: r.get(7),
        attempts: r.get(8),
        at: r.get(9),
        next_attempt_at: r.get(10),
    }
}

fn parked_row(r: &SqliteRow) -> FailureRow {
    FailureRow {
        target: r.get(0),
        path: r.get(1),
        class: Some(FailureClass::Parked),
        reason: r.get(2),
        http_status: r.get(7),
        code: r.get(8),
        message: r.get(3),
        request_id: r.get(9),
        attempts: 0,
        at: r.get::<Option<i64>, _>(6).or(r.get(4)),
        next_attempt_at: r.get(5),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{failed_op, file_op, uploaded_op};
    use super::super::Op;
    use super::*;

    /// a: synced; b: failed transient, due at 13; c: failed permanent; d: parked, due at 14;
    /// e: failed transient, its file gone.
    async fn ledger(dir: &tempfile::TempDir) -> Ledger {
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        let mut ops = Vec::new();
        for name in ["a", "b", "c", "d"] {
            let (path, key) = (format!("/p/{name}.jpg"), format!("user:{name}@x"));
            ops.push(file_op(&path, &key, 1, "h"));
        }
        ops.extend([
            uploaded_op("/p/a.jpg", "user:a@x", "h", 2),
            failed_op("/p/b.jpg", "user:b@x", "h", FailureClass::Transient, 3),
            failed_op("/p/c.jpg", "user:c@x", "h", FailureClass::Permanent, 4),
            failed_op("/p/d.jpg", "user:d@x", "h", FailureClass::Parked, 4),
            failed_op("/p/e.jpg", "user:e@x", "h", FailureClass::Transient, 5),
        ]);
        l.apply(&ops).await.unwrap();
        l
    }

    #[tokio::test]
    async fn status_reads_counts_failures_and_parked_typed() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        assert_eq!(
            l.counts_by_state().await.unwrap(),
            [
                (TargetState::Synced, 1),
                (TargetState::Failed, 3),
                (TargetState::Parked, 1)
            ]
        );
        let failures = l.failures().await.unwrap();
        let seen: Vec<_> = failures.iter().map(|f| (&*f.target, f.class)).collect();
        assert_eq!(
            seen,
            [
                ("user:b@x", Some(FailureClass::Transient)),
                ("user:c@x", Some(FailureClass::Permanent)),
                ("user:e@x", Some(FailureClass::Transient)),
            ]
        );
        assert_eq!(failures[0].http_status, Some(503));
        assert_eq!(
            (failures[0].at, failures[0].next_attempt_at),
            (Some(3), Some(13))
        );
        let parked = l.parked().await.unwrap();
        assert_eq!(parked.len(), 1);
        assert_eq!(
            (&*parked[0].target, parked[0].class, parked[0].at),
            ("user:d@x", Some(FailureClass::Parked), Some(4))
        );
        assert_eq!(l.file_count().await.unwrap(), 4);
        assert_eq!(l.last_upload_at().await.unwrap(), Some(2));
    }

    #[tokio::test]
    async fn due_paths_are_parked_and_transient_with_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        assert!(l.due_paths(12).await.unwrap().is_empty());
        assert_eq!(l.due_paths(13).await.unwrap(), ["/p/b.jpg"]);
        let mut due = l.due_paths(100).await.unwrap();
        due.sort();
        assert_eq!(due, ["/p/b.jpg", "/p/d.jpg"]);
        assert_eq!(l.parked_since("user:d@x").await.unwrap(), Some(4));
        assert_eq!(l.parked_since("user:b@x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn retry_clears_the_named_failures_or_all() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let named = [
            "/p/c.jpg".to_owned(),
            "USER:B@X".to_owned(),
            "user:a@x".into(),
        ];
        assert_eq!(
            l.clear_failures(&named).await.unwrap(),
            ["user:b@x", "user:c@x"]
        );
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.targets["user:b@x"].state, TargetState::Pending);
        assert_eq!(s.targets["user:a@x"].state, TargetState::Synced);
        assert_eq!(l.clear_failures(&[]).await.unwrap(), ["user:e@x"]);
        assert!(l.failures().await.unwrap().is_empty());
        // Parked photos are not failures: `retry` leaves them to their schedule.
        assert_eq!(l.parked().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn verify_reads_synced_users_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let mut contact = uploaded_op("/p/o.jpg", "contact:o/1", "h", 2);
        if let Op::Uploaded { kind, .. } = &mut contact {
            *kind = "contact";
        }
        l.apply(&[contact]).await.unwrap();
        let synced = l.synced_targets().await.unwrap();
        assert_eq!(synced.len(), 1);
        assert_eq!(synced[0].target_key, "user:a@x");
        assert_eq!(synced[0].path.as_deref(), Some("/p/a.jpg"));
    }
}
