//! What one source adds to the file-name rules: its `include`/`exclude` globs (compiled when
//! the config was validated) and its mapping table.

use std::sync::Arc;

use crate::config::{PathFilter, SourceConfig};
use crate::mapping::file::MapTable;

/// The per-source part of mapping, built once per source (and again when its mapping file
/// changes).
#[derive(Debug, Default, Clone)]
pub struct Rules {
    filter: PathFilter,
    table: Option<Arc<MapTable>>,
}

impl Rules {
    /// Takes the source's compiled globs and its mapping table.
    pub fn new(source: &SourceConfig, table: Option<Arc<MapTable>>) -> Rules {
        Rules {
            filter: source.filter.clone(),
            table,
        }
    }

    /// Whether the globs leave out the file at `parts` (its path below the root).
    pub(crate) fn excludes(&self, parts: &[&str]) -> bool {
        // Joined only when there is a glob to match: this runs for every file of a rescan.
        !self.filter.is_empty() && self.filter.excludes(&parts.join("/"))
    }

    /// The mapping table, when the source names its files through one.
    pub(crate) fn table(&self) -> Option<&MapTable> {
        self.table.as_deref()
    }
}
