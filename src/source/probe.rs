//! Facts about paths that the planner needs but does not gather itself: whether files exist
//! (and their mtimes), whether a root looks emptied. Blocking I/O: run on the blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The mtime of each of `paths` that exists (anything `stat` succeeds on).
pub fn mtimes(paths: &[String]) -> HashMap<String, i64> {
    paths
        .iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(Path::new(p)).ok()?;
            Some((p.clone(), super::mtime_ns(&meta)))
        })
        .collect()
}

/// Which of `roots` look emptied (see [`super::looks_emptied`]), by index into `roots`.
pub fn emptied(roots: &[(usize, PathBuf)]) -> Vec<usize> {
    roots
        .iter()
        .filter(|(_, root)| super::looks_emptied(root))
        .map(|(n, _)| *n)
        .collect()
}
