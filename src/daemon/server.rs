//! The daemon's optional HTTP endpoint: `/healthz` (the process answers), `/readyz` (a token
//! was obtained, the ledger is writable, the watchers are alive) and `/metrics` (Prometheus
//! text format). Read-only: it looks at [`Stats`] and changes nothing.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::stats::{Stats, LATENCY_BUCKETS_MS};

/// Serves on `listener` (bound by the caller: an operator's address, or port 0 in tests) until
/// `stop` is cancelled.
pub fn serve(
    listener: std::net::TcpListener,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(stats);
    Ok(tokio::spawn(async move {
        let shutdown = async move { stop.cancelled().await };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "metrics server failed");
        }
    }))
}

async fn readyz(
    axum::extract::State(stats): axum::extract::State<Arc<Stats>>,
) -> impl IntoResponse {
    let checks = [
        ("token", Stats::is(&stats.token_ok)),
        ("database", Stats::is(&stats.database_ok)),
        ("watchers", Stats::is(&stats.watchers_ok)),
    ];
    let mut body = String::new();
    for (k, ok) in checks {
        let _ = writeln!(body, "{k}: {}", if ok { "ok" } else { "failing" });
    }
    let code = if checks.iter().all(|(_, ok)| *ok) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics(
    axum::extract::State(stats): axum::extract::State<Arc<Stats>>,
) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&stats),
    )
}

/// One metric family: its name, type, help text and samples (label set, value).
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(&'static str, f64)>,
}

fn family(
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(&'static str, f64)>,
) -> Family {
    Family {
        name,
        kind,
        help,
        samples,
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> f64 {
    Stats::get(c) as f64
}

fn flag(f: &std::sync::atomic::AtomicBool) -> f64 {
    f64::from(u8::from(Stats::is(f)))
}

/// The Prometheus text exposition of `stats`.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    for f in counters(stats).into_iter().chain(gauges(stats)) {
        let _ = writeln!(
            out,
            "# HELP {} {}\n# TYPE {} {}",
            f.name, f.help, f.name, f.kind
        );
        for (labels, v) in f.samples {
            let _ = writeln!(out, "{}{labels} {v}", f.name);
        }
    }
    write_latency(&mut out, stats);
    out
}

fn counters(stats: &Stats) -> Vec<Family> {
    let one = |c| vec![("", count(c))];
    vec![
        family(
            "photosync_uploads_total",
            "counter",
            "Photo uploads by result.",
            vec![
                ("{result=\"ok\"}", count(&stats.uploaded)),
                ("{result=\"failed\"}", count(&stats.failed)),
            ],
        ),
        family(
            "photosync_deletes_total",
            "counter",
            "Photos deleted in Graph.",
            one(&stats.deleted),
        ),
        family(
            "photosync_unchanged_total",
            "counter",
            "Photos found unchanged.",
            one(&stats.unchanged),
        ),
        family(
            "photosync_retries_total",
            "counter",
            "Requests retried after a transient error.",
            one(&stats.retries),
        ),
        family(
            "photosync_throttled_total",
            "counter",
            "Throttling answers (429, or a 503 that says it throttled).",
            one(&stats.throttled),
        ),
        family(
            "photosync_failure_events_total",
            "counter",
            "Failures met, counted each time (a known-bad file again on every pass).",
            one(&stats.failed),
        ),
        family(
            "photosync_passes_total",
            "counter",
            "Planning passes finished (full rescans and changed paths).",
            one(&stats.passes),
        ),
        family(
            "photosync_token_refresh_failures_total",
            "counter",
            "Failed attempts to obtain an access token.",
            one(&stats.token_refresh_failures),
        ),
    ]
}

fn gauges(stats: &Stats) -> Vec<Family> {
    let last = stats
        .last_success_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    vec![
        family(
            "photosync_failing_photos",
            "gauge",
            "Distinct photo files failing now (the ledger has each failure).",
            vec![("", stats.failing() as f64)],
        ),
        family(
            "photosync_queue_depth",
            "gauge",
            "Uploads queued, not yet started.",
            vec![("", count(&stats.queued))],
        ),
        family(
            "photosync_in_flight",
            "gauge",
            "Uploads in flight.",
            vec![("", count(&stats.in_flight))],
        ),
        family(
            "photosync_last_success_timestamp_seconds",
            "gauge",
            "Unix time of the last successful upload (0: none yet).",
            vec![("", last as f64 / 1000.0)],
        ),
        // /readyz's checks, one gauge each, so that an alert names the one that fails.
        family(
            "photosync_watchers_ok",
            "gauge",
            "1 while every source root is watched (or polled as configured), else 0.",
            vec![("", flag(&stats.watchers_ok))],
        ),
        family(
            "photosync_database_ok",
            "gauge",
            "1 while the ledger is writable, else 0.",
            vec![("", flag(&stats.database_ok))],
        ),
        family(
            "photosync_token_ok",
            "gauge",
            "1 while an access token can be obtained, else 0.",
            vec![("", flag(&stats.token_ok))],
        ),
    ]
}

fn write_latency(out: &mut String, stats: &Stats) {
    let (counts, sum) = stats.latency();
    let _ = writeln!(
        out,
        "# HELP photosync_upload_duration_seconds Time from sending an upload to Graph's answer.\n# TYPE photosync_upload_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, c) in counts.iter().enumerate() {
        cumulative += c;
        let le = LATENCY_BUCKETS_MS.get(i).map_or_else(
            || "+Inf".to_owned(),
            |ms| format!("{}", *ms as f64 / 1000.0),
        );
        let _ = writeln!(
            out,
            "photosync_upload_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
        );
    }
    let _ = writeln!(out, "photosync_upload_duration_seconds_sum {sum}");
    let _ = writeln!(out, "photosync_upload_duration_seconds_count {cumulative}");
}
