//! `photosync run`: the real daemon against the emulator and a live temp tree.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_emulator::Faults;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{jpeg, upload_requests, uploads_ok, Env};

/// A running daemon whose stderr is collected line by line. Other modules (disk, soak) drive
/// it too.
pub(crate) struct Daemon {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub(crate) async fn start(env: &Env) -> Daemon {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_photosync"))
            .arg("-c")
            .arg(&env.config)
            .arg("run")
            .env_remove("NOTIFY_SOCKET")
            .env("RUST_LOG", "photosync=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let d = Daemon { child, log };
        d.wait_log("reconciled; watching for changes", Duration::from_secs(30))
            .await;
        d
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) async fn wait_log(&self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < timeout,
                "no `{needle}` in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub(crate) async fn stop(self) -> (Option<i32>, String) {
        self.signal("TERM");
        self.exit(Duration::from_secs(30)).await
    }

    /// Waits (bounded) for the daemon to exit by itself.
    pub(crate) async fn exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("daemon did not stop within {timeout:?}:\n{}", self.log()))
            .unwrap();
        // Let the log reader catch up.
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status.code(), self.log())
    }
}

/// Waits (bounded) until `cond` holds.
pub(crate) async fn until(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn daemon_config(env: &Env, sync: &str) {
    env.write_config(&format!("\n[sync]\ndebounce = \"1s\"\n{sync}\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn new_photo_is_uploaded_once_stable_and_bursts_coalesce() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    env.add_user("bob@contoso.com");
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    daemon_config(&env, "");
    let d = Daemon::start(&env).await;
    // The reconcile pass uploaded what was already there.
    until("reconcile upload", Duration::from_secs(10), || {
        env.emu.user_photo("alice@contoso.com").is_some()
    })
    .await;

    // A new photo: uploaded within debounce + 2 s.
    let start = Instant::now();
    env.put("users/new/bob@contoso.com.jpg", &jpeg(2));
    until("bob's photo", Duration::from_secs(10), || {
        env.emu.user_photo("bob@contoso.com").is_some()
    })
    .await;
    assert!(
        start.elapsed() <= Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(
        env.emu.user_photo("bob@contoso.com").unwrap().bytes,
        jpeg(2)
    );

    // Twenty rapid rewrites: one upload, of the last bytes.
    env.emu.clear_requests();
    for i in 0..20 {
        env.put("users/alice@contoso.com.jpg", &jpeg(100 + i));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until("alice's final photo", Duration::from_secs(10), || {
        env.emu.user_photo("alice@contoso.com").unwrap().bytes == jpeg(119)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Only alice's requests: bob's upload may be recorded just after the clear above.
    let alice: Vec<_> = upload_requests(&env.emu)
        .into_iter()
        .filter(|r| r.raw_path.contains("alice@contoso.com"))
        .collect();
    assert_eq!(alice.len(), 1, "{alice:?}");
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_slowly_is_uploaded_once_and_complete() {
    let env = Env::new().await;
    env.add_user("slow@contoso.com");
    daemon_config(&env, "");
    let d = Daemon::start(&env).await;
    let full = jpeg(7);
    let path = env.path("users/slow@contoso.com.jpg");
    let chunk = full.len().div_ceil(10);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        for part in full.chunks(chunk) {
            f.write_all(part).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    until("the slow photo", Duration::from_secs(10), || {
        env.emu.user_photo("slow@contoso.com").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.emu.user_photo("slow@contoso.com").unwrap().bytes, full);
    assert_eq!(uploads_ok(&env.emu), 1);
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rename_moves_the_photo_and_deletes_obey_the_guard() {
    let env = Env::new().await;
    for u in ["alice", "carol", "u1", "u2", "u3", "u4", "u5"] {
        env.add_user(&format!("{u}@contoso.com"));
    }
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    for (i, u) in ["u1", "u2", "u3", "u4", "u5"].iter().enumerate() {
        env.put(
            &format!("users/batch/{u}@contoso.com.jpg"),
            &jpeg(10 + i as u32),
        );
    }
    daemon_config(&env, "on_delete = \"delete\"\nmax_deletes_per_pass = 3");
    let d = Daemon::start(&env).await;
    until("initial uploads", Duration::from_secs(10), || {
        uploads_ok(&env.emu) == 6
    })
    .await;

    // Rename: carol gets the photo, alice's is deleted.
    std::fs::rename(
        env.path("users/alice@contoso.com.jpg"),
        env.path("users/carol@contoso.com.jpg"),
    )
    .unwrap();
    until(
        "carol's photo and alice's deletion",
        Duration::from_secs(10),
        || {
            env.emu.user_photo("carol@contoso.com").is_some()
                && env.emu.user_photo("alice@contoso.com").is_none()
        },
    )
    .await;
    assert_eq!(
        env.emu.user_photo("carol@contoso.com").unwrap().bytes,
        jpeg(1)
    );

    // Five deletions at once exceed the limit of three: nothing is deleted.
    std::fs::remove_dir_all(env.path("users/batch")).unwrap();
    d.wait_log(
        "refusing to delete this many photos",
        Duration::from_secs(10),
    )
    .await;
    for u in ["u1", "u2", "u3", "u4", "u5"] {
        assert!(
            env.emu.user_photo(&format!("{u}@contoso.com")).is_some(),
            "{u}"
        );
    }
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_uploads_exits_0_and_nothing_is_lost() {
    let env = Env::new().await;
    env.emu.set_faults(Faults {
        latency: Duration::from_millis(300),
        ..Faults::default()
    });
    for i in 0..40 {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    daemon_config(&env, "");
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 8.0\nburst = 1\nshutdown_grace = \"10s\"\n",
        "[image]\nmode = \"passthrough\"\n",
        "\n[sync]\ndebounce = \"1s\"\n",
    );
    let d = Daemon::start(&env).await;
    until("some uploads", Duration::from_secs(20), || {
        uploads_ok(&env.emu) >= 5
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let done = uploads_ok(&env.emu);
    assert!(
        done < 40,
        "the test wanted to stop mid-way, but all {done} were done"
    );

    // Next start: everything not yet synced is synced, nothing more than twice.
    let d = Daemon::start(&env).await;
    until("all photos", Duration::from_secs(30), || {
        (0..40).all(|i| {
            env.emu
                .user_photo(&format!("user{i}@contoso.com"))
                .is_some()
        })
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    for i in 0..40 {
        let upn = format!("user{i}@contoso.com");
        assert_eq!(env.emu.user_photo(&upn).unwrap().bytes, jpeg(i));
    }
    let mut per_target = std::collections::HashMap::new();
    for r in upload_requests(&env.emu)
        .into_iter()
        .filter(|r| r.status == 200)
    {
        *per_target.entry(r.target.clone()).or_insert(0) += 1;
    }
    assert!(per_target.values().all(|n| *n <= 2), "{per_target:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_config_keeps_running_and_endpoints_answer() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    let port = free_port();
    env.write_config(&format!(
        "\n[sync]\ndebounce = \"1s\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n"
    ));
    let d = Daemon::start(&env).await;
    let base = format!("http://127.0.0.1:{port}");
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let ready_status = ready.status();
    assert_eq!(ready_status, 200, "{}", ready.text().await.unwrap());
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );

    std::fs::write(&env.config, "this is [not toml").unwrap();
    d.signal("HUP");
    d.wait_log("the new configuration is refused", Duration::from_secs(10))
        .await;
    env.put("users/alice@contoso.com.jpg", &jpeg(3));
    until(
        "alice's photo after the bad reload",
        Duration::from_secs(10),
        || env.emu.user_photo("alice@contoso.com").is_some(),
    )
    .await;
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("photosync_uploads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("photosync_upload_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(metrics.contains("photosync_queue_depth 0"), "{metrics}");

    // A valid reload adds a source: its photos are picked up without a restart.
    env.emu
        .add_group("0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", true);
    env.put("more/0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.jpg", &jpeg(8));
    env.write_config(&format!(
        "\n[sync]\ndebounce = \"1s\"\n\n[server]\nlisten = \"127.0.0.1:{port}\"\n\n[[source]]\nroot = \"more\"\ntarget = \"group\"\nkey = \"id\"\n"
    ));
    d.signal("HUP");
    d.wait_log("configuration reloaded", Duration::from_secs(10))
        .await;
    let start = Instant::now();
    while env
        .emu
        .group_photo("0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
        .is_none()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no group photo after the reload:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_watcher_changes_arrive_by_polling_rescans() {
    let env = Env::new().await;
    env.add_user("dave@contoso.com");
    daemon_config(&env, "watch = \"poll\"\npoll_interval = \"1s\"");
    let d = Daemon::start(&env).await;
    env.put("users/dave@contoso.com.jpg", &jpeg(4));
    until("dave's photo by rescan", Duration::from_secs(10), || {
        env.emu.user_photo("dave@contoso.com").is_some()
    })
    .await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
