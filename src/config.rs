//! Typed configuration: the TOML file an operator writes, parsed strictly.
//!
//! Invariants: unknown keys are refused (`deny_unknown_fields`), every default lives in an
//! `impl Default` beside its fields, and every validation error names the key and, where the
//! key is present in the file, its line. Relative paths are resolved against the config file's
//! folder once, at load time, so nothing downstream has to know where the file was.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use secrecy::SecretString;
use serde::Deserialize;

use crate::image::{CropMode as ImageCrop, Mode as ImageMode, Settings as ImageSettings};

/// Where the config file is looked for when `-c` is not given and `$PHOTOSYNC_CONFIG` is unset.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/photosync/config.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}{}: `{key}`: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub auth: AuthConfig,
    #[serde(default)]
    pub cloud: CloudConfig,
    pub state: StateConfig,
    #[serde(default)]
    pub upload: UploadConfig,
    #[serde(default)]
    pub image: ImageConfig,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(rename = "source", default)]
    pub sources: Vec<SourceConfig>,
    /// The file this config was read from; relative paths were resolved against its folder.
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Needed by every credential but a managed identity; with `credential = "environment"`,
    /// `$AZURE_TENANT_ID` when left out.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Needed by every credential but a managed identity; with `credential = "environment"`,
    /// `$AZURE_CLIENT_ID` when left out.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// A PEM holding the certificate and its private key, or a PKCS#12 (`.pfx`) file.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// The PKCS#12 file's password (a trailing newline is ignored); none: no password.
    #[serde(default)]
    pub certificate_password_file: Option<PathBuf>,
    #[serde(default)]
    pub assertion: AssertionAlg,
    /// A JWT the platform writes and replaces (workload identity federation).
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// `"environment"`: the conventional `AZURE_*` variables fill what the config leaves out.
    #[serde(default)]
    pub credential: Option<CredentialFrom>,
    /// The system-assigned managed identity of this Azure VM or Arc-enabled server.
    #[serde(default)]
    pub managed_identity: bool,
    /// A user-assigned managed identity, named by one of its three ids.
    #[serde(default)]
    pub managed_identity_client_id: Option<String>,
    #[serde(default)]
    pub managed_identity_object_id: Option<String>,
    #[serde(default)]
    pub managed_identity_resource_id: Option<String>,
    /// The full URL of the managed identity token endpoint, in place of the platform's.
    #[serde(default)]
    pub managed_identity_endpoint: Option<String>,
    /// `$AZURE_AUTHORITY_HOST` with `credential = "environment"`: the token host in place of
    /// `[cloud] login_url`.
    #[serde(skip)]
    pub authority_host: Option<String>,
    /// Accept credential files that other users can read (`--allow-insecure-permissions`).
    #[serde(skip)]
    pub allow_insecure_permissions: bool,
}

/// Where `[auth]` takes what it does not say itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialFrom {
    /// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`.
    Environment,
}

/// The one credential `[auth]` names, after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    Secret,
    Certificate,
    Federated,
    ManagedIdentity,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Secret => "client secret",
            CredentialKind::Certificate => "certificate",
            CredentialKind::Federated => "workload identity federation",
            CredentialKind::ManagedIdentity => "managed identity",
        }
    }
}

