//! The client secret: from `$PHOTOSYNC_CLIENT_SECRET`, a file (read again for every token
//! request, so a rotated secret is picked up), or inline in the config.

use std::fmt;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::{files, AuthError};
use crate::config::AuthConfig;

pub(super) enum SecretFrom {
    /// `$PHOTOSYNC_CLIENT_SECRET` or `[auth] client_secret`: fixed for the process's life.
    Value(SecretString),
    File {
        path: PathBuf,
        allow_insecure: bool,
    },
}

impl fmt::Debug for SecretFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretFrom::Value(_) => f.write_str("Value([redacted])"),
            SecretFrom::File { path, .. } => write!(f, "File({})", path.display()),
        }
    }
}

impl SecretFrom {
    /// `$PHOTOSYNC_CLIENT_SECRET` (given as `env`, so tests leave the process's alone) wins
    /// over the file and the inline secret.
    pub(super) fn new(cfg: &AuthConfig, env: Option<String>) -> Result<SecretFrom, AuthError> {
        if let Some(s) = env.filter(|s| !s.trim().is_empty()) {
            return Ok(SecretFrom::Value(SecretString::from(s.trim().to_owned())));
        }
        if let Some(path) = &cfg.client_secret_file {
            let from = SecretFrom::File {
                path: path.clone(),
                allow_insecure: cfg.allow_insecure_permissions,
            };
            from.read()?;
            return Ok(from);
        }
        match &cfg.client_secret {
            Some(s) => Ok(SecretFrom::Value(s.clone())),
            // Config validation accepts a set $PHOTOSYNC_CLIENT_SECRET in place of the keys;
            // it may still be blank.
            None => Err(AuthError::NoCredential),
        }
    }

    /// The secret as it is now.
    pub(super) fn read(&self) -> Result<SecretString, AuthError> {
        match self {
            SecretFrom::Value(s) => Ok(SecretString::from(s.expose_secret().to_owned())),
            SecretFrom::File {
                path,
                allow_insecure,
            } => {
                files::check_private(path, *allow_insecure)?;
                files::read_trimmed(path).map(SecretString::from)
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            SecretFrom::Value(_) => "client secret (from the environment or the config)".into(),
            SecretFrom::File { path, .. } => format!("client secret from {}", path.display()),
        }
    }
}
