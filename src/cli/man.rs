//! `photosync man DIR`: the manual pages, rendered from the clap definitions so that they say
//! what `--help` says: photosync(1) and one page per subcommand (photosync-backfill(1), …),
//! each with exit status, environment, files and examples sections.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use roff::{bold, italic, roman, Roff};

use super::{exit, Cli};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder to write the pages into (created if missing), e.g. /usr/share/man/man1.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

pub fn run(args: &Args) -> u8 {
    match write_all(&args.dir) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            exit::OK
        }
        Err(e) => {
            eprintln!(
                "error: cannot write the manual pages to {}: {e}",
                args.dir.display()
            );
            exit::FATAL
        }
    }
}

/// Writes every page into `dir`; the files written.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    pages()
        .into_iter()
        .map(|(name, page)| {
            let path = dir.join(format!("{name}.1"));
            std::fs::write(&path, page)?;
            Ok(path)
        })
        .collect()
}

/// Every page: (name, roff text). The first is photosync(1).
pub fn pages() -> Vec<(String, Vec<u8>)> {
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let subcommands: Vec<clap::Command> = root
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    let names: Vec<String> = subcommands.iter().map(page_name).collect();
    let mut out = vec![("photosync".to_owned(), render(&root, None, &names))];
    for cmd in subcommands {
        let name = page_name(&cmd);
        out.push((name.clone(), render(&cmd, Some(cmd.get_name()), &names)));
    }
    out
}

/// `photosync-backfill` for the subcommand `backfill`.
fn page_name(cmd: &clap::Command) -> String {
    format!("photosync-{}", cmd.get_name())
}

fn render(cmd: &clap::Command, subcommand: Option<&str>, all: &[String]) -> Vec<u8> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(subcommand.map_or_else(|| "photosync".to_owned(), |s| format!("photosync-{s}")))
        .manual("photosync manual")
        .source(format!("photosync {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    let _ = man.render_options_section(&mut out);
    if subcommand.is_none() {
        let _ = man.render_subcommands_section(&mut out);
    }
    let mut extra = Roff::new();
    exit_status(&mut extra);
    environment(&mut extra);
    files(&mut extra);
    examples(&mut extra, subcommand);
    see_also(&mut extra, subcommand, all);
    // Subcommands carry no version of their own: clap_mangen's section would have none.
    extra
        .control("SH", ["VERSION"])
        .text([roman(format!("photosync {}", env!("CARGO_PKG_VERSION")))]);
    let _ = extra.to_writer(&mut out);
    let _ = out.flush();
    out
}

fn paragraph(roff: &mut Roff, tag: &str, text: &str) {
    roff.control("TP", []).text([bold(tag)]).text([roman(text)]);
}

fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, text) in [
        (
            exit::OK,
            "Every photo synced, was unchanged, or was skipped.",
        ),
        (
            exit::ITEMS_FAILED,
            "Some photos failed (each is listed in the summary); the rest synced.",
        ),
        (
            exit::USAGE,
            "Usage or configuration error, found before any work was done.",
        ),
        (
            exit::FATAL,
            "Fatal runtime error: credentials refused, database unusable.",
        ),
        (
            exit::INTERRUPTED,
            "A second SIGTERM or SIGINT: exited at once, without waiting for in-flight uploads.",
        ),
    ] {
        paragraph(roff, &code.to_string(), text);
    }
}

fn environment(roff: &mut Roff) {
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, text) in [
        ("PHOTOSYNC_CONFIG", "The configuration file, when -c is not given."),
        ("PHOTOSYNC_CLIENT_SECRET", "The client secret; wins over client_secret and client_secret_file in the configuration."),
        ("CREDENTIALS_DIRECTORY", "Set by systemd's LoadCredential=; ${CREDENTIALS_DIRECTORY} in a credential path of the configuration is replaced by it."),
        ("RUST_LOG", "Log filter (e.g. photosync=debug); overrides -v."),
    ] {
        paragraph(roff, name, text);
    }
}

fn files(roff: &mut Roff) {
    roff.control("SH", ["FILES"]);
    for (name, text) in [
        (crate::config::DEFAULT_CONFIG_PATH, "The configuration (TOML, mode 0600); every key is described in the packaged example."),
        ("/etc/photosync/client-secret", "The client secret, read through LoadCredential= by the systemd units."),
        ("/var/lib/photosync/state.db", "The ledger (SQLite): what was uploaded, from which file, and every failure. Kept when the package is removed."),
        ("/lib/systemd/system/photosync.service", "The daemon (photosync run)."),
        ("/lib/systemd/system/photosync-backfill.timer", "A nightly photosync backfill, instead of the daemon."),
        ("/lib/systemd/system/photosync@.service", "One daemon per configuration /etc/photosync/INSTANCE.toml."),
    ] {
        paragraph(roff, name, text);
    }
}

