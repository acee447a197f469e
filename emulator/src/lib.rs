//! A local stand-in for the parts of Microsoft Graph and Entra ID that photosync talks to:
//! the v2.0 token endpoint (client secret and certificate assertions), profile photo
//! endpoints for users, groups and contacts, user lookups by `$filter`, `$batch`, and the
//! tenant's photo-update setting. It speaks the same HTTP as the real services, with their
//! error shapes and limits, and adds fault injection (scripted and seeded random), request
//! recording and counters, so photosync's integration tests, README quickstart and
//! benchmarks run without a tenant.
//!
//! One port serves everything: [`Emulator::url`] is both the login URL and the Graph URL.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use graph_emulator::{Config, Emulator, User};
//! let emu = Emulator::start(Config::default()).await?;
//! emu.add_user(User::new("0b7e…", "jane@contoso.onmicrosoft.com"));
//! // point photosync at emu.url() for both login and Graph, run it, then:
//! let photo = emu.user_photo("jane@contoso.onmicrosoft.com");
//! emu.shutdown().await;
//! # let _ = photo; Ok(()) }
//! ```

mod config;
mod control;
mod directory;
mod faults;
mod filter;
mod graph;
mod handler;
mod identity;
mod record;
mod reply;
mod route;
mod server;
mod state;
mod token;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use bytes::Bytes;

pub use crate::config::{Config, Federation, ManagedIdentity, Photo, User};
pub use crate::faults::{Fault, FaultRule, Faults, Match, RetryAfter};
pub use crate::graph::MAX_PHOTO_BYTES;
pub use crate::record::{Recorded, RequestKind, TokenRequest};

use crate::directory::{contact_canonical, TargetRef};
use crate::state::{lock, Shared};

