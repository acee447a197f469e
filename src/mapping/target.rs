//! What a file names: a [`Target`] (a user, group or contact), its key grammar, and the
//! normalised form of the names it is built from.
//!
//! Invariants: a target's names are NFC and, for UPNs, as the file writes them: that is what
//! goes into the Graph path, because Graph compares UPNs case-insensitively itself and a
//! lower-cased UPN may name nobody (`İ` lower-cases to two code points). Only the target key
//! folds case (see [`fold_case`]), so `Alice@x.jpg` and `alice@x.png` name the same target and a
//! conflict can be seen; [`Target::from_key`] reads back exactly what [`Target::key`] wrote.

use unicode_normalization::UnicodeNormalization;

use crate::config::{KeyKind, TargetKind};

/// A file that looks like a photo but whose place or name names no valid target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("file name is not valid UTF-8")]
    NotUtf8,
    #[error("file name has no stem to name a target")]
    EmptyName,
    #[error("`{name}` is not a user principal name (expected name@domain)")]
    NotAUpn { name: String },
    #[error(
        "`{name}` is not an object id (expected a GUID like 00000000-0000-0000-0000-000000000000)"
    )]
    NotAnId { name: String },
    #[error("`{name}` contains control characters")]
    ControlCharacters { name: String },
    #[error("`{name}` is not an e-mail address")]
    NotAMail { name: String },
    #[error("`{name}` has no row in the mapping file {file}")]
    NotInMapping { name: String, file: String },
    #[error("contact photos must be at <root>/<owner>/<contact id>.jpg or <root>/<owner>/<folder id>/<contact id>.jpg; this file is {depth} level(s) deep")]
    ContactLayout { depth: usize },
}

/// A Graph object that can have a photo.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub kind: TargetKind,
    /// The user (by UPN or id) or group id; for contacts the contact id. With `lookup`, the
    /// value to look up (a mail address or an employeeId).
    pub id: String,
    /// For contacts: the mailbox that owns them (UPN or id).
    pub owner: Option<String>,
    /// For contacts in a folder: the contact folder id.
    pub folder: Option<String>,
    /// Set when `id` is not something Graph accepts in a path and must be looked up first.
    pub lookup: Option<Lookup>,
}

/// A user property that names a user but cannot address one in a request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    Mail,
    EmployeeId,
}

impl Lookup {
    /// The property's name in Graph (for `$filter` and in target keys).
    pub fn property(self) -> &'static str {
        match self {
            Lookup::Mail => "mail",
            Lookup::EmployeeId => "employeeId",
        }
    }

    pub fn from_property(p: &str) -> Option<Lookup> {
        match p {
            "mail" => Some(Lookup::Mail),
            "employeeId" => Some(Lookup::EmployeeId),
            _ => None,
        }
    }

    pub fn from_key_kind(k: KeyKind) -> Option<Lookup> {
        match k {
            KeyKind::Mail => Some(Lookup::Mail),
            KeyKind::EmployeeId => Some(Lookup::EmployeeId),
            KeyKind::Upn | KeyKind::Id => None,
        }
    }
}

impl Target {
    pub fn user(id: &str) -> Target {
        Target {
            kind: TargetKind::User,
            id: id.to_owned(),
            owner: None,
            folder: None,
            lookup: None,
        }
    }

    /// The stable key the ledger and the queue know this target by, e.g. `user:alice@contoso.com`,
    /// `user(employeeId):004711` or `contact:bob@contoso.com/AAMk…`.
    /// UPNs (a user's id, a contact's owner) are case-folded here, and only here.
    pub fn key(&self) -> String {
        let mut k = match self.lookup {
            Some(l) => format!("{}({}):", self.kind.as_str(), l.property()),
            None => format!("{}:", self.kind.as_str()),
        };
        if let Some(o) = &self.owner {
            k.push_str(&fold_case(o));
            k.push('/');
        }
        if let Some(f) = &self.folder {
            k.push_str(f);
            k.push('/');
        }
        if self.kind == TargetKind::User && self.lookup.is_none() {
            k.push_str(&fold_case(&self.id));
        } else {
            k.push_str(&self.id);
        }
        k
    }