// Hand-written so that even a future field cannot leak the secret through `{:?}`.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("certificate_file", &self.certificate_file)
            .field("certificate_password_file", &self.certificate_password_file)
            .field("assertion", &self.assertion)
            .field("federated_token_file", &self.federated_token_file)
            .field("credential", &self.credential)
            .field("managed_identity", &self.managed_identity)
            .field(
                "managed_identity_client_id",
                &self.managed_identity_client_id,
            )
            .field(
                "managed_identity_object_id",
                &self.managed_identity_object_id,
            )
            .field(
                "managed_identity_resource_id",
                &self.managed_identity_resource_id,
            )
            .field("managed_identity_endpoint", &self.managed_identity_endpoint)
            .field("authority_host", &self.authority_host)
            .field(
                "allow_insecure_permissions",
                &self.allow_insecure_permissions,
            )
            .finish()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssertionAlg {
    /// RS256 with an `x5t` (SHA-1 thumbprint) header: the older form, still the most widely accepted.
    #[default]
    Rs256,
    /// PS256 with an `x5t#S256` (SHA-256 thumbprint) header: the form current docs describe.
    Ps256,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CloudName {
    #[default]
    Global,
    Usgov,
    UsgovDod,
    China,
}

impl CloudName {
    fn urls(self) -> (&'static str, &'static str) {
        match self {
            CloudName::Global => (
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com",
            ),
            CloudName::Usgov => (
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us",
            ),
            CloudName::UsgovDod => (
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us",
            ),
            CloudName::China => (
                "https://login.chinacloudapi.cn",
                "https://microsoftgraph.chinacloudapi.cn",
            ),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    #[serde(default)]
    pub name: CloudName,
    #[serde(default)]
    pub login_url: Option<String>,
    #[serde(default)]
    pub graph_url: Option<String>,
}

impl CloudConfig {
    /// The token host, without a trailing slash.
    pub fn login_url(&self) -> String {
        self.login_url
            .clone()
            .unwrap_or_else(|| self.name.urls().0.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }

    /// The Graph host, without a trailing slash or version.
    pub fn graph_url(&self) -> String {
        self.graph_url
            .clone()
            .unwrap_or_else(|| self.name.urls().1.to_owned())
            .trim_end_matches('/')
            .to_owned()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub database: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum UploadMethod {
    #[default]
    #[serde(alias = "put")]
    PUT,
    #[serde(alias = "patch")]
    PATCH,
}

impl UploadMethod {
    pub fn as_reqwest(self) -> reqwest::Method {
        match self {
            UploadMethod::PUT => reqwest::Method::PUT,
            UploadMethod::PATCH => reqwest::Method::PATCH,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    pub method: UploadMethod,
    /// Concurrent uploads. Exchange allows 4 concurrent requests per mailbox, and some tenants
    /// appear to count per app, so the default stays modest.
    pub workers: usize,
    pub requests_per_second: f64,
    pub burst: u32,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long in-flight uploads may finish after a stop was asked for.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// After each upload, read the photo's `mediaEtag` back (one GET through the same limiter),
    /// so that `verify` can tell a photo changed behind photosync's back.
    pub record_etag: bool,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            method: UploadMethod::PUT,
            workers: 4,
            requests_per_second: 4.0,
            burst: 4,
            max_attempts: 8,
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            record_etag: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageModeConfig {
    #[default]
    Normalize,
    Passthrough,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    pub mode: ImageModeConfig,
    pub max_side: u32,
    /// Deprecated: `true` is `crop = "center"`.
    pub square: bool,
    /// `none`, `center` or `face`; unset follows `square`.
    pub crop: Option<crate::image::CropMode>,
    pub jpeg_quality: u8,
    /// Refuse images that declare more pixels than this, before decoding (decompression bombs).
    pub max_pixels: u64,
}

impl Default for ImageConfig {
    fn default() -> Self {
        let d = ImageSettings::default();
        Self {
            mode: ImageModeConfig::Normalize,
            max_side: d.max_side,
            square: false,
            crop: None,
            jpeg_quality: d.jpeg_quality,
            max_pixels: d.max_pixels,
        }
    }
}

impl ImageConfig {
    /// Whether the deprecated `square` key is set (for `check`'s note).
    pub fn uses_deprecated_square(&self) -> bool {
        self.square
    }

    pub fn settings(&self) -> ImageSettings {
        ImageSettings {
            mode: match self.mode {
                ImageModeConfig::Normalize => ImageMode::Normalize,
                ImageModeConfig::Passthrough => ImageMode::Passthrough,
            },
            max_side: self.max_side,
            crop: self.crop.unwrap_or(if self.square {
                ImageCrop::Center
            } else {
                ImageCrop::None
            }),
            jpeg_quality: self.jpeg_quality,
            max_pixels: self.max_pixels,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// A removed file leaves the photo in Graph as it is.
    #[default]
    Keep,
    /// A removed file removes the user's or group's photo in Graph.
    Delete,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify where it works; polling for a root where watching fails.
    #[default]
    Auto,
    /// Never watch; poll every `poll_interval` (network file systems that send no events).
    Poll,
}

/// How the daemon (`run`) follows the tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub on_delete: OnDelete,
    /// More deletions than this in one pass are refused (an unmounted share looks empty).
    pub max_deletes_per_pass: usize,
    /// A file is synced only once its size and mtime have not changed for this long.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
    /// A full rescan runs this often whatever the watcher says.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    pub watch: WatchMode,
    /// How often a root that cannot be watched is rescanned.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A photo whose transient failures used up its attempts is tried again after this long.
    #[serde(with = "humantime_serde")]
    pub retry_failed_after: Duration,
    /// How long a looked-up id (mail, employeeId) is trusted before it is looked up again.
    #[serde(with = "humantime_serde")]
    pub resolve_ttl: Duration,
    /// How often a photo whose user does not exist yet (a new hire) is looked up again.
    #[serde(with = "humantime_serde")]
    pub parked_retry: Duration,
    /// After this long without a matching user, a parked photo is recorded as failed.
    #[serde(with = "humantime_serde")]
    pub parked_max_age: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            on_delete: OnDelete::Keep,
            max_deletes_per_pass: 50,
            debounce: Duration::from_secs(3),
            rescan_interval: Duration::from_secs(6 * 3600),
            watch: WatchMode::Auto,
            poll_interval: Duration::from_secs(300),
            retry_failed_after: Duration::from_secs(24 * 3600),
            resolve_ttl: Duration::from_secs(24 * 3600),
            parked_retry: Duration::from_secs(3600),
            parked_max_age: Duration::from_secs(14 * 24 * 3600),
        }
    }
}

/// The optional health and metrics endpoint of the daemon.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// e.g. "127.0.0.1:9898"; unset: no server.
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    User,
    Group,
    Contact,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::User => "user",
            TargetKind::Group => "group",
            TargetKind::Contact => "contact",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// The file stem is a user principal name.
    Upn,
    /// The file stem is a Graph object id.
    Id,
    /// The file stem is the user's primary e-mail address, looked up in Graph.
    Mail,
    /// The file stem is the user's employeeId (HR number), looked up in Graph.
    EmployeeId,
}

impl KeyKind {
    /// Whether names of this kind must be looked up in Graph before a request can name the user.
    pub fn needs_lookup(self) -> bool {
        matches!(self, KeyKind::Mail | KeyKind::EmployeeId)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub root: PathBuf,
    pub target: TargetKind,
    /// What the file stem is; with `mapping`, what the mapping file's target column holds.
    pub key: KeyKind,
    /// A CSV file mapping file names (or stems) to targets, for HR exports named by badge number.
    #[serde(default)]
    pub mapping: Option<PathBuf>,
    /// The mapping file's column holding the file name.
    #[serde(default = "default_column_file")]
    pub column_file: String,
    /// The mapping file's column holding the target (what `key` says).
    #[serde(default = "default_column_target")]
    pub column_target: String,
    /// Only paths (relative to `root`, `/`-separated) matching one of these globs are photos.
    #[serde(default)]
    pub include: Vec<String>,
    /// Paths matching one of these globs are skipped.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `include` and `exclude`, compiled when the config was validated.
    #[serde(skip)]
    pub filter: PathFilter,
}

/// A source's `include` and `exclude` globs, compiled once. A glob that does not compile is a
/// config error, never a filter left out: a missing `include` would admit every file.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
}

/// A glob (or a list of them) that does not compile.
#[derive(Debug, thiserror::Error)]
// globset's message quotes the glob it could not parse, so only a whole list is named here.
#[error("{}{error}", if pattern.is_some() { String::new() } else { format!("the {list} globs do not compile together: ") })]
pub struct GlobError {
    /// `include` or `exclude`.
    pub list: &'static str,
    /// The glob, when one alone fails; `None` when the list fails as a whole.
    pub pattern: Option<String>,
    pub error: globset::Error,
}

impl PathFilter {
    /// Compiles the globs (`*` does not cross a `/`).
    pub fn new(include: &[String], exclude: &[String]) -> Result<PathFilter, GlobError> {
        Ok(PathFilter {
            include: compile_globs("include", include)?,
            exclude: compile_globs("exclude", exclude)?,
        })
    }

    /// Whether there is no glob at all (every path is admitted).
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Whether `rel` (relative to the root, `/`-separated) is left out: it matches no `include`
    /// glob (when there are any) or matches an `exclude` glob.
    pub fn excludes(&self, rel: &str) -> bool {
        self.include.as_ref().is_some_and(|g| !g.is_match(rel))
            || self.exclude.as_ref().is_some_and(|g| g.is_match(rel))
    }
}

fn compile_globs(list: &'static str, globs: &[String]) -> Result<Option<GlobSet>, GlobError> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for g in globs {
        let glob = GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|error| GlobError {
                list,
                pattern: Some(g.clone()),
                error,
            })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|error| GlobError {
        list,
        pattern: None,
        error,
    })
}

impl SourceConfig {
    /// A source with no mapping file and no globs.
    pub fn new(root: PathBuf, target: TargetKind, key: KeyKind) -> SourceConfig {
        SourceConfig {
            root,
            target,
            key,
            mapping: None,
            column_file: default_column_file(),
            column_target: default_column_target(),
            include: Vec::new(),
            exclude: Vec::new(),
            filter: PathFilter::default(),
        }
    }
}

fn default_column_file() -> String {
    "file".into()
}

fn default_column_target() -> String {
    "target".into()
}

impl Config {
    /// Reads, parses and validates the file; relative paths become absolute.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        // Relative paths in the file are relative to its folder, wherever photosync runs from.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        Self::parse(&text, &path)
    }

    /// Parses `text` as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        path.clone_into(&mut cfg.path);
        cfg.auth
            .fill_from_environment(|name| std::env::var(name).ok());
        let base = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        cfg.resolve_paths(&base);
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                line: locate_key(text, &key),
                key,
                message,
            })?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        for p in self.auth.files_mut() {
            if let Some(expanded) = expand_credentials_dir(p) {
                *p = expanded;
            }
        }
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.state.database);
        for p in self.auth.files_mut() {
            abs(p);
        }
        for s in &mut self.sources {
            abs(&mut s.root);
            if let Some(m) = s.mapping.as_mut() {
                abs(m);
            }
        }
    }

    /// Checks what serde cannot, and compiles the sources' globs.
    fn validate(&mut self) -> Result<(), Invalid> {
        self.auth.validate()?;
        check_url("cloud.login_url", &self.cloud.login_url())?;
        if let Some(host) = &self.auth.authority_host {
            check_url("AZURE_AUTHORITY_HOST", host)?;
        }
        check_url("cloud.graph_url", &self.cloud.graph_url())?;
        self.upload.validate()?;
        self.image.validate()?;
        self.sync.validate()?;
        if self.sources.is_empty() {
            return invalid("source", "at least one [[source]] is needed");
        }
        for (n, s) in self.sources.iter().enumerate() {
            s.validate(n)?;
            for (m, other) in self.sources.iter().enumerate().take(n) {
                if s.root.starts_with(&other.root) || other.root.starts_with(&s.root) {
                    return Err((
                        format!("source[{n}].root"),
                        format!(
                            "{} overlaps source[{m}] ({}): one file would map to two targets",
                            s.root.display(),
                            other.root.display()
                        ),
                    ));
                }
            }
        }
        for (n, s) in self.sources.iter_mut().enumerate() {
            s.filter = PathFilter::new(&s.include, &s.exclude)
                .map_err(|e| (format!("source[{n}].{}", e.list), e.to_string()))?;
        }
        Ok(())
    }
}

