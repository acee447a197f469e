//! Watching the source trees for changes, and waiting until a changed file is stable.
//!
//! Watcher events are hints, never the truth: a path that changed is looked at again (stat, then
//! the planner decides), and when events are lost (the inotify queue overflowed, the channel was
//! full, a watch could not be set) the `rescan` flag is raised instead of dropping anything
//! silently. A root that cannot be watched at all is polled by periodic rescans.
//!
//! A file is handed on only once its size and mtime have not changed for `debounce`, so a photo
//! still being copied in over SMB or rsync is never read half-written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::config::WatchMode;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: the inotify watch limit is reached; raise it with `sysctl fs.inotify.max_user_watches=524288` (and fs.inotify.max_user_instances); polling this root meanwhile")]
    Limit { path: PathBuf },
    /// Logged, not handed on: its message carries the watcher's error itself.
    #[error("cannot watch {path}: {error}; polling this root meanwhile")]
    Other { path: PathBuf, error: notify::Error },
}

/// A root's device and inode (`None`: it cannot be stat'ed). inotify watches inodes and says
/// nothing when a root is unmounted or mounted over: its watch just goes deaf. A root whose
/// identity changed has to be watched again and rescanned.
pub type Identity = Option<(u64, u64)>;

/// The identity of each root, in order.
pub fn identities(roots: &[PathBuf]) -> Vec<Identity> {
    use std::os::unix::fs::MetadataExt as _;
    roots
        .iter()
        .map(|r| std::fs::metadata(r).ok().map(|m| (m.dev(), m.ino())))
        .collect()
}

/// The watchers of every root. Dropping it stops them.
pub struct Watch {
    _watchers: Vec<notify::RecommendedWatcher>,
    roots: Vec<PathBuf>,
    /// Each root's identity from just before it was watched.
    identities: Vec<Identity>,
    /// Roots (by source index) that are not watched and must be polled.
    pub polled: Vec<usize>,
    /// Raised when events may have been lost: the caller rescans everything.
    pub rescan: Arc<AtomicBool>,
}

impl Watch {
    /// Whether every root has a live watcher.
    pub fn all_watched(&self) -> bool {
        self.polled.is_empty()
    }

    /// The roots whose identity in `now` (from [`identities`]) is not the one they had when
    /// they were watched.
    pub fn moved(&self, now: &[Identity]) -> Vec<&Path> {
        self.roots
            .iter()
            .zip(&self.identities)
            .zip(now)
            .filter(|((_, then), now)| then != now)
            .map(|((root, _), _)| root.as_path())
            .collect()
    }
}

/// Starts one recursive watcher per root (none in poll mode). Changed paths go to `tx`.
pub fn start(roots: &[PathBuf], mode: WatchMode, tx: &mpsc::Sender<PathBuf>) -> Watch {
    let rescan = Arc::new(AtomicBool::new(false));
    let identities = identities(roots);
    let mut watchers = Vec::new();
    let mut polled = Vec::new();
    for (n, root) in roots.iter().enumerate() {
        if mode == WatchMode::Poll {
            polled.push(n);
            continue;
        }
        match watch_root(root, tx.clone(), rescan.clone()) {
            Ok(w) => watchers.push(w),
            Err(e) => {
                tracing::error!(root = %root.display(), error = %e, "watch failed");
                polled.push(n);
            }
        }
    }
    Watch {
        _watchers: watchers,
        roots: roots.to_vec(),
        identities,
        polled,
        rescan,
    }
}

fn watch_root(
    root: &Path,
    tx: mpsc::Sender<PathBuf>,
    flag: Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, WatchError> {
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if event.need_rescan() {
                tracing::warn!("file system events were lost (queue overflow); rescanning");
                flag.store(true, Ordering::Relaxed);
            }
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                if tx.try_send(path).is_err() {
                    // Never drop a hint silently: a rescan will find what it was about.
                    flag.store(true, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "watcher error; rescanning");
            flag.store(true, Ordering::Relaxed);
        }
    };
    let classify = |source: notify::Error| match &source.kind {
        notify::ErrorKind::MaxFilesWatch => WatchError::Limit {
            path: root.to_owned(),
        },
        notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28) => WatchError::Limit {
            path: root.to_owned(),
        },
        _ => WatchError::Other {
            path: root.to_owned(),
            error: source,
        },
    };
    let mut w = notify::recommended_watcher(handler).map_err(classify)?;
    w.watch(root, RecursiveMode::Recursive).map_err(classify)?;
    Ok(w)
}

type Stat = Option<(u64, i64, bool)>;

fn stat(path: &Path) -> Stat {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), crate::source::mtime_ns(&m), m.is_dir()))
}

/// Paths that changed, each waiting until it has been still for `debounce`.
#[derive(Default)]
pub struct Debounce {
    pending: HashMap<PathBuf, (Stat, Instant)>,
}

impl Debounce {
    /// A change was seen at `path`: (re)start its quiet period.
    pub fn touch(&mut self, path: PathBuf) {
        let s = stat(&path);
        self.pending.insert(path, (s, Instant::now()));
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Paths whose size and mtime (or absence) have not changed for `debounce`; they leave the
    /// pending set. A path that changed since the last look starts its quiet period again.
    pub fn due(&mut self, debounce: Duration) -> Vec<PathBuf> {
        let now = Instant::now();
        let mut ready = Vec::new();
        self.pending.retain(|path, (last, since)| {
            let current = stat(path);
            if current != *last {
                *last = current;
                *since = now;
                return true;
            }
            if now.duration_since(*since) >= debounce {
                ready.push(path.clone());
                return false;
            }
            true
        });
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_due_only_after_it_stopped_changing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jpg");
        std::fs::write(&p, b"1").unwrap();
        let mut d = Debounce::default();
        d.touch(p.clone());
        assert!(d.due(Duration::from_millis(200)).is_empty());
        std::thread::sleep(Duration::from_millis(120));
        std::fs::write(&p, b"12").unwrap();
        // Changed since the last look: the quiet period restarts.
        assert!(d.due(Duration::from_millis(200)).is_empty());
        std::thread::sleep(Duration::from_millis(120));
        assert!(d.due(Duration::from_millis(200)).is_empty());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(d.due(Duration::from_millis(200)), vec![p]);
        assert!(d.is_empty());
    }
}
