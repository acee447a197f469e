//! The managed identity endpoint (`GET /metadata/identity/oauth2/token`), as an Azure VM's
//! instance metadata service or an Arc-enabled server's agent answers it: `Metadata: true`
//! required, `resource` required, user-assigned identities by `client_id`, `object_id` or
//! `msi_res_id`, string-valued token fields; for Arc, the challenge with a `.key` file.
//!
//! Invariant: an Arc key is good for one token request, like the agent's; its file is
//! removed when it is used.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine as _;
use rand::RngCore;
use serde_json::json;

use crate::config::ManagedIdentity;
use crate::reply::{unix_now, Ctx, Reply};
use crate::state::{lock, Shared};
use crate::token;

fn error(status: StatusCode, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        json!({"error": error, "error_description": description}),
    )
}

pub(crate) fn handle(
    shared: &Shared,
    _ctx: &Ctx,
    method: &str,
    query: &str,
    headers: &HeaderMap,
) -> Reply {
    let Some(mi) = &shared.config.managed_identity else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Identity not found",
        );
    };
    if method != "GET" {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "Only GET is allowed",
        );
    }
    let has_metadata = headers
        .get("metadata")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !has_metadata {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    if !params.contains_key("api-version") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = params.get("resource").filter(|r| !r.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let user = ["client_id", "object_id", "msi_res_id"]
        .iter()
        .find_map(|k| params.get(*k));
    if let Some(id) = user {
        if !mi.user_assigned.iter().any(|u| u.eq_ignore_ascii_case(id)) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Identity not found",
            );
        }
    }
    if let Some(reply) = arc_challenge(shared, mi, headers) {
        return reply;
    }
    let Some((token, secs)) = token::issue_token(shared) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "token encoding failed",
        );
    };
    let now = unix_now();
    Reply::json(
        StatusCode::OK,
        json!({
            "access_token": token,
            "client_id": shared.config.client_id,
            "expires_in": secs.to_string(),
            "expires_on": (now + secs).to_string(),
            "ext_expires_in": secs.to_string(),
            "not_before": now.to_string(),
            "resource": resource,
            "token_type": "Bearer",
        }),
    )
}

/// For Arc: `None` when the request carries a key handed out before (used up now), else
/// the 401 that names a fresh key file.
fn arc_challenge(shared: &Shared, mi: &ManagedIdentity, headers: &HeaderMap) -> Option<Reply> {
    let dir = mi.arc_key_dir.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if let Some(key) = given {
        let mut keys = lock(&shared.arc_keys);
        if let Some(i) = keys.iter().position(|(k, _)| k == key.trim()) {
            let (_, file) = keys.remove(i);
            // Used up, like the agent's; nothing is left behind in its folder.
            let _ = std::fs::remove_file(file);
            return None;
        }
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "The key in the Authorization header is not valid",
        ));
    }
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let key = base64::engine::general_purpose::STANDARD.encode(raw);
    let path = dir.join(format!("{}.key", uuid::Uuid::new_v4().simple()));
    if let Err(e) = std::fs::write(&path, &key) {
        return Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &format!("cannot write the key file: {e}"),
        ));
    }
    lock(&shared.arc_keys).push((key, path.clone()));
    let realm = mi.arc_realm.clone().unwrap_or(path);
    Some(
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authorization header with the key file's content is required",
        )
        .header(
            header::WWW_AUTHENTICATE,
            format!("Basic realm={}", realm.display()),
        ),
    )
}
