//! Every URL photosync sends, and every byte of it that came from outside (a file name, a
//! tenant, a looked-up value), encoded in one place.
//!
//! Invariants:
//! - a value from outside enters a path only as one percent-encoded segment, so no file name
//!   can reach an unintended URL (`..`, `/`, `?`, `#` never survive unencoded);
//! - a value inside an OData string literal (`users('…')`, `$filter=… eq '…'`) has its single
//!   quotes doubled first, so it cannot end the literal;
//! - a `$filter` expression is percent-encoded as a whole, so no value can add a query option.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::config::TargetKind;
use crate::mapping::{Lookup, Target};

/// The Graph API version every request below the host is sent to.
pub const VERSION: &str = "/v1.0";

/// A cheap directory read that any app with a user-read role may make (for `check`).
pub const USERS_PROBE: &str = "/v1.0/users?$top=1&$select=id";

/// The tenant-wide setting that can switch cloud photo updates off (beta only).
pub const PHOTO_UPDATE_SETTINGS: &str = "/beta/admin/people/photoUpdateSettings";

/// Everything but RFC 3986 unreserved characters is encoded; `@` and `$` stay literal because
/// they are common in UPNs and Graph documents them unencoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b'$');

/// Percent-encodes one URL path segment (everything but unreserved characters, `@` and `$`).
pub fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The inside of an OData string literal: single quotes doubled, so the value cannot end it.
fn quote_escaped(value: &str) -> String {
    value.replace('\'', "''")
}

/// The token endpoint of `tenant` at `login_url` (a host without a trailing slash).
pub fn token_url(login_url: &str, tenant: &str) -> String {
    format!("{login_url}/{}/oauth2/v2.0/token", segment(tenant))
}

/// The scope an app-only token for `graph_url` is asked for.
pub fn scope(graph_url: &str) -> String {
    format!("{graph_url}/.default")
}

/// The path of `target`'s photo resource below `{graph_url}/v1.0`, e.g.
/// `/users/alice@contoso.com/photo`. A target with a `lookup` must be resolved first (see
/// [`crate::graph::resolve`]).
pub fn photo_path(target: &Target) -> String {
    debug_assert!(
        target.lookup.is_none(),
        "photo_path of an unresolved {target}"
    );
    match target.kind {
        TargetKind::User => format!("{}/photo", user_segment(&target.id)),
        TargetKind::Group => format!("/groups/{}/photo", segment(&target.id)),
        TargetKind::Contact => {
            let owner = user_segment(target.owner.as_deref().unwrap_or_default());
            match &target.folder {
                Some(f) => format!(
                    "{owner}/contactFolders/{}/contacts/{}/photo",
                    segment(f),
                    segment(&target.id)
                ),
                None => format!("{owner}/contacts/{}/photo", segment(&target.id)),
            }
        }
    }
}

/// The path of `target`'s photo bytes: what uploads and deletes are sent to.
pub fn photo_value_path(target: &Target) -> String {
    format!("{}/$value", photo_path(target))
}

/// `/users/{id}`, or `/users('{upn}')` for a UPN that starts with `$`, which Graph would
/// otherwise read as a system query option.
fn user_segment(id: &str) -> String {
    if id.starts_with('$') {
        format!("/users('{}')", segment(&quote_escaped(id)))
    } else {
        format!("/users/{}", segment(id))
    }
}

