//! `photosync run` as a library: reconcile every source (the same pass as `backfill`), then
//! follow the tree: watcher events (debounced until files are stable), a full rescan every
//! `rescan_interval`, polling for roots that cannot be watched. One engine at a time does the
//! work; a reload with a valid config replaces it (in-flight uploads finish first, queued work
//! is planned again by the new engine's reconcile pass), an invalid one is logged and ignored.
//!
//! The caller owns the process: it binds the listener, turns signals into the stop token and
//! reload requests, and maps the result to an exit code. systemd: `Type=notify` (READY,
//! STATUS, STOPPING, WATCHDOG); without systemd the notify calls do nothing.

mod follow;
mod notify;
mod reload;
pub(crate) mod server;
mod triggers;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, EngineError};
use crate::graph::auth::AuthError;
use crate::ledger::Ledger;
use crate::stats::Stats;

use follow::Next;
use reload::Reloads;
pub use reload::{plain_loader, ConfigLoader};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The engine could not start with this configuration (its credentials cannot be loaded,
    /// its HTTP client cannot be built).
    #[error(transparent)]
    Start(EngineError),
    /// The token endpoint refused the credentials when the engine started.
    #[error(transparent)]
    Credentials(AuthError),
    /// The engine stopped on a fatal error: the ledger cannot be written, a task panicked.
    #[error(transparent)]
    Engine(EngineError),
    /// The listener handed in cannot be served.
    #[error("cannot serve /healthz, /readyz and /metrics")]
    Serve(#[source] std::io::Error),
}

impl DaemonError {
    /// A configuration problem found before any work was done, rather than a fatal runtime
    /// error.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            DaemonError::Start(EngineError::Auth(_)) | DaemonError::Serve(_)
        )
    }
}

/// What the daemon has done so far, published on the channel handed to [`run`] after every
/// pass and reload. `ready` turns true once, at the end of the first reconcile pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The first reconcile pass is done (systemd's READY=1).
    pub ready: bool,
    /// Passes finished, of either kind.
    pub passes: u64,
    /// Full passes (the reconcile pass of each engine and every rescan) started.
    pub rescans_started: u64,
    /// Full passes finished.
    pub rescans: u64,
    /// Photo deletions the safety limits refused, summed over passes.
    pub deletions_refused: u64,
    /// Valid reloads: each replaced the engine.
    pub reloads: u64,
    /// Reloads refused because the new configuration was not valid.
    pub reloads_refused: u64,
}

/// How the daemon is wired to its caller.
pub struct Options {
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (bound by the caller).
    pub listener: Option<std::net::TcpListener>,
    /// Each message asks for the configuration file to be read again.
    pub reloads: Option<mpsc::Receiver<()>>,
    /// How the configuration file is read on a reload.
    pub load_config: ConfigLoader,
    /// The counters the daemon keeps (the caller may watch them).
    pub stats: Arc<Stats>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            listener: None,
            reloads: None,
            load_config: plain_loader(),
            stats: Arc::new(Stats::default()),
        }
    }
}

/// What every engine of one daemon run shares.
struct Context {
    ledger: Ledger,
    stats: Arc<Stats>,
    stop: CancellationToken,
    progress: watch::Sender<Progress>,
    reloads: Reloads,
}

/// Runs the daemon until `stop` is cancelled (`Ok`) or a fatal error stops it. `ready`
/// receives its [`Progress`]. The ledger stays open: it belongs to the caller.
pub async fn run(
    mut cfg: Config,
    ledger: Ledger,
    stop: CancellationToken,
    ready: watch::Sender<Progress>,
    opts: Options,
) -> Result<(), DaemonError> {
    let Options {
        listener,
        reloads,
        load_config,
        stats,
    } = opts;
    Stats::flag(&stats.database_ok, true);
    // Ends the server and the watchdog with the daemon, without cancelling the caller's token.
    let done = stop.child_token();
    let server = listener
        .map(|l| server::serve(l, stats.clone(), done.clone()))
        .transpose()
        .map_err(DaemonError::Serve)?;
    let watchdog = notify::watchdog(done.clone());
    let mut cx = Context {
        ledger,
        stats,
        stop,
        progress: ready,
        reloads: Reloads::new(reloads, load_config),
    };
    let result = loop {
        match one_engine(&cfg, &mut cx).await {
            Ok(Next::Stop) => break Ok(()),
            Ok(Next::Reload(new)) => {
                tracing::info!("configuration reloaded; restarting the engine");
                cx.progress.send_modify(|p| p.reloads += 1);
                cfg = *new;
            }
            Err(e) => break Err(e),
        }
    };
    notify::stopping();
    done.cancel();
    if let Some(w) = watchdog {
        let _ = w.await;
    }
    if let Some(s) = server {
        let _ = s.await;
    }
    result
}

/// One engine's life: start, obtain a first token, follow the tree, and shut down — also
/// when the credentials are refused, so that every task it started is joined.
async fn one_engine(cfg: &Config, cx: &mut Context) -> Result<Next, DaemonError> {
    let engine_stop = cx.stop.child_token();
    let engine = Engine::start(
        cfg,
        Some(cx.ledger.clone()),
        false,
        cx.stats.clone(),
        engine_stop.clone(),
    )
    .map_err(DaemonError::Start)?;
    let engine = Arc::new(engine);
    let (outcome, grace) = match engine.warm_up().await {
        Err(e) if e.is_fatal() => (Err(DaemonError::Credentials(e)), Duration::ZERO),
        warm => {
            if let Err(e) = warm {
                tracing::warn!(error = %e, "no token yet; will retry");
            }
            let (next, followed) = follow::follow(cfg, &engine, cx).await;
            notify::status("stopping: finishing in-flight uploads");
            let outcome = followed.map(|()| next).map_err(DaemonError::Engine);
            (outcome, cfg.upload.shutdown_grace)
        }
    };
    engine_stop.cancel();
    // Every pass holding a clone was joined by `follow`.
    let shutdown = if let Some(e) = Arc::into_inner(engine) {
        e.shutdown(grace).await.map_err(DaemonError::Engine)
    } else {
        tracing::error!("the engine is still in use; it is not shut down");
        Ok(())
    };
    // The first error wins: a fatal error stops the engine, whose shutdown then reports it too.
    let next = outcome?;
    shutdown.map(|()| next)
}
