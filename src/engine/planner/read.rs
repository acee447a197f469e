//! Reading and hashing a photo on the blocking pool, keeping its path and target so that a read
//! that panicked is still counted against its file.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::task::{JoinError, JoinHandle};

use crate::ledger::ContentHash;
use crate::mapping::Target;
use crate::source::FileEntry;

pub(super) type ReadResult = (FileEntry, Target, std::io::Result<(Bytes, ContentHash)>);

/// A file being read and hashed on the blocking pool. It keeps the file's path and target, so
/// that a read that panicked is still counted against its file.
pub(super) struct PendingRead {
    pub(super) path: PathBuf,
    pub(super) key: String,
    handle: JoinHandle<ReadResult>,
}

pub(super) struct ReadDone {
    pub(super) path: PathBuf,
    pub(super) key: String,
    pub(super) result: Result<ReadResult, JoinError>,
}

impl Future for PendingRead {
    type Output = ReadDone;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ReadDone> {
        let result = std::task::ready!(Pin::new(&mut self.handle).poll(cx));
        Poll::Ready(ReadDone {
            path: std::mem::take(&mut self.path),
            key: std::mem::take(&mut self.key),
            result,
        })
    }
}

/// `std::fs::read` into a buffer the caller allocated.
fn read_into(path: &Path, mut buf: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    std::fs::File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

/// Reads and hashes `entry` on the blocking pool. The buffer is allocated here, on a runtime
/// thread, not on whichever of the blocking pool's threads reads into it: each of those would
/// keep its own pages of photo-sized blocks (a touched rescan's RSS grew by a fifth).
pub(super) fn read(entry: FileEntry, target: Target, key: String) -> PendingRead {
    let cap = usize::try_from(entry.size).map_or(0, |n| n.saturating_add(1));
    let buf = Vec::with_capacity(cap);
    let path = entry.path.clone();
    let handle = tokio::task::spawn_blocking(move || {
        let read = read_into(&entry.path, buf).map(|b| {
            let hash = blake3::hash(&b);
            (Bytes::from(b), hash)
        });
        (entry, target, read)
    });
    PendingRead { path, key, handle }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::panic_message;

    #[tokio::test]
    async fn a_read_that_panicked_still_names_its_file() {
        let handle: JoinHandle<ReadResult> = tokio::spawn(async { panic!("disk on fire") });
        let done = PendingRead {
            path: PathBuf::from("/photos/alice.jpg"),
            key: "user:alice@contoso.com".into(),
            handle,
        }
        .await;
        assert_eq!(done.path, Path::new("/photos/alice.jpg"));
        assert_eq!(done.key, "user:alice@contoso.com");
        let e = done.result.err().map(panic_message);
        assert_eq!(e.as_deref(), Some("disk on fire"));
    }
}
