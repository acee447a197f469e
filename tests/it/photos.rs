//! Real photos through the binary: phone formats under their own extensions, photos under names
//! that are not a photo's, skipped files named in `--report` and `status`, the crop each photo
//! gets (dry run, report, status) and `check`'s note on the deprecated `square`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::helpers::{jpeg, status_json, text, uploads_ok, Env};

const NORMALIZE: &str = "[image]\nmode = \"normalize\"\n";
const UPLOAD: &str = "[upload]\nworkers = 2\nrequests_per_second = 200.0\nburst = 50\nmax_attempts = 4\nrequest_timeout = \"10s\"\n";

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/photos")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The shared photos folder, or `None` (after saying why) when this checkout has none.
fn shared_photo(name: &str) -> Option<Vec<u8>> {
    let dir = std::env::var_os("PHOTOSYNC_TEST_PHOTOS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/photos"),
        PathBuf::from,
    );
    let found = std::fs::read(dir.join(name)).ok();
    if found.is_none() {
        eprintln!(
            "skipping the part with {name}: not found in {}",
            dir.display()
        );
    }
    found
}

fn with_image(env: &Env, image: &str) {
    env.write_config_with("client_secret_file = \"secret\"", UPLOAD, image, "");
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The dry-run line for `upn`.
fn plan_line(out: &str, upn: &str) -> String {
    let needle = format!("would upload user:{upn} ");
    out.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no line for {upn}:\n{out}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_iphone_heic_under_users_uploads_as_an_upright_jpeg() {
    if !photosync::image::HEIF_SUPPORT {
        eprintln!("skipping: built without the heif feature");
        return;
    }
    let env = Env::new().await;
    with_image(&env, NORMALIZE);
    env.add_user("phone@contoso.com");
    env.put(
        "users/phone@contoso.com.heic",
        &fixture("iphone-arrow_irot270_3024x4032.heic"),
    );
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let photo = env.emu.user_photo("phone@contoso.com").expect("uploaded");
    assert_eq!(photo.content_type, "image/jpeg");
    let img = image::load_from_memory_with_format(&photo.bytes, image::ImageFormat::Jpeg)
        .expect("a JPEG");
    // Stored 4032x3024 with irot 270: upright it is portrait.
    assert_eq!((img.width(), img.height()), (486, 648));
    assert!(stdout(&out).contains("1 uploaded"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn photos_under_other_names_upload_and_the_rest_is_named_as_skipped() {
    let env = Env::new().await;
    env.add_user("badge@contoso.com");
    env.add_user("later@contoso.com");
    let photo = jpeg(1);
    env.put("users/badge@contoso.com.dat", &photo);
    // Text as long as a photo, so that it can become one without its size changing.
    let later = jpeg(2);
    let notes = env.put("users/later@contoso.com.dat", &vec![b'x'; later.len()]);
    env.put("users/readme.txt", b"photos go here\n");
    let report = env.path("report.csv");
    let out = env
        .run(&["backfill", "--report", report.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("badge@contoso.com").unwrap().bytes,
        photo
    );
    assert_eq!(uploads_ok(&env.emu), 1);
    let csv = std::fs::read_to_string(&report).unwrap();
    for name in ["later@contoso.com.dat", "readme.txt"] {
        let row = csv
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{csv}"));
        assert!(row.contains(",skip,not_a_photo,"), "{row}");
    }
    let status = status_json(&env).await;
    assert_eq!(status["skipped_files"], 2, "{status}");
    let listed: Vec<&str> = status["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{status}");
    assert!(
        listed[0].ends_with("users/later@contoso.com.dat"),
        "{status}"
    );
    assert!(listed[1].ends_with("users/readme.txt"), "{status}");
    assert_eq!(status["skipped"][0]["reason"], "not_a_photo");
    let shown = stdout(&env.run(&["status"]).await);
    assert!(shown.contains("skipped (not photos): 2"), "{shown}");
    assert!(
        shown.contains("later@contoso.com.dat (not_a_photo)"),
        "{shown}"
    );

    // The rescan trusts an unchanged stat: a skipped file whose bytes changed behind an equal
    // size and mtime is not opened, so it stays skipped...
    let mtime = std::fs::metadata(&notes).unwrap().modified().unwrap();
    std::fs::write(&notes, &later).unwrap();
    set_mtime(&notes, mtime);
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(env.emu.user_photo("later@contoso.com").is_none());
    assert!(stdout(&out).contains("not_a_photo 2"), "{}", text(&out));
    // ... and once the stat changes, its first bytes are read again: now a photo.
    set_mtime(&notes, mtime + Duration::from_secs(60));
    std::fs::remove_file(env.path("users/readme.txt")).unwrap();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        env.emu.user_photo("later@contoso.com").unwrap().bytes,
        later
    );
    let status = status_json(&env).await;
    assert_eq!(status["skipped_files"], 0, "{status}");
    assert_eq!(status["skipped"], serde_json::json!([]));
    assert_eq!(status["files"], 2, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crop_of_each_photo_is_shown_reported_and_counted() {
    let env = Env::new().await;
    with_image(&env, "[image]\nmode = \"normalize\"\ncrop = \"face\"\n");
    env.add_user("plain@contoso.com");
    // 64x48, no face: the centred 48x48 square, noted.
    env.put("users/plain@contoso.com.jpg", &jpeg(3));
    // The astronaut's portrait trimmed to a 512x384 landscape, so that a square has to choose.
    let portrait = shared_photo("png-rgb_astronaut_512x512.png").map(|png| {
        let img = image::load_from_memory(&png)
            .unwrap()
            .crop_imm(0, 0, 512, 384);
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    });
    if let Some(p) = &portrait {
        env.add_user("face@contoso.com");
        env.put("users/face@contoso.com.png", p);
    }
    let out = env.run(&["backfill", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let dry_run = stdout(&out);
    let plain = plan_line(&dry_run, "plain@contoso.com");
    assert!(
        plain.contains(": JPEG 64x48 ") && plain.contains(", crop center 48x48+8+0 (no_face)"),
        "{plain}"
    );
    if portrait.is_some() {
        let face = plan_line(&dry_run, "face@contoso.com");
        let crop = face
            .split(", crop face ")
            .nth(1)
            .unwrap_or_else(|| panic!("{face}"));
        let side: u32 = crop.split('x').next().unwrap().parse().unwrap();
        assert!(
            side <= 384 && side > 100 && !crop.contains("(no_face"),
            "{face}"
        );
    }
    assert!(env.emu.requests().is_empty());

    let report = env.path("report.json");
    let out = env
        .run(&["backfill", "--report", report.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["target"] == "user:plain@contoso.com")
        .unwrap_or_else(|| panic!("{rows}"));
    assert_eq!(row["crop"], "center 48x48+8+0 (no_face)", "{row}");
    let status = status_json(&env).await;
    assert_eq!(
        status["crop_fallbacks_by_note"],
        serde_json::json!({ "no_face": 1 }),
        "{status}"
    );
    assert_eq!(
        status["crop_fallbacks"][0]["target"],
        "user:plain@contoso.com"
    );
    assert_eq!(status["crop_fallbacks"][0]["note"], "no_face");
    let shown = stdout(&env.run(&["status"]).await);
    assert!(
        shown.contains("cropped at the centre, no single face found: 1 (no_face 1)")
            && shown.contains("user:plain@contoso.com"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_notes_the_deprecated_square() {
    let env = Env::new().await;
    with_image(&env, "[image]\nsquare = true\n");
    let out = env.run(&["check"]).await;
    let said = stdout(&out);
    assert!(
        said.contains("warn  image.square: deprecated: use crop = \"center\""),
        "{}",
        text(&out)
    );
    with_image(&env, "[image]\ncrop = \"center\"\n");
    let said = stdout(&env.run(&["check"]).await);
    assert!(!said.contains("image.square"), "{said}");
}
