//! The Graph side: the photo, user-query, batch and photo-settings endpoints, answering
//! requests already routed by [`crate::route`].
//!
//! Invariant: an upload either stores the whole photo under its canonical target with a new
//! etag or stores nothing.

use std::time::Instant;

use axum::http::{header, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::directory::{Resolved, TargetRef, UnusableKind};
use crate::filter::{self, Expr, Prop};
use crate::record::RequestKind;
use crate::reply::{graph_error, verdict_reply, Ctx, Reply, ReplyBody};
use crate::route::{parse_path, resolve, BodyRead, GraphRequest, Route};
use crate::state::{lock, Shared};

/// Graph's limit on one photo upload.
pub const MAX_PHOTO_BYTES: usize = 4 * 1024 * 1024;
/// Graph's limit on requests in one `$batch`.
const MAX_BATCH: usize = 20;

const USER_PHOTO_WRITE: &[&str] = &[
    "ProfilePhoto.ReadWrite.All",
    "User.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const USER_PHOTO_READ: &[&str] = &[
    "ProfilePhoto.ReadWrite.All",
    "ProfilePhoto.Read.All",
    "User.ReadWrite.All",
    "User.Read.All",
    "User.ReadBasic.All",
    "Directory.ReadWrite.All",
    "Directory.Read.All",
];
const GROUP_PHOTO_WRITE: &[&str] = &[
    "ProfilePhoto.ReadWrite.All",
    "Group.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const GROUP_PHOTO_READ: &[&str] = &[
    "ProfilePhoto.ReadWrite.All",
    "ProfilePhoto.Read.All",
    "Group.ReadWrite.All",
    "Group.Read.All",
    "Directory.ReadWrite.All",
    "Directory.Read.All",
];
const CONTACTS_WRITE: &[&str] = &["Contacts.ReadWrite"];
const CONTACTS_READ: &[&str] = &["Contacts.ReadWrite", "Contacts.Read"];
const USER_READ: &[&str] = &[
    "User.Read.All",
    "User.ReadBasic.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

/// Answers an authenticated Graph request (faults already applied).
pub(crate) fn dispatch(shared: &Shared, ctx: &Ctx, req: &GraphRequest<'_>) -> Reply {
    match req.route {
        Route::Photo { target, .. } => match req.resolved {
            Some(resolved) => photo(shared, ctx, req, target, resolved),
            None => graph_error(ctx, StatusCode::INTERNAL_SERVER_ERROR, "UnknownError", ""),
        },
        Route::Users if req.method == "GET" => user_query(shared, ctx, req),
        Route::User(key) if req.method == "GET" => get_user(shared, ctx, key),
        Route::Batch if req.method == "POST" => batch(shared, ctx, req),
        Route::PhotoSettings if req.method == "GET" => {
            let source = lock(&shared.photo_source).clone();
            Reply::json(
                StatusCode::OK,
                json!({
                    "@odata.context": format!("{}/beta/$metadata#admin/people/photoUpdateSettings/$entity", shared.url),
                    "source": source,
                    "allowedRoles": [],
                }),
            )
        }
        Route::BadGraph(message) => {
            graph_error(ctx, StatusCode::BAD_REQUEST, "BadRequest", message)
        }
        Route::Users | Route::User(_) | Route::Batch | Route::PhotoSettings => graph_error(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            "Request_BadRequest",
            "The HTTP method is not supported on this resource.",
        ),
        Route::Token { .. } | Route::ManagedIdentity | Route::NotFound => {
            Reply::new(StatusCode::NOT_FOUND, ReplyBody::Text("Not Found"))
        }
    }
}

fn unusable(ctx: &Ctx, why: UnusableKind, target: &TargetRef, name: &str) -> Reply {
    match why {
        UnusableKind::NoMailbox => graph_error(
            ctx,
            StatusCode::NOT_FOUND,
            "ErrorNonExistentMailbox",
            "The SMTP address has no mailbox associated with it.",
        ),
        UnusableKind::NotUnified => graph_error(
            ctx,
            StatusCode::BAD_REQUEST,
            "ErrorInvalidGroup",
            "Only Microsoft 365 (Unified) groups have photos; this group is a security or distribution group.",
        ),
        UnusableKind::NotFound => match target {
            TargetRef::Contact { .. } => graph_error(
                ctx,
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            ),
            _ => graph_error(
                ctx,
                StatusCode::NOT_FOUND,
                "ResourceNotFound",
                &format!("Resource '{name}' does not exist or one of its queried reference-property objects are not present."),
            ),
        },
    }
}

fn image_not_found(ctx: &Ctx) -> Reply {
    graph_error(
        ctx,
        StatusCode::NOT_FOUND,
        "ImageNotFound",
        "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown.",
    )
}

fn photo(
    shared: &Shared,
    ctx: &Ctx,
    req: &GraphRequest<'_>,
    target: &TargetRef,
    resolved: &Resolved,
) -> Reply {
    let write = matches!(req.method, "PUT" | "PATCH" | "DELETE");
    let roles = match (target, write) {
        (TargetRef::User(_), true) => USER_PHOTO_WRITE,
        (TargetRef::User(_), false) => USER_PHOTO_READ,
        (TargetRef::Group(_), true) => GROUP_PHOTO_WRITE,
        (TargetRef::Group(_), false) => GROUP_PHOTO_READ,
        (TargetRef::Contact { .. }, true) => CONTACTS_WRITE,
        (TargetRef::Contact { .. }, false) => CONTACTS_READ,
    };
    if !shared.has_any_role(roles) {
        return graph_error(
            ctx,
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access is denied. Check credentials and try again.",
        );
    }
    let name = match target {
        TargetRef::User(n) | TargetRef::Group(n) => n.as_str(),
        TargetRef::Contact { id, .. } => id.as_str(),
    };
    let canonical = resolved.canonical.as_str();
    match req.kind {
        RequestKind::PhotoPut | RequestKind::PhotoPatch => {
            if req.body.too_large {
                return graph_error(
                    ctx,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "RequestBodyTooLarge",
                    &format!(
                        "The request body is {} bytes; a photo may be at most {MAX_PHOTO_BYTES} bytes (4 MB).",
                        req.body.len
                    ),
                );
            }
            if let Err(why) = resolved.usable {
                return unusable(ctx, why, target, name);
            }
            let content_type = req
                .content_type
                .and_then(|c| c.split(';').next())
                .map(|c| c.trim().to_ascii_lowercase())
                .unwrap_or_default();
            if content_type != "image/jpeg" && content_type != "image/png" {
                // Graph answers an unexpected media type with a bare 500.
                return graph_error(ctx, StatusCode::INTERNAL_SERVER_ERROR, "UnknownError", "");
            }
            let bytes = &req.body.bytes;
            let is_image =
                bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG\r\n\x1a\n");
            if !is_image {
                return graph_error(
                    ctx,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "The photo is not a JPEG or PNG image.",
                );
            }
            let len = bytes.len();
            lock(&shared.dir).store_photo(
                canonical,
                bytes.clone(),
                &content_type,
                shared.config.store_bytes,
            );
            lock(&shared.stats).stored(req.at, len);
            Reply::empty(StatusCode::OK)
        }
        RequestKind::PhotoGet => {
            if let Err(why) = resolved.usable {
                return unusable(ctx, why, target, name);
            }
            let dir = lock(&shared.dir);
            match dir.photo(canonical) {
                Some(p) => Reply::new(
                    StatusCode::OK,
                    ReplyBody::Bytes(p.bytes.clone(), p.content_type.clone()),
                )
                .header(header::ETAG, p.etag.clone()),
                None => image_not_found(ctx),
            }
        }
        RequestKind::PhotoMeta => {
            if let Err(why) = resolved.usable {
                if why != UnusableKind::NotUnified {
                    return unusable(ctx, why, target, name);
                }
            }
            let context = format!(
                "{}/v1.0/$metadata#{}/photo/$entity",
                shared.url,
                odata_path(canonical)
            );
            let dir = lock(&shared.dir);
            let body = match dir.photo(canonical) {
                Some(p) => json!({
                    "@odata.context": context,
                    "@odata.mediaContentType": p.content_type,
                    "@odata.mediaEtag": p.etag,
                    "id": size_id(p.width, p.height),
                    "width": p.width,
                    "height": p.height,
                }),
                None => json!({
                    "@odata.context": context,
                    "@odata.mediaContentType": "image/gif",
                    "@odata.mediaEtag": "",
                    "id": "1x1",
                    "width": 1,
                    "height": 1,
                }),
            };
            Reply::json(StatusCode::OK, body)
        }
        RequestKind::PhotoDelete => {
            if resolved.is_contact {
                return graph_error(
                    ctx,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "ErrorInvalidRequest",
                    "The photo of a contact cannot be deleted.",
                );
            }
            if let Err(why) = resolved.usable {
                return unusable(ctx, why, target, name);
            }
            if lock(&shared.dir).remove_photo(canonical) {
                Reply::empty(StatusCode::OK)
            } else {
                image_not_found(ctx)
            }
        }
        _ => graph_error(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest",
            "The HTTP method is not supported on this resource.",
        ),
    }
}

/// `users('id')`, `groups('id')` or `users('owner')/contacts('id')` for `@odata.context`.
fn odata_path(canonical: &str) -> String {
    match canonical.split_once(':') {
        Some(("user", id)) => format!("users('{id}')"),
        Some(("group", id)) => format!("groups('{id}')"),
        Some(("contact", rest)) => {
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [o, f, c] => format!("users('{o}')/contactFolders('{f}')/contacts('{c}')"),
                [o, c] => format!("users('{o}')/contacts('{c}')"),
                _ => canonical.to_owned(),
            }
        }
        _ => canonical.to_owned(),
    }
}

/// The largest size Microsoft 365 serves that the photo covers, as Graph names it.
fn size_id(w: u32, h: u32) -> String {
    const SIZES: [u32; 9] = [48, 64, 96, 120, 240, 360, 432, 504, 648];
    let side = w.min(h);
    let s = SIZES
        .iter()
        .rev()
        .find(|s| **s <= side)
        .copied()
        .unwrap_or(48);
    format!("{s}x{s}")
}

fn user_json(u: &crate::config::User, select: Option<&[String]>) -> Value {
    let all = [
        ("id", json!(u.id)),
        ("userPrincipalName", json!(u.upn)),
        ("mail", json!(u.mail)),
        ("employeeId", json!(u.employee_id)),
    ];
    let mut m = Map::new();
    for (name, v) in all {
        let wanted = match select {
            Some(sel) => sel.iter().any(|s| s.eq_ignore_ascii_case(name)),
            // Graph's default property set leaves employeeId out.
            None => name != "employeeId",
        };
        if wanted {
            m.insert(name.to_owned(), v);
        }
    }
    Value::Object(m)
}

fn get_user(shared: &Shared, ctx: &Ctx, key: &str) -> Reply {
    if !shared.has_any_role(USER_READ) {
        return insufficient(ctx);
    }
    match lock(&shared.dir).user(key) {
        Some(u) => {
            let mut v = user_json(u, None);
            if let Value::Object(m) = &mut v {
                m.insert(
                    "@odata.context".into(),
                    json!(format!("{}/v1.0/$metadata#users/$entity", shared.url)),
                );
            }
            Reply::json(StatusCode::OK, v)
        }
        None => graph_error(
            ctx,
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            &format!("Resource '{key}' does not exist or one of its queried reference-property objects are not present."),
        ),
    }
}

fn insufficient(ctx: &Ctx) -> Reply {
    graph_error(
        ctx,
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.",
    )
}

/// Lowercased user ids an expression selects through the indexes, or `None` when it needs a
/// scan (`and`).
fn indexed(dir: &crate::directory::Directory, e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::AnyOf(prop, values) => Some(
            values
                .iter()
                .flat_map(|v| match prop {
                    Prop::Id => dir.keys_by_id(v),
                    Prop::UserPrincipalName => dir.keys_by_upn(v),
                    Prop::Mail => dir.keys_by_mail(v),
                    Prop::EmployeeId => dir.keys_by_employee_id(v),
                })
                .collect(),
        ),
        Expr::Or(a, b) => {
            let mut v = indexed(dir, a)?;
            v.extend(indexed(dir, b)?);
            Some(v)
        }
        Expr::And(..) => None,
    }
}

