//! `photosync backfill` end to end: the real binary, the emulator, a temp tree, a real ledger.

use std::time::Duration;

use graph_emulator::{
    Config as EmuConfig, Fault, FaultRule, Faults, Match, RequestKind, RetryAfter,
};

use crate::helpers::{
    jpeg, text, upload_requests, uploads_ok, uuid_for, Env, CLIENT_ID, SECRET, TENANT,
};

const GROUP: &str = "0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

async fn tree_with_every_kind() -> Env {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.add_user("bob@contoso.com");
    let owner = env.add_user("owner@contoso.com");
    env.emu.add_group(GROUP, true);
    env.emu.add_contact(&owner, None, "contact1");
    env.emu.add_contact(&owner, Some("folderA"), "contact2");
    env.put("users/Alice@Contoso.com.jpg", &jpeg(1));
    env.put("users/team/sub/bob@contoso.com.jpeg", &jpeg(2));
    env.put(&format!("groups/{GROUP}.jpg"), &jpeg(3));
    env.put("contacts/owner@contoso.com/contact1.jpg", &jpeg(4));
    env.put("contacts/owner@contoso.com/folderA/contact2.jpg", &jpeg(5));
    // Not photos: counted as skipped, never sent.
    env.put("users/.hidden@contoso.com.jpg", &jpeg(6));
    env.put("users/carol@contoso.com.jpg.part", &jpeg(7));
    env.put("users/readme.txt", b"hello");
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_uploads_exact_bytes_then_only_what_changed() {
    let env = tree_with_every_kind().await;
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 photos: 5 uploaded"), "{stdout}");
    assert!(
        stdout.contains("hidden 1") && stdout.contains("temporary 1"),
        "{stdout}"
    );

    let owner = uuid_for("owner@contoso.com");
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );
    assert_eq!(
        env.emu.user_photo("bob@contoso.com").unwrap().bytes,
        jpeg(2)
    );
    assert_eq!(env.emu.group_photo(GROUP).unwrap().bytes, jpeg(3));
    assert_eq!(
        env.emu
            .contact_photo(&owner, None, "contact1")
            .unwrap()
            .bytes,
        jpeg(4)
    );
    assert_eq!(
        env.emu
            .contact_photo(&owner, Some("folderA"), "contact2")
            .unwrap()
            .bytes,
        jpeg(5)
    );
    assert_eq!(uploads_ok(&env.emu), 5);
    // Each upload carried its own client-request-id.
    let ids: std::collections::HashSet<_> = upload_requests(&env.emu)
        .into_iter()
        .filter_map(|r| r.client_request_id)
        .collect();
    assert_eq!(ids.len(), 5);

    // Second run: nothing to do, and no Graph request at all.
    env.emu.clear_requests();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 uploaded, 5 unchanged"));
    assert_eq!(upload_requests(&env.emu).len(), 0);

    // A touch changes the mtime, not the bytes: read and hashed, still not uploaded.
    let bob = env.path("users/team/sub/bob@contoso.com.jpeg");
    let f = std::fs::File::options().append(true).open(&bob).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    // One real edit: exactly one upload, with the new bytes.
    env.put("users/Alice@Contoso.com.jpg", &jpeg(11));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 uploaded, 4 unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(upload_requests(&env.emu).len(), 1);
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(11)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_touches_nothing_and_force_uploads_everything() {
    let env = tree_with_every_kind().await;
    // Before any real run: no database is created and Graph is not contacted.
    let out = env.run(&["backfill", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would upload user:alice@contoso.com (new)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("would upload group:{GROUP} (new)")),
        "{stdout}"
    );
    assert!(env.emu.requests().is_empty());
    assert!(!env.db().exists());

    assert_eq!(env.run(&["backfill"]).await.status.code(), Some(0));
    let db_before = std::fs::read(env.db()).unwrap();
    env.put("users/Alice@Contoso.com.jpg", &jpeg(21));
    env.emu.clear_requests();
    let out = env.run(&["backfill", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("would upload user:alice@contoso.com (changed)"),
        "{stdout}"
    );
    assert!(!stdout.contains("bob@contoso.com"), "{stdout}");
    assert!(env.emu.requests().is_empty());
    assert_eq!(std::fs::read(env.db()).unwrap(), db_before);

    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 5);
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(21)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_pauses_every_worker_for_retry_after() {
    let env = Env::new().await;
    for i in 0..30 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    // Paced at 20/s, so without a shared gate uploads would go on during the pause.
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 20.0\nburst = 1\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    env.emu.push_fault(FaultRule {
        matcher: Match::Kind(RequestKind::PhotoPut),
        fault: Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            retry_after: Some(RetryAfter::Seconds(1.5)),
        },
        times: 1,
    });
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 30);
    let reqs = upload_requests(&env.emu);
    let throttled = reqs.iter().find(|r| r.status == 429).expect("a 429");
    // Requests already on the wire when the 429 was answered may land just after it; after
    // that, nobody sends until Retry-After has passed.
    for r in &reqs {
        let after = r.at.saturating_duration_since(throttled.at);
        assert!(
            after < Duration::from_millis(150) || after >= Duration::from_millis(1500),
            "a request {after:?} after the 429"
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 throttled"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_from_a_rate_limited_service_still_syncs_everything() {
    let env = Env::new().await;
    env.emu.set_faults(Faults {
        rate_limit: Some(10.0),
        retry_after: RetryAfter::Seconds(0.5),
        ..Faults::default()
    });
    for i in 0..30 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 30);
    for i in 0..30 {
        assert_eq!(
            env.emu
                .user_photo(&format!("user{i}@contoso.com"))
                .unwrap()
                .bytes,
            jpeg(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_and_resets_are_retried() {
    let env = Env::new().await;
    for i in 0..6 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    env.emu.push_fault(FaultRule {
        matcher: Match::Kind(RequestKind::PhotoPut),
        fault: Fault::Status {
            status: 503,
            code: "ServiceUnavailable".into(),
            retry_after: None,
        },
        times: 3,
    });
    env.emu.push_fault(FaultRule {
        matcher: Match::Kind(RequestKind::PhotoPut),
        fault: Fault::Reset,
        times: 2,
    });
    env.emu.push_fault(FaultRule {
        matcher: Match::Kind(RequestKind::PhotoPut),
        fault: Fault::Status {
            status: 500,
            code: "UnknownError".into(),
            retry_after: None,
        },
        times: 1,
    });
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(uploads_ok(&env.emu), 6);
    for i in 0..6 {
        assert_eq!(
            env.emu
                .user_photo(&format!("user{i}@contoso.com"))
                .unwrap()
                .bytes,
            jpeg(i)
        );
    }
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 retries"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_user_is_parked_alone_and_uploaded_once_it_exists() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    env.put("users/ghost@contoso.com.jpg", &jpeg(2));
    env.put("users/not-a-upn.jpg", &jpeg(3));
    let out = env.run(&["backfill"]).await;
    // The bad name fails the run; the unknown user is parked, not failed.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 parked"), "{stdout}");
    assert!(stdout.contains("not-a-upn.jpg: bad_name"), "{stdout}");
    assert!(
        !stdout.contains("ghost@contoso.com.jpg (user:ghost"),
        "{stdout}"
    );
    assert!(env.emu.user_photo("alice@contoso.com").is_some());
    let v = crate::helpers::status_json(&env).await;
    let parked = &v["parked"][0];
    assert_eq!(parked["target"], "user:ghost@contoso.com", "{v}");
    assert_eq!(parked["http_status"], 404, "{v}");
    assert!(parked["request_id"].is_string(), "{v}");

    // The account appears (HR's provisioning was late); nobody touches the file.
    env.add_user("ghost@contoso.com");
    std::fs::remove_file(env.path("users/not-a-upn.jpg")).unwrap();
    env.emu.clear_requests();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("ghost@contoso.com").unwrap().bytes,
        jpeg(2)
    );
    assert_eq!(upload_requests(&env.emu).len(), 1, "alice is unchanged");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_and_dollar_upns_reach_the_right_url() {
    let env = Env::new().await;
    let guest = "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com";
    env.add_user(guest);
    env.add_user("$admin@contoso.com");
    env.add_user("o'brien@contoso.com");
    env.add_user("zoë@contoso.com");
    env.put(&format!("users/{guest}.jpg"), &jpeg(1));
    env.put("users/$admin@contoso.com.jpg", &jpeg(2));
    env.put("users/o'brien@contoso.com.jpg", &jpeg(3));
    env.put("users/zoë@contoso.com.jpg", &jpeg(4));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(env.emu.user_photo(guest).unwrap().bytes, jpeg(1));
    assert_eq!(
        env.emu.user_photo("$admin@contoso.com").unwrap().bytes,
        jpeg(2)
    );
    assert_eq!(
        env.emu.user_photo("o'brien@contoso.com").unwrap().bytes,
        jpeg(3)
    );
    assert_eq!(
        env.emu.user_photo("zoë@contoso.com").unwrap().bytes,
        jpeg(4)
    );
    let paths: Vec<String> = upload_requests(&env.emu)
        .into_iter()
        .map(|r| r.raw_path)
        .collect();
    assert!(paths.iter().any(|p| p.contains("%23EXT%23")), "{paths:?}");
    assert!(
        paths
            .iter()
            .any(|p| p.contains("/users('$admin@contoso.com')/photo/$value")),
        "{paths:?}"
    );
    assert!(paths.iter().all(|p| !p.contains('#')), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_holds_in_every_one_second_window() {
    let env = Env::new().await;
    for i in 0..24 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 5.0\nburst = 2\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let times: Vec<_> = upload_requests(&env.emu)
        .into_iter()
        .map(|r| r.at)
        .collect();
    assert_eq!(times.len(), 24);
    let max_in_window = times
        .iter()
        .map(|t0| {
            times
                .iter()
                .filter(|t| **t >= *t0 && t.duration_since(*t0) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        max_in_window <= 2 + 5,
        "{max_in_window} uploads within one second"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secret_never_reaches_logs_output_or_database() {
    let env = tree_with_every_kind().await;
    env.put("users/ghost@contoso.com.jpg", &jpeg(9));
    let out = env
        .run_env(&["-vv", "backfill"], &[("RUST_LOG", "trace")])
        .await;
    // The unknown user is parked (a 404 went through the error paths), not failed.
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("1 parked"), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("uploaded"), "logs were written: {all}");
    assert!(!all.contains(SECRET), "secret in output");
    for f in ["state/photosync.db", "state/photosync.db-wal"] {
        if let Ok(bytes) = std::fs::read(env.path(f)) {
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "secret in {f}"
            );
        }
    }

    for args in [&["status"][..], &["status", "--json"], &["verify"]] {
        let out = env
            .run_env(&[&["-vv"][..], args].concat(), &[("RUST_LOG", "trace")])
            .await;
        assert!(!text(&out).contains(SECRET), "secret in {args:?}");
    }

    // A wrong secret: the AADSTS code and a hint, exit 3, and the wrong secret not echoed.
    std::fs::write(env.path("secret"), "wrong-secret-value-123").unwrap();
    let out = env.run(&["backfill", "--force"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("AADSTS7000215"), "{all}");
    assert!(all.contains("hint:"), "{all}");
    assert!(!all.contains("wrong-secret-value-123"), "{all}");
}

async fn certificate_env(cert: &str, assertion: &str) -> Env {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: None,
        certificate_pem: Some(std::fs::read_to_string(format!("{fixtures}/{cert}")).unwrap()),
        ..EmuConfig::default()
    })
    .await;
    crate::helpers::write_private(
        &env.path("app.pem"),
        &std::fs::read(format!("{fixtures}/app.pem")).unwrap(),
    );
    env.write_config_with(
        &format!("certificate_file = \"app.pem\"\nassertion = \"{assertion}\""),
        "[upload]\nrequests_per_second = 100.0\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_credentials_rs256_and_ps256() {
    for alg in ["rs256", "ps256"] {
        let env = certificate_env("app-cert.pem", alg).await;
        let out = env.run(&["backfill"]).await;
        assert_eq!(out.status.code(), Some(0), "{alg}: {}", text(&out));
        assert_eq!(
            env.emu.user_photo("alice@contoso.com").unwrap().bytes,
            jpeg(1)
        );
        assert_eq!(env.emu.tokens_issued(), 1);
    }
    // A certificate the app registration does not know.
    let env = certificate_env("other-cert.pem", "rs256").await;
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("AADSTS700027"), "{}", text(&out));
    assert!(!text(&out).contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_exit_2_and_name_the_key() {
    let env = Env::new().await;
    env.write_config("\n[sync]\ndebounce = \"1s\"\nfoo = 1\n");
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unknown field `foo`"), "{}", text(&out));
    assert!(text(&out).contains("line 40"), "{}", text(&out));

    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 0\n",
        "",
        "",
    );
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("upload.workers"), "{}", text(&out));
    assert!(env.emu.requests().is_empty());
}

/// An `include` list too big to compile as a set was dropped after validation, so every file
/// of the source was uploaded.
#[tokio::test(flavor = "multi_thread")]
async fn a_glob_that_does_not_compile_refuses_the_config() {
    let env = Env::new().await;
    env.add_user("a@contoso.com");
    env.put("staff/archive/a@contoso.com.jpg", &jpeg(1));
    let alternatives: Vec<String> = (0..50_000).map(|i| format!("a{i}*b")).collect();
    env.write_config(&format!(
        "\n[[source]]\nroot = \"staff\"\ntarget = \"user\"\nkey = \"upn\"\ninclude = [\"{{{}}}\"]\n",
        alternatives.join(",")
    ));
    let out = env.run(&["backfill"]).await;
    let all = text(&out);
    let head: String = all.chars().take(400).collect();
    assert_eq!(out.status.code(), Some(2), "{head}");
    assert!(all.contains("`source[3].include`"), "{head}");
    assert!(all.contains("config.toml:42"), "{head}");
    assert!(env.emu.requests().is_empty());
    assert!(env.emu.user_photo("a@contoso.com").is_none());

    env.write_config(
        "\n[[source]]\nroot = \"staff\"\ntarget = \"user\"\nkey = \"upn\"\nexclude = [\"[old\"]\n",
    );
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("`source[3].exclude`"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_files_for_one_target_the_newest_wins_every_time() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    let old = env.put("users/alice@contoso.com.png", &jpeg(1));
    let f = std::fs::File::options().append(true).open(&old).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(f);
    env.put("users/zz/alice@contoso.com.jpg", &jpeg(2));
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("conflict 1"), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(2)
    );
    // The loser is never uploaded on later runs either.
    env.emu.clear_requests();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(upload_requests(&env.emu).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_are_followed_only_inside_the_root() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.add_user("mallory@contoso.com");
    env.add_user("linked@contoso.com");
    let outside = env.put("outside/secret.jpg", &jpeg(9));
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    std::os::unix::fs::symlink(&outside, env.path("users/mallory@contoso.com.jpg")).unwrap();
    std::os::unix::fs::symlink(env.path("outside"), env.path("users/outdir")).unwrap();
    std::os::unix::fs::symlink(
        env.path("users/alice@contoso.com.jpg"),
        env.path("users/linked@contoso.com.jpg"),
    )
    .unwrap();
    // A loop must not hang the walk.
    std::os::unix::fs::symlink(env.path("users"), env.path("users/loop")).unwrap();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(env.emu.user_photo("mallory@contoso.com").is_none());
    assert_eq!(
        env.emu.user_photo("linked@contoso.com").unwrap().bytes,
        jpeg(1)
    );
    assert!(
        text(&out).contains("symlink leads out of the source root"),
        "{}",
        text(&out)
    );
}

/// Makes `base/<segments…>` (each created from its parent, so no call needs the whole path)
/// ending `depth` bytes from `base`, and returns it. Beyond `PATH_MAX` (4096 bytes) a path
/// cannot be stat'ed or listed even by root, which is how these tests meet unreadable files.
fn deep_folder(base: &std::path::Path, depth: usize) -> std::path::PathBuf {
    let mut segments = Vec::new();
    let mut left = depth;
    while left >= 2 {
        let take = (left - 1).min(200);
        segments.push("d".repeat(take));
        left -= take + 1;
    }
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"cd "$0" && for s in "$@"; do mkdir "$s" && cd "$s" || exit 1; done"#)
        .arg(base)
        .args(&segments)
        .status()
        .unwrap();
    assert!(status.success());
    segments.iter().fold(base.to_owned(), |p, s| p.join(s))
}

/// A file whose metadata could not be read was dropped without a word, and a folder that
/// could not be listed was counted as an unfollowed link; both are failures naming the path.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_files_and_folders_are_failures_naming_the_path() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    let users = env.path("users");
    let folder = deep_folder(&users, 3950 - users.as_os_str().len());
    let long = format!("{}@contoso.com", "p".repeat(230));
    let run_in = |script: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&users)
            .args(folder.strip_prefix(&users).unwrap().iter())
            .status()
            .unwrap();
        assert!(status.success());
    };
    // Each name is short enough to create from its folder; the full path is too long to read.
    run_in(&format!(
        r#"cd "$0" && for s in "$@"; do cd "$s" || exit 1; done && printf x > {long}.jpg && mkdir {long}"#
    ));
    std::os::unix::fs::symlink(
        env.path("nowhere.jpg"),
        env.path("users/bob@contoso.com.jpg"),
    )
    .unwrap();

    let out = env.run(&["backfill"]).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(env.emu.user_photo("alice@contoso.com").is_some());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let unreadable: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains(": unreadable: "))
        .collect();
    assert_eq!(unreadable.len(), 2, "{stdout}");
    assert!(
        unreadable
            .iter()
            .any(|l| l.contains(&format!("{long}.jpg: unreadable: "))),
        "{stdout}"
    );
    assert!(
        unreadable.iter().all(|l| l.contains("File name too long")),
        "{stdout}"
    );
    assert!(stdout.contains("broken_link 1"), "{stdout}");
    assert!(!stdout.contains("unfollowed_link"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credential_files_readable_by_others_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    std::fs::set_permissions(env.path("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("readable by other users (mode 644)"),
        "{}",
        text(&out)
    );
    assert!(env.emu.requests().is_empty());
    let out = env.run(&["--allow-insecure-permissions", "backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // An inline secret makes the config itself a secret.
    env.write_config_with(&format!("client_secret = \"{SECRET}\""), "", "", "");
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("holds client_secret inline"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(SECRET));
}

/// Corporate networks reach Graph through a proxy named in the environment. The login and Graph
/// hosts here are a loopback address nothing listens on, so only the proxy (the emulator itself,
/// which answers requests in proxy form) can reach them; `NO_PROXY` sends requests direct.
#[tokio::test(flavor = "multi_thread")]
async fn requests_go_through_the_proxy_from_the_environment() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    let config = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace(&env.emu.url(), "http://127.0.0.2:9");
    std::fs::write(&env.config, config).unwrap();
    let proxy = env.emu.url();
    let out = env
        .run_env(
            &["backfill"],
            &[("HTTP_PROXY", &proxy), ("NO_PROXY", ""), ("no_proxy", "")],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );

    env.put("users/alice@contoso.com.jpg", &jpeg(2));
    let out = env
        .run_env(
            &["backfill"],
            &[("HTTP_PROXY", &proxy), ("NO_PROXY", "127.0.0.2")],
        )
        .await;
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("alice@contoso.com").unwrap().bytes,
        jpeg(1)
    );
}

/// With `on_delete = "keep"` an emptied root (an unmounted share) deletes nothing in Graph, and
/// the ledger keeps its files' records, so the share coming back costs no re-reading.
#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_root_keeps_its_records_when_photos_are_kept() {
    let env = Env::new().await;
    for n in 0..3 {
        let upn = format!("k{n}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(n));
    }
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let files = |env: &Env| -> u64 {
        let v = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(crate::helpers::status_json(env))
        });
        v["files"].as_u64().unwrap()
    };
    // The share goes away (its files moved aside, mtimes kept) and comes back.
    std::fs::rename(env.path("users"), env.path("users-away")).unwrap();
    std::fs::create_dir(env.path("users")).unwrap();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("is the share mounted"),
        "{}",
        text(&out)
    );
    assert_eq!(
        files(&env),
        3,
        "the records of an emptied root were forgotten"
    );
    std::fs::remove_dir(env.path("users")).unwrap();
    std::fs::rename(env.path("users-away"), env.path("users")).unwrap();
    env.emu.clear_requests();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 unchanged"),
        "{}",
        text(&out)
    );
    assert!(upload_requests(&env.emu).is_empty());
}
