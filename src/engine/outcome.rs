//! Typed per-item outcomes: what happened to one photo (or one lookup, or one deletion), and how
//! that is recorded — one ledger op and the run's counters. The printed form
//! ([`crate::stats::Failure`]) is made here, at the edge, from the typed error.
//!
//! Every item ends in exactly one counter (uploaded, deleted, parked, failed), so the summary
//! adds up.

use std::time::Duration;

use crate::graph::resolve::MAX_PER_REQUEST;
use crate::graph::{ErrorClass, GraphError, Reply};
use crate::image::{Crop, CropNote, ImageError};
use crate::ledger::{now_ms, FailureClass, HistoryAction, Op};
use crate::mapping::file::MapFileError;
use crate::mapping::{Lookup, MappingError};
use crate::report::Row;
use crate::source::SourceError;
use crate::stats::{Failure, Stats};

use super::decide::Reason;
use super::settings::SyncSettings;
use super::worker::{Action, Job};
use super::writer::LedgerSink;
use super::{human_bytes, millis, MAX_INPUT_BYTES};

// A lookup batch is part of the Graph API's grammar; the assertion keeps the two in step.
const _: () = assert!(MAX_PER_REQUEST == 15);

/// Why one item did not sync.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error(transparent)]
    Mapping(#[from] MappingProblem),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Graph(#[from] GraphProblem),
    #[error(transparent)]
    Io(std::io::Error),
    #[error(transparent)]
    Local(#[from] LocalProblem),
    /// A parked photo whose user did not appear within `parked_max_age`.
    #[error("{parked} (looked for since {}; parked_max_age {} is over)",
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(*since_ms).unwrap_or(0))),
        humantime::format_duration(*max_age))]
    GaveUp {
        parked: Box<ItemError>,
        since_ms: i64,
        max_age: Duration,
    },
}

/// A file whose name or place names no target, or a mapping file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingProblem {
    #[error(transparent)]
    Name(#[from] MappingError),
    #[error("path is not valid UTF-8")]
    PathNotUtf8,
    #[error("{message}")]
    Row { message: String },
    #[error(transparent)]
    File(#[from] MapFileError),
}

/// Graph refused a request, or answered something else than asked.
#[derive(Debug, thiserror::Error)]
pub enum GraphProblem {
    #[error(transparent)]
    Refused(GraphError),
    #[error("cannot look up {} {value}: {error}", lookup.property())]
    Lookup {
        lookup: Lookup,
        value: String,
        /// Shared by every value of the failed request.
        error: std::sync::Arc<GraphError>,
    },
    #[error("cannot look up {} {value}: Graph answered {status} MalformedResponse: the user query's answer was not a user list{}",
        lookup.property(),
        request_id.as_deref().map(|r| format!(" (request-id {r})")).unwrap_or_default())]
    LookupAnswer {
        lookup: Lookup,
        value: String,
        status: u16,
        request_id: Option<String>,
    },
    /// A 404 for a user: the account may be minutes old, or not created yet.
    #[error("Graph does not know user {id} (yet): {error}")]
    NotThereYet { id: String, error: GraphError },
}

