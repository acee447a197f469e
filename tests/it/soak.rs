//! Soak: the daemon (the `photosync run` process) under a steady trickle of new, changed and removed photos,
//! with Graph alternating between calm and storms (seeded random 503s, resets and stalls, a
//! burst of 429s at the start of each storm) and tokens that expire every 20 s. Its resident
//! memory and open file descriptors are sampled from /proc every few seconds and must stay
//! flat; at the end nothing is left queued and every photo's final bytes are in Graph (and
//! removed photos are gone from it).
//!
//! `soak::ten_minutes` is opt-in: `cargo test --workspace --test it soak -- --ignored
//! --nocapture` (PHOTOSYNC_SOAK_SECS shortens it). `soak::twenty_seconds` runs the same code in
//! the normal suite so that it cannot rot.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use graph_emulator::{
    Config as EmuConfig, Fault, FaultRule, Faults, Match, RequestKind, RetryAfter,
};
use rand::{Rng, SeedableRng};

use crate::helpers::{
    unique_jpeg, upload_requests, uploads_ok, DaemonProcess, Env, CLIENT_ID, SECRET, TENANT,
};

const SEED: u64 = 0x50a4;
/// Photos already there when the daemon starts.
const INITIAL: u32 = 200;
/// One change to the tree every this long.
const TRICKLE: Duration = Duration::from_millis(200);
/// Storm, then calm, each this long.
const WEATHER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
#[ignore = "runs 10 minutes; PHOTOSYNC_SOAK_SECS shortens it"]
async fn ten_minutes() {
    let secs = std::env::var("PHOTOSYNC_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    soak(Duration::from_secs(secs), Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_seconds() {
    soak(Duration::from_secs(20), Duration::from_secs(1)).await;
}

/// One sample of the daemon's footprint.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

fn sample(pid: u32, at: Duration) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    Sample { at, rss_kib, fds }
}

fn upn(i: u32) -> String {
    crate::helpers::upn("soak", i)
}

/// What each photo should end as: its latest bytes, or `None` once removed.
type Model = BTreeMap<u32, Option<Vec<u8>>>;

fn settled(env: &Env, model: &Model, i: u32) -> bool {
    let photo = env.emu.user_photo(&upn(i));
    match &model[&i] {
        Some(bytes) => photo.is_some_and(|p| p.bytes == *bytes),
        None => photo.is_none(),
    }
}

/// The address the daemon serves on, as it logs it (port 0 in the config: the system picks).
fn served_at(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("serving /healthz, /readyz and /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address logged:\n{log}"))
        .to_owned()
}

/// A value from the daemon's `/metrics`.
async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

fn storm(env: &Env, seed: u64) {
    env.emu.set_faults(Faults {
        error_503: 0.05,
        reset: 0.03,
        stall: 0.01,
        stall_for: Duration::from_secs(3),
        latency: Duration::from_millis(5),
        retry_after: RetryAfter::None,
        seed,
        ..Faults::default()
    });
    env.emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::PhotoPut),
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            retry_after: Some(RetryAfter::Seconds(0.5)),
        },
        3,
    ));
}

fn calm(env: &Env) {
    env.emu.set_faults(Faults {
        latency: Duration::from_millis(5),
        ..Faults::default()
    });
}

/// Mean of a slice of samples' values.
fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).sum::<f64>() / samples.len() as f64
}

