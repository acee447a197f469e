//! Ops for the ledger's tests.

use super::{FailureClass, HistoryAction, Op};

/// The ledger's text for the hash of `content`.
pub(super) fn hex(content: &str) -> String {
    blake3::hash(content.as_bytes()).to_hex().to_string()
}

/// `path` seen under `/p` with `size`, content `content`, mapped to `key`.
pub(super) fn file_op(path: &str, key: &str, size: i64, content: &str) -> Op {
    Op::File {
        path: path.into(),
        source: "/p".into(),
        size,
        mtime_ns: 5,
        content_hash: Some(hex(content)),
        target_key: Some(key.into()),
        now: 1,
    }
}

/// `path` uploaded to the user `key` with content `content`, at `now`.
pub(super) fn uploaded_op(path: &str, key: &str, content: &str, now: i64) -> Op {
    Op::Uploaded {
        target_key: key.into(),
        kind: "user",
        path: path.into(),
        content_hash: hex(content),
        fingerprint: "f".into(),
        bytes: 10,
        http_status: 200,
        request_id: Some(format!("r{now}")),
        client_request_id: None,
        action: HistoryAction::Upload,
        crop_note: None,
        now,
    }
}

/// An upload of `path` to the user `key` with content `content` failed with `class` at `now`.
pub(super) fn failed_op(path: &str, key: &str, content: &str, class: FailureClass, now: i64) -> Op {
    Op::Failed {
        target_key: key.into(),
        kind: "user",
        path: path.into(),
        content_hash: Some(hex(content)),
        fingerprint: "f".into(),
        class,
        reason: "http_503".into(),
        http_status: Some(503),
        code: None,
        message: "busy".into(),
        request_id: None,
        attempts: 3,
        next_attempt_at: Some(now + 10),
        action: HistoryAction::Upload,
        now,
    }
}