/// A validation error: (dotted key, message).
type Invalid = (String, String);

fn invalid(key: &str, message: &str) -> Result<(), Invalid> {
    Err((key.to_owned(), message.to_owned()))
}

impl AuthConfig {
    /// The credential `[auth]` names; validation made sure there is exactly one
    /// (`$PHOTOSYNC_CLIENT_SECRET` stands for a secret when none is named).
    pub fn kind(&self) -> CredentialKind {
        if self.certificate_file.is_some() {
            CredentialKind::Certificate
        } else if self.federated_token_file.is_some() {
            CredentialKind::Federated
        } else if self.is_managed_identity() {
            CredentialKind::ManagedIdentity
        } else {
            CredentialKind::Secret
        }
    }

    pub fn is_managed_identity(&self) -> bool {
        self.managed_identity
            || self.managed_identity_client_id.is_some()
            || self.managed_identity_object_id.is_some()
            || self.managed_identity_resource_id.is_some()
    }

    /// The tenant, once validated for a kind that needs it (empty for a managed identity).
    pub fn tenant(&self) -> &str {
        self.tenant_id.as_deref().unwrap_or("")
    }

    /// The app's client id, once validated for a kind that needs it.
    pub fn client(&self) -> &str {
        self.client_id.as_deref().unwrap_or("")
    }

