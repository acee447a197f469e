//! Photo endpoints: every way of naming a target, the limits, and authentication.

use std::time::Duration;

use graph_emulator::{Config, RequestKind, MAX_PHOTO_BYTES};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn user_roundtrip_by_id_and_upn() {
    let emu = start().await;
    let t = token(&emu).await;
    let bytes = jpeg(1);
    let resp = client()
        .put(format!("{}/v1.0/users/{JANE_ID}/photo/$value", emu.url()))
        .bearer_auth(&t)
        .header("content-type", "image/jpeg")
        .header("client-request-id", "cr-1")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert!(h.contains_key("request-id") && h.contains_key("x-ms-ags-diagnostic"));
    assert!(h.contains_key("date"));
    assert_eq!(h["client-request-id"], "cr-1");
    assert!(resp.bytes().await.unwrap().is_empty());

    // Read back by UPN in another case, with `%24value`.
    let resp = get(
        &emu,
        &t,
        "/v1.0/users/JANE%40Contoso.onmicrosoft.com/photo/%24value",
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/jpeg");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let stored = emu.user_photo(JANE).unwrap();
    assert_eq!(stored.bytes.as_ref(), bytes.as_slice());
    assert_eq!((stored.width, stored.height), (648, 648));

    let meta: Value = get(&emu, &t, &format!("/v1.0/users/{JANE_ID}/photo"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["@odata.mediaEtag"], stored.etag.as_str());
    assert_eq!(meta["id"], "648x648");
    assert_eq!(meta["width"], 648);

    // A change behind photosync's back gets a new etag.
    emu.set_user_photo(JANE_ID, jpeg(2).into());
    assert_ne!(emu.user_photo(JANE_ID).unwrap().etag, stored.etag);

    let recorded = emu.requests();
    let put = recorded
        .iter()
        .find(|r| r.kind == RequestKind::PhotoPut)
        .unwrap();
    assert_eq!(
        put.target.as_deref(),
        Some(format!("user:{JANE_ID}").as_str())
    );
    assert_eq!(put.status, 200);
    assert_eq!(put.body_len, bytes.len());
    assert!(put.authorization);
    assert_eq!(put.client_request_id.as_deref(), Some("cr-1"));
    assert!(put.raw_path.ends_with("/photo/$value"));

    // Delete, then there is no photo.
    let resp = client()
        .delete(format!("{}/v1.0/users/{JANE_ID}/photo/$value", emu.url()))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(emu.user_photo(JANE_ID).is_none());
    let resp = get(&emu, &t, &format!("/v1.0/users/{JANE_ID}/photo/$value")).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "ImageNotFound");
    let meta: Value = get(&emu, &t, &format!("/v1.0/users/{JANE_ID}/photo"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(meta["id"], "1x1");
}

#[tokio::test]
async fn guest_upn_with_encoded_hash() {
    let emu = start().await;
    let t = token(&emu).await;
    let path = "/v1.0/users/bob_fabrikam.com%23EXT%23%40contoso.onmicrosoft.com/photo/$value";
    assert_eq!(put_photo(&emu, &t, path, jpeg(3)).await.status(), 200);
    assert_eq!(
        emu.user_photo(GUEST_ID).unwrap().bytes.as_ref(),
        jpeg(3).as_slice()
    );
    assert_eq!(emu.user_photo(GUEST).unwrap().len, jpeg(3).len());
}

#[tokio::test]
async fn dollar_upn_needs_the_key_form() {
    let emu = start().await;
    let t = token(&emu).await;
    let path = "/v1.0/users('$admin%40contoso.onmicrosoft.com')/photo/$value";
    assert_eq!(put_photo(&emu, &t, path, jpeg(4)).await.status(), 200);
    assert!(emu.user_photo(DOLLAR_ID).is_some());
    let resp = put_photo(
        &emu,
        &t,
        "/v1.0/users/$admin@contoso.onmicrosoft.com/photo/$value",
        jpeg(4),
    )
    .await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn groups_and_contacts() {
    let emu = start().await;
    let t = token(&emu).await;
    assert_eq!(
        put_photo(&emu, &t, "/v1.0/groups/g-unified/photo/$value", jpeg(5))
            .await
            .status(),
        200
    );
    assert_eq!(
        emu.group_photo("g-unified").unwrap().bytes.as_ref(),
        jpeg(5).as_slice()
    );
    let resp = get(&emu, &t, "/v1.0/groups/g-unified/photo/$value").await;
    assert_eq!(resp.bytes().await.unwrap().as_ref(), jpeg(5).as_slice());
    let resp = put_photo(&emu, &t, "/v1.0/groups/g-security/photo/$value", jpeg(5)).await;
    assert_eq!(resp.status(), 400);

    let path = format!("/v1.0/users/{JANE_ID}/contacts/AAMkContact1/photo/$value");
    assert_eq!(put_photo(&emu, &t, &path, jpeg(6)).await.status(), 200);
    assert_eq!(
        emu.contact_photo(JANE, None, "AAMkContact1")
            .unwrap()
            .bytes
            .as_ref(),
        jpeg(6).as_slice()
    );
    let resp = client()
        .delete(format!("{}{path}", emu.url()))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);

    let path =
        format!("/v1.0/users/{JANE}/contactFolders/AAMkFolder1/contacts/AAMkContact2/photo/$value");
    assert_eq!(put_photo(&emu, &t, &path, jpeg(7)).await.status(), 200);
    assert_eq!(
        emu.contact_photo(JANE_ID, Some("AAMkFolder1"), "AAMkContact2")
            .unwrap()
            .bytes
            .as_ref(),
        jpeg(7).as_slice()
    );
    let targets: Vec<String> = emu
        .requests()
        .into_iter()
        .filter_map(|r| r.target)
        .collect();
    assert!(targets.contains(&format!("contact:{JANE_ID}/AAMkFolder1/AAMkContact2")));
    assert!(targets.contains(&format!("contact:{JANE_ID}/AAMkContact1")));
}

#[tokio::test]
async fn upload_limits_and_validation() {
    let emu = start().await;
    let t = token(&emu).await;
    let path = format!("/v1.0/users/{JANE_ID}/photo/$value");

    let mut big = jpeg(8);
    big.resize(MAX_PHOTO_BYTES, 0);
    assert_eq!(put_photo(&emu, &t, &path, big.clone()).await.status(), 200);
    big.push(0);
    let resp = put_photo(&emu, &t, &path, big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(error_code(resp).await, "RequestBodyTooLarge");
    assert_eq!(emu.user_photo(JANE_ID).unwrap().len, MAX_PHOTO_BYTES);

    let resp = client()
        .put(format!("{}{path}", emu.url()))
        .bearer_auth(&t)
        .header("content-type", "application/octet-stream")
        .body(jpeg(9))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);

    let resp = put_photo(&emu, &t, &path, b"GIF89a not a jpeg".to_vec()).await;
    assert_eq!(resp.status(), 400);

    let resp = put_photo(
        &emu,
        &t,
        &format!("/v1.0/users/{NOBOX_ID}/photo/$value"),
        jpeg(9),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "ErrorNonExistentMailbox");

    let resp = put_photo(
        &emu,
        &t,
        "/v1.0/users/nobody@contoso.onmicrosoft.com/photo/$value",
        jpeg(9),
    )
    .await;
    assert_eq!(resp.status(), 404);
    assert_eq!(error_code(resp).await, "ResourceNotFound");
}

#[tokio::test]
async fn accept_any_target_creates_on_upload() {
    let emu = start_with(Config {
        accept_any_target: true,
        store_bytes: false,
        ..config()
    })
    .await;
    let t = token(&emu).await;
    let resp = put_photo(
        &emu,
        &t,
        "/v1.0/users/new.person@contoso.onmicrosoft.com/photo/$value",
        jpeg(10),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let p = emu
        .user_photo("new.person@contoso.onmicrosoft.com")
        .unwrap();
    assert!(p.bytes.is_empty(), "store_bytes=false keeps no bytes");
    assert_eq!(p.len, jpeg(10).len());
    assert_eq!(p.blake3, blake3::hash(&jpeg(10)).to_hex().to_string());
    assert_eq!(
        put_photo(&emu, &t, "/v1.0/groups/g-new/photo/$value", jpeg(10))
            .await
            .status(),
        200
    );
    // Reads never create.
    let resp = get(
        &emu,
        &t,
        "/v1.0/users/ghost@contoso.onmicrosoft.com/photo/$value",
    )
    .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn tokens_are_required_and_expire() {
    let emu = start_with(Config {
        token_ttl: Duration::from_millis(300),
        ..config()
    })
    .await;
    let path = format!("/v1.0/users/{JANE_ID}/photo");
    let resp = client()
        .get(format!("{}{path}", emu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(error_code(resp).await, "InvalidAuthenticationToken");
    let resp = get(&emu, "not-a-token", &path).await;
    assert_eq!(resp.status(), 401);

    let t = token(&emu).await;
    assert_eq!(get(&emu, &t, &path).await.status(), 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let resp = get(&emu, &t, &path).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        v["error"]["message"],
        "Access token has expired or is not yet valid."
    );
    assert!(v["error"]["innerError"]["request-id"].is_string());
    let first = &emu.requests()[0];
    assert_eq!((first.status, first.authorization), (401, false));
}

#[tokio::test]
async fn missing_roles_are_forbidden() {
    let emu = start_with(Config {
        roles: vec!["User.Read.All".to_owned()],
        ..config()
    })
    .await;
    let t = token(&emu).await;
    let resp = put_photo(
        &emu,
        &t,
        &format!("/v1.0/users/{JANE_ID}/photo/$value"),
        jpeg(1),
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        get(&emu, &t, &format!("/v1.0/users/{JANE_ID}/photo"))
            .await
            .status(),
        200
    );
}
