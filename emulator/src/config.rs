//! What an emulator is started with and the directory objects it serves: the app registration
//! it accepts ([`Config`]), the users it knows ([`User`]) and what it keeps of an uploaded
//! photo ([`Photo`]). These are plain data; the rules that use them live in the request
//! handlers.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How the emulator behaves as an Entra tenant and a Graph service.
///
/// Start from [`Config::default`] and change the fields a test cares about:
/// `Config { accept_any_target: true, ..Config::default() }`.
#[derive(Clone)]
pub struct Config {
    /// The tenant segment the token URL must carry: a GUID or a domain, compared
    /// case-insensitively. The GUID put in tokens' `tid` is also accepted.
    pub tenant: String,
    /// The one app registration the tenant knows.
    pub client_id: String,
    /// The secret accepted in `client_secret` grants; `None` rejects every secret.
    pub client_secret: Option<String>,
    /// A PEM certificate (other PEM blocks, such as a private key, are ignored). Client
    /// assertions must carry its thumbprint and verify against its RSA public key.
    pub certificate_pem: Option<String>,
    /// Federated identity credentials: client assertions whose `iss` is not the client id
    /// are checked against this issuer, subject and audience (not their signature).
    pub federation: Option<Federation>,
    /// A managed identity endpoint at `/metadata/identity/oauth2/token` (VM, or Arc with
    /// [`ManagedIdentity::arc_key_dir`]).
    pub managed_identity: Option<ManagedIdentity>,
    /// `expires_in` of issued tokens; after it, Graph calls with that token get 401.
    pub token_ttl: Duration,
    /// App roles put in the token's `roles` claim and enforced by the Graph endpoints.
    pub roles: Vec<String>,
    /// Unknown users, groups and contacts are created on their first PUT/PATCH instead of
    /// answering 404.
    pub accept_any_target: bool,
    /// Keep uploaded photo bytes. When false only length, BLAKE3 hash and dimensions are
    /// kept, so benchmarks of 100,000 uploads stay small; `Photo::bytes` is then empty and
    /// `GET .../photo/$value` answers an empty body.
    pub store_bytes: bool,
    /// Keep a [`crate::Recorded`] per request for [`crate::Emulator::requests`]. The counters
    /// of `/_emulator/stats` are kept either way.
    pub record_requests: bool,
    /// The `source` answered by `GET /beta/admin/people/photoUpdateSettings`
    /// (`cloud` or `onPremises`); changeable later with
    /// [`crate::Emulator::set_photo_update_source`].
    pub photo_update_source: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tenant: "contoso.onmicrosoft.com".to_owned(),
            client_id: "11111111-2222-3333-4444-555555555555".to_owned(),
            client_secret: Some("test-secret".to_owned()),
            certificate_pem: None,
            federation: None,
            managed_identity: None,
            token_ttl: Duration::from_secs(3600),
            roles: vec![
                "ProfilePhoto.ReadWrite.All".to_owned(),
                "User.Read.All".to_owned(),
                "Contacts.ReadWrite".to_owned(),
            ],
            accept_any_target: false,
            store_bytes: true,
            record_requests: true,
            photo_update_source: "cloud".to_owned(),
        }
    }
}

// The secret must never reach a log line, so Debug is written by hand.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("tenant", &self.tenant)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("certificate_pem", &self.certificate_pem.is_some())
            .field("federation", &self.federation)
            .field("managed_identity", &self.managed_identity)
            .field("token_ttl", &self.token_ttl)
            .field("roles", &self.roles)
            .field("accept_any_target", &self.accept_any_target)
            .field("store_bytes", &self.store_bytes)
            .field("record_requests", &self.record_requests)
            .field("photo_update_source", &self.photo_update_source)
            .finish()
    }
}

/// A directory user. `id` and `upn` are both accepted in paths, case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    #[serde(alias = "userPrincipalName")]
    pub upn: String,
    #[serde(default)]
    pub mail: Option<String>,
    #[serde(default, alias = "employeeId")]
    pub employee_id: Option<String>,
    /// Users without an Exchange Online mailbox cannot have photos
    /// (`404 ErrorNonExistentMailbox`).
    #[serde(default = "yes", alias = "hasMailbox")]
    pub has_mailbox: bool,
}

fn yes() -> bool {
    true
}

impl User {
    /// A user with a mailbox and neither `mail` nor `employeeId`.
    pub fn new(id: impl Into<String>, upn: impl Into<String>) -> Self {
        User {
            id: id.into(),
            upn: upn.into(),
            mail: None,
            employee_id: None,
            has_mailbox: true,
        }
    }

    #[must_use]
    pub fn with_mail(mut self, mail: impl Into<String>) -> Self {
        self.mail = Some(mail.into());
        self
    }

    #[must_use]
    pub fn with_employee_id(mut self, employee_id: impl Into<String>) -> Self {
        self.employee_id = Some(employee_id.into());
        self
    }

    #[must_use]
    pub fn without_mailbox(mut self) -> Self {
        self.has_mailbox = false;
        self
    }
}

/// What the emulator holds for one target's photo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Photo {
    /// The uploaded bytes, unchanged; empty when [`Config::store_bytes`] is false.
    pub bytes: Bytes,
    /// Length of the uploaded bytes (also when they were not kept).
    pub len: usize,
    /// Lowercase hex BLAKE3 hash of the uploaded bytes (also when they were not kept).
    pub blake3: String,
    /// The request's media type without parameters, lowercased (`image/jpeg`, `image/png`).
    pub content_type: String,
    /// The `@odata.mediaEtag`, e.g. `W/"3f2a…"`; new on every update, even of equal bytes.
    pub etag: String,
    /// Emulator-wide update counter at the time of this upload: larger is newer.
    pub updated: u64,
    /// Dimensions read from the JPEG SOF / PNG IHDR header, 648 when unreadable.
    pub width: u32,
    pub height: u32,
}

/// A federated identity credential of the app registration.
#[derive(Clone, Debug, Default)]
pub struct Federation {
    pub issuer: String,
    pub subject: String,
    pub audience: String,
    /// The first this many federated assertions are refused with AADSTS70021, as Entra does
    /// for a few minutes after a federated credential was added.
    pub propagation_refusals: u32,
}

/// The machine's managed identity.
#[derive(Clone, Debug, Default)]
pub struct ManagedIdentity {
    /// Arc: a request without `Authorization` gets 401 naming a fresh `.key` file written in
    /// this folder; the request repeated with `Authorization: Basic <its content>` gets the
    /// token. `None`: the VM metadata endpoint, which needs only `Metadata: true`.
    pub arc_key_dir: Option<PathBuf>,
    /// Names this path in the Arc challenge instead of the written file (for refusals).
    pub arc_realm: Option<PathBuf>,
    /// Ids (client, object or resource) of user-assigned identities; any other is unknown.
    pub user_assigned: Vec<String>,
}