    fn files_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        [
            self.client_secret_file.as_mut(),
            self.certificate_file.as_mut(),
            self.certificate_password_file.as_mut(),
            self.federated_token_file.as_mut(),
        ]
        .into_iter()
        .flatten()
    }

    /// With `credential = "environment"`, what the config leaves out comes from the
    /// variables workload identity platforms set; what the config sets wins.
    pub(crate) fn fill_from_environment(&mut self, var: impl Fn(&str) -> Option<String>) {
        if self.credential != Some(CredentialFrom::Environment) {
            return;
        }
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        self.tenant_id = self.tenant_id.take().or_else(|| var("AZURE_TENANT_ID"));
        self.client_id = self.client_id.take().or_else(|| var("AZURE_CLIENT_ID"));
        let named = self.client_secret.is_some()
            || self.client_secret_file.is_some()
            || self.certificate_file.is_some()
            || self.is_managed_identity();
        if self.federated_token_file.is_none() && !named {
            self.federated_token_file = var("AZURE_FEDERATED_TOKEN_FILE").map(PathBuf::from);
        }
        self.authority_host = var("AZURE_AUTHORITY_HOST");
    }

    fn validate(&self) -> Result<(), Invalid> {
        let creds = [
            self.client_secret.is_some(),
            self.client_secret_file.is_some(),
            self.certificate_file.is_some(),
            self.federated_token_file.is_some(),
            self.is_managed_identity(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if creds > 1 {
            return invalid(
                "auth",
                "set only one of client_secret, client_secret_file, certificate_file, federated_token_file and managed_identity",
            );
        }
        if creds == 0 && std::env::var_os("PHOTOSYNC_CLIENT_SECRET").is_none() {
            return invalid(
                "auth",
                if self.credential.is_some() {
                    "credential = \"environment\" but $AZURE_FEDERATED_TOKEN_FILE is not set, and [auth] names no other credential"
                } else {
                    "no credential: set client_secret_file, client_secret, certificate_file, federated_token_file or managed_identity (or the PHOTOSYNC_CLIENT_SECRET environment variable)"
                },
            );
        }
        if self.is_managed_identity() {
            self.validate_managed_identity()?;
        } else {
            self.validate_app()?;
        }
        if self.certificate_password_file.is_some() && self.certificate_file.is_none() {
            return invalid(
                "auth.certificate_password_file",
                "is the password of a PKCS#12 certificate_file, and none is set",
            );
        }
        for (key, p) in [
            ("auth.client_secret_file", &self.client_secret_file),
            ("auth.certificate_file", &self.certificate_file),
            (
                "auth.certificate_password_file",
                &self.certificate_password_file,
            ),
            ("auth.federated_token_file", &self.federated_token_file),
        ] {
            if p.as_ref()
                .is_some_and(|p| p.to_string_lossy().contains(CREDENTIALS_DIRECTORY))
            {
                return invalid(
                    key,
                    "uses ${CREDENTIALS_DIRECTORY} but that variable is not set (is LoadCredential= in the unit?)",
                );
            }
        }
        Ok(())
    }

    /// An app registration's credential needs its tenant and client id.
    fn validate_app(&self) -> Result<(), Invalid> {
        let from_env = |var: &str| {
            if self.credential.is_some() {
                format!("must not be empty (nor ${var}, with credential = \"environment\")")
            } else {
                "must not be empty".to_owned()
            }
        };
        let tenant = self.tenant().trim();
        if tenant.is_empty() {
            return Err(("auth.tenant_id".into(), from_env("AZURE_TENANT_ID")));
        }
        if matches!(
            tenant.to_ascii_lowercase().as_str(),
            "common" | "organizations" | "consumers"
        ) {
            return invalid(
                "auth.tenant_id",
                "app-only tokens need a specific tenant: use the tenant GUID or a verified domain, not `common`",
            );
        }
        if self.client().trim().is_empty() {
            return Err(("auth.client_id".into(), from_env("AZURE_CLIENT_ID")));
        }
        Ok(())
    }

    fn validate_managed_identity(&self) -> Result<(), Invalid> {
        let ids = [
            &self.managed_identity_client_id,
            &self.managed_identity_object_id,
            &self.managed_identity_resource_id,
        ];
        if ids.iter().filter(|i| i.is_some()).count() > 1 {
            return invalid(
                "auth",
                "name a user-assigned managed identity by one of managed_identity_client_id, managed_identity_object_id and managed_identity_resource_id",
            );
        }
        if ids
            .iter()
            .any(|i| i.as_ref().is_some_and(|i| i.trim().is_empty()))
        {
            return invalid("auth", "a managed_identity_*_id must not be empty");
        }
        if let Some(url) = &self.managed_identity_endpoint {
            let parsed = url::Url::parse(url).map_err(|e| {
                (
                    "auth.managed_identity_endpoint".to_owned(),
                    format!("not a URL: {e}"),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return invalid(
                    "auth.managed_identity_endpoint",
                    "must be an http or https URL",
                );
            }
        }
        Ok(())
    }
}

impl UploadConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.workers == 0 || self.workers > 64 {
            return invalid("upload.workers", "must be between 1 and 64");
        }
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return invalid("upload.requests_per_second", "must be a positive number");
        }
        if self.burst == 0 {
            return invalid("upload.burst", "must be at least 1");
        }
        if self.max_attempts == 0 {
            return invalid("upload.max_attempts", "must be at least 1");
        }
        if self.request_timeout < Duration::from_secs(1) {
            return invalid("upload.request_timeout", "must be at least 1s");
        }
        Ok(())
    }
}

