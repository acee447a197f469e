//! [`Ledger::apply`]: a batch of [`Op`]s written in one transaction, one small function per op.
//!
//! Files seen, uploads done and their read-back etags are the bulk of every batch: they are
//! gathered (`bulk.rs`) and written with one statement per table, the rows passed as one JSON
//! array to `INSERT … SELECT … FROM json_each(?)`. Each statement is a round trip to sqlx's
//! SQLite thread, which cost more than the row itself. Files and uploads touch different tables,
//! so they commute; every other op first writes what was gathered before it, keeping the batch's
//! order for each row.
//!
//! An upload's `synced` state and its history row are written by one function, in the batch's
//! transaction: neither is ever committed without the other.

use sqlx::{SqliteConnection, SqlitePool};

use super::bulk::Bulk;
use super::{FailureClass, HistoryAction, Ledger, LedgerError, Op};

impl Ledger {
    /// Applies a batch in one transaction.
    pub async fn apply(&self, ops: &[Op]) -> Result<(), LedgerError> {
        apply_batch(&self.pool, ops)
            .await
            .map_err(|e| self.write_error(e))
    }
}

async fn apply_batch(pool: &SqlitePool, ops: &[Op]) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    let mut bulk = Bulk::default();
    for op in ops {
        if !bulk.gather(op) {
            bulk.write(&mut tx).await?;
            apply_one(&mut tx, op).await?;
        }
    }
    bulk.write(&mut tx).await?;
    tx.commit().await
}

/// Writes one op that is not gathered.
async fn apply_one(tx: &mut SqliteConnection, op: &Op) -> sqlx::Result<()> {
    match op {
        // Gathered by `Bulk::gather`: never passed here.
        Op::File { .. } | Op::Uploaded { .. } | Op::Etag { .. } => Ok(()),
        Op::ForgetFile { path } => forget_file(tx, path).await,
        Op::Skipped {
            path,
            source,
            size,
            mtime_ns,
            reason,
            now,
        } => {
            let row = super::skipped::Skipped {
                path,
                source,
                size: *size,
                mtime_ns: *mtime_ns,
                reason,
                now: *now,
            };
            super::skipped::skipped(tx, &row).await
        }
        Op::Unskipped { path } => super::skipped::unskipped(tx, path).await,
        Op::Resolved {
            lookup_key,
            object_id,
            upn,
            now,
            expires_at,
        } => resolved(tx, lookup_key, object_id, upn, *now, *expires_at).await,
        Op::Drifted { target_key, now } => drifted(tx, target_key, *now).await,
        Op::Deleted {
            target_key,
            kind,
            path,
            http_status,
            request_id,
            now,
        } => {
            let request_id = request_id.as_deref();
            deleted(tx, target_key, kind, path, *http_status, request_id, *now).await
        }
        Op::Failed {
            target_key,
            kind,
            path,
            content_hash,
            fingerprint,
            class,
            reason,
            http_status,
            code,
            message,
            request_id,
            attempts,
            next_attempt_at,
            action,
            now,
        } => {
            let f = Failure {
                target_key,
                kind,
                path,
                content_hash: content_hash.as_deref(),
                fingerprint,
                class: *class,
                reason,
                http_status: *http_status,
                code: code.as_deref(),
                message,
                request_id: request_id.as_deref(),
                attempts: *attempts,
                next_attempt_at: *next_attempt_at,
                action: *action,
                now: *now,
            };
            failed(tx, &f).await
        }
    }
}

/// `Op::ForgetFile`.
async fn forget_file(tx: &mut SqliteConnection, path: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM files WHERE path = ?1")
        .bind(path)
        .execute(tx)
        .await?;
    Ok(())
}

/// `Op::Resolved`: the cache entry is replaced.
async fn resolved(
    tx: &mut SqliteConnection,
    lookup_key: &str,
    object_id: &str,
    upn: &str,
    now: i64,
    expires_at: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO resolutions (lookup_key, object_id, upn, resolved_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (lookup_key) DO UPDATE SET object_id = ?2, upn = ?3,
           resolved_at = ?4, expires_at = ?5",
    )
    .bind(lookup_key)
    .bind(object_id)
    .bind(upn)
    .bind(now)
    .bind(expires_at)
    .execute(tx)
    .await?;
    Ok(())
}

/// `Op::Drifted`: a synced target becomes pending (anything else is left as it is).
async fn drifted(tx: &mut SqliteConnection, target_key: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE targets SET state = 'pending', updated_at = ?2
         WHERE target_key = ?1 AND state = 'synced'",
    )
    .bind(target_key)
    .bind(now)
    .execute(tx)
    .await?;
    Ok(())
}

