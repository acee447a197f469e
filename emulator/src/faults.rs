//! Fault injection: scripted rules ([`FaultRule`]) that hit the next matching requests
//! deterministically, then random faults ([`Faults`]) drawn from a seeded RNG for photo
//! requests. Both are decided here; the handlers only carry out the verdict.
//!
//! Invariant: a rule is consumed exactly `times` times and scripted rules are consulted
//! before the rate limit and before any random draw, so tests can script an exact sequence.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::record::RequestKind;

/// How a 429 or 503 states when to come back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`, printed as Rust prints the number: `1`, `2.128`.
    Seconds(f64),
    /// `Retry-After: <HTTP-date>` one to two seconds ahead (HTTP-dates have whole seconds).
    HttpDate,
    /// No `Retry-After` header at all.
    None,
}

impl Default for RetryAfter {
    fn default() -> Self {
        RetryAfter::Seconds(1.0)
    }
}

impl RetryAfter {
    /// The header value, or `None` when the header is left out.
    pub(crate) fn header_value(self) -> Option<String> {
        match self {
            RetryAfter::Seconds(s) => {
                let s = if s.is_finite() && s > 0.0 { s } else { 0.0 };
                Some(format!("{s}"))
            }
            RetryAfter::HttpDate => Some(httpdate::fmt_http_date(
                std::time::SystemTime::now() + Duration::from_secs(2),
            )),
            RetryAfter::None => None,
        }
    }
}

impl fmt::Display for RetryAfter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryAfter::Seconds(s) => write!(f, "{s}"),
            RetryAfter::HttpDate => f.write_str("http-date"),
            RetryAfter::None => f.write_str("none"),
        }
    }
}

impl std::str::FromStr for RetryAfter {
    type Err = String;

    /// `1`, `2.128`, `http-date` or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http-date" | "httpdate" | "date" => Ok(RetryAfter::HttpDate),
            "none" | "" => Ok(RetryAfter::None),
            other => other
                .trim_end_matches('s')
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(RetryAfter::Seconds)
                .ok_or_else(|| {
                    format!("retry-after must be seconds, `http-date` or `none`, not {s:?}")
                }),
        }
    }
}

// JSON form: a number of seconds, "http-date", "none" or null.
impl Serialize for RetryAfter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RetryAfter::Seconds(s) => serializer.serialize_f64(*s),
            RetryAfter::HttpDate => serializer.serialize_str("http-date"),
            RetryAfter::None => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for RetryAfter {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
            Null(()),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(RetryAfter::Seconds(n.max(0.0))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Raw::Null(()) => Ok(RetryAfter::None),
        }
    }
}

/// Random faults applied to Graph photo requests (`PhotoPut`, `PhotoPatch`, `PhotoGet`,
/// `PhotoMeta`, `PhotoDelete`); token requests, user queries and batches are never hit.
/// `Default` is no fault at all.
///
/// Order per photo request: `latency`, then the rate limit, then one draw that picks reset,
/// 500 or 503 by their shares, then an independent draw for a stall.
///
/// JSON (`POST /_emulator/faults`): every field optional; durations as humantime strings
/// (`"70s"`, `"5ms"`); `retry_after` a number of seconds, `"http-date"` or `"none"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Photo requests per second allowed (sliding window of one second, or of `1/rate`
    /// seconds holding one request when below 1); beyond it: 429 with `Retry-After`.
    pub rate_limit: Option<f64>,
    /// How 429 and 503 answers state `Retry-After`.
    pub retry_after: RetryAfter,
    /// Share (0..1) answered 500 `UnknownError`.
    pub error_500: f64,
    /// Share answered 503 `serviceNotAvailable` with `Retry-After`.
    pub error_503: f64,
    /// Share whose connection is dropped with a TCP reset and no response.
    pub reset: f64,
    /// Share that waits `stall_for` before being answered normally.
    pub stall: f64,
    #[serde(with = "humantime_serde")]
    pub stall_for: Duration,
    /// Added to every photo request before anything else.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// RNG seed: the same seed and the same request order give the same faults.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: None,
            retry_after: RetryAfter::default(),
            error_500: 0.0,
            error_503: 0.0,
            reset: 0.0,
            stall: 0.0,
            stall_for: Duration::from_secs(70),
            latency: Duration::ZERO,
            seed: 0,
        }
    }
}