impl ImageConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(48..=4096).contains(&self.max_side) {
            return invalid("image.max_side", "must be between 48 and 4096");
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return invalid("image.jpeg_quality", "must be between 1 and 100");
        }
        if self.max_pixels < 1_000_000 {
            return invalid("image.max_pixels", "must be at least 1000000");
        }
        if self.square && self.crop.is_some() {
            return invalid(
                "image.square",
                "is replaced by image.crop: remove image.square",
            );
        }
        Ok(())
    }
}

impl SyncConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.debounce > Duration::from_secs(3600) {
            return invalid("sync.debounce", "must be at most 1h");
        }
        if self.rescan_interval < Duration::from_secs(1) {
            return invalid("sync.rescan_interval", "must be at least 1s");
        }
        if self.retry_failed_after > Duration::from_secs(366 * 24 * 3600) {
            return invalid("sync.retry_failed_after", "must be at most 366 days");
        }
        if self.poll_interval < Duration::from_millis(100) {
            return invalid("sync.poll_interval", "must be at least 100ms");
        }
        if self.parked_retry < Duration::from_secs(1) {
            return invalid("sync.parked_retry", "must be at least 1s");
        }
        Ok(())
    }
}

impl SourceConfig {
    /// What one source must satisfy on its own; `n` is its place in the file.
    fn validate(&self, n: usize) -> Result<(), Invalid> {
        let key = |leaf: &str| format!("source[{n}].{leaf}");
        if self.target == TargetKind::Group && self.key != KeyKind::Id {
            return Err((
                key("key"),
                "groups are named by object id: use key = \"id\"".to_owned(),
            ));
        }
        if self.target == TargetKind::Contact && (self.key.needs_lookup() || self.mapping.is_some())
        {
            return Err((
                key("key"),
                "contacts are named by their place in the tree: use key = \"id\" and no mapping"
                    .to_owned(),
            ));
        }
        if self.mapping.is_some() && self.column_file.trim() == self.column_target.trim() {
            return Err((
                key("column_target"),
                "must name a different column than column_file".to_owned(),
            ));
        }
        Ok(())
    }
}

