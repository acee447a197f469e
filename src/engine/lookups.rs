//! Users named by a property Graph cannot address them by (mail, employeeId) are looked up in
//! batches: uploads wait in [`Lookups`] until 15 values of one kind are gathered (one request
//! resolves them all) or the walk ends. Found users are cached (in the ledger too, for
//! `resolve_ttl`); no user yet: the photo is parked; several: it fails, as it could be the
//! wrong person.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::graph::resolve::{self, Outcome, MAX_PER_REQUEST};
use crate::graph::GraphError;
use crate::ledger::{now_ms, CachedResolution, Op};
use crate::mapping::{Lookup, Target};
use crate::stats::Stats;

use super::outcome::{park, GraphProblem, ItemError, LocalProblem, Recorder};
use super::retry::{with_retries, Sent};
use super::worker::{Deps, Job};
use super::{lock, millis};

/// Whether the values awaiting `lookup` fill a request.
pub fn batch_full(awaiting: impl IntoIterator<Item = Option<Lookup>>, lookup: Lookup) -> bool {
    awaiting.into_iter().filter(|l| *l == Some(lookup)).count() >= MAX_PER_REQUEST
}

/// The requests that look up `values`: grouped by kind (in the order kinds first appear), each
/// kind's values sorted and without repeats, at most [`MAX_PER_REQUEST`] per request.
pub fn requests<'v>(
    values: impl IntoIterator<Item = (Lookup, &'v str)>,
) -> Vec<(Lookup, Vec<String>)> {
    let mut kinds: Vec<(Lookup, Vec<String>)> = Vec::new();
    for (kind, v) in values {
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, vs)) => vs.push(v.to_owned()),
            None => kinds.push((kind, vec![v.to_owned()])),
        }
    }
    let mut out = Vec::new();
    for (kind, mut vs) in kinds {
        vs.sort();
        vs.dedup();
        out.extend(vs.chunks(MAX_PER_REQUEST).map(|c| (kind, c.to_vec())));
    }
    out
}

/// Looked-up users (target key → object id), loaded from the ledger at the first pass.
#[derive(Default)]
pub struct Resolutions(Mutex<Option<HashMap<String, CachedResolution>>>);

impl Resolutions {
    pub fn is_loaded(&self) -> bool {
        lock(&self.0).is_some()
    }

    pub fn load(&self, cache: HashMap<String, CachedResolution>) {
        *lock(&self.0) = Some(cache);
    }

    /// The object id cached for `key`, if it has not expired at `now`.
    pub fn valid(&self, key: &str, now: i64) -> Option<String> {
        lock(&self.0)
            .as_ref()
            .and_then(|c| c.get(key))
            .filter(|r| r.expires_at > now)
            .map(|r| r.object_id.clone())
    }

    /// The object id cached for `key`, expired or not (where a deleted file's photo went).
    pub fn any(&self, key: &str) -> Option<String> {
        lock(&self.0)
            .as_ref()
            .and_then(|c| c.get(key).map(|r| r.object_id.clone()))
    }

    fn insert(&self, key: String, r: CachedResolution) {
        if let Some(c) = lock(&self.0).as_mut() {
            c.insert(key, r);
        }
    }
}

/// Why a request for a batch of values failed.
enum BatchFailure {
    Refused(Arc<GraphError>),
    NotAUserList {
        status: u16,
        request_id: Option<String>,
    },
}

/// Uploads waiting for their user to be looked up.
#[derive(Default)]
pub struct Lookups {
    awaiting: Vec<Job>,
}

/// What a lookup needs: requests, the cache, and where outcomes are recorded.
pub struct LookupCtx<'a> {
    pub deps: &'a Deps,
    pub recorder: &'a Recorder,
    pub cache: &'a Resolutions,
}

impl Lookups {
    /// Holds `job` (whose target has a lookup); `true` when its kind now fills a request.
    pub fn hold(&mut self, job: Job, lookup: Lookup) -> bool {
        self.awaiting.push(job);
        batch_full(self.awaiting.iter().map(|j| j.target.lookup), lookup)
    }

    /// Looks up the users of the uploads held for `lookup` (all kinds when `None`) and returns
    /// those found, their targets now the users' ids; the rest are recorded (parked or failed).
    pub async fn resolve(
        &mut self,
        lookup: Option<Lookup>,
        ctx: &LookupCtx<'_>,
    ) -> Result<Vec<Job>, GraphError> {
        let (mine, rest): (Vec<Job>, Vec<Job>) = std::mem::take(&mut self.awaiting)
            .into_iter()
            .partition(|j| lookup.is_none() || j.target.lookup == lookup);
        self.awaiting = rest;
        let values = mine
            .iter()
            .filter_map(|j| Some((j.target.lookup?, j.target.id.as_str())));
        let mut found: HashMap<(Lookup, String), Outcome> = HashMap::new();
        let mut failed: HashMap<Lookup, BatchFailure> = HashMap::new();
        for (kind, chunk) in requests(values) {
            Stats::add(&ctx.deps.stats.lookups, 1);
            let q = resolve::query(kind, &chunk);
            let what = format!("{} lookup", kind.property());
            match with_retries(ctx.deps, &what, || ctx.deps.graph.query(&q)).await {
                Sent::Done(reply) => {
                    if let Some(o) = resolve::outcomes(kind, &chunk, &reply.body) {
                        found.extend(o.into_iter().map(|(v, o)| ((kind, v), o)));
                    } else {
                        let (status, request_id) = (reply.status, reply.request_id);
                        failed.insert(kind, BatchFailure::NotAUserList { status, request_id });
                    }
                }
                Sent::Failed(e, _) => {
                    failed.insert(kind, BatchFailure::Refused(Arc::new(e)));
                }
                Sent::Fatal(e) => return Err(e),
                Sent::Stopped => return Ok(Vec::new()),
            }
        }
        let mut ready = Vec::new();
        for job in mine {
            let Some(kind) = job.target.lookup else {
                continue;
            };
            let outcome = found.get(&(kind, job.target.id.clone())).cloned();
            if let Some(job) = apply(ctx, kind, job, outcome, failed.get(&kind)).await {
                ready.push(job);
            }
        }
        Ok(ready)
    }
}

