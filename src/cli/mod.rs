//! Command-line interface: one file per subcommand; this one parses the global options, sets up
//! logging and the runtime, and turns results into the documented exit codes.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_CONFIG_PATH};

mod backfill;
mod check;
mod completions;
mod init;
mod json;
mod man;
mod print;
mod progress;
mod retry;
mod run;
mod status;
mod verify;

/// Exit codes, as documented in `--help` and the README.
pub mod exit {
    /// Every item synced, was unchanged, or was skipped.
    pub const OK: u8 = 0;
    /// Some items failed (each is listed); the rest synced.
    pub const ITEMS_FAILED: u8 = 1;
    /// Usage or configuration error, found before any work was done.
    pub const USAGE: u8 = 2;
    /// Fatal runtime error: credentials refused, database unusable.
    pub const FATAL: u8 = 3;
    /// A second SIGTERM or SIGINT: exited at once, without waiting for in-flight uploads.
    pub const INTERRUPTED: u8 = 130;
}

const EXIT_CODES: &str = "Exit codes:
  0  every photo synced, was unchanged, or was skipped
  1  some photos failed (listed in the summary); the rest synced
  2  usage or configuration error, found before any work
  3  fatal runtime error (credentials refused, database unusable)";

/// Keeps Microsoft 365 / Entra ID profile photos (users, groups, contacts) equal to the photos
/// in a directory tree.
#[derive(Debug, Parser)]
#[command(name = "photosync", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, env = "PHOTOSYNC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Accept a secret file, key file or config with an inline secret that other users can read.
    #[arg(long, global = true)]
    pub allow_insecure_permissions: bool,

    /// Log format on stderr: text for people, json for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One pass over every source: upload what is new or changed, then exit.
    Backfill(backfill::Args),
    /// The daemon: reconcile every source, then watch the tree and sync changes until stopped
    /// (SIGTERM/SIGINT: finish in-flight uploads and exit 0; SIGHUP: reload the config).
    Run(run::Args),
    /// Show what the ledger says: totals by state, the last sync, every failure with its reason,
    /// Graph error code and request-id.
    Status(status::Args),
    /// Validate the config, the source roots, the credentials (token, app roles), one Graph read,
    /// the tenant's photo settings and the database. Exit 0 only if everything passes.
    Check(check::Args),
    /// Clear failure records so the next pass attempts those photos again.
    Retry(retry::Args),
    /// Compare every synced photo's current etag in Graph with the one recorded after its
    /// upload; report photos changed or removed outside photosync (--repair: upload them again).
    Verify(verify::Args),
    /// Write a first configuration (mode 0600) from a few options, and print the next steps.
    /// Never overwrites a configuration.
    Init(init::Args),
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(completions::Args),
    /// Write the manual pages (photosync.1 and one per subcommand) into a folder.
    Man(man::Args),
}

/// Set once from the command line, before any config is loaded.
static ALLOW_INSECURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Raised by [`stop_on_signals`] when a second stop signal arrives.
static SECOND_SIGNAL: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// How a command line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command finished with this exit code.
    Finished(u8),
    /// A second stop signal came while the first was being honoured: the process should exit
    /// at once (with [`exit::INTERRUPTED`]), whatever is still running.
    Interrupted,
}

/// Runs the parsed command line.
pub fn main(cli: Cli) -> Outcome {
    ALLOW_INSECURE.store(
        cli.allow_insecure_permissions,
        std::sync::atomic::Ordering::Relaxed,
    );
    // These touch neither Graph nor the ledger: no runtime, no logging.
    match &cli.command {
        Command::Init(args) => return Outcome::Finished(init::run(&cli.config, args)),
        Command::Completions(args) => return Outcome::Finished(completions::run(args)),
        Command::Man(args) => return Outcome::Finished(man::run(args)),
        _ => {}
    }
    let interactive = std::io::stderr().is_terminal() && cli.log_format == LogFormat::Text;
    init_tracing(cli.verbose, cli.log_format, interactive);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("photosync")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Outcome::Finished(exit::FATAL);
        }
    };
    let command = async {
        match cli.command {
            Command::Backfill(args) => backfill::run(&cli.config, args, interactive).await,
            Command::Run(args) => run::run(&cli.config, args).await,
            Command::Status(args) => status::run(&cli.config, args).await,
            Command::Check(args) => check::run(&cli.config, args).await,
            Command::Retry(args) => retry::run(&cli.config, args).await,
            Command::Verify(args) => verify::run(&cli.config, args).await,
            Command::Init(_) | Command::Completions(_) | Command::Man(_) => exit::OK,
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            code = command => Outcome::Finished(code),
            () = SECOND_SIGNAL.notified() => Outcome::Interrupted,
        }
    });
    if outcome == Outcome::Interrupted {
        // Blocking work (a walk of a hung share, a read) is not waited for.
        runtime.shutdown_background();
    }
    outcome
}

