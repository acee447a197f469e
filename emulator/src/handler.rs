//! The one request handler behind every token and Graph path: it reads the body, resolves
//! the target, applies scripted then random faults, authenticates, dispatches, and records
//! the outcome. Graph's paths (`users('x')`, `%24value`) are routed by [`crate::route`]
//! rather than axum's router, and answered by [`crate::graph`].
//!
//! Invariants: every request is counted once, including dropped ones (status 0); the body is
//! always read before answering, so an early answer (429, 413) reaches the client instead
//! of a reset caused by unread upload bytes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::directory::Resolved;
use crate::faults::{Fault, Probe, RetryAfter};
use crate::graph::{self, MAX_PHOTO_BYTES};
use crate::record::{Recorded, RequestKind};
use crate::reply::{entra_error, graph_error, verdict_reply, Ctx, Reply, ReplyBody};
use crate::route::{self, BodyRead, GraphRequest, Route};
use crate::state::{lock, Shared};
use crate::token;

/// Oversized uploads are read and discarded up to this size so the client sees the 413;
/// beyond it the connection is closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Keeps the in-flight count right even when the request future is dropped mid-way.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&shared.stats).in_flight(now);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let raw_path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let headers = &parts.headers;
    let authorization = header_str(headers, "authorization");
    let ctx = Ctx {
        request_id: uuid::Uuid::new_v4().to_string(),
        client_request_id: header_str(headers, "client-request-id").map(str::to_owned),
    };
    let route = route::parse_path(parts.uri.path());
    let kind = route.kind(&method);
    let resolved = route::resolve(&shared, &route, kind);
    if kind.is_upload() {
        lock(&shared.stats).upload_arrived(at);
    }
    let _in_flight = kind.is_photo().then(|| InFlight::enter(&shared));

    let limit = match kind {
        RequestKind::PhotoPut | RequestKind::PhotoPatch => MAX_PHOTO_BYTES,
        RequestKind::Batch => 8 * MAX_PHOTO_BYTES,
        _ => 1024 * 1024,
    };
    let body = read_body(body, limit).await;
    let body_len = body.len;
    let close = body.len > DRAIN_LIMIT;

    let reply = respond(
        &shared,
        &ctx,
        &parts.headers,
        &method,
        &raw_path,
        &route,
        kind,
        resolved.as_ref(),
        body,
        at,
    )
    .await;
    let reply = if close {
        reply.header(header::CONNECTION, "close".to_owned())
    } else {
        reply
    };

    let status = if reply.drop_connection {
        0
    } else {
        reply.status.as_u16()
    };
    lock(&shared.stats).answered(kind, status);
    if shared.config.record_requests {
        let rec = Recorded {
            at,
            method,
            raw_path,
            target: resolved.map(|r| r.canonical),
            status,
            body_len,
            client_request_id: ctx.client_request_id.clone(),
            authorization: authorization.is_some_and(|a| {
                a.split_once(' ')
                    .is_some_and(|(s, t)| s.eq_ignore_ascii_case("bearer") && !t.trim().is_empty())
            }),
            kind,
        };
        lock(&shared.records).push(rec);
    }
    reply.into_response(&ctx, kind)
}

async fn read_body(mut body: Body, limit: usize) -> BodyRead {
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        len += chunk.len();
        if len > DRAIN_LIMIT {
            break;
        }
        if len > limit {
            first = None;
            buf = None;
            continue;
        }
        // The common single-chunk body is kept without copying.
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let mut b = BytesMut::with_capacity(f.len() + chunk.len());
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    let bytes = match (first, buf) {
        (Some(f), _) => f,
        (None, Some(b)) => b.freeze(),
        (None, None) => Bytes::new(),
    };
    BodyRead {
        bytes,
        len,
        too_large: len > limit,
    }
}

fn scripted_status(
    ctx: &Ctx,
    kind: RequestKind,
    status: u16,
    code: &str,
    retry_after: Option<RetryAfter>,
) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let reply = if kind == RequestKind::Token {
        entra_error(
            ctx,
            status,
            code,
            90_033,
            "A transient error has occurred. Please try again.",
        )
    } else {
        graph_error(ctx, status, code, "Fault injected by graph-emulator.")
    };
    reply.retry_after(retry_after)
}

fn record_token_request(shared: &Shared, raw_path: &str, headers: &HeaderMap, body: &[u8]) {
    let rec = crate::record::TokenRequest {
        path: raw_path.to_owned(),
        form: form_urlencoded::parse(body).into_owned().collect(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
    };
    lock(&shared.token_requests).push(rec);
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    shared: &Shared,
    ctx: &Ctx,
    headers: &HeaderMap,
    method: &str,
    raw_path: &str,
    route: &Route,
    kind: RequestKind,
    resolved: Option<&Resolved>,
    body: BodyRead,
    at: Instant,
) -> Reply {
    let probe = Probe {
        kind,
        raw_path,
        target: resolved.map(|r| r.canonical.as_str()),
        alias: resolved.and_then(|r| r.alias.as_deref()),
    };
    let (scripted, latency) = {
        let mut faults = lock(&shared.faults);
        let latency = if kind.is_photo() {
            faults.faults().latency
        } else {
            Duration::ZERO
        };
        (faults.take_rule(&probe), latency)
    };
    match scripted {
        Some(Fault::Status {
            status,
            code,
            retry_after,
        }) => return scripted_status(ctx, kind, status, &code, retry_after),
        Some(Fault::Body {
            status,
            content_type,
            body,
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            return Reply::new(status, ReplyBody::Bytes(Bytes::from(body), content_type));
        }
        Some(Fault::Reset) => return Reply::drop_connection(),
        Some(Fault::Stall(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }

    if kind == RequestKind::Token && shared.config.record_requests {
        record_token_request(shared, raw_path, headers, &body.bytes);
    }
    if *route == Route::ManagedIdentity {
        let query = raw_path.split_once('?').map_or("", |(_, q)| q);
        return crate::identity::handle(shared, ctx, method, query, headers);
    }
    if let Route::Token { tenant } = route {
        let host = header_str(headers, "host");
        let path = raw_path.split('?').next().unwrap_or(raw_path);
        return token::handle(shared, ctx, method, host, path, tenant, &body.bytes);
    }
    if *route == Route::NotFound {
        return Reply::new(StatusCode::NOT_FOUND, ReplyBody::Text("Not Found"));
    }
    if let Err(message) = token::authorize(shared, header_str(headers, "authorization")) {
        return graph_error(
            ctx,
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
        .header(
            header::WWW_AUTHENTICATE,
            "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"".to_owned(),
        );
    }
    if kind.is_photo() {
        let (verdict, stall) = lock(&shared.faults).draw(Instant::now());
        if let Some(reply) = verdict_reply(ctx, verdict, false) {
            return reply;
        }
        if !stall.is_zero() {
            tokio::time::sleep(stall).await;
        }
    }
    graph::dispatch(
        shared,
        ctx,
        &GraphRequest {
            method,
            route,
            kind,
            resolved,
            query: raw_path.split_once('?').map(|(_, q)| q),
            content_type: header_str(headers, "content-type"),
            consistency_eventual: header_str(headers, "consistencylevel")
                .is_some_and(|v| v.eq_ignore_ascii_case("eventual")),
            body,
            at,
        },
    )
}
