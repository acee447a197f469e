//! Shared setup: emulator start, token fetch, fixture keys and client assertions.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use graph_emulator::{Config, Emulator, User};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha1::{Digest as _, Sha1};
use sha2::Sha256;

pub const JANE_ID: &str = "0b7e1c2a-0000-4000-8000-000000000001";
pub const JANE: &str = "jane@contoso.onmicrosoft.com";
pub const GUEST_ID: &str = "0b7e1c2a-0000-4000-8000-000000000002";
pub const GUEST: &str = "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com";
pub const DOLLAR_ID: &str = "0b7e1c2a-0000-4000-8000-000000000003";
pub const DOLLAR: &str = "$admin@contoso.onmicrosoft.com";
pub const NOBOX_ID: &str = "0b7e1c2a-0000-4000-8000-000000000004";
pub const OBRIEN_ID: &str = "0b7e1c2a-0000-4000-8000-000000000005";

/// A small valid-looking JPEG: SOI, APP0, SOF0 648x648, EOI.
pub fn jpeg(tag: u8) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, tag, 0x00];
    v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08, 0x02, 0x88, 0x02, 0x88, 0x03]);
    v.extend_from_slice(&[0u8; 64]);
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

pub fn config() -> Config {
    Config::default()
}

pub async fn start_with(config: Config) -> Emulator {
    let emu = Emulator::start(config).await.unwrap();
    emu.add_user(
        User::new(JANE_ID, JANE)
            .with_mail("Jane.Doe@contoso.com")
            .with_employee_id("004711"),
    );
    emu.add_user(User::new(GUEST_ID, GUEST).with_employee_id("004712"));
    emu.add_user(User::new(DOLLAR_ID, DOLLAR));
    emu.add_user(User::new(NOBOX_ID, "nobox@contoso.onmicrosoft.com").without_mailbox());
    emu.add_user(
        User::new(OBRIEN_ID, "obrien@contoso.onmicrosoft.com")
            .with_mail("o'brien@contoso.com")
            .with_employee_id("O'Brien"),
    );
    emu.add_group("g-unified", true);
    emu.add_group("g-security", false);
    emu.add_contact(JANE_ID, None, "AAMkContact1");
    emu.add_contact(JANE, Some("AAMkFolder1"), "AAMkContact2");
    emu
}

pub async fn start() -> Emulator {
    start_with(config()).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn token_url(emu: &Emulator, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/v2.0/token", emu.url())
}

pub async fn token_request(emu: &Emulator, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = client()
        .post(token_url(emu, tenant))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

pub async fn token(emu: &Emulator) -> String {
    let (status, body) = token_request(
        emu,
        "contoso.onmicrosoft.com",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "11111111-2222-3333-4444-555555555555"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("client_secret", "test-secret"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap()
}

fn cert_der() -> Vec<u8> {
    pem::parse_many(fixture("app-cert.pem"))
        .unwrap()
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .unwrap()
        .into_contents()
}

fn private_key() -> EncodingKey {
    let block = pem::parse_many(fixture("app.pem"))
        .unwrap()
        .into_iter()
        .find(|b| b.tag() == "PRIVATE KEY")
        .unwrap();
    EncodingKey::from_rsa_pem(pem::encode(&block).as_bytes()).unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client assertion for the default client id, signed with the fixture key.
pub fn assertion(alg: Algorithm, aud: &str, nbf: u64, exp: u64) -> String {
    let der = cert_der();
    let mut header = Header::new(alg);
    header.typ = Some("JWT".to_owned());
    match alg {
        Algorithm::PS256 => header.x5t_s256 = Some(URL_SAFE_NO_PAD.encode(Sha256::digest(&der))),
        _ => header.x5t = Some(URL_SAFE_NO_PAD.encode(Sha1::digest(&der))),
    }
    let claims = json!({
        "aud": aud,
        "iss": "11111111-2222-3333-4444-555555555555",
        "sub": "11111111-2222-3333-4444-555555555555",
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": nbf,
        "iat": nbf,
        "exp": exp,
    });
    jsonwebtoken::encode(&header, &claims, &private_key()).unwrap()
}

pub async fn assertion_request(emu: &Emulator, assertion: &str) -> (u16, Value) {
    token_request(
        emu,
        "contoso.onmicrosoft.com",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "11111111-2222-3333-4444-555555555555"),
            ("scope", "https://graph.microsoft.com/.default"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ],
    )
    .await
}

/// PUT of a JPEG to a Graph path (relative to the emulator URL).
pub async fn put_photo(
    emu: &Emulator,
    token: &str,
    path: &str,
    bytes: Vec<u8>,
) -> reqwest::Response {
    client()
        .put(format!("{}{path}", emu.url()))
        .bearer_auth(token)
        .header("content-type", "image/jpeg")
        .body(bytes)
        .send()
        .await
        .unwrap()
}

pub async fn get(emu: &Emulator, token: &str, path: &str) -> reqwest::Response {
    client()
        .get(format!("{}{path}", emu.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

pub async fn error_code(resp: reqwest::Response) -> String {
    let v: Value = resp.json().await.unwrap();
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}
