//! From a file's place in a source tree to the Graph object it is the photo of.
//!
//! The tree says which kind (user, group, contact), the file name says who. This module is pure:
//! no I/O, so every rule can be tested exhaustively. Invariants:
//! - a target key is normalised (UPNs lower-cased, Unicode NFC), so `Alice.jpg` and `alice.png`
//!   name the same target and a conflict can be seen;
//! - a target's Graph path is built only from percent-encoded segments, so no file name can reach
//!   an unintended URL (`..`, `/`, `?`, `#` never survive unencoded).

pub mod file;

use std::path::{Component, Path};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use unicode_normalization::UnicodeNormalization;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::config::{KeyKind, SourceConfig, TargetKind};
pub use crate::mapping::file::MapTable;

/// Extensions treated as photos; the content's magic bytes still decide the format.
const PHOTO_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "tif", "tiff", "bmp",
];

/// Suffixes of files that are still being written by a copy tool or editor.
const TEMP_SUFFIXES: &[&str] = &[
    "~",
    ".tmp",
    ".temp",
    ".part",
    ".partial",
    ".swp",
    ".crdownload",
    ".download",
];

/// Files that operating systems leave in shared folders.
const JUNK_NAMES: &[&str] = &["thumbs.db", "desktop.ini", "ehthumbs.db"];

/// Everything but RFC 3986 unreserved characters is encoded; `@` and `$` stay literal because
/// they are common in UPNs and Graph documents them unencoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b'$');

/// Why a file in a source tree is not a photo to sync; these are counted, not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    Hidden,
    Temporary,
    NotAPhoto,
    /// Left out by the source's `include`/`exclude` globs.
    Excluded,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Hidden => "hidden",
            Skip::Temporary => "temporary",
            Skip::NotAPhoto => "not_a_photo",
            Skip::Excluded => "excluded",
        }
    }
}

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
    pub fn key(&self) -> String {
        let mut k = match self.lookup {
            Some(l) => format!("{}({}):", self.kind.as_str(), l.property()),
            None => format!("{}:", self.kind.as_str()),
        };
        if let Some(o) = &self.owner {
            k.push_str(o);
            k.push('/');
        }
        if let Some(f) = &self.folder {
            k.push_str(f);
            k.push('/');
        }
        k.push_str(&self.id);
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

    /// The path of this target's photo resource below `{graph_url}/v1.0`, e.g.
    /// `/users/alice@contoso.com/photo`. Append `/$value` for the bytes. A target with a
    /// `lookup` must be resolved first (see `resolve`).
    pub fn photo_path(&self) -> String {
        debug_assert!(self.lookup.is_none(), "photo_path of an unresolved {self}");
        match self.kind {
            TargetKind::User => format!("{}/photo", user_segment(&self.id)),
            TargetKind::Group => format!("/groups/{}/photo", encode(&self.id)),
            TargetKind::Contact => {
                let owner = user_segment(self.owner.as_deref().unwrap_or_default());
                match &self.folder {
                    Some(f) => format!(
                        "{owner}/contactFolders/{}/contacts/{}/photo",
                        encode(f),
                        encode(&self.id)
                    ),
                    None => format!("{owner}/contacts/{}/photo", encode(&self.id)),
                }
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
    }
}

/// Percent-encodes one URL path segment (everything but unreserved characters, `@` and `$`).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `/users/{id}`, or `/users('{upn}')` for a UPN that starts with `$`, which Graph would
/// otherwise read as a system query option.
fn user_segment(id: &str) -> String {
    if id.starts_with('$') {
        format!("/users('{}')", encode(&id.replace('\'', "''")))
    } else {
        format!("/users/{}", encode(id))
    }
}

/// What a file under a source root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    Photo(Target),
    Skipped(Skip),
    Invalid(MappingError),
}

/// What a source adds to the file-name rules: its globs and its mapping file, compiled once.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    table: Option<std::sync::Arc<MapTable>>,
}

impl Rules {
    /// Compiles the source's globs (validated with the config) and takes its mapping table.
    pub fn new(source: &SourceConfig, table: Option<std::sync::Arc<MapTable>>) -> Rules {
        let build = |globs: &[String]| -> Option<GlobSet> {
            if globs.is_empty() {
                return None;
            }
            let mut b = GlobSetBuilder::new();
            for g in globs {
                // Validated when the config was loaded.
                if let Ok(g) = GlobBuilder::new(g).literal_separator(true).build() {
                    b.add(g);
                }
            }
            b.build().ok()
        };
        Rules {
            include: build(&source.include),
            exclude: build(&source.exclude),
            table,
        }
    }

