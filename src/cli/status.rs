//! `photosync status [--json]`: what the ledger says, without touching Graph or the tree.
//!
//! The JSON form is a stable interface (documented in the README): fields are only ever added.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ledger::{FailureClass, FailureRow, Ledger, LedgerError, TargetState};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Machine-readable output (stable; see the README).
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Status {
    database: String,
    /// Targets by state: synced, failed, pending (cleared by `retry`), deleted, parked.
    totals: BTreeMap<&'static str, i64>,
    files: i64,
    /// RFC 3339 time of the last successful upload.
    last_sync: Option<String>,
    /// The oldest failure still waiting for a retry (transient), RFC 3339.
    oldest_pending: Option<String>,
    failures_by_reason: BTreeMap<String, i64>,
    failures: Vec<FailureJson>,
    /// Photos whose user was not found (yet): looked up again every `parked_retry`. `at` is
    /// when the photo was first parked.
    parked: Vec<FailureJson>,
    /// Files under a source root that are not photos (neither the name nor the first bytes
    /// say so): how many, and the first [`LISTED`] by path.
    skipped_files: i64,
    skipped: Vec<SkippedJson>,
    /// Synced photos that `crop = "face"` cut at the centre instead: counts by note
    /// (`no_face`, `several_faces`), and the first [`LISTED`] by target.
    crop_fallbacks_by_note: BTreeMap<String, i64>,
    crop_fallbacks: Vec<CropFallbackJson>,
}

/// How many skipped files and crop fallbacks `status` names; the counts cover all of them.
const LISTED: i64 = 20;

#[derive(Serialize)]
struct SkippedJson {
    path: String,
    reason: String,
    /// When it was found skipped, RFC 3339.
    at: String,
}

#[derive(Serialize)]
struct CropFallbackJson {
    target: String,
    path: Option<String>,
    note: String,
}

#[derive(Serialize)]
struct FailureJson {
    target: String,
    path: Option<String>,
    /// [`FailureClass::as_str`]: `transient`, `permanent`, `local` or `parked`.
    class: Option<&'static str>,
    reason: Option<String>,
    http_status: Option<i64>,
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
    attempts: i64,
    at: Option<String>,
    next_attempt_at: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn run(config: &Path, args: Args) -> u8 {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let ledger = match Ledger::open_read_only(&cfg.state.database).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            eprintln!(
                "no database at {} yet: nothing has been synced",
                cfg.state.database.display()
            );
            return exit::OK;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FATAL;
        }
    };
    match collect(&ledger).await {
        Ok(status) => {
            if args.json {
                match serde_json::to_string_pretty(&status) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return exit::FATAL;
                    }
                }
            } else {
                print_text(&status);
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FATAL
        }
    }
}

async fn collect(ledger: &Ledger) -> Result<Status, LedgerError> {
    let mut totals: BTreeMap<&'static str, i64> =
        TargetState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for (state, n) in ledger.counts_by_state().await? {
        totals.insert(state.as_str(), n);
    }
    let failures: Vec<FailureRow> = ledger.failures().await?;
    let mut by_reason = BTreeMap::new();
    for f in &failures {
        *by_reason
            .entry(f.reason.clone().unwrap_or_else(|| "unknown".into()))
            .or_insert(0) += 1;
    }
    let oldest_pending = failures
        .iter()
        .filter(|f| f.class == Some(FailureClass::Transient))
        .filter_map(|f| f.at)
        .min()
        .map(rfc3339);
    let json = |f: FailureRow| FailureJson {
        target: f.target,
        path: f.path,
        class: f.class.map(FailureClass::as_str),
        reason: f.reason,
        http_status: f.http_status,
        code: f.code,
        message: f.message,
        request_id: f.request_id,
        attempts: f.attempts,
        at: f.at.map(rfc3339),
        next_attempt_at: f.next_attempt_at.map(rfc3339),
    };
    let (skipped_files, skipped) = ledger.skipped_files(LISTED).await?;
    let (fallback_counts, fallbacks) = ledger.crop_fallbacks(LISTED).await?;
    Ok(Status {
        skipped_files,
        skipped: skipped
            .into_iter()
            .map(|s| SkippedJson {
                path: s.path,
                reason: s.reason,
                at: rfc3339(s.at),
            })
            .collect(),
        crop_fallbacks_by_note: fallback_counts.into_iter().collect(),
        crop_fallbacks: fallbacks
            .into_iter()
            .map(|c| CropFallbackJson {
                target: c.target,
                path: c.path,
                note: c.note,
            })
            .collect(),
        parked: ledger.parked().await?.into_iter().map(json).collect(),
        database: ledger.path().display().to_string(),
        totals,
        files: ledger.file_count().await?,
        last_sync: ledger.last_upload_at().await?.map(rfc3339),
        oldest_pending,
        failures_by_reason: by_reason,
        failures: failures.into_iter().map(json).collect(),
    })
}

