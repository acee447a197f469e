//! Test scaffolding: an emulator on 127.0.0.1:0, a temp tree, a config file, ways to run the
//! binary and the daemon (in process, or as a process) against them, and readers of the
//! ledger and `status --json`. Not every test module uses every helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use graph_emulator::{Config as EmuConfig, Emulator, User};
use photosync::daemon::{DaemonError, Options, Progress};
use photosync::ledger::Ledger;
use photosync::stats::Stats;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "s3cr3t-Value~with.special_chars-0123456789";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const TENANT: &str = "contoso.onmicrosoft.com";

pub struct Env {
    pub dir: tempfile::TempDir,
    pub emu: Emulator,
    pub config: PathBuf,
}

impl Env {
    /// An emulator that accepts [`SECRET`], an empty tree with `users/`, `groups/` and
    /// `contacts/`, and a config in passthrough mode with a generous rate.
    pub async fn new() -> Env {
        Self::with_emulator(EmuConfig {
            tenant: TENANT.into(),
            client_id: CLIENT_ID.into(),
            client_secret: Some(SECRET.into()),
            ..EmuConfig::default()
        })
        .await
    }

    pub async fn with_emulator(cfg: EmuConfig) -> Env {
        let dir = tempfile::tempdir().unwrap();
        for d in ["users", "groups", "contacts"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        write_private(&dir.path().join("secret"), format!("{SECRET}\n").as_bytes());
        let emu = Emulator::start(cfg).await.unwrap();
        let env = Env {
            config: dir.path().join("config.toml"),
            dir,
            emu,
        };
        env.write_config("");
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn db(&self) -> PathBuf {
        self.path("state/photosync.db")
    }

    /// Writes the config; `extra` is appended (later keys in a table override nothing, so pass
    /// whole tables that the base does not have, or use [`Env::write_config_with`]).
    pub fn write_config(&self, extra: &str) {
        self.write_config_with(
            "client_secret_file = \"secret\"",
            "[upload]\nworkers = 4\nrequests_per_second = 200.0\nburst = 50\nmax_attempts = 4\nrequest_timeout = \"10s\"\n",
            "[image]\nmode = \"passthrough\"\n",
            extra,
        );
    }

    pub fn write_config_with(&self, credential: &str, upload: &str, image: &str, extra: &str) {
        let url = self.emu.url();
        let text = format!(
            r#"[auth]
tenant_id = "{TENANT}"
client_id = "{CLIENT_ID}"
{credential}

[cloud]
login_url = "{url}"
graph_url = "{url}"

[state]
database = "state/photosync.db"

{upload}
{image}
[[source]]
root = "users"
target = "user"
key = "upn"

[[source]]
root = "groups"
target = "group"
key = "id"

[[source]]
root = "contacts"
target = "contact"
key = "id"
{extra}"#
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Writes a file under the tree, creating folders.
    pub fn put(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn add_user(&self, upn: &str) -> String {
        let id = uuid_for(upn);
        self.emu.add_user(User::new(&id, upn));
        id
    }

    /// Runs `photosync -c <config> <args>` and waits (at most 120 s).
    pub async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    pub async fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_photosync"));
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("PHOTOSYNC_CLIENT_SECRET")
            .env_remove("RUST_LOG")
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::time::timeout(Duration::from_secs(120), cmd.output())
            .await
            .expect("photosync did not finish within 120 s")
            .unwrap()
    }
}

/// Writes a file only its owner can read, as a secret or key file must be.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A deterministic object id for a name.
pub fn uuid_for(name: &str) -> String {
    let h = blake3::hash(name.as_bytes()).to_hex();
    let h = h.as_str();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A small, valid, distinct JPEG (different `seed`, different bytes).
pub fn jpeg(seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([
            (x * 4) as u8,
            (y * 5) as u8,
            (seed.wrapping_mul(37) % 256) as u8,
        ])
    });
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&img)
        .unwrap();
    out
}

/// A valid JPEG whose bytes are unique for every `n`: [`jpeg`] with a comment segment naming
/// `n` (`jpeg` alone repeats itself every 256 seeds).
pub fn unique_jpeg(n: u32) -> Vec<u8> {
    let base = jpeg(n);
    let comment = format!("photosync test photo {n}");
    let len = u16::try_from(comment.len() + 2).unwrap();
    let mut out = Vec::with_capacity(base.len() + comment.len() + 4);
    out.extend_from_slice(&base[..2]); // SOI
    out.extend_from_slice(&[0xFF, 0xFE]); // COM
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(comment.as_bytes());
    out.extend_from_slice(&base[2..]);
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Uploads the emulator received (PUT or PATCH photo requests answered 2xx).
pub fn uploads_ok(emu: &Emulator) -> usize {
    emu.requests()
        .iter()
        .filter(|r| {
            matches!(
                r.kind,
                graph_emulator::RequestKind::PhotoPut | graph_emulator::RequestKind::PhotoPatch
            ) && (200..300).contains(&r.status)
        })
        .count()
}

/// Every photo upload request the emulator saw, answered or not.
pub fn upload_requests(emu: &Emulator) -> Vec<graph_emulator::Recorded> {
    emu.requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r.kind,
                graph_emulator::RequestKind::PhotoPut | graph_emulator::RequestKind::PhotoPatch
            )
        })
        .collect()
}

