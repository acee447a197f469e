//! `photosync check`: is everything in place for a sync to work? Each check prints one line;
//! exit 0 only if none failed (warnings do not fail).

use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::config::{Config, SourceConfig, TargetKind};
use crate::graph::auth::AccessToken;
use crate::graph::{paths, GraphClient, GraphError};
use crate::ledger::Ledger;

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {}

#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
    warned: usize,
}

impl Report {
    fn ok(&mut self, what: &str, detail: &str) {
        self.passed += 1;
        println!("ok    {what}: {detail}");
    }
    fn warn(&mut self, what: &str, detail: &str) {
        self.warned += 1;
        println!("warn  {what}: {detail}");
    }
    fn fail(&mut self, what: &str, detail: &str) {
        self.failed += 1;
        println!("FAIL  {what}: {detail}");
    }
}

/// App roles that allow looking users up by mail or employeeId (any one of them).
const READ_USERS: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

/// The app roles that let photosync write a target kind's photo (any one of them).
fn roles_for(kind: TargetKind) -> &'static [&'static str] {
    match kind {
        TargetKind::User => &["ProfilePhoto.ReadWrite.All", "User.ReadWrite.All"],
        TargetKind::Group => &["ProfilePhoto.ReadWrite.All", "Group.ReadWrite.All"],
        TargetKind::Contact => &["Contacts.ReadWrite"],
    }
}

pub async fn run(config: &Path, _args: Args) -> u8 {
    let cfg = match super::try_load_config(config) {
        Ok(c) => {
            println!("ok    config: {}", config.display());
            c
        }
        Err(e) => {
            println!("FAIL  config: {e}");
            return exit::USAGE;
        }
    };
    let mut r = Report::default();
    if cfg.image.uses_deprecated_square() {
        r.warn(
            "image.square",
            "deprecated: use crop = \"center\" (square = true still cuts the centred square)",
        );
    }
    for s in &cfg.sources {
        let what = format!("source {} ({})", s.root.display(), s.target.as_str());
        match crate::source::check_root(&s.root) {
            Ok(_) => r.ok(&what, "readable"),
            Err(e) => r.fail(&what, &e.to_string()),
        }
        if let Some(m) = &s.mapping {
            let what = format!("mapping file {}", m.display());
            match crate::mapping::file::MapTable::load(m, &s.column_file, &s.column_target, s.key) {
                Ok((table, problems)) if problems.is_empty() => {
                    r.ok(&what, &format!("{} rows", table.len()));
                }
                Ok((table, problems)) => {
                    let lines: Vec<String> = problems
                        .iter()
                        .map(|p| format!("line {}: {}", p.line, p.message))
                        .collect();
                    r.warn(
                        &what,
                        &format!(
                            "{} rows apply; {} left out:\n        {}",
                            table.len(),
                            problems.len(),
                            lines.join("\n        ")
                        ),
                    );
                }
                Err(e) => r.fail(&what, &e.to_string()),
            }
        }
    }
    check_database(&cfg, &mut r).await;
    check_graph(&cfg, &mut r).await;
    println!("{} failed, {} warnings", r.failed, r.warned);
    if r.failed > 0 {
        exit::ITEMS_FAILED
    } else {
        exit::OK
    }
}

async fn check_database(cfg: &Config, r: &mut Report) {
    let what = format!("database {}", cfg.state.database.display());
    match Ledger::open(&cfg.state.database).await {
        Ok(l) => {
            match l.check_writable().await {
                Ok(()) => r.ok(&what, "migrated and writable"),
                Err(e) => r.fail(&what, &format!("not writable: {e}")),
            }
            l.close().await;
        }
        Err(e) => r.fail(&what, &e.to_string()),
    }
}

async fn check_graph(cfg: &Config, r: &mut Report) {
    let graph = match crate::graph::connect(cfg) {
        Ok(g) => g,
        Err(crate::graph::ConnectError::Http(e)) => return r.fail("http client", &e.to_string()),
        Err(crate::graph::ConnectError::Auth(e)) => return r.fail("credentials", &e.to_string()),
    };
    let tokens = graph.tokens();
    r.ok(
        &format!("credentials ({})", cfg.auth.kind().as_str()),
        &tokens.describe(),
    );
    let expiring = tokens
        .credential_expires_at()
        .filter(|_| cfg.auth.kind() == crate::config::CredentialKind::Certificate);
    if let Some(at) = expiring {
        if let Ok(left) = at.duration_since(SystemTime::now()) {
            if left < Duration::from_secs(14 * 24 * 3600) {
                r.warn(
                    "credential expiry",
                    &format!(
                        "the credential expires in {}: renew it",
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    ),
                );
            }
        }
    }
    let token = match tokens.token().await {
        Ok(t) => t,
        Err(e) => return r.fail("token", &e.to_string()),
    };
    r.ok("token", &token_summary(cfg, &token));
    let roles = token.roles();
    for (what, detail) in missing_permissions(&cfg.sources, &roles) {
        r.warn(&what, &detail);
    }
    check_directory_read(&graph, r).await;
    check_photo_settings(&graph, r).await;
}