fn print_text(s: &Status) {
    println!("database: {}", s.database);
    let totals = s
        .totals
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("targets: {totals}; {} photo files known", s.files);
    let ago = |t: &Option<String>| {
        t.as_ref().map_or_else(
            || "never".to_owned(),
            |t| {
                let age = humantime::parse_rfc3339(t)
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map(|d| {
                        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
                    })
                    .unwrap_or_default();
                format!("{t} ({age} ago)")
            },
        )
    };
    println!("last sync: {}", ago(&s.last_sync));
    if s.oldest_pending.is_some() {
        println!(
            "oldest failure waiting for a retry: {}",
            ago(&s.oldest_pending)
        );
    }
    print_parked(&s.parked);
    print_failures(s);
    print_skipped(s);
    print_crop_fallbacks(s);
}

/// "and N more" when a list shows fewer than its count.
fn more(shown: usize, count: i64) -> Option<String> {
    let rest = count - shown as i64;
    (rest > 0).then(|| format!("  … and {rest} more"))
}

fn print_skipped(s: &Status) {
    if s.skipped_files == 0 {
        return;
    }
    println!("skipped (not photos): {}", s.skipped_files);
    for f in &s.skipped {
        println!("  {} ({})", f.path, f.reason);
    }
    if let Some(line) = more(s.skipped.len(), s.skipped_files) {
        println!("{line}");
    }
}

fn print_crop_fallbacks(s: &Status) {
    let count: i64 = s.crop_fallbacks_by_note.values().sum();
    if count == 0 {
        return;
    }
    let notes = s
        .crop_fallbacks_by_note
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("cropped at the centre, no single face found: {count} ({notes})");
    for c in &s.crop_fallbacks {
        println!(
            "  {} {}: {}",
            c.target,
            c.path.as_deref().unwrap_or(""),
            c.note
        );
    }
    if let Some(line) = more(s.crop_fallbacks.len(), count) {
        println!("{line}");
    }
}

fn print_parked(parked: &[FailureJson]) {
    if !parked.is_empty() {
        println!("parked (user not found yet): {}", parked.len());
        for p in parked {
            println!(
                "  {} {}: {} (since {}; next lookup {})",
                p.target,
                p.path.as_deref().unwrap_or(""),
                p.message.as_deref().unwrap_or(""),
                p.at.as_deref().unwrap_or("?"),
                p.next_attempt_at.as_deref().unwrap_or("at the next pass"),
            );
        }
    }
}

fn print_failures(s: &Status) {
    if s.failures.is_empty() {
        return;
    }
    let reasons = s
        .failures_by_reason
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!("failed: {} ({reasons})", s.failures.len());
    for f in &s.failures {
        println!(
            "  {} {}: {} {}: {}{}{}",
            f.target,
            f.path.as_deref().unwrap_or(""),
            f.class.unwrap_or(""),
            f.reason.as_deref().unwrap_or(""),
            f.message.as_deref().unwrap_or(""),
            f.code
                .as_deref()
                .map(|c| format!(" [code {c}]"))
                .unwrap_or_default(),
            f.request_id
                .as_deref()
                .map(|r| format!(" [request-id {r}]"))
                .unwrap_or_default(),
        );
    }
}
