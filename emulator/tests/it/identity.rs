//! Workload identity federation at the token endpoint, and the managed identity endpoint.

use graph_emulator::{Config, Federation, ManagedIdentity};
use serde_json::Value;

use crate::helpers::*;

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SCOPE: &str = "https://graph.microsoft.com/.default";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn platform_token(iss: &str, sub: &str, aud: &str) -> String {
    let claims =
        serde_json::json!({"iss": iss, "sub": sub, "aud": aud, "exp": now() + 600, "iat": now()});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"platform"),
    )
    .unwrap()
}

#[tokio::test]
async fn federated_assertions_are_matched_on_issuer_audience_and_subject() {
    let emu = start_with(Config {
        client_secret: None,
        federation: Some(Federation {
            issuer: "https://issuer.example".into(),
            subject: "system:serviceaccount:hr:photosync".into(),
            audience: "api://AzureADTokenExchange".into(),
            propagation_refusals: 1,
        }),
        ..config()
    })
    .await;
    let good = platform_token(
        "https://issuer.example",
        "system:serviceaccount:hr:photosync",
        "api://AzureADTokenExchange",
    );
    let ask = |assertion: String| {
        let emu = emu.clone();
        async move {
            token_request(
                &emu,
                "contoso.onmicrosoft.com",
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT),
                    ("scope", SCOPE),
                    ("client_assertion_type", ASSERTION_TYPE),
                    ("client_assertion", &assertion),
                ],
            )
            .await
        }
    };
    let code = |body: &Value| body["error_codes"][0].as_u64();
    let (status, body) = ask(good.clone()).await;
    assert_eq!(
        (status, code(&body)),
        (400, Some(70_021)),
        "propagating: {body}"
    );
    let (status, body) = ask(good).await;
    assert_eq!(status, 200, "{body}");
    for (token, expected) in [
        (
            platform_token(
                "https://other.example",
                "system:serviceaccount:hr:photosync",
                "api://AzureADTokenExchange",
            ),
            700_211,
        ),
        (
            platform_token(
                "https://issuer.example",
                "system:serviceaccount:hr:photosync",
                "api://other",
            ),
            700_212,
        ),
        (
            platform_token(
                "https://issuer.example",
                "system:serviceaccount:hr:other",
                "api://AzureADTokenExchange",
            ),
            700_213,
        ),
    ] {
        let (status, body) = ask(token).await;
        assert_eq!((status, code(&body)), (400, Some(expected)), "{body}");
    }
}

#[tokio::test]
async fn the_managed_identity_endpoint_wants_metadata_and_knows_its_identities() {
    let emu = start_with(Config {
        managed_identity: Some(ManagedIdentity {
            user_assigned: vec!["uami-client-id".into()],
            ..ManagedIdentity::default()
        }),
        ..config()
    })
    .await;
    let url = |extra: &str| {
        format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com{extra}",
            emu.url()
        )
    };
    let get = |u: String, metadata: bool| async move {
        let mut req = client().get(u);
        if metadata {
            req = req.header("Metadata", "true");
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    let (status, body) = get(url(""), false).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(url(""), true).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["expires_in"].is_string() && body["expires_on"].is_string(),
        "{body}"
    );
    assert_eq!(body["resource"], "https://graph.microsoft.com");
    let (status, _) = get(url("&client_id=uami-client-id"), true).await;
    assert_eq!(status, 200);
    let (status, body) = get(url("&client_id=someone-else"), true).await;
    assert_eq!(
        (status, body["error_description"].as_str()),
        (400, Some("Identity not found"))
    );
    // The token works on Graph.
    let token = body_token(&emu).await;
    let resp = client()
        .get(format!("{}/v1.0/users", emu.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

async fn body_token(emu: &graph_emulator::Emulator) -> String {
    let resp = client()
        .get(format!(
            "{}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph.microsoft.com",
            emu.url()
        ))
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    resp.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}
