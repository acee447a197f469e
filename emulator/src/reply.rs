//! Answers in the shapes Graph and Entra use: [`Reply`] is what every handler returns, and
//! the one place that turns it into an HTTP response adds the headers Graph always sends
//! (`request-id`, `client-request-id`, `x-ms-ags-diagnostic`). Also the UTC time formats the
//! bodies need, without a date crate.
//!
//! Invariant: secrets and bearer tokens never appear in a reply body or header.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::faults::{RetryAfter, Verdict};
use crate::record::RequestKind;

/// Graph's JSON media type, as Graph states it.
const GRAPH_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
const DIAGNOSTIC: &str = r#"{"ServerInfo":{"DataCenter":"Local","Slice":"E","Ring":"0","ScaleUnit":"000","RoleInstance":"graph-emulator"}}"#;

/// Marks a response whose connection must be dropped instead of answered; the connection
/// layer looks for it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropConnection;

/// Per-request identifiers every answer carries.
pub(crate) struct Ctx {
    pub request_id: String,
    pub client_request_id: Option<String>,
}

pub(crate) enum ReplyBody {
    Empty,
    Json(Value),
    Bytes(Bytes, String),
    Text(&'static str),
}

pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, String)>,
    pub body: ReplyBody,
    pub drop_connection: bool,
}

impl Reply {
    pub fn new(status: StatusCode, body: ReplyBody) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body,
            drop_connection: false,
        }
    }

    pub fn empty(status: StatusCode) -> Self {
        Reply::new(status, ReplyBody::Empty)
    }

    pub fn json(status: StatusCode, v: Value) -> Self {
        Reply::new(status, ReplyBody::Json(v))
    }

    pub fn drop_connection() -> Self {
        Reply {
            drop_connection: true,
            ..Reply::empty(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }

    #[must_use]
    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    #[must_use]
    pub fn retry_after(self, ra: Option<RetryAfter>) -> Self {
        match ra.and_then(RetryAfter::header_value) {
            Some(v) => self.header(header::RETRY_AFTER, v),
            None => self,
        }
    }

    /// The HTTP response, with the headers Graph (or Entra, for token requests) always sends.
    pub fn into_response(self, ctx: &Ctx, kind: RequestKind) -> Response<Body> {
        let mut b = Response::builder().status(self.status);
        let is_token = kind == RequestKind::Token;
        if let Some(h) = b.headers_mut() {
            let crid = ctx.client_request_id.as_deref().unwrap_or(&ctx.request_id);
            if is_token {
                put(h, "x-ms-request-id", &ctx.request_id);
                if let Some(c) = &ctx.client_request_id {
                    put(h, "client-request-id", c);
                }
                put(h, "cache-control", "no-store, no-cache");
                put(h, "pragma", "no-cache");
            } else {
                put(h, "request-id", &ctx.request_id);
                put(h, "client-request-id", crid);
                put(h, "x-ms-ags-diagnostic", DIAGNOSTIC);
            }
            for (name, value) in &self.headers {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.append(name.clone(), v);
                }
            }
        }
        let body = match self.body {
            ReplyBody::Empty => Body::empty(),
            ReplyBody::Json(v) => {
                let ct = if is_token {
                    "application/json; charset=utf-8"
                } else {
                    GRAPH_JSON
                };
                b = b.header(header::CONTENT_TYPE, ct);
                Body::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            ReplyBody::Bytes(bytes, ct) => {
                b = b.header(header::CONTENT_TYPE, ct);
                Body::from(bytes)
            }
            ReplyBody::Text(t) => {
                b = b.header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
                Body::from(t)
            }
        };
        let mut resp = b
            .body(body)
            .unwrap_or_else(|_| Response::new(Body::empty()));
        if self.drop_connection {
            resp.extensions_mut().insert(DropConnection);
        }
        resp
    }
}

fn put(h: &mut axum::http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// A Graph error: `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.
pub(crate) fn graph_error(ctx: &Ctx, status: StatusCode, code: &str, message: &str) -> Reply {
    let crid = ctx.client_request_id.as_deref().unwrap_or(&ctx.request_id);
    Reply::json(
        status,
        json!({
            "error": {
                "code": code,
                "message": message,
                "innerError": {
                    "date": iso_date(unix_now()),
                    "request-id": ctx.request_id,
                    "client-request-id": crid,
                }
            }
        }),
    )
}

/// An Entra (AADSTS) error as the token endpoint answers it.
pub(crate) fn entra_error(
    ctx: &Ctx,
    status: StatusCode,
    error: &str,
    code: u32,
    message: &str,
) -> Reply {
    let ts = entra_timestamp(unix_now());
    let correlation = ctx
        .client_request_id
        .clone()
        .unwrap_or_else(|| ctx.request_id.clone());
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {message}\r\nTrace ID: {}\r\nCorrelation ID: {correlation}\r\nTimestamp: {ts}",
                ctx.request_id
            ),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": ctx.request_id,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// (year, month, day, hour, minute, second) in UTC; Howard Hinnant's civil-from-days.
fn utc(secs: u64) -> (i64, u64, u64, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2024-05-01T10:11:12`, as Graph's `innerError.date`.
pub(crate) fn iso_date(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
}

/// `2024-05-01 10:11:12Z`, as Entra's `timestamp`.
pub(crate) fn entra_timestamp(secs: u64) -> String {
    let (y, mo, d, h, mi, s) = utc(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}Z")
}

/// The answer to a random-fault verdict, if it is not a pass.
pub(crate) fn verdict_reply(ctx: &Ctx, verdict: Verdict, in_batch: bool) -> Option<Reply> {
    match verdict {
        Verdict::Pass => None,
        Verdict::RateLimited(ra) => Some(
            graph_error(
                ctx,
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Please retry again later.",
            )
            .retry_after(Some(ra)),
        ),
        Verdict::Error500 => Some(graph_error(
            ctx,
            StatusCode::INTERNAL_SERVER_ERROR,
            "UnknownError",
            "",
        )),
        Verdict::Error503(ra) => Some(service_unavailable(ctx, ra)),
        Verdict::Reset if in_batch => Some(service_unavailable(ctx, RetryAfter::default())),
        Verdict::Reset => Some(Reply::drop_connection()),
    }
}

fn service_unavailable(ctx: &Ctx, ra: RetryAfter) -> Reply {
    graph_error(
        ctx,
        StatusCode::SERVICE_UNAVAILABLE,
        "serviceNotAvailable",
        "The service is temporarily unavailable. Retry after a delay.",
    )
    .retry_after(Some(ra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01T00:00:00");
        assert_eq!(iso_date(1_709_251_199), "2024-02-29T23:59:59");
        assert_eq!(entra_timestamp(1_452_304_932), "2016-01-09 02:02:12Z");
    }
}