/// One job's lookup outcome: the job to queue (its user found), or `None` once recorded.
async fn apply(
    ctx: &LookupCtx<'_>,
    kind: Lookup,
    mut job: Job,
    outcome: Option<Outcome>,
    failed: Option<&BatchFailure>,
) -> Option<Job> {
    let value = job.target.id.clone();
    let (error, attempts) = match (outcome, failed) {
        (Some(Outcome::Found(r)), _) => {
            remember(ctx, &job.key, r.id.clone(), r.upn).await;
            job.target = Target::user(&r.id);
            return Some(job);
        }
        (Some(o @ Outcome::Ambiguous(_)), _) => {
            let message = o.message(kind, &value).unwrap_or_default();
            tracing::warn!(path = %job.path, target = %job.key, %message, "ambiguous lookup");
            (LocalProblem::AmbiguousUser { message }.into(), 0)
        }
        (Some(Outcome::NoMatch) | None, None) => {
            let message = Outcome::NoMatch.message(kind, &value).unwrap_or_default();
            let parked = ItemError::from(LocalProblem::NoSuchUser { message });
            let max_age = ctx.deps.parked_max_age;
            (park(parked, job.parked_since, now_ms(), max_age), 0)
        }
        (_, Some(f)) => (batch_error(kind, value, f), 1),
    };
    ctx.recorder.failed(&job, &error, attempts).await;
    None
}

fn batch_error(lookup: Lookup, value: String, f: &BatchFailure) -> ItemError {
    match f {
        BatchFailure::Refused(error) => GraphProblem::Lookup {
            lookup,
            value,
            error: error.clone(),
        },
        BatchFailure::NotAUserList { status, request_id } => GraphProblem::LookupAnswer {
            lookup,
            value,
            status: *status,
            request_id: request_id.clone(),
        },
    }
    .into()
}

/// Caches a found user, in memory and in the ledger.
async fn remember(ctx: &LookupCtx<'_>, key: &str, object_id: String, upn: String) {
    let now = now_ms();
    let expires_at = now.saturating_add(millis(ctx.recorder.sync.resolve_ttl));
    tracing::debug!(target = %key, %upn, "looked up");
    ctx.cache.insert(
        key.to_owned(),
        CachedResolution {
            object_id: object_id.clone(),
            upn: upn.clone(),
            expires_at,
        },
    );
    ctx.recorder
        .send(Op::Resolved {
            lookup_key: key.to_owned(),
            object_id,
            upn,
            now,
            expires_at,
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifteen_values_of_one_kind_fill_a_request() {
        let mut held = vec![Some(Lookup::Mail); 14];
        held.push(Some(Lookup::EmployeeId));
        held.push(None);
        assert!(!batch_full(held.clone(), Lookup::Mail));
        held.push(Some(Lookup::Mail));
        assert!(batch_full(held.clone(), Lookup::Mail));
        assert!(!batch_full(held, Lookup::EmployeeId));
    }

    #[test]
    fn requests_group_by_kind_dedup_and_hold_at_most_fifteen_values() {
        let mails: Vec<String> = (0..31).map(|n| format!("u{n:02}@contoso.com")).collect();
        let mut values: Vec<(Lookup, &str)> =
            mails.iter().map(|m| (Lookup::Mail, m.as_str())).collect();
        values.insert(3, (Lookup::EmployeeId, "004711"));
        values.push((Lookup::EmployeeId, "004711"));
        values.push((Lookup::Mail, "u00@contoso.com"));
        let r = requests(values);
        let shape: Vec<(Lookup, usize)> = r.iter().map(|(k, v)| (*k, v.len())).collect();
        assert_eq!(
            shape,
            [
                (Lookup::Mail, 15),
                (Lookup::Mail, 15),
                (Lookup::Mail, 1),
                (Lookup::EmployeeId, 1)
            ]
        );
        assert_eq!(r[0].1[0], "u00@contoso.com");
        assert_eq!(r[2].1, ["u30@contoso.com"]);
    }

    #[test]
    fn no_values_no_requests() {
        assert!(requests(std::iter::empty()).is_empty());
    }
}
