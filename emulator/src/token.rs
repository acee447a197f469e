//! The Entra v2.0 token endpoint for the client-credentials grant: checks tenant, grant,
//! scope, client id and the credential (secret or certificate-signed client assertion) in
//! the order Entra reports them, and issues HS256 access tokens that the Graph endpoints
//! accept until they expire. Failures carry the AADSTS codes Entra uses.
//!
//! Invariants: a secret is never echoed; an issued token is valid for exactly
//! `Config::token_ttl` of monotonic time, whatever the wall clock does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::{json, Value};

use crate::reply::{entra_error, unix_now, Ctx, Reply};
use crate::state::{lock, Shared};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew Entra tolerates on assertion times.
const SKEW: u64 = 60;
/// Longest assertion lifetime accepted (10 minutes), plus the skew allowance.
const MAX_ASSERTION_LIFETIME: u64 = 600 + SKEW;
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// A failed check: HTTP status, OAuth `error`, AADSTS number, description.
struct Denied(StatusCode, &'static str, u32, String);

fn missing(param: &str) -> Denied {
    Denied(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900_144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

pub(crate) fn handle(
    shared: &Shared,
    ctx: &Ctx,
    method: &str,
    host: Option<&str>,
    path: &str,
    tenant: &str,
    body: &[u8],
) -> Reply {
    if method != "POST" {
        return entra_error(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            900_561,
            "The endpoint only accepts POST requests.",
        );
    }
    match check(shared, host, path, tenant, body) {
        Ok(()) => issue(shared),
        Err(Denied(status, error, code, message)) => {
            entra_error(ctx, status, error, code, &message)
        }
    }
}

fn check(
    shared: &Shared,
    host: Option<&str>,
    path: &str,
    tenant: &str,
    body: &[u8],
) -> Result<(), Denied> {
    let cfg = &shared.config;
    if !(tenant.eq_ignore_ascii_case(&cfg.tenant) || tenant.eq_ignore_ascii_case(&shared.tid)) {
        return Err(Denied(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90_002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. The client credentials flow needs a tenant ID or verified domain, never 'common' or 'organizations'."
            ),
        ));
    }
    let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
    let grant = form
        .get("grant_type")
        .ok_or_else(|| missing("grant_type"))?;
    if grant != "client_credentials" {
        return Err(Denied(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70_003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let client_id = form.get("client_id").ok_or_else(|| missing("client_id"))?;
    let scope = form.get("scope").ok_or_else(|| missing("scope"))?;
    if !scope.ends_with("/.default") || scope.contains(' ') {
        return Err(Denied(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    }
    if !client_id.eq_ignore_ascii_case(&cfg.client_id) {
        return Err(Denied(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        ));
    }
    if let Some(secret) = form.get("client_secret") {
        if cfg.client_secret.as_deref() == Some(secret.as_str()) {
            return Ok(());
        }
        return Err(Denied(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_215,
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                cfg.client_id
            ),
        ));
    }
    if let Some(assertion) = form.get("client_assertion") {
        match form.get("client_assertion_type") {
            None => return Err(missing("client_assertion_type")),
            Some(t) if t != ASSERTION_TYPE => {
                return Err(Denied(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    70_002,
                    format!("Error validating credentials. The client_assertion_type must be '{ASSERTION_TYPE}'."),
                ))
            }
            Some(_) => {}
        }
        let aud = format!("http://{}{path}", host.unwrap_or("127.0.0.1"));
        return check_assertion(shared, assertion, &aud);
    }
    Err(Denied(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7_000_218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".to_owned(),
    ))
}

fn bad_signature(message: &str) -> Denied {
    Denied(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        700_027,
        message.to_owned(),
    )
}

fn malformed() -> Denied {
    Denied(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50_027,
        "JWT token is invalid or malformed.".to_owned(),
    )
}

/// Thumbprints are compared as base64url without padding; standard base64 is accepted too.
fn normalize_thumbprint(t: &str) -> String {
    t.trim_end_matches('=').replace('+', "-").replace('/', "_")
}

fn check_assertion(shared: &Shared, assertion: &str, expected_aud: &str) -> Result<(), Denied> {
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    let unverified = unverified_claims(assertion).ok_or_else(malformed)?;
    let iss = unverified.get("iss").and_then(Value::as_str).unwrap_or("");
    if let Some(fed) = &shared.config.federation {
        if !iss.eq_ignore_ascii_case(&shared.config.client_id) {
            return check_federated(shared, fed, &unverified);
        }
    }
    let Some(cert) = &shared.cert else {
        return Err(bad_signature(
            "Client assertion contains an invalid signature. [Reason - The key was not found.] No certificate is registered on the application.",
        ));
    };
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::PS256) {
        return Err(bad_signature(&format!(
            "Client assertion contains an invalid signature. [Reason - The algorithm {:?} is not supported; use RS256 or PS256.]",
            header.alg
        )));
    }
    let thumbprint_ok = match (&header.x5t_s256, &header.x5t) {
        (Some(s256), _) => normalize_thumbprint(s256) == cert.x5t_s256,
        (None, Some(sha1)) => normalize_thumbprint(sha1) == cert.x5t,
        (None, None) => {
            return Err(bad_signature(
                "Client assertion contains an invalid signature. [Reason - The header has neither 'x5t' nor 'x5t#S256'.]",
            ))
        }
    };
    if !thumbprint_ok {
        let given = header.x5t_s256.as_ref().or(header.x5t.as_ref());
        return Err(bad_signature(&format!(
            "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}']",
            given.map_or("", String::as_str)
        )));
    }
    let mut validation = Validation::new(header.alg);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<Value>(assertion, &cert.key, &validation) {
        Ok(data) => data.claims,
        Err(e) => {
            return Err(match e.kind() {
                ErrorKind::InvalidSignature
                | ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidKeyFormat
                | ErrorKind::InvalidRsaKey(_) => bad_signature(
                    "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value.]",
                ),
                _ => malformed(),
            })
        }
    };
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == expected_aud,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(expected_aud)),
        _ => false,
    };
    if !aud_ok {
        return Err(Denied(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_023,
            format!("Client assertion audience claim does not match Realm issuer. The audience must be '{expected_aud}'."),
        ));
    }
    let client_id = &shared.config.client_id;
    let is_client = |claim: &str| {
        claims
            .get(claim)
            .and_then(Value::as_str)
            .is_some_and(|v| v.eq_ignore_ascii_case(client_id))
    };
    if !is_client("iss") || !is_client("sub") {
        return Err(Denied(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_021,
            "Client assertion application identifier doesn't match 'client_id' parameter. 'iss' and 'sub' must both be the client id.".to_owned(),
        ));
    }
    if claims
        .get("jti")
        .and_then(Value::as_str)
        .map_or(true, str::is_empty)
    {
        return Err(malformed());
    }
    let num = |claim: &str| claims.get(claim).and_then(Value::as_u64);
    let exp = num("exp").ok_or_else(malformed)?;
    let start = num("nbf").or_else(|| num("iat")).ok_or_else(malformed)?;
    let now = unix_now();
    let future = |t: Option<u64>| t.is_some_and(|t| t > now + SKEW);
    if future(num("nbf"))
        || future(num("iat"))
        || exp + SKEW <= now
        || exp <= start
        || exp - start > MAX_ASSERTION_LIFETIME
    {
        return Err(Denied(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700_024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                crate::reply::entra_timestamp(now),
                crate::reply::entra_timestamp(start),
                crate::reply::entra_timestamp(exp)
            ),
        ));
    }
    Ok(())
}

/// The payload of a JWT, unverified.
fn unverified_claims(jwt: &str) -> Option<Value> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn no_federated_match(code: u32, what: &str, value: &str) -> Denied {
    Denied(
        StatusCode::BAD_REQUEST,
        "invalid_client",
        code,
        format!("No matching federated identity record found for presented assertion {what} '{value}'. Please note that the matching is done using a case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion."),
    )
}

/// A platform-issued token presented as the client assertion, matched the way Entra matches
/// it against a federated identity credential (the issuer's signature is not checked).
fn check_federated(
    shared: &Shared,
    fed: &crate::config::Federation,
    claims: &Value,
) -> Result<(), Denied> {
    {
        let mut left = lock(&shared.propagating);
        if *left > 0 {
            *left -= 1;
            return Err(Denied(
                StatusCode::BAD_REQUEST,
                "invalid_client",
                70_021,
                "No matching federated identity record found for presented assertion.".to_owned(),
            ));
        }
    }
    let text = |c: &str| {
        claims
            .get(c)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (iss, sub) = (text("iss"), text("sub"));
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => *a == fed.audience,
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str() == Some(fed.audience.as_str())),
        _ => false,
    };
    if iss != fed.issuer {
        return Err(no_federated_match(700_211, "issuer", &iss));
    }
    if !aud_ok {
        let aud = claims.get("aud").map(Value::to_string).unwrap_or_default();
        return Err(no_federated_match(
            700_212,
            "audience",
            aud.trim_matches('"'),
        ));
    }
    if sub != fed.subject {
        return Err(no_federated_match(700_213, "subject", &sub));
    }
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp + SKEW <= unix_now() {
        return Err(Denied(
            StatusCode::BAD_REQUEST,
            "invalid_client",
            700_024,
            "Client assertion is not within its valid time range.".to_owned(),
        ));
    }
    Ok(())
}

fn issue(shared: &Shared) -> Reply {
    match issue_token(shared) {
        Some((token, secs)) => Reply::json(
            StatusCode::OK,
            json!({
                "token_type": "Bearer",
                "expires_in": secs,
                "ext_expires_in": secs,
                "access_token": token,
            }),
        ),
        None => Reply::json(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "server_error"}),
        ),
    }
}