    /// Parses what [`Target::key`] produced.
    pub fn from_key(key: &str) -> Option<Target> {
        let (kind, rest) = key.split_once(':')?;
        if let Some(prop) = kind.strip_prefix("user(").and_then(|k| k.strip_suffix(')')) {
            let lookup = Lookup::from_property(prop)?;
            return (!rest.is_empty()).then(|| Target {
                lookup: Some(lookup),
                ..Target::user(rest)
            });
        }
        let kind = match kind {
            "user" => TargetKind::User,
            "group" => TargetKind::Group,
            "contact" => TargetKind::Contact,
            _ => return None,
        };
        if kind != TargetKind::Contact {
            return (!rest.is_empty()).then(|| Target {
                kind,
                id: rest.to_owned(),
                owner: None,
                folder: None,
                lookup: None,
            });
        }
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [o, id] => Some(Target {
                kind,
                id: (*id).to_owned(),
                owner: Some((*o).to_owned()),
                folder: None,
                lookup: None,
            }),
            [o, f, id] => Some(Target {
                kind,
                id: (*id).to_owned(),
                owner: Some((*o).to_owned()),
                folder: Some((*f).to_owned()),
                lookup: None,
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// A contact's owner directory is a UPN or a user object id.
pub(crate) fn normalise_owner(name: &str) -> Result<String, MappingError> {
    if name.contains('@') {
        normalise_key(name, KeyKind::Upn)
    } else {
        normalise_key(name, KeyKind::Id)
    }
}

/// Canonical form of a file stem for its key kind.
pub fn normalise_key(stem: &str, key: KeyKind) -> Result<String, MappingError> {
    let trimmed = stem.trim();
    // ASCII is already NFC: most names skip the normaliser (a tenth of a rescan's planning).
    let s: String = if trimmed.is_ascii() {
        trimmed.to_owned()
    } else {
        trimmed.nfc().collect()
    };
    if s.is_empty() {
        return Err(MappingError::EmptyName);
    }
    if s.chars().any(char::is_control) {
        return Err(MappingError::ControlCharacters { name: s });
    }
    match key {
        KeyKind::Upn => {
            let (local, domain) = s
                .rsplit_once('@')
                .ok_or_else(|| MappingError::NotAUpn { name: s.clone() })?;
            if local.is_empty() || domain.is_empty() || s.contains(char::is_whitespace) {
                return Err(MappingError::NotAUpn { name: s });
            }
            // As written: the key folds case, the Graph path must not.
            Ok(s)
        }
        KeyKind::Id => {
            if is_guid(&s) {
                Ok(s.to_ascii_lowercase())
            } else {
                Err(MappingError::NotAnId { name: s })
            }
        }
        KeyKind::Mail => {
            let ok = s
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.ends_with('.'));
            if ok && !s.contains(char::is_whitespace) {
                Ok(lowercase(s))
            } else {
                Err(MappingError::NotAMail { name: s })
            }
        }
        // HR numbers keep their leading zeros and case: Graph compares them as given.
        KeyKind::EmployeeId => Ok(s),
    }
}

/// Lowercased in place when ASCII (no second allocation).
fn lowercase(mut s: String) -> String {
    if s.is_ascii() {
        s.make_ascii_lowercase();
        s
    } else {
        s.to_lowercase()
    }
}

/// The case-insensitive form of a UPN inside photosync (target keys). Each character is
/// lower-cased only where that gives one character, so a key read back from the ledger still
/// names the user when sent to Graph (`İ` would lower-case to `i` and a combining dot).
pub fn fold_case(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    s.chars()
        .map(|c| {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(l), None) => l,
                _ => c,
            }
        })
        .collect()
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for k in [
            "user:a@b.c",
            "group:0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "user(employeeId):004711",
            "user(mail):a@b.c",
            "contact:o@b.c/c1",
            "contact:o@b.c/f1/c1",
        ] {
            assert_eq!(Target::from_key(k).unwrap().key(), k);
        }
        for bad in [
            "user:",
            "robot:x",
            "contact:only",
            "user(phone):1",
            "nokind",
        ] {
            assert_eq!(Target::from_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_are_normalised_per_kind() {
        // A UPN stays as written; only its key folds case.
        assert_eq!(
            normalise_key(" Alice@Contoso.COM ", KeyKind::Upn).unwrap(),
            "Alice@Contoso.COM"
        );
        assert_eq!(
            normalise_key("004711", KeyKind::EmployeeId).unwrap(),
            "004711"
        );
        assert!(matches!(
            normalise_key("a@b", KeyKind::Mail),
            Err(MappingError::NotAMail { .. })
        ));
        assert!(matches!(
            normalise_key("0AAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee", KeyKind::Id),
            Ok(id) if id == "0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
        ));
        assert_eq!(
            normalise_key("   ", KeyKind::Upn),
            Err(MappingError::EmptyName)
        );
    }

    #[test]
    fn a_upn_is_kept_as_written_and_its_key_folds_case() {
        // `İ` (U+0130) decomposed: NFC puts it back together.
        let written = normalise_key("I\u{307}lker.Y\u{131}lmaz@Contoso.com", KeyKind::Upn).unwrap();
        assert_eq!(written, "\u{130}lker.Y\u{131}lmaz@Contoso.com");
        let t = Target::user(&written);
        assert_eq!(t.id, written);
        // `İ` has no one-character lower case: kept, so the key still names the user.
        assert_eq!(t.key(), "user:\u{130}lker.y\u{131}lmaz@contoso.com");
        assert_eq!(
            Target::user("ALICE@x.COM").key(),
            Target::user("alice@X.com").key()
        );
        let contact = Target {
            owner: Some("Bob@X.com".into()),
            ..Target {
                kind: TargetKind::Contact,
                ..Target::user("AAMkC1")
            }
        };
        assert_eq!(contact.key(), "contact:bob@x.com/AAMkC1");
        let employee = Target {
            lookup: Some(Lookup::EmployeeId),
            ..Target::user("Ab12")
        };
        assert_eq!(employee.key(), "user(employeeId):Ab12");
    }
}
