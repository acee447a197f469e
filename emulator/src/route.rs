//! What a request is, read the way Graph reads it: its route (`users/{id}`, `users('{upn}')`
//! with doubled quotes, percent-decoded segments, `%24value`), its body as received, and the
//! target it names.
//!
//! Invariant: a path segment is decoded exactly once.

use std::time::Instant;

use bytes::Bytes;
use percent_encoding::percent_decode_str;

use crate::directory::{Resolved, TargetRef};
use crate::record::RequestKind;
use crate::state::{lock, Shared};

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `/{tenant}/oauth2/v2.0/token`.
    Token {
        tenant: String,
    },
    /// `/metadata/identity/oauth2/token`: the managed identity endpoint.
    ManagedIdentity,
    /// `.../photo` (`value: false`) or `.../photo/$value`.
    Photo {
        target: TargetRef,
        value: bool,
    },
    /// `/users` (a query).
    Users,
    /// `/users/{id or upn}`.
    User(String),
    Batch,
    PhotoSettings,
    /// A Graph path the emulator does not serve: 400 with this message.
    BadGraph(String),
    /// Not a Graph or token path at all: plain 404.
    NotFound,
}

impl Route {
    pub fn kind(&self, method: &str) -> RequestKind {
        match (self, method) {
            (Route::Token { .. } | Route::ManagedIdentity, _) => RequestKind::Token,
            (Route::Photo { value: true, .. }, "PUT") => RequestKind::PhotoPut,
            (Route::Photo { value: true, .. }, "PATCH") => RequestKind::PhotoPatch,
            (Route::Photo { value: true, .. }, "GET") => RequestKind::PhotoGet,
            (Route::Photo { value: true, .. }, "DELETE") => RequestKind::PhotoDelete,
            (Route::Photo { value: false, .. }, "GET") => RequestKind::PhotoMeta,
            (Route::Users | Route::User(_), "GET") => RequestKind::UserQuery,
            (Route::Batch, "POST") => RequestKind::Batch,
            (Route::PhotoSettings, "GET") => RequestKind::PhotoSettings,
            _ => RequestKind::Other,
        }
    }
}

fn decode(seg: &str) -> Result<String, String> {
    percent_decode_str(seg)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| format!("The segment '{seg}' is not valid percent-encoded UTF-8."))
}

/// A first path segment naming an entity set.
enum EntitySegment {
    /// `users`: the key, if any, is the next segment.
    Collection,
    /// `users('x')` or `users(x)`.
    Keyed(String),
}

/// Reads `name`, `name('key')` (quotes doubled inside) or `name(key)`.
fn entity_segment(seg: &str, name: &str) -> Option<EntitySegment> {
    if seg.eq_ignore_ascii_case(name) {
        return Some(EntitySegment::Collection);
    }
    let rest = seg.get(..name.len())?;
    if !rest.eq_ignore_ascii_case(name) {
        return None;
    }
    let inner = seg[name.len()..].strip_prefix('(')?.strip_suffix(')')?;
    let key = match inner.strip_prefix('\'').and_then(|i| i.strip_suffix('\'')) {
        Some(quoted) => quoted.replace("''", "'"),
        None => inner.to_owned(),
    };
    Some(EntitySegment::Keyed(key))
}

fn bad_segment(seg: &str) -> Route {
    Route::BadGraph(format!("Resource not found for the segment '{seg}'."))
}

/// Parses a path (without query) into a route.
pub(crate) fn parse_path(path: &str) -> Route {
    let mut raw: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if raw.len() > 1 && raw.last() == Some(&"") {
        raw.pop();
    }
    if raw.len() == 4
        && raw[1].eq_ignore_ascii_case("oauth2")
        && raw[2].eq_ignore_ascii_case("v2.0")
        && raw[3].eq_ignore_ascii_case("token")
    {
        return match decode(raw[0]) {
            Ok(tenant) => Route::Token { tenant },
            Err(_) => Route::NotFound,
        };
    }
    if raw.len() == 4
        && raw[0].eq_ignore_ascii_case("metadata")
        && raw[1].eq_ignore_ascii_case("identity")
        && raw[2].eq_ignore_ascii_case("oauth2")
        && raw[3].eq_ignore_ascii_case("token")
    {
        return Route::ManagedIdentity;
    }
    let Some((version, rest)) = raw.split_first() else {
        return Route::NotFound;
    };
    if !(version.eq_ignore_ascii_case("v1.0") || version.eq_ignore_ascii_case("beta")) {
        return Route::NotFound;
    }
    let segs: Vec<String> = match rest.iter().map(|s| decode(s)).collect() {
        Ok(s) => s,
        Err(message) => return Route::BadGraph(message),
    };
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match segs.as_slice() {
        [] => bad_segment(version),
        [b] if eq(b, "$batch") => Route::Batch,
        [a, p, s] if eq(a, "admin") && eq(p, "people") && eq(s, "photoUpdateSettings") => {
            Route::PhotoSettings
        }
        [first, tail @ ..] => {
            if let Some(key) = entity_segment(first, "users") {
                let (key, tail) = match (key, tail) {
                    (EntitySegment::Keyed(k), tail) => (k, tail),
                    (EntitySegment::Collection, []) => return Route::Users,
                    (EntitySegment::Collection, [k, tail @ ..]) => {
                        // Graph reads a plain segment starting with `$` as a system segment,
                        // which is why such UPNs need the `users('$x')` form.
                        if k.starts_with('$') {
                            return bad_segment(k);
                        }
                        ((*k).to_owned(), tail)
                    }
                };
                return user_tail(key, tail);
            }
            if let Some(key) = entity_segment(first, "groups") {
                let (key, tail) = match (key, tail) {
                    (EntitySegment::Keyed(k), tail) => (k, tail),
                    (EntitySegment::Collection, [k, tail @ ..]) if !k.starts_with('$') => {
                        ((*k).to_owned(), tail)
                    }
                    _ => return bad_segment(first),
                };
                return match tail {
                    [p] if eq(p, "photo") => Route::Photo {
                        target: TargetRef::Group(key),
                        value: false,
                    },
                    [p, v] if eq(p, "photo") && eq(v, "$value") => Route::Photo {
                        target: TargetRef::Group(key),
                        value: true,
                    },
                    [] => bad_segment(&key),
                    [other, ..] => bad_segment(other),
                };
            }
            bad_segment(first)
        }
    }
}

