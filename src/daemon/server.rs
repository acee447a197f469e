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

/// The Prometheus text exposition of `stats`.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let g = |c: &std::sync::atomic::AtomicU64| Stats::get(c) as f64;
    metric(
        "photosync_uploads_total",
        "counter",
        "Photo uploads by result.",
        &[
            ("{result=\"ok\"}", g(&stats.uploaded)),
            ("{result=\"failed\"}", g(&stats.failed)),
        ],
    );
    metric(
        "photosync_deletes_total",
        "counter",
        "Photos deleted in Graph.",
        &[("", g(&stats.deleted))],
    );
    metric(
        "photosync_unchanged_total",
        "counter",
        "Photos found unchanged.",
        &[("", g(&stats.unchanged))],
    );
    metric(
        "photosync_retries_total",
        "counter",
        "Requests retried after a transient error.",
        &[("", g(&stats.retries))],
    );
    metric(
        "photosync_throttled_total",
        "counter",
        "Throttling answers (429, or a 503 that says it throttled).",
        &[("", g(&stats.throttled))],
    );
    metric(
        "photosync_failing_photos",
        "gauge",
        "Distinct photo files failing now (the ledger has each failure).",
        &[("", stats.failing() as f64)],
    );
    metric(
        "photosync_failure_events_total",
        "counter",
        "Failures met, counted each time (a known-bad file again on every pass).",
        &[("", g(&stats.failed))],
    );
    metric(
        "photosync_passes_total",
        "counter",
        "Planning passes finished (full rescans and changed paths).",
        &[("", g(&stats.passes))],
    );
    metric(
        "photosync_queue_depth",
        "gauge",
        "Uploads queued, not yet started.",
        &[("", g(&stats.queued))],
    );
    metric(
        "photosync_in_flight",
        "gauge",
        "Uploads in flight.",
        &[("", g(&stats.in_flight))],
    );
    let last = stats
        .last_success_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    metric(
        "photosync_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last successful upload (0: none yet).",
        &[("", last as f64 / 1000.0)],
    );
    metric(
        "photosync_token_refresh_failures_total",
        "counter",
        "Failed attempts to obtain an access token.",
        &[("", g(&stats.token_refresh_failures))],
    );
    // /readyz's checks, one gauge each, so that an alert names the one that fails.
    let flag = |f: &std::sync::atomic::AtomicBool| f64::from(u8::from(Stats::is(f)));
    metric(
        "photosync_watchers_ok",
        "gauge",
        "1 while every source root is watched (or polled as configured), else 0.",
        &[("", flag(&stats.watchers_ok))],
    );
    metric(
        "photosync_database_ok",
        "gauge",
        "1 while the ledger is writable, else 0.",
        &[("", flag(&stats.database_ok))],
    );
    metric(
        "photosync_token_ok",
        "gauge",
        "1 while an access token can be obtained, else 0.",
        &[("", flag(&stats.token_ok))],
    );
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
    out
}