/// `Op::Deleted`: the target forgets its upload and failure, with its history row.
async fn deleted(
    tx: &mut SqliteConnection,
    target_key: &str,
    kind: &str,
    path: &str,
    http_status: u16,
    request_id: Option<&str>,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO targets (target_key, kind, state, path, updated_at)
         VALUES (?1, ?2, 'deleted', ?3, ?4)
         ON CONFLICT (target_key) DO UPDATE SET state = 'deleted', path = ?3,
           last_hash = NULL, last_fingerprint = NULL, media_etag = NULL,
           attempts = 0, next_attempt_at = NULL, failed_hash = NULL,
           failed_fingerprint = NULL, error_class = NULL, error_reason = NULL,
           error_status = NULL, error_code = NULL, error_message = NULL,
           error_request_id = NULL, error_at = NULL, updated_at = ?4",
    )
    .bind(target_key)
    .bind(kind)
    .bind(path)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO uploads (at, target_key, path, action, result, http_status, request_id)
         VALUES (?1, ?2, ?3, ?4, 'ok', ?5, ?6)",
    )
    .bind(now)
    .bind(target_key)
    .bind(path)
    .bind(HistoryAction::Delete.as_str())
    .bind(i64::from(http_status))
    .bind(request_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// The fields of an `Op::Failed`, borrowed.
struct Failure<'a> {
    target_key: &'a str,
    kind: &'a str,
    path: &'a str,
    content_hash: Option<&'a str>,
    fingerprint: &'a str,
    class: FailureClass,
    reason: &'a str,
    http_status: Option<u16>,
    code: Option<&'a str>,
    message: &'a str,
    request_id: Option<&'a str>,
    attempts: u32,
    next_attempt_at: Option<i64>,
    action: HistoryAction,
    now: i64,
}

/// `Op::Failed`: the target's failure (and, parked, since when), with its history row.
async fn failed(tx: &mut SqliteConnection, f: &Failure<'_>) -> sqlx::Result<()> {
    failed_target(tx, f).await?;
    failed_history(tx, f).await
}

async fn failed_target(tx: &mut SqliteConnection, f: &Failure<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO targets (target_key, kind, state, path, attempts, next_attempt_at,
           failed_hash, failed_fingerprint, error_class, error_reason, error_status,
           error_code, error_message, error_request_id, error_at, updated_at)
         VALUES (?1, ?2, ?15, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
         ON CONFLICT (target_key) DO UPDATE SET state = ?15, path = ?3,
           attempts = ?4, next_attempt_at = ?5, failed_hash = ?6,
           failed_fingerprint = ?7, error_class = ?8, error_reason = ?9,
           error_status = ?10, error_code = ?11, error_message = ?12,
           error_request_id = ?13, error_at = ?14, updated_at = ?14",
    )
    .bind(f.target_key)
    .bind(f.kind)
    .bind(f.path)
    .bind(i64::from(f.attempts))
    .bind(f.next_attempt_at)
    .bind(f.content_hash)
    .bind(f.fingerprint)
    .bind(f.class.as_str())
    .bind(f.reason)
    .bind(f.http_status.map(i64::from))
    .bind(f.code)
    .bind(f.message)
    .bind(f.request_id)
    .bind(f.now)
    .bind(f.class.target_state().as_str())
    .execute(&mut *tx)
    .await?;
    // parked_max_age counts from the first time a photo was parked.
    sqlx::query(
        "UPDATE targets SET parked_since = CASE WHEN state = 'parked'
           THEN COALESCE(parked_since, ?2) END WHERE target_key = ?1",
    )
    .bind(f.target_key)
    .bind(f.now)
    .execute(tx)
    .await?;
    Ok(())
}