/// Whose token it is, how long it lives and what it may do.
fn token_summary(cfg: &Config, token: &AccessToken) -> String {
    let left = token
        .expires_at
        .duration_since(SystemTime::now())
        .map_or_else(
            |_| "expired".into(),
            |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
        );
    let roles = token.roles();
    let whose = if cfg.auth.is_managed_identity() {
        "managed identity".to_owned()
    } else {
        format!("tenant {}, app {}", cfg.auth.tenant(), cfg.auth.client())
    };
    format!(
        "{whose}, expires in {left}, roles: {}",
        if roles.is_empty() {
            "(none)".to_owned()
        } else {
            roles.join(", ")
        }
    )
}

/// A warning (what, detail) for each kind of target the sources write, and for lookups, that
/// none of the token's roles allows; one per kind however many sources share it.
fn missing_permissions(sources: &[SourceConfig], roles: &[String]) -> Vec<(String, String)> {
    let has_any = |need: &[&str]| need.iter().any(|n| roles.iter().any(|r| r == n));
    let mut kinds: Vec<TargetKind> = Vec::new();
    for s in sources {
        if !kinds.contains(&s.target) {
            kinds.push(s.target);
        }
    }
    let mut warnings = Vec::new();
    for kind in kinds {
        let need = roles_for(kind);
        if !has_any(need) {
            warnings.push((
                format!("permission for {} photos", kind.as_str()),
                format!(
                    "the token has none of {}: grant one as an application permission and give admin consent",
                    need.join(", ")
                ),
            ));
        }
    }
    if sources.iter().any(|s| s.key.needs_lookup()) && !has_any(READ_USERS) {
        warnings.push((
            "permission for user lookups".to_owned(),
            format!(
                "sources with key = \"mail\" or \"employee_id\" look users up, but the token has none of {}",
                READ_USERS.join(", ")
            ),
        ));
    }
    warnings
}

async fn check_directory_read(graph: &GraphClient, r: &mut Report) {
    match graph.get(paths::USERS_PROBE).await {
        Ok(reply) => r.ok(
            "graph read",
            &format!(
                "GET /v1.0/users answered {}{}",
                reply.status,
                reply
                    .request_id
                    .map(|id| format!(" (request-id {id})"))
                    .unwrap_or_default()
            ),
        ),
        Err(GraphError::Status { status: 403, .. }) => r.warn(
            "graph read",
            "GET /v1.0/users was refused (403): fine for uploads by UPN or id, but lookups by mail or employee id need User.Read.All",
        ),
        Err(e) => r.fail("graph read", &e.to_string()),
    }
}

async fn check_photo_settings(graph: &GraphClient, r: &mut Report) {
    match graph.get(paths::PHOTO_UPDATE_SETTINGS).await {
        Ok(reply) => {
            let source = serde_json::from_slice::<serde_json::Value>(&reply.body)
                .ok()
                .and_then(|v| v.get("source").and_then(|s| s.as_str()).map(str::to_owned))
                .unwrap_or_default();
            if source.eq_ignore_ascii_case("onPremises") {
                r.warn(
                    "tenant photo settings",
                    "photoUpdateSettings.source is onPremises: cloud photo updates are disabled in this tenant; uploads will fail",
                );
            } else {
                r.ok(
                    "tenant photo settings",
                    &format!("photo updates allowed (source {source})"),
                );
            }
        }
        Err(GraphError::Status {
            status: 401 | 403, ..
        }) => println!(
            "skip  tenant photo settings: not readable (needs PeopleSettings.Read.All); not checked"
        ),
        Err(e) => r.warn("tenant photo settings", &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeyKind;
    use std::path::PathBuf;

    fn source(n: usize, target: TargetKind, key: KeyKind) -> SourceConfig {
        SourceConfig::new(PathBuf::from(format!("/r{n}")), target, key)
    }

    /// `user, group, user` warned twice for users: `dedup` only drops adjacent repeats.
    #[test]
    fn one_warning_per_kind_whatever_the_order_of_sources() {
        let sources = [
            source(0, TargetKind::User, KeyKind::Upn),
            source(1, TargetKind::Group, KeyKind::Id),
            source(2, TargetKind::User, KeyKind::Upn),
        ];
        let warnings = missing_permissions(&sources, &[]);
        let whats: Vec<&str> = warnings.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(
            whats,
            ["permission for user photos", "permission for group photos"]
        );
    }

    #[test]
    fn granted_roles_and_lookups() {
        let sources = [
            source(0, TargetKind::User, KeyKind::EmployeeId),
            source(1, TargetKind::Group, KeyKind::Id),
        ];
        let roles = ["ProfilePhoto.ReadWrite.All".to_owned()];
        let warnings = missing_permissions(&sources, &roles);
        let whats: Vec<&str> = warnings.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(whats, ["permission for user lookups"]);
        let all = ["ProfilePhoto.ReadWrite.All", "User.Read.All"].map(String::from);
        assert!(missing_permissions(&sources, &all).is_empty());
    }
}