fn matches(u: &crate::config::User, e: &Expr) -> bool {
    match e {
        Expr::AnyOf(prop, values) => values.iter().any(|v| match prop {
            Prop::Id => u.id.eq_ignore_ascii_case(v),
            Prop::UserPrincipalName => u.upn.to_lowercase() == v.to_lowercase(),
            Prop::Mail => u
                .mail
                .as_ref()
                .is_some_and(|m| m.to_lowercase() == v.to_lowercase()),
            Prop::EmployeeId => u.employee_id.as_deref() == Some(v.as_str()),
        }),
        Expr::And(a, b) => matches(u, a) && matches(u, b),
        Expr::Or(a, b) => matches(u, a) || matches(u, b),
    }
}

fn user_query(shared: &Shared, ctx: &Ctx, req: &GraphRequest<'_>) -> Reply {
    if !shared.has_any_role(USER_READ) {
        return insufficient(ctx);
    }
    let mut filter = None;
    let mut select = None;
    let mut count = false;
    let mut top = 100usize;
    for (k, v) in form_urlencoded::parse(req.query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "$filter" => filter = Some(v.into_owned()),
            "$select" => {
                select = Some(
                    v.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>(),
                );
            }
            "$count" => count = v.eq_ignore_ascii_case("true"),
            "$top" => match v.parse::<usize>() {
                Ok(n) if (1..=999).contains(&n) => top = n,
                _ => {
                    return graph_error(
                        ctx,
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        &format!(
                        "Invalid page size specified: '{v}'. Must be between 1 and 999 inclusive."
                    ),
                    )
                }
            },
            _ => {}
        }
    }
    if count && !req.consistency_eventual {
        return graph_error(
            ctx,
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "$count is not currently supported without the header 'ConsistencyLevel: eventual'.",
        );
    }
    let expr = match filter.as_deref().map(filter::parse) {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(e)) => return graph_error(ctx, StatusCode::BAD_REQUEST, "BadRequest", &e.0),
    };
    let dir = lock(&shared.dir);
    let found: Vec<&crate::config::User> = match &expr {
        None => dir.users().collect(),
        Some(e) => match indexed(&dir, e) {
            Some(keys) => {
                let mut hits: Vec<(usize, &crate::config::User)> =
                    keys.iter().filter_map(|k| dir.position(k)).collect();
                hits.sort_by_key(|(i, _)| *i);
                hits.dedup_by_key(|(i, _)| *i);
                hits.into_iter().map(|(_, u)| u).collect()
            }
            None => dir.users().filter(|u| matches(u, e)).collect(),
        },
    };
    let total = found.len();
    let value: Vec<Value> = found
        .into_iter()
        .take(top)
        .map(|u| user_json(u, select.as_deref()))
        .collect();
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{}/v1.0/$metadata#users", shared.url)),
    );
    if count {
        body.insert("@odata.count".into(), json!(total));
    }
    body.insert("value".into(), Value::Array(value));
    Reply::json(StatusCode::OK, Value::Object(body))
}

