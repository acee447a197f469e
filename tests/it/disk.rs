//! Disk trouble: the ledger's folder read-only, the ledger's file system full, a source root
//! unmounted or emptied under the daemon. Each must end with an error that names the path and
//! the documented exit code, a sound ledger whose every `synced` row is a photo Graph holds with
//! exactly the recorded bytes, no photo deleted, and a run that finishes the job once the disk
//! is back.
//!
//! The tests mount tmpfs and bind mounts, which needs root (CAP_SYS_ADMIN). CI runs as root and
//! sets PHOTOSYNC_REQUIRE_MOUNT_TESTS=1, so there they fail rather than skip; elsewhere they
//! skip, loudly, when mounting is not allowed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::helpers::{
    error_chain, read_ledger, spawn_daemon, text, unique_jpeg, upload_requests, uploads_ok,
    wait_until, Env,
};

/// A mount made by a test, undone when dropped (also when the test panics). Declare it after
/// the [`Env`] whose folder it is in, so that it is dropped first.
struct Mount {
    dir: PathBuf,
    /// What to mount: a tmpfs of this size, or a bind mount of this folder.
    what: What,
    mounted: bool,
}

#[derive(Clone)]
enum What {
    Tmpfs(&'static str),
    Bind(PathBuf),
}

fn mount_cmd(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Mount {
    fn tmpfs(dir: &Path, size: &'static str) -> Mount {
        Self::new(dir, What::Tmpfs(size))
    }

    fn bind(from: &Path, dir: &Path) -> Mount {
        Self::new(dir, What::Bind(from.to_owned()))
    }

    fn new(dir: &Path, what: What) -> Mount {
        let mut m = Mount {
            dir: dir.to_owned(),
            what,
            mounted: false,
        };
        m.mount();
        m
    }

    fn mount(&mut self) {
        assert!(!self.mounted);
        std::fs::create_dir_all(&self.dir).unwrap();
        let dir = self.dir.to_str().unwrap();
        match &self.what {
            What::Tmpfs(size) => {
                mount_cmd(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir])
            }
            What::Bind(from) => mount_cmd(&["--bind", from.to_str().unwrap(), dir]),
        }
        .unwrap();
        self.mounted = true;
    }

    /// `ro` or `rw`.
    fn remount(&self, mode: &str) {
        let opts = match self.what {
            What::Tmpfs(_) => format!("remount,{mode}"),
            What::Bind(_) => format!("remount,bind,{mode}"),
        };
        mount_cmd(&["-o", &opts, self.dir.to_str().unwrap()]).unwrap();
    }

    /// Unmounts now; a busy file system (the daemon's watch or walk in it) is detached
    /// lazily: it is gone from the path at once either way.
    fn unmount(&mut self) {
        assert!(self.mounted);
        self.mounted = false;
        let done = Command::new("umount")
            .arg(&self.dir)
            .status()
            .unwrap()
            .success();
        if !done {
            assert!(Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status()
                .unwrap()
                .success());
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let ok = Command::new("umount")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }
}

/// Whether this process may mount. Without the permission the tests skip, unless
/// PHOTOSYNC_REQUIRE_MOUNT_TESTS=1 (CI) makes that a failure.
fn mounts_allowed(test: &str) -> bool {
    let probe = tempfile::tempdir().unwrap();
    let dir = probe.path().to_str().unwrap();
    let result = mount_cmd(&["-t", "tmpfs", "-o", "size=64k", "tmpfs", dir]);
    if result.is_ok() {
        let _ = Command::new("umount").arg(dir).status();
        return true;
    }
    let why = result.unwrap_err();
    assert!(
        std::env::var("PHOTOSYNC_REQUIRE_MOUNT_TESTS").as_deref() != Ok("1"),
        "PHOTOSYNC_REQUIRE_MOUNT_TESTS=1 but this process cannot mount: {why}"
    );
    eprintln!(
        "\n*** SKIPPED disk::{test}: mounting is not allowed here ({why}); run as root, or set PHOTOSYNC_REQUIRE_MOUNT_TESTS=1 to make this a failure ***\n"
    );
    false
}

fn upn(i: u32) -> String {
    crate::helpers::upn("disk", i)
}

/// Users `range` in Graph and their photos under `users/`.
fn add_photos(env: &Env, range: std::ops::Range<u32>) {
    for i in range {
        env.add_user(&upn(i));
        env.put(&format!("users/{}.jpg", upn(i)), &unique_jpeg(i));
    }
}

fn assert_all_arrived(env: &Env, range: std::ops::Range<u32>) {
    for i in range {
        let photo = env
            .emu
            .user_photo(&upn(i))
            .unwrap_or_else(|| panic!("no photo for {}", upn(i)));
        assert!(photo.bytes == unique_jpeg(i), "wrong bytes for {}", upn(i));
    }
}

/// The ledger is a sound SQLite file, and every target it calls synced has in Graph a photo
/// whose bytes hash to what the ledger recorded. Returns how many targets are synced.
async fn assert_ledger_sound(env: &Env) -> usize {
    let ledger = read_ledger(env).await;
    assert_eq!(ledger.integrity, ["ok"]);
    for t in ledger.synced() {
        let upn = t.key.strip_prefix("user:").unwrap();
        let photo = env.emu.user_photo(upn).unwrap_or_else(|| {
            panic!(
                "the ledger says {} is synced, but Graph has no photo",
                t.key
            )
        });
        assert_eq!(
            Some(blake3::hash(&photo.bytes).to_hex().to_string()),
            t.last_hash,
            "the ledger's hash for {} is not what Graph holds",
            t.key
        );
    }
    ledger.synced().count()
}

/// Fills the file system under `dir` until `leave` bytes are free.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_database_folder_stops_before_any_upload_and_the_next_run_recovers() {
    if !mounts_allowed("read_only_database_folder") {
        return;
    }
    let env = Env::new().await;
    add_photos(&env, 0..10);
    let not_writable = format!(
        "cannot open the database {}: its folder {} is not writable",
        env.db().display(),
        env.path("state").display()
    );
    let state = Mount::tmpfs(&env.path("state"), "16m");

    // No ledger yet, and none can be created.
    state.remount("ro");
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains(&not_writable), "{}", text(&out));
    assert_eq!(
        upload_requests(&env.emu).len(),
        0,
        "uploaded what it cannot record"
    );

