//! One writer per ledger: an exclusive `flock` on `<database>.lock`, held for the life of the
//! command that writes (`backfill`, `run`, `retry`, `verify`). Readers (`status`, `check`,
//! `backfill --dry-run`) never take it.
//!
//! The file says who holds it (pid and start time) so that a refused second writer can name
//! the first. The kernel releases a `flock` when its process ends, however it ends (`kill -9`
//! included), so a lock is never stale as far as the kernel is concerned: a file that still
//! names a holder but can be locked was left by a process that is gone, and the new holder
//! takes it over and says so. A clean exit empties the file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the ledger {} is in use by photosync ({holder}); stop it first, or use `status` and `backfill --dry-run`, which only read", ledger.display())]
    Held { ledger: PathBuf, holder: Holder },
    #[error("cannot lock the ledger {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Who holds (or held) a lock, as its file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    pub started: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pid = self.pid.map_or("unknown".to_owned(), |p| p.to_string());
        let started = self.started.as_deref().unwrap_or("unknown");
        write!(f, "pid {pid}, started {started}")
    }
}

impl Holder {
    fn parse(text: &str) -> Option<Holder> {
        let mut h = Holder::default();
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("pid", v)) => h.pid = v.trim().parse().ok(),
                Some(("started", v)) => h.started = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        (h.pid.is_some() || h.started.is_some()).then_some(h)
    }
}

/// The held lock; dropping it empties the file and releases the lock.
#[derive(Debug)]
pub struct LedgerLock {
    file: File,
    path: PathBuf,
    /// The holder this one replaced, if its process was gone.
    pub took_over: Option<Holder>,
}

/// Where the lock of the ledger at `database` lives: beside it, `<database>.lock`.
pub fn lock_path(database: &Path) -> PathBuf {
    let mut p = database.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

impl LedgerLock {
    /// Takes the lock of the ledger at `database` at once, or says who holds it.
    pub fn acquire(database: &Path) -> Result<LedgerLock, LockError> {
        let path = lock_path(database);
        let io = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        // The ledger creates its directory when it opens; the lock comes first.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(LockError::Held {
                    ledger: database.to_owned(),
                    holder: read_holder(&mut file).unwrap_or_default(),
                })
            }
            Err(e) => return Err(io(e.into())),
        }
        let took_over = read_holder(&mut file);
        write_holder(&mut file).map_err(io)?;
        Ok(LedgerLock {
            file,
            path,
            took_over,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LedgerLock {
    fn drop(&mut self) {
        // Empty, so that the next holder does not report a takeover; the kernel releases the
        // lock when the file closes.
        let _ = self.file.set_len(0);
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

fn write_holder(file: &mut File) -> std::io::Result<()> {
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "pid {}\nstarted {started}", std::process::id())?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holder_and_a_released_one_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.db");
        let first = LedgerLock::acquire(&db).unwrap();
        assert_eq!(first.took_over, None);
        assert_eq!(first.path(), dir.path().join("ledger.db.lock"));
        // flock locks belong to the open file, so a second open in one process is refused too.
        let err = LedgerLock::acquire(&db).unwrap_err();
        let msg = err.to_string();
        let me = format!("in use by photosync (pid {}, started ", std::process::id());
        assert!(msg.contains(&me), "{msg}");
        assert!(msg.contains(&db.display().to_string()), "{msg}");
        drop(first);
        let again = LedgerLock::acquire(&db).unwrap();
        assert_eq!(again.took_over, None, "a clean release is no takeover");
    }

    #[test]
    fn a_lock_file_left_by_a_gone_process_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.db");
        std::fs::write(lock_path(&db), "pid 999999\nstarted 2026-01-01T00:00:00Z\n").unwrap();
        let lock = LedgerLock::acquire(&db).unwrap();
        let gone = lock.took_over.clone().unwrap();
        assert_eq!(gone.pid, Some(999_999));
        assert_eq!(gone.to_string(), "pid 999999, started 2026-01-01T00:00:00Z");
    }
}
