//! The bulk of every batch: files seen, uploads done and their read-back etags, gathered and
//! written with one `INSERT … SELECT … FROM json_each(?)` statement per table (each statement
//! is a round trip to sqlx's SQLite thread, which cost more than the row itself).

use sqlx::SqliteConnection;

use super::Op;

/// The gathered ops of a batch, as JSON rows, until the next op that is not gathered.
#[derive(Default)]
pub(super) struct Bulk<'a> {
    files: Vec<FileRowJson<'a>>,
    uploads: Vec<UploadRow<'a>>,
    /// Written after the uploads (the read-back follows its upload), which they commute with
    /// otherwise (an upload leaves both columns alone).
    etags: Vec<EtagRow<'a>>,
}

/// path, source, size, mtime_ns, content_hash, target_key, now
type FileRowJson<'a> = (
    &'a str,
    &'a str,
    i64,
    i64,
    Option<&'a str>,
    Option<&'a str>,
    i64,
);

/// target_key, kind, path, content_hash, fingerprint, now, request_id, bytes, action,
/// http_status, client_request_id, crop_note
type UploadRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    i64,
    Option<&'a str>,
    i64,
    &'static str,
    u16,
    Option<&'a str>,
    Option<&'static str>,
);

/// target_key, media_etag, graph_id
type EtagRow<'a> = (&'a str, Option<&'a str>, Option<&'a str>);

impl<'a> Bulk<'a> {
    /// Takes `op` when it is one of the gathered kinds.
    pub(super) fn gather(&mut self, op: &'a Op) -> bool {
        match op {
            Op::File {
                path,
                source,
                size,
                mtime_ns,
                content_hash,
                target_key,
                now,
            } => self.files.push((
                path,
                source,
                *size,
                *mtime_ns,
                content_hash.as_deref(),
                target_key.as_deref(),
                *now,
            )),
            Op::Uploaded {
                target_key,
                kind,
                path,
                content_hash,
                fingerprint,
                bytes,
                http_status,
                request_id,
                client_request_id,
                action,
                crop_note,
                now,
            } => self.uploads.push((
                target_key,
                kind,
                path,
                content_hash,
                fingerprint,
                *now,
                request_id.as_deref(),
                *bytes,
                action.as_str(),
                *http_status,
                client_request_id.as_deref(),
                *crop_note,
            )),
            Op::Etag {
                target_key,
                graph_id,
                media_etag,
            } => self
                .etags
                .push((target_key, media_etag.as_deref(), graph_id.as_deref())),
            _ => return false,
        }
        true
    }

    /// Writes what was gathered, and forgets it.
    pub(super) async fn write(&mut self, tx: &mut SqliteConnection) -> sqlx::Result<()> {
        if !self.files.is_empty() {
            files(tx, &json(&self.files)).await?;
            self.files.clear();
        }
        if !self.uploads.is_empty() {
            uploads(tx, &json(&self.uploads)).await?;
            self.uploads.clear();
        }
        if !self.etags.is_empty() {
            etags(tx, &json(&self.etags)).await?;
            self.etags.clear();
        }
        Ok(())
    }
}

fn json(rows: &impl serde::Serialize) -> String {
    // Tuples of strings and integers: serialising them cannot fail.
    serde_json::to_string(rows).unwrap_or_default()
}

// json_each yields the array in order, and ORDER BY key keeps it so: a path or target that
// appears twice ends with its later row, and history ids follow the batch.

/// Gathered `Op::File`s, as [`FileRowJson`] rows.
async fn files(tx: &mut SqliteConnection, rows: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO files (path, source, size, mtime_ns, content_hash, target_key, last_seen)
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                value ->> 5, value ->> 6
         FROM json_each(?1) WHERE true ORDER BY key
         ON CONFLICT (path) DO UPDATE SET source = excluded.source, size = excluded.size,
           mtime_ns = excluded.mtime_ns, content_hash = excluded.content_hash,
           target_key = excluded.target_key, last_seen = excluded.last_seen",
    )
    .bind(rows)
    .execute(tx)
    .await?;
    Ok(())
}

/// Gathered `Op::Uploaded`s, as [`UploadRow`] rows: each target becomes synced (its failure
/// cleared), and each upload gets its history row.
async fn uploads(tx: &mut SqliteConnection, rows: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO targets (target_key, kind, state, path, last_hash, last_fingerprint,
           last_uploaded_at, last_request_id, attempts, updated_at, crop_note)
         SELECT value ->> 0, value ->> 1, 'synced', value ->> 2, value ->> 3, value ->> 4,
                value ->> 5, value ->> 6, 0, value ->> 5, value ->> 11
         FROM json_each(?1) WHERE true ORDER BY key
         ON CONFLICT (target_key) DO UPDATE SET state = 'synced', path = excluded.path,
           last_hash = excluded.last_hash, last_fingerprint = excluded.last_fingerprint,
           last_uploaded_at = excluded.last_uploaded_at,
           last_request_id = excluded.last_request_id, attempts = 0,
           next_attempt_at = NULL, parked_since = NULL, failed_hash = NULL,
           failed_fingerprint = NULL,
           error_class = NULL, error_reason = NULL, error_status = NULL,
           error_code = NULL, error_message = NULL, error_request_id = NULL,
           error_at = NULL, updated_at = excluded.updated_at,
           crop_note = excluded.crop_note",
    )
    .bind(rows)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO uploads (at, target_key, path, content_hash, fingerprint, bytes,
           action, result, http_status, request_id, client_request_id)
         SELECT value ->> 5, value ->> 0, value ->> 2, value ->> 3, value ->> 4,
                value ->> 7, value ->> 8, 'ok', value ->> 9, value ->> 6, value ->> 10
         FROM json_each(?1) ORDER BY key",
    )
    .bind(rows)
    .execute(tx)
    .await?;
    Ok(())
}

/// Gathered `Op::Etag`s, as [`EtagRow`] rows, for synced targets only.
async fn etags(tx: &mut SqliteConnection, rows: &str) -> sqlx::Result<()> {
    // An upsert that only ever takes its conflict path (rows of unknown targets are filtered
    // out) finds each target by its key; UPDATE ... FROM json_each scanned the whole table for
    // every row.
    sqlx::query(
        "INSERT INTO targets (target_key, kind, state, updated_at, media_etag, graph_id)
         SELECT value ->> 0, '', 'synced', 0, value ->> 1, value ->> 2
         FROM json_each(?1)
         WHERE EXISTS (SELECT 1 FROM targets WHERE target_key = value ->> 0)
         ORDER BY key
         ON CONFLICT (target_key) DO UPDATE SET media_etag = excluded.media_etag,
           graph_id = COALESCE(excluded.graph_id, targets.graph_id)
         WHERE targets.state = 'synced'",
    )
    .bind(rows)
    .execute(tx)
    .await?;
    Ok(())
}
