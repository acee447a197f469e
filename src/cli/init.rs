//! `photosync init`: writes a first, minimal configuration (mode 0600) from a few options and
//! says what to do next. It never overwrites a configuration: the one file it replaces is the
//! package's commented example, which holds no setting at all.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, DEFAULT_CONFIG_PATH};

use super::exit;

#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("credential").required(true).args(["secret_file", "certificate"]))]
pub struct Args {
    /// The tenant: its GUID or a verified domain (contoso.onmicrosoft.com).
    #[arg(long, value_name = "TENANT")]
    pub tenant: String,

    /// The application (client) id of the app registration.
    #[arg(long, value_name = "ID")]
    pub client_id: String,

    /// A file holding the client secret (readable by photosync only).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// A PEM file with the app's certificate and its private key.
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,

    /// The folder of user photos, named by UPN: <DIR>/**/<upn>.jpg.
    #[arg(long, value_name = "DIR")]
    pub users: PathBuf,

    /// The folder of group photos, named by the group's object id.
    #[arg(long, value_name = "DIR")]
    pub groups: Option<PathBuf>,

    /// The folder of contact photos: <DIR>/<owner upn>/<contact id>.jpg.
    #[arg(long, value_name = "DIR")]
    pub contacts: Option<PathBuf>,

    /// Where the ledger (SQLite) is kept.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/lib/photosync/state.db"
    )]
    pub database: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} exists; photosync init never overwrites a configuration (edit it, or choose another path with -c)")]
    Exists(PathBuf),
    #[error("the configuration made from these options is not valid: {0}")]
    Invalid(String),
    #[error("cannot write {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

pub fn run(config: &Path, args: &Args) -> u8 {
    let text = render(args);
    match write(config, &text) {
        Ok(()) => {
            print_next_steps(config);
            exit::OK
        }
        Err(e @ (InitError::Exists(_) | InitError::Invalid(_))) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FATAL
        }
    }
}

/// A TOML string literal.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A path as a TOML string, absolute: the config may be read from anywhere.
fn path(p: &Path) -> String {
    quote(
        &std::path::absolute(p)
            .unwrap_or_else(|_| p.to_owned())
            .to_string_lossy(),
    )
}

/// The configuration text: only what differs from the defaults.
pub fn render(args: &Args) -> String {
    let credential = match (&args.secret_file, &args.certificate) {
        (Some(f), _) => format!("client_secret_file = {}", path(f)),
        (None, Some(f)) => format!("certificate_file = {}", path(f)),
        (None, None) => String::new(),
    };
    let mut out = format!(
        "# Written by `photosync init`: only what differs from the defaults. Every key, with\n\
         # what it does: /usr/share/doc/photosync/config.example.toml.\n\n\
         [auth]\ntenant_id = {}\nclient_id = {}\n{credential}\n\n\
         [state]\ndatabase = {}\n",
        quote(&args.tenant),
        quote(&args.client_id),
        path(&args.database),
    );
    let sources = [
        (Some(&args.users), "user", "upn"),
        (args.groups.as_ref(), "group", "id"),
        (args.contacts.as_ref(), "contact", "id"),
    ];
    for (root, target, key) in sources {
        if let Some(root) = root {
            let _ = write!(
                out,
                "\n[[source]]\nroot = {}\ntarget = \"{target}\"\nkey = \"{key}\"\n",
                path(root)
            );
        }
    }
    out
}

/// Checks `text` with the config parser, then writes it to `config` (0600), never over a
/// configuration.
pub fn write(config: &Path, text: &str) -> Result<(), InitError> {
    Config::parse(text, config).map_err(|e| InitError::Invalid(e.to_string()))?;
    let io = |error| InitError::Io {
        path: config.to_owned(),
        error,
    };
    if let Some(dir) = config.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let replace = match std::fs::read_to_string(config) {
        Ok(existing) if holds_no_setting(&existing) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        // A configuration, or unreadable (it exists, and may well be one).
        _ => return Err(InitError::Exists(config.to_owned())),
    };
    // Written beside it and renamed, so a reader never sees half a file, and the mode is
    // 0600 from the first byte whatever the umask.
    let tmp = config.with_extension("toml.init-tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    drop(file);
    let placed = written.and_then(|()| {
        if replace {
            std::fs::rename(&tmp, config)
        } else {
            // A hard link fails if a file appeared meanwhile: never overwrite.
            std::fs::hard_link(&tmp, config).and_then(|()| std::fs::remove_file(&tmp))
        }
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists(config.to_owned())
        } else {
            io(e)
        });
    }
    Ok(())
}

