//! `graph-emulator`: runs the emulator as a process for shell scripts, the README quickstart
//! and benchmarks. Prints one line, `graph-emulator listening on http://127.0.0.1:PORT`, once
//! it listens, and stops cleanly on SIGTERM or SIGINT.
//!
//! Exit codes: 0 after a signal, 2 for bad arguments or files, 3 when it cannot listen.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use graph_emulator::{Config, Emulator, Faults, RetryAfter, User};
use serde::Deserialize;

/// A local Microsoft Graph (photo endpoints) and Entra token endpoint for tests and
/// benchmarks. One port serves both: use the printed URL as login URL and Graph URL.
///
/// Exit codes: 0 stopped by SIGTERM/SIGINT, 2 bad arguments or files, 3 cannot listen.
#[derive(Parser, Debug)]
#[command(name = "graph-emulator", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (read it from the printed line).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Tenant accepted in the token URL (GUID or domain).
    #[arg(long, default_value = "contoso.onmicrosoft.com")]
    tenant: String,
    /// The app registration's client id.
    #[arg(long, default_value = "11111111-2222-3333-4444-555555555555")]
    client_id: String,
    /// File holding the accepted client secret (trailing newline ignored).
    #[arg(long, conflicts_with = "client_secret")]
    client_secret_file: Option<PathBuf>,
    /// The accepted client secret (visible in `ps`; prefer --client-secret-file).
    /// Default "test-secret" unless --certificate is given.
    #[arg(long)]
    client_secret: Option<String>,
    /// Certificate whose RSA key verifies client assertions: a PEM file, or a PKCS#12
    /// (`.pfx`) file, of which the certificate of its private key is registered.
    #[arg(long)]
    certificate: Option<PathBuf>,
    /// The password of a PKCS#12 --certificate (none: no password).
    #[arg(long, requires = "certificate")]
    certificate_password: Option<String>,
    /// Accept federated assertions (workload identity) with this issuer; needs
    /// --federated-subject and --federated-audience.
    #[arg(long, requires_all = ["federated_subject", "federated_audience"])]
    federated_issuer: Option<String>,
    #[arg(long)]
    federated_subject: Option<String>,
    #[arg(long)]
    federated_audience: Option<String>,
    /// Serve a managed identity endpoint at /metadata/identity/oauth2/token: `vm` (the
    /// instance metadata service) or `arc` (the Arc agent's challenge; needs --arc-key-dir).
    #[arg(long, value_enum)]
    managed_identity: Option<ManagedKind>,
    /// With --managed-identity arc: the folder the challenge's key files are written in.
    #[arg(long, requires = "managed_identity")]
    arc_key_dir: Option<PathBuf>,
    /// With --managed-identity: ids of user-assigned identities the endpoint knows.
    #[arg(long, requires = "managed_identity")]
    user_assigned: Vec<String>,
    /// Lifetime of issued tokens (humantime: 3600s, 5m).
    #[arg(long, default_value = "3600s", value_parser = humantime::parse_duration)]
    token_ttl: Duration,
    /// App roles put in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ProfilePhoto.ReadWrite.All,User.Read.All,Contacts.ReadWrite"
    )]
    roles: Vec<String>,
    /// Create unknown users, groups and contacts on their first upload instead of 404.
    #[arg(long)]
    accept_any_target: bool,
    /// JSON file with users, groups and contacts to create at start.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Keep only length and hash of uploaded photos (for large benchmarks).
    #[arg(long)]
    no_store_bytes: bool,
    /// Keep no per-request records (counters in /_emulator/stats stay).
    #[arg(long)]
    no_record_requests: bool,
    /// `source` of the tenant's photoUpdateSettings: cloud or onPremises.
    #[arg(long, default_value = "cloud")]
    photo_update_source: String,
    /// Photo requests per second allowed; beyond it 429 with Retry-After.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// How 429/503 state Retry-After: seconds (1, 2.128), http-date or none.
    #[arg(long, default_value = "1")]
    retry_after: RetryAfter,
    /// Share (0..1) of photo requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    error_503: f64,
    /// Share of photo requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    error_500: f64,
    /// Share of photo requests whose connection is reset without an answer.
    #[arg(long, default_value_t = 0.0)]
    reset: f64,
    /// Share of photo requests that stall for --stall-for before being answered.
    #[arg(long, default_value_t = 0.0)]
    stall: f64,
    /// How long a stalled request waits.
    #[arg(long, default_value = "70s", value_parser = humantime::parse_duration)]
    stall_for: Duration,
    /// Latency added to every photo request.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    latency: Duration,
    /// Seed of the random faults.
    #[arg(long, default_value_t = 0)]
    fault_seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ManagedKind {
    Vm,
    Arc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    #[serde(default)]
    users: Vec<User>,
    #[serde(default)]
    groups: Vec<SeedGroup>,
    #[serde(default)]
    contacts: Vec<SeedContact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedGroup {
    id: String,
    #[serde(default = "yes")]
    unified: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedContact {
    owner: String,
    #[serde(default)]
    folder: Option<String>,
    id: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (config, faults, seed) = match prepare(&args) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("graph-emulator: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("graph-emulator: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(config, faults, seed, args.listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("graph-emulator: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// A PEM file as it is; of a PKCS#12 file, the certificate whose bag carries the private
/// key's local key id (the first certificate if none does), as PEM.
fn read_certificate(path: &std::path::Path, password: &str) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading certificate {}", path.display()))?;
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(String::from_utf8_lossy(&bytes).into_owned());
    }
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(&bytes, password)
        .map_err(|e| anyhow::anyhow!("reading PKCS#12 certificate {}: {e}", path.display()))?;
    let key_id = archive.keys.first().and_then(|k| k.local_key_id.as_ref());
    let bag = archive
        .certs
        .iter()
        .find(|c| key_id.is_some_and(|id| c.local_key_id.as_deref() == Some(id.as_ref())))
        .or_else(|| archive.certs.first())
        .with_context(|| format!("{} holds no certificate", path.display()))?;
    Ok(pem::encode(&pem::Pem::new(
        "CERTIFICATE",
        bag.cert.as_der().to_vec(),
    )))
}

fn prepare(args: &Args) -> Result<(Config, Faults, Option<Seed>)> {
    let certificate_pem = match &args.certificate {
        Some(path) => Some(read_certificate(
            path,
            args.certificate_password.as_deref().unwrap_or(""),
        )?),
        None => None,
    };
    let client_secret = match (&args.client_secret_file, &args.client_secret) {
        (Some(path), _) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading client secret file {}", path.display()))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        ),
        (None, Some(s)) => Some(s.clone()),
        (None, None) if certificate_pem.is_some() => None,
        (None, None) => Config::default().client_secret,
    };
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading seed {}", path.display()))?;
            Some(
                serde_json::from_str::<Seed>(&text)
                    .with_context(|| format!("parsing seed {}", path.display()))?,
            )
        }
        None => None,
    };
    for (name, share) in [
        ("--error-503", args.error_503),
        ("--error-500", args.error_500),
        ("--reset", args.reset),
        ("--stall", args.stall),
    ] {
        if !(0.0..=1.0).contains(&share) {
            anyhow::bail!("{name} must be a share between 0 and 1, not {share}");
        }
    }
    let config = Config {
        tenant: args.tenant.clone(),
        client_id: args.client_id.clone(),
        client_secret,
        certificate_pem,
        federation: args
            .federated_issuer
            .clone()
            .map(|issuer| graph_emulator::Federation {
                issuer,
                subject: args.federated_subject.clone().unwrap_or_default(),
                audience: args.federated_audience.clone().unwrap_or_default(),
                propagation_refusals: 0,
            }),
        managed_identity: args
            .managed_identity
            .map(|kind| graph_emulator::ManagedIdentity {
                arc_key_dir: args
                    .arc_key_dir
                    .clone()
                    .filter(|_| kind == ManagedKind::Arc),
                arc_realm: None,
                user_assigned: args.user_assigned.clone(),
            }),
        token_ttl: args.token_ttl,
        roles: args.roles.clone(),
        accept_any_target: args.accept_any_target,
        store_bytes: !args.no_store_bytes,
        record_requests: !args.no_record_requests,
        photo_update_source: args.photo_update_source.clone(),
    };
    let faults = Faults {
        rate_limit: args.rate_limit,
        retry_after: args.retry_after,
        error_500: args.error_500,
        error_503: args.error_503,
        reset: args.reset,
        stall: args.stall,
        stall_for: args.stall_for,
        latency: args.latency,
        seed: args.fault_seed,
    };
    Ok((config, faults, seed))
}

async fn run(config: Config, faults: Faults, seed: Option<Seed>, listen: SocketAddr) -> Result<()> {
    let emulator = Emulator::start_on(config, listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    emulator.set_faults(faults);
    if let Some(seed) = seed {
        for user in seed.users {
            emulator.add_user(user);
        }
        for group in seed.groups {
            emulator.add_group(&group.id, group.unified);
        }
        for contact in seed.contacts {
            emulator.add_contact(&contact.owner, contact.folder.as_deref(), &contact.id);
        }
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "graph-emulator listening on {}", emulator.url())?;
        out.flush()?;
    }
    wait_for_signal().await?;
    emulator.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
