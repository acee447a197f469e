//! The planner's view of the ledger, read in one transaction at the start of a pass.
//!
//! Read with rusqlite, not sqlx, through its own read-only connection on a blocking thread:
//! sqlx decodes row by row through its worker thread, which made loading 200,000 rows the
//! largest part of an unchanged rescan; rusqlite's borrowed column values cost nothing but the
//! map inserts. Writes stay with sqlx (the pool, the migrations, [`super::apply`]); WAL lets this
//! read see a consistent state while a daemon writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{OpenFlags, Transaction};

use super::{FailureClass, Ledger, LedgerError, TargetState};

/// The hasher of the planner's maps: SipHash's resistance to crafted keys buys nothing for
/// paths and target keys from our own tree, and hashing them was a tenth of a rescan's CPU.
pub type FastHash = foldhash::fast::RandomState;

/// A file's content hash (BLAKE3), as the ledger stores it in hex.
pub type ContentHash = blake3::Hash;

/// What the ledger remembers of one file. Kept small: a snapshot holds one per photo file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// The source root it was found under (shared between rows: there are only a few roots).
    pub source: Arc<str>,
    pub size: i64,
    pub mtime_ns: i64,
    pub content_hash: Option<ContentHash>,
    /// Shared with the key of the target's row.
    pub target_key: Option<Arc<str>>,
}

/// What the ledger remembers of one target. Kept small: a snapshot holds one per target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetRow {
    pub state: TargetState,
    /// Shared with the key of the file's row when it is the same path.
    pub path: Option<Arc<str>>,
    pub last_hash: Option<ContentHash>,
    /// Shared between rows (a fingerprint names a pipeline setting; there are only a few).
    pub last_fingerprint: Option<Arc<str>>,
    /// The last failure, when one is recorded. Boxed: most targets have none, and inline it
    /// would double the size of every row.
    pub failure: Option<Box<LastFailure>>,
}

/// The last failed attempt for a target, as the planner needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastFailure {
    pub hash: Option<ContentHash>,
    pub fingerprint: Option<Arc<str>>,
    /// `None` when none is recorded, or the text is one this version does not know.
    pub class: Option<FailureClass>,
    pub reason: Option<Box<str>>,
    pub next_attempt_at: Option<i64>,
}

/// The whole ledger as the planner needs it, loaded at the start of a pass.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub files: HashMap<Arc<str>, FileRow, FastHash>,
    pub targets: HashMap<Arc<str>, TargetRow, FastHash>,
    /// Targets that more than one known file maps to, with those files: the only ones where a
    /// conflict has to be looked at.
    pub shared_targets: HashMap<String, Vec<String>>,
    /// Files found not to be photos, with their stat then.
    pub skipped: super::skipped::SkippedFiles,
}

impl Snapshot {
    /// Paths the ledger maps to `target_key`, when more than one does.
    pub fn files_of(&self, target_key: &str) -> &[String] {
        self.shared_targets
            .get(target_key)
            .map_or(&[], Vec::as_slice)
    }
}

impl Ledger {
    /// Loads everything the planner compares against, in one read transaction (a consistent
    /// view even while a daemon writes).
    pub async fn snapshot(&self) -> Result<Snapshot, LedgerError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            read(&path).map_err(|error| LedgerError::Snapshot { path, error })
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// One `Arc<str>` per distinct value, for columns with only a few.
#[derive(Default)]
struct Interner(HashMap<Box<str>, Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return a.clone();
        }
        let a: Arc<str> = s.into();
        self.0.insert(s.into(), a.clone());
        a
    }
}

/// The snapshot as [`Ledger::snapshot`] reads it: targets first, so that files can share
/// their path and target key allocations.
fn read(path: &Path) -> Result<Snapshot, rusqlite::Error> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let tx = conn.unchecked_transaction()?;
    let (files, targets): (i64, i64) = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM files), (SELECT COUNT(*) FROM targets)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut snap = Snapshot::default();
    snap.files.reserve(usize::try_from(files).unwrap_or(0));
    snap.targets.reserve(usize::try_from(targets).unwrap_or(0));
    read_targets(&tx, &mut snap)?;
    read_files(&tx, &mut snap)?;
    read_shared_targets(&tx, &mut snap)?;
    super::skipped::read_skipped(&tx, &mut snap)?;
    Ok(snap)
}

/// A text column, borrowed from the row.
pub(super) fn text<'r>(
    r: &'r rusqlite::Row<'_>,
    i: usize,
) -> Result<Option<&'r str>, rusqlite::Error> {
    Ok(r.get_ref(i)?.as_str_or_null()?)
}

fn read_targets(tx: &Transaction<'_>, snap: &mut Snapshot) -> Result<(), rusqlite::Error> {
    let mut fingerprints = Interner::default();
    let mut stmt = tx.prepare(
        "SELECT target_key, state, path, last_hash, last_fingerprint, failed_hash,
                failed_fingerprint, error_class, error_reason, next_attempt_at
         FROM targets",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let key = text(r, 0)?.unwrap_or_default();
        let failure = LastFailure {
            hash: parse_hash(text(r, 5)?),
            fingerprint: text(r, 6)?.map(|f| fingerprints.get(f)),
            class: text(r, 7)?.and_then(FailureClass::from_db),
            reason: text(r, 8)?.map(Into::into),
            next_attempt_at: r.get(9)?,
        };
        snap.targets.insert(
            key.into(),
            TargetRow {
                state: TargetState::from_db(text(r, 1)?.unwrap_or_default()),
                path: text(r, 2)?.map(Into::into),
                last_hash: parse_hash(text(r, 3)?),
                last_fingerprint: text(r, 4)?.map(|f| fingerprints.get(f)),
                failure: (failure != LastFailure::default()).then(|| Box::new(failure)),
            },
        );
    }
    Ok(())
}

