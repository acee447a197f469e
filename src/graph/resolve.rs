//! Looking users up by a property Graph cannot address them by (mail, employeeId).
//!
//! Pure request building and answer matching; the engine sends the requests through the shared
//! limiter and retry policy and keeps the cache. Invariants:
//! - one request asks for up to [`MAX_PER_REQUEST`] values (`$filter=employeeId in (...)`), so
//!   100 photos cost 7 lookups, not 100;
//! - a value inside the filter has its single quotes doubled and the whole filter is
//!   percent-encoded (by [`paths`]), so no value can change the query;
//! - a value matches a user only when the user's property equals it (mail case-insensitively),
//!   never by position in the answer.

use std::collections::HashMap;

use serde::Deserialize;

use crate::graph::paths;
use crate::mapping::Lookup;

/// Graph takes at most 15 values in one `in (...)` filter.
pub const MAX_PER_REQUEST: usize = 15;

/// A user found for a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The object id: what requests name the user by.
    pub id: String,
    pub upn: String,
}

/// What a lookup of one value found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Found(Resolved),
    /// No user has this value (yet: a new hire's account may not exist).
    NoMatch,
    /// Several users have it; their UPNs. Nothing is uploaded: it could be the wrong person.
    Ambiguous(Vec<String>),
}

impl Outcome {
    /// The message an operator reads for a value that did not resolve.
    pub fn message(&self, lookup: Lookup, value: &str) -> Option<String> {
        match self {
            Outcome::Found(_) => None,
            Outcome::NoMatch => Some(format!("no user has {} {value}", lookup.property())),
            Outcome::Ambiguous(upns) => Some(format!(
                "{} users have {} {value}: {}",
                upns.len(),
                lookup.property(),
                upns.join(", ")
            )),
        }
    }
}

/// The path and query (below the Graph host) that looks up `values` (see
/// [`paths::user_lookup`] for how they are quoted and encoded).
pub fn query(lookup: Lookup, values: &[String]) -> String {
    debug_assert!(!values.is_empty() && values.len() <= MAX_PER_REQUEST);
    paths::user_lookup(lookup, values)
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    id: String,
    #[serde(default)]
    user_principal_name: Option<String>,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    employee_id: Option<String>,
}

/// Matches an answer to the values asked for. `None` when the body is not a user list.
pub fn outcomes(
    lookup: Lookup,
    values: &[String],
    body: &[u8],
) -> Option<HashMap<String, Outcome>> {
    let page: Page = serde_json::from_slice(body).ok()?;
    let mut hits: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for user in &page.value {
        let prop = match lookup {
            Lookup::Mail => user.mail.as_deref(),
            Lookup::EmployeeId => user.employee_id.as_deref(),
        };
        let Some(prop) = prop else { continue };
        for v in values {
            let same = match lookup {
                Lookup::Mail => {
                    v.eq_ignore_ascii_case(prop) || v.to_lowercase() == prop.to_lowercase()
                }
                Lookup::EmployeeId => v == prop,
            };
            if same {
                hits.entry(v.as_str()).or_default().push(user);
            }
        }
    }
    Some(
        values
            .iter()
            .map(|v| {
                let found = hits.remove(v.as_str()).unwrap_or_default();
                let outcome = match found.as_slice() {
                    [] => Outcome::NoMatch,
                    [u] => Outcome::Found(Resolved {
                        id: u.id.to_ascii_lowercase(),
                        upn: u.user_principal_name.clone().unwrap_or_default(),
                    }),
                    many => {
                        let mut upns: Vec<String> = many
                            .iter()
                            .map(|u| {
                                u.user_principal_name
                                    .clone()
                                    .unwrap_or_else(|| u.id.clone())
                            })
                            .collect();
                        upns.sort();
                        upns.dedup();
                        Outcome::Ambiguous(upns)
                    }
                };
                (v.clone(), outcome)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_match_by_value_not_position() {
        let body = br#"{"value":[
            {"id":"B","userPrincipalName":"b@x.com","mail":"B@x.com","employeeId":"2"},
            {"id":"A","userPrincipalName":"a@x.com","mail":"a@x.com","employeeId":"1"},
            {"id":"C","userPrincipalName":"c@x.com","mail":"c@x.com","employeeId":"1"}]}"#;
        let values: Vec<String> = ["1", "2", "3"].map(String::from).to_vec();
        let o = outcomes(Lookup::EmployeeId, &values, body).unwrap();
        assert_eq!(
            o["1"],
            Outcome::Ambiguous(vec!["a@x.com".into(), "c@x.com".into()])
        );
        assert_eq!(
            o["2"],
            Outcome::Found(Resolved {
                id: "b".into(),
                upn: "b@x.com".into()
            })
        );
        assert_eq!(o["3"], Outcome::NoMatch);
        assert_eq!(
            o["3"].message(Lookup::EmployeeId, "3").unwrap(),
            "no user has employeeId 3"
        );
        let o = outcomes(Lookup::Mail, &["b@x.com".into()], body).unwrap();
        assert!(matches!(o["b@x.com"], Outcome::Found(_)));
        assert!(outcomes(Lookup::Mail, &values, b"<html>").is_none());
    }
}