/// Which requests a [`FaultRule`] applies to. Control endpoints (`/_emulator/...`) are
/// never matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Every request, token requests and user queries included.
    Any,
    /// Requests of one kind.
    Kind(RequestKind),
    /// Photo requests for one canonical target (`user:<id>`, `group:<id>`,
    /// `contact:<ownerid>/<contactid>`, `contact:<ownerid>/<folder>/<contactid>`), compared
    /// case-insensitively. `user:<upn>` also matches that user.
    Target(String),
    /// Requests whose raw path and query (still percent-encoded) contain this text.
    PathContains(String),
}

/// What a [`FaultRule`] does instead of normal handling.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer `status` with a Graph error body carrying `code` (an Entra-style body for token
    /// requests) and, when given, a `Retry-After` header.
    Status {
        status: u16,
        code: String,
        retry_after: Option<RetryAfter>,
    },
    /// Answer `status` with exactly this body and content type (a proxy's page, a token
    /// answer without a usable token).
    Body {
        status: u16,
        content_type: String,
        body: String,
    },
    /// Drop the TCP connection with a reset; the client gets no response.
    Reset,
    /// Wait this long, then handle the request normally.
    Stall(Duration),
}

/// A scripted fault: the next `times` requests that match get `fault`.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub matcher: Match,
    pub fault: Fault,
    pub times: usize,
}

impl FaultRule {
    /// Shorthand for the common case.
    pub fn new(matcher: Match, fault: Fault, times: usize) -> Self {
        FaultRule {
            matcher,
            fault,
            times,
        }
    }

    /// `status` with Graph error `code` and no `Retry-After`.
    pub fn status(matcher: Match, status: u16, code: &str, times: usize) -> Self {
        FaultRule::new(
            matcher,
            Fault::Status {
                status,
                code: code.to_owned(),
                retry_after: None,
            },
            times,
        )
    }
}

/// What the request being decided looks like to the matchers.
pub(crate) struct Probe<'a> {
    pub kind: RequestKind,
    pub raw_path: &'a str,
    pub target: Option<&'a str>,
    /// `user:<upn>` for user targets, so rules can name users either way.
    pub alias: Option<&'a str>,
}

impl Match {
    fn matches(&self, probe: &Probe<'_>) -> bool {
        match self {
            Match::Any => true,
            Match::Kind(kind) => *kind == probe.kind,
            Match::Target(t) => {
                probe.target.is_some_and(|c| c.eq_ignore_ascii_case(t))
                    || probe.alias.is_some_and(|a| a.eq_ignore_ascii_case(t))
            }
            Match::PathContains(s) => probe.raw_path.contains(s.as_str()),
        }
    }
}

/// The random verdict for one photo request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    Pass,
    RateLimited(RetryAfter),
    Error500,
    Error503(RetryAfter),
    Reset,
}

/// Live fault state: the configured faults, their RNG, the rate window and the rule queue.
pub(crate) struct FaultState {
    faults: Faults,
    rng: StdRng,
    admitted: VecDeque<Instant>,
    rules: VecDeque<FaultRule>,
}

