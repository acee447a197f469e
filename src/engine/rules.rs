//! Each source's compiled globs and mapping table, with the mapping file's mtime: the table is
//! read again when the file changes. Reading is file I/O: run [`RulesCache::refresh`] off the
//! runtime's threads.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::config::SourceConfig;
use crate::mapping::file::MapTable;
use crate::mapping::Rules;
use crate::stats::Stats;

use super::lock;
use super::outcome::{ItemError, MappingProblem};

#[derive(Default)]
pub struct RulesCache(Mutex<Vec<(Option<SystemTime>, Rules)>>);

impl RulesCache {
    /// The rules of every source, re-reading mapping files that changed. A mapping file that
    /// cannot be read leaves the previous table in place (or none), with an error for every
    /// file it would have named; bad rows are reported and the rest apply.
    pub fn refresh(&self, sources: &[SourceConfig], stats: &Stats) -> Vec<Rules> {
        let mut rules = lock(&self.0);
        if rules.len() != sources.len() {
            *rules = sources
                .iter()
                .map(|s| (None, Rules::new(s, None)))
                .collect();
        }
        for (n, src) in sources.iter().enumerate() {
            let Some(path) = &src.mapping else { continue };
            let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if mtime.is_some() && rules[n].0 == mtime {
                continue;
            }
            match MapTable::load(path, &src.column_file, &src.column_target, src.key) {
                Ok((table, problems)) => {
                    tracing::info!(mapping = %path.display(), rows = table.len(), bad_rows = problems.len(), "mapping file read");
                    for p in problems {
                        tracing::warn!(mapping = %path.display(), line = p.line, problem = %p.message, "mapping row left out");
                        let e = ItemError::from(MappingProblem::Row { message: p.message });
                        stats.fail(e.failure(format!("{}:{}", path.display(), p.line), None));
                    }
                    rules[n] = (mtime, Rules::new(src, Some(Arc::new(table))));
                }
                Err(e) => {
                    tracing::error!(error = %e, "mapping file unusable");
                    let e = ItemError::from(MappingProblem::File(e));
                    stats.fail(e.failure(path.display().to_string(), None));
                    if rules[n].0.is_none() {
                        // Without a table every file would be "not in the mapping": say so once
                        // per file with an empty table rather than guess targets from names.
                        rules[n] = (None, Rules::new(src, Some(Arc::new(MapTable::empty(path)))));
                    }
                }
            }
        }
        rules.iter().map(|(_, r)| r.clone()).collect()
    }
}