/// A new access token the Graph endpoints accept, and its lifetime in seconds.
pub(crate) fn issue_token(shared: &Shared) -> Option<(String, u64)> {
    let cfg = &shared.config;
    let now = unix_now();
    let ttl = cfg.token_ttl;
    let ttl_claim = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    let oid = uuid::Uuid::new_v4().to_string();
    let claims = json!({
        "aud": "https://graph.microsoft.com",
        "iss": format!("https://sts.windows.net/{}/", shared.tid),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_claim,
        "appid": cfg.client_id,
        "appidacr": "1",
        "idtyp": "app",
        "oid": oid,
        "sub": oid,
        "roles": cfg.roles,
        "tid": shared.tid,
        "uti": uuid::Uuid::new_v4().simple().to_string(),
        "ver": "1.0",
    });
    let header = Header {
        typ: Some("JWT".to_owned()),
        ..Header::new(Algorithm::HS256)
    };
    let token = match jsonwebtoken::encode(&header, &claims, &shared.signing_key) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "access token encoding failed");
            return None;
        }
    };
    let issued = Instant::now();
    {
        let mut tokens = lock(&shared.tokens);
        // Tokens are forgotten an hour after expiry, when new ones are issued: the map stays
        // small, and a recently expired token still gets the "expired" message.
        tokens.retain(|_, exp| *exp + FORGET_AFTER > issued);
        tokens.insert(token.clone(), issued + ttl);
    }
    lock(&shared.stats).token_issued();
    Some((token, ttl.as_secs()))
}

/// Why a bearer token was refused, as Graph words it.
pub(crate) fn authorize(shared: &Shared, authorization: Option<&str>) -> Result<(), &'static str> {
    let Some(value) = authorization else {
        return Err("Access token is empty.");
    };
    let token = match value.split_once(' ') {
        Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
        _ => return Err("Access token is empty."),
    };
    if token.is_empty() {
        return Err("Access token is empty.");
    }
    match lock(&shared.tokens).get(token) {
        None => Err("Access token validation failure. Invalid audience."),
        Some(exp) if Instant::now() >= *exp => Err("Access token has expired or is not yet valid."),
        Some(_) => Ok(()),
    }
}
