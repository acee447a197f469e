//! Serving connections by hand with hyper-util instead of `axum::serve`, for two things
//! axum cannot do: dropping a connection with a TCP reset and no response when a handler
//! asks for it ([`crate::reply::DropConnection`]), and a shutdown whose wait is bounded.
//!
//! Invariants: a reset sets `SO_LINGER 0` before the socket's last descriptor is closed, so
//! the peer gets RST rather than FIN; after shutdown is signalled no connection is accepted,
//! idle keep-alive connections close at once, and the rest get [`GRACE`] to finish.

use std::convert::Infallible;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::reply::DropConnection;

/// How long in-flight requests may take to finish once shutdown starts.
pub(crate) const GRACE: Duration = Duration::from_secs(1);
/// How long a dropped request's future lingers on HTTP/2, where the connection task does not
/// own it; on HTTP/1 it is dropped with the connection at once.
const DROPPED_REQUEST_LINGER: Duration = Duration::from_secs(5);

pub(crate) async fn serve(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(stream, app.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(joined) = conns.join_next(), if !conns.is_empty() => {
                if let Err(e) = joined {
                    if e.is_panic() {
                        tracing::error!(error = %e, "connection task panicked");
                    }
                }
            }
            // A closed channel (the emulator was dropped) counts as a shutdown too.
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::debug!(
            open = conns.len(),
            "aborting connections after grace period"
        );
        conns.shutdown().await;
    }
}

async fn serve_connection(stream: TcpStream, app: Router, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    // A second descriptor of the socket lets the reset path set SO_LINGER after hyper owns
    // the stream; it must be dropped after the connection so that its close sends the RST.
    let socket: Option<OwnedFd> = stream.as_fd().try_clone_to_owned().ok();
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = Arc::clone(&reset);
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let app = app.clone();
            let reset = Arc::clone(&reset);
            async move {
                let resp = match app.oneshot(req.map(Body::new)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if resp.extensions().get::<DropConnection>().is_some() {
                    reset.notify_one();
                    tokio::time::sleep(DROPPED_REQUEST_LINGER).await;
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    if *shutdown.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        draining = true;
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = reset.notified() => {
                if let Some(fd) = &socket {
                    let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
                }
                break;
            }
            _ = shutdown.changed(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}