    fn excludes(&self, rel: &str) -> bool {
        self.include.as_ref().is_some_and(|g| !g.is_match(rel))
            || self.exclude.as_ref().is_some_and(|g| g.is_match(rel))
    }
}

/// Decides what `rel` (a path relative to the source root) is for `source`.
pub fn map_path(source: &SourceConfig, rel: &Path) -> Mapped {
    map_with(source, &Rules::default(), rel)
}

/// [`map_path`] with the source's globs and mapping file.
pub fn map_with(source: &SourceConfig, rules: &Rules, rel: &Path) -> Mapped {
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => match s.to_str() {
                Some(s) => parts.push(s),
                None => return Mapped::Invalid(MappingError::NotUtf8),
            },
            // The walker only yields paths inside the root; anything else is not ours to touch.
            _ => return Mapped::Skipped(Skip::NotAPhoto),
        }
    }
    let Some((file, dirs)) = parts.split_last() else {
        return Mapped::Invalid(MappingError::EmptyName);
    };
    if parts.iter().any(|p| p.starts_with('.')) {
        return Mapped::Skipped(Skip::Hidden);
    }
    if let Some(skip) = classify_name(file) {
        return Mapped::Skipped(skip);
    }
    if (rules.include.is_some() || rules.exclude.is_some()) && rules.excludes(&parts.join("/")) {
        return Mapped::Skipped(Skip::Excluded);
    }
    let stem = stem_of(file);
    match source.target {
        TargetKind::User | TargetKind::Group => {
            let id = match &rules.table {
                // Values in the table were normalised for `key` when it was loaded.
                Some(t) => match t.get(file) {
                    Some(v) => Ok(v.to_owned()),
                    None => Err(MappingError::NotInMapping {
                        name: stem.to_owned(),
                        file: t.file_name(),
                    }),
                },
                None => normalise_key(stem, source.key),
            };
            match id {
                Ok(id) => Mapped::Photo(Target {
                    kind: source.target,
                    id,
                    owner: None,
                    folder: None,
                    lookup: Lookup::from_key_kind(source.key),
                }),
                Err(e) => Mapped::Invalid(e),
            }
        }
        TargetKind::Contact => {
            let (owner, folder) = match dirs {
                [owner] => (*owner, None),
                [owner, folder] => (*owner, Some(*folder)),
                _ => return Mapped::Invalid(MappingError::ContactLayout { depth: dirs.len() }),
            };
            let owner = match normalise_owner(owner) {
                Ok(o) => o,
                Err(e) => return Mapped::Invalid(e),
            };
            let check = |s: &str| -> Result<String, MappingError> {
                let s: String = s.nfc().collect();
                if s.chars().any(char::is_control) {
                    return Err(MappingError::ControlCharacters { name: s });
                }
                if s.is_empty() {
                    return Err(MappingError::EmptyName);
                }
                Ok(s)
            };
            let id = match check(stem) {
                Ok(v) => v,
                Err(e) => return Mapped::Invalid(e),
            };
            let folder = match folder.map(check).transpose() {
                Ok(v) => v,
                Err(e) => return Mapped::Invalid(e),
            };
            Mapped::Photo(Target {
                kind: TargetKind::Contact,
                id,
                owner: Some(owner),
                folder,
                lookup: None,
            })
        }
    }
}

fn classify_name(file: &str) -> Option<Skip> {
    let lower = file.to_lowercase();
    if lower.starts_with("~$") || TEMP_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
        return Some(Skip::Temporary);
    }
    if JUNK_NAMES.contains(&lower.as_str()) {
        return Some(Skip::NotAPhoto);
    }
    match lower.rsplit_once('.') {
        Some((_, ext)) if PHOTO_EXTENSIONS.contains(&ext) => None,
        _ => Some(Skip::NotAPhoto),
    }
}

fn stem_of(file: &str) -> &str {
    file.rsplit_once('.').map_or(file, |(s, _)| s)
}

