//! systemd's `Type=notify` protocol: READY once the first reconcile pass is done, a STATUS line
//! while running, STOPPING on the way out, and WATCHDOG pings while the runtime answers.
//! Without systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The service is up: the first reconcile pass is done.
pub(super) fn ready() {
    send(&[NotifyState::Ready]);
}

/// A one-line status for `systemctl status`.
pub(super) fn status(line: &str) {
    send(&[NotifyState::Status(line)]);
}

/// The service is shutting down.
pub(super) fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// A failed notification changes nothing for the daemon: systemd either listens or not.
fn send(states: &[NotifyState<'_>]) {
    let _ = sd_notify::notify(false, states);
}

/// Pings systemd's watchdog at half its interval while the runtime is responsive, until `stop`.
/// `None` when the watchdog is not enabled.
pub(super) fn watchdog(stop: CancellationToken) -> Option<JoinHandle<()>> {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return None;
    }
    let every = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        loop {
            send(&[NotifyState::Watchdog]);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }))
}