    state.remount("rw");
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_arrived(&env, 0..10);

    // A ledger that exists but cannot be written: backfill and the daemon alike refuse to start.
    add_photos(&env, 10..15);
    state.remount("ro");
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains(&not_writable), "{}", text(&out));
    let out = env.run(&["run"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(stderr(&out).contains(&not_writable), "{}", text(&out));
    assert_eq!(
        upload_requests(&env.emu).len(),
        10,
        "uploaded what it cannot record"
    );

    state.remount("rw");
    assert_eq!(assert_ledger_sound(&env).await, 10);
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_arrived(&env, 0..15);
    assert_eq!(assert_ledger_sound(&env).await, 15);
    assert_eq!(
        uploads_ok(&env.emu),
        15,
        "an unchanged photo was sent again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn full_database_file_system_stops_the_run_and_the_next_run_finishes() {
    if !mounts_allowed("full_database_file_system") {
        return;
    }
    let env = Env::new().await;
    add_photos(&env, 0..20);
    let db = env.db().display().to_string();
    let state = Mount::tmpfs(&env.path("state"), "8m");
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Room for the ledger to open and a few commits, not for 300 more photos.
    add_photos(&env, 20..320);
    let filler = fill(&env.path("state"), 160 * 1024);
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("error: cannot write the database {db}: ")),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("database or disk is full"),
        "{}",
        text(&out)
    );
    let sent = uploads_ok(&env.emu);
    let recorded = assert_ledger_sound(&env).await - 20;
    assert!(recorded < 300, "the disk never filled up");

    std::fs::remove_file(filler).unwrap();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_arrived(&env, 0..320);
    assert_eq!(assert_ledger_sound(&env).await, 320);
    eprintln!(
        "disk full: {} uploads before the stop, {recorded} of them recorded; {} in all for 320 photos",
        sent - 20,
        uploads_ok(&env.emu)
    );
    drop(state);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_database_file_system_stops_the_daemon_with_its_path() {
    if !mounts_allowed("full_database_file_system_daemon") {
        return;
    }
    let env = Env::new().await;
    add_photos(&env, 0..5);
    let db = env.db().display().to_string();
    let state = Mount::tmpfs(&env.path("state"), "8m");
    env.write_config("\n[sync]\ndebounce = \"500ms\"\n");
    let d = spawn_daemon(&env).await;
    wait_until("the first photos", Duration::from_secs(30), || {
        uploads_ok(&env.emu) == 5
    })
    .await;

    let filler = fill(&env.path("state"), 0);
    add_photos(&env, 5..200);
    // A fatal error (the process exits 3 on it), naming the database and the cause.
    let e = d.finished().await.unwrap_err();
    assert!(!e.is_usage(), "{e:?}");
    let message = error_chain(&e);
    assert!(
        message.starts_with(&format!("cannot write the database {db}: "))
            && message.contains("database or disk is full"),
        "{message}"
    );
    std::fs::remove_file(filler).unwrap();
    assert!(assert_ledger_sound(&env).await >= 5);

    // Restarted (systemd's Restart=on-failure), it finishes the job.
    let d = spawn_daemon(&env).await;
    wait_until("every photo", Duration::from_secs(60), || {
        (0..200).all(|i| env.emu.user_photo(&upn(i)).is_some())
    })
    .await;
    d.stop().await.unwrap();
    assert_all_arrived(&env, 0..200);
    assert_eq!(assert_ledger_sound(&env).await, 200);
    drop(state);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_root_unmounted_under_the_daemon_deletes_nothing_and_comes_back() {
    if !mounts_allowed("source_root_unmounted") {
        return;
    }
    let env = Env::new().await;
    // The share's content lives in `share/`, bind-mounted on the `users` root.
    let share = env.path("share");
    std::fs::create_dir_all(&share).unwrap();
    for i in 0..10 {
        env.add_user(&upn(i));
        env.put(&format!("share/{}.jpg", upn(i)), &unique_jpeg(i));
    }
    let mut root = Mount::bind(&share, &env.path("users"));
    env.write_config("\n[sync]\ndebounce = \"500ms\"\non_delete = \"delete\"\n");
    let mut d = spawn_daemon(&env).await;
    wait_until("the first photos", Duration::from_secs(30), || {
        uploads_ok(&env.emu) == 10
    })
    .await;

    root.unmount();
    // "Is the share mounted?": the empty root refuses its deletions.
    d.wait("the refused deletions", |p| p.deletions_refused > 0)
        .await;
    // Then the mount point itself goes: a pass finds the root unreadable.
    std::fs::remove_dir(env.path("users")).unwrap();
    d.next_rescan().await;
    // A photo lands on the share while it is not mounted here.
    env.add_user(&upn(10));
    env.put(&format!("share/{}.jpg", upn(10)), &unique_jpeg(10));
    root.mount();
    wait_until("the photo added meanwhile", Duration::from_secs(30), || {
        env.emu.user_photo(&upn(10)).is_some()
    })
    .await;
    // And the watcher follows the remounted root again.
    env.add_user(&upn(11));
    env.put(&format!("users/{}.jpg", upn(11)), &unique_jpeg(11));
    wait_until(
        "a photo added after the remount",
        Duration::from_secs(30),
        || env.emu.user_photo(&upn(11)).is_some(),
    )
    .await;
    d.stop().await.unwrap();
    assert!(
        !env.emu
            .requests()
            .iter()
            .any(|r| matches!(r.kind, graph_emulator::RequestKind::PhotoDelete)),
        "a photo was deleted"
    );
    assert_all_arrived(&env, 0..12);
    assert_eq!(assert_ledger_sound(&env).await, 12);
    assert_eq!(
        uploads_ok(&env.emu),
        12,
        "an unchanged photo was sent again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn source_root_emptied_under_the_daemon_deletes_nothing() {
    let env = Env::new().await;
    add_photos(&env, 0..5);
    env.write_config("\n[sync]\ndebounce = \"500ms\"\non_delete = \"delete\"\n");
    let mut d = spawn_daemon(&env).await;
    wait_until("the first photos", Duration::from_secs(30), || {
        uploads_ok(&env.emu) == 5
    })
    .await;
    // Fewer files than max_deletes_per_pass: only the empty-root guard stands in the way.
    for i in 0..5 {
        std::fs::remove_file(env.path(&format!("users/{}.jpg", upn(i)))).unwrap();
    }
    // "Is the share mounted?"
    d.wait("the refused deletions", |p| p.deletions_refused > 0)
        .await;
    d.stop().await.unwrap();
    assert_all_arrived(&env, 0..5);
}
