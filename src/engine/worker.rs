//! Workers: each takes a job from the queue, makes the photo (image pipeline on the blocking
//! pool), sends it through the limiter and the retry policy, and hands the outcome to the
//! [`Recorder`]. [`handle`] is one job from start to outcome, with everything it needs in
//! [`Deps`] and the [`Job`]: no ledger, no planner state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::TargetKind;
use crate::graph::{GraphClient, GraphError};
use crate::image::{Pipeline, Processed, MAX_UPLOAD_BYTES};
use crate::ledger::now_ms;
use crate::mapping::Target;
use crate::stats::Stats;

use super::decide::Reason;
use super::limiter::Limiter;
use super::outcome::{
    park, EtagRead, GraphProblem, ItemError, ItemOutcome, LocalProblem, Recorder, Uploaded,
};
use super::queue::{Keyed, Queue};
use super::retry::{with_retries, RetryPolicy, Sent};
use super::settings::UploadSettings;

/// What a worker (and the planner's lookups) need to send requests.
pub struct Deps {
    pub graph: GraphClient,
    pub limiter: Limiter,
    pub pipeline: Pipeline,
    /// At most one image per core in the pipeline at a time.
    pub image_slots: Semaphore,
    pub retry: RetryPolicy,
    pub upload: UploadSettings,
    pub parked_max_age: Duration,
    pub stats: Arc<Stats>,
    /// Stops intake and retries; in-flight requests run on.
    pub cancel: CancellationToken,
}

/// One request to make for a target.
pub struct Job {
    pub target: Target,
    pub key: String,
    pub path: String,
    pub action: Action,
    /// When the ledger first recorded this target as parked (its user not found), if it is.
    pub parked_since: Option<i64>,
}

pub enum Action {
    Upload {
        hash: String,
        bytes: Bytes,
        reason: Reason,
        /// Holds the photo's share of the queue's memory budget until the job is done.
        _memory: OwnedSemaphorePermit,
    },
    /// The photo file is gone and `on_delete = "delete"`.
    Delete,
}

impl Keyed for Job {
    fn key(&self) -> &str {
        &self.key
    }
}

/// A worker: pops jobs until the queue closes or the run is cancelled. Ends with the fatal
/// error that stopped the run, if a job met one.
pub async fn run(
    n: usize,
    deps: Arc<Deps>,
    queue: Arc<Queue<Job>>,
    recorder: Recorder,
) -> Result<(), GraphError> {
    loop {
        let job = tokio::select! {
            biased;
            () = deps.cancel.cancelled() => return Ok(()),
            job = queue.pop() => match job {
                Some(j) => j,
                None => return Ok(()),
            },
        };
        let span = tracing::info_span!("upload", worker = n, target = %job.key);
        let outcome = tracing::Instrument::instrument(handle(&deps, &job), span).await;
        let fatal = recorder.record(&job, outcome).await;
        queue.finish(&job.key);
        if let Some(e) = fatal {
            return Err(e);
        }
    }
}

/// One job, from start to outcome.
pub async fn handle(deps: &Arc<Deps>, job: &Job) -> ItemOutcome {
    match &job.action {
        Action::Upload { bytes, reason, .. } => upload(deps, job, bytes.clone(), *reason).await,
        Action::Delete => delete(deps, job).await,
    }
}

async fn upload(deps: &Arc<Deps>, job: &Job, bytes: Bytes, reason: Reason) -> ItemOutcome {
    let bytes_before = bytes.len() as u64;
    let processed = match run_pipeline(deps, bytes).await {
        Ok(p) => p,
        Err(error) => return ItemOutcome::Failed { error, attempts: 0 },
    };
    let started = Instant::now();
    let sent = with_retries(deps, &job.path, || {
        deps.graph.upload_photo(
            deps.upload.method.clone(),
            &job.target,
            processed.bytes.clone(),
            processed.content_type,
        )
    })
    .await;
    let reply = match sent {
        Sent::Done(reply) => reply,
        Sent::Failed(e, _) if user_not_there_yet(&job.target, &e) => {
            let parked = GraphProblem::NotThereYet {
                id: job.target.id.clone(),
                error: e,
            };
            let error = park(
                parked.into(),
                job.parked_since,
                now_ms(),
                deps.parked_max_age,
            );
            return ItemOutcome::Failed { error, attempts: 0 };
        }
        Sent::Failed(e, attempts) => return failed(e, attempts),
        Sent::Fatal(e) => return ItemOutcome::Fatal(e),
        Sent::Stopped => return ItemOutcome::Stopped,
    };
    let took = started.elapsed();
    let etag = if deps.upload.record_etag && job.target.kind != TargetKind::Contact {
        read_back_etag(deps, job).await
    } else {
        EtagRead::NotRead
    };
    ItemOutcome::Uploaded(Box::new(Uploaded {
        reply,
        reason,
        bytes_before,
        bytes_after: processed.bytes.len() as u64,
        took,
        etag,
        crop: processed.crop,
    }))
}

