//! Errors of the image pipeline: one variant per thing an operator can tell apart.
//!
//! Invariants: no variant carries a file path (the caller adds it) or a third-party error type
//! in its public fields (sources are boxed), and every variant maps to one stable
//! [`ImageError::reason`] string that the ledger and metrics can key on.

use std::fmt;

use super::{Format, MAX_UPLOAD_BYTES};

/// The boxed cause of a decode or encode failure (a decoder's own error, or [`Malformed`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a photo could not be turned into upload bytes. Every variant is a property of the file
/// (or of the settings), so none of them is worth retrying until the file changes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("empty file (0 bytes)")]
    Empty,

    #[error("not an image (starts with {prefix})")]
    NotAnImage { prefix: BytePrefix },

    /// Passthrough only sends JPEG and PNG unchanged.
    #[error(
        "{format} is not sent unchanged (passthrough accepts only JPEG and PNG); \
         set image.mode = \"normalize\" to convert it to JPEG"
    )]
    Unsupported { format: Format },

    /// A HEIC, HEIF or AVIF file reached a binary built without the `heif` feature.
    #[error(
        "{format}: this photosync was built without HEIF support \
         (build it with the `heif` feature, which needs libheif)"
    )]
    NoHeifSupport { format: Format },

    /// The decoder does not implement a feature this file uses (e.g. a lossless or 12-bit JPEG).
    #[error("unsupported {format} variant: {source}")]
    UnsupportedFeature {
        format: Format,
        #[source]
        source: BoxError,
    },

    #[error(
        "too many pixels: {width}x{height} {format} exceeds the {limit}-pixel limit \
         (image.max_pixels); raise it if this photo is genuine"
    )]
    TooManyPixels {
        format: Format,
        width: u64,
        height: u64,
        limit: u64,
    },

    #[error("truncated {format}: {detail}")]
    Truncated {
        format: Format,
        detail: &'static str,
    },

    #[error("corrupt {format}: {source}")]
    Corrupt {
        format: Format,
        #[source]
        source: BoxError,
    },

    /// Only passthrough can produce this: normalize re-encodes until the output fits.
    #[error(
        "{bytes} bytes is over Graph's {limit}-byte photo limit and passthrough sends files \
         unchanged; set image.mode = \"normalize\" to shrink it"
    )]
    TooLarge { bytes: usize, limit: usize },

    #[error("could not encode the JPEG: {source}")]
    Encode {
        #[source]
        source: BoxError,
    },
}

impl ImageError {
    /// A stable snake_case kind for ledgers, metrics and tests; never changes for a variant.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::Empty => "empty",
            ImageError::NotAnImage { .. } => "not_an_image",
            ImageError::Unsupported { .. } | ImageError::UnsupportedFeature { .. } => {
                "unsupported_format"
            }
            ImageError::NoHeifSupport { .. } => "no_heif_support",
            ImageError::TooManyPixels { .. } => "too_many_pixels",
            ImageError::Truncated { .. } => "truncated",
            ImageError::Corrupt { .. } => "corrupt",
            ImageError::TooLarge { .. } => "too_large",
            ImageError::Encode { .. } => "encode",
        }
    }

    pub(crate) fn corrupt(format: Format, detail: &'static str) -> ImageError {
        ImageError::Corrupt {
            format,
            source: Box::new(Malformed(detail)),
        }
    }

    pub(crate) fn too_large(bytes: usize) -> ImageError {
        ImageError::TooLarge {
            bytes,
            limit: MAX_UPLOAD_BYTES,
        }
    }
}

/// A structural problem found by our own header walk (no decoder error to carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Malformed {}

/// The first bytes of a file that is not an image, shown in hex ("54 68 69 73").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BytePrefix {
    bytes: [u8; 8],
    len: usize,
}

impl BytePrefix {
    pub(crate) fn of(input: &[u8]) -> BytePrefix {
        let mut bytes = [0u8; 8];
        let len = input.len().min(bytes.len());
        bytes[..len].copy_from_slice(&input[..len]);
        BytePrefix { bytes, len }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Display for BytePrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.as_bytes().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}
