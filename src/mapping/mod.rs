//! From a file's place in a source tree to the Graph object it is the photo of.
//!
//! The tree says which kind (user, group, contact), the file name says who. This module is pure:
//! no I/O, so every rule can be tested exhaustively. It holds names and targets only; how a
//! target becomes a URL is [`crate::graph::paths`]'s business. Inside: [`names`] (photo or not),
//! [`target`] (what a name names, and its key), [`rules`] (a source's globs and table) and
//! [`file`] (mapping files), used in that direction only. Invariants:
//! - a target key is normalised (UPNs lower-cased, Unicode NFC), so `Alice.jpg` and `alice.png`
//!   name the same target and a conflict can be seen;
//! - a file the globs leave out, or whose name is not a photo's, never becomes a target.

pub mod file;
pub(crate) mod names;
pub(crate) mod rules;
pub(crate) mod target;

use std::path::{Component, Path};

use unicode_normalization::UnicodeNormalization;

use crate::config::{SourceConfig, TargetKind};
pub use crate::mapping::names::Skip;
pub use crate::mapping::rules::Rules;
pub use crate::mapping::target::{normalise_key, Lookup, MappingError, Target};

use crate::mapping::names::{classify_name, may_be_a_photo, stem_of};
use crate::mapping::target::normalise_owner;

/// What a file under a source root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped {
    Photo(Target),
    /// The name is not a photo's but may hold one ([`names::may_be_a_photo`]): a photo of this
    /// target only if its first bytes say so.
    ByContent(Target),
    Skipped(Skip),
    Invalid(MappingError),
}

impl From<Result<Target, MappingError>> for Mapped {
    fn from(r: Result<Target, MappingError>) -> Mapped {
        r.map_or_else(Mapped::Invalid, Mapped::Photo)
    }
}

/// Decides what `rel` (a path relative to the source root) is for `source`.
pub fn map_path(source: &SourceConfig, rel: &Path) -> Mapped {
    map_with(source, &Rules::default(), rel)
}

/// [`map_path`] with the source's globs and mapping file.
pub fn map_with(source: &SourceConfig, rules: &Rules, rel: &Path) -> Mapped {
    let parts = match components(rel) {
        Ok(parts) => parts,
        Err(other) => return other,
    };
    let Some((file, dirs)) = parts.split_last() else {
        return Mapped::Invalid(MappingError::EmptyName);
    };
    if parts.iter().any(|p| p.starts_with('.')) {
        return Mapped::Skipped(Skip::Hidden);
    }
    let by_content = match classify_name(file) {
        Some(skip) if !may_be_a_photo(file) => return Mapped::Skipped(skip),
        skip => skip.is_some(),
    };
    if rules.excludes(&parts) {
        return Mapped::Skipped(Skip::Excluded);
    }
    let target = match source.target {
        TargetKind::User | TargetKind::Group => by_name(source, rules, file),
        TargetKind::Contact => contact(dirs, stem_of(file)),
    };
    match target {
        // A name that names no one is only a problem for a photo's file.
        Ok(t) if by_content => Mapped::ByContent(t),
        Err(_) if by_content => Mapped::Skipped(Skip::NotAPhoto),
        t => t.into(),
    }
}

/// The path's components as text; anything but a plain relative path is not ours to touch.
fn components(rel: &Path) -> Result<Vec<&str>, Mapped> {
    rel.components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().ok_or(Mapped::Invalid(MappingError::NotUtf8)),
            // The walker only yields paths inside the root.
            _ => Err(Mapped::Skipped(Skip::NotAPhoto)),
        })
        .collect()
}

/// A user or group named by the file's stem, or by the mapping table's row for the file.
fn by_name(source: &SourceConfig, rules: &Rules, file: &str) -> Result<Target, MappingError> {
    let stem = stem_of(file);
    let id = match rules.table() {
        // Values in the table were normalised for `key` when it was loaded.
        Some(t) => t
            .get(file)
            .map(str::to_owned)
            .ok_or_else(|| MappingError::NotInMapping {
                name: stem.to_owned(),
                file: t.file_name(),
            })?,
        None => normalise_key(stem, source.key)?,
    };
    Ok(Target {
        kind: source.target,
        id,
        owner: None,
        folder: None,
        lookup: Lookup::from_key_kind(source.key),
    })
}

