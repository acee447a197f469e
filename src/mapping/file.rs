//! Mapping files: a CSV export from HR that says which person each photo file is, for trees
//! named by badge or personnel number rather than by anything Graph knows.
//!
//! The file has a header row; two of its columns (named in the source's config) hold the photo's
//! file name (with or without its extension) and the target (a UPN, object id, mail address or
//! employeeId, as the source's `key` says). UTF-8 with or without a byte-order mark, comma or
//! semicolon separated (Excel writes semicolons in many locales), quoted fields allowed.
//!
//! A bad row never stops the rest: malformed rows (too few fields, empty or invalid values) and
//! duplicates are reported with their line numbers and left out; every other row applies. When
//! one file name is mapped to two different targets, neither row applies: guessing would put a
//! photo on the wrong person.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use unicode_normalization::UnicodeNormalization;

use crate::config::KeyKind;
use crate::mapping::names::is_photo_extension;
use crate::mapping::target::normalise_key;

/// The mapping file cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum MapFileError {
    #[error("cannot read mapping file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("mapping file {path} is not UTF-8 text (line {line})")]
    NotUtf8 { path: PathBuf, line: u64 },
    #[error("mapping file {path} is empty: it needs a header row naming `{column_file}` and `{column_target}`")]
    Empty {
        path: PathBuf,
        column_file: String,
        column_target: String,
    },
    #[error("mapping file {path} has no column `{column}` in its header (columns: {found})")]
    NoColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
}

/// A row left out, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowProblem {
    pub line: u64,
    pub message: String,
}

/// File name → normalised target value, from one mapping file.
#[derive(Debug, Default)]
pub struct MapTable {
    path: PathBuf,
    rows: HashMap<String, String>,
}

impl MapTable {
    /// Reads and parses `path`. Row problems are returned beside the table, not as errors.
    pub fn load(
        path: &Path,
        column_file: &str,
        column_target: &str,
        key: KeyKind,
    ) -> Result<(MapTable, Vec<RowProblem>), MapFileError> {
        let bytes = std::fs::read(path).map_err(|error| MapFileError::Read {
            path: path.to_owned(),
            error,
        })?;
        MapTable::parse(&bytes, path, column_file, column_target, key)
    }

    /// Parses the bytes of a mapping file as if read from `path`.
    pub fn parse(
        bytes: &[u8],
        path: &Path,
        column_file: &str,
        column_target: &str,
        key: KeyKind,
    ) -> Result<(MapTable, Vec<RowProblem>), MapFileError> {
        let text = utf8_text(bytes, path)?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter(text, path, column_file, column_target)?)
            .flexible(true)
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = reader.headers().cloned().unwrap_or_default();
        let columns = Columns {
            file: find_column(&headers, column_file, path)?,
            target: find_column(&headers, column_target, path)?,
            file_name: column_file,
            target_name: column_target,
            count: headers.len(),
        };
        let mut rows = Rows::default();
        for record in reader.records() {
            match record {
                Ok(r) => rows.add(&r, line_of(text, r.position()), &columns, key),
                Err(e) => rows.problems.push(RowProblem {
                    line: line_of(text, e.position()),
                    message: format!("cannot parse the row: {e}"),
                }),
            }
        }
        let (rows, problems) = rows.finish();
        Ok((
            MapTable {
                path: path.to_owned(),
                rows,
            },
            problems,
        ))
    }

    /// A table with no rows, for a mapping file that cannot be read: every file it should name
    /// is reported as unmapped rather than guessed from its name.
    pub fn empty(path: &Path) -> MapTable {
        MapTable {
            path: path.to_owned(),
            rows: HashMap::new(),
        }
    }

    /// The target value for a photo file name (`004711.jpg`), if a row names it.
    pub fn get(&self, file_name: &str) -> Option<&str> {
        self.rows.get(&file_key(file_name)).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The file's name, for messages.
    pub fn file_name(&self) -> String {
        self.path.display().to_string()
    }
}