const CREDENTIALS_DIRECTORY: &str = "${CREDENTIALS_DIRECTORY}";

/// `${CREDENTIALS_DIRECTORY}/name` → the directory systemd's `LoadCredential=` filled.
fn expand_credentials_dir(p: &Path) -> Option<PathBuf> {
    let s = p.to_str()?;
    let rest = s.strip_prefix(CREDENTIALS_DIRECTORY)?;
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let mut out = PathBuf::from(dir);
    out.push(rest.trim_start_matches('/'));
    Some(out)
}

fn check_url(key: &str, raw: &str) -> Result<(), Invalid> {
    let url = url::Url::parse(raw).map_err(|e| (key.to_owned(), format!("not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err((
            key.to_owned(),
            "plain http is only allowed for loopback hosts (127.0.0.1, ::1, localhost); use https"
                .to_owned(),
        )),
        other => Err((key.to_owned(), format!("unsupported scheme `{other}`"))),
    }
}

/// Finds the line of a dotted key like `upload.workers` or `source[1].root` in the raw TOML,
/// so an error can point at it. Best effort: a key set by default has no line.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    let (table, index, leaf) = split_key(key);
    let mut current = String::new();
    let mut array_index: Option<usize> = None;
    let mut table_line = None;
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        // A header may carry a comment (`[sync]  # …`, as in config.example.toml).
        let header = t.split_once('#').map_or(t, |(h, _)| h).trim_end();
        if let Some(name) = header.strip_prefix("[[").and_then(|r| r.strip_suffix("]]")) {
            let name = name.trim();
            if name == current {
                array_index = array_index.map(|i| i + 1);
            } else {
                name.clone_into(&mut current);
                array_index = Some(0);
            }
        } else if let Some(name) = header.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            name.trim().clone_into(&mut current);
            array_index = None;
        } else if current == table && array_index == index {
            if let Some(leaf) = leaf {
                let k = t.split('=').next().unwrap_or("").trim();
                if k == leaf {
                    return Some(n + 1);
                }
            }
            continue;
        } else {
            continue;
        }
        if current == table && array_index == index && table_line.is_none() {
            table_line = Some(n + 1);
        }
    }
    table_line
}

