//! `photosync retry [--all | TARGET...]`: clears failure records so that the next pass (the
//! daemon's next rescan, or a backfill) attempts those photos again.

use std::path::Path;

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Every failed target.
    #[arg(long, conflicts_with = "targets")]
    pub all: bool,

    /// Target keys (`user:alice@contoso.com`, `group:<id>`, `contact:<owner>/<id>`) or photo
    /// file paths.
    #[arg(required_unless_present = "all")]
    pub targets: Vec<String>,
}

pub async fn run(config: &Path, args: Args) -> u8 {
    let cfg = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _lock = match super::lock_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let ledger = match super::open_ledger(&cfg).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let wanted = if args.all { Vec::new() } else { args.targets };
    let result = ledger.clear_failures(&wanted).await;
    ledger.close().await;
    match result {
        Ok(cleared) => {
            for k in &cleared {
                println!("cleared {k}");
            }
            println!(
                "{} failure record(s) cleared; the next pass retries them",
                cleared.len()
            );
            if !args.all && cleared.len() < wanted.len() {
                eprintln!("note: some of the given targets had no failure recorded");
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FATAL
        }
    }
}
