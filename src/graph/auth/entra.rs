//! The client-credentials request to Entra's v2.0 token endpoint and what its answer means:
//! a token, a refusal with its AADSTS code, a passing outage, or an answer without a usable
//! token (a proxy's page, an empty `access_token`), which retrying would only repeat.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use super::{hint_for, AuthError, Issued};

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

/// Posts `form` with a fresh `client-request-id` (Entra's sign-in logs show it; it is logged
/// here so the two can be matched).
pub(super) async fn request(
    http: &reqwest::Client,
    url: &str,
    form: &[(&'static str, String)],
) -> Result<Issued, AuthError> {
    let client_request_id = uuid::Uuid::new_v4().to_string();
    tracing::debug!(%client_request_id, "token request");
    let resp = http
        .post(url)
        .header("client-request-id", &client_request_id)
        .header("return-client-request-id", "true")
        .form(form)
        .send()
        .await
        .map_err(|e| AuthError::Transport(e.without_url()))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp
        .bytes()
        .await
        .map_err(|e| AuthError::Transport(e.without_url()))?;
    tracing::debug!(%client_request_id, status, "token answer");
    if !(200..300).contains(&status) {
        return Err(refusal(status, &content_type, &body));
    }
    issued(status, &content_type, &body)
}

/// The token in a 2xx answer, or what made the answer unusable. `expires_in` may be a number
/// or a string (the managed identity endpoints send strings).
pub(super) fn issued(status: u16, content_type: &str, body: &[u8]) -> Result<Issued, AuthError> {
    let unusable = |what: String| AuthError::Unusable { status, what };
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return Err(unusable(not_json(content_type, body)));
    };
    let token = match map.get("access_token") {
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        Some(Value::String(_)) => return Err(unusable("the access_token is empty".into())),
        _ => {
            let fields: Vec<&str> = map.keys().map(String::as_str).collect();
            return Err(unusable(format!(
                "JSON without an access_token (fields: {})",
                if fields.is_empty() {
                    "none".to_owned()
                } else {
                    fields.join(", ")
                }
            )));
        }
    };
    let expires_in = match map.get("expires_in") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(3600);
    // Bounded: an absurd expires_in must not overflow the clock arithmetic of the cache.
    Ok(Issued {
        value: SecretString::from(token),
        lifetime: Duration::from_secs(expires_in.clamp(1, 24 * 3600)),
    })
}

/// Says what came instead of JSON without repeating it: a proxy's page is not ours to print.
fn not_json(content_type: &str, body: &[u8]) -> String {
    let ct = if content_type.is_empty() {
        "no content type"
    } else {
        content_type
    };
    format!(
        "a body that is not JSON ({ct}, {} bytes{})",
        body.len(),
        if body.trim_ascii_start().starts_with(b"<") {
            ", an HTML page: a proxy or captive portal in the way?"
        } else {
            ""
        }
    )
}

/// What a non-2xx answer means: a passing outage, a body that is not Entra's, or credentials
/// refused (with the AADSTS code and a hint when one is known).
pub(super) fn refusal(status: u16, content_type: &str, body: &[u8]) -> AuthError {
    let e: TokenErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let description = e.error_description.lines().next().unwrap_or("").to_owned();
    let aadsts = e
        .error_codes
        .first()
        .copied()
        .or_else(|| parse_aadsts(&description));
    if status >= 500 || e.error == "temporarily_unavailable" || status == 429 {
        return AuthError::Unavailable {
            status,
            error: e.error,
            description,
        };
    }
    if e.error.is_empty() {
        return AuthError::Unusable {
            status,
            what: not_json(content_type, body),
        };
    }
    AuthError::Rejected {
        status,
        error: e.error,
        hint: aadsts.and_then(hint_for).map(str::to_owned),
        aadsts,
        description,
    }
}

fn parse_aadsts(description: &str) -> Option<u32> {
    let rest = &description[description.find("AADSTS")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_code_is_read_from_the_description() {
        assert_eq!(
            parse_aadsts("AADSTS7000215: Invalid client secret provided."),
            Some(7_000_215)
        );
        assert_eq!(parse_aadsts("nothing here"), None);
        assert!(hint_for(7_000_215).unwrap().contains("Value"));
    }

    #[test]
    fn token_endpoint_answers_are_classified() {
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#;
        match refusal(401, "application/json", body) {
            AuthError::Rejected {
                aadsts,
                hint,
                description,
                ..
            } => {
                assert_eq!(aadsts, Some(7_000_215));
                assert!(hint.is_some());
                assert!(!description.contains("Trace ID"), "{description}");
            }
            other => panic!("{other:?}"),
        }
        let e = refusal(503, "", b"{}");
        assert!(matches!(e, AuthError::Unavailable { status: 503, .. }));
        assert!(!e.is_fatal());
        let e = refusal(400, "text/html", b"<html>");
        assert!(
            matches!(e, AuthError::Unusable { status: 400, .. }),
            "{e:?}"
        );
        assert!(e.is_fatal());
    }

    /// Were retried as transient for every photo, and an empty token was even sent.
    #[test]
    fn answers_without_a_usable_token_are_fatal_and_say_what_came() {
        let cases: [(&[u8], &str); 4] = [
            (
                br#"{"token_type":"Bearer","expires_in":3599}"#,
                "without an access_token (fields: expires_in, token_type)",
            ),
            (
                br#"{"access_token":"","expires_in":3599}"#,
                "the access_token is empty",
            ),
            (
                b"<html><body>Sign in to the proxy</body></html>",
                "an HTML page",
            ),
            (b"[1,2]", "not JSON"),
        ];
        for (body, says) in cases {
            let Err(e) = issued(200, "text/html", body) else {
                panic!("{body:?} gave a token")
            };
            assert!(e.is_fatal(), "{e}");
            assert!(e.to_string().contains(says), "{e}");
            assert!(!e.to_string().contains("proxy</body>"), "{e}");
        }
        let ok = issued(200, "", br#"{"access_token":"a.b.c","expires_in":"60"}"#).unwrap();
        assert_eq!(ok.lifetime, Duration::from_secs(60));
    }
}
