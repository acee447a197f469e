//! What a person sees: `photosync backfill` on a terminal (a tmux pane, read with
//! capture-pane) draws a progress bar while it uploads and leaves a clean summary; on a pipe it
//! draws nothing. Needs tmux (installed by .ci/run).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use graph_emulator::{Fault, FaultRule, Match, RequestKind, RetryAfter};

use crate::helpers::{jpeg, text, wait_until, Env};

const PHOTOS: u32 = 12;

/// Runs tmux on a socket of this test's own, so no other tmux is touched.
fn tmux(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .arg("-S")
        .arg(socket)
        .args(args)
        .env("TERM", "xterm-256color")
        .output()
        .expect("tmux (apt-get install tmux)")
}

fn screen(socket: &Path) -> String {
    String::from_utf8_lossy(&tmux(socket, &["capture-pane", "-p", "-t", "ps"]).stdout).into_owned()
}

/// A backfill slow enough to watch: 12 photos at 3 a second, and one throttling answer.
async fn throttled_env() -> Env {
    let env = Env::new().await;
    for i in 0..PHOTOS {
        let upn = format!("user{i}@contoso.com");
        env.add_user(&upn);
        env.put(&format!("users/{upn}.jpg"), &jpeg(i));
    }
    env.write_config_with(
        "client_secret_file = \"secret\"",
        "[upload]\nworkers = 2\nrequests_per_second = 3.0\nburst = 1\n",
        "[image]\nmode = \"passthrough\"\n",
        "",
    );
    env.emu.push_fault(FaultRule {
        matcher: Match::Kind(RequestKind::PhotoPut),
        fault: Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            retry_after: Some(RetryAfter::Seconds(1.0)),
        },
        times: 1,
    });
    env
}

/// Ends the tmux server (and the pane's shell) however the test ends.
struct Server<'a>(&'a Path);
impl Drop for Server<'_> {
    fn drop(&mut self) {
        let _ = tmux(self.0, &["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_shows_the_bar_while_syncing_and_a_clean_summary_after() {
    let env = throttled_env().await;
    let socket = env.path("tmux.sock");
    let command = format!(
        "'{}' -c '{}' backfill; echo \"EXIT=$?\"; exec sleep 600",
        env!("CARGO_BIN_EXE_photosync"),
        env.config.display()
    );
    let started = tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "ps",
            "-x",
            "160",
            "-y",
            "30",
            "sh",
            "-c",
            &command,
        ],
    );
    assert!(started.status.success(), "{}", text(&started));
    let _server = Server(&socket);

    // The bar: done/total, the rate, the ETA and the failures so far.
    let mut during = String::new();
    wait_until("the progress bar", Duration::from_secs(60), || {
        during = screen(&socket);
        during.contains(&format!("/{PHOTOS} photos")) && during.contains("ETA")
    })
    .await;
    assert!(during.contains("/s"), "no rate: {during}");
    assert!(during.contains("0 failed"), "no failures so far: {during}");

    let mut after = String::new();
    wait_until("the backfill to end", Duration::from_secs(120), || {
        after = screen(&socket);
        after.contains("EXIT=")
    })
    .await;
    assert!(after.contains("EXIT=0"), "{after}");
    let summary = format!("{PHOTOS} photos: {PHOTOS} uploaded, 0 unchanged, 0 failed");
    assert!(after.contains(&summary), "{after}");
    assert!(after.contains("1 throttled"), "{after}");
    // Nothing of the bar is left on the screen.
    for leftover in ["ETA", "/s ", "walking", &format!("/{PHOTOS} photos")] {
        assert!(
            !after.contains(leftover),
            "{leftover:?} left on screen:\n{after}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipe_gets_no_bar_and_no_spinner() {
    let env = throttled_env().await;
    let out = env.run(&["backfill"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(
        !all.contains("ETA") && !all.contains('\r') && !all.contains("walking"),
        "{all}"
    );
    assert!(
        all.contains(&format!("{PHOTOS} photos: {PHOTOS} uploaded")),
        "{all}"
    );
}
