//! What a file name says before it names anyone: a photo, a file still being written, or
//! something an operating system left behind. A name with another extension is not the last
//! word: [`may_be_a_photo`] says when the first bytes get to decide.

/// Extensions treated as photos; the content's magic bytes still decide the format. `hif` is
/// the HEIF extension some cameras (Canon, Fujifilm, Sony) write; `mpo` the stereo JPEG's.
const PHOTO_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "jpe", "jfif", "png", "gif", "webp", "tif", "tiff", "bmp", "heic", "heif",
    "hif", "avif", "mpo",
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

/// Whether a file that [`classify_name`] calls not a photo may still be one by its content: it
/// has a stem and an extension, and is neither a file being written nor one an operating system
/// left behind. The planner reads the first bytes of such a file (when it is new or changed)
/// instead of skipping it: badge software and scanners write `.dat`, `.img` or `.bin`.
pub fn may_be_a_photo(file: &str) -> bool {
    classify_name(file) == Some(Skip::NotAPhoto)
        && !JUNK_NAMES.contains(&file.to_lowercase().as_str())
        && file
            .rsplit_once('.')
            .is_some_and(|(stem, ext)| !stem.is_empty() && !ext.is_empty())
}

/// The name without its last extension.
pub fn stem_of(file: &str) -> &str {
    file.rsplit_once('.').map_or(file, |(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_and_camera_extensions_are_photos() {
        for name in [
            "a@x.com.heic",
            "a@x.com.HEIF",
            "a@x.com.hif",
            "a@x.com.avif",
            "a@x.com.MPO",
            "a@x.com.jpg",
        ] {
            assert_eq!(classify_name(name), None, "{name}");
            assert!(!may_be_a_photo(name), "{name}");
        }
    }

    #[test]
    fn other_extensions_leave_it_to_the_content() {
        for name in ["a@x.com.dat", "a@x.com.IMG", "004711.bin", "notes.txt"] {
            assert_eq!(classify_name(name), Some(Skip::NotAPhoto), "{name}");
            assert!(may_be_a_photo(name), "{name}");
        }
        for name in [
            "Thumbs.db",
            "desktop.ini",
            "noextension",
            ".dat",
            "trailing.",
            "a@x.com.jpg.part",
            "~$a.dat",
        ] {
            assert!(!may_be_a_photo(name), "{name}");
        }
    }
}
