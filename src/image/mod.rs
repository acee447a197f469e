//! The image pipeline: turns a photo file's bytes into the bytes uploaded to Graph.
//!
//! Pure and synchronous: no I/O, no async, no threads of its own (the engine runs one
//! [`Pipeline::process`] per blocking-pool thread), no knowledge of configuration files.
//!
//! Two modes:
//! - [`Mode::Normalize`] decodes JPEG, PNG, GIF (first frame), WebP, TIFF or BMP (chosen by magic
//!   bytes, never by file name), applies the EXIF orientation, flattens alpha onto white,
//!   converts an embedded RGB ICC profile to sRGB, optionally centre-crops to a square, shrinks
//!   so the longest side is at most `max_side` (never enlarges), and encodes a baseline JPEG
//!   without any metadata.
//! - [`Mode::Passthrough`] sends the original bytes after a header-only check (JPEG or PNG,
//!   dimensions within `max_pixels`, at most [`MAX_UPLOAD_BYTES`]); it never decodes pixels.
//!
//! Invariants: declared dimensions are checked against `max_pixels` before any pixel buffer is
//! allocated; a truncated JPEG is an error, never grey-filled output; no input makes this module
//! panic (third-party decoders run behind `catch_unwind` as a last line of defence); output of
//! normalize is always at most [`MAX_UPLOAD_BYTES`]. Errors carry no path: the caller adds it.

mod decode;
mod encode;
mod error;
mod probe;
mod transform;

use std::fmt;

pub use error::{BoxError, BytePrefix, ImageError, Malformed};
pub use probe::detect_format;

/// Graph rejects profile photos larger than this.
pub const MAX_UPLOAD_BYTES: usize = 4 * 1024 * 1024;

/// Bump whenever a change here alters output bytes for the same input and settings (a new
/// encoder, filter or colour handling), so that the planner re-uploads everything once.
pub const PIPELINE_VERSION: u32 = 1;

/// Image formats recognised by their magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    Webp,
    Tiff,
    Bmp,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
            Format::Webp => "image/webp",
            Format::Tiff => "image/tiff",
            Format::Bmp => "image/bmp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::Gif => "GIF",
            Format::Webp => "WebP",
            Format::Tiff => "TIFF",
            Format::Bmp => "BMP",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decode, orient, shrink and re-encode as a metadata-free baseline JPEG.
    Normalize,
    /// Upload the original bytes after a header check (JPEG and PNG only).
    Passthrough,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    /// Longest side of the output in pixels (Graph stores up to 648x648). Values above 65535
    /// are treated as 65535, 0 as 1.
    pub max_side: u32,
    /// Centre-crop to a square before resizing.
    pub square: bool,
    /// JPEG quality 1-100 (0 counts as 1); lowered automatically if the output exceeds 4 MiB.
    pub jpeg_quality: u8,
    /// Refuse images whose declared width x height exceeds this, before decoding.
    pub max_pixels: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Normalize,
            max_side: 648,
            square: false,
            jpeg_quality: 88,
            max_pixels: 120_000_000,
        }
    }
}

/// The result of [`Pipeline::process`]: what to upload, and what was done to get it.
#[derive(Debug, Clone)]
pub struct Processed {
    pub bytes: bytes::Bytes,
    pub content_type: &'static str,
    pub input_format: Format,
    /// Width x height as stored in the file (before orientation).
    pub input_size: (u32, u32),
    /// Width x height of the uploaded image (after orientation, crop and resize).
    pub output_size: (u32, u32),
    /// The EXIF orientation that was applied (1 = none; always 1 in passthrough).
    pub orientation: u16,
    pub resized: bool,
    pub metadata_stripped: bool,
}

/// A configured pipeline. Cheap to share between threads (`Send + Sync`, no interior state).
#[derive(Debug, Clone)]
pub struct Pipeline {
    settings: Settings,
}

