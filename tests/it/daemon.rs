//! The daemon against the emulator and a live temp tree: in process (`daemon::run`) for what
//! it does, as the `photosync run` process for signals, systemd notifications and exit codes.

use std::time::{Duration, Instant};

use graph_emulator::{Fault, FaultRule, Faults, Match, RequestKind};

use crate::helpers::{
    jpeg, spawn_daemon, spawn_serving_daemon, upload_requests, uploads_ok, wait_until,
    DaemonProcess, Env,
};

const DEBOUNCE: Duration = Duration::from_secs(1);

fn daemon_config(env: &Env, sync: &str) {
    env.write_config(&format!("\n[sync]\ndebounce = \"1s\"\n{sync}\n"));
}

/// Upload requests for targets whose path holds `who`.
fn uploads_for(env: &Env, who: &str) -> usize {
    upload_requests(&env.emu)
        .iter()
        .filter(|r| r.raw_path.contains(who))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn new_photo_is_uploaded_once_stable_and_bursts_coalesce() {
    let env = Env::new().await;
    for u in ["alice", "bob", "carol"] {
        env.add_user(&format!("{u}@contoso.com"));
    }
    env.put("users/alice@contoso.com.jpg", &jpeg(1));
    daemon_config(&env, "");
    let d = spawn_daemon(&env).await;
    // The reconcile pass uploaded what was already there.
    wait_until("reconcile upload", Duration::from_secs(30), || {
        env.emu.user_photo("alice@contoso.com").is_some()
    })
    .await;

    // A new photo: uploaded once it has been still for the debounce, not before.
    env.put("users/new/bob@contoso.com.jpg", &jpeg(2));
    let took = wait_until("bob's photo", Duration::from_secs(30), || {
        env.emu.user_photo("bob@contoso.com").is_some()
    })
    .await;
    assert!(
        took >= DEBOUNCE,
        "uploaded after {took:?}, before it was stable"
    );
    assert_eq!(
        env.emu.user_photo("bob@contoso.com").unwrap().bytes,
        jpeg(2)
    );

    // Twenty rapid rewrites: one upload, of the last bytes.
    let before = uploads_for(&env, "alice@contoso.com");
    for i in 0..20 {
        env.put("users/alice@contoso.com.jpg", &jpeg(100 + i));
        // Paces the burst: each rewrite well inside the debounce of the one before.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_until("alice's final photo", Duration::from_secs(30), || {
        env.emu.user_photo("alice@contoso.com").unwrap().bytes == jpeg(119)
    })
    .await;
    // A later change went through the same debounce: whatever alice's burst would still
    // cause has happened by then.
    env.put("users/carol@contoso.com.jpg", &jpeg(3));
    wait_until("carol's photo", Duration::from_secs(30), || {
        env.emu.user_photo("carol@contoso.com").is_some()
    })
    .await;
    assert_eq!(uploads_for(&env, "alice@contoso.com") - before, 1);
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_slowly_is_uploaded_once_and_complete() {
    let env = Env::new().await;
    env.add_user("slow@contoso.com");
    env.add_user("later@contoso.com");
    daemon_config(&env, "");
    let d = spawn_daemon(&env).await;
    let full = jpeg(7);
    let path = env.path("users/slow@contoso.com.jpg");
    let chunk = full.len().div_ceil(10);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&path).unwrap();
        for part in full.chunks(chunk) {
            f.write_all(part).unwrap();
            f.flush().unwrap();
            // Paces the writer: half the debounce between chunks.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    wait_until("the slow photo", Duration::from_secs(30), || {
        env.emu.user_photo("slow@contoso.com").is_some()
    })
    .await;
    env.put("users/later@contoso.com.jpg", &jpeg(8));
    wait_until("a later photo", Duration::from_secs(30), || {
        env.emu.user_photo("later@contoso.com").is_some()
    })
    .await;
    assert_eq!(env.emu.user_photo("slow@contoso.com").unwrap().bytes, full);
    assert_eq!(uploads_for(&env, "slow@contoso.com"), 1);
    assert_eq!(uploads_ok(&env.emu), 2);
    d.stop().await.unwrap();
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
    let mut d = spawn_daemon(&env).await;
    wait_until("initial uploads", Duration::from_secs(30), || {
        uploads_ok(&env.emu) == 6
    })
    .await;

    // Rename: carol gets the photo, alice's is deleted.
    std::fs::rename(
        env.path("users/alice@contoso.com.jpg"),
        env.path("users/carol@contoso.com.jpg"),
    )
    .unwrap();
    wait_until(
        "carol's photo and alice's deletion",
        Duration::from_secs(30),
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
    assert_eq!(d.progress().deletions_refused, 0);

    // Five deletions at once exceed the limit of three: nothing is deleted.
    std::fs::remove_dir_all(env.path("users/batch")).unwrap();
    d.wait("the refused deletions", |p| p.deletions_refused == 5)
        .await;
    for u in ["u1", "u2", "u3", "u4", "u5"] {
        assert!(
            env.emu.user_photo(&format!("{u}@contoso.com")).is_some(),
            "{u}"
        );
    }
    d.stop().await.unwrap();
    assert_eq!(
        env.emu
            .requests()
            .iter()
            .filter(|r| r.kind == RequestKind::PhotoDelete)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_during_uploads_nothing_is_lost() {
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
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 8.0\nburst = 1\nshutdown_grace = \"10s\"\n",
        "[image]\nmode = \"passthrough\"\n",
        "\n[sync]\ndebounce = \"1s\"\n",
    );
    let d = spawn_daemon(&env).await;
    wait_until("some uploads", Duration::from_secs(30), || {
        uploads_ok(&env.emu) >= 5
    })
    .await;
    d.stop().await.unwrap();
    let done = uploads_ok(&env.emu);
    assert!(
        done < 40,
        "the test wanted to stop mid-way, but all {done} were done"
    );

    // Next start: everything not yet synced is synced, nothing more than twice.
    let d = spawn_daemon(&env).await;
    wait_until("all photos", Duration::from_secs(60), || {
        (0..40).all(|i| {
            env.emu
                .user_photo(&format!("user{i}@contoso.com"))
                .is_some()
        })
    })
    .await;
    d.stop().await.unwrap();
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

async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_reload_keeps_running_a_valid_one_applies_and_endpoints_answer() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    daemon_config(&env, "");
    let mut d = spawn_serving_daemon(&env).await;
    let base = d.base_url();
    let (status, body) = get(format!("{base}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get(format!("{base}/healthz")).await.0, 200);

    std::fs::write(&env.config, "this is [not toml").unwrap();
    d.reload().await;
    d.wait("the refused reload", |p| p.reloads_refused == 1)
        .await;
    env.put("users/alice@contoso.com.jpg", &jpeg(3));
    wait_until(
        "alice's photo after the bad reload",
        Duration::from_secs(30),
        || env.emu.user_photo("alice@contoso.com").is_some(),
    )
    .await;
    // The counters are copied into the gauges at the next tick.
    let metrics = wait_for_metrics(&base, "photosync_uploads_total{result=\"ok\"} 1").await;
    assert!(
        metrics.contains("photosync_upload_duration_seconds_count 1"),
        "{metrics}"
    );
    wait_for_metrics(&base, "photosync_queue_depth 0").await;
    assert_eq!(d.progress().reloads, 0);

    // A valid reload adds a source: its photos are picked up without a restart.
    env.emu
        .add_group("0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", true);
    env.put("more/0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.jpg", &jpeg(8));
    daemon_config(
        &env,
        "\n[[source]]\nroot = \"more\"\ntarget = \"group\"\nkey = \"id\"\n",
    );
    d.reload().await;
    d.wait("the valid reload", |p| p.reloads == 1).await;
    wait_until("the group photo", Duration::from_secs(30), || {
        env.emu
            .group_photo("0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
            .is_some()
    })
    .await;
    assert_eq!(get(format!("{base}/readyz")).await.0, 200);
    d.stop().await.unwrap();
}

/// `/metrics` once it holds `line`.
async fn wait_for_metrics(base: &str, line: &str) -> String {
    let start = Instant::now();
    loop {
        let (_, metrics) = get(format!("{base}/metrics")).await;
        if metrics.lines().any(|l| l == line) {
            return metrics;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no `{line}` in /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_watcher_changes_arrive_by_polling_rescans() {
    let env = Env::new().await;
    env.add_user("dave@contoso.com");
    daemon_config(&env, "watch = \"poll\"\npoll_interval = \"1s\"");
    let mut d = spawn_daemon(&env).await;
    env.put("users/dave@contoso.com.jpg", &jpeg(4));
    wait_until("dave's photo by rescan", Duration::from_secs(30), || {
        env.emu.user_photo("dave@contoso.com").is_some()
    })
    .await;
    // Polling goes on.
    let p = d.next_rescan().await;
    assert!(p.rescans >= 2, "{p:?}");
    d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_stop_the_daemon_after_its_engine_shut_down() {
    let env = Env::new().await;
    crate::helpers::write_private(&env.path("secret"), b"not-the-secret\n");
    daemon_config(&env, "");
    let cfg = photosync::config::Config::load(&env.config).unwrap();
    // The daemon gets a runtime of its own, so that every task left behind is its own.
    let (alive, result) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let ledger = photosync::ledger::Ledger::open(&cfg.state.database)
                .await
                .unwrap();
            // The ledger's own (the caller's, like the ledger).
            let before = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks();
            let (ready, _progress) =
                tokio::sync::watch::channel(photosync::daemon::Progress::default());
            let result = photosync::daemon::run(
                cfg,
                ledger.clone(),
                tokio_util::sync::CancellationToken::new(),
                ready,
                photosync::daemon::Options::default(),
            )
            .await;
            let alive = tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                .saturating_sub(before);
            ledger.close().await;
            (alive, result)
        })
    })
    .await
    .unwrap();
    let e = result.unwrap_err();
    assert!(
        matches!(e, photosync::daemon::DaemonError::Credentials(_)),
        "{e:?}"
    );
    assert!(!e.is_usage());
    // Its workers and its ledger writer were joined before it returned.
    assert_eq!(alive, 0, "tasks still running after the daemon returned");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_tells_systemd_and_obeys_its_signals() {
    let env = Env::new().await;
    env.add_user("alice@contoso.com");
    daemon_config(&env, "");
    let d = DaemonProcess::start(&env).await;
    assert!(
        d.notes().iter().any(|n| n.starts_with("STATUS=")),
        "{:?}",
        d.notes()
    );

    // SIGHUP with a broken config: logged, and the daemon goes on.
    std::fs::write(&env.config, "this is [not toml").unwrap();
    d.signal("HUP");
    d.wait_log("the new configuration is refused").await;
    // SIGHUP with a valid one that adds a source.
    env.emu
        .add_group("0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", true);
    env.put("more/0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee.jpg", &jpeg(8));
    daemon_config(
        &env,
        "\n[[source]]\nroot = \"more\"\ntarget = \"group\"\nkey = \"id\"\n",
    );
    d.signal("HUP");
    wait_until("the group photo", Duration::from_secs(30), || {
        env.emu
            .group_photo("0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
            .is_some()
    })
    .await;
    env.put("users/alice@contoso.com.jpg", &jpeg(3));
    wait_until("alice's photo", Duration::from_secs(30), || {
        env.emu.user_photo("alice@contoso.com").is_some()
    })
    .await;

    let notes = d.notes();
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    assert!(log.contains("reconciled; watching for changes"), "{log}");
    assert_eq!(
        notes.iter().filter(|n| *n == "READY=1").count(),
        1,
        "READY once, not again after the reload: {notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_0_after_stopping_and_a_second_signal_exits_130_at_once() {
    let env = Env::new().await;
    env.add_user("stuck@contoso.com");
    env.put("users/stuck@contoso.com.jpg", &jpeg(5));
    // The upload hangs far longer than the test runs; the grace would wait for it.
    env.emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::PhotoPut),
        Fault::Stall(Duration::from_secs(600)),
        1,
    ));
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 1\nrequest_timeout = \"600s\"\nshutdown_grace = \"600s\"\n",
        "[image]\nmode = \"passthrough\"\n",
        "\n[sync]\ndebounce = \"1s\"\n",
    );
    let d = DaemonProcess::start(&env).await;
    wait_until("the upload in flight", Duration::from_secs(30), || {
        env.emu.stats()["max_in_flight"].as_u64() >= Some(1)
    })
    .await;
    d.signal("TERM");
    d.wait_note("STATUS=stopping: finishing in-flight uploads")
        .await;
    d.signal("INT");
    let (code, log) = d.exit().await;
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("second signal: exiting now"), "{log}");

    // Without the stuck upload, one SIGTERM: exit 0, and systemd heard STOPPING.
    let d = DaemonProcess::start(&env).await;
    wait_until("the photo", Duration::from_secs(30), || {
        env.emu.user_photo("stuck@contoso.com").is_some()
    })
    .await;
    d.signal("TERM");
    d.wait_note("STOPPING=1").await;
    let (code, log) = d.exit().await;
    assert_eq!(code, Some(0), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_process_exits_3_on_refused_credentials_and_2_on_a_taken_port() {
    let env = Env::new().await;
    crate::helpers::write_private(&env.path("secret"), b"not-the-secret\n");
    daemon_config(&env, "");
    let out = env.run(&["run"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", crate::helpers::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the token endpoint refused the credentials"),
        "{}",
        crate::helpers::text(&out)
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    env.write_config(&format!("\n[server]\nlisten = \"{addr}\"\n"));
    let out = env.run(&["run"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", crate::helpers::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "error: cannot listen on {addr} ([server] listen): "
        )),
        "{}",
        crate::helpers::text(&out)
    );
}
