//! Two files for one target: the newest wins (ties: the greater path); the other is skipped and
//! reported. The decision is pure ([`contest`]); [`Claims`] remembers which file holds each
//! target in this pass.
//!
//! A target the ledger knows is keyed by the address of the snapshot's key: hashing a pointer
//! instead of the key string, 100,000 times a rescan.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::ledger::FastHash;

/// A file's claim on a target: its mtime and path, ordered as the contest orders them.
pub type Claim<'a> = (i64, Cow<'a, Path>);

/// Targets claimed by a file in this pass, with that file's mtime and path.
#[derive(Default)]
pub struct Claims<'a> {
    known: HashMap<usize, Claim<'a>, FastHash>,
    new: HashMap<String, Claim<'a>, FastHash>,
}

#[derive(Clone, Copy)]
pub enum ClaimKey<'k> {
    Known(usize),
    New(&'k str),
}

impl<'k> ClaimKey<'k> {
    /// `known` is the snapshot's entry for `key`, if it has one.
    pub fn of(known: Option<&Arc<str>>, key: &'k str) -> Self {
        match known {
            Some(k) => ClaimKey::Known(address(k)),
            None => ClaimKey::New(key),
        }
    }
}

impl<'a> Claims<'a> {
    pub fn get(&self, key: &ClaimKey<'_>) -> Option<&Claim<'a>> {
        match key {
            ClaimKey::Known(a) => self.known.get(a),
            ClaimKey::New(k) => self.new.get(*k),
        }
    }

    pub fn insert(&mut self, key: ClaimKey<'_>, claim: Claim<'a>) {
        match key {
            ClaimKey::Known(a) => self.known.insert(a, claim),
            ClaimKey::New(k) => self.new.insert(k.to_owned(), claim),
        };
    }
}

/// The address of a snapshot string: its identity while the snapshot lives.
pub fn address(s: &Arc<str>) -> usize {
    s.as_ptr() as usize
}

/// How a file fares against the other files that name its target.
#[derive(Debug, PartialEq, Eq)]
pub enum Contest<'p> {
    /// No other file names the target.
    Alone,
    /// It was already the claimant (met again).
    Same,
    /// It is newer than every rival: `loser` is skipped.
    Wins { loser: (i64, &'p Path) },
    /// A rival is newer: this file is skipped.
    Loses { winner: (i64, &'p Path) },
}

/// Decides between `mine` and its rivals: the file that claimed the target earlier in this pass
/// (`claimed`) and the other files the ledger maps to it that still exist (`others`, with their
/// mtimes). The newest wins; ties go to the greater path.
pub fn contest<'p>(
    mine: (i64, &'p Path),
    claimed: Option<(i64, &'p Path)>,
    others: impl IntoIterator<Item = (i64, &'p Path)>,
) -> Contest<'p> {
    let mut rival = claimed;
    for other in others {
        if other.1 == mine.1 || rival.is_some_and(|r| r.1 == other.1) {
            continue;
        }
        if rival.is_none_or(|r| other > r) {
            rival = Some(other);
        }
    }
    match rival {
        None => Contest::Alone,
        Some(r) if r > mine => Contest::Loses { winner: r },
        Some(r) if r.1 == mine.1 => Contest::Same,
        Some(r) => Contest::Wins { loser: r },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn a_file_alone_claims_its_target() {
        assert_eq!(contest((5, p("/a")), None, []), Contest::Alone);
        assert_eq!(contest((5, p("/a")), None, [(9, p("/a"))]), Contest::Alone);
    }

    #[test]
    fn the_newest_file_wins() {
        assert_eq!(
            contest((5, p("/a")), Some((9, p("/b"))), []),
            Contest::Loses {
                winner: (9, p("/b"))
            }
        );
        assert_eq!(
            contest((9, p("/a")), Some((5, p("/b"))), []),
            Contest::Wins {
                loser: (5, p("/b"))
            }
        );
    }

    #[test]
    fn a_tie_goes_to_the_greater_path() {
        assert_eq!(
            contest((5, p("/a")), Some((5, p("/b"))), []),
            Contest::Loses {
                winner: (5, p("/b"))
            }
        );
        assert_eq!(
            contest((5, p("/b")), Some((5, p("/a"))), []),
            Contest::Wins {
                loser: (5, p("/a"))
            }
        );
    }

    #[test]
    fn files_the_ledger_knows_are_rivals_too() {
        // Not seen in this pass yet (a budgeted or watcher pass), but on disk and newer.
        assert_eq!(
            contest((5, p("/a")), None, [(3, p("/c")), (8, p("/b"))]),
            Contest::Loses {
                winner: (8, p("/b"))
            }
        );
        assert_eq!(
            contest(
                (9, p("/a")),
                Some((4, p("/c"))),
                [(3, p("/c")), (8, p("/b"))]
            ),
            Contest::Wins {
                loser: (8, p("/b"))
            }
        );
    }

    #[test]
    fn meeting_the_claimant_again_is_no_conflict() {
        assert_eq!(contest((5, p("/a")), Some((5, p("/a"))), []), Contest::Same);
    }
}
