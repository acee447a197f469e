//! Baseline JPEG encoding with no metadata, stepping the quality down until the result fits
//! Graph's upload limit.
//!
//! Invariants: output is baseline (SOF0), carries only the JFIF APP0 header (no EXIF, XMP, IPTC,
//! ICC or comments), and is at most [`MAX_UPLOAD_BYTES`] or an error.

use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder};

use super::decode::Rgb;
use super::error::{ImageError, Malformed};
use super::MAX_UPLOAD_BYTES;

/// Quality steps tried after the configured one, while the output is still too large.
const QUALITY_STEP: u8 = 10;
const MIN_QUALITY: u8 = 30;

pub(crate) fn jpeg(image: &Rgb, quality: u8) -> Result<Vec<u8>, ImageError> {
    let (Ok(width), Ok(height)) = (u16::try_from(image.width), u16::try_from(image.height)) else {
        return Err(ImageError::Encode {
            source: Box::new(Malformed(
                "JPEG sides are limited to 65535 px (lower image.max_side)",
            )),
        });
    };
    let mut quality = quality.clamp(1, 100);
    loop {
        let mut out = Vec::with_capacity(image.pixels.len() / 8);
        let mut encoder = Encoder::new(&mut out, quality);
        // Averaging chroma instead of picking one sample avoids colour fringes on thin lines.
        encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
        encoder
            .encode(&image.pixels, width, height, ColorType::Rgb)
            .map_err(|e| ImageError::Encode {
                source: Box::new(e),
            })?;
        if out.len() <= MAX_UPLOAD_BYTES {
            return Ok(out);
        }
        if quality <= MIN_QUALITY {
            return Err(ImageError::Encode {
                source: Box::new(Malformed(
                    "the JPEG stays over 4 MiB even at quality 30 (lower image.max_side)",
                )),
            });
        }
        quality = quality.saturating_sub(QUALITY_STEP).max(MIN_QUALITY);
    }
}