#[allow(clippy::too_many_lines)]
async fn soak(length: Duration, every: Duration) {
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(SECRET.into()),
        token_ttl: Duration::from_secs(20),
        ..EmuConfig::default()
    })
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut model = Model::new();
    let mut version = 0u32;
    let mut next_bytes = |i: u32| {
        version += 1;
        unique_jpeg(i * 10_000 + version)
    };
    for i in 0..INITIAL {
        env.add_user(&upn(i));
        let bytes = next_bytes(i);
        env.put(&format!("users/{}.jpg", upn(i)), &bytes);
        model.insert(i, Some(bytes));
    }
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 50.0\nburst = 10\nmax_attempts = 8\nrequest_timeout = \"2s\"\nconnect_timeout = \"2s\"\n",
        "[image]\nmode = \"passthrough\"\n",
        "\n[sync]\ndebounce = \"500ms\"\nrescan_interval = \"15s\"\non_delete = \"delete\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n",
    );
    // A process, not the daemon in this one: its footprint is what is measured.
    let d = DaemonProcess::start(&env).await;
    d.wait_log("serving /healthz, /readyz and /metrics").await;
    let base = format!("http://{}", served_at(&d.log()));
    let pid = d.pid();

    let started = Instant::now();
    let mut samples = vec![sample(pid, Duration::ZERO)];
    let mut last_sample = started;
    let mut storms = 0u64;
    let mut in_storm = false;
    let mut weather_since = started;
    calm(&env);
    let (mut added, mut changed, mut removed) = (0u32, 0u32, 0u32);
    let mut next_user = INITIAL;
    while started.elapsed() < length {
        if weather_since.elapsed() >= WEATHER {
            weather_since = Instant::now();
            in_storm = !in_storm;
            if in_storm {
                storms += 1;
                storm(&env, SEED + storms);
            } else {
                calm(&env);
            }
        }
        // Half the changes rewrite a photo, a quarter add one, a quarter remove one. Only a
        // photo Graph already has is removed: a removal racing its first upload is not what
        // this measures.
        let roll: f64 = rng.gen();
        let present: Vec<u32> = model
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
        if roll < 0.25 || present.is_empty() {
            let i = next_user;
            next_user += 1;
            env.add_user(&upn(i));
            let bytes = next_bytes(i);
            env.put(&format!("users/{}.jpg", upn(i)), &bytes);
            model.insert(i, Some(bytes));
            added += 1;
        } else if roll < 0.75 {
            let i = present[rng.gen_range(0..present.len())];
            let bytes = next_bytes(i);
            env.put(&format!("users/{}.jpg", upn(i)), &bytes);
            model.insert(i, Some(bytes));
            changed += 1;
        } else {
            let i = present[rng.gen_range(0..present.len())];
            if settled(&env, &model, i) {
                std::fs::remove_file(env.path(&format!("users/{}.jpg", upn(i)))).unwrap();
                model.insert(i, None);
                removed += 1;
            }
        }
        if last_sample.elapsed() >= every {
            last_sample = Instant::now();
            samples.push(sample(pid, started.elapsed()));
        }
        tokio::time::sleep(TRICKLE).await;
    }
    let trickle_ended = started.elapsed();

    // Calm for good: the daemon must catch up on its own.
    env.emu.clear_fault_rules();
    calm(&env);
    let catch_up = Instant::now();
    loop {
        let behind: Vec<u32> = model
            .keys()
            .copied()
            .filter(|i| !settled(&env, &model, *i))
            .collect();
        if behind.is_empty()
            && metric(&base, "photosync_queue_depth").await == 0.0
            && metric(&base, "photosync_in_flight").await == 0.0
        {
            break;
        }
        assert!(
            catch_up.elapsed() < Duration::from_secs(60),
            "not caught up 60 s after the trickle stopped: {} photos behind ({:?}…):\n{}",
            behind.len(),
            &behind[..behind.len().min(10)],
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = catch_up.elapsed();
    samples.push(sample(pid, started.elapsed()));
    let retries = metric(&base, "photosync_retries_total").await;
    let throttled = metric(&base, "photosync_throttled_total").await;
    let deletes = metric(&base, "photosync_deletes_total").await;
    let failed = metric(&base, "photosync_uploads_total{result=\"failed\"}").await;
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");

    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for r in upload_requests(&env.emu) {
        *by_status.entry(r.status).or_default() += 1;
    }
    let faults: usize = by_status
        .iter()
        .filter(|(s, _)| !(200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();

    // Footprint: after a warm-up (the first quarter: the initial import, the allocator and the
    // connection pool reaching their working size), the last third may not sit above the first.
    let warm: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.at >= length / 4)
        .collect();
    assert!(warm.len() >= 6, "too few samples: {samples:?}");
    let third = warm.len() / 3;
    let (first, last) = (&warm[..third], &warm[warm.len() - third..]);
    let rss = |s: &Sample| s.rss_kib as f64;
    let fds = |s: &Sample| s.fds as f64;
    let max_rss = samples.iter().map(|s| s.rss_kib).max().unwrap();
    let max_fds = samples.iter().map(|s| s.fds).max().unwrap();
    eprintln!(
        "soak: {:.0}s of trickle ({added} added, {changed} changed, {removed} removed), {storms} storms; \
         caught up {:.1}s later; {} uploads ok, {deletes} deletes, {faults} faults answered ({by_status:?}), \
         {retries} retries, {throttled} throttled, {failed} failed for now, {} tokens; \
         RSS KiB start {} end {} max {max_rss}, first third {:.0} last third {:.0}; \
         fds start {} end {} max {max_fds}, first third {:.1} last third {:.1}; {} samples",
        trickle_ended.as_secs_f64(),
        caught_up.as_secs_f64(),
        uploads_ok(&env.emu),
        env.emu.tokens_issued(),
        samples[0].rss_kib,
        samples.last().unwrap().rss_kib,
        mean(first, rss),
        mean(last, rss),
        samples[0].fds,
        samples.last().unwrap().fds,
        mean(first, fds),
        mean(last, fds),
        samples.len(),
    );
    assert!(
        mean(last, rss) <= mean(first, rss) * 1.2 + 2048.0,
        "memory grew: {warm:?}"
    );
    let first_max = first.iter().map(|s| s.rss_kib).max().unwrap();
    let last_min = last.iter().map(|s| s.rss_kib).min().unwrap();
    assert!(
        last_min <= first_max + 1024,
        "memory only went up: {warm:?}"
    );
    assert!(
        mean(last, fds) <= mean(first, fds) + 4.0,
        "file descriptors leaked: {warm:?}"
    );
    assert!(faults > 0 && storms > 0, "no fault was injected");
    assert!(env.emu.tokens_issued() >= 2, "the token was never renewed");
}
