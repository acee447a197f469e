//! The ledger: a SQLite file that remembers what photosync saw and what it sent.
//!
//! Invariants:
//! - a target is `synced` only after Graph answered 2xx, and that state change is written in the
//!   same transaction as its history row;
//! - writes are applied in batches, each batch one transaction (WAL, `synchronous = NORMAL`), so
//!   a crash loses at most the batch being written: the next run redoes those uploads, which is
//!   safe because a photo upload is idempotent;
//! - the planner reads a [`Snapshot`] loaded in a few queries per table, never a query per file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot open the database {path}: its folder {dir} is not writable ({source}); the ledger and its -wal and -shm files need a writable folder")]
    FolderNotWritable {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot migrate the database {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    #[error("cannot read the ledger {path}: {source}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

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
    /// `synced`, `pending`, `failed`, `parked` or `deleted`.
    pub state: &'static str,
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
    /// `transient`, `permanent` or `local`.
    pub class: Option<&'static str>,
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
}

impl Snapshot {
    /// Paths the ledger maps to `target_key`, when more than one does.
    pub fn files_of(&self, target_key: &str) -> &[String] {
        self.shared_targets
            .get(target_key)
            .map_or(&[], Vec::as_slice)
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
fn read_snapshot(path: &Path) -> Result<Snapshot, rusqlite::Error> {
    use rusqlite::OpenFlags;
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
    let mut fingerprints = Interner::default();
    let mut stmt = tx.prepare(
        "SELECT target_key, state, path, last_hash, last_fingerprint, failed_hash,
                failed_fingerprint, error_class, error_reason, next_attempt_at
         FROM targets",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let text =
            |i| -> Result<Option<&str>, rusqlite::Error> { Ok(r.get_ref(i)?.as_str_or_null()?) };
        let key = text(0)?.unwrap_or_default();
        let failure = LastFailure {
            hash: parse_hash(text(5)?),
            fingerprint: text(6)?.map(|f| fingerprints.get(f)),
            class: text(7)?.map(error_class),
            reason: text(8)?.map(Into::into),
            next_attempt_at: r.get(9)?,
        };
        snap.targets.insert(
            key.into(),
            TargetRow {
                state: target_state(text(1)?.unwrap_or_default()),
                path: text(2)?.map(Into::into),
                last_hash: parse_hash(text(3)?),
                last_fingerprint: text(4)?.map(|f| fingerprints.get(f)),
                failure: (failure != LastFailure::default()).then(|| Box::new(failure)),
            },
        );
    }
    drop(rows);
    drop(stmt);
    let mut roots = Interner::default();
    let mut stmt =
        tx.prepare("SELECT path, source, size, mtime_ns, content_hash, target_key FROM files")?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let text =
            |i| -> Result<Option<&str>, rusqlite::Error> { Ok(r.get_ref(i)?.as_str_or_null()?) };
        let file = text(0)?.unwrap_or_default();
        let key = text(5)?;
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
                source: roots.get(text(1)?.unwrap_or_default()),
                size: r.get(2)?,
                mtime_ns: r.get(3)?,
                content_hash: parse_hash(text(4)?),
                target_key,
            },
        );
    }
    drop(rows);
    drop(stmt);
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
    Ok(snap)
}

/// A hash as stored; anything that is not one reads as unknown (the file is hashed again).
fn parse_hash(hex: Option<&str>) -> Option<ContentHash> {
    hex.and_then(|h| blake3::Hash::from_hex(h).ok())
}

fn target_state(s: &str) -> &'static str {
    match s {
        "synced" => "synced",
        "pending" => "pending",
        "failed" => "failed",
        "parked" => "parked",
        "deleted" => "deleted",
        _ => "unknown",
    }
}

fn error_class(s: &str) -> &'static str {
    match s {
        "transient" => "transient",
        "permanent" => "permanent",
        "local" => "local",
        _ => "unknown",
    }
}

/// The outcome of an attempt, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Retried later (after `next_attempt_at`, or at the next backfill).
    Transient,
    /// Not retried until the file changes or an operator runs `retry`.
    Permanent,
    /// Refused before sending (not an image, too large, bad name).
    Local,
    /// The user it names does not exist yet; looked up again on the parked schedule.
    Parked,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
            FailureClass::Local => "local",
            FailureClass::Parked => "parked",
        }
    }
}

