//! The typed words the ledger stores as text: a target's state and a failure's class.
//!
//! `as_str` is the database text (and the text `status --json` prints, a stable interface);
//! `FromStr` reads it back strictly. Readers use [`TargetState::from_db`] and
//! [`FailureClass::from_db`], which map text this version does not know (a ledger written by a
//! newer photosync, or edited by hand) to the choice that can only cost an extra upload.

use std::fmt;
use std::str::FromStr;

/// Where a target stands. The `targets.state` column holds one of these (a CHECK constraint).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetState {
    /// Graph answered 2xx to the last upload of `last_hash`.
    Synced,
    /// To be attempted again: an operator cleared its failure (`retry`), or `verify` found the
    /// photo changed behind photosync's back. Also what unknown text reads as.
    #[default]
    Pending,
    /// The last attempt failed; the failure's class says when it is tried again.
    Failed,
    /// The user it names was not found (yet); looked up again on the parked schedule.
    Parked,
    /// Its photo was deleted because its file is gone (`on_delete = "delete"`).
    Deleted,
}

impl TargetState {
    /// Every state, for totals that list the empty ones too.
    pub const ALL: [TargetState; 5] = [
        TargetState::Synced,
        TargetState::Pending,
        TargetState::Failed,
        TargetState::Parked,
        TargetState::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Synced => "synced",
            TargetState::Pending => "pending",
            TargetState::Failed => "failed",
            TargetState::Parked => "parked",
            TargetState::Deleted => "deleted",
        }
    }

    /// The state as the ledger stores it; unknown text reads as [`TargetState::Pending`]: the
    /// photo is uploaded again (idempotent), rather than taken as synced (it would never be
    /// sent) or deleted (its photo could be deleted).
    pub fn from_db(text: &str) -> TargetState {
        text.parse().unwrap_or_default()
    }
}

/// The outcome of a failed attempt, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// Retried later (after `next_attempt_at`, or at the next backfill).
    Transient,
    /// Not retried until the file changes or an operator runs `retry`.
    Permanent,
    /// Refused before sending (not an image, too large, bad name).
    Local,
    /// The user it names does not exist yet; looked up again on the parked schedule.
    Parked,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Permanent => "permanent",
            FailureClass::Local => "local",
            FailureClass::Parked => "parked",
        }
    }

    /// The class as the ledger stores it; unknown text reads as no class, which the planner
    /// retries like a failure it knows nothing about (never as permanent: it would never be
    /// sent again).
    pub fn from_db(text: &str) -> Option<FailureClass> {
        text.parse().ok()
    }

    /// The state a target is left in by a failure of this class.
    pub fn target_state(self) -> TargetState {
        match self {
            FailureClass::Parked => TargetState::Parked,
            FailureClass::Transient | FailureClass::Permanent | FailureClass::Local => {
                TargetState::Failed
            }
        }
    }
}

/// Text in the ledger that names no known state or class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?} in the ledger")]
pub struct UnknownText {
    what: &'static str,
    text: String,
}

impl FromStr for TargetState {
    type Err = UnknownText;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TargetState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownText {
                what: "target state",
                text: s.to_owned(),
            })
    }
}

impl FromStr for FailureClass {
    type Err = UnknownText;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            FailureClass::Transient,
            FailureClass::Permanent,
            FailureClass::Local,
            FailureClass::Parked,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| UnknownText {
            what: "failure class",
            text: s.to_owned(),
        })
    }
}

impl fmt::Display for TargetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_back_what_they_write() {
        for s in TargetState::ALL {
            assert_eq!(s.as_str().parse::<TargetState>(), Ok(s));
            assert_eq!(TargetState::from_db(s.as_str()), s);
            assert_eq!(s.to_string(), s.as_str());
        }
        let texts: Vec<_> = TargetState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(texts, ["synced", "pending", "failed", "parked", "deleted"]);
    }

    #[test]
    fn classes_read_back_what_they_write() {
        for c in [
            FailureClass::Transient,
            FailureClass::Permanent,
            FailureClass::Local,
            FailureClass::Parked,
        ] {
            assert_eq!(c.as_str().parse::<FailureClass>(), Ok(c));
            assert_eq!(FailureClass::from_db(c.as_str()), Some(c));
        }
        assert_eq!(FailureClass::Transient.as_str(), "transient");
        assert_eq!(FailureClass::Parked.target_state(), TargetState::Parked);
        assert_eq!(FailureClass::Local.target_state(), TargetState::Failed);
    }

    #[test]
    fn unknown_text_reads_as_the_choice_that_uploads_again() {
        for text in ["", "Synced", "synced ", "archived", "unknown"] {
            let e = text.parse::<TargetState>().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("unknown target state {text:?} in the ledger")
            );
            assert_eq!(TargetState::from_db(text), TargetState::Pending);
            assert!(text.parse::<FailureClass>().is_err());
            assert_eq!(FailureClass::from_db(text), None);
        }
    }
}