fn failed(e: GraphError, attempts: u32) -> ItemOutcome {
    ItemOutcome::Failed {
        error: GraphProblem::Refused(e).into(),
        attempts,
    }
}

/// Reads the photo's metadata back after an upload: the `mediaEtag` baseline `verify` compares
/// with. A failure here costs only that baseline: the upload stands.
async fn read_back_etag(deps: &Deps, job: &Job) -> EtagRead {
    match current_etag(deps, &job.target, &job.path).await {
        Sent::Done(etag) => EtagRead::Read(etag),
        Sent::Failed(e, _) => {
            tracing::warn!(path = %job.path, error = %e, "uploaded, but its metadata could not be read back; verify cannot check this photo until it is uploaded again");
            EtagRead::Read(None)
        }
        Sent::Fatal(e) => EtagRead::Fatal(e),
        Sent::Stopped => EtagRead::NotRead,
    }
}

/// The photo's current `mediaEtag`, through the limiter and retry policy; `None` when the
/// target has no photo (a 404, or Graph's 1x1 placeholder with an empty etag).
pub async fn current_etag(deps: &Deps, target: &Target, what: &str) -> Sent<Option<String>> {
    match with_retries(deps, what, || deps.graph.photo_meta(target)).await {
        Sent::Done(meta) => {
            let etag = meta.etag.filter(|e| !e.is_empty());
            Sent::Done(etag.filter(|_| meta.id.as_deref() != Some("1x1")))
        }
        Sent::Failed(e, _) if e.status() == Some(404) => Sent::Done(None),
        Sent::Failed(e, attempts) => Sent::Failed(e, attempts),
        Sent::Fatal(e) => Sent::Fatal(e),
        Sent::Stopped => Sent::Stopped,
    }
}

async fn delete(deps: &Deps, job: &Job) -> ItemOutcome {
    match with_retries(deps, &job.path, || deps.graph.delete_photo(&job.target)).await {
        Sent::Done(reply) => ItemOutcome::Deleted {
            status: reply.status,
            request_id: reply.request_id,
        },
        // Nothing to delete is what we wanted.
        Sent::Failed(
            GraphError::Status {
                status: 404,
                request_id,
                ..
            },
            _,
        ) => ItemOutcome::Deleted {
            status: 404,
            request_id,
        },
        Sent::Failed(e, attempts) => failed(e, attempts),
        Sent::Fatal(e) => ItemOutcome::Fatal(e),
        Sent::Stopped => ItemOutcome::Stopped,
    }
}

/// A 404 for a user (not a mailbox error): the account may be minutes old (Graph and Exchange
/// take a while to know a new user), or be created later by HR's provisioning. Parked, like a
/// lookup that found no one, rather than failed for good.
fn user_not_there_yet(target: &Target, e: &GraphError) -> bool {
    target.kind == TargetKind::User
        && e.status() == Some(404)
        && !matches!(
            e.code(),
            Some("ErrorNonExistentMailbox" | "MailboxNotHostedInExchangeOnline")
        )
}

/// Runs the image pipeline on the blocking pool, at most one image per core at a time; a
/// header-only pipeline (passthrough) runs in place, as a hop to the pool would cost more.
pub async fn run_pipeline(deps: &Arc<Deps>, bytes: Bytes) -> Result<Processed, ItemError> {
    let processed = if deps.pipeline.is_header_only() {
        deps.pipeline.process_shared(&bytes)
    } else {
        let Ok(_slot) = deps.image_slots.acquire().await else {
            return Err(LocalProblem::Cancelled.into());
        };
        let d = deps.clone();
        tokio::task::spawn_blocking(move || d.pipeline.process_shared(&bytes))
            .await
            .map_err(|e| LocalProblem::Panicked {
                task: "image pipeline",
                message: e.to_string(),
            })?
    };
    match processed {
        Ok(p) if p.bytes.len() > MAX_UPLOAD_BYTES => Err(LocalProblem::TooLargeAfter {
            bytes: p.bytes.len() as u64,
        }
        .into()),
        Ok(p) => Ok(p),
        Err(e) => Err(e.into()),
    }
}
