//! What a file name says before it names anyone: a photo, a file still being written, or
//! something an operating system left behind.

/// Extensions treated as photos; the content's magic bytes still decide the format.
const PHOTO_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "tif", "tiff", "bmp",
];

/// Suffixes of files that are still being written by a copy tool or editor.
const TEMP_SUFFIXES: &[&str] = &[
    "~",
    ".tmp",
    ".temp",
    ".part",
    ".partial",
    ".swp",
    ".crdownload",
    ".download",
];

/// Files that operating systems leave in shared folders.
const JUNK_NAMES: &[&str] = &["thumbs.db", "desktop.ini", "ehthumbs.db"];

/// Why a file in a source tree is not a photo to sync; these are counted, not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    Hidden,
    Temporary,
    NotAPhoto,
    /// Left out by the source's `include`/`exclude` globs.
    Excluded,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Hidden => "hidden",
            Skip::Temporary => "temporary",
            Skip::NotAPhoto => "not_a_photo",
            Skip::Excluded => "excluded",
        }
    }
}

/// Whether `ext` (lower case, without the dot) is a photo's extension.
pub fn is_photo_extension(ext: &str) -> bool {
    PHOTO_EXTENSIONS.contains(&ext)
}

/// Why the file called `file` is not a photo, or `None` when it is one.
pub fn classify_name(file: &str) -> Option<Skip> {
    let lower = file.to_lowercase();
    if lower.starts_with("~$") || TEMP_SUFFIXES.iter().any(|s| lower.ends_with(s)) {
        return Some(Skip::Temporary);
    }
    if JUNK_NAMES.contains(&lower.as_str()) {
        return Some(Skip::NotAPhoto);
    }
    match lower.rsplit_once('.') {
        Some((_, ext)) if is_photo_extension(ext) => None,
        _ => Some(Skip::NotAPhoto),
    }
}

/// The name without its last extension.
pub fn stem_of(file: &str) -> &str {
    file.rsplit_once('.').map_or(file, |(s, _)| s)
}