/// Files, sharing the path and key allocations of their targets' rows where they are equal.
fn read_files(tx: &Transaction<'_>, snap: &mut Snapshot) -> Result<(), rusqlite::Error> {
    let mut roots = Interner::default();
    let mut stmt =
        tx.prepare("SELECT path, source, size, mtime_ns, content_hash, target_key FROM files")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let file = text(r, 0)?.unwrap_or_default();
        let key = text(r, 5)?;
        let target = key.and_then(|k| snap.targets.get_key_value(k));
        let path = match target.and_then(|(_, t)| t.path.as_ref()) {
            Some(p) if **p == *file => p.clone(),
            _ => file.into(),
        };
        let target_key = match target {
            Some((k, _)) => Some(k.clone()),
            None => key.map(Into::into),
        };
        snap.files.insert(
            path,
            FileRow {
                source: roots.get(text(r, 1)?.unwrap_or_default()),
                size: r.get(2)?,
                mtime_ns: r.get(3)?,
                content_hash: parse_hash(text(r, 4)?),
                target_key,
            },
        );
    }
    Ok(())
}

fn read_shared_targets(tx: &Transaction<'_>, snap: &mut Snapshot) -> Result<(), rusqlite::Error> {
    let mut stmt = tx.prepare(
        "SELECT target_key, path FROM files WHERE target_key IN
           (SELECT target_key FROM files WHERE target_key IS NOT NULL
            GROUP BY target_key HAVING COUNT(*) > 1)",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        snap.shared_targets
            .entry(r.get(0)?)
            .or_default()
            .push(r.get(1)?);
    }
    Ok(())
}

/// A hash as stored; anything that is not one reads as unknown (the file is hashed again).
fn parse_hash(hex: Option<&str>) -> Option<ContentHash> {
    hex.and_then(|h| blake3::Hash::from_hex(h).ok())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{file_op, uploaded_op};
    use super::super::Op;
    use super::*;

    #[tokio::test]
    async fn the_snapshot_reads_every_row_and_the_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        let n = 9000;
        let mut ops = Vec::new();
        for i in 0..n {
            let key = format!("user:u{i}@x");
            let path = format!("/p/u{i}.jpg");
            ops.push(file_op(&path, &key, i, &key));
            ops.push(uploaded_op(&path, &key, &key, 2));
        }
        // A second file naming the first target, with a path that needs escaping in JSON.
        ops.push(Op::File {
            path: "/p/\"quoted\" \\ é.jpg".into(),
            source: "/p".into(),
            size: 1,
            mtime_ns: 5,
            content_hash: None,
            target_key: Some("user:u0@x".into()),
            now: 1,
        });
        l.apply(&ops).await.unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.files.len() as i64, n + 1);
        assert_eq!(s.targets.len() as i64, n);
        let last = format!("/p/u{}.jpg", n - 1);
        assert_eq!(s.files[last.as_str()].size, n - 1);
        let last = &s.targets[&*format!("user:u{}@x", n - 1)];
        assert_eq!(last.last_fingerprint.as_deref(), Some("f"));
        assert_eq!(last.state, TargetState::Synced);
        let mut shared = s.files_of("user:u0@x").to_vec();
        shared.sort();
        assert_eq!(shared, ["/p/\"quoted\" \\ é.jpg", "/p/u0.jpg"]);
        assert!(s.files_of("user:u1@x").is_empty());
        // The file and its target share one allocation for the path and one for the key.
        let (path, file) = s.files.get_key_value("/p/u1.jpg").unwrap();
        let (key, target) = s.targets.get_key_value("user:u1@x").unwrap();
        assert!(Arc::ptr_eq(path, target.path.as_ref().unwrap()));
        assert!(Arc::ptr_eq(key, file.target_key.as_ref().unwrap()));
        assert_eq!(file.content_hash, Some(blake3::hash(b"user:u1@x")));
    }

    #[tokio::test]
    async fn unknown_text_in_the_database_reads_as_an_upload_again() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        l.apply(&[
            file_op("/p/a.jpg", "user:a@x", 1, "h"),
            uploaded_op("/p/a.jpg", "user:a@x", "h", 2),
        ])
        .await
        .unwrap();
        // The CHECK constraint on `state` stands in for a newer version's schema; lift it the
        // way a newer migration could.
        let mut conn = l.pool.acquire().await.unwrap();
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query(
            "UPDATE targets SET state = 'archived', error_class = 'cosmic',
               error_reason = 'r'",
        )
        .execute(&mut *conn)
        .await
        .unwrap();
        drop(conn);
        let s = l.snapshot().await.unwrap();
        let t = &s.targets["user:a@x"];
        assert_eq!(t.state, TargetState::Pending);
        assert_eq!(t.failure.as_ref().unwrap().class, None);
        assert_eq!(
            l.counts_by_state().await.unwrap(),
            [(TargetState::Pending, 1)]
        );
    }
}
