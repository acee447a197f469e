//! `--json` output: JSON lines on stdout, one object per line, each with a `type`:
//! `status` (progress, at most once a second), `item` (one per photo acted on or failed: the
//! fields of a `--report` row) and, last, `summary`. A stable interface (see the README): fields
//! are only ever added, never renamed or removed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::report::{Row, Sink};
use crate::stats::Stats;

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// Prints one line of type `kind`. Each line is written whole, so lines from several tasks
/// never interleave.
pub fn line(kind: &'static str, body: &impl Serialize) {
    match serde_json::to_string(&Line { kind, body }) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot write a {kind} line: {e}"),
    }
}

/// A report sink that prints each row as an `item` line, and passes it on to `also` (the
/// `--report` file) when there is one. The task ends once every clone of the sink is dropped.
pub fn items(also: Option<Sink>) -> (Sink, tokio::task::JoinHandle<()>) {
    let (sink, mut rows) = Sink::channel();
    let task = tokio::spawn(async move {
        while let Some(row) = rows.recv().await {
            line("item", &row);
            if let Some(file) = &also {
                file.row(row);
            }
        }
    });
    (sink, task)
}

/// An `item` line for something that is not a report row of the engine (verify's findings).
pub fn item(row: &Row) {
    line("item", row);
}

/// The last line of a backfill.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The run's id. Always `null` for now: the field is where the run id will be once the
    /// ledger records runs, so that scripts can rely on the key.
    pub run: Option<String>,
    pub dry_run: bool,
    /// Photos found (files that name a target).
    pub files: u64,
    pub uploaded: u64,
    pub unchanged: u64,
    /// A dry run: photos that would be uploaded. Otherwise: failed photos whose next attempt
    /// is not due yet.
    pub pending: u64,
    /// Photos whose user does not exist yet (looked up again later).
    pub parked: u64,
    pub failed: u64,
    pub skipped: u64,
    pub skipped_by_reason: BTreeMap<&'static str, u64>,
    pub deleted: u64,
    pub retries: u64,
    pub throttled: u64,
    pub bytes_read: u64,
    pub bytes_uploaded: u64,
    pub elapsed_seconds: f64,
    /// Why the pass ended early: `max_uploads`, `max_duration`, `interrupted`; `null` when it
    /// went through.
    pub stopped: Option<&'static str>,
    /// The process's exit code (see EXIT STATUS in photosync(1)).
    pub exit_code: u8,
}

impl Summary {
    pub fn of(stats: &Stats, elapsed: Duration, dry_run: bool) -> Summary {
        let g = Stats::get;
        Summary {
            run: None,
            dry_run,
            files: g(&stats.files),
            uploaded: g(&stats.uploaded),
            unchanged: g(&stats.unchanged),
            pending: g(&stats.pending),
            parked: g(&stats.parked),
            failed: g(&stats.failed),
            skipped: stats.skipped_total(),
            skipped_by_reason: stats.skipped(),
            deleted: g(&stats.deleted),
            retries: g(&stats.retries),
            throttled: g(&stats.throttled),
            bytes_read: g(&stats.bytes_read),
            bytes_uploaded: g(&stats.bytes_uploaded),
            elapsed_seconds: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            stopped: None,
            exit_code: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_object_with_its_type_first() {
        let row = Row {
            path: "/t/a.jpg".into(),
            target: "user:a@contoso.com".into(),
            action: "upload",
            result: "uploaded (new)".into(),
            bytes_before: Some(10),
            ..Row::default()
        };
        let text = serde_json::to_string(&Line {
            kind: "item",
            body: &row,
        })
        .expect("json");
        assert!(
            text.starts_with(r#"{"type":"item","path":"/t/a.jpg","#),
            "{text}"
        );
        assert!(!text.contains('\n'));
    }
}
