//! What makes the daemon plan besides watcher events, and when a changed path is stable enough
//! to plan: a full rescan every `rescan_interval`, polling rescans for roots that cannot be
//! watched, retries coming due, a changed mapping file, a root unmounted or mounted over.
//!
//! Every look at the file system (a changed path, a mapping file, a root) runs on the blocking
//! pool: a hung network share must not stall the runtime's threads. At most one look of each
//! kind is out at a time, so a hung share holds up one blocking thread, not one per tick; its
//! result is picked up at a later tick.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::{JoinError, JoinHandle};

use crate::config::Config;
use crate::source::watch::{self, Debounce, Identity, Watch};

/// How often the roots' identities are checked (see [`Identity`]).
const ROOT_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The most a parked photo or a transient failure waits past its due time.
const RETRY_CHECK_AT_MOST_EVERY: Duration = Duration::from_secs(60);

/// What one tick found.
#[derive(Debug, Default)]
pub(super) struct Fired {
    /// Everything should be planned again.
    pub rescan: bool,
    /// Roots whose identity changed since they were watched: watch them again (and rescan).
    pub moved_roots: Vec<PathBuf>,
    /// Changed paths that have been still for `debounce`.
    pub stable: Vec<PathBuf>,
}

/// The daemon's clocks and its looks at the file system.
pub(super) struct Triggers {
    rescan_interval: Duration,
    poll_interval: Duration,
    debounce_for: Duration,
    retry_every: Duration,
    roots: Vec<PathBuf>,
    mappings: Vec<PathBuf>,
    /// Changed paths not yet handed to the debounce.
    touched: Vec<PathBuf>,
    /// `None` while it is out on the blocking pool.
    debounce: Option<Debounce>,
    mapping_mtimes: Vec<Option<SystemTime>>,
    file_look: Look<FileLook>,
    root_look: Look<Vec<Identity>>,
    last_rescan: Instant,
    last_poll: Instant,
    last_retry_check: Instant,
    last_root_check: Instant,
}

/// A look at the changed paths and the mapping files.
struct FileLook {
    debounce: Debounce,
    stable: Vec<PathBuf>,
    mapping_mtimes: Vec<Option<SystemTime>>,
}

impl Triggers {
    /// Starts the clocks; the mapping files' modification times are the baseline a change is
    /// measured against.
    pub(super) async fn new(cfg: &Config) -> Triggers {
        let mappings: Vec<PathBuf> = cfg
            .sources
            .iter()
            .filter_map(|s| s.mapping.clone())
            .collect();
        let files = mappings.clone();
        let mapping_mtimes = tokio::task::spawn_blocking(move || mtimes(&files))
            .await
            .unwrap_or_default();
        let now = Instant::now();
        Triggers {
            rescan_interval: cfg.sync.rescan_interval,
            poll_interval: cfg.sync.poll_interval,
            debounce_for: cfg.sync.debounce,
            // Parked photos and transient failures come due without any file changing.
            retry_every: cfg
                .sync
                .parked_retry
                .min(cfg.sync.retry_failed_after)
                .min(RETRY_CHECK_AT_MOST_EVERY),
            roots: cfg.sources.iter().map(|s| s.root.clone()).collect(),
            mappings,
            touched: Vec::new(),
            debounce: Some(Debounce::default()),
            mapping_mtimes,
            file_look: Look::default(),
            root_look: Look::default(),
            last_rescan: now,
            last_poll: now,
            last_retry_check: now,
            last_root_check: now,
        }
    }

    /// The watcher saw a change at `path`.
    pub(super) fn touch(&mut self, path: PathBuf) {
        self.touched.push(path);
    }

    /// A full pass starts now: the rescan interval counts from here.
    pub(super) fn rescan_started(&mut self) {
        self.last_rescan = Instant::now();
    }

    /// Whether it is time to ask the ledger for retries that came due.
    pub(super) fn retries_due(&mut self) -> bool {
        let due = self.last_retry_check.elapsed() >= self.retry_every;
        if due {
            self.last_retry_check = Instant::now();
        }
        due
    }