/// The text without its byte-order mark; invalid UTF-8 is an error naming its line.
fn utf8_text<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a str, MapFileError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| MapFileError::NotUtf8 {
        path: path.to_owned(),
        line: bytes[..e.valid_up_to()].split(|c| *c == b'\n').count() as u64,
    })
}

/// `;` when the header has more semicolons than commas (Excel in many locales), else `,`.
fn delimiter(
    text: &str,
    path: &Path,
    column_file: &str,
    column_target: &str,
) -> Result<u8, MapFileError> {
    let header =
        text.lines()
            .find(|l| !l.trim().is_empty())
            .ok_or_else(|| MapFileError::Empty {
                path: path.to_owned(),
                column_file: column_file.to_owned(),
                column_target: column_target.to_owned(),
            })?;
    Ok(
        if header.matches(';').count() > header.matches(',').count() {
            b';'
        } else {
            b','
        },
    )
}

/// The index of the column called `name` (case-insensitively).
fn find_column(
    headers: &csv::StringRecord,
    name: &str,
    path: &Path,
) -> Result<usize, MapFileError> {
    headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| MapFileError::NoColumn {
            path: path.to_owned(),
            column: name.to_owned(),
            found: headers.iter().collect::<Vec<_>>().join(", "),
        })
}

/// Where the two columns are, and their names for messages.
struct Columns<'a> {
    file: usize,
    target: usize,
    file_name: &'a str,
    target_name: &'a str,
    /// How many fields the header has.
    count: usize,
}

/// The rows read so far: name → (value, line it came from), `None` once two rows disagree.
#[derive(Default)]
struct Rows {
    seen: HashMap<String, (Option<String>, u64)>,
    problems: Vec<RowProblem>,
}

impl Rows {
    fn add(&mut self, record: &csv::StringRecord, line: u64, columns: &Columns<'_>, key: KeyKind) {
        if record.iter().all(str::is_empty) {
            return;
        }
        match row_value(record, columns, key) {
            Ok((file, value)) => self.insert(file, value, line),
            Err(message) => self.problems.push(RowProblem { line, message }),
        }
    }

    fn insert(&mut self, file: &str, value: String, line: u64) {
        let name = file_key(file);
        let message = match self.seen.get_mut(&name) {
            None => {
                self.seen.insert(name, (Some(value), line));
                return;
            }
            Some((Some(v), first)) if *v == value => {
                format!("duplicate of line {first} (`{file}`); the first applies")
            }
            Some((kept, first)) => {
                *kept = None;
                format!("`{file}` is also on line {first} with another target; neither applies")
            }
        };
        self.problems.push(RowProblem { line, message });
    }

    /// The rows that apply, and the problems in the order of their lines.
    fn finish(self) -> (HashMap<String, String>, Vec<RowProblem>) {
        let rows = self
            .seen
            .into_iter()
            .filter_map(|(k, (v, _))| v.map(|v| (k, v)))
            .collect();
        (rows, self.problems)
    }
}

/// A row's file name and normalised target, or why the row is left out.
fn row_value<'r>(
    record: &'r csv::StringRecord,
    columns: &Columns<'_>,
    key: KeyKind,
) -> Result<(&'r str, String), String> {
    let (Some(file), Some(target)) = (record.get(columns.file), record.get(columns.target)) else {
        return Err(format!(
            "has {} field(s); the header has {}",
            record.len(),
            columns.count
        ));
    };
    if file.is_empty() {
        return Err(format!("`{}` is empty", columns.file_name));
    }
    if target.is_empty() {
        return Err(format!("`{}` is empty", columns.target_name));
    }
    let value = normalise_key(target, key).map_err(|e| format!("target {e}"))?;
    Ok((file, value))
}

/// The line of a record's (or an error's) position; 0 when the reader gave none.
fn line_of(text: &str, position: Option<&csv::Position>) -> u64 {
    position.map_or(0, |p| line_at(text, p.byte() as usize))
}