/// A contact's owner directory is a UPN or a user object id.
fn normalise_owner(name: &str) -> Result<String, MappingError> {
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
            Ok(lowercase(s))
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
    use std::path::PathBuf;

    fn src(target: TargetKind, key: KeyKind) -> SourceConfig {
        SourceConfig::new(PathBuf::from("/r"), target, key)
    }

    fn photo(s: &SourceConfig, rel: &str) -> Target {
        match map_path(s, Path::new(rel)) {
            Mapped::Photo(t) => t,
            other => panic!("{rel}: {other:?}"),
        }
    }

    #[test]
    fn user_upn_is_case_insensitive_and_nested_folders_are_fine() {
        let s = src(TargetKind::User, KeyKind::Upn);
        let a = photo(&s, "Alice@Contoso.com.jpg");
        let b = photo(&s, "sub/dir/alice@contoso.com.PNG");
        assert_eq!(a.key(), "user:alice@contoso.com");
        assert_eq!(a, b);
        assert_eq!(a.photo_path(), "/users/alice@contoso.com/photo");
    }

    #[test]
    fn guest_upn_hash_is_encoded() {
        let s = src(TargetKind::User, KeyKind::Upn);
        let t = photo(&s, "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com.jpg");
        assert_eq!(
            t.photo_path(),
            "/users/bob_fabrikam.com%23ext%23@contoso.onmicrosoft.com/photo"
        );
    }

    #[test]
    fn dollar_upn_uses_key_syntax_and_quotes_are_doubled() {
        let s = src(TargetKind::User, KeyKind::Upn);
        let t = photo(&s, "$o'neil@contoso.com.jpg");
        assert_eq!(t.photo_path(), "/users('$o%27%27neil@contoso.com')/photo");
        let t = photo(&s, "o'brien@contoso.com.jpg");
        assert_eq!(t.photo_path(), "/users/o%27brien@contoso.com/photo");
    }

    #[test]
    fn non_ascii_and_nfd_names_map_to_one_nfc_target() {
        let s = src(TargetKind::User, KeyKind::Upn);
        let nfc = photo(&s, "ren\u{e9}@contoso.com.jpg");
        let nfd = photo(&s, "rene\u{301}@contoso.com.jpg");
        assert_eq!(nfc, nfd);
        assert_eq!(nfc.photo_path(), "/users/ren%C3%A9@contoso.com/photo");
    }

    #[test]
    fn skips_hidden_temp_and_non_photos() {
        let s = src(TargetKind::User, KeyKind::Upn);
        for (rel, want) in [
            (".alice@x.com.jpg", Skip::Hidden),
            (".snapshot/alice@x.com.jpg", Skip::Hidden),
            ("alice@x.com.jpg.part", Skip::Temporary),
            ("alice@x.com.jpg~", Skip::Temporary),
            ("alice@x.com.jpg.crdownload", Skip::Temporary),
            ("~$alice.jpg", Skip::Temporary),
            ("Thumbs.db", Skip::NotAPhoto),
            ("readme.txt", Skip::NotAPhoto),
            ("noextension", Skip::NotAPhoto),
        ] {
            assert_eq!(map_path(&s, Path::new(rel)), Mapped::Skipped(want), "{rel}");
        }
    }

    #[test]
    fn invalid_names_are_errors() {
        let s = src(TargetKind::User, KeyKind::Upn);
        assert!(matches!(
            map_path(&s, Path::new("alice.jpg")),
            Mapped::Invalid(MappingError::NotAUpn { .. })
        ));
        assert!(matches!(
            map_path(&s, Path::new("a\u{7}b@x.com.jpg")),
            Mapped::Invalid(MappingError::ControlCharacters { .. })
        ));
        let g = src(TargetKind::Group, KeyKind::Id);
        assert!(matches!(
            map_path(&g, Path::new("../x.jpg")),
            Mapped::Skipped(Skip::NotAPhoto)
        ));
        assert!(matches!(
            map_path(&g, Path::new("marketing.jpg")),
            Mapped::Invalid(MappingError::NotAnId { .. })
        ));
        let t = photo(&g, "0AAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee.jpg");
        assert_eq!(
            t.photo_path(),
            "/groups/0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee/photo"
        );
    }

    #[test]
    fn contacts_with_and_without_folder() {
        let s = src(TargetKind::Contact, KeyKind::Id);
        let t = photo(&s, "Owner@Contoso.com/AAMkAGI2=.jpg");
        assert_eq!(t.key(), "contact:owner@contoso.com/AAMkAGI2=");
        assert_eq!(
            t.photo_path(),
            "/users/owner@contoso.com/contacts/AAMkAGI2%3D/photo"
        );
        let t = photo(&s, "owner@contoso.com/folder1/c1.jpg");
        assert_eq!(
            t.photo_path(),
            "/users/owner@contoso.com/contactFolders/folder1/contacts/c1/photo"
        );
        assert_eq!(Target::from_key(&t.key()), Some(t));
        assert!(matches!(
            map_path(&s, Path::new("c1.jpg")),
            Mapped::Invalid(MappingError::ContactLayout { depth: 0 })
        ));
    }

    #[test]
    fn keys_round_trip() {
        for k in ["user:a@b.c", "group:0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"] {
            assert_eq!(Target::from_key(k).unwrap().key(), k);
        }
    }
}
