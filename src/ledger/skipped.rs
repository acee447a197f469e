//! What the pipeline left out or fell back on: files that are not photos (the `skipped` table),
//! and photos whose face crop cut the centre instead (`targets.crop_note`).
//!
//! Written only through [`Op::Skipped`](super::Op::Skipped) and
//! [`Op::Unskipped`](super::Op::Unskipped) (and `Op::Uploaded`'s note) by the engine's writer;
//! read by the planner's [`Snapshot`] (so that an unchanged file is not read again) and by
//! `status`. A database from before these existed (`status` and dry runs open it without
//! migrating) reads as holding none.

use std::sync::Arc;

use sqlx::SqliteConnection;

use super::snapshot::{text, FastHash, Snapshot};
use super::{Ledger, LedgerError};

/// A skipped file as the planner compares it: its stat when it was last looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkippedRow {
    pub size: i64,
    pub mtime_ns: i64,
}

/// The skipped files the planner knows, by path.
pub type SkippedFiles = std::collections::HashMap<Arc<str>, SkippedRow, FastHash>;

/// A skipped file, as `status` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
    /// Unix ms of when it was found skipped.
    pub at: i64,
}

/// A synced photo whose face crop fell back to the centre, as `status` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CropFallback {
    pub target: String,
    pub path: Option<String>,
    /// `no_face` or `several_faces`.
    pub note: String,
}

/// The fields of an `Op::Skipped`, borrowed.
pub(super) struct Skipped<'a> {
    pub path: &'a str,
    pub source: &'a str,
    pub size: i64,
    pub mtime_ns: i64,
    pub reason: &'a str,
    pub now: i64,
}

/// `Op::Skipped`.
pub(super) async fn skipped(tx: &mut SqliteConnection, s: &Skipped<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO skipped (path, source, size, mtime_ns, reason, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (path) DO UPDATE SET source = ?2, size = ?3, mtime_ns = ?4,
           reason = ?5, seen_at = ?6",
    )
    .bind(s.path)
    .bind(s.source)
    .bind(s.size)
    .bind(s.mtime_ns)
    .bind(s.reason)
    .bind(s.now)
    .execute(tx)
    .await?;
    Ok(())
}

/// `Op::Unskipped`.
pub(super) async fn unskipped(tx: &mut SqliteConnection, path: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM skipped WHERE path = ?1")
        .bind(path)
        .execute(tx)
        .await?;
    Ok(())
}

/// The snapshot's skipped files.
pub(super) fn read_skipped(
    tx: &rusqlite::Transaction<'_>,
    snap: &mut Snapshot,
) -> Result<(), rusqlite::Error> {
    let exists: bool = tx.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'skipped')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(());
    }
    let mut stmt = tx.prepare("SELECT path, size, mtime_ns FROM skipped")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let path = text(r, 0)?.unwrap_or_default();
        let row = SkippedRow {
            size: r.get(1)?,
            mtime_ns: r.get(2)?,
        };
        snap.skipped.insert(path.into(), row);
    }
    Ok(())
}

impl Ledger {
    /// How many files are skipped, and the first `limit` of them by path.
    pub async fn skipped_files(&self, limit: i64) -> Result<(i64, Vec<SkippedFile>), LedgerError> {
        if !self.has_column("skipped", "path").await? {
            return Ok((0, Vec::new()));
        }
        let count = sqlx::query_scalar("SELECT COUNT(*) FROM skipped")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_error(e))?;
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT path, reason, seen_at FROM skipped ORDER BY path LIMIT ?1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.read_error(e))?;
        let files = rows
            .into_iter()
            .map(|(path, reason, at)| SkippedFile { path, reason, at })
            .collect();
        Ok((count, files))
    }

    /// Synced photos whose face crop cut the centre: counts by note, and the first `limit` by
    /// target.
    pub async fn crop_fallbacks(
        &self,
        limit: i64,
    ) -> Result<(Vec<(String, i64)>, Vec<CropFallback>), LedgerError> {
        if !self.has_column("targets", "crop_note").await? {
            return Ok((Vec::new(), Vec::new()));
        }
        let counts = sqlx::query_as(
            "SELECT crop_note, COUNT(*) FROM targets
             WHERE state = 'synced' AND crop_note IS NOT NULL GROUP BY crop_note ORDER BY crop_note",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))?;
        let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT target_key, path, crop_note FROM targets
             WHERE state = 'synced' AND crop_note IS NOT NULL ORDER BY target_key LIMIT ?1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.read_error(e))?;
        let photos = rows
            .into_iter()
            .map(|(target, path, note)| CropFallback { target, path, note })
            .collect();
        Ok((counts, photos))
    }

    /// Whether `table` has `column`: a database only `status` has opened may predate it.
    async fn has_column(&self, table: &str, column: &str) -> Result<bool, LedgerError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)")
            .bind(table)
            .bind(column)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.read_error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{file_op, uploaded_op};
    use super::super::Op;
    use super::*;

    fn skipped_op(path: &str, size: i64) -> Op {
        Op::Skipped {
            path: path.into(),
            source: "/p".into(),
            size,
            mtime_ns: 7,
            reason: "not_a_photo",
            now: 3,
        }
    }

    #[tokio::test]
    async fn skipped_files_are_kept_by_path_until_unskipped() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        l.apply(&[
            skipped_op("/p/b.txt", 1),
            skipped_op("/p/a.dat", 2),
            skipped_op("/p/b.txt", 5),
            skipped_op("/p/c.doc", 1),
            Op::Unskipped {
                path: "/p/c.doc".into(),
            },
        ])
        .await
        .unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.skipped.len(), 2);
        assert_eq!(
            s.skipped["/p/b.txt"],
            SkippedRow {
                size: 5,
                mtime_ns: 7
            }
        );
        let (count, first) = l.skipped_files(1).await.unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            first,
            [SkippedFile {
                path: "/p/a.dat".into(),
                reason: "not_a_photo".into(),
                at: 3
            }]
        );
    }

    #[tokio::test]
    async fn crop_fallbacks_follow_the_last_upload() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        let noted = |path: &str, key: &str, now, note| {
            let mut op = uploaded_op(path, key, "h", now);
            if let Op::Uploaded { crop_note, .. } = &mut op {
                *crop_note = note;
            }
            op
        };
        l.apply(&[
            file_op("/p/a.jpg", "user:a@x", 1, "h"),
            noted("/p/a.jpg", "user:a@x", 2, Some("no_face")),
            noted("/p/b.jpg", "user:b@x", 2, Some("several_faces")),
            noted("/p/c.jpg", "user:c@x", 2, Some("no_face")),
            noted("/p/c.jpg", "user:c@x", 3, None),
        ])
        .await
        .unwrap();
        let (counts, photos) = l.crop_fallbacks(10).await.unwrap();
        assert_eq!(
            counts,
            [("no_face".to_owned(), 1), ("several_faces".to_owned(), 1)]
        );
        let names: Vec<(&str, &str)> = photos
            .iter()
            .map(|p| (p.target.as_str(), p.note.as_str()))
            .collect();
        assert_eq!(
            names,
            [("user:a@x", "no_face"), ("user:b@x", "several_faces")]
        );
        assert_eq!(photos[0].path.as_deref(), Some("/p/a.jpg"));
    }
}
