//! The image pipeline: turns a photo file's bytes into the bytes uploaded to Graph.
//!
//! Pure and synchronous: no I/O, no async, no threads of its own (the engine runs one
//! [`Pipeline::process`] per blocking-pool thread), no knowledge of configuration files.
//!
//! Two modes:
//! - [`Mode::Normalize`] decodes JPEG, MPO (first frame), PNG, GIF (first frame), WebP, TIFF, BMP
//!   and, with the `heif` feature, HEIC/HEIF/AVIF (chosen by magic bytes, never by file name),
//!   turns it upright (EXIF or XMP orientation from whichever container holds it; HEIF's own
//!   transforms), flattens alpha onto white, converts an embedded RGB ICC profile to sRGB,
//!   optionally crops a square ([`CropMode`]: the centre, or around the face), shrinks so the
//!   longest side is at most `max_side` (never enlarges), and encodes a baseline JPEG without
//!   any metadata.
//! - [`Mode::Passthrough`] sends the original bytes after a header-only check (JPEG or PNG,
//!   dimensions within `max_pixels`, at most [`MAX_UPLOAD_BYTES`]; an MPO sends its first frame);
//!   it never decodes pixels.
//!
//! Invariants: declared dimensions are checked against `max_pixels` before any pixel buffer is
//! allocated; a truncated JPEG is an error, never grey-filled output; no input makes this module
//! panic (third-party decoders run behind `catch_unwind` as a last line of defence); output of
//! normalize is always at most [`MAX_UPLOAD_BYTES`]. Errors carry no path: the caller adds it.

mod decode;
mod encode;
mod error;
mod face;
#[cfg(feature = "heif")]
mod heif;
mod meta;
mod probe;
mod transform;

use std::fmt;

pub use error::{BoxError, BytePrefix, ImageError, Malformed};
pub use probe::{detect_format, sniff};

/// Whether this build decodes HEIC, HEIF and AVIF (the `heif` cargo feature).
pub const HEIF_SUPPORT: bool = cfg!(feature = "heif");

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
    /// A JPEG with a Multi-Picture index and further frames (stereo and some phone cameras).
    Mpo,
    /// HEIF holding HEVC images: the iPhone's default since 2017.
    Heic,
    /// Any other HEIF file (the `mif1`/`msf1` brands without HEVC or AV1 named).
    Heif,
    Avif,
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
            Format::Mpo => "image/mpo",
            Format::Heic => "image/heic",
            Format::Heif => "image/heif",
            Format::Avif => "image/avif",
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
            Format::Mpo => "MPO",
            Format::Heic => "HEIC",
            Format::Heif => "HEIF",
            Format::Avif => "AVIF",
        }
    }

    /// HEIC, HEIF and AVIF: decoded by libheif, only with the `heif` feature.
    pub fn is_heif(self) -> bool {
        matches!(self, Format::Heic | Format::Heif | Format::Avif)
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

/// Which square, if any, to cut before resizing (`[image] crop`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    /// Keep the whole photo.
    #[default]
    None,
    /// The centred square (what `square = true` did).
    Center,
    /// The largest face's square, with room for hair and shoulders; the centre when there is
    /// no face or several of similar size.
    Face,
}

impl CropMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CropMode::None => "none",
            CropMode::Center => "center",
            CropMode::Face => "face",
        }
    }
}

impl fmt::Display for CropMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why `crop = "face"` cut the centre instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CropNote {
    NoFace,
    /// The second-largest face has at least 70% of the largest's area (a group photo).
    SeveralFaces,
}

impl CropNote {
    /// A stable snake_case word for reports and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            CropNote::NoFace => "no_face",
            CropNote::SeveralFaces => "several_faces",
        }
    }
}

impl fmt::Display for CropNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The square that was cut, in the upright photo's pixels (after orientation, before resizing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Crop {
    /// What was cut: [`CropMode::Center`] or [`CropMode::Face`] (never `None`).
    pub mode: CropMode,
    pub width: u32,
    pub height: u32,
    pub x: u32,
    pub y: u32,
    /// Set when `crop = "face"` fell back to the centre.
    pub note: Option<CropNote>,
}

