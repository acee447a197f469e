//! Long uptime: the daemon (the `photosync run` process) polls a tree holding 1,000 files that
//! will never sync (they are not images) and a trickle of good photos changing, pass after
//! pass. What it keeps of its failures is a view of what fails now (the ledger is the record),
//! so neither that view nor its resident memory grows with the passes: the last third of the
//! run stays within 5% of the first, and `photosync_failing_photos` reads 1,000 throughout.
//!
//! A poll every 100 ms stands in for one every 5 minutes: 9,000 passes are 30 days of
//! `watch = "poll"`. The normal suite runs `PASSES` of them (a minute or two);
//! `PHOTOSYNC_UPTIME_PASSES=9000 cargo test --test it uptime -- --nocapture` runs the month.

use std::time::{Duration, Instant};

use crate::helpers::{unique_jpeg, uploads_ok, upn, wait_until, DaemonProcess, Env};

const BAD: u32 = 1_000;
const GOOD: u32 = 20;
/// Passes the normal suite runs.
const PASSES: u64 = 600;

fn rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn served_at(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("serving /healthz, /readyz and /metrics"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address logged:\n{log}"))
        .to_owned()
}

async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    passes: f64,
    rss_kib: f64,
    failing: f64,
}

fn mean(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    samples.iter().map(f).sum::<f64>() / samples.len() as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn a_month_of_polling_past_a_thousand_bad_files_keeps_memory_and_the_failure_view_flat() {
    let passes: u64 = std::env::var("PHOTOSYNC_UPTIME_PASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(PASSES);
    let env = Env::new().await;
    for i in 0..BAD {
        env.add_user(&upn("bad", i));
        env.put(
            &format!("users/{}.jpg", upn("bad", i)),
            b"not a photo at all",
        );
    }
    for i in 0..GOOD {
        env.add_user(&upn("good", i));
        env.put(&format!("users/{}.jpg", upn("good", i)), &unique_jpeg(i));
    }
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 2\nrequests_per_second = 50.0\nburst = 10\nrecord_etag = false\n",
        "",
        "\n[sync]\nwatch = \"poll\"\npoll_interval = \"100ms\"\ndebounce = \"200ms\"\n\n[server]\nlisten = \"127.0.0.1:0\"\n",
    );
    let d = DaemonProcess::start(&env).await;
    d.wait_log("serving /healthz, /readyz and /metrics").await;
    let base = format!("http://{}", served_at(&d.log()));
    let pid = d.pid();
    // The reconcile pass uploads the good photos; the bad ones fail in the image pipeline.
    wait_until("the first pass's uploads", Duration::from_secs(120), || {
        uploads_ok(&env.emu) >= GOOD as usize
    })
    .await;

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut changes = 0u32;
    let mut last_change = Instant::now();
    loop {
        let text = metrics(&base).await;
        let s = Sample {
            passes: metric(&text, "photosync_passes_total"),
            rss_kib: rss_kib(pid),
            failing: metric(&text, "photosync_failing_photos"),
        };
        assert!(
            (s.failing - f64::from(BAD)).abs() < 0.5,
            "{} failing photos after {} passes, not {BAD}",
            s.failing,
            s.passes
        );
        samples.push(s);
        if s.passes >= passes as f64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "only {} passes in an hour",
            s.passes
        );
        // The trickle: one good photo changes every half second.
        if last_change.elapsed() >= Duration::from_millis(500) {
            last_change = Instant::now();
            changes += 1;
            let i = changes % GOOD;
            env.put(
                &format!("users/{}.jpg", upn("good", i)),
                &unique_jpeg(1_000 + changes),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let events = metric(&metrics(&base).await, "photosync_failure_events_total");
    let (code, log) = d.stop().await;
    assert_eq!(code, Some(0), "{log}");

    // The first tenth warms up (allocator pools, the trickle's first uploads).
    let warm: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.passes >= passes as f64 / 10.0)
        .collect();
    let third = warm.len() / 3;
    let (first, last) = (&warm[..third], &warm[warm.len() - third..]);
    let rss = (mean(first, |s| s.rss_kib), mean(last, |s| s.rss_kib));
    eprintln!(
        "uptime: {} passes in {:.0}s, {changes} changes, {events} failure events; RSS first third {:.1} MiB, last third {:.1} MiB",
        samples[samples.len() - 1].passes,
        started.elapsed().as_secs_f64(),
        rss.0 / 1024.0,
        rss.1 / 1024.0
    );
    // Each pass met every bad file again: the events grew, the view did not.
    assert!(
        events >= f64::from(BAD) * passes as f64 / 2.0,
        "{events} failure events"
    );
    assert!(
        rss.1 <= rss.0 * 1.05,
        "resident memory grew: {:.1} MiB in the first third of the run, {:.1} MiB in the last",
        rss.0 / 1024.0,
        rss.1 / 1024.0
    );
}
