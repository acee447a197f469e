//! The `photosync` binary: arguments in, exit code out. Everything else is in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = photosync::cli::Cli::parse();
    photosync::cli::main(cli)
}