/// One write. A batch of these is applied in one transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// A file was seen with this stat and (when read) this hash.
    File {
        path: String,
        source: String,
        size: i64,
        mtime_ns: i64,
        content_hash: Option<String>,
        target_key: Option<String>,
        now: i64,
    },
    /// Graph answered 2xx to an upload.
    Uploaded {
        target_key: String,
        kind: &'static str,
        path: String,
        content_hash: String,
        fingerprint: String,
        bytes: i64,
        http_status: u16,
        request_id: Option<String>,
        client_request_id: Option<String>,
        action: &'static str,
        now: i64,
    },
    /// A photo file is gone from the tree: the ledger forgets it.
    ForgetFile { path: String },
    /// A lookup key resolved to a user.
    Resolved {
        lookup_key: String,
        object_id: String,
        upn: String,
        now: i64,
        expires_at: i64,
    },
    /// The photo's metadata read back after an upload: what `verify` compares against later.
    Etag {
        target_key: String,
        graph_id: Option<String>,
        media_etag: Option<String>,
    },
    /// `verify` found the photo changed or removed behind photosync's back: upload it again.
    Drifted { target_key: String, now: i64 },
    /// Graph answered 2xx (or 404: nothing to delete) to a photo DELETE.
    Deleted {
        target_key: String,
        kind: &'static str,
        path: String,
        http_status: u16,
        request_id: Option<String>,
        now: i64,
    },
    /// An attempt failed, or a file was refused before sending.
    Failed {
        target_key: String,
        kind: &'static str,
        path: String,
        content_hash: Option<String>,
        fingerprint: String,
        class: FailureClass,
        reason: String,
        http_status: Option<u16>,
        code: Option<String>,
        message: String,
        request_id: Option<String>,
        attempts: u32,
        next_attempt_at: Option<i64>,
        action: &'static str,
        now: i64,
    },
}