/// A contact at `<owner>/<contact id>.jpg` or `<owner>/<folder id>/<contact id>.jpg`.
fn contact(dirs: &[&str], stem: &str) -> Result<Target, MappingError> {
    let (owner, folder) = match dirs {
        [owner] => (*owner, None),
        [owner, folder] => (*owner, Some(*folder)),
        _ => return Err(MappingError::ContactLayout { depth: dirs.len() }),
    };
    // Contact and folder ids are opaque: kept as written, only NFC-normalised.
    let opaque = |s: &str| -> Result<String, MappingError> {
        let s: String = s.nfc().collect();
        if s.chars().any(char::is_control) {
            return Err(MappingError::ControlCharacters { name: s });
        }
        if s.is_empty() {
            return Err(MappingError::EmptyName);
        }
        Ok(s)
    };
    Ok(Target {
        kind: TargetKind::Contact,
        owner: Some(normalise_owner(owner)?),
        id: opaque(stem)?,
        folder: folder.map(opaque).transpose()?,
        lookup: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyKind, PathFilter};
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
        assert_eq!(a.key(), b.key());
        assert_eq!(
            a.id, "Alice@Contoso.com",
            "the UPN as written goes to Graph"
        );
    }

    #[test]
    fn guest_upn_keeps_its_hash_in_the_key() {
        let s = src(TargetKind::User, KeyKind::Upn);
        let t = photo(&s, "bob_fabrikam.com#EXT#@contoso.onmicrosoft.com.jpg");
        assert_eq!(
            t.key(),
            "user:bob_fabrikam.com#ext#@contoso.onmicrosoft.com"
        );
    }

    #[test]
    fn non_ascii_and_nfd_names_map_to_one_nfc_target() {
        let s = src(TargetKind::User, KeyKind::Upn);
        let nfc = photo(&s, "ren\u{e9}@contoso.com.jpg");
        let nfd = photo(&s, "rene\u{301}@contoso.com.jpg");
        assert_eq!(nfc, nfd);
        assert_eq!(nfc.id, "ren\u{e9}@contoso.com");
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
        assert_eq!(t.key(), "group:0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
    }

    #[test]
    fn contacts_with_and_without_folder() {
        let s = src(TargetKind::Contact, KeyKind::Id);
        let t = photo(&s, "Owner@Contoso.com/AAMkAGI2=.jpg");
        assert_eq!(t.key(), "contact:owner@contoso.com/AAMkAGI2=");
        let t = photo(&s, "owner@contoso.com/folder1/c1.jpg");
        assert_eq!(t.key(), "contact:owner@contoso.com/folder1/c1");
        assert_eq!(Target::from_key(&t.key()), Some(t));
        assert!(matches!(
            map_path(&s, Path::new("c1.jpg")),
            Mapped::Invalid(MappingError::ContactLayout { depth: 0 })
        ));
    }

    #[test]
    fn lookup_keys_and_mapping_tables() {
        let s = src(TargetKind::User, KeyKind::EmployeeId);
        let t = photo(&s, "004711.jpg");
        assert_eq!(t.key(), "user(employeeId):004711");
        let (table, _) = crate::mapping::file::MapTable::parse(
            b"file,target\n12.jpg,004711\n",
            Path::new("hr.csv"),
            "file",
            "target",
            KeyKind::EmployeeId,
        )
        .unwrap();
        let rules = Rules::new(&s, Some(std::sync::Arc::new(table)));
        let t = match map_with(&s, &rules, Path::new("12.JPG")) {
            Mapped::Photo(t) => t,
            other => panic!("{other:?}"),
        };
        assert_eq!(t.key(), "user(employeeId):004711");
        assert!(matches!(
            map_with(&s, &rules, Path::new("13.jpg")),
            Mapped::Invalid(MappingError::NotInMapping { .. })
        ));
    }

    #[test]
    fn globs_include_and_exclude_relative_paths() {
        let mut s = src(TargetKind::User, KeyKind::Upn);
        s.filter = PathFilter::new(&["current/**".into()], &["**/old-*/**".into()]).unwrap();
        let rules = Rules::new(&s, None);
        let map = |rel: &str| map_with(&s, &rules, Path::new(rel));
        assert!(matches!(map("current/a@x.com.jpg"), Mapped::Photo(_)));
        assert_eq!(map("a@x.com.jpg"), Mapped::Skipped(Skip::Excluded));
        assert_eq!(
            map("current/old-2019/a@x.com.jpg"),
            Mapped::Skipped(Skip::Excluded)
        );
    }
}