impl FaultState {
    pub fn new() -> Self {
        FaultState {
            faults: Faults::default(),
            rng: StdRng::seed_from_u64(0),
            admitted: VecDeque::new(),
            rules: VecDeque::new(),
        }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Replaces the random faults and restarts their RNG and rate window, so a run that sets
    /// the same faults sees the same sequence.
    pub fn set(&mut self, faults: Faults) {
        self.rng = StdRng::seed_from_u64(faults.seed);
        self.admitted.clear();
        self.faults = faults;
    }

    pub fn push_rule(&mut self, rule: FaultRule) {
        if rule.times > 0 {
            self.rules.push_back(rule);
        }
    }

    pub fn clear_rules(&mut self) {
        self.rules.clear();
    }

    /// Consumes one use of the first rule that matches.
    pub fn take_rule(&mut self, probe: &Probe<'_>) -> Option<Fault> {
        let pos = self.rules.iter().position(|r| r.matcher.matches(probe))?;
        let rule = self.rules.get_mut(pos)?;
        rule.times -= 1;
        let fault = rule.fault.clone();
        if rule.times == 0 {
            self.rules.remove(pos);
        }
        Some(fault)
    }

    /// Decides the rate limit and the random faults for one photo request arriving `now`.
    /// Returns the verdict and how long to stall before answering.
    pub fn draw(&mut self, now: Instant) -> (Verdict, Duration) {
        let f = &self.faults;
        if let Some(rate) = f.rate_limit {
            let (allowed, window) = if rate >= 1.0 {
                (rate.floor() as usize, Duration::from_secs(1))
            } else if rate > 0.0 {
                (1, Duration::from_secs_f64((1.0 / rate).min(86_400.0)))
            } else {
                (0, Duration::from_secs(1))
            };
            while self
                .admitted
                .front()
                .is_some_and(|t| now.duration_since(*t) >= window)
            {
                self.admitted.pop_front();
            }
            if self.admitted.len() >= allowed {
                return (Verdict::RateLimited(f.retry_after), Duration::ZERO);
            }
            self.admitted.push_back(now);
        }
        if f.reset <= 0.0 && f.error_500 <= 0.0 && f.error_503 <= 0.0 && f.stall <= 0.0 {
            return (Verdict::Pass, Duration::ZERO);
        }
        let r: f64 = self.rng.gen();
        let verdict = if r < f.reset {
            Verdict::Reset
        } else if r < f.reset + f.error_500 {
            Verdict::Error500
        } else if r < f.reset + f.error_500 + f.error_503 {
            Verdict::Error503(f.retry_after)
        } else {
            Verdict::Pass
        };
        let stall = if f.stall > 0.0 && self.rng.gen::<f64>() < f.stall {
            f.stall_for
        } else {
            Duration::ZERO
        };
        (verdict, stall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kind: RequestKind) -> Probe<'static> {
        Probe {
            kind,
            raw_path: "/v1.0/users/a/photo/$value",
            target: Some("user:A"),
            alias: Some("user:a@contoso.com"),
        }
    }

    #[test]
    fn rules_are_consumed_in_order() {
        let mut s = FaultState::new();
        s.push_rule(FaultRule::new(
            Match::Target("user:a".into()),
            Fault::Reset,
            2,
        ));
        s.push_rule(FaultRule::status(Match::Any, 500, "UnknownError", 1));
        assert_eq!(
            s.take_rule(&probe(RequestKind::PhotoPut)),
            Some(Fault::Reset)
        );
        assert_eq!(
            s.take_rule(&probe(RequestKind::PhotoPut)),
            Some(Fault::Reset)
        );
        assert!(matches!(
            s.take_rule(&probe(RequestKind::PhotoPut)),
            Some(Fault::Status { status: 500, .. })
        ));
        assert_eq!(s.take_rule(&probe(RequestKind::PhotoPut)), None);
    }

    #[test]
    fn target_matches_upn_alias() {
        let mut s = FaultState::new();
        s.push_rule(FaultRule::new(
            Match::Target("user:A@contoso.com".into()),
            Fault::Reset,
            1,
        ));
        assert_eq!(
            s.take_rule(&probe(RequestKind::PhotoGet)),
            Some(Fault::Reset)
        );
    }

    #[test]
    fn rate_limit_window() {
        let mut s = FaultState::new();
        s.set(Faults {
            rate_limit: Some(2.0),
            ..Faults::default()
        });
        let t0 = Instant::now();
        assert_eq!(s.draw(t0).0, Verdict::Pass);
        assert_eq!(s.draw(t0).0, Verdict::Pass);
        assert!(matches!(s.draw(t0).0, Verdict::RateLimited(_)));
        assert_eq!(s.draw(t0 + Duration::from_secs(1)).0, Verdict::Pass);
    }

    #[test]
    fn same_seed_same_faults() {
        let faults = Faults {
            error_500: 0.3,
            reset: 0.2,
            seed: 7,
            ..Faults::default()
        };
        let run = || {
            let mut s = FaultState::new();
            s.set(faults.clone());
            let now = Instant::now();
            (0..50).map(|_| s.draw(now).0).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            RetryAfter::Seconds(1.0).header_value().as_deref(),
            Some("1")
        );
        assert_eq!(
            RetryAfter::Seconds(2.128).header_value().as_deref(),
            Some("2.128")
        );
        assert_eq!(RetryAfter::None.header_value(), None);
        assert!(RetryAfter::HttpDate
            .header_value()
            .is_some_and(|v| v.ends_with("GMT")));
        let f: Faults =
            serde_json::from_str(r#"{"retry_after":"http-date","stall_for":"5s","reset":0.5}"#)
                .expect("parse");
        assert_eq!(f.retry_after, RetryAfter::HttpDate);
        assert_eq!(f.stall_for, Duration::from_secs(5));
        let f: Faults = serde_json::from_str(r#"{"retry_after":2.5}"#).expect("parse");
        assert_eq!(f.retry_after, RetryAfter::Seconds(2.5));
    }
}