/// Only comments and blank lines: the package's example, which sets nothing.
fn holds_no_setting(text: &str) -> bool {
    text.parse::<toml::Table>().is_ok_and(|t| t.is_empty())
}

fn print_next_steps(config: &Path) {
    let c = if config == Path::new(DEFAULT_CONFIG_PATH) {
        String::new()
    } else {
        format!(" -c {}", config.display())
    };
    let steps = [
        (
            format!("photosync{c} check"),
            "config, credentials, roots, Graph",
        ),
        (
            format!("photosync{c} backfill --dry-run --report plan.html"),
            "what a first pass would upload",
        ),
        (
            "systemctl enable --now photosync.service".to_owned(),
            "the daemon (or photosync-backfill.timer)",
        ),
    ];
    println!("wrote {} (mode 0600)", config.display());
    println!("next:");
    for (command, why) in steps {
        println!("  {command:<60} # {why}");
    }
    // The units run as a transient user that cannot read a root-only credential file.
    println!(
        "before enabling the unit: it hands the credential over with LoadCredential= (see\n\
         /lib/systemd/system/photosync.service); point the config at it, e.g.\n\
         client_secret_file = \"${{CREDENTIALS_DIRECTORY}}/client-secret\""
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> Args {
        Args {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "11111111-2222-3333-4444-555555555555".into(),
            secret_file: Some(dir.join("client-secret")),
            certificate: None,
            users: dir.join("photos/users"),
            groups: Some(dir.join("photos/groups")),
            contacts: None,
            database: dir.join("state.db"),
        }
    }

    #[test]
    fn the_written_config_loads_with_the_parser_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("etc/config.toml");
        write(&path, &render(&args(dir.path()))).expect("written");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cfg = Config::load(&path).expect("loads");
        assert_eq!(
            cfg.auth.tenant_id.as_deref(),
            Some("contoso.onmicrosoft.com")
        );
        assert_eq!(
            cfg.auth.client_secret_file,
            Some(dir.path().join("client-secret"))
        );
        assert_eq!(cfg.sources.len(), 2);
        assert_eq!(cfg.sources[0].root, dir.path().join("photos/users"));
        assert_eq!(cfg.state.database, dir.path().join("state.db"));
    }

    #[test]
    fn a_configuration_is_never_overwritten_but_the_commented_example_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[auth]\ntenant_id = \"x\"\n").expect("seed");
        let err = write(&path, &render(&args(dir.path()))).expect_err("refused");
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "[auth]\ntenant_id = \"x\"\n"
        );

        std::fs::write(&path, "# [auth]\n# tenant_id = \"...\"\n\n").expect("seed");
        write(&path, &render(&args(dir.path()))).expect("replaced");
        Config::load(&path).expect("loads");
    }

    /// The package's /etc/photosync/config.toml: sets nothing (so `init` may replace it), and
    /// every key in it, uncommented, is one the parser knows, with a valid value.
    #[test]
    fn the_packaged_example_sets_nothing_and_uncommented_it_loads() {
        let example = include_str!("../../packaging/config.toml");
        assert!(holds_no_setting(example));
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c == '[' || c.is_ascii_lowercase()) => {
                    rest
                }
                _ => l,
            })
            .fold(String::new(), |mut text, l| {
                text.push_str(l);
                text.push('\n');
                text
            })
            // What systemd's LoadCredential= sets in the unit.
            .replace(
                "${CREDENTIALS_DIRECTORY}",
                "/run/credentials/photosync.service",
            );
        let cfg = Config::parse(&uncommented, Path::new("/etc/photosync/config.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(cfg.sources.len(), 3);
        assert_eq!(cfg.upload.workers, 4);
        assert!(cfg.server.listen.is_some());
    }
}