/// The line a record starts on. The reader's own line count starts a record at the blank lines
/// before it (it skips them as part of the record), so the number comes from the first byte of
/// the record's content instead.
fn line_at(text: &str, byte: usize) -> u64 {
    let bytes = text.as_bytes();
    let mut at = byte.min(bytes.len());
    while at < bytes.len() && matches!(bytes[at], b'\n' | b'\r') {
        at += 1;
    }
    bytes[..at].split(|c| *c == b'\n').count() as u64
}

/// How a file name is matched: NFC, case-insensitive, without a photo extension, so that a row
/// saying `004711` matches `004711.JPG`.
fn file_key(name: &str) -> String {
    let name: String = name.trim().nfc().collect::<String>().to_lowercase();
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && is_photo_extension(ext) => stem.to_owned(),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, key: KeyKind) -> (MapTable, Vec<RowProblem>) {
        MapTable::parse(text.as_bytes(), Path::new("hr.csv"), "badge", "upn", key).unwrap()
    }

    #[test]
    fn comma_semicolon_bom_and_quotes() {
        let (t, p) = parse(
            "\u{feff}Badge;UPN;Name\n004711;Alice@Contoso.com;\"Smith; Alice\"\n",
            KeyKind::Upn,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(t.get("004711.jpg"), Some("Alice@Contoso.com"));
        assert_eq!(t.get("004711.JPEG"), Some("Alice@Contoso.com"));
        let (t, _) = parse(
            "name,badge,upn\n\"x, y\",12.jpg,bob@contoso.com\n",
            KeyKind::Upn,
        );
        assert_eq!(t.get("12.png"), Some("bob@contoso.com"));
    }

    #[test]
    fn bad_and_duplicate_rows_are_reported_with_lines_and_the_rest_apply() {
        let text = "badge,upn\n\
                    1,a@contoso.com\n\
                    2\n\
                    3,not-a-upn\n\
                    ,c@contoso.com\n\
                    1,a@contoso.com\n\
                    4,d@contoso.com\n\
                    4,e@contoso.com\n\
                    \n\
                    5,f@contoso.com\n";
        let (t, p) = parse(text, KeyKind::Upn);
        let lines: Vec<u64> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 4, 5, 6, 8], "{p:?}");
        assert!(p[0].message.contains("1 field"), "{}", p[0].message);
        assert!(p[1].message.contains("not-a-upn"), "{}", p[1].message);
        assert!(p[3].message.contains("line 2"), "{}", p[3].message);
        assert!(p[4].message.contains("line 7"), "{}", p[4].message);
        assert_eq!(t.get("1.jpg"), Some("a@contoso.com"));
        assert_eq!(t.get("4.jpg"), None, "conflicting rows must not apply");
        assert_eq!(t.get("5.jpg"), Some("f@contoso.com"));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn missing_column_and_bad_encoding_are_errors_naming_the_file() {
        let e = MapTable::parse(
            b"a,b\n1,2\n",
            Path::new("hr.csv"),
            "badge",
            "upn",
            KeyKind::Upn,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hr.csv") && e.contains("`badge`") && e.contains("a, b"),
            "{e}"
        );
        let e = MapTable::parse(
            b"badge,upn\n1,\xff@x.com\n",
            Path::new("hr.csv"),
            "badge",
            "upn",
            KeyKind::Upn,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hr.csv") && e.contains("line 2"), "{e}");
    }

    /// Found by the property test: the reader counted a row after a blank line from the blank.
    #[test]
    fn a_bad_row_after_blank_lines_names_its_own_line() {
        let (_, p) = parse("badge,upn\n\n\r\n7\n", KeyKind::Upn);
        assert_eq!(p.iter().map(|p| p.line).collect::<Vec<_>>(), [4], "{p:?}");
    }

    #[test]
    fn employee_ids_keep_leading_zeros() {
        let (t, p) = MapTable::parse(
            b"file;employee\nIMG_1.jpg;004711\n",
            Path::new("m.csv"),
            "file",
            "employee",
            KeyKind::EmployeeId,
        )
        .unwrap();
        assert!(p.is_empty());
        assert_eq!(t.get("img_1.jpg"), Some("004711"));
    }
}