/// Refused by photosync itself, before or instead of a request.
#[derive(Debug, thiserror::Error)]
pub enum LocalProblem {
    #[error("{bytes} bytes is larger than any photo ({} MiB limit)", MAX_INPUT_BYTES >> 20)]
    TooLarge { bytes: u64 },
    #[error("{} after processing is over Graph's 4 MB request limit", human_bytes(*bytes))]
    TooLargeAfter { bytes: u64 },
    #[error("{message}")]
    AmbiguousUser { message: String },
    /// No user has the value yet (a new hire whose account is not there).
    #[error("{message}")]
    NoSuchUser { message: String },
    /// A failure recorded before for this exact content (`reason` as recorded).
    #[error("failed before with this exact content; not retried until the file changes or `photosync retry`")]
    KnownBad { reason: String },
    #[error("{task} panicked: {message}")]
    Panicked { task: &'static str, message: String },
    #[error("shutting down")]
    Cancelled,
    #[error(transparent)]
    SourceUnreadable(SourceError),
    /// The walk could not read a file or folder (permissions, a path too long): the photo under
    /// it cannot sync until that is fixed.
    #[error("{message}")]
    Walk { message: String },
}

impl ItemError {
    /// A stable snake_case reason, for `status`, the summary and the report.
    pub fn reason(&self) -> String {
        match self {
            ItemError::Mapping(MappingProblem::Name(_) | MappingProblem::PathNotUtf8) => {
                "bad_name".into()
            }
            ItemError::Mapping(MappingProblem::Row { .. }) => "mapping_row".into(),
            ItemError::Mapping(MappingProblem::File(_)) => "mapping_file".into(),
            ItemError::Image(e) => e.reason().into(),
            ItemError::Io(_) => "unreadable".into(),
            ItemError::Graph(GraphProblem::Refused(e)) => graph_reason(e),
            ItemError::Graph(GraphProblem::Lookup { error, .. }) => graph_reason(error),
            ItemError::Graph(GraphProblem::LookupAnswer { .. }) => "MalformedResponse".into(),
            ItemError::Graph(GraphProblem::NotThereYet { .. }) => "not_found".into(),
            ItemError::Local(l) => match l {
                LocalProblem::TooLarge { .. } | LocalProblem::TooLargeAfter { .. } => {
                    "too_large".into()
                }
                LocalProblem::AmbiguousUser { .. } => "ambiguous_user".into(),
                LocalProblem::NoSuchUser { .. } => "no_such_user".into(),
                LocalProblem::KnownBad { reason } => reason.clone(),
                LocalProblem::Panicked { .. } => "panic".into(),
                LocalProblem::Cancelled => "cancelled".into(),
                LocalProblem::SourceUnreadable(_) => "source_unreadable".into(),
                LocalProblem::Walk { .. } => "unreadable".into(),
            },
            ItemError::GaveUp { parked, .. } => parked.reason(),
        }
    }

    /// What the failure means for the next attempt.
    pub fn class(&self) -> FailureClass {
        let of = |e: &GraphError| match e.class() {
            ErrorClass::Permanent => FailureClass::Permanent,
            ErrorClass::Fatal
            | ErrorClass::Throttled(_)
            | ErrorClass::Unavailable(_)
            | ErrorClass::Transient => FailureClass::Transient,
        };
        match self {
            ItemError::Graph(GraphProblem::Refused(e)) => of(e),
            ItemError::Graph(GraphProblem::Lookup { error, .. }) => of(error),
            ItemError::Graph(GraphProblem::LookupAnswer { .. }) => FailureClass::Transient,
            ItemError::Graph(GraphProblem::NotThereYet { .. })
            | ItemError::Local(LocalProblem::NoSuchUser { .. }) => FailureClass::Parked,
            ItemError::Local(LocalProblem::AmbiguousUser { .. }) | ItemError::GaveUp { .. } => {
                FailureClass::Permanent
            }
            ItemError::Mapping(_)
            | ItemError::Image(_)
            | ItemError::Io(_)
            | ItemError::Local(_) => FailureClass::Local,
        }
    }

    /// The Graph error behind this one, if Graph answered.
    fn graph(&self) -> Option<&GraphError> {
        match self {
            ItemError::Graph(
                GraphProblem::Refused(e) | GraphProblem::NotThereYet { error: e, .. },
            ) => Some(e),
            ItemError::Graph(GraphProblem::Lookup { error, .. }) => Some(error),
            ItemError::GaveUp { parked, .. } => parked.graph(),
            _ => None,
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            ItemError::Graph(GraphProblem::LookupAnswer { status, .. }) => Some(*status),
            _ => self.graph().and_then(GraphError::status),
        }
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ItemError::Graph(GraphProblem::LookupAnswer { .. }) => Some("MalformedResponse"),
            _ => self.graph().and_then(GraphError::code),
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self {
            ItemError::Graph(GraphProblem::LookupAnswer { request_id, .. }) => {
                request_id.as_deref()
            }
            _ => self.graph().and_then(GraphError::request_id),
        }
    }

