//! Crash safety: `photosync backfill` killed with SIGKILL at random moments (while it starts,
//! while the ledger is created and migrated, while it plans, while it uploads) and restarted,
//! then run to completion. Whatever the moment, the ledger stays a sound SQLite file, every
//! photo ends in Graph with the right bytes, a photo is sent again only because a kill lost
//! the record of its upload in flight, and a last run has nothing left to do.
//!
//! "At most twice per photo" holds for one crash but not for a series: a photo in flight when
//! run k is killed is among the first sent by run k+1, and a kill that lands just then loses
//! its record again (seen with one seed in ten). The test checks the cause instead: each
//! repeat follows a killed round, a run never sends a photo twice, and one kill costs at most
//! a few repeats.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use graph_emulator::Faults;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::helpers::{read_ledger, text, unique_jpeg, upload_requests, uploads_ok, Env};

const PHOTOS: u32 = 2000;
const KILLS: usize = 20;
const SEED: u64 = 0x00c0_ffee;

fn upn(i: u32) -> String {
    crate::helpers::upn("crash", i)
}

/// How one interrupted run ended.
#[derive(Debug)]
struct Round {
    delay: Duration,
    latency: Duration,
    killed: bool,
    uploads: usize,
    ended: Instant,
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_nothing_and_repeats_little() {
    let started = Instant::now();
    let env = Env::new().await;
    for i in 0..PHOTOS {
        env.add_user(&upn(i));
        // Spread over folders, as an HR share is.
        env.put(
            &format!("users/dept{:02}/{}.jpg", i % 20, upn(i)),
            &unique_jpeg(i),
        );
    }
    // Paced so that a whole pass takes about 20 s: the kills below land in every phase.
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 100.0\nburst = 4\nmax_attempts = 4\nrequest_timeout = \"10s\"\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );

    // A third of the kills within 60 ms of the start (exec, config, creating and migrating the
    // ledger), a third within the first 600 ms (token, walk, first uploads), the rest up to 3 s
    // in (uploads and ledger commits), in a seeded random order.
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut delays: Vec<Duration> = (0..KILLS)
        .map(|i| {
            let ms = match i % 3 {
                0 => rng.gen_range(0..60),
                1 => rng.gen_range(60..600),
                _ => rng.gen_range(600..3000),
            };
            Duration::from_millis(ms)
        })
        .collect();
    delays.shuffle(&mut rng);

    let mut rounds = Vec::new();
    for (n, delay) in delays.into_iter().enumerate() {
        let latency = Duration::from_millis(rng.gen_range(5..=20));
        env.emu.set_faults(Faults {
            latency,
            ..Faults::default()
        });
        let before = uploads_ok(&env.emu);
        let log = std::fs::File::create(env.path(&format!("round{n:02}.log"))).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_photosync"))
            .arg("-c")
            .arg(&env.config)
            .arg("backfill")
            .env_remove("PHOTOSYNC_CLIENT_SECRET")
            .env_remove("RUST_LOG")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let status = tokio::select! {
            status = child.wait() => status.unwrap(),
            () = tokio::time::sleep(delay) => {
                child.start_kill().unwrap();
                tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .expect("a killed photosync did not go away")
                    .unwrap()
            }
        };
        // A run may also have finished just before its kill: then it must have succeeded.
        let killed = std::os::unix::process::ExitStatusExt::signal(&status) == Some(9);
        if !killed {
            let log = std::fs::read_to_string(env.path(&format!("round{n:02}.log"))).unwrap();
            assert_eq!(
                status.code(),
                Some(0),
                "round {n} ended by itself but failed:\n{log}"
            );
        }
        rounds.push(Round {
            delay,
            latency,
            killed,
            uploads: uploads_ok(&env.emu) - before,
            ended: Instant::now(),
        });
    }
    let after_kills = started.elapsed();

    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // The kills must really have hit both the start-up and the uploads, or this proves nothing.
    let killed: Vec<&Round> = rounds.iter().filter(|r| r.killed).collect();
    let mid_upload = killed.iter().filter(|r| r.uploads > 0).count();
    let before_uploads = killed.iter().filter(|r| r.uploads == 0).count();
    assert!(
        mid_upload >= 5 && before_uploads >= 3,
        "the kills did not spread over start-up and uploads: {rounds:#?}"
    );

    // Every photo is there, with its own bytes.
    for i in 0..PHOTOS {
        let photo = env
            .emu
            .user_photo(&upn(i))
            .unwrap_or_else(|| panic!("no photo for {}", upn(i)));
        assert!(photo.bytes == unique_jpeg(i), "wrong bytes for {}", upn(i));
    }

    // Who sent each successful upload: the round it arrived in (the final run is the last).
    let round_of = |at: Instant| {
        rounds
            .iter()
            .position(|r| at < r.ended)
            .unwrap_or(rounds.len())
    };
    let mut sent_in: HashMap<String, Vec<(usize, Instant)>> = HashMap::new();
    for r in upload_requests(&env.emu)
        .into_iter()
        .filter(|r| (200..300).contains(&r.status))
    {
        sent_in
            .entry(r.target.clone().unwrap())
            .or_default()
            .push((round_of(r.at), r.at));
    }
    assert_eq!(sent_in.len(), PHOTOS as usize);
    // A photo is sent again only after a round that was killed (its record was lost with the
    // process), never twice by one run, and a kill loses only the uploads answered just
    // before it, still in flight or awaiting their commit. How many that is depends on the
    // machine's load (a starved ledger writer lets answers pile up), so the bound is on time.
    let mut repeats_after = vec![0usize; rounds.len()];
    let mut worst_lag = Duration::ZERO;
    for (target, sends) in &sent_in {
        for pair in sends.windows(2) {
            let ((first, at), (again, _)) = (pair[0], pair[1]);
            assert!(first < again, "{target} sent twice by one run ({sends:?})");
            let round = &rounds[first];
            assert!(
                round.killed,
                "{target} sent again after round {first}, which was not killed ({sends:?})"
            );
            repeats_after[first] += 1;
            worst_lag = worst_lag.max(round.ended.saturating_duration_since(at));
        }
    }
    assert!(
        worst_lag < Duration::from_secs(1),
        "a kill lost the record of an upload sent {worst_lag:?} before it ({repeats_after:?})"
    );
    let twice = sent_in.values().filter(|r| r.len() == 2).count();
    let more = sent_in.values().filter(|r| r.len() > 2).count();

    // The ledger is a sound database that knows every photo as synced.
    let ledger = read_ledger(&env).await;
    assert_eq!(ledger.integrity, ["ok"]);
    assert_eq!(ledger.synced().count(), PHOTOS as usize);
    assert_eq!(ledger.files, i64::from(PHOTOS));

    // And a last run finds nothing to do.
    let sent = upload_requests(&env.emu).len();
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{PHOTOS} photos: 0 uploaded, {PHOTOS} unchanged")),
        "{stdout}"
    );
    assert_eq!(upload_requests(&env.emu).len(), sent);
    eprintln!(
        "crash: {} kills ({mid_upload} during uploads, {before_uploads} before any), {twice} photos sent twice, {more} more often; repeats per round {repeats_after:?}, the oldest {worst_lag:?} before its kill; kills took {:.1}s, all {:.1}s; rounds: {:?}",
        killed.len(),
        after_kills.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        rounds
            .iter()
            .map(|r| (r.delay.as_millis(), r.latency.as_millis(), r.uploads))
            .collect::<Vec<_>>()
    );
}
