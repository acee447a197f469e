//! The per-item report of a backfill (`--report FILE.csv|.json`): one row per photo file with what
//! was decided and how it ended, written as it happens so a run of 50,000 photos holds no rows in
//! memory and an interrupted run still leaves the rows of what it did.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report file {0} must end in .csv or .json")]
    Format(PathBuf),
    #[error("cannot write the report {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One item. Columns (CSV header, JSON keys) are stable: see README "Reports".
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    pub path: String,
    pub target: String,
    /// upload | delete | none | skip
    pub action: &'static str,
    /// uploaded | deleted | unchanged | would_upload | failed | parked | retry_later | conflict | excluded …
    pub result: String,
    pub bytes_before: Option<u64>,
    pub bytes_after: Option<u64>,
    pub error: Option<String>,
    pub request_id: Option<String>,
    /// The square cut before resizing, in the upright photo's pixels: `face 812x812+140+60`,
    /// or `center 2560x2560+0+638 (no_face)` when a face crop fell back to the centre.
    pub crop: Option<String>,
}

#[derive(Clone, Copy)]
enum Format {
    Csv,
    Json,
}

/// Where rows go; cheap to clone, never blocks the caller.
#[derive(Debug, Clone)]
pub struct Sink {
    tx: mpsc::UnboundedSender<Row>,
}

impl Sink {
    /// A sink whose rows arrive on the receiver instead of in a file (`backfill --json`).
    pub fn channel() -> (Sink, mpsc::UnboundedReceiver<Row>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Sink { tx }, rx)
    }

    pub fn row(&self, row: Row) {
        // The writer only stops on an I/O error, which `Writer::finish` reports.
        let _ = self.tx.send(row);
    }
}

/// The thread writing the file; [`Writer::finish`] once every [`Sink`] is dropped.
pub struct Writer {
    handle: tokio::task::JoinHandle<Result<u64, ReportError>>,
}

/// Creates the file (format from its extension) and starts writing rows to it.
pub fn create(path: &Path) -> Result<(Sink, Writer), ReportError> {
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
        Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
        _ => return Err(ReportError::Format(path.to_owned())),
    };
    let io = |error| ReportError::Io {
        path: path.to_owned(),
        error,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Row>();
    let path = path.to_owned();
    let handle = tokio::task::spawn_blocking(move || {
        let io = |error| ReportError::Io {
            path: path.clone(),
            error,
        };
        let mut out = std::io::BufWriter::new(file);
        let mut n = 0u64;
        match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                while let Some(row) = rx.blocking_recv() {
                    w.serialize(&row).map_err(|e| io(e.into()))?;
                    n += 1;
                }
                if n == 0 {
                    // An empty report still names its columns.
                    w.write_record([
                        "path",
                        "target",
                        "action",
                        "result",
                        "bytes_before",
                        "bytes_after",
                        "error",
                        "request_id",
                        "crop",
                    ])
                    .map_err(|e| io(e.into()))?;
                }
                w.flush().map_err(io)?;
            }
            Format::Json => {
                out.write_all(b"[").map_err(io)?;
                while let Some(row) = rx.blocking_recv() {
                    out.write_all(if n == 0 { b"\n" } else { b",\n" })
                        .map_err(io)?;
                    serde_json::to_writer(&mut out, &row).map_err(|e| io(e.into()))?;
                    n += 1;
                }
                out.write_all(b"\n]\n").map_err(io)?;
                out.flush().map_err(io)?;
            }
        }
        Ok(n)
    });
    Ok((Sink { tx }, Writer { handle }))
}

impl Writer {
    /// Waits for every row to be written; the number of rows.
    pub async fn finish(self) -> Result<u64, ReportError> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(ReportError::Io {
                path: PathBuf::new(),
                error: std::io::Error::other(e.to_string()),
            }),
        }
    }
}
