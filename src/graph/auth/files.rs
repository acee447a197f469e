//! Reading credential files: the permission check for files that hold a secret, and reads
//! that name the file in their error.

use std::path::Path;

use super::AuthError;

/// Refuses a file holding a secret or a private key that other users may read.
pub fn check_private(path: &Path, allow_insecure: bool) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|error| AuthError::CredentialFile {
        path: path.to_owned(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 && !allow_insecure {
        return Err(AuthError::InsecurePermissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|error| AuthError::CredentialFile {
        path: path.to_owned(),
        error,
    })
}

/// A file's text without surrounding whitespace (editors and `echo` add a newline); an
/// empty file is an error.
pub(super) fn read_trimmed(path: &Path) -> Result<String, AuthError> {
    let bytes = read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return Err(AuthError::EmptyCredential {
            path: path.to_owned(),
        });
    }
    Ok(text.to_owned())
}
