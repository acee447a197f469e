//! Operator commands: `status`, `check`, `retry`, and what changing the image settings does.

use graph_emulator::Config as EmuConfig;

use crate::helpers::{jpeg, text, upload_requests, Env, CLIENT_ID, SECRET, TENANT};

#[tokio::test(flavor = "multi_thread")]
async fn status_json_lists_failures_and_retry_clears_them() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    env.put("users/ghost@contoso.com.jpg", &jpeg(2));
    // A user without an Exchange mailbox: a permanent failure (an unknown user would be parked).
    env.emu.add_user(
        graph_emulator::User::new(
            crate::helpers::uuid_for("ghost@contoso.com"),
            "ghost@contoso.com",
        )
        .without_mailbox(),
    );
    env.put(
        "users/broken@contoso.com.jpg",
        b"this is not a photo at all",
    );
    env.add_user("broken@contoso.com");
    assert_eq!(env.run(&["backfill"]).await.status.code(), Some(1));

    let v = crate::helpers::status_json(&env).await;
    assert_eq!(v["totals"]["synced"], 1, "{v}");
    assert_eq!(v["totals"]["failed"], 2, "{v}");
    assert_eq!(v["files"], 3, "{v}");
    assert!(v["last_sync"].is_string(), "{v}");
    let failures = v["failures"].as_array().unwrap();
    let ghost = failures
        .iter()
        .find(|f| f["target"] == "user:ghost@contoso.com")
        .unwrap();
    assert_eq!(ghost["class"], "permanent");
    assert_eq!(ghost["http_status"], 404);
    assert!(ghost["request_id"].is_string(), "{ghost}");
    assert!(ghost["path"]
        .as_str()
        .unwrap()
        .ends_with("ghost@contoso.com.jpg"));
    let broken = failures
        .iter()
        .find(|f| f["target"] == "user:broken@contoso.com")
        .unwrap();
    assert_eq!(broken["class"], "local");
    assert_eq!(broken["reason"], "not_an_image", "{broken}");
    assert_eq!(v["failures_by_reason"]["not_an_image"], 1, "{v}");

    let out = env.run(&["status"]).await;
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("1 synced") && s.contains("2 failed"), "{s}");
    assert!(s.contains("not an image"), "{s}");

    // The user appears; without `retry` the failure is remembered, with it the photo goes up.
    env.add_user("ghost@contoso.com");
    env.emu.clear_requests();
    assert_eq!(env.run(&["backfill"]).await.status.code(), Some(1));
    assert!(upload_requests(&env.emu).is_empty());
    let out = env.run(&["retry", "user:ghost@contoso.com"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failure record(s) cleared"));
    let out = env.run(&["backfill"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 uploaded"),
        "{}",
        text(&out)
    );
    assert_eq!(
        env.emu.user_photo("ghost@contoso.com").unwrap().bytes,
        jpeg(2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_passes_and_names_each_problem() {
    let env = Env::new().await;
    let out = env.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(&format!("tenant {TENANT}, app {CLIENT_ID}")),
        "{s}"
    );
    assert!(s.contains("ProfilePhoto.ReadWrite.All"), "{s}");
    assert!(s.contains("ok    graph read"), "{s}");
    assert!(s.contains("migrated and writable"), "{s}");
    assert!(!s.contains(SECRET));

    // A wrong secret: the AADSTS code, and exit 1.
    std::fs::write(env.path("secret"), "not-the-secret").unwrap();
    let out = env.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("AADSTS7000215"), "{}", text(&out));

    // An unreadable root.
    std::fs::write(env.path("secret"), SECRET).unwrap();
    std::fs::remove_dir(env.path("groups")).unwrap();
    let out = env.run(&["check"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL  source"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_warns_about_a_missing_role_and_disabled_cloud_photos() {
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(SECRET.into()),
        roles: vec!["User.Read.All".into()],
        ..EmuConfig::default()
    })
    .await;
    env.emu.set_photo_update_source("onPremises");
    let out = env.run(&["check"]).await;
    let s = text(&out);
    assert!(s.contains("warn  permission for user photos"), "{s}");
    assert!(s.contains("warn  permission for contact photos"), "{s}");
    assert!(s.contains("cloud photo updates are disabled"), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_image_settings_reuploads_everything_once() {
    let env = Env::new().await;
    for i in 0..3 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    let normalize = |side: u32| {
        env.write_config_with(
            "client_secret_file = \"secret\"",
            "[upload]\nrequests_per_second = 100.0\n",
            &format!("[image]\nmode = \"normalize\"\nmax_side = {side}\n"),
            "",
        );
    };
    normalize(648);
    assert_eq!(env.run(&["backfill"]).await.status.code(), Some(0));
    assert_eq!(upload_requests(&env.emu).len(), 3);
    normalize(48);
    let out = env.run(&["backfill"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 uploaded"),
        "{}",
        text(&out)
    );
    let photo = env.emu.user_photo("user0@contoso.com").unwrap();
    assert_eq!((photo.width, photo.height), (48, 36));
    let out = env.run(&["backfill"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 uploaded, 3 unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(upload_requests(&env.emu).len(), 6);
}