fn user_tail(key: String, tail: &[&str]) -> Route {
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let photo = |target: TargetRef, rest: &[&str]| match rest {
        [p] if eq(p, "photo") => Route::Photo {
            target,
            value: false,
        },
        [p, v] if eq(p, "photo") && eq(v, "$value") => Route::Photo {
            target,
            value: true,
        },
        [] => bad_segment("contacts"),
        [other, ..] => bad_segment(other),
    };
    match tail {
        [] => Route::User(key),
        [p, ..] if eq(p, "photo") => photo(TargetRef::User(key), tail),
        [c, id, rest @ ..] if eq(c, "contacts") => photo(
            TargetRef::Contact {
                owner: key,
                folder: None,
                id: (*id).to_owned(),
            },
            rest,
        ),
        [f, folder, c, id, rest @ ..] if eq(f, "contactFolders") && eq(c, "contacts") => photo(
            TargetRef::Contact {
                owner: key,
                folder: Some((*folder).to_owned()),
                id: (*id).to_owned(),
            },
            rest,
        ),
        [other, ..] => bad_segment(other),
    }
}

/// A request body as read: the bytes when within the limit, and the length received.
pub(crate) struct BodyRead {
    pub bytes: Bytes,
    pub len: usize,
    pub too_large: bool,
}

/// What the Graph dispatch needs of a request.
pub(crate) struct GraphRequest<'a> {
    pub method: &'a str,
    pub route: &'a Route,
    pub kind: RequestKind,
    pub resolved: Option<&'a Resolved>,
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub consistency_eventual: bool,
    pub body: BodyRead,
    pub at: Instant,
}

/// Resolves the target of photo routes; uploads create unknown targets when the emulator
/// accepts any target.
pub(crate) fn resolve(shared: &Shared, route: &Route, kind: RequestKind) -> Option<Resolved> {
    let Route::Photo { target, .. } = route else {
        return None;
    };
    let create = shared.config.accept_any_target && kind.is_upload();
    Some(lock(&shared.dir).resolve(target, create, &shared.default_domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_photo(key: &str, value: bool) -> Route {
        Route::Photo {
            target: TargetRef::User(key.into()),
            value,
        }
    }

    #[test]
    fn parses_user_photo_forms() {
        assert_eq!(
            parse_path("/v1.0/users/jane%40contoso.com/photo/$value"),
            user_photo("jane@contoso.com", true)
        );
        assert_eq!(
            parse_path("/v1.0/users/ext_x%23EXT%23%40contoso.com/photo/%24value"),
            user_photo("ext_x#EXT#@contoso.com", true)
        );
        assert_eq!(
            parse_path("/v1.0/users('$adm%40contoso.com')/photo/$value"),
            user_photo("$adm@contoso.com", true)
        );
        assert_eq!(
            parse_path("/v1.0/users('o''brien%40contoso.com')/photo"),
            user_photo("o'brien@contoso.com", false)
        );
        assert_eq!(
            parse_path("/v1.0/users%28%27x%27%29/photo"),
            user_photo("x", false)
        );
        assert!(matches!(
            parse_path("/v1.0/users/$adm@contoso.com/photo/$value"),
            Route::BadGraph(_)
        ));
    }

    #[test]
    fn parses_other_routes() {
        assert_eq!(
            parse_path("/contoso.onmicrosoft.com/oauth2/v2.0/token"),
            Route::Token {
                tenant: "contoso.onmicrosoft.com".into()
            }
        );
        assert_eq!(
            parse_path("/v1.0/groups/g1/photo/$value"),
            Route::Photo {
                target: TargetRef::Group("g1".into()),
                value: true
            }
        );
        assert_eq!(
            parse_path("/v1.0/users/u/contactFolders/f/contacts/c/photo/$value"),
            Route::Photo {
                target: TargetRef::Contact {
                    owner: "u".into(),
                    folder: Some("f".into()),
                    id: "c".into()
                },
                value: true
            }
        );
        assert_eq!(parse_path("/v1.0/users"), Route::Users);
        assert_eq!(parse_path("/v1.0/users/u"), Route::User("u".into()));
        assert_eq!(parse_path("/v1.0/$batch"), Route::Batch);
        assert_eq!(
            parse_path("/beta/admin/people/photoUpdateSettings"),
            Route::PhotoSettings
        );
        assert_eq!(parse_path("/favicon.ico"), Route::NotFound);
        assert!(matches!(parse_path("/v1.0/me/photo"), Route::BadGraph(_)));
    }
}