#[derive(Clone, Debug)]
pub struct Ledger {
    pool: SqlitePool,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(path: &Path) -> Result<Ledger, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let opts = Self::options(path)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| match folder_not_writable(path) {
                // SQLite only says "unable to open database file".
                Some((dir, source)) => StateError::FolderNotWritable {
                    path: path.to_owned(),
                    dir,
                    source,
                },
                None => StateError::Open {
                    path: path.to_owned(),
                    source,
                },
            })?;
        sqlx::migrate!()
            .run(&pool)
            .await
            .map_err(|source| StateError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Ledger {
            pool,
            path: path.to_owned(),
        })
    }

    /// Opens an existing database without writing to it (for `--dry-run` and `status`);
    /// `None` when there is none yet.
    pub async fn open_read_only(path: &Path) -> Result<Option<Ledger>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let opts = Self::options(path)?
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(|source| StateError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Some(Ledger {
            pool,
            path: path.to_owned(),
        }))
    }

    fn options(path: &Path) -> Result<SqliteConnectOptions, StateError> {
        Ok(SqliteConnectOptions::from_str("sqlite://")
            .map_err(|source| StateError::Open {
                path: path.to_owned(),
                source,
            })?
            .filename(path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Loads everything the planner compares against, in one read transaction (a consistent
    /// view even while a daemon writes). Read on a blocking thread through its own read-only
    /// connection: sqlx decodes row by row through its worker thread, which made loading
    /// 200,000 rows the largest part of an unchanged rescan; borrowed column values cost
    /// nothing but the map inserts.
    pub async fn snapshot(&self) -> Result<Snapshot, StateError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            read_snapshot(&path).map_err(|source| StateError::Snapshot { path, source })
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Applies a batch in one transaction.
    pub async fn apply(&self, ops: &[Op]) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        let mut bulk = Bulk::default();
        for op in ops {
            if bulk.gather(op) {
                continue;
            }
            bulk.write(&mut tx).await?;
            match op {
                // Gathered by `bulk` above.
                Op::File { .. } | Op::Uploaded { .. } => {}
                Op::ForgetFile { path } => {
                    sqlx::query("DELETE FROM files WHERE path = ?1")
                        .bind(path)
                        .execute(&mut *tx)
                        .await?;
                }
                Op::Deleted {
                    target_key,
                    kind,
                    path,
                    http_status,
                    request_id,
                    now,
                } => {
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
                         VALUES (?1, ?2, ?3, 'delete', 'ok', ?4, ?5)",
                    )
                    .bind(now)
                    .bind(target_key)
                    .bind(path)
                    .bind(i64::from(*http_status))
                    .bind(request_id)
                    .execute(&mut *tx)
                    .await?;
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
                    .bind(target_key)
                    .bind(kind)
                    .bind(path)
                    .bind(i64::from(*attempts))
                    .bind(next_attempt_at)
                    .bind(content_hash)
                    .bind(fingerprint)
                    .bind(class.as_str())
                    .bind(reason)
                    .bind(http_status.map(i64::from))
                    .bind(code)
                    .bind(message)
                    .bind(request_id)
                    .bind(now)
                    .bind(if *class == FailureClass::Parked {
                        "parked"
                    } else {
                        "failed"
                    })
                    .execute(&mut *tx)
                    .await?;
                    // parked_max_age counts from the first time a photo was parked.
                    sqlx::query(
                        "UPDATE targets SET parked_since = CASE WHEN state = 'parked'
                           THEN COALESCE(parked_since, ?2) END WHERE target_key = ?1",
                    )
                    .bind(target_key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO uploads (at, target_key, path, content_hash, fingerprint, action,
                           result, http_status, error_code, error_message, request_id)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )
                    .bind(now)
                    .bind(target_key)
                    .bind(path)
                    .bind(content_hash)
                    .bind(fingerprint)
                    .bind(action)
                    .bind(format!("failed_{}", class.as_str()))
                    .bind(http_status.map(i64::from))
                    .bind(code)
                    .bind(message)
                    .bind(request_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Op::Resolved {
                    lookup_key,
                    object_id,
                    upn,
                    now,
                    expires_at,
                } => {
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
                    .execute(&mut *tx)
                    .await?;
                }
                Op::Etag {
                    target_key,
                    graph_id,
                    media_etag,
                } => {
                    sqlx::query(
                        "UPDATE targets SET media_etag = ?2, graph_id = COALESCE(?3, graph_id)
                         WHERE target_key = ?1 AND state = 'synced'",
                    )
                    .bind(target_key)
                    .bind(media_etag)
                    .bind(graph_id)
                    .execute(&mut *tx)
                    .await?;
                }
                Op::Drifted { target_key, now } => {
                    sqlx::query(
                        "UPDATE targets SET state = 'pending', updated_at = ?2
                         WHERE target_key = ?1 AND state = 'synced'",
                    )
                    .bind(target_key)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        bulk.write(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Counts of targets by state (for summaries and `status`).
    pub async fn counts_by_state(&self) -> Result<Vec<(String, i64)>, StateError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM targets GROUP BY state ORDER BY state")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

/// Files seen, uploads done and their read-back etags, the bulk of every batch, gathered to be
/// written with one statement per table (rows passed as one JSON array): each statement is a
/// round trip to sqlx's SQLite thread, which cost more than the row itself. Files and uploads
/// touch different tables, so they commute; every other op writes what was gathered before it,
/// keeping the batch's order.
#[derive(Default)]
struct Bulk<'a> {
    files: Vec<FileRowJson<'a>>,
    uploads: Vec<UploadRow<'a>>,
    /// target_key, media_etag, graph_id: written after the uploads (the read-back follows its
    /// upload), which they commute with otherwise (an upload leaves both columns alone).
    etags: Vec<(&'a str, Option<&'a str>, Option<&'a str>)>,
}

/// path, source, size, mtime_ns, content_hash, target_key, now
type FileRowJson<'a> = (
    &'a str,
    &'a str,
    i64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    i64,
);

/// target_key, kind, path, content_hash, fingerprint, now, request_id, bytes, action,
/// http_status, client_request_id
type UploadRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    Option<&'a str>,
    i64,
    &'a str,
    u16,
    Option<&'a str>,
);

impl<'a> Bulk<'a> {
    /// Takes `op` when it is one of the gathered kinds.
    fn gather(&mut self, op: &'a Op) -> bool {
        match op {
            Op::File {
                path,
                source,
                size,
                mtime_ns,
                content_hash,
                target_key,
                now,
            } => self.files.push((
                path,
                source,
                *size,
                *mtime_ns,
                content_hash.as_deref(),
                target_key.as_deref(),
                *now,
            )),
            Op::Uploaded {
                target_key,
                kind,
                path,
                content_hash,
                fingerprint,
                bytes,
                http_status,
                request_id,
                client_request_id,
                action,
                now,
            } => self.uploads.push((
                target_key,
                kind,
                path,
                content_hash,
                fingerprint,
                *now,
                request_id.as_deref(),
                *bytes,
                action,
                *http_status,
                client_request_id.as_deref(),
            )),
            Op::Etag {
                target_key,
                graph_id,
                media_etag,
            } => self
                .etags
                .push((target_key, media_etag.as_deref(), graph_id.as_deref())),
            _ => return false,
        }
        true
    }

    async fn write(&mut self, tx: &mut sqlx::SqliteConnection) -> Result<(), StateError> {
        // json_each yields the array in order, and ORDER BY key keeps it so: a path or target
        // that appears twice ends with its later row, and history ids follow the batch.
        if !self.files.is_empty() {
            sqlx::query(
                "INSERT INTO files (path, source, size, mtime_ns, content_hash, target_key, last_seen)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                        value ->> 5, value ->> 6
                 FROM json_each(?1) WHERE true ORDER BY key
                 ON CONFLICT (path) DO UPDATE SET source = excluded.source, size = excluded.size,
                   mtime_ns = excluded.mtime_ns, content_hash = excluded.content_hash,
                   target_key = excluded.target_key, last_seen = excluded.last_seen",
            )
            .bind(json(&self.files))
            .execute(&mut *tx)
            .await?;
            self.files.clear();
        }
        if !self.uploads.is_empty() {
            let rows = json(&self.uploads);
            sqlx::query(
                "INSERT INTO targets (target_key, kind, state, path, last_hash, last_fingerprint,
                   last_uploaded_at, last_request_id, attempts, updated_at)
                 SELECT value ->> 0, value ->> 1, 'synced', value ->> 2, value ->> 3, value ->> 4,
                        value ->> 5, value ->> 6, 0, value ->> 5
                 FROM json_each(?1) WHERE true ORDER BY key
                 ON CONFLICT (target_key) DO UPDATE SET state = 'synced', path = excluded.path,
                   last_hash = excluded.last_hash, last_fingerprint = excluded.last_fingerprint,
                   last_uploaded_at = excluded.last_uploaded_at,
                   last_request_id = excluded.last_request_id, attempts = 0,
                   next_attempt_at = NULL, parked_since = NULL, failed_hash = NULL,
                   failed_fingerprint = NULL,
                   error_class = NULL, error_reason = NULL, error_status = NULL,
                   error_code = NULL, error_message = NULL, error_request_id = NULL,
                   error_at = NULL, updated_at = excluded.updated_at",
            )
            .bind(&rows)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO uploads (at, target_key, path, content_hash, fingerprint, bytes,
                   action, result, http_status, request_id, client_request_id)
                 SELECT value ->> 5, value ->> 0, value ->> 2, value ->> 3, value ->> 4,
                        value ->> 7, value ->> 8, 'ok', value ->> 9, value ->> 6, value ->> 10
                 FROM json_each(?1) ORDER BY key",
            )
            .bind(&rows)
            .execute(&mut *tx)
            .await?;
            self.uploads.clear();
        }
        if !self.etags.is_empty() {
            // An upsert that only ever takes its conflict path (rows of unknown targets are
            // filtered out) finds each target by its key; UPDATE ... FROM json_each scanned the
            // whole table for every row.
            sqlx::query(
                "INSERT INTO targets (target_key, kind, state, updated_at, media_etag, graph_id)
                 SELECT value ->> 0, '', 'synced', 0, value ->> 1, value ->> 2
                 FROM json_each(?1)
                 WHERE EXISTS (SELECT 1 FROM targets WHERE target_key = value ->> 0)
                 ORDER BY key
                 ON CONFLICT (target_key) DO UPDATE SET media_etag = excluded.media_etag,
                   graph_id = COALESCE(excluded.graph_id, targets.graph_id)
                 WHERE targets.state = 'synced'",
            )
            .bind(json(&self.etags))
            .execute(&mut *tx)
            .await?;
            self.etags.clear();
        }
        Ok(())
    }
}

fn json(rows: &impl serde::Serialize) -> String {
    // Tuples of strings and integers: serialising them cannot fail.
    serde_json::to_string(rows).unwrap_or_default()
}

/// One failed target, as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailureRow {
    pub target: String,
    pub path: Option<String>,
    /// `transient`, `permanent` or `local`.
    pub class: Option<String>,
    pub reason: Option<String>,
    pub http_status: Option<i64>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    pub attempts: i64,
    /// Unix ms of the failure.
    pub at: Option<i64>,
    /// Unix ms after which the daemon retries it (transient failures).
    pub next_attempt_at: Option<i64>,
}

impl Ledger {
    /// Every failed target, oldest first.
    pub async fn failures(&self) -> Result<Vec<FailureRow>, StateError> {
        let rows = sqlx::query(
            "SELECT target_key, path, error_class, error_reason, error_status, error_code,
                    error_message, error_request_id, attempts, error_at, next_attempt_at
             FROM targets WHERE state = 'failed' ORDER BY error_at, target_key",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| FailureRow {
                target: r.get(0),
                path: r.get(1),
                class: r.get(2),
                reason: r.get(3),
                http_status: r.get(4),
                code: r.get(5),
                message: r.get(6),
                request_id: r.get(7),
                attempts: r.get(8),
                at: r.get(9),
                next_attempt_at: r.get(10),
            })
            .collect())
    }

    /// Unix ms of the last successful upload, if any.
    pub async fn last_upload_at(&self) -> Result<Option<i64>, StateError> {
        Ok(
            sqlx::query_scalar("SELECT MAX(last_uploaded_at) FROM targets")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// How many photo files the ledger knows.
    pub async fn file_count(&self) -> Result<i64, StateError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM files")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Clears the failure records of the given targets (target keys or file paths), or of every
    /// failed target when `targets` is empty, so the next pass attempts them again. Returns the
    /// target keys cleared.
    pub async fn clear_failures(&self, targets: &[String]) -> Result<Vec<String>, StateError> {
        let mut tx = self.pool.begin().await?;
        let keys: Vec<String> = if targets.is_empty() {
            sqlx::query_scalar("SELECT target_key FROM targets WHERE state = 'failed'")
                .fetch_all(&mut *tx)
                .await?
        } else {
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
            keys
        };
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
    }

    /// Whether the database can be written (takes and releases the write lock).
    pub async fn check_writable(&self) -> Result<(), StateError> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
        Ok(())
    }
}

/// A looked-up user, as the resolution cache keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedResolution {
    pub object_id: String,
    pub upn: String,
    pub expires_at: i64,
}

/// A synced target, as `verify` checks it.
#[derive(Debug, Clone)]
pub struct SyncedTarget {
    pub target_key: String,
    pub path: Option<String>,
    pub graph_id: Option<String>,
    pub media_etag: Option<String>,
}

impl Ledger {
    /// Every cached resolution that has not expired at `now`.
    pub async fn resolutions(
        &self,
        now: i64,
    ) -> Result<HashMap<String, CachedResolution>, StateError> {
        let rows = sqlx::query(
            "SELECT lookup_key, object_id, upn, expires_at FROM resolutions WHERE expires_at > ?1",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    CachedResolution {
                        object_id: r.get(1),
                        upn: r.get(2),
                        expires_at: r.get(3),
                    },
                )
            })
            .collect())
    }

    /// When `target_key` was first parked, if it is parked.
    pub async fn parked_since(&self, target_key: &str) -> Result<Option<i64>, StateError> {
        Ok(sqlx::query_scalar(
            "SELECT parked_since FROM targets WHERE target_key = ?1 AND state = 'parked'",
        )
        .bind(target_key)
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    /// Files of targets whose retry is due at `now`: parked photos and transient failures.
    pub async fn due_paths(&self, now: i64) -> Result<Vec<String>, StateError> {
        Ok(sqlx::query_scalar(
            "SELECT path FROM targets WHERE path IS NOT NULL AND next_attempt_at <= ?1
               AND (state = 'parked' OR (state = 'failed' AND error_class = 'transient'))
               AND path IN (SELECT path FROM files)",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The earliest retry time of a parked photo or transient failure, if any.
    pub async fn next_due(&self) -> Result<Option<i64>, StateError> {
        Ok(sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM targets
             WHERE state = 'parked' OR (state = 'failed' AND error_class = 'transient')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Synced user and group targets, for `verify` (contact photos carry no etag to compare).
    pub async fn synced_targets(&self) -> Result<Vec<SyncedTarget>, StateError> {
        let rows = sqlx::query(
            "SELECT target_key, path, graph_id, media_etag FROM targets
             WHERE state = 'synced' AND kind IN ('user', 'group') ORDER BY target_key",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| SyncedTarget {
                target_key: r.get(0),
                path: r.get(1),
                graph_id: r.get(2),
                media_etag: r.get(3),
            })
            .collect())
    }

    /// Counts of parked targets and the oldest pending or parked item, for `status`.
    pub async fn parked(&self) -> Result<Vec<FailureRow>, StateError> {
        let rows = sqlx::query(
            "SELECT target_key, path, error_reason, error_message, error_at, next_attempt_at,
                    parked_since, error_status, error_code, error_request_id
             FROM targets WHERE state = 'parked' ORDER BY parked_since, target_key",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| FailureRow {
                target: r.get(0),
                path: r.get(1),
                class: Some("parked".into()),
                reason: r.get(2),
                http_status: r.get(7),
                code: r.get(8),
                message: r.get(3),
                request_id: r.get(9),
                attempts: 0,
                at: r.get::<Option<i64>, _>(6).or(r.get(4)),
                next_attempt_at: r.get(5),
            })
            .collect())
    }
}

/// Milliseconds since the Unix epoch.
/// The database's folder and why a file cannot be created in it, if it cannot.
fn folder_not_writable(path: &Path) -> Option<(PathBuf, std::io::Error)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".photosync-write-test-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
        Err(e) => Some((dir.to_owned(), e)),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(content: &str) -> String {
        blake3::hash(content.as_bytes()).to_hex().to_string()
    }

    #[tokio::test]
    async fn synced_only_with_history_and_snapshot_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("sub/state.db"))
            .await
            .unwrap();
        l.apply(&[
            Op::File {
                path: "/p/a.jpg".into(),
                source: "/p".into(),
                size: 10,
                mtime_ns: 5,
                content_hash: Some(hex("h")),
                target_key: Some("user:a@x".into()),
                now: 1,
            },
            Op::Uploaded {
                target_key: "user:a@x".into(),
                kind: "user",
                path: "/p/a.jpg".into(),
                content_hash: hex("h"),
                fingerprint: "f".into(),
                bytes: 10,
                http_status: 200,
                request_id: Some("r".into()),
                client_request_id: None,
                action: "upload",
                now: 2,
            },
        ])
        .await
        .unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.files["/p/a.jpg"].content_hash, Some(blake3::hash(b"h")));
        // The file and its target share one allocation for the path and one for the key.
        let (path, file) = s.files.get_key_value("/p/a.jpg").unwrap();
        let (key, target) = s.targets.get_key_value("user:a@x").unwrap();
        assert!(Arc::ptr_eq(path, target.path.as_ref().unwrap()));
        assert!(Arc::ptr_eq(key, file.target_key.as_ref().unwrap()));
        assert_eq!(s.targets["user:a@x"].state, "synced");
        assert!(s.files_of("user:a@x").is_empty());
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
            .fetch_one(l.pool())
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Reopening runs the migrations again as a no-op.
        l.close().await;
        let l = Ledger::open(&dir.path().join("sub/state.db"))
            .await
            .unwrap();
        assert_eq!(
            l.counts_by_state().await.unwrap(),
            [("synced".to_owned(), 1)]
        );
    }

    fn file_op(path: &str, size: i64, hash: &str) -> Op {
        Op::File {
            path: path.into(),
            source: "/p".into(),
            size,
            mtime_ns: 5,
            content_hash: Some(hex(hash)),
            target_key: Some("user:a@x".into()),
            now: 1,
        }
    }

    fn uploaded_op(hash: &str, now: i64) -> Op {
        Op::Uploaded {
            target_key: "user:a@x".into(),
            kind: "user",
            path: "/p/a.jpg".into(),
            content_hash: hex(hash),
            fingerprint: "f".into(),
            bytes: 10,
            http_status: 200,
            request_id: Some(format!("r{now}")),
            client_request_id: None,
            action: "upload",
            now,
        }
    }

    #[tokio::test]
    async fn gathered_writes_keep_the_batch_order_for_each_row() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        let failed = Op::Failed {
            target_key: "user:a@x".into(),
            kind: "user",
            path: "/p/a.jpg".into(),
            content_hash: Some(hex("h2")),
            fingerprint: "f".into(),
            class: FailureClass::Transient,
            reason: "http_503".into(),
            http_status: Some(503),
            code: None,
            message: "busy".into(),
            request_id: None,
            attempts: 3,
            next_attempt_at: Some(9),
            action: "upload",
            now: 3,
        };
        l.apply(&[
            file_op("/p/a.jpg", 1, "h1"),
            uploaded_op("h1", 2),
            file_op("/p/a.jpg", 2, "h2"),
            failed.clone(),
            file_op("/p/b.jpg", 3, "h3"),
            Op::ForgetFile {
                path: "/p/b.jpg".into(),
            },
            file_op("/p/a.jpg", 4, "h4"),
            uploaded_op("h4", 4),
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
            ("synced", Some(blake3::hash(b"h4")), true)
        );
        let history: Vec<(String, Option<String>, Option<i64>)> =
            sqlx::query_as("SELECT result, content_hash, http_status FROM uploads ORDER BY id")
                .fetch_all(l.pool())
                .await
                .unwrap();
        assert_eq!(
            history,
            [
                ("ok".to_owned(), Some(hex("h1")), Some(200)),
                ("failed_transient".to_owned(), Some(hex("h2")), Some(503)),
                ("ok".to_owned(), Some(hex("h4")), Some(200)),
            ]
        );
        // A read-back etag lands on the upload before it, the later of two wins.
        let etag = |e: &str| Op::Etag {
            target_key: "user:a@x".into(),
            graph_id: None,
            media_etag: Some(e.into()),
        };
        l.apply(&[
            uploaded_op("h6", 6),
            etag("e1"),
            uploaded_op("h7", 7),
            etag("e2"),
        ])
        .await
        .unwrap();
        let etag: Option<String> =
            sqlx::query_scalar("SELECT media_etag FROM targets WHERE target_key = 'user:a@x'")
                .fetch_one(l.pool())
                .await
                .unwrap();
        assert_eq!(etag.as_deref(), Some("e2"));
        // And the other way round: a failure after a success in one batch leaves it failed.
        l.apply(&[uploaded_op("h5", 5), failed]).await.unwrap();
        let s = l.snapshot().await.unwrap();
        assert_eq!(s.targets["user:a@x"].state, "failed");
    }

    #[tokio::test]
    async fn the_snapshot_reads_every_row_and_the_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(&dir.path().join("state.db")).await.unwrap();
        let n = 9000;
        let mut ops = Vec::new();
        for i in 0..n {
            let key = format!("user:u{i}@x");
            ops.push(Op::File {
                path: format!("/p/u{i}.jpg"),
                source: "/p".into(),
                size: i,
                mtime_ns: 5,
                content_hash: Some(hex(&key)),
                target_key: Some(key.clone()),
                now: 1,
            });
            ops.push(Op::Uploaded {
                target_key: key.clone(),
                kind: "user",
                path: format!("/p/u{i}.jpg"),
                content_hash: hex(&key),
                fingerprint: "f".into(),
                bytes: 10,
                http_status: 200,
                request_id: None,
                client_request_id: None,
                action: "upload",
                now: 2,
            });
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
        assert_eq!(
            s.targets[&*format!("user:u{}@x", n - 1)]
                .last_fingerprint
                .as_deref(),
            Some("f")
        );
        let mut shared = s.files_of("user:u0@x").to_vec();
        shared.sort();
        assert_eq!(shared, ["/p/\"quoted\" \\ é.jpg", "/p/u0.jpg"]);
        assert!(s.files_of("user:u1@x").is_empty());
        // Read-back etags land on known targets only.
        let mut etags: Vec<Op> = (0..n)
            .map(|i| Op::Etag {
                target_key: format!("user:u{i}@x"),
                graph_id: None,
                media_etag: Some(format!("e{i}")),
            })
            .collect();
        etags.push(Op::Etag {
            target_key: "user:nobody@x".into(),
            graph_id: Some("g".into()),
            media_etag: Some("e".into()),
        });
        let started = std::time::Instant::now();
        l.apply(&etags).await.unwrap();
        let elapsed = started.elapsed();
        let (targets, with_etag): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COUNT(media_etag) FROM targets")
                .fetch_one(l.pool())
                .await
                .unwrap();
        assert_eq!((targets, with_etag), (n, n), "{elapsed:?}");
    }
}
