//! HEIC, HEIF and AVIF through the system's libheif (the `heif` feature).
//!
//! libheif applies the container's own transforms (`irot`, `imir`, `clap`) while decoding, so the
//! pixels come out upright and the reported orientation is 1: the EXIF Orientation an iPhone also
//! writes describes the same rotation and must not be applied a second time.
//! Invariants: the primary image's declared size is checked against `max_pixels` before decoding;
//! libheif's own security limits stay on; a failure names the format.

use libheif_rs::{ColorSpace, HeifContext, HeifError, HeifErrorCode, RgbChroma};

use super::decode::{check_pixels, flatten_rgba, Decoded, Rgb};
use super::error::ImageError;
use super::Format;

pub(crate) fn decode(bytes: &[u8], format: Format, max_pixels: u64) -> Result<Decoded, ImageError> {
    let context = HeifContext::read_from_bytes(bytes).map_err(|e| heif_error(format, e))?;
    let handle = context
        .primary_image_handle()
        .map_err(|e| heif_error(format, e))?;
    let (width, height) = (handle.width(), handle.height());
    check_pixels(format, width, height, max_pixels)?;
    if width == 0 || height == 0 {
        return Err(ImageError::corrupt(format, "zero width or height"));
    }
    let alpha = handle.has_alpha_channel();
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    let image = handle
        .decode(ColorSpace::Rgb(chroma), None)
        .map_err(|e| heif_error(format, e))?;
    let icc = handle.color_profile_raw().map(|p| p.data);
    let planes = image.planes();
    let plane = planes
        .interleaved
        .ok_or(ImageError::corrupt(format, "libheif returned no RGB plane"))?;
    let channels = if alpha { 4 } else { 3 };
    let (w, h) = (plane.width as usize, plane.height as usize);
    if plane.stride < w * channels || plane.data.len() < plane.stride * h.saturating_sub(1) {
        return Err(ImageError::corrupt(
            format,
            "libheif returned a short plane",
        ));
    }
    let mut pixels = Vec::with_capacity(w * h * channels);
    for row in plane.data.chunks(plane.stride).take(h) {
        pixels.extend_from_slice(row.get(..w * channels).unwrap_or_default());
    }
    if pixels.len() != w * h * channels {
        return Err(ImageError::corrupt(
            format,
            "libheif returned a short plane",
        ));
    }
    let image = if alpha {
        flatten_rgba(plane.width, plane.height, &pixels)
    } else {
        Rgb {
            width: plane.width,
            height: plane.height,
            pixels,
        }
    };
    Ok(Decoded {
        image,
        orientation: 1,
        icc,
    })
}

fn heif_error(format: Format, error: HeifError) -> ImageError {
    match error.code {
        HeifErrorCode::UnsupportedFeature | HeifErrorCode::UnsupportedFileType => {
            ImageError::UnsupportedFeature {
                format,
                source: Box::new(error),
            }
        }
        _ if error.message.contains("end of") || error.message.contains("truncated") => {
            ImageError::Truncated {
                format,
                detail: "data ends before the image is complete",
            }
        }
        _ => ImageError::Corrupt {
            format,
            source: Box::new(error),
        },
    }
}