async fn failed_history(tx: &mut SqliteConnection, f: &Failure<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO uploads (at, target_key, path, content_hash, fingerprint, action,
           result, http_status, error_code, error_message, request_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .bind(f.now)
    .bind(f.target_key)
    .bind(f.path)
    .bind(f.content_hash)
    .bind(f.fingerprint)
    .bind(f.action.as_str())
    .bind(format!("failed_{}", f.class.as_str()))
    .bind(f.http_status.map(i64::from))
    .bind(f.code)
    .bind(f.message)
    .bind(f.request_id)
    .execute(tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{failed_op, file_op, hex, uploaded_op};
    use super::super::{CachedResolution, TargetState};
    use super::*;

    async fn ledger(dir: &tempfile::TempDir) -> Ledger {
        Ledger::open(&dir.path().join("state.db")).await.unwrap()
    }

    /// The history, oldest first: action, result, content hash, HTTP status.
    async fn history(l: &Ledger) -> Vec<(String, String, Option<String>, Option<i64>)> {
        sqlx::query_as("SELECT action, result, content_hash, http_status FROM uploads ORDER BY id")
            .fetch_all(&l.pool)
            .await
            .unwrap()
    }

    async fn state(l: &Ledger, key: &str) -> TargetState {
        l.snapshot().await.unwrap().targets[key].state
    }

    fn row(
        action: &str,
        result: &str,
        hash: Option<&str>,
        status: i64,
    ) -> (String, String, Option<String>, Option<i64>) {
        (action.into(), result.into(), hash.map(hex), Some(status))
    }

    #[tokio::test]
    async fn an_upload_is_synced_with_its_history_row() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        l.apply(&[
            file_op("/p/a.jpg", "user:a@x", 10, "h"),
            uploaded_op("/p/a.jpg", "user:a@x", "h", 2),
        ])
        .await
        .unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.files["/p/a.jpg"].content_hash, Some(blake3::hash(b"h")));
        let t = &s.targets["user:a@x"];
        assert_eq!(t.state, TargetState::Synced);
        assert_eq!(t.last_hash, Some(blake3::hash(b"h")));
        assert!(s.files_of("user:a@x").is_empty());
        assert_eq!(history(&l).await, [row("upload", "ok", Some("h"), 200)]);
        assert_eq!(
            l.counts_by_state().await.unwrap(),
            [(TargetState::Synced, 1)]
        );
    }

    #[tokio::test]
    async fn gathered_writes_keep_the_batch_order_for_each_row() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let a = |size, content| file_op("/p/a.jpg", "user:a@x", size, content);
        let up = |content, now| uploaded_op("/p/a.jpg", "user:a@x", content, now);
        let failed = failed_op("/p/a.jpg", "user:a@x", "h2", FailureClass::Transient, 3);
        l.apply(&[
            a(1, "h1"),
            up("h1", 2),
            a(2, "h2"),
            failed.clone(),
            file_op("/p/b.jpg", "user:a@x", 3, "h3"),
            Op::ForgetFile {
                path: "/p/b.jpg".into(),
            },
            a(4, "h4"),
            up("h4", 4),
        ])
        .await
        .unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.files["/p/a.jpg"].size, 4);
        assert_eq!(s.files["/p/a.jpg"].content_hash, Some(blake3::hash(b"h4")));
        assert!(!s.files.contains_key("/p/b.jpg"));
        let t = &s.targets["user:a@x"];
        assert_eq!(
            (t.state, t.last_hash, t.failure.is_none()),
            (TargetState::Synced, Some(blake3::hash(b"h4")), true)
        );
        assert_eq!(
            history(&l).await,
            [
                row("upload", "ok", Some("h1"), 200),
                row("upload", "failed_transient", Some("h2"), 503),
                row("upload", "ok", Some("h4"), 200),
            ]
        );
        // A read-back etag lands on the upload before it, the later of two wins.
        let etag = |e: &str| Op::Etag {
            target_key: "user:a@x".into(),
            graph_id: None,
            media_etag: Some(e.into()),
        };
        l.apply(&[up("h6", 6), etag("e1"), up("h7", 7), etag("e2")])
            .await
            .unwrap();
        let etag: Option<String> =
            sqlx::query_scalar("SELECT media_etag FROM targets WHERE target_key = 'user:a@x'")
                .fetch_one(&l.pool)
                .await
                .unwrap();
        assert_eq!(etag.as_deref(), Some("e2"));
        // And the other way round: a failure after a success in one batch leaves it failed.
        l.apply(&[up("h5", 5), failed]).await.unwrap();
        assert_eq!(state(&l, "user:a@x").await, TargetState::Failed);
    }

    #[tokio::test]
    async fn etags_land_on_synced_targets_only() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let n = 9000;
        let mut ops: Vec<Op> = (0..n)
            .map(|i| uploaded_op(&format!("/p/u{i}.jpg"), &format!("user:u{i}@x"), "h", 2))
            .collect();
        ops.push(failed_op(
            "/p/f.jpg",
            "user:f@x",
            "h",
            FailureClass::Permanent,
            3,
        ));
        l.apply(&ops).await.unwrap();
        let mut etags: Vec<Op> = (0..n)
            .map(|i| Op::Etag {
                target_key: format!("user:u{i}@x"),
                graph_id: None,
                media_etag: Some(format!("e{i}")),
            })
            .collect();
        for key in ["user:nobody@x", "user:f@x"] {
            etags.push(Op::Etag {
                target_key: key.into(),
                graph_id: Some("g".into()),
                media_etag: Some("e".into()),
            });
        }
        l.apply(&etags).await.unwrap();
        let (targets, with_etag, with_id): (i64, i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(media_etag), COUNT(graph_id) FROM targets")
                .fetch_one(&l.pool)
                .await
                .unwrap();
        assert_eq!((targets, with_etag, with_id), (n + 1, n, 0));
    }

    #[tokio::test]
    async fn a_failure_sets_its_state_by_class_and_parked_counts_from_the_first_time() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let fail = |class, now| failed_op("/p/a.jpg", "user:a@x", "h", class, now);
        l.apply(&[fail(FailureClass::Local, 1)]).await.unwrap();
        let s = l.snapshot().await.unwrap();
        let t = &s.targets["user:a@x"];
        assert_eq!(t.state, TargetState::Failed);
        let f = t.failure.as_deref().unwrap();
        assert_eq!(
            (f.class, f.hash, f.next_attempt_at),
            (
                Some(FailureClass::Local),
                Some(blake3::hash(b"h")),
                Some(11)
            )
        );
        assert_eq!(l.parked_since("user:a@x").await.unwrap(), None);

        l.apply(&[fail(FailureClass::Parked, 5)]).await.unwrap();
        l.apply(&[fail(FailureClass::Parked, 9)]).await.unwrap();
        assert_eq!(state(&l, "user:a@x").await, TargetState::Parked);
        assert_eq!(l.parked_since("user:a@x").await.unwrap(), Some(5));
        assert_eq!(
            history(&l).await,
            [
                row("upload", "failed_local", Some("h"), 503),
                row("upload", "failed_parked", Some("h"), 503),
                row("upload", "failed_parked", Some("h"), 503),
            ]
        );
        // An upload ends the parking: a later one starts the count again.
        l.apply(&[uploaded_op("/p/a.jpg", "user:a@x", "h", 10)])
            .await
            .unwrap();
        l.apply(&[fail(FailureClass::Parked, 20)]).await.unwrap();
        assert_eq!(l.parked_since("user:a@x").await.unwrap(), Some(20));
    }

    #[tokio::test]
    async fn a_deletion_forgets_the_upload_and_keeps_a_history_row() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let deleted = |key: &str| Op::Deleted {
            target_key: key.into(),
            kind: "user",
            path: "/p/a.jpg".into(),
            http_status: 204,
            request_id: Some("d".into()),
            now: 3,
        };
        l.apply(&[
            uploaded_op("/p/a.jpg", "user:a@x", "h", 2),
            deleted("user:a@x"),
            deleted("user:new@x"),
        ])
        .await
        .unwrap();
        let s = l.snapshot().await.unwrap();
        for key in ["user:a@x", "user:new@x"] {
            let t = &s.targets[key];
            assert_eq!(
                (t.state, t.last_hash),
                (TargetState::Deleted, None),
                "{key}"
            );
        }
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT target_key, result, request_id FROM uploads WHERE action = 'delete' ORDER BY id",
        )
        .fetch_all(&l.pool)
        .await
        .unwrap();
        assert_eq!(
            rows,
            [
                ("user:a@x".into(), "ok".into(), Some("d".into())),
                ("user:new@x".into(), "ok".into(), Some("d".into())),
            ]
        );
    }

    #[tokio::test]
    async fn drift_makes_only_synced_targets_pending() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        l.apply(&[
            uploaded_op("/p/a.jpg", "user:a@x", "h", 2),
            failed_op("/p/b.jpg", "user:b@x", "h", FailureClass::Permanent, 2),
        ])
        .await
        .unwrap();
        let drifted = |key: &str| Op::Drifted {
            target_key: key.into(),
            now: 3,
        };
        l.apply(&[
            drifted("user:a@x"),
            drifted("user:b@x"),
            drifted("user:c@x"),
        ])
        .await
        .unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.targets["user:a@x"].state, TargetState::Pending);
        assert_eq!(s.targets["user:b@x"].state, TargetState::Failed);
        assert!(!s.targets.contains_key("user:c@x"));
    }

    #[tokio::test]
    async fn a_resolution_replaces_the_cached_one() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(&dir).await;
        let resolved = |key: &str, id: &str, expires_at| Op::Resolved {
            lookup_key: key.into(),
            object_id: id.into(),
            upn: format!("{id}@x"),
            now: 1,
            expires_at,
        };
        l.apply(&[
            resolved("user(mail):a@x", "old", 100),
            resolved("user(mail):a@x", "new", 100),
            resolved("user(employeeId):7", "seven", 10),
        ])
        .await
        .unwrap();
        let cached = l.resolutions(50).await.unwrap();
        assert_eq!(cached.len(), 1, "{cached:?}");
        assert_eq!(
            cached["user(mail):a@x"],
            CachedResolution {
                object_id: "new".into(),
                upn: "new@x".into(),
                expires_at: 100,
            }
        );
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_written_names_the_database_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        ledger(&dir).await.close().await;
        let ro = Ledger::open_read_only(&path).await.unwrap().unwrap();
        let e = ro
            .apply(&[uploaded_op("/p/a.jpg", "user:a@x", "h", 2)])
            .await
            .unwrap_err();
        assert!(matches!(e, LedgerError::Write { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("cannot write the database {}: ", path.display())),
            "{e}"
        );
        assert!(ro.snapshot().await.unwrap().targets.is_empty());
    }
}