impl fmt::Display for Crop {
    /// `face 812x812+140+60`, or `center 2560x2560+0+638 (no_face)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{}+{}+{}",
            self.mode, self.width, self.height, self.x, self.y
        )?;
        match self.note {
            Some(note) => write!(f, " ({note})"),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    /// Longest side of the output in pixels (Graph stores up to 648x648). Values above 65535
    /// are treated as 65535, 0 as 1.
    pub max_side: u32,
    /// The square to cut before resizing.
    pub crop: CropMode,
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
            crop: CropMode::None,
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
    /// The square that was cut (`None` with `crop = "none"` and in passthrough).
    pub crop: Option<Crop>,
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
            // `square=` as before the crop modes existed, so that none/center keep their
            // fingerprints; face adds the detector and its settings.
            Mode::Normalize => format!(
                "photosync-image/v{PIPELINE_VERSION};normalize;max_side={};square={};quality={}{}",
                effective_max_side(s.max_side),
                s.crop != CropMode::None,
                s.jpeg_quality.clamp(1, 100),
                if s.crop == CropMode::Face {
                    format!(";crop=face;{}", face::FINGERPRINT)
                } else {
                    String::new()
                },
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
        let format = sniff(input).ok_or(ImageError::NotAnImage {
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
        // An MPO sends its first frame: a complete JPEG that ends at the first EOI.
        let (width, height, end) = match format {
            Format::Jpeg => {
                let header = probe::jpeg(input, probe::Walk::ToFrame)?;
                (header.width, header.height, input.len())
            }
            Format::Mpo => {
                let header = probe::jpeg(input, probe::Walk::ToEnd)?;
                (header.width, header.height, header.end)
            }
            Format::Png => {
                let (width, height) = probe::png(input)?;
                (width, height, input.len())
            }
            _ => return Err(ImageError::Unsupported { format }),
        };
        decode::check_pixels(format, width, height, self.settings.max_pixels)?;
        if end > MAX_UPLOAD_BYTES {
            return Err(ImageError::too_large(end));
        }
        let content_type = match format {
            Format::Mpo => Format::Jpeg.content_type(),
            _ => format.content_type(),
        };
        Ok(Processed {
            bytes: original().slice(..end),
            content_type,
            input_format: format,
            input_size: (width, height),
            output_size: (width, height),
            orientation: 1,
            resized: false,
            metadata_stripped: false,
            crop: None,
        })
    }

    fn normalize(&self, input: &[u8], format: Format) -> Result<Processed, ImageError> {
        let s = &self.settings;
        let decoded = match format {
            Format::Jpeg | Format::Mpo => {
                let header = probe::jpeg(input, probe::Walk::ToEnd)?;
                decode::check_pixels(format, header.width, header.height, s.max_pixels)?;
                decode::jpeg(input, &header)?
            }
            Format::Png => {
                let (width, height) = probe::png(input)?;
                decode::check_pixels(format, width, height, s.max_pixels)?;
                decode::other(input, format, s.max_pixels)?
            }
            Format::Heic | Format::Heif | Format::Avif => decode_heif(input, format, s.max_pixels)?,
            _ => decode::other(input, format, s.max_pixels)?,
        };
        let input_size = (decoded.image.width, decoded.image.height);
        let max_side = effective_max_side(s.max_side);
        let (stored, crop) = self.crop(&decoded, max_side);
        let plan = transform::plan(input_size.0, input_size.1, max_side, stored);
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
            crop,
        })
    }

    /// The square to cut, in stored pixels for the resizer and in upright pixels for the report.
    fn crop(
        &self,
        decoded: &decode::Decoded,
        max_side: u32,
    ) -> (Option<transform::Square>, Option<Crop>) {
        let (w, h) = (decoded.image.width, decoded.image.height);
        let o = decoded.orientation;
        let (uw, uh) = if o >= 5 { (h, w) } else { (w, h) };
        let (stored, upright, note) = match self.settings.crop {
            CropMode::None => return (None, None),
            CropMode::Center => {
                // Centred in the stored pixels, as before orientation was taken into account
                // for crops (the same square up to a pixel, and the same output bytes).
                let stored = transform::centre_square(w, h).unwrap_or(transform::Square {
                    left: 0,
                    top: 0,
                    side: w,
                });
                let upright = transform::stored_crop(stored, inverse(o), uw, uh);
                (stored, upright, None)
            }
            CropMode::Face => {
                let faces = face::detect(&decoded.image, o);
                let (upright, note) = face::choose(&faces, uw, uh, max_side);
                (transform::stored_crop(upright, o, w, h), upright, note)
            }
        };
        let mode = match (self.settings.crop, note) {
            (CropMode::Face, None) => CropMode::Face,
            _ => CropMode::Center,
        };
        let crop = Crop {
            mode,
            width: upright.side,
            height: upright.side,
            x: upright.left,
            y: upright.top,
            note,
        };
        (Some(stored), Some(crop))
    }
}

/// The orientation that undoes `orientation` (6 and 8 are each other's inverse; the rest are
/// their own).
fn inverse(orientation: u16) -> u16 {
    match orientation {
        6 => 8,
        8 => 6,
        o => o,
    }
}

#[cfg(feature = "heif")]
fn decode_heif(
    input: &[u8],
    format: Format,
    max_pixels: u64,
) -> Result<decode::Decoded, ImageError> {
    decode::guarded(format, || heif::decode(input, format, max_pixels))
}

#[cfg(not(feature = "heif"))]
fn decode_heif(
    _input: &[u8],
    format: Format,
    _max_pixels: u64,
) -> Result<decode::Decoded, ImageError> {
    Err(ImageError::NoHeifSupport { format })
}

fn effective_max_side(max_side: u32) -> u32 {
    max_side.clamp(1, u32::from(u16::MAX))
}