/// Examples for each page; the top page gets the first steps.
fn examples(roff: &mut Roff, subcommand: Option<&str>) {
    let list: &[(&str, &str)] = match subcommand {
        None => &[
            ("photosync init --tenant contoso.onmicrosoft.com --client-id ID --secret-file /etc/photosync/client-secret --users /srv/hr-photos/users", "Write a first configuration."),
            ("photosync check", "Check the configuration, the credentials and the photo roots."),
            ("photosync backfill --dry-run --report plan.html", "See what a first pass would upload."),
            ("systemctl enable --now photosync.service", "Run the daemon."),
        ],
        Some("backfill") => &[
            ("photosync backfill --dry-run", "Print what would be uploaded and why; change nothing."),
            ("photosync backfill --report run.csv", "Upload, and write one row per photo."),
            ("photosync backfill --max-duration 2h", "Stop cleanly after two hours; the next run goes on from there."),
            ("photosync backfill --json | jq 'select(.type == \"summary\")'", "Read the run's summary from a script."),
        ],
        Some("run") => &[("photosync --log-format json run", "The daemon, as the systemd unit starts it.")],
        Some("status") => &[
            ("photosync status", "Totals and every failure."),
            ("photosync status --json | jq .totals", "The same, for scripts."),
        ],
        Some("check") => &[("photosync -c /etc/photosync/config.toml check", "Exit 0 only if everything passes.")],
        Some("retry") => &[
            ("photosync retry --all", "Attempt every failed photo again in the next pass."),
            ("photosync retry user:alice@contoso.com", "Only this one."),
        ],
        Some("verify") => &[
            ("photosync verify", "Report photos changed or removed outside photosync."),
            ("photosync verify --repair", "Upload those photos again."),
        ],
        Some("init") => &[(
            "photosync init --tenant contoso.onmicrosoft.com --client-id ID --certificate /etc/photosync/app.pem --users /srv/hr-photos/users --groups /srv/hr-photos/groups",
            "A configuration with a certificate, for users and groups.",
        )],
        Some("completions") => &[
            ("photosync completions bash > /usr/share/bash-completion/completions/photosync", "Install the bash completion."),
            ("photosync completions zsh > /usr/share/zsh/vendor-completions/_photosync", "Install the zsh completion."),
        ],
        Some("man") => &[("photosync man /usr/share/man/man1", "Install these pages.")],
        Some(_) => &[],
    };
    if list.is_empty() {
        return;
    }
    roff.control("SH", ["EXAMPLES"]);
    for (command, text) in list {
        roff.control("TP", [])
            .text([bold(*command)])
            .text([roman(*text)]);
    }
}

fn see_also(roff: &mut Roff, subcommand: Option<&str>, all: &[String]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut refs: Vec<&str> = Vec::new();
    if subcommand.is_some() {
        refs.push("photosync");
    }
    refs.extend(
        all.iter()
            .map(String::as_str)
            .filter(|n| subcommand.is_none_or(|s| *n != format!("photosync-{s}"))),
    );
    refs.push("systemd.exec");
    let mut inlines = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(italic(*r));
        inlines.push(roman(if *r == "systemd.exec" { "(5)" } else { "(1)" }));
    }
    roff.text(inlines);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_page_with_the_required_sections() {
        let pages = pages();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "photosync",
            "photosync-backfill",
            "photosync-run",
            "photosync-init",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(!names.contains(&"photosync-help"));
        for (name, page) in &pages {
            let text = String::from_utf8_lossy(page);
            for section in ["EXIT STATUS", "ENVIRONMENT", "FILES", "SEE ALSO"] {
                assert!(
                    text.contains(&format!(".SH \"{section}\""))
                        || text.contains(&format!(".SH {section}")),
                    "{name}: no {section}"
                );
            }
        }
        let backfill = &pages
            .iter()
            .find(|(n, _)| n == "photosync-backfill")
            .expect("page")
            .1;
        let text = String::from_utf8_lossy(backfill);
        assert!(text.contains("EXAMPLES"));
        // The options come from the clap definitions.
        assert!(text.contains("max\\-duration"), "{text}");
    }
}
