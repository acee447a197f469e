//! Control endpoints for shell scripts and benchmarks, without authentication:
//! `GET /_emulator/stats`, `GET|POST /_emulator/faults`, `POST /_emulator/reset-stats`.
//! They are never recorded, counted or faulted.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::faults::Faults;
use crate::record::Stats;
use crate::state::{lock, Shared};

pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let body = lock(&shared.stats).to_json(shared.started);
    Json(body).into_response()
}

pub(crate) async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    let faults = lock(&shared.faults).faults().clone();
    Json(faults).into_response()
}

/// Takes the body as JSON whatever its Content-Type, since `curl -d` sends a form type.
pub(crate) async fn set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let text = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &body[..]
    };
    match serde_json::from_slice::<Faults>(text) {
        Ok(faults) => {
            lock(&shared.faults).set(faults.clone());
            Json(faults).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("invalid faults JSON: {e}") })),
        )
            .into_response(),
    }
}

/// Zeroes the counters and forgets recorded requests, so a benchmark can measure one phase.
pub(crate) async fn reset_stats(State(shared): State<Arc<Shared>>) -> Response {
    reset(&shared);
    Json(json!({ "ok": true })).into_response()
}

pub(crate) fn reset(shared: &Shared) {
    *lock(&shared.stats) = Stats::new(std::time::Instant::now());
    lock(&shared.records).clear();
    lock(&shared.token_requests).clear();
}