/// `$batch`: each request is answered in order, through the same routing, faults (rate limit
/// and error shares; a drawn reset becomes a 503) and handlers, without its own record.
fn batch(shared: &Shared, ctx: &Ctx, req: &GraphRequest<'_>) -> Reply {
    let bad = |m: &str| graph_error(ctx, StatusCode::BAD_REQUEST, "BadRequest", m);
    let Ok(envelope) = serde_json::from_slice::<Value>(&req.body.bytes) else {
        return bad("The batch request body is not valid JSON.");
    };
    let Some(requests) = envelope.get("requests").and_then(Value::as_array) else {
        return bad("The batch request must have a 'requests' array.");
    };
    if requests.len() > MAX_BATCH {
        return bad("The number of requests in a batch is limited to 20.");
    }
    let mut responses = Vec::with_capacity(requests.len());
    for sub in requests {
        let id = sub.get("id").cloned().unwrap_or(Value::Null);
        let method = sub
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_ascii_uppercase();
        let url = sub.get("url").and_then(Value::as_str).unwrap_or("");
        let headers = sub.get("headers").and_then(Value::as_object);
        let header = |name: &str| {
            headers.and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .and_then(|(_, v)| v.as_str())
            })
        };
        let body = match sub.get("body") {
            None | Some(Value::Null) => Bytes::new(),
            Some(Value::String(s)) => match STANDARD.decode(s) {
                Ok(b) => Bytes::from(b),
                Err(_) => Bytes::from(s.clone().into_bytes()),
            },
            Some(v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
        };
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (url, None),
        };
        let route = parse_path(&format!("/v1.0/{}", path.trim_start_matches('/')));
        let reply = if matches!(route, Route::Batch | Route::Token { .. }) {
            graph_error(
                ctx,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "This request cannot be part of a batch.",
            )
        } else {
            let kind = route.kind(&method);
            let resolved = resolve(shared, &route, kind);
            let mut fault = None;
            if kind.is_photo() {
                let (verdict, _stall) = lock(&shared.faults).draw(Instant::now());
                fault = verdict_reply(ctx, verdict, true);
            }
            fault.unwrap_or_else(|| {
                let len = body.len();
                dispatch(
                    shared,
                    ctx,
                    &GraphRequest {
                        method: &method,
                        route: &route,
                        kind,
                        resolved: resolved.as_ref(),
                        query,
                        content_type: header("content-type"),
                        consistency_eventual: header("consistencylevel")
                            .is_some_and(|v| v.eq_ignore_ascii_case("eventual")),
                        body: BodyRead {
                            bytes: if len > MAX_PHOTO_BYTES && kind.is_upload() {
                                Bytes::new()
                            } else {
                                body.clone()
                            },
                            len,
                            too_large: len > MAX_PHOTO_BYTES && kind.is_upload(),
                        },
                        at: req.at,
                    },
                )
            })
        };
        responses.push(batch_entry(id, reply));
    }
    Reply::json(StatusCode::OK, json!({ "responses": responses }))
}

#[allow(clippy::needless_pass_by_value)] // the reply is consumed piecewise
fn batch_entry(id: Value, reply: Reply) -> Value {
    let mut headers = Map::new();
    for (name, value) in &reply.headers {
        headers.insert(name.as_str().to_owned(), json!(value));
    }
    let body = match reply.body {
        ReplyBody::Empty => None,
        ReplyBody::Json(v) => {
            headers.insert("content-type".into(), json!("application/json"));
            Some(v)
        }
        ReplyBody::Bytes(b, ct) => {
            headers.insert("content-type".into(), json!(ct));
            Some(json!(STANDARD.encode(&b)))
        }
        ReplyBody::Text(t) => Some(json!(t)),
    };
    let mut entry = json!({ "id": id, "status": reply.status.as_u16(), "headers": headers });
    if let (Some(b), Value::Object(m)) = (body, &mut entry) {
        m.insert("body".into(), b);
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_ids() {
        assert_eq!(size_id(648, 648), "648x648");
        assert_eq!(size_id(1000, 700), "648x648");
        assert_eq!(size_id(500, 500), "432x432");
        assert_eq!(size_id(10, 10), "48x48");
    }
}