    /// The printed and reported form.
    pub fn failure(&self, path: impl Into<String>, target: Option<String>) -> Failure {
        Failure {
            path: path.into(),
            target,
            reason: self.reason(),
            message: self.to_string(),
            code: self.code().map(ToOwned::to_owned),
            request_id: self.request_id().map(ToOwned::to_owned),
        }
    }
}

/// A stable snake_case reason for a Graph error, for `status` and the summary.
fn graph_reason(e: &GraphError) -> String {
    match (e.status(), e.code()) {
        (_, Some(code)) if !code.is_empty() => code.to_owned(),
        (Some(404), _) => "not_found".into(),
        (Some(403), _) => "forbidden".into(),
        (Some(429), _) => "throttled".into(),
        (Some(s), _) => format!("http_{s}"),
        (None, _) => "network".into(),
    }
}

/// A parked photo is looked for again every `parked_retry`, for `parked_max_age` from the first
/// time it was parked (`parked_since`, from the ledger; `None` when it was not parked before),
/// then given up for good.
pub fn park(
    parked: ItemError,
    parked_since: Option<i64>,
    now: i64,
    max_age: Duration,
) -> ItemError {
    let since_ms = parked_since.unwrap_or(now);
    if now.saturating_sub(since_ms) > millis(max_age) {
        ItemError::GaveUp {
            parked: Box::new(parked),
            since_ms,
            max_age,
        }
    } else {
        parked
    }
}

/// How one job ended.
#[derive(Debug)]
pub enum ItemOutcome {
    Uploaded(Box<Uploaded>),
    /// Graph answered 2xx, or 404 (nothing to delete is what we wanted).
    Deleted {
        status: u16,
        request_id: Option<String>,
    },
    Failed {
        error: ItemError,
        attempts: u32,
    },
    /// Cancelled before it was done: the next pass plans it again.
    Stopped,
    /// Credentials refused: nothing more can work; the run was cancelled.
    Fatal(GraphError),
}

#[derive(Debug)]
pub struct Uploaded {
    pub reply: Reply,
    pub reason: Reason,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub took: Duration,
    pub etag: EtagRead,
    /// The square the pipeline cut, if it cut one.
    pub crop: Option<Crop>,
}

/// The photo's `mediaEtag`, read back after an upload.
#[derive(Debug)]
pub enum EtagRead {
    /// Not asked for (`record_etag = false`, contacts), or the run stopped first.
    NotRead,
    /// Read (`None`: it could not be, or the target shows no photo).
    Read(Option<String>),
    /// The read met a fatal error: the upload stands, the run stops.
    Fatal(GraphError),
}

/// Turns outcomes into ledger ops (sent to the writer, when there is one) and counters.
#[derive(Clone)]
pub struct Recorder {
    pub stats: std::sync::Arc<Stats>,
    pub sink: Option<LedgerSink>,
    pub sync: SyncSettings,
    pub fingerprint: String,
}

impl Recorder {
    pub async fn send(&self, op: Op) {
        if let Some(sink) = &self.sink {
            sink.send(op).await;
        }
    }

    /// Records `outcome` of `job`; returns the fatal error that stopped it, if one did.
    pub async fn record(&self, job: &Job, outcome: ItemOutcome) -> Option<GraphError> {
        match outcome {
            ItemOutcome::Uploaded(u) => return self.uploaded(job, *u).await,
            ItemOutcome::Deleted { status, request_id } => {
                self.deleted(job, status, request_id).await;
            }
            ItemOutcome::Failed { error, attempts } => self.failed(job, &error, attempts).await,
            ItemOutcome::Stopped => {}
            ItemOutcome::Fatal(e) => return Some(e),
        }
        None
    }