/// A running emulator. Cheap to clone (clones share one server); the server stops on
/// [`Emulator::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl Emulator {
    /// Starts on `127.0.0.1` with a free port; returns once the socket is listening.
    pub async fn start(config: Config) -> std::io::Result<Emulator> {
        Emulator::start_on(config, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts on `addr` (port 0 picks a free one); returns once the socket is listening.
    /// Fails when the address cannot be bound or `certificate_pem` holds no RSA certificate.
    pub async fn start_on(config: Config, addr: SocketAddr) -> std::io::Result<Emulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let host = if addr.ip().is_unspecified() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())).to_string()
        } else {
            addr.to_string()
        };
        let shared = Arc::new(Shared::new(config, format!("http://{host}"))?);
        let app = Router::new()
            .route("/_emulator/stats", get(control::stats))
            .route(
                "/_emulator/faults",
                get(control::get_faults).post(control::set_faults),
            )
            .route("/_emulator/reset-stats", post(control::reset_stats))
            .fallback(handler::handle)
            .with_state(Arc::clone(&shared));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, app, rx));
        Ok(Emulator {
            inner: Arc::new(Inner {
                shared,
                addr,
                shutdown: tx,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// `http://127.0.0.1:PORT`, to be used as both the login URL and the Graph URL.
    pub fn url(&self) -> String {
        self.inner.shared.url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Adds or replaces a user (matched by id, or by UPN).
    pub fn add_user(&self, user: User) {
        lock(&self.shared().dir).add_user(user);
    }

    /// Removes a user and its photo; unknown names are ignored.
    pub fn remove_user(&self, id_or_upn: &str) {
        lock(&self.shared().dir).remove_user(id_or_upn);
    }

    /// Adds a group; only unified (Microsoft 365) groups accept photos.
    pub fn add_group(&self, id: &str, unified: bool) {
        lock(&self.shared().dir).add_group(id, unified);
    }

    /// Adds a contact to an existing user's mailbox, in the default folder (`None`) or a
    /// contact folder. A contact in a folder is reached only through
    /// `/contactFolders/{folder}/contacts/{id}`. Ignored (with a warning) if the owner is
    /// unknown.
    pub fn add_contact(&self, owner_id_or_upn: &str, folder: Option<&str>, contact_id: &str) {
        if !lock(&self.shared().dir).add_contact(owner_id_or_upn, folder, contact_id) {
            tracing::warn!(owner = owner_id_or_upn, "contact owner is not a known user");
        }
    }

    /// The photo stored for a user, named by id or UPN.
    pub fn user_photo(&self, id_or_upn: &str) -> Option<Photo> {
        let dir = lock(&self.shared().dir);
        let user = dir.user(id_or_upn)?;
        dir.photo(&format!("user:{}", user.id)).cloned()
    }

    /// The photo stored for a group.
    pub fn group_photo(&self, id: &str) -> Option<Photo> {
        let mut dir = lock(&self.shared().dir);
        let r = dir.resolve(&TargetRef::Group(id.to_owned()), false, "");
        dir.photo(&r.canonical).cloned()
    }

    /// The photo stored for a contact.
    pub fn contact_photo(
        &self,
        owner_id_or_upn: &str,
        folder: Option<&str>,
        contact_id: &str,
    ) -> Option<Photo> {
        let mut dir = lock(&self.shared().dir);
        let r = dir.resolve(
            &TargetRef::Contact {
                owner: owner_id_or_upn.to_owned(),
                folder: folder.map(str::to_owned),
                id: contact_id.to_owned(),
            },
            false,
            "",
        );
        dir.photo(&r.canonical).cloned()
    }

    /// Changes a user's photo "behind photosync's back": new bytes, new etag. Ignored for
    /// unknown users.
    pub fn set_user_photo(&self, id_or_upn: &str, bytes: Bytes) {
        let store = self.shared().config.store_bytes;
        let mut dir = lock(&self.shared().dir);
        let Some(id) = dir.user(id_or_upn).map(|u| u.id.clone()) else {
            tracing::warn!(user = id_or_upn, "set_user_photo for an unknown user");
            return;
        };
        let ct = if bytes.starts_with(b"\x89PNG") {
            "image/png"
        } else {
            "image/jpeg"
        };
        dir.store_photo(&format!("user:{id}"), bytes, ct, store);
    }

    /// Changes the `source` answered by `GET /beta/admin/people/photoUpdateSettings`
    /// (`cloud` or `onPremises`).
    pub fn set_photo_update_source(&self, source: &str) {
        source.clone_into(&mut lock(&self.shared().photo_source));
    }

    /// Every answered (or dropped) request, in arrival order. Empty when
    /// `Config::record_requests` is false. Requests still being answered are not included.
    pub fn requests(&self) -> Vec<Recorded> {
        let mut list = lock(&self.shared().records).clone();
        list.sort_by_key(|r| r.at);
        list
    }

    /// Forgets recorded requests (counters stay).
    pub fn clear_requests(&self) {
        lock(&self.shared().records).clear();
    }

    /// Zeroes the counters of `/_emulator/stats` (including [`Emulator::tokens_issued`]) and
    /// forgets recorded requests, like `POST /_emulator/reset-stats`.
    pub fn reset_stats(&self) {
        control::reset(self.shared());
    }

    /// The counters of `GET /_emulator/stats`, as JSON.
    pub fn stats(&self) -> serde_json::Value {
        lock(&self.shared().stats).to_json(self.shared().started)
    }

    /// Replaces the random faults; their RNG restarts from `faults.seed`.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.shared().faults).set(faults);
    }

    /// Queues a scripted fault; rules are consulted in the order pushed, before random
    /// faults. A rule with `times == 0` is ignored.
    pub fn push_fault(&self, rule: FaultRule) {
        lock(&self.shared().faults).push_rule(rule);
    }

    /// Drops all queued scripted faults.
    pub fn clear_fault_rules(&self) {
        lock(&self.shared().faults).clear_rules();
    }

    /// The token requests received (token endpoint and managed identity endpoint), with their
    /// form fields and headers, when [`Config::record_requests`] is on.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        lock(&self.shared().token_requests).clone()
    }

    /// Access tokens issued since start (or the last stats reset).
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared().stats).tokens_issued()
    }

    /// The canonical target string for a contact, as it appears in [`Recorded::target`].
    pub fn contact_target(owner_id: &str, folder: Option<&str>, contact_id: &str) -> String {
        contact_canonical(owner_id, folder, contact_id)
    }

    /// Stops listening and closes connections: idle keep-alive connections at once,
    /// requests in flight are given at most one second to finish.
    pub async fn shutdown(self) {
        let _ = self.inner.shutdown.send(true);
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
