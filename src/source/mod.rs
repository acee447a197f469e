//! Walking a source tree: every regular file under the root, with its size and mtime.
//!
//! Streaming: entries are sent as they are found, so planning starts before the walk ends and
//! memory does not grow with the tree. The walk runs on a blocking thread. Symlinks are followed
//! only when they stay inside the root (a link out of the root, or a loop, is reported and
//! skipped). Hidden directories are not descended into.

pub mod probe;
pub mod watch;

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use tokio::sync::mpsc;

/// A regular file found under a source root.
#[derive(Debug, Clone)]
pub struct FileEntry {
    pub source: usize,
    pub path: PathBuf,
    /// How many leading components of `path` are the source root's (see [`FileEntry::rel`]):
    /// a count instead of a second path keeps a queued entry small.
    root_components: usize,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileEntry {
    /// The path relative to the source root.
    pub fn rel(&self) -> &Path {
        let mut c = self.path.components();
        for _ in 0..self.root_components {
            c.next();
        }
        c.as_path()
    }
}

/// What the walk found.
#[derive(Debug)]
pub enum Found {
    File(FileEntry),
    /// Something under the root that could not be read or followed.
    Problem {
        path: PathBuf,
        message: String,
    },
    /// A path that was asked about no longer exists.
    Gone {
        source: usize,
        path: PathBuf,
    },
    /// A source root's walk finished; `files` were found under it.
    RootDone {
        source: usize,
        files: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source root {path} cannot be read: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("source root {path} is not a directory")]
    NotADirectory { path: PathBuf },
}

/// Checks that a root exists and is a readable directory.
pub fn check_root(root: &Path) -> Result<PathBuf, SourceError> {
    let canonical = std::fs::canonicalize(root).map_err(|source| SourceError::Root {
        path: root.to_owned(),
        source,
    })?;
    if !canonical.is_dir() {
        return Err(SourceError::NotADirectory {
            path: root.to_owned(),
        });
    }
    std::fs::read_dir(&canonical).map_err(|source| SourceError::Root {
        path: root.to_owned(),
        source,
    })?;
    Ok(canonical)
}

/// Whether `root` cannot be read or holds no regular file at all (hidden folders aside, as in
/// a walk): what an unmounted share or a wiped tree looks like. Stops at the first file.
pub fn looks_emptied(root: &Path) -> bool {
    if check_root(root).is_err() {
        return true;
    }
    !tree(root).any(|e| e.is_ok_and(|e| e.file_type().is_file()))
}

/// Everything under `start`, links followed. Hidden folders (.snapshot, .Trash) are not
/// descended into; hidden files are yielded, so that the mapping counts them as skipped.
fn tree(start: &Path) -> walkdir::FilterEntry<walkdir::IntoIter, fn(&walkdir::DirEntry) -> bool> {
    fn not_hidden_folder(e: &walkdir::DirEntry) -> bool {
        e.depth() == 0
            || !e.file_type().is_dir()
            || !e.file_name().as_encoded_bytes().starts_with(b".")
    }
    walkdir::WalkDir::new(start)
        .follow_links(true)
        .into_iter()
        .filter_entry(not_hidden_folder)
}

/// Stats one path as the walker would; `None` when it is not a regular file (or is gone).
pub fn stat_file(source: usize, root: &Path, path: &Path) -> Option<FileEntry> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    path.strip_prefix(root).ok()?;
    Some(FileEntry {
        source,
        path: path.to_owned(),
        root_components: root.components().count(),
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
    })
}

pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Walks `root` on a blocking thread, sending what it finds to `tx`. Stops early when the
/// receiver is dropped. Returns how many files were sent.
pub fn walk(source: usize, root: &Path, tx: &mpsc::Sender<Found>) -> Result<u64, SourceError> {
    let sent = walk_from(source, root, root, tx)?;
    let _ = tx.blocking_send(Found::RootDone {
        source,
        files: sent,
    });
    Ok(sent)
}

/// Looks at specific paths (from the watcher): files are stat'ed, folders walked, and paths that
/// no longer exist reported as gone. `roots` are the source roots; a path under none is ignored.
pub fn visit_paths(roots: &[PathBuf], paths: Vec<PathBuf>, tx: &mpsc::Sender<Found>) {
    for path in paths {
        let Some((n, root)) = roots
            .iter()
            .enumerate()
            .find(|(_, r)| path.starts_with(r) && path != **r)
        else {
            continue;
        };
        let found = match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Found::Gone { source: n, path },
            Err(e) => Found::Problem {
                path,
                message: e.to_string(),
            },
            Ok(m) if m.is_dir() => {
                if let Err(e) = walk_from(n, root, &path, tx) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot walk new folder");
                }
                continue;
            }
            Ok(_) => match stat_file(n, root, &path) {
                Some(entry) => Found::File(entry),
                None => continue,
            },
        };
        if tx.blocking_send(found).is_err() {
            return;
        }
    }
}

fn walk_from(
    source: usize,
    root: &Path,
    start: &Path,
    tx: &mpsc::Sender<Found>,
) -> Result<u64, SourceError> {
    let canonical_root = check_root(root)?;
    let root_components = root.components().count();
    let mut sent = 0u64;
    let mut walker = tree(start);
    while let Some(entry) = walker.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map_or_else(|| root.to_owned(), Path::to_path_buf);
                let message = if e.loop_ancestor().is_some() {
                    "symlink loop; not followed".to_owned()
                } else {
                    e.to_string()
                };
                if tx.blocking_send(Found::Problem { path, message }).is_err() {
                    break;
                }
                continue;
            }
        };
        // A link (to a file or a folder) is followed only when its target is inside the root;
        // everything below a followed in-root folder link is then inside the root too.
        if entry.path_is_symlink() && entry.depth() > 0 {
            let inside = std::fs::canonicalize(entry.path())
                .is_ok_and(|real| real.starts_with(&canonical_root));
            if !inside {
                if entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                let found = Found::Problem {
                    path: entry.path().to_owned(),
                    message: "symlink leads out of the source root; not followed".into(),
                };
                if tx.blocking_send(found).is_err() {
                    break;
                }
                continue;
            }
        }
        if !entry.file_type().is_file() {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let found = Found::File(FileEntry {
            source,
            path: path.to_owned(),
            root_components,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
        if tx.blocking_send(found).is_err() {
            break;
        }
        sent += 1;
    }
    Ok(sent)
}