/// An error and its sources, each once (`a: b: c`), as the CLI prints them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A test user's UPN: `prefix` and `i`, e.g. `disk00007@contoso.com`.
pub fn upn(prefix: &str, i: u32) -> String {
    format!("{prefix}{i:05}@contoso.com")
}

/// Waits (bounded: the timeout only fails a hung test) until `cond` holds; returns how long
/// that took.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// `photosync status --json`, which must succeed, parsed.
pub async fn status_json(env: &Env) -> serde_json::Value {
    let out = env.run(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// One row of the ledger's `targets` table.
#[derive(Debug, Clone)]
pub struct LedgerTarget {
    pub key: String,
    pub state: String,
    pub last_hash: Option<String>,
}

/// What the ledger file holds, read with a connection of its own (as an operator's `sqlite3`
/// would).
#[derive(Debug)]
pub struct LedgerRows {
    /// `PRAGMA integrity_check`: `["ok"]` for a sound file.
    pub integrity: Vec<String>,
    pub targets: Vec<LedgerTarget>,
    pub files: i64,
}

impl LedgerRows {
    pub fn synced(&self) -> impl Iterator<Item = &LedgerTarget> {
        self.targets.iter().filter(|t| t.state == "synced")
    }
}

pub async fn read_ledger(env: &Env) -> LedgerRows {
    use sqlx::sqlite::SqliteConnectOptions;
    let pool = sqlx::SqlitePool::connect_with(SqliteConnectOptions::new().filename(env.db()))
        .await
        .unwrap();
    let integrity: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    let targets: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT target_key, state, last_hash FROM targets")
            .fetch_all(&pool)
            .await
            .unwrap();
    let files: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM files")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    LedgerRows {
        integrity,
        targets: targets
            .into_iter()
            .map(|(key, state, last_hash)| LedgerTarget {
                key,
                state,
                last_hash,
            })
            .collect(),
        files,
    }
}

/// The daemon (`photosync::daemon::run`) running in this process, on the test's runtime.
pub struct InProcessDaemon {
    task: tokio::task::JoinHandle<Result<(), DaemonError>>,
    stop: CancellationToken,
    reloads: mpsc::Sender<()>,
    progress: watch::Receiver<Progress>,
    ledger: Ledger,
    pub stats: Arc<Stats>,
    /// Where `/healthz`, `/readyz` and `/metrics` answer, when asked for.
    pub addr: Option<SocketAddr>,
}

/// Starts the daemon on `env`'s config and returns once it is ready (its first reconcile pass
/// is done).
pub async fn spawn_daemon(env: &Env) -> InProcessDaemon {
    start_daemon(env, false).await
}

/// [`spawn_daemon`], serving its HTTP endpoints on a port of 127.0.0.1 the system picked.
pub async fn spawn_serving_daemon(env: &Env) -> InProcessDaemon {
    start_daemon(env, true).await
}

async fn start_daemon(env: &Env, serve: bool) -> InProcessDaemon {
    init_logs();
    let cfg = photosync::config::Config::load(&env.config).unwrap();
    let ledger = Ledger::open(&cfg.state.database).await.unwrap();
    let listener = serve.then(|| std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.as_ref().map(|l| l.local_addr().unwrap());
    let stats = Arc::new(Stats::default());
    let (reloads, requests) = mpsc::channel(1);
    let (ready, progress) = watch::channel(Progress::default());
    let stop = CancellationToken::new();
    let opts = Options {
        listener,
        reloads: Some(requests),
        stats: stats.clone(),
        ..Options::default()
    };
    let task = tokio::spawn(photosync::daemon::run(
        cfg,
        ledger.clone(),
        stop.clone(),
        ready,
        opts,
    ));
    let mut d = InProcessDaemon {
        task,
        stop,
        reloads,
        progress,
        ledger,
        stats,
        addr,
    };
    d.wait("readiness", |p| p.ready).await;
    d
}

impl InProcessDaemon {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits (bounded) until the daemon's progress satisfies `cond`; fails at once when the
    /// daemon ended instead.
    pub async fn wait(&mut self, what: &str, cond: impl Fn(&Progress) -> bool) -> Progress {
        let wait = async {
            loop {
                if cond(&self.progress.borrow_and_update()) {
                    return Ok(self.progress());
                }
                if self.task.is_finished() || self.progress.changed().await.is_err() {
                    return Err(());
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(60), wait).await {
            Ok(Ok(p)) => p,
            Ok(Err(())) => {
                let result = (&mut self.task).await;
                panic!("the daemon ended while waiting for {what}: {result:?}")
            }
            Err(tokio::time::error::Elapsed { .. }) => {
                panic!("timed out waiting for {what}: {:?}", self.progress())
            }
        }
    }

    /// Waits for a full pass that started after this call.
    pub async fn next_rescan(&mut self) -> Progress {
        let started = self.progress().rescans_started;
        self.wait("a rescan", |p| p.rescans > started).await
    }

    /// Asks for the config file to be read again.
    pub async fn reload(&self) {
        self.reloads.send(()).await.unwrap();
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr.expect("no server was asked for"))
    }

    /// Stops the daemon and returns what it returned.
    pub async fn stop(self) -> Result<(), DaemonError> {
        self.stop.cancel();
        self.finished().await
    }

    /// Waits (bounded) for the daemon to end by itself.
    pub async fn finished(self) -> Result<(), DaemonError> {
        let result = tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the daemon did not stop within 60 s")
            .expect("the daemon panicked");
        self.ledger.close().await;
        result
    }
}

/// Logs of in-process daemons go to stderr when RUST_LOG is set.
fn init_logs() {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// `photosync run` as a process, for what is about the process: signals, exit codes, its
/// footprint. It is ready when it tells systemd so (READY=1 on `NOTIFY_SOCKET`); its stderr
/// is collected.
pub struct DaemonProcess {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    notes: Arc<Mutex<Vec<String>>>,
}

impl DaemonProcess {
    pub async fn start(env: &Env) -> DaemonProcess {
        let socket_path = env.dir.path().join(format!(
            "notify-{}.sock",
            NOTIFY_SOCKETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_photosync"))
            .arg("-c")
            .arg(&env.config)
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("PHOTOSYNC_CLIENT_SECRET")
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
        let notes = Arc::new(Mutex::new(Vec::new()));
        let sink = notes.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().extend(text.lines().map(str::to_owned));
            }
        });
        let d = DaemonProcess { child, log, notes };
        d.wait_note("READY=1").await;
        d
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// What it sent to systemd so far, one `KEY=value` per line.
    pub fn notes(&self) -> Vec<String> {
        self.notes.lock().unwrap().clone()
    }

    /// Waits (bounded) until it has told systemd `note`.
    pub async fn wait_note(&self, note: &str) {
        let start = Instant::now();
        while !self.notes().iter().any(|n| n == note) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no `{note}` sent to systemd:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until its log holds `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no `{needle}` in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.pid().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    pub async fn stop(self) -> (Option<i32>, String) {
        self.signal("TERM");
        self.exit().await
    }

    /// Waits (bounded) for it to exit by itself; its exit code and its whole log.
    pub async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the daemon did not exit within 60 s:\n{}", self.log()))
            .unwrap();
        // Its stderr is closed now: read it to the end.
        wait_until("the end of the log", Duration::from_secs(10), || {
            Arc::strong_count(&self.log) == 1
        })
        .await;
        (status.code(), self.log())
    }
}

static NOTIFY_SOCKETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
