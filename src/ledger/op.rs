//! The write vocabulary: everything the ledger records is one of these, applied in batches by
//! [`Ledger::apply`](super::Ledger::apply).

use super::FailureClass;

/// What an attempt set out to do, as the history (`uploads.action`) records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HistoryAction {
    Upload,
    Delete,
}

impl HistoryAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryAction::Upload => "upload",
            HistoryAction::Delete => "delete",
        }
    }
}

/// One write. A batch of these is applied in one transaction.
///
/// `kind` is the target kind's text (`TargetKind::as_str`: `user`, `group`, `contact`); hashes
/// are BLAKE3 hex; times are Unix ms.
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
    /// Graph answered 2xx to an upload: the target becomes synced, with its history row.
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
        action: HistoryAction,
        /// Why a face crop cut the centre instead (`CropNote::as_str`), if it did.
        crop_note: Option<&'static str>,
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
    /// A file under a source root is not a photo: neither its name nor its first bytes say so.
    Skipped {
        path: String,
        source: String,
        size: i64,
        mtime_ns: i64,
        /// `Skip::as_str`.
        reason: &'static str,
        now: i64,
    },
    /// A file recorded as skipped is gone, or is a photo now.
    Unskipped { path: String },
    /// An attempt failed, or a file was refused before sending. The class decides the state
    /// (`parked` for [`FailureClass::Parked`], `failed` otherwise).
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
        action: HistoryAction,
        now: i64,
    },
}
