//! What the emulator remembers about traffic: one [`Recorded`] per answered request (when
//! `Config::record_requests` is on) and counters for `/_emulator/stats` (always).
//!
//! Invariant: counters are updated once per request, when its answer (or its dropped
//! connection) is decided, and never hold request bodies or tokens.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The kind of a request, as the emulator routed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RequestKind {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Token,
    /// `PUT .../photo/$value`.
    PhotoPut,
    /// `PATCH .../photo/$value`.
    PhotoPatch,
    /// `GET .../photo/$value`.
    PhotoGet,
    /// `GET .../photo` (metadata).
    PhotoMeta,
    /// `DELETE .../photo/$value`.
    PhotoDelete,
    /// `GET /v1.0/users?...` and `GET /v1.0/users/{id}`.
    UserQuery,
    /// `POST /v1.0/$batch`.
    Batch,
    /// `GET /beta/admin/people/photoUpdateSettings`.
    PhotoSettings,
    /// Anything else.
    Other,
}

impl RequestKind {
    /// Photo requests are the ones random faults, latency and the rate limit apply to.
    pub fn is_photo(self) -> bool {
        matches!(
            self,
            RequestKind::PhotoPut
                | RequestKind::PhotoPatch
                | RequestKind::PhotoGet
                | RequestKind::PhotoMeta
                | RequestKind::PhotoDelete
        )
    }

    pub fn is_upload(self) -> bool {
        matches!(self, RequestKind::PhotoPut | RequestKind::PhotoPatch)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Token => "Token",
            RequestKind::PhotoPut => "PhotoPut",
            RequestKind::PhotoPatch => "PhotoPatch",
            RequestKind::PhotoGet => "PhotoGet",
            RequestKind::PhotoMeta => "PhotoMeta",
            RequestKind::PhotoDelete => "PhotoDelete",
            RequestKind::UserQuery => "UserQuery",
            RequestKind::Batch => "Batch",
            RequestKind::PhotoSettings => "PhotoSettings",
            RequestKind::Other => "Other",
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token request as received: every form field (secrets included: the emulator is a test
/// tool, and this is only kept when requests are recorded) and the request's headers.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub path: String,
    pub form: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
}

/// One request as the emulator saw and answered it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Arrival time (monotonic).
    pub at: Instant,
    pub method: String,
    /// Path and query exactly as received, still percent-encoded.
    pub raw_path: String,
    /// Canonical target of photo requests (`user:<id>`, `group:<id>`,
    /// `contact:<ownerid>/<contactid>`, `contact:<ownerid>/<folder>/<contactid>`), with ids
    /// as stored in the emulator when the target is known; `None` for other requests.
    pub target: Option<String>,
    /// The status answered; 0 when the connection was dropped.
    pub status: u16,
    /// Length of the request body received.
    pub body_len: usize,
    pub client_request_id: Option<String>,
    /// Whether a bearer token was presented (the token itself is never kept).
    pub authorization: bool,
    pub kind: RequestKind,
}

/// Running counters behind `/_emulator/stats`.
pub(crate) struct Stats {
    since: Instant,
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_kind: BTreeMap<RequestKind, u64>,
    uploads: u64,
    bytes_uploaded: u64,
    tokens_issued: usize,
    upload_window: VecDeque<Instant>,
    max_in_window: usize,
    first_upload: Option<Instant>,
    last_upload: Option<Instant>,
    max_in_flight: usize,
}

impl Stats {
    pub fn new(since: Instant) -> Self {
        Stats {
            since,
            requests: 0,
            by_status: BTreeMap::new(),
            by_kind: BTreeMap::new(),
            uploads: 0,
            bytes_uploaded: 0,
            tokens_issued: 0,
            upload_window: VecDeque::new(),
            max_in_window: 0,
            first_upload: None,
            last_upload: None,
            max_in_flight: 0,
        }
    }

    /// Counts a photo PUT/PATCH arrival, whatever it will be answered, so the window
    /// measures how fast the client sends.
    pub fn upload_arrived(&mut self, at: Instant) {
        let window = Duration::from_secs(1);
        while self
            .upload_window
            .front()
            .is_some_and(|t| at.saturating_duration_since(*t) >= window)
        {
            self.upload_window.pop_front();
        }
        self.upload_window.push_back(at);
        self.max_in_window = self.max_in_window.max(self.upload_window.len());
    }

    pub fn in_flight(&mut self, now_in_flight: usize) {
        self.max_in_flight = self.max_in_flight.max(now_in_flight);
    }

    pub fn answered(&mut self, kind: RequestKind, status: u16) {
        self.requests += 1;
        *self.by_status.entry(status).or_default() += 1;
        *self.by_kind.entry(kind).or_default() += 1;
    }

    /// A photo was stored (2xx upload), arrived at `at`.
    pub fn stored(&mut self, at: Instant, len: usize) {
        self.uploads += 1;
        self.bytes_uploaded += len as u64;
        self.first_upload = Some(self.first_upload.map_or(at, |f| f.min(at)));
        self.last_upload = Some(self.last_upload.map_or(at, |l| l.max(at)));
    }

    pub fn token_issued(&mut self) {
        self.tokens_issued += 1;
    }

    pub fn tokens_issued(&self) -> usize {
        self.tokens_issued
    }

    pub fn to_json(&self, started: Instant) -> Value {
        let ms =
            |t: Option<Instant>| t.map(|t| t.saturating_duration_since(started).as_millis() as u64);
        let by_status: BTreeMap<String, u64> = self
            .by_status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let by_kind: BTreeMap<&str, u64> =
            self.by_kind.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        json!({
            "requests": self.requests,
            "by_status": by_status,
            "by_kind": by_kind,
            "uploads": self.uploads,
            "bytes_uploaded": self.bytes_uploaded,
            "tokens_issued": self.tokens_issued,
            "max_in_any_1s_window": self.max_in_window,
            "max_in_flight": self.max_in_flight,
            "first_upload_at_ms": ms(self.first_upload),
            "last_upload_at_ms": ms(self.last_upload),
            "since_ms": ms(Some(self.since)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_arrivals_within_one_second() {
        let t0 = Instant::now();
        let mut s = Stats::new(t0);
        for i in 0..10 {
            s.upload_arrived(t0 + Duration::from_millis(i * 100));
        }
        // 1.0 s later the first one has left the window.
        s.upload_arrived(t0 + Duration::from_secs(1));
        assert_eq!(s.max_in_window, 10);
        s.upload_arrived(t0 + Duration::from_millis(1150));
        assert_eq!(s.max_in_window, 10);
    }
}
