//! The token endpoint: secrets, certificate assertions (RS256 + x5t, PS256 + x5t#S256) and
//! Entra's error answers.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use graph_emulator::Config;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use crate::helpers::*;

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://graph.microsoft.com/.default";

fn cert_config(cert: &str) -> Config {
    Config {
        client_secret: None,
        certificate_pem: Some(fixture(cert)),
        ..config()
    }
}

fn assert_aadsts(body: &Value, error: &str, code: u64) {
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["error_codes"][0], code, "{body}");
    let desc = body["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    for field in ["timestamp", "trace_id", "correlation_id"] {
        assert!(body[field].is_string(), "{field} missing in {body}");
    }
}

#[tokio::test]
async fn secret_grant_issues_a_jwt_with_roles() {
    let emu = start().await;
    let (status, body) = token_request(
        &emu,
        "contoso.onmicrosoft.com",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", SCOPE),
            ("client_secret", "test-secret"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["ext_expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["appid"], CLIENT);
    assert!(claims["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "ProfilePhoto.ReadWrite.All"));
    assert!(claims["tid"].is_string() && claims["exp"].is_u64() && claims["iat"].is_u64());
    assert_eq!(emu.tokens_issued(), 1);
}

#[tokio::test]
async fn credential_errors_carry_aadsts_codes() {
    let emu = start().await;
    let base = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("scope", SCOPE),
    ];

    let mut form = base.to_vec();
    form.push(("client_secret", "wrong-secret-value"));
    let (status, body) = token_request(&emu, "contoso.onmicrosoft.com", &form).await;
    assert_eq!(status, 401);
    assert_aadsts(&body, "invalid_client", 7_000_215);
    assert!(!body.to_string().contains("wrong-secret-value"));

    let (status, body) = token_request(&emu, "contoso.onmicrosoft.com", &base).await;
    assert_eq!(status, 401);
    assert_aadsts(&body, "invalid_client", 7_000_218);

    let (status, body) = token_request(
        &emu,
        "contoso.onmicrosoft.com",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "99999999-2222-3333-4444-555555555555"),
            ("scope", SCOPE),
            ("client_secret", "test-secret"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_aadsts(&body, "unauthorized_client", 700_016);

    let mut form = base.to_vec();
    form.push(("client_secret", "test-secret"));
    for tenant in ["fabrikam.onmicrosoft.com", "common"] {
        let (status, body) = token_request(&emu, tenant, &form).await;
        assert_eq!(status, 400);
        assert_aadsts(&body, "invalid_request", 90_002);
    }
    assert_eq!(emu.tokens_issued(), 0);
}

#[tokio::test]
async fn rs256_assertion_with_x5t() {
    let emu = start_with(cert_config("app-cert.pem")).await;
    let aud = token_url(&emu, "contoso.onmicrosoft.com");
    let a = assertion(Algorithm::RS256, &aud, now(), now() + 600);
    let (status, body) = assertion_request(&emu, &a).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn ps256_assertion_with_x5t_s256() {
    // The combined PEM (certificate + key) is accepted as the certificate too.
    let emu = start_with(cert_config("app.pem")).await;
    let aud = token_url(&emu, "contoso.onmicrosoft.com");
    let a = assertion(Algorithm::PS256, &aud, now(), now() + 600);
    let (status, body) = assertion_request(&emu, &a).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn assertion_failures() {
    let emu = start_with(cert_config("app-cert.pem")).await;
    let aud = token_url(&emu, "contoso.onmicrosoft.com");

    // Tampered signature.
    let good = assertion(Algorithm::RS256, &aud, now(), now() + 600);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[10] ^= 0xFF;
    let bad = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig));
    let (status, body) = assertion_request(&emu, &bad).await;
    assert_eq!(status, 401);
    assert_aadsts(&body, "invalid_client", 700_027);

    // Expired, and valid only in the future.
    let a = assertion(Algorithm::RS256, &aud, now() - 1200, now() - 900);
    let (status, body) = assertion_request(&emu, &a).await;
    assert_eq!(status, 401);
    assert_aadsts(&body, "invalid_client", 700_024);
    let a = assertion(Algorithm::RS256, &aud, now() + 300, now() + 600);
    let (_, body) = assertion_request(&emu, &a).await;
    assert_aadsts(&body, "invalid_client", 700_024);

    // Wrong audience.
    let a = assertion(
        Algorithm::RS256,
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
        now(),
        now() + 600,
    );
    let (status, body) = assertion_request(&emu, &a).await;
    assert_eq!(status, 401);
    assert_aadsts(&body, "invalid_client", 700_023);
}

#[tokio::test]
async fn assertion_for_an_unregistered_certificate() {
    let emu = start_with(cert_config("other-cert.pem")).await;
    let aud = token_url(&emu, "contoso.onmicrosoft.com");
    for alg in [Algorithm::RS256, Algorithm::PS256] {
        let a = assertion(alg, &aud, now(), now() + 600);
        let (status, body) = assertion_request(&emu, &a).await;
        assert_eq!(status, 401);
        assert_aadsts(&body, "invalid_client", 700_027);
    }
}