impl Pipeline {
    pub fn new(settings: Settings) -> Pipeline {
        Pipeline { settings }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// 16 hex digits identifying everything that decides the output bytes: the mode, its
    /// output-affecting settings and [`PIPELINE_VERSION`]. Stable across runs and builds
    /// (FNV-1a over a canonical string), so it can be stored in the ledger.
    pub fn fingerprint(&self) -> String {
        let s = &self.settings;
        let canonical = match s.mode {
            Mode::Passthrough => format!("photosync-image/v{PIPELINE_VERSION};passthrough"),
            Mode::Normalize => format!(
                "photosync-image/v{PIPELINE_VERSION};normalize;max_side={};square={};quality={}",
                effective_max_side(s.max_side),
                s.square,
                s.jpeg_quality.clamp(1, 100),
            ),
        };
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in canonical.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    pub fn process(&self, input: &[u8]) -> Result<Processed, ImageError> {
        self.run(input, || bytes::Bytes::copy_from_slice(input))
    }

    /// As [`Pipeline::process`], but passthrough hands back `input` itself rather than a copy.
    pub fn process_shared(&self, input: &bytes::Bytes) -> Result<Processed, ImageError> {
        self.run(input, || input.clone())
    }

    /// Whether [`Pipeline::process`] only reads headers (cheap enough for any thread).
    pub fn is_header_only(&self) -> bool {
        self.settings.mode == Mode::Passthrough
    }

    fn run(
        &self,
        input: &[u8],
        original: impl FnOnce() -> bytes::Bytes,
    ) -> Result<Processed, ImageError> {
        if input.is_empty() {
            return Err(ImageError::Empty);
        }
        let format = detect_format(input).ok_or(ImageError::NotAnImage {
            prefix: BytePrefix::of(input),
        })?;
        match self.settings.mode {
            Mode::Passthrough => self.passthrough(input, format, original),
            Mode::Normalize => self.normalize(input, format),
        }
    }

    fn passthrough(
        &self,
        input: &[u8],
        format: Format,
        original: impl FnOnce() -> bytes::Bytes,
    ) -> Result<Processed, ImageError> {
        let (width, height) = match format {
            Format::Jpeg => {
                let header = probe::jpeg(input, probe::Walk::ToFrame)?;
                (header.width, header.height)
            }
            Format::Png => probe::png(input)?,
            _ => return Err(ImageError::Unsupported { format }),
        };
        decode::check_pixels(format, width, height, self.settings.max_pixels)?;
        if input.len() > MAX_UPLOAD_BYTES {
            return Err(ImageError::too_large(input.len()));
        }
        Ok(Processed {
            bytes: original(),
            content_type: format.content_type(),
            input_format: format,
            input_size: (width, height),
            output_size: (width, height),
            orientation: 1,
            resized: false,
            metadata_stripped: false,
        })
    }

    fn normalize(&self, input: &[u8], format: Format) -> Result<Processed, ImageError> {
        let s = &self.settings;
        let decoded = match format {
            Format::Jpeg => {
                let header = probe::jpeg(input, probe::Walk::ToEnd)?;
                decode::check_pixels(format, header.width, header.height, s.max_pixels)?;
                decode::jpeg(input, &header)?
            }
            Format::Png => {
                let (width, height) = probe::png(input)?;
                decode::check_pixels(format, width, height, s.max_pixels)?;
                decode::other(input, format, s.max_pixels)?
            }
            _ => decode::other(input, format, s.max_pixels)?,
        };
        let input_size = (decoded.image.width, decoded.image.height);
        let plan = transform::plan(
            input_size.0,
            input_size.1,
            effective_max_side(s.max_side),
            s.square,
        );
        let resized = (plan.width, plan.height) != input_size;
        let image = transform::resize(decoded.image, plan)?;
        let mut image = transform::orient(image, decoded.orientation);
        transform::to_srgb(&mut image, decoded.icc.as_deref());
        let jpeg = encode::jpeg(&image, s.jpeg_quality)?;
        Ok(Processed {
            bytes: bytes::Bytes::from(jpeg),
            content_type: Format::Jpeg.content_type(),
            input_format: format,
            input_size,
            output_size: (image.width, image.height),
            orientation: decoded.orientation,
            resized,
            metadata_stripped: true,
        })
    }
}

fn effective_max_side(max_side: u32) -> u32 {
    max_side.clamp(1, u32::from(u16::MAX))
}
