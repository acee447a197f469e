//! One writer per ledger: `run`, `backfill`, `retry` and `verify` hold an exclusive lock on
//! `<database>.lock`; a second writer is refused at once (exit 2) and names the first, which
//! goes on unaffected; readers (`status`, `backfill --dry-run`) read beside it; the lock of a
//! process killed with SIGKILL is taken over by the next writer.

use std::collections::HashMap;
use std::process::Output;
use std::time::Duration;

use crate::helpers::{
    text, unique_jpeg, upload_requests, uploads_ok, upn, wait_until, DaemonProcess, Env,
};

fn users(env: &Env, prefix: &str, n: u32) {
    for i in 0..n {
        env.add_user(&upn(prefix, i));
        env.put(&format!("users/{}.jpg", upn(prefix, i)), &unique_jpeg(i));
    }
}

/// Asserts that `out` is the refusal of a second writer while `pid` holds the ledger.
fn refused(env: &Env, out: &Output, pid: u32) {
    assert_eq!(out.status.code(), Some(2), "{}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "the ledger {} is in use by photosync (pid {pid}, started ",
        env.db().display()
    );
    assert!(stderr.contains(&expected), "{}", text(out));
}

/// Every photo upload the emulator saw, per target: each must be there exactly once.
fn uploads_per_target(env: &Env) -> HashMap<String, usize> {
    let mut per: HashMap<String, usize> = HashMap::new();
    for r in upload_requests(&env.emu) {
        *per.entry(r.target.unwrap_or_default()).or_default() += 1;
    }
    per
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_is_refused_and_the_first_goes_on() {
    let env = Env::new().await;
    users(&env, "twod", 3);
    let first = DaemonProcess::start(&env).await;
    assert_eq!(uploads_ok(&env.emu), 3);

    let second = env.run(&["run"]).await;
    refused(&env, &second, first.pid());
    // Readers read beside it.
    let status = env.run(&["status"]).await;
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));

    // The first still follows the tree.
    env.add_user(&upn("twod", 9));
    env.put(&format!("users/{}.jpg", upn("twod", 9)), &unique_jpeg(9));
    wait_until("the new photo", Duration::from_secs(60), || {
        uploads_ok(&env.emu) == 4
    })
    .await;
    let (code, log) = first.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(uploads_per_target(&env).values().all(|n| *n == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_beside_the_daemon_is_refused_and_uploads_nothing() {
    let env = Env::new().await;
    users(&env, "dandb", 3);
    let daemon = DaemonProcess::start(&env).await;
    assert_eq!(uploads_ok(&env.emu), 3);
    env.put(&format!("users/{}.jpg", upn("dandb", 0)), &unique_jpeg(100));

    let backfill = env.run(&["backfill"]).await;
    refused(&env, &backfill, daemon.pid());
    // A dry run writes nothing, so it may read.
    let dry = env.run(&["backfill", "--dry-run"]).await;
    assert!(matches!(dry.status.code(), Some(0 | 1)), "{}", text(&dry));

    // The daemon, not the refused backfill, uploads the changed photo, once.
    wait_until("the changed photo", Duration::from_secs(60), || {
        uploads_ok(&env.emu) == 4
    })
    .await;
    let (code, log) = daemon.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let photo = env.emu.user_photo(&upn("dandb", 0)).unwrap();
    assert!(photo.bytes == unique_jpeg(100));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_backfill_is_refused_and_the_first_uploads_every_photo_once() {
    let env = Env::new().await;
    users(&env, "twob", 12);
    // Slow enough that the first is still at work when the second starts.
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 2\nrequests_per_second = 3.0\nburst = 1\nrecord_etag = false\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    let first = tokio::process::Command::new(env!("CARGO_BIN_EXE_photosync"))
        .arg("-c")
        .arg(&env.config)
        .arg("backfill")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = first.id().unwrap();
    wait_until("the first upload", Duration::from_secs(60), || {
        uploads_ok(&env.emu) >= 1
    })
    .await;

    let second = env.run(&["backfill"]).await;
    refused(&env, &second, pid);
    let out = tokio::time::timeout(Duration::from_secs(120), first.wait_with_output())
        .await
        .expect("the first backfill did not finish")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let per = uploads_per_target(&env);
    assert_eq!(per.len(), 12, "{per:?}");
    assert!(per.values().all(|n| *n == 1), "{per:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_of_a_killed_daemon_is_taken_over() {
    let env = Env::new().await;
    users(&env, "killed", 2);
    let first = DaemonProcess::start(&env).await;
    let pid = first.pid();
    first.signal("KILL");
    let (code, _) = first.exit().await;
    assert_eq!(code, None, "killed by a signal");
    let left = std::fs::read_to_string(env.path("state/photosync.db.lock")).unwrap();
    assert!(left.contains(&format!("pid {pid}")), "{left}");

    let next = DaemonProcess::start(&env).await;
    next.wait_log("took over the ledger lock").await;
    assert!(next.log().contains(&format!("pid {pid}")), "{}", next.log());
    let (code, log) = next.stop().await;
    assert_eq!(code, Some(0), "{log}");
    // A clean stop leaves nothing to take over.
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("took over"),
        "{}",
        text(&out)
    );
}
