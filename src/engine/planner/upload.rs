//! Handing a photo on: queued for the workers within the pass's budget, after a user lookup
//! where its target needs one; in a dry run, described instead.

use bytes::Bytes;

use crate::ledger::now_ms;
use crate::mapping::Target;
use crate::report::Row;
use crate::stats::Stats;

use crate::engine::decide::Reason;
use crate::engine::lookups::LookupCtx;
use crate::engine::preview::Preview;
use crate::engine::worker::{run_pipeline, Job};

use super::Planner;

impl Planner<'_> {
    /// Queues an upload, or holds it until its user is looked up.
    pub(super) async fn enqueue(&mut self, mut job: Job) {
        if let Some(lookup) = job.target.lookup {
            let Some(id) = self.intake.resolutions.valid(&job.key, now_ms()) else {
                if self.lookups.hold(job, lookup) {
                    self.resolve_lookups(Some(lookup)).await;
                }
                return;
            };
            job.target = Target::user(&id);
        }
        self.push_upload(job).await;
    }

    /// Looks up the users of the uploads held for `lookup` (all kinds when `None`) and queues
    /// those found.
    pub(super) async fn resolve_lookups(&mut self, lookup: Option<crate::mapping::Lookup>) {
        let intake = self.intake;
        let ctx = LookupCtx {
            deps: &intake.deps,
            recorder: &intake.recorder,
            cache: &intake.resolutions,
        };
        match self.lookups.resolve(lookup, &ctx).await {
            Ok(ready) => {
                for job in ready {
                    self.push_upload(job).await;
                }
            }
            Err(e) => {
                self.fatal.get_or_insert(e);
            }
        }
    }

    /// Queues an upload within the pass's budget; over it, the next run plans the file again.
    async fn push_upload(&mut self, job: Job) {
        if self.budget_spent() {
            return;
        }
        self.uploads_queued += 1;
        tokio::select! {
            _ = self.intake.queue.push(job) => {}
            () = self.intake.deps.cancel.cancelled() => {}
        }
    }

    /// Dry run: say what would be uploaded and what the image pipeline would make of it.
    pub(super) async fn describe(&self, target: &Target, path: &str, bytes: Bytes, reason: Reason) {
        let stats = self.stats();
        let size = bytes.len() as u64;
        match run_pipeline(&self.intake.deps, bytes).await {
            Ok(p) => {
                Stats::add(&stats.pending, 1);
                let bytes_after = p.bytes.len() as u64;
                if stats.reporting() {
                    stats.row(Row {
                        path: path.to_owned(),
                        target: target.key(),
                        action: "upload",
                        result: format!("would_upload ({})", reason.as_str()),
                        bytes_before: Some(size),
                        bytes_after: Some(bytes_after),
                        crop: p.crop.map(|c| c.to_string()),
                        ..Row::default()
                    });
                }
                self.preview(Preview::Upload {
                    target: target.to_string(),
                    path: path.to_owned(),
                    reason,
                    input_format: p.input_format,
                    input_size: p.input_size,
                    output_size: p.output_size,
                    bytes_before: size,
                    bytes_after,
                    orientation: p.orientation,
                    metadata_stripped: p.metadata_stripped,
                    crop: p.crop,
                });
            }
            Err(e) => {
                self.preview(Preview::Refuse {
                    target: target.to_string(),
                    path: path.to_owned(),
                    message: e.to_string(),
                });
                self.fail(path, Some(target.key()), &e);
            }
        }
    }

    pub(super) fn preview(&self, p: Preview) {
        if let Some(tx) = &self.intake.previews {
            let _ = tx.send(p);
        }
    }
}