    async fn uploaded(&self, job: &Job, u: Uploaded) -> Option<GraphError> {
        let stats = &self.stats;
        Stats::add(&stats.uploaded, 1);
        Stats::add(&stats.bytes_uploaded, u.bytes_after);
        stats.observe_upload(u.took);
        tracing::info!(
            path = %job.path,
            reason = u.reason.as_str(),
            bytes = u.bytes_after,
            request_id = u.reply.request_id.as_deref().unwrap_or(""),
            ms = u.took.as_millis() as u64,
            "uploaded"
        );
        if stats.reporting() {
            stats.row(Row {
                path: job.path.clone(),
                target: job.key.clone(),
                action: "upload",
                result: format!("uploaded ({})", u.reason.as_str()),
                bytes_before: Some(u.bytes_before),
                bytes_after: Some(u.bytes_after),
                error: None,
                request_id: u.reply.request_id.clone(),
                crop: u.crop.map(|c| c.to_string()),
            });
        }
        let Action::Upload { hash, .. } = &job.action else {
            return None;
        };
        self.send(Op::Uploaded {
            target_key: job.key.clone(),
            kind: job.target.kind.as_str(),
            path: job.path.clone(),
            content_hash: hash.clone(),
            fingerprint: self.fingerprint.clone(),
            bytes: i64::try_from(u.bytes_after).unwrap_or(i64::MAX),
            http_status: u.reply.status,
            request_id: u.reply.request_id,
            client_request_id: Some(u.reply.client_request_id),
            action: HistoryAction::Upload,
            crop_note: u.crop.and_then(|c| c.note).map(CropNote::as_str),
            now: now_ms(),
        })
        .await;
        match u.etag {
            EtagRead::NotRead => None,
            EtagRead::Read(media_etag) => {
                let graph_id = job.key.starts_with("user(").then(|| job.target.id.clone());
                self.send(Op::Etag {
                    target_key: job.key.clone(),
                    graph_id,
                    media_etag,
                })
                .await;
                None
            }
            EtagRead::Fatal(e) => Some(e),
        }
    }

    async fn deleted(&self, job: &Job, status: u16, request_id: Option<String>) {
        Stats::add(&self.stats.deleted, 1);
        self.stats.row(Row {
            path: job.path.clone(),
            target: job.key.clone(),
            action: "delete",
            result: "deleted".into(),
            request_id: request_id.clone(),
            ..Row::default()
        });
        tracing::info!(path = %job.path, request_id = request_id.as_deref().unwrap_or(""), "photo deleted");
        self.send(Op::Deleted {
            target_key: job.key.clone(),
            kind: job.target.kind.as_str(),
            path: job.path.clone(),
            http_status: status,
            request_id,
            now: now_ms(),
        })
        .await;
    }

