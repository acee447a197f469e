//! `photosync completions SHELL`: the shell completion script on stdout, generated from the
//! clap definitions so that it completes what `--help` lists.

use clap::CommandFactory;

use super::{exit, Cli};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(args: &Args) -> u8 {
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut Cli::command(), "photosync", &mut out);
    exit::OK
}
