//! Workload identity federation: the platform (Kubernetes, a CI system, another cloud) writes a
//! signed JWT to a file and replaces it before it expires; photosync sends it as the client
//! assertion, unchanged, read afresh for every token request.
//!
//! Invariants: the file's content is never logged or put in a message; what a refusal's hint
//! shows is the token's issuer, subject and audience, which are not secret. The file may be
//! readable by others (0644 is the platforms' default): the token is short-lived and bound
//! to its audience, so no permission check applies.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::SecretString;
use serde::Deserialize;

use super::{files, AuthError};

/// AADSTS70021: no federated identity credential matches (also met for a few minutes after
/// one was added, until it has propagated).
pub(super) const NO_MATCHING_RECORD: u32 = 70_021;

#[derive(Debug)]
pub(super) struct TokenFile {
    path: PathBuf,
}

/// The claims of the token that Entra matches against the federated identity credential.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Claims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum Audience {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn text(&self) -> String {
        match self {
            Audience::None => String::new(),
            Audience::One(a) => a.clone(),
            Audience::Many(list) => list.join(", "),
        }
    }
}

impl TokenFile {
    pub(super) fn new(path: &Path) -> TokenFile {
        TokenFile {
            path: path.to_owned(),
        }
    }

    /// The token as the file holds it now, checked to be a JWT.
    pub(super) fn read(&self) -> Result<SecretString, AuthError> {
        let text = files::read_trimmed(&self.path)?;
        if claims_of(&text).is_none() {
            return Err(AuthError::TokenFile {
                path: self.path.clone(),
                reason: "does not hold a JWT (three base64url parts separated by dots)",
            });
        }
        Ok(SecretString::from(text))
    }

    /// The claims of the token in the file now; default when it cannot be read.
    pub(super) fn claims(&self) -> Claims {
        files::read_trimmed(&self.path)
            .ok()
            .and_then(|t| claims_of(&t))
            .unwrap_or_default()
    }

    pub(super) fn describe(&self) -> String {
        let c = self.claims();
        let expires = c.exp.map_or_else(
            || "no expiry".to_owned(),
            |e| {
                format!(
                    "expires {}",
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e))
                )
            },
        );
        format!(
            "federated token file {} (issuer {}, subject {}, audience {}, {expires}; the platform replaces it)",
            self.path.display(),
            c.iss,
            c.sub,
            c.aud.text()
        )
    }

    /// The hint for a refusal of this assertion, naming what Entra compared.
    pub(super) fn hint(&self, aadsts: Option<u32>) -> Option<String> {
        let what = match aadsts? {
            NO_MATCHING_RECORD => "no federated identity credential of the app matches",
            700_211 => "no federated identity credential has this issuer",
            700_212 => "no federated identity credential has this audience",
            700_213 => "no federated identity credential has this subject",
            700_024 => {
                return Some(format!(
                    "the token in {} has expired: the platform did not replace it",
                    self.path.display()
                ))
            }
            _ => return None,
        };
        let c = self.claims();
        Some(format!(
            "{what}: the token in {} has issuer {}, subject {}, audience {}; add a federated credential with exactly these values to the app registration",
            self.path.display(),
            c.iss,
            c.sub,
            c.aud.text()
        ))
    }

    /// When the token in the file expires, if it says.
    pub(super) fn expires_at(&self) -> Option<SystemTime> {
        self.claims()
            .exp
            .map(|e| UNIX_EPOCH + Duration::from_secs(e))
    }
}

fn claims_of(jwt: &str) -> Option<Claims> {
    let mut parts = jwt.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}
