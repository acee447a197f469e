//! Walking a source tree: every regular file under the root, with its size and mtime.
//!
//! Streaming: entries are sent as they are found, so planning starts before the walk ends and
//! memory does not grow with the tree. The walk runs on a blocking thread. Symlinks are followed
//! only when they stay inside the root (a link out of the root, or a loop, is reported and
//! skipped). Hidden directories are not descended into. Nothing under the root is dropped
//! without a word: what cannot be followed or read is sent as a [`Found::Problem`] naming the
//! path and why.

pub mod probe;
pub mod watch;

use std::io;
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
        problem: Problem,
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

/// Why something under a root was not followed or not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// A symlink whose target is outside the source root: not followed, by design.
    OutsideRoot,
    /// A folder symlink to one of its own ancestors: not followed, so the walk ends.
    LoopDetected,
    /// A symlink whose target does not exist or cannot be resolved (a loop of links).
    BrokenLink,
    /// A file or folder that exists but cannot be read: permission denied, an I/O error.
    Unreadable(io::ErrorKind),
}

impl Problem {
    /// A stable snake_case reason for counters, the summary and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Problem::OutsideRoot => "outside_root",
            Problem::LoopDetected => "symlink_loop",
            Problem::BrokenLink => "broken_link",
            Problem::Unreadable(_) => "unreadable",
        }
    }

    /// Whether photos may be missing because of it. A link left unfollowed is the tree's
    /// shape, a skip; a file or folder photosync cannot read hides photos HR put there, and
    /// only an operator can fix that, so it is a failure that names the path.
    pub fn is_failure(self) -> bool {
        matches!(self, Problem::Unreadable(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source root {path} cannot be read: {error}")]
    Root {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("source root {path} is not a directory")]
    NotADirectory { path: PathBuf },
}

/// Checks that a root exists and is a readable directory.
pub fn check_root(root: &Path) -> Result<PathBuf, SourceError> {
    let canonical = std::fs::canonicalize(root).map_err(|error| SourceError::Root {
        path: root.to_owned(),
        error,
    })?;
    if !canonical.is_dir() {
        return Err(SourceError::NotADirectory {
            path: root.to_owned(),
        });
    }
    std::fs::read_dir(&canonical).map_err(|error| SourceError::Root {
        path: root.to_owned(),
        error,
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

/// Stats one path as the walker would: a regular file inside the root is a [`Found::File`],
/// a path that no longer exists is [`Found::Gone`], a link out of the root or one that cannot
/// be followed, or a file that cannot be stat'ed, is a [`Found::Problem`]. `None` for anything
/// else (a folder, a device, a path outside the root).
pub fn stat_file(source: usize, root: &Path, path: &Path) -> Option<Found> {
    path.strip_prefix(root).ok()?;
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let problem = |problem: Problem, message: String| Some(problem_at(path, problem, message));
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if is_link => {
            return problem(
                Problem::BrokenLink,
                format!("symlink cannot be followed: {e}"),
            )
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some(Found::Gone {
                source,
                path: path.to_owned(),
            })
        }
        Err(e) => {
            return problem(
                Problem::Unreadable(e.kind()),
                format!("cannot read its metadata: {e}"),
            )
        }
    };
    if !meta.is_file() {
        return None;
    }
    if is_link && !inside(path, root) {
        return problem(Problem::OutsideRoot, OUTSIDE_ROOT.into());
    }
    Some(Found::File(FileEntry {
        source,
        path: path.to_owned(),
        root_components: root.components().count(),
        size: meta.len(),
        mtime_ns: mtime_ns(&meta),
    }))
}

const OUTSIDE_ROOT: &str = "symlink leads out of the source root; not followed";

/// Whether `path`, its links resolved, is inside `root`, its links resolved too.
fn inside(path: &Path, root: &Path) -> bool {
    match (std::fs::canonicalize(path), std::fs::canonicalize(root)) {
        (Ok(real), Ok(root)) => real.starts_with(root),
        _ => false,
    }
}

/// What a walk error is: a loop, a link that cannot be followed, or something unreadable.
/// `None` for a path that vanished while the walk ran: it is absent, which not sending it says.
fn classify(e: &walkdir::Error) -> Option<(Problem, String)> {
    if e.loop_ancestor().is_some() {
        return Some((
            Problem::LoopDetected,
            "symlink loop; not followed".to_owned(),
        ));
    }
    let kind = e.io_error().map_or(io::ErrorKind::Other, io::Error::kind);
    let cause = e
        .io_error()
        .map_or_else(|| e.to_string(), ToString::to_string);
    let path = e.path()?;
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && std::fs::metadata(path).is_err() {
        return Some((
            Problem::BrokenLink,
            format!("symlink cannot be followed: {cause}"),
        ));
    }
    if kind == io::ErrorKind::NotFound && !is_link {
        return None;
    }
    Some((
        Problem::Unreadable(kind),
        format!("cannot be read: {cause}"),
    ))
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
            Err(e) => problem_at(
                &path,
                Problem::Unreadable(e.kind()),
                format!("cannot read its metadata: {e}"),
            ),
            Ok(m) if m.is_dir() => {
                if let Err(e) = walk_from(n, root, &path, tx) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot walk new folder");
                }
                continue;
            }
            Ok(_) => match stat_file(n, root, &path) {
                Some(found) => found,
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
        let found = match entry {
            Ok(entry) => {
                // A link (to a file or a folder) is followed only when its target is inside the
                // root; everything below a followed in-root folder link is then inside it too.
                let outside = entry.path_is_symlink()
                    && entry.depth() > 0
                    && !std::fs::canonicalize(entry.path())
                        .is_ok_and(|real| real.starts_with(&canonical_root));
                if outside && entry.file_type().is_dir() {
                    walker.skip_current_dir();
                }
                if outside {
                    Some(problem_at(
                        entry.path(),
                        Problem::OutsideRoot,
                        OUTSIDE_ROOT.into(),
                    ))
                } else {
                    file_found(source, root_components, &entry)
                }
            }
            Err(e) => classify(&e)
                .map(|(problem, message)| problem_at(e.path().unwrap_or(root), problem, message)),
        };
        let Some(found) = found else { continue };
        let is_file = matches!(found, Found::File(_));
        if tx.blocking_send(found).is_err() {
            break;
        }
        sent += u64::from(is_file);
    }
    Ok(sent)
}

fn problem_at(path: &Path, problem: Problem, message: String) -> Found {
    Found::Problem {
        path: path.to_owned(),
        problem,
        message,
    }
}

/// A regular file's entry, or the problem reading its metadata; `None` for anything else.
fn file_found(source: usize, root_components: usize, entry: &walkdir::DirEntry) -> Option<Found> {
    if !entry.file_type().is_file() {
        return None;
    }
    match entry.metadata() {
        Ok(meta) => Some(Found::File(FileEntry {
            source,
            path: entry.path().to_owned(),
            root_components,
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        })),
        Err(e) => classify(&e).map(|(problem, message)| problem_at(entry.path(), problem, message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// Everything a walk of `root` sends, in order.
    fn walk_all(root: &Path) -> Vec<Found> {
        let (tx, mut rx) = mpsc::channel(64);
        let root = root.to_owned();
        let walker = std::thread::spawn(move || walk(0, &root, &tx));
        let mut found = Vec::new();
        while let Some(f) = rx.blocking_recv() {
            found.push(f);
        }
        walker.join().unwrap().unwrap();
        found
    }

    fn problems(found: &[Found]) -> Vec<(String, Problem)> {
        let mut p: Vec<(String, Problem)> = found
            .iter()
            .filter_map(|f| match f {
                Found::Problem { path, problem, .. } => Some((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    *problem,
                )),
                _ => None,
            })
            .collect();
        p.sort_by(|a, b| a.0.cmp(&b.0));
        p
    }

    #[test]
    fn every_walk_problem_has_its_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.jpg"), b"a").unwrap();
        std::fs::write(dir.path().join("outside.jpg"), b"o").unwrap();
        symlink(dir.path().join("outside.jpg"), root.join("out.jpg")).unwrap();
        symlink(root.join("missing.jpg"), root.join("dangling.jpg")).unwrap();
        symlink(root.join("self.jpg"), root.join("self.jpg")).unwrap();
        symlink(&root, root.join("sub/loop")).unwrap();
        symlink(root.join("sub/a.jpg"), root.join("inside.jpg")).unwrap();
        let found = walk_all(&root);
        assert_eq!(
            problems(&found),
            [
                ("dangling.jpg".to_owned(), Problem::BrokenLink),
                ("loop".to_owned(), Problem::LoopDetected),
                ("out.jpg".to_owned(), Problem::OutsideRoot),
                ("self.jpg".to_owned(), Problem::BrokenLink),
            ]
        );
        let files = found.iter().filter(|f| matches!(f, Found::File(_))).count();
        assert_eq!(files, 2, "a.jpg and the link to it: {found:?}");
        assert!(
            matches!(found.last(), Some(Found::RootDone { files: 2, .. })),
            "problems are not counted as files: {found:?}"
        );
        let reasons: Vec<&str> = problems(&found).iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(
            reasons,
            ["broken_link", "symlink_loop", "outside_root", "broken_link"]
        );
        assert!(problems(&found).iter().all(|(_, p)| !p.is_failure()));
    }

    /// A real walkdir error as root meets it: a path component that is a file.
    #[test]
    fn an_unreadable_path_is_a_failure_naming_the_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let mut walker = walkdir::WalkDir::new(dir.path().join("file/below")).into_iter();
        let e = walker.next().unwrap().unwrap_err();
        let (problem, message) = classify(&e).unwrap();
        assert_eq!(problem, Problem::Unreadable(io::ErrorKind::NotADirectory));
        assert!(problem.is_failure());
        assert_eq!(problem.as_str(), "unreadable");
        assert!(message.contains("Not a directory"), "{message}");
        // A path that vanished during the walk is not a problem: it is simply not there.
        let mut walker = walkdir::WalkDir::new(dir.path().join("gone")).into_iter();
        assert!(classify(&walker.next().unwrap().unwrap_err()).is_none());
    }

    /// A watched path used to be dropped without a word when it could not be stat'ed, and a
    /// link out of the root was taken as a file.
    #[test]
    fn stat_file_reports_links_it_does_not_follow() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.jpg"), b"a").unwrap();
        std::fs::write(dir.path().join("outside.jpg"), b"o").unwrap();
        symlink(dir.path().join("outside.jpg"), root.join("out.jpg")).unwrap();
        symlink(root.join("missing.jpg"), root.join("dangling.jpg")).unwrap();
        let stat = |name: &str| stat_file(0, &root, &root.join(name));
        assert!(matches!(stat("a.jpg"), Some(Found::File(f)) if f.size == 1));
        assert!(matches!(stat("nothing.jpg"), Some(Found::Gone { .. })));
        assert!(matches!(
            stat("dangling.jpg"),
            Some(Found::Problem {
                problem: Problem::BrokenLink,
                ..
            })
        ));
        assert!(matches!(
            stat("out.jpg"),
            Some(Found::Problem {
                problem: Problem::OutsideRoot,
                ..
            })
        ));
        assert!(stat_file(0, &root, &dir.path().join("outside.jpg")).is_none());
    }
}
