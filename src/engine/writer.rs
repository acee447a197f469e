//! The ledger writer: the only task that writes the ledger. Everything else sends it ops through
//! a [`LedgerSink`]. Whatever has arrived since the last commit goes into one transaction.
//!
//! A failed commit is fatal: the writer cancels the run (nothing more is uploaded that cannot be
//! recorded) and returns the error, which [`super::Engine`] gets from the writer's join result.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::ledger::{Ledger, LedgerError, Op};
use crate::stats::Stats;

/// Ops gathered into one transaction at most.
const MAX_BATCH: usize = 1000;

enum Msg {
    Op(Box<Op>),
    Flush(oneshot::Sender<()>),
}

/// Where ledger writes go; cheap to clone. The writer ends when every sink is dropped.
#[derive(Clone)]
pub struct LedgerSink {
    tx: mpsc::Sender<Msg>,
}

impl LedgerSink {
    pub async fn send(&self, op: Op) {
        if self.tx.send(Msg::Op(Box::new(op))).await.is_err() {
            tracing::error!("ledger writer gone; outcome not recorded");
        }
    }

    /// Waits until everything sent so far is committed (or the writer has stopped).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Starts the writer; its result is the error that stopped it, if one did.
pub fn start(
    ledger: Ledger,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> (LedgerSink, tokio::task::JoinHandle<Result<(), LedgerError>>) {
    let (tx, rx) = mpsc::channel(4096);
    let task = tokio::spawn(run(ledger, rx, stats, cancel));
    (LedgerSink { tx }, task)
}

async fn run(
    ledger: Ledger,
    mut rx: mpsc::Receiver<Msg>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) -> Result<(), LedgerError> {
    let mut batch = Vec::with_capacity(512);
    let mut flushes = Vec::new();
    while let Some(msg) = rx.recv().await {
        let mut next = Some(msg);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Op(op) => batch.push(*op),
                Msg::Flush(done) => flushes.push(done),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let applied = ledger.apply(&batch).await;
            Stats::flag(&stats.database_ok, applied.is_ok());
            if let Err(e) = applied {
                tracing::error!(error = %e, database = %ledger.path().display(), "cannot write the ledger; stopping");
                cancel.cancel();
                return Err(e);
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    Ok(())
}
