-- What photosync knows about the photo tree and what it sent to Graph.
-- Times are Unix milliseconds (UTC); hashes are BLAKE3 hex of the file's bytes.

-- One row per photo file seen under a source root: the stat-only fast path compares
-- size and mtime against it, so an unchanged file is never read.
CREATE TABLE files (
    path         TEXT PRIMARY KEY NOT NULL,
    source       TEXT NOT NULL,
    size         INTEGER NOT NULL,
    mtime_ns     INTEGER NOT NULL,
    content_hash TEXT,
    target_key   TEXT,
    last_seen    INTEGER NOT NULL
) STRICT;
CREATE INDEX files_by_target ON files (target_key);

-- One row per Graph object with a photo: what was last uploaded and how the last attempt ended.
CREATE TABLE targets (
    target_key        TEXT PRIMARY KEY NOT NULL,
    kind              TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('synced', 'pending', 'failed', 'parked', 'deleted')),
    path              TEXT,
    last_hash         TEXT,
    last_fingerprint  TEXT,
    last_uploaded_at  INTEGER,
    last_request_id   TEXT,
    media_etag        TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   INTEGER,
    failed_hash       TEXT,
    failed_fingerprint TEXT,
    error_class       TEXT,
    error_reason      TEXT,
    error_status      INTEGER,
    error_code        TEXT,
    error_message     TEXT,
    error_request_id  TEXT,
    error_at          INTEGER,
    updated_at        INTEGER NOT NULL
) STRICT;
CREATE INDEX targets_by_state ON targets (state);

-- Append-only history of every attempt's outcome, for audit.
CREATE TABLE uploads (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    at                INTEGER NOT NULL,
    target_key        TEXT NOT NULL,
    path              TEXT,
    content_hash      TEXT,
    fingerprint       TEXT,
    bytes             INTEGER,
    action            TEXT NOT NULL,
    result            TEXT NOT NULL,
    http_status       INTEGER,
    error_code        TEXT,
    error_message     TEXT,
    request_id        TEXT,
    client_request_id TEXT
) STRICT;
CREATE INDEX uploads_by_target ON uploads (target_key, at);