fn init_tracing(verbose: u8, format: LogFormat, interactive: bool) {
    use tracing_subscriber::EnvFilter;
    // On a terminal the progress bar and the summary say what info lines would.
    let default = match (verbose, interactive) {
        (0, true) => "warn",
        (0, false) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("photosync={default},warn")));
    // On a terminal, log lines go around the progress bar instead of through it.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::StderrAroundBar);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(interactive).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Loads the config, printing the error the way operators need it. A config that holds an
/// inline secret must not be readable by other users.
pub(crate) fn load_config(path: &std::path::Path) -> Result<Config, u8> {
    try_load_config(path).map_err(|e| {
        eprintln!("error: {e}");
        exit::USAGE
    })
}

/// Opens (creating and migrating) the ledger, printing the error the way operators need it.
pub(crate) async fn open_ledger(cfg: &Config) -> Result<crate::ledger::Ledger, u8> {
    crate::ledger::Ledger::open(&cfg.state.database)
        .await
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::FATAL
        })
}

/// Takes the ledger's one-writer lock for a command that writes, for as long as the returned
/// guard lives. Held by another photosync: exit 2 at once, naming it.
pub(crate) async fn lock_ledger(cfg: &Config) -> Result<crate::ledger::lock::LedgerLock, u8> {
    use crate::ledger::lock::{LedgerLock, LockError};
    match LedgerLock::acquire(&cfg.state.database) {
        Ok(lock) => {
            if let Some(gone) = &lock.took_over {
                tracing::warn!(
                    lock = %lock.path().display(),
                    previous = %gone,
                    "took over the ledger lock of a photosync that is gone (the kernel released its lock when it ended)"
                );
            }
            Ok(lock)
        }
        Err(e @ LockError::Held { .. }) => {
            eprintln!("error: {e}");
            Err(exit::USAGE)
        }
        Err(e @ LockError::Io { .. }) => {
            // A lock that cannot be created beside the database usually means the database
            // cannot be either, which the ledger explains with the fix.
            match crate::ledger::Ledger::open(&cfg.state.database).await {
                Err(ledger) => eprintln!("error: {ledger}"),
                Ok(ledger) => {
                    ledger.close().await;
                    eprintln!("error: {e}");
                }
            }
            Err(exit::FATAL)
        }
    }
}

/// [`load_config`] without printing: the error as text.
pub(crate) fn try_load_config(path: &std::path::Path) -> Result<Config, String> {
    let mut cfg = Config::load(path).map_err(|e| e.to_string())?;
    let allow = ALLOW_INSECURE.load(std::sync::atomic::Ordering::Relaxed);
    cfg.auth.allow_insecure_permissions = allow;
    if cfg.auth.client_secret.is_some() {
        crate::graph::auth::check_private(path, allow)
            .map_err(|e| format!("the config holds client_secret inline, and {e}"))?;
    }
    Ok(cfg)
}

/// Cancels `token` on SIGTERM or SIGINT; a second signal ends [`main`] at once with
/// [`Outcome::Interrupted`].
pub(crate) fn stop_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before this returns, and kept for both signals: one that arrives between the
    // two waits is not missed.
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot handle SIGTERM and SIGINT");
        return;
    };
    tokio::spawn(async move {
        let mut next = async || -> &'static str {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        };
        let first = next().await;
        tracing::warn!(
            signal = first,
            "stopping: finishing in-flight uploads (send again to exit now)"
        );
        token.cancel();
        let second = next().await;
        tracing::error!(signal = second, "second signal: exiting now");
        SECOND_SIGNAL.notify_one();
    });
}

/// An error and its sources, each once: `a: b: c`. A message that already includes its
/// source's text is not followed by it again.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