    /// Collects the looks that finished, starts the next ones, and reads the clocks.
    pub(super) async fn tick(&mut self, watch: &Watch) -> Fired {
        let mut fired = Fired::default();
        self.collect_file_look(&mut fired).await;
        self.collect_root_look(watch, &mut fired).await;
        self.start_looks();
        if watch
            .rescan
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            fired.rescan = true;
        }
        if self.last_rescan.elapsed() >= self.rescan_interval {
            fired.rescan = true;
        }
        if !watch.polled.is_empty() && self.last_poll.elapsed() >= self.poll_interval {
            self.last_poll = Instant::now();
            fired.rescan = true;
        }
        fired
    }

    async fn collect_file_look(&mut self, fired: &mut Fired) {
        let Some(done) = self.file_look.finished().await else {
            return;
        };
        match done {
            Ok(look) => {
                self.debounce = Some(look.debounce);
                fired.stable = look.stable;
                if look.mapping_mtimes != self.mapping_mtimes {
                    tracing::info!("a mapping file changed; rescanning");
                    self.mapping_mtimes = look.mapping_mtimes;
                    fired.rescan = true;
                }
            }
            Err(e) => {
                // The changes it held are lost: a rescan finds them.
                tracing::error!(error = %e, "the look at changed files failed; rescanning");
                self.debounce = Some(Debounce::default());
                fired.rescan = true;
            }
        }
    }

    async fn collect_root_look(&mut self, watch: &Watch, fired: &mut Fired) {
        let Some(done) = self.root_look.finished().await else {
            return;
        };
        let now = done.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the look at the source roots failed");
            Vec::new()
        });
        fired.moved_roots = watch
            .moved(&now)
            .into_iter()
            .map(std::path::Path::to_path_buf)
            .collect();
    }

    fn start_looks(&mut self) {
        let busy = !self.touched.is_empty()
            || self.debounce.as_ref().is_some_and(|d| !d.is_empty())
            || !self.mappings.is_empty();
        if busy && self.file_look.is_idle() {
            if let Some(mut debounce) = self.debounce.take() {
                let touched = std::mem::take(&mut self.touched);
                let mappings = self.mappings.clone();
                let quiet = self.debounce_for;
                self.file_look.start(move || {
                    for path in touched {
                        debounce.touch(path);
                    }
                    let stable = debounce.due(quiet);
                    FileLook {
                        debounce,
                        stable,
                        mapping_mtimes: mtimes(&mappings),
                    }
                });
            }
        }
        if self.root_look.is_idle() && self.last_root_check.elapsed() >= ROOT_CHECK_EVERY {
            self.last_root_check = Instant::now();
            let roots = self.roots.clone();
            self.root_look.start(move || watch::identities(&roots));
        }
    }
}

/// Each file's modification time (`None`: it cannot be stat'ed).
fn mtimes(files: &[PathBuf]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .map(|m| std::fs::metadata(m).and_then(|m| m.modified()).ok())
        .collect()
}

/// A look running on the blocking pool, at most one at a time.
struct Look<T>(Option<JoinHandle<T>>);

impl<T> Default for Look<T> {
    fn default() -> Self {
        Look(None)
    }
}

impl<T: Send + 'static> Look<T> {
    fn is_idle(&self) -> bool {
        self.0.is_none()
    }

    fn start(&mut self, f: impl FnOnce() -> T + Send + 'static) {
        self.0 = Some(tokio::task::spawn_blocking(f));
    }

    /// The result of the look, once it has finished (without waiting for it).
    async fn finished(&mut self) -> Option<Result<T, JoinError>> {
        let handle = self.0.take_if(|h| h.is_finished())?;
        Some(handle.await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        let text = r#"
[auth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "id"
client_secret = "s"

[state]
database = "state.db"

[sync]
debounce = "100ms"

[[source]]
root = "users"
target = "user"
key = "upn"
mapping = "badges.csv"
column_file = "badge"
column_target = "upn"
"#;
        Config::parse(text, &dir.join("config.toml")).unwrap()
    }

    /// Ticks until `done` holds for what fired (bounded: only a hung test fails on time).
    async fn tick_until(t: &mut Triggers, watch: &Watch, done: impl Fn(&Fired) -> bool) -> Fired {
        let start = Instant::now();
        loop {
            let fired = t.tick(watch).await;
            if done(&fired) {
                return fired;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "never fired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_changed_mapping_file_fires_a_rescan_and_a_still_file_is_handed_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("users")).unwrap();
        let csv = dir.path().join("badges.csv");
        std::fs::write(&csv, "badge,upn\n").unwrap();
        let cfg = config(dir.path());
        let (tx, _rx) = tokio::sync::mpsc::channel(8);
        let watch = watch::start(
            &[dir.path().join("users")],
            crate::config::WatchMode::Poll,
            &tx,
        );
        let mut t = Triggers::new(&cfg).await;

        let photo = dir.path().join("users/a.jpg");
        std::fs::write(&photo, b"1").unwrap();
        let touched = Instant::now();
        t.touch(photo.clone());
        let fired = tick_until(&mut t, &watch, |f| !f.stable.is_empty()).await;
        assert_eq!(fired.stable, [photo]);
        assert!(touched.elapsed() >= cfg.sync.debounce);
        assert!(!fired.rescan);

        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&csv)
            .unwrap()
            .set_modified(later)
            .unwrap();
        tick_until(&mut t, &watch, |f| f.rescan).await;
        // Once: the new time is the baseline now.
        let fired = t.tick(&watch).await;
        assert!(!fired.rescan);
    }
}
