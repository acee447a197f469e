//! `photosync run`: the daemon ([`crate::daemon`]) as a process: SIGTERM/SIGINT stop it
//! (in-flight uploads finish), SIGHUP reloads the config, and the result is an exit code.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::daemon::{self, Options, Progress};
use crate::stats::Stats;

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(config_path: &Path, _args: Args) -> u8 {
    let cfg = match super::load_config(config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _lock = match super::lock_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let ledger = match super::open_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let listener = match cfg.server.listen {
        Some(addr) => match std::net::TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: cannot listen on {addr} ([server] listen): {e}");
                return exit::USAGE;
            }
        },
        None => None,
    };
    let stop = CancellationToken::new();
    super::stop_on_signals(stop.clone());
    let opts = Options {
        listener,
        reloads: Some(reload_on_sighup()),
        load_config: Arc::new(|path| super::try_load_config(path).map_err(Into::into)),
        stats: Arc::new(Stats::default()),
    };
    let (ready, _progress) = watch::channel(Progress::default());
    let result = daemon::run(cfg, ledger.clone(), stop, ready, opts).await;
    ledger.close().await;
    let code = match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            if e.is_usage() {
                exit::USAGE
            } else {
                exit::FATAL
            }
        }
    };
    tracing::info!(code, "stopped");
    code
}

/// A reload request for every SIGHUP (several before the daemon looks count as one). The
/// handler is installed before this returns: SIGHUP's default action ends the process.
fn reload_on_sighup() -> mpsc::Receiver<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = mpsc::channel(1);
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP; reloading is not available");
        return rx;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reading the configuration again");
            if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                return;
            }
        }
    });
    rx
}