/// The path and query (below the Graph host) that looks up the users whose `lookup` property
/// is one of `values`: `eq` for one value, `in (…)` for several.
pub fn user_lookup(lookup: Lookup, values: &[String]) -> String {
    let quoted: Vec<String> = values
        .iter()
        .map(|v| format!("'{}'", quote_escaped(v)))
        .collect();
    let filter = if let [one] = quoted.as_slice() {
        format!("{} eq {one}", lookup.property())
    } else {
        format!("{} in ({})", lookup.property(), quoted.join(","))
    };
    format!(
        "{VERSION}/users?$filter={}&$select=id,userPrincipalName,mail,employeeId&$count=true&$top=999",
        utf8_percent_encode(&filter, NON_ALPHANUMERIC)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyKind, SourceConfig};
    use crate::mapping::{map_path, Mapped};
    use std::path::{Path, PathBuf};

    fn path_of(target: TargetKind, key: KeyKind, rel: &str) -> String {
        let source = SourceConfig::new(PathBuf::from("/r"), target, key);
        match map_path(&source, Path::new(rel)) {
            Mapped::Photo(t) => photo_path(&t),
            other => panic!("{rel}: {other:?}"),
        }
    }

    fn upn(rel: &str) -> String {
        path_of(TargetKind::User, KeyKind::Upn, rel)
    }

    fn decode(q: &str) -> String {
        percent_encoding::percent_decode_str(q)
            .decode_utf8()
            .unwrap()
            .into_owned()
    }

    #[test]
    fn user_paths() {
        assert_eq!(
            upn("Alice@Contoso.com.jpg"),
            "/users/Alice@Contoso.com/photo"
        );
        assert_eq!(
            photo_value_path(&Target::user("alice@contoso.com")),
            "/users/alice@contoso.com/photo/$value"
        );
    }

    #[test]
    fn guest_upn_hash_is_encoded() {
        assert_eq!(
            upn("bob_fabrikam.com#EXT#@contoso.onmicrosoft.com.jpg"),
            "/users/bob_fabrikam.com%23EXT%23@contoso.onmicrosoft.com/photo"
        );
    }

    #[test]
    fn dollar_upn_uses_key_syntax_and_quotes_are_doubled() {
        assert_eq!(
            upn("$o'neil@contoso.com.jpg"),
            "/users('$o%27%27neil@contoso.com')/photo"
        );
        assert_eq!(
            upn("o'brien@contoso.com.jpg"),
            "/users/o%27brien@contoso.com/photo"
        );
    }

    #[test]
    fn non_ascii_is_encoded_as_utf8() {
        assert_eq!(
            upn("ren\u{e9}@contoso.com.jpg"),
            "/users/ren%C3%A9@contoso.com/photo"
        );
    }

    #[test]
    fn group_and_contact_paths() {
        assert_eq!(
            path_of(
                TargetKind::Group,
                KeyKind::Id,
                "0AAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee.jpg"
            ),
            "/groups/0aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee/photo"
        );
        let contact = |rel| path_of(TargetKind::Contact, KeyKind::Id, rel);
        assert_eq!(
            contact("Owner@Contoso.com/AAMkAGI2=.jpg"),
            "/users/Owner@Contoso.com/contacts/AAMkAGI2%3D/photo"
        );
        assert_eq!(
            contact("owner@contoso.com/folder1/c1.jpg"),
            "/users/owner@contoso.com/contactFolders/folder1/contacts/c1/photo"
        );
    }

    #[test]
    fn token_url_encodes_the_tenant() {
        assert_eq!(
            token_url("https://login.example", "contoso.com/../x?y"),
            "https://login.example/contoso.com%2F..%2Fx%3Fy/oauth2/v2.0/token"
        );
        assert_eq!(
            scope("https://graph.example"),
            "https://graph.example/.default"
        );
    }

    #[test]
    fn lookup_quotes_are_doubled_and_the_filter_encoded() {
        let q = user_lookup(Lookup::EmployeeId, &["O'Brien".into()]);
        assert!(!q[q.find("$filter=").unwrap()..].contains(' '), "{q}");
        assert!(
            decode(&q).contains("$filter=employeeId eq 'O''Brien'&"),
            "{q}"
        );
        let q = user_lookup(Lookup::Mail, &["a@x.com".into(), "b&c@x.com".into()]);
        assert!(q.contains("%26"), "an & must not end the filter: {q}");
        assert!(
            decode(&q).contains("mail in ('a@x.com','b&c@x.com')"),
            "{q}"
        );
    }
}
