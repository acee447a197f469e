//! Files whose name is not a photo's (`alice@contoso.com.dat`): the first bytes decide. And
//! every skipped file: counted, reported by name, and (not a photo) remembered in the ledger's
//! `skipped` table, which `status` lists.
//!
//! The unchanged rescan stays stat-only: a file the ledger knows as a photo goes the way of any
//! photo (its stat is compared with its `files` row), one it knows as skipped with the same size
//! and mtime is skipped again without being opened. Only a new or changed file is opened, and
//! only its first [`SNIFF_BYTES`] are read, on the blocking pool; a photo is then read whole by
//! the usual read.

use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

use crate::engine::conflicts::address;
use crate::engine::outcome::{ItemError, LocalProblem};
use crate::engine::panic_message;
use crate::ledger::{now_ms, Op};
use crate::mapping::{Skip, Target};
use crate::source::FileEntry;

use super::{PendingRead, Planner, ReadDone};

/// Enough for every format's magic bytes, and for a HEIF `ftyp` box with its brands.
const SNIFF_BYTES: usize = 512;

/// A read the planner waits for: a whole photo, or the first bytes of a file with another name.
pub(super) enum Pending {
    Read(PendingRead),
    Sniff(PendingSniff),
}

pub(super) enum Done {
    Read(ReadDone),
    Sniff(SniffDone),
}

impl Future for Pending {
    type Output = Done;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        match self.get_mut() {
            Pending::Read(r) => Pin::new(r).poll(cx).map(Done::Read),
            Pending::Sniff(s) => Pin::new(s).poll(cx).map(Done::Sniff),
        }
    }
}

type SniffResult = (FileEntry, Target, std::io::Result<bool>);

/// A file's first bytes being read on the blocking pool; keeps the path so that a read that
/// panicked is still counted against its file.
pub(super) struct PendingSniff {
    path: PathBuf,
    handle: JoinHandle<SniffResult>,
}

pub(super) struct SniffDone {
    path: PathBuf,
    result: Result<SniffResult, JoinError>,
}

impl Future for PendingSniff {
    type Output = SniffDone;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SniffDone> {
        let result = std::task::ready!(Pin::new(&mut self.handle).poll(cx));
        Poll::Ready(SniffDone {
            path: std::mem::take(&mut self.path),
            result,
        })
    }
}

/// Whether the file's first bytes are those of an image format the pipeline knows.
fn holds_a_photo(path: &Path) -> std::io::Result<bool> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    std::fs::File::open(path)?
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    Ok(crate::image::sniff(&head).is_some())
}

fn sniff(entry: FileEntry, target: Target) -> PendingSniff {
    let path = entry.path.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let found = holds_a_photo(&entry.path);
        (entry, target, found)
    });
    PendingSniff { path, handle }
}