fn split_key(key: &str) -> (&str, Option<usize>, Option<&str>) {
    let (head, leaf) = match key.split_once('.') {
        Some((h, l)) => (h, Some(l)),
        None => (key, None),
    };
    match head.split_once('[') {
        Some((t, rest)) => (t, rest.trim_end_matches(']').parse().ok(), leaf),
        None if head == "source" => (head, Some(0), leaf),
        None => (head, None, leaf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[auth]
tenant_id = "contoso.onmicrosoft.com"
client_id = "id"
client_secret = "s"

[state]
database = "state.db"

[[source]]
root = "photos/users"
target = "user"
key = "upn"
"#;

    #[test]
    fn the_example_config_parses_and_states_the_defaults() {
        let text = include_str!("../config.example.toml");
        let cfg = Config::parse(text, Path::new("/etc/photosync/config.toml")).unwrap();
        assert_eq!(
            format!("{:?}", cfg.upload),
            format!("{:?}", UploadConfig::default())
        );
        assert_eq!(
            format!("{:?}", cfg.image),
            format!("{:?}", ImageConfig::default())
        );
        assert_eq!(
            format!("{:?}", cfg.sync),
            format!("{:?}", SyncConfig::default())
        );
        assert_eq!(cfg.sources.len(), 3);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let cfg = Config::parse(MIN, Path::new("/etc/ps/config.toml")).unwrap();
        assert_eq!(cfg.state.database, Path::new("/etc/ps/state.db"));
        assert_eq!(cfg.sources[0].root, Path::new("/etc/ps/photos/users"));
        assert_eq!(cfg.upload.workers, 4);
    }

    #[test]
    fn invalid_value_names_key_and_line() {
        let text = format!("{MIN}\n[upload]\nworkers = 0\n");
        let e = Config::parse(&text, Path::new("c.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("upload.workers"), "{msg}");
        assert!(msg.contains("c.toml:16"), "{msg}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = MIN.replace("key = \"upn\"", "key = \"upn\"\nroots = 1");
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("roots"), "{msg}");
        assert!(msg.contains("line 14"), "{msg}");
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let ok = format!("{MIN}\n[cloud]\ngraph_url = \"http://127.0.0.1:9\"\n");
        Config::parse(&ok, Path::new("c.toml")).unwrap();
        let bad = format!("{MIN}\n[cloud]\ngraph_url = \"http://graph.example.com\"\n");
        let msg = Config::parse(&bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cloud.graph_url"), "{msg}");
    }

    fn auth_of(text: &str) -> AuthConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_environment_fills_what_the_config_leaves_out_and_never_more() {
        let env = |n: &str| {
            Some(
                match n {
                    "AZURE_TENANT_ID" => "env-tenant",
                    "AZURE_CLIENT_ID" => "env-client",
                    "AZURE_FEDERATED_TOKEN_FILE" => {
                        "/var/run/secrets/azure/tokens/azure-identity-token"
                    }
                    "AZURE_AUTHORITY_HOST" => "https://login.microsoftonline.us/",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let mut a = auth_of("credential = \"environment\"");
        a.fill_from_environment(env);
        assert_eq!(a.tenant(), "env-tenant");
        assert_eq!(a.client(), "env-client");
        assert_eq!(a.kind(), CredentialKind::Federated);
        assert_eq!(
            a.authority_host.as_deref(),
            Some("https://login.microsoftonline.us/")
        );
        assert!(a.validate().is_ok());

        let mut a = auth_of(
            "credential = \"environment\"\nclient_id = \"mine\"\nclient_secret_file = \"s\"",
        );
        a.fill_from_environment(env);
        assert_eq!(a.client(), "mine");
        assert_eq!(a.kind(), CredentialKind::Secret);
        assert!(a.federated_token_file.is_none());

        let mut a = auth_of("client_secret_file = \"s\"");
        a.fill_from_environment(env);
        assert!(
            a.tenant_id.is_none(),
            "without credential = environment the variables are not read"
        );
        assert_eq!(a.validate().unwrap_err().0, "auth.tenant_id");
    }

    #[test]
    fn one_credential_and_what_each_needs() {
        let mi = auth_of("managed_identity = true");
        assert_eq!(mi.kind(), CredentialKind::ManagedIdentity);
        assert!(mi.validate().is_ok(), "no tenant or client id needed");
        let two = auth_of("managed_identity_client_id = \"a\"\nmanaged_identity_object_id = \"b\"");
        assert!(two.validate().unwrap_err().1.contains("one of"));
        let both = auth_of("tenant_id = \"t\"\nclient_id = \"c\"\nfederated_token_file = \"f\"\nclient_secret_file = \"s\"");
        assert!(both.validate().unwrap_err().1.contains("only one"));
        let pw = auth_of("tenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_file = \"s\"\ncertificate_password_file = \"p\"");
        assert_eq!(
            pw.validate().unwrap_err().0,
            "auth.certificate_password_file"
        );
        let bad = auth_of("managed_identity = true\nmanaged_identity_endpoint = \"ftp://x\"");
        assert_eq!(
            bad.validate().unwrap_err().0,
            "auth.managed_identity_endpoint"
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let text = MIN.replace(
            "client_secret = \"s\"",
            "client_secret = \"hunter2-very-secret\"",
        );
        let cfg = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn source_index_locates_second_table() {
        let text = format!(
            "{MIN}\n[[source]]\nroot = \"photos/users/sub\"\ntarget = \"user\"\nkey = \"upn\"\n"
        );
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("source[1].root"), "{msg}");
        assert!(msg.contains("c.toml:16"), "{msg}");
    }

    fn with_staff_source(globs: &str) -> String {
        format!("{MIN}\n[[source]]\nroot = \"staff\"\ntarget = \"user\"\nkey = \"upn\"\n{globs}\n")
    }

    /// An include list of 50,000 alternatives parses glob by glob but is too big to compile as
    /// a set. It used to be dropped, which turned `include` into "every file".
    fn oversized_glob() -> String {
        let alternatives: Vec<String> = (0..50_000).map(|i| format!("a{i}*b")).collect();
        format!("{{{}}}", alternatives.join(","))
    }

    #[test]
    fn a_glob_that_does_not_compile_is_refused_with_its_key_and_line() {
        let text = with_staff_source("exclude = [\"ok/**\", \"[unclosed\"]");
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("source[1].exclude"), "{msg}");
        assert!(msg.contains("c.toml:19"), "{msg}");
        assert_eq!(msg.matches("[unclosed").count(), 1, "{msg}");

        let text = with_staff_source(&format!("include = [\"{}\"]", oversized_glob()));
        let msg = Config::parse(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        let head: String = msg.chars().take(300).collect();
        assert!(msg.contains("source[1].include"), "{head}");
        assert!(msg.contains("c.toml:19"), "{head}");
        assert!(msg.contains("do not compile together"), "{head}");
    }

    #[test]
    fn globs_are_compiled_with_the_config() {
        let text = with_staff_source("include = [\"current/**\"]\nexclude = [\"**/old-*/**\"]");
        let cfg = Config::parse(&text, Path::new("c.toml")).unwrap();
        assert!(cfg.sources[0].filter.is_empty());
        let f = &cfg.sources[1].filter;
        assert!(!f.excludes("current/a@x.com.jpg"));
        assert!(f.excludes("archive/a@x.com.jpg"));
        assert!(f.excludes("current/old-2019/a@x.com.jpg"));
        // `*` does not cross a folder.
        let f = PathFilter::new(&["*.jpg".into()], &[]).unwrap();
        assert!(!f.excludes("a.jpg"));
        assert!(f.excludes("sub/a.jpg"));
    }
}
