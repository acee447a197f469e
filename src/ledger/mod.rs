//! The ledger: a SQLite file that remembers what photosync saw and what it sent.
//!
//! Invariants:
//! - a target is `synced` only after Graph answered 2xx, and that state change is written in the
//!   same transaction as its history row;
//! - writes are applied in batches, each batch one transaction (WAL, `synchronous = NORMAL`), so
//!   a crash loses at most the batch being written: the next run redoes those uploads, which is
//!   safe because a photo upload is idempotent;
//! - the planner reads a [`Snapshot`] loaded in a few queries per table, never a query per file.
//!
//! Two drivers share the file: sqlx (this file, `apply.rs`, `queries.rs`) owns the pool, the
//! migrations and every write; rusqlite reads the planner's [`Snapshot`] (`snapshot.rs` says
//! why).
//!
//! - `states.rs`: the typed words stored as text ([`TargetState`], [`FailureClass`]);
//! - `snapshot.rs`: the planner's view, read in one transaction;
//! - `op.rs`: the write vocabulary ([`Op`]); `apply.rs`: [`Ledger::apply`], one small function
//!   per op, one transaction a batch;
//! - `queries.rs`: what `status`, `retry`, `verify` and the daemon read;
//! - `skipped.rs`: files that are not photos, and face crops that fell back to the centre.

mod apply;
mod bulk;
#[cfg(test)]
mod fixtures;
pub mod lock;
mod op;
mod queries;
mod skipped;
mod snapshot;
mod states;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use op::{HistoryAction, Op};
pub use queries::{CachedResolution, FailureRow, SyncedTarget};
pub use skipped::{CropFallback, SkippedFile, SkippedRow};
pub use snapshot::{ContentHash, FastHash, FileRow, LastFailure, Snapshot, TargetRow};
pub use states::{FailureClass, TargetState, UnknownText};

/// A ledger error. Every variant names the database file, and prints its cause in its message
/// rather than exposing it as `source()`: the command line prints errors with `{}` alone, and a
/// chain printer then shows the cause once, not twice.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot create the folder {} of the database {}: {error}", dir.display(), path.display())]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open the database {}: {error}", path.display())]
    Open { path: PathBuf, error: sqlx::Error },
    #[error("cannot open the database {}: its folder {} is not writable ({error}); the ledger and its -wal and -shm files need a writable folder", path.display(), dir.display())]
    FolderNotWritable {
        path: PathBuf,
        dir: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot migrate the database {}: {error}", path.display())]
    Migrate {
        path: PathBuf,
        error: sqlx::migrate::MigrateError,
    },
    #[error("cannot read the database {}: {error}", path.display())]
    Read { path: PathBuf, error: sqlx::Error },
    #[error("cannot write the database {}: {error}", path.display())]
    Write { path: PathBuf, error: sqlx::Error },
    #[error("cannot read the ledger {}: {error}", path.display())]
    Snapshot {
        path: PathBuf,
        error: rusqlite::Error,
    },
}

#[derive(Clone, Debug)]
pub struct Ledger {
    pool: SqlitePool,
    path: PathBuf,
}

impl Ledger {
    /// Opens (creating if needed) and migrates the database.
    pub async fn open(path: &Path) -> Result<Ledger, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| LedgerError::CreateDir {
                path: path.to_owned(),
                dir: dir.to_owned(),
                error,
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
            .map_err(|error| match folder_not_writable(path) {
                // SQLite only says "unable to open database file".
                Some((dir, error)) => LedgerError::FolderNotWritable {
                    path: path.to_owned(),
                    dir,
                    error,
                },
                None => LedgerError::Open {
                    path: path.to_owned(),
                    error,
                },
            })?;
        sqlx::migrate!()
            .run(&pool)
            .await
            .map_err(|error| LedgerError::Migrate {
                path: path.to_owned(),
                error,
            })?;
        Ok(Ledger {
            pool,
            path: path.to_owned(),
        })
    }

    /// Opens an existing database without writing to it (for `--dry-run` and `status`);
    /// `None` when there is none yet.
    pub async fn open_read_only(path: &Path) -> Result<Option<Ledger>, LedgerError> {
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
            .map_err(|error| LedgerError::Open {
                path: path.to_owned(),
                error,
            })?;
        Ok(Some(Ledger {
            pool,
            path: path.to_owned(),
        }))
    }

    fn options(path: &Path) -> Result<SqliteConnectOptions, LedgerError> {
        Ok(SqliteConnectOptions::from_str("sqlite://")
            .map_err(|error| LedgerError::Open {
                path: path.to_owned(),
                error,
            })?
            .filename(path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Whether the database can be written (takes and releases the write lock).
    pub async fn check_writable(&self) -> Result<(), LedgerError> {
        let result = async {
            let mut conn = self.pool.acquire().await?;
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
            sqlx::query("ROLLBACK").execute(&mut *conn).await?;
            Ok(())
        };
        result.await.map_err(|e| self.write_error(e))
    }

    fn read_error(&self, error: sqlx::Error) -> LedgerError {
        LedgerError::Read {
            path: self.path.clone(),
            error,
        }
    }

    fn write_error(&self, error: sqlx::Error) -> LedgerError {
        LedgerError::Write {
            path: self.path.clone(),
            error,
        }
    }
}

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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_creates_the_folder_and_reopening_migrates_as_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        assert!(Ledger::open_read_only(&path).await.unwrap().is_none());
        let l = Ledger::open(&path).await.unwrap();
        assert_eq!(l.path(), path);
        l.check_writable().await.unwrap();
        l.close().await;
        let l = Ledger::open(&path).await.unwrap();
        l.check_writable().await.unwrap();
        l.close().await;
        let ro = Ledger::open_read_only(&path).await.unwrap().unwrap();
        assert!(ro.snapshot().await.unwrap().targets.is_empty());
    }

    #[tokio::test]
    async fn errors_name_the_database_and_print_their_cause_once() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "not a folder").unwrap();
        let path = file.join("sub/state.db");
        let e = Ledger::open(&path).await.unwrap_err();
        let LedgerError::CreateDir { error, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(
            e.to_string(),
            format!(
                "cannot create the folder {} of the database {}: {error}",
                file.join("sub").display(),
                path.display()
            )
        );
        assert!(e.source().is_none());
    }
}