impl Planner<'_> {
    /// A file whose name is not a photo's, naming `target` if it is one.
    pub(super) fn on_other_name(&mut self, entry: FileEntry, target: Target) -> Option<Pending> {
        let known = entry.path.to_str().map(|p| {
            let photo = self.snapshot.files.contains_key(p);
            let skipped = self
                .snapshot
                .skipped
                .get(p)
                .is_some_and(|s| s.size == entry.size as i64 && s.mtime_ns == entry.mtime_ns);
            (photo, skipped)
        });
        match known {
            Some((true, _)) => self.on_photo(entry, target).map(Pending::Read),
            Some((false, true)) => {
                self.skip_file(&entry, Skip::NotAPhoto);
                None
            }
            _ => Some(Pending::Sniff(sniff(entry, target))),
        }
    }

    /// What a finished read leads to: for first bytes that say "photo", the photo's own read.
    pub(super) async fn after(&mut self, done: Done) -> Option<Pending> {
        match done {
            Done::Read(done) => {
                self.after_read(done).await;
                None
            }
            Done::Sniff(done) => self.after_sniff(done),
        }
    }

    fn after_sniff(&mut self, done: SniffDone) -> Option<Pending> {
        match done.result {
            Ok((entry, target, Ok(true))) => {
                self.unskip(&entry);
                self.on_photo(entry, target).map(Pending::Read)
            }
            Ok((entry, _, Ok(false))) => {
                self.skip_file(&entry, Skip::NotAPhoto);
                None
            }
            Ok((entry, _, Err(e))) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "cannot read file");
                self.fail(entry.path.display().to_string(), None, &ItemError::Io(e));
                None
            }
            Err(e) => {
                tracing::error!(path = %done.path.display(), error = %e, "read task failed");
                let e = ItemError::from(LocalProblem::Panicked {
                    task: "file sniff",
                    message: panic_message(e),
                });
                self.fail(done.path.display().to_string(), None, &e);
                None
            }
        }
    }

    /// A photo by content whose content is not a photo any more (`bytes` as read now): the
    /// ledger forgets it as a photo and records it as skipped.
    pub(super) fn no_longer_a_photo(&mut self, entry: &FileEntry, bytes: &[u8]) -> bool {
        let named_photo = entry
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !crate::mapping::names::may_be_a_photo(n));
        if named_photo || crate::image::sniff(bytes).is_some() {
            return false;
        }
        if let (Some(path), false) = (entry.path.to_str(), self.dry_run_ledger) {
            self.deferred.push(Op::ForgetFile {
                path: path.to_owned(),
            });
        }
        self.skip_file(entry, Skip::NotAPhoto);
        true
    }

    /// A skipped file: counted and reported with its reason; one that is not a photo is also
    /// remembered in the ledger (when new or changed), so that `status` can name it.
    pub(super) fn skip_file(&mut self, entry: &FileEntry, why: Skip) {
        self.stats().skip(why.as_str());
        let path = entry.path.display().to_string();
        self.row(&path, "", "skip", why.as_str(), entry.size);
        if why != Skip::NotAPhoto {
            return;
        }
        let Some(path) = entry.path.to_str() else {
            return;
        };
        let known = self.snapshot.skipped.get_key_value(path);
        if let (Some((k, _)), true) = (known, self.whole_tree) {
            self.seen_paths.insert(address(k));
        }
        let unchanged =
            known.is_some_and(|(_, s)| s.size == entry.size as i64 && s.mtime_ns == entry.mtime_ns);
        if unchanged || self.dry_run_ledger {
            return;
        }
        self.deferred.push(Op::Skipped {
            path: path.to_owned(),
            source: self.source(entry.source).root.display().to_string(),
            size: entry.size as i64,
            mtime_ns: entry.mtime_ns,
            reason: why.as_str(),
            now: now_ms(),
        });
    }

    /// A file the ledger knows as skipped is a photo now.
    fn unskip(&mut self, entry: &FileEntry) {
        let Some((k, _)) = entry
            .path
            .to_str()
            .and_then(|p| self.snapshot.skipped.get_key_value(p))
        else {
            return;
        };
        self.seen_paths.insert(address(k));
        if !self.dry_run_ledger {
            self.deferred.push(Op::Unskipped {
                path: k.to_string(),
            });
        }
    }

    /// After a whole walk: skipped files not found again are gone (or excluded now), and are
    /// forgotten. One under a folder that could not be read is forgotten too: its row only
    /// names it, and the next pass that reads the folder finds it again.
    pub(super) async fn forget_unseen_skips(&mut self) {
        if self.dry_run_ledger {
            return;
        }
        let unseen: Vec<String> = self
            .snapshot
            .skipped
            .keys()
            .filter(|k| !self.seen_paths.contains(&address(k)))
            .map(ToString::to_string)
            .collect();
        for path in unseen {
            self.intake.recorder.send(Op::Unskipped { path }).await;
        }
    }

    /// A file gone in a watched pass: if the ledger knows it as skipped, it forgets it.
    pub(super) fn forget_gone_skip(&mut self, path: &str) {
        if !self.dry_run_ledger && self.snapshot.skipped.contains_key(path) {
            self.deferred.push(Op::Unskipped {
                path: path.to_owned(),
            });
        }
    }
}