    /// Records a failed (or parked) item: one `Failed` op, and the parked or failed counter.
    pub async fn failed(&self, job: &Job, error: &ItemError, attempts: u32) {
        let class = error.class();
        let now = now_ms();
        let after = match class {
            FailureClass::Transient => Some(self.sync.retry_failed_after),
            FailureClass::Parked => Some(self.sync.parked_retry),
            FailureClass::Permanent | FailureClass::Local => None,
        };
        let (content_hash, action) = match &job.action {
            Action::Upload { hash, .. } => (Some(hash.clone()), HistoryAction::Upload),
            Action::Delete => (None, HistoryAction::Delete),
        };
        log_failure(job, error, self.sync.parked_retry);
        let f = error.failure(job.path.clone(), Some(job.key.clone()));
        self.send(Op::Failed {
            target_key: job.key.clone(),
            kind: job.target.kind.as_str(),
            path: job.path.clone(),
            content_hash,
            fingerprint: self.fingerprint.clone(),
            class,
            reason: f.reason.clone(),
            http_status: error.http_status(),
            code: f.code.clone(),
            message: f.message.clone(),
            request_id: f.request_id.clone(),
            attempts,
            next_attempt_at: after.map(|d| now.saturating_add(millis(d))),
            action,
            now,
        })
        .await;
        if class == FailureClass::Parked {
            Stats::add(&self.stats.parked, 1);
            self.stats.row(Row {
                path: f.path,
                target: f.target.unwrap_or_default(),
                action: "skip",
                result: "parked".into(),
                error: Some(f.message),
                ..Row::default()
            });
        } else {
            self.stats.fail_as(f, action.as_str());
        }
    }
}

fn log_failure(job: &Job, error: &ItemError, parked_retry: Duration) {
    match error {
        ItemError::GaveUp { .. } => {
            tracing::warn!(path = %job.path, target = %job.key, message = %error, "giving up on parked photo");
        }
        _ if error.class() == FailureClass::Parked => {
            tracing::info!(path = %job.path, target = %job.key, message = %error, retry_in = %humantime::format_duration(parked_retry), "parked until the user exists");
        }
        ItemError::Image(_) | ItemError::Local(_)
            if matches!(job.action, Action::Upload { .. }) =>
        {
            tracing::warn!(path = %job.path, reason = %error.reason(), error = %error, "photo refused");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn no_user() -> ItemError {
        LocalProblem::NoSuchUser {
            message: "no user has employeeId 4711".into(),
        }
        .into()
    }

    fn status(status: u16, code: Option<&str>) -> GraphError {
        GraphError::Status {
            status,
            code: code.map(Into::into),
            message: None,
            request_id: Some("r-1".into()),
            retry_after: None,
            throttling: false,
        }
    }

    #[test]
    fn a_parked_photo_counts_from_when_it_was_first_parked() {
        let max_age = Duration::from_secs(30 * 24 * 3600);
        let now = 100 * DAY;
        let first_time = park(no_user(), None, now, max_age);
        assert_eq!(first_time.class(), FailureClass::Parked);
        let within = park(no_user(), Some(now - 29 * DAY), now, max_age);
        assert_eq!(within.class(), FailureClass::Parked);
        let over = park(no_user(), Some(now - 31 * DAY), now, max_age);
        assert_eq!(over.class(), FailureClass::Permanent);
        assert_eq!(over.reason(), "no_such_user");
        let message = over.to_string();
        assert!(
            message.starts_with("no user has employeeId 4711 (looked for since "),
            "{message}"
        );
        assert!(
            message.ends_with("parked_max_age 30days is over)"),
            "{message}"
        );
    }

    #[test]
    fn graph_failures_keep_their_code_status_and_request_id() {
        let e = ItemError::from(GraphProblem::Refused(status(403, None)));
        assert_eq!(e.reason(), "forbidden");
        assert_eq!(e.class(), FailureClass::Permanent);
        assert_eq!(e.http_status(), Some(403));
        assert_eq!(e.request_id(), Some("r-1"));
        let e = ItemError::from(GraphProblem::Refused(status(503, None)));
        assert_eq!(
            (e.reason().as_str(), e.class()),
            ("http_503", FailureClass::Transient)
        );
        let e = ItemError::from(GraphProblem::NotThereYet {
            id: "alice@contoso.com".into(),
            error: status(404, Some("Request_ResourceNotFound")),
        });
        assert_eq!(
            (e.reason().as_str(), e.class()),
            ("not_found", FailureClass::Parked)
        );
        assert_eq!(e.code(), Some("Request_ResourceNotFound"));
    }

    #[test]
    fn a_malformed_lookup_answer_is_its_own_error_not_an_invented_status() {
        let e = ItemError::from(GraphProblem::LookupAnswer {
            lookup: Lookup::Mail,
            value: "a@contoso.com".into(),
            status: 200,
            request_id: Some("r-2".into()),
        });
        assert_eq!(e.class(), FailureClass::Transient);
        assert_eq!(e.code(), Some("MalformedResponse"));
        assert_eq!(
            e.to_string(),
            "cannot look up mail a@contoso.com: Graph answered 200 MalformedResponse: the user query's answer was not a user list (request-id r-2)"
        );
    }

    #[test]
    fn local_failures_say_what_the_summary_said() {
        let e = ItemError::from(LocalProblem::TooLarge { bytes: 300 << 20 });
        assert_eq!(e.reason(), "too_large");
        assert_eq!(
            e.to_string(),
            format!(
                "{} bytes is larger than any photo (256 MiB limit)",
                300u64 << 20
            )
        );
        let f = ItemError::from(MappingProblem::PathNotUtf8).failure("p", Some("k".into()));
        assert_eq!(
            (f.reason.as_str(), f.message.as_str()),
            ("bad_name", "path is not valid UTF-8")
        );
        assert_eq!(f.code, None);
    }
}
