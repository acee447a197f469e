//! Decoding any accepted format into one shape: 8-bit RGB, alpha already flattened onto white,
//! plus the EXIF orientation and ICC profile that still have to be applied.
//!
//! JPEG goes through `zune-jpeg` (single-threaded, SIMD; handles progressive, grayscale, CMYK and
//! Adobe's inverted YCCK); every other format through the `image` crate under `image::Limits`.
//! Invariants: the caller has already checked the declared pixel count where we parse headers
//! ourselves (JPEG, PNG); for the rest, the decoder's header is checked here before any pixel
//! buffer exists. A panic inside a third-party decoder becomes [`ImageError::Corrupt`].

use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::errors::DecodeErrors;
use zune_jpeg::JpegDecoder;

use super::error::{ImageError, Malformed};
use super::meta;
use super::probe::JpegHeader;
use super::Format;

/// An 8-bit RGB image, rows top to bottom, no padding.
#[derive(Debug, Clone)]
pub(crate) struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

#[derive(Debug)]
pub(crate) struct Decoded {
    pub image: Rgb,
    /// EXIF orientation still to apply (1 = upright).
    pub orientation: u16,
    /// An ICC profile for the RGB data (never a CMYK or gray one).
    pub icc: Option<Vec<u8>>,
}

pub(crate) fn check_pixels(
    format: Format,
    width: u32,
    height: u32,
    limit: u64,
) -> Result<(), ImageError> {
    if u64::from(width) * u64::from(height) > limit {
        return Err(ImageError::TooManyPixels {
            format,
            width: u64::from(width),
            height: u64::from(height),
            limit,
        });
    }
    Ok(())
}

/// Runs a third-party decoder so that a panic on hostile input fails this photo, not the worker.
pub(crate) fn guarded<T>(
    format: Format,
    f: impl FnOnce() -> Result<T, ImageError>,
) -> Result<T, ImageError> {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(ImageError::corrupt(
            format,
            "the decoder gave up on malformed data (panicked)",
        ))
    })
}

pub(crate) fn jpeg(bytes: &[u8], header: &JpegHeader<'_>) -> Result<Decoded, ImageError> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        // Lenient on small deviations that libjpeg also accepts; truncation is caught by the
        // caller's marker walk, which requires an EOI after the last scan.
        .set_strict_mode(false)
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX));
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let (pixels, input_colorspace, icc) = guarded(Format::Jpeg, || {
        let pixels = decoder.decode().map_err(zune_error)?;
        Ok((pixels, decoder.input_colorspace(), decoder.icc_profile()))
    })?;
    let (width, height) = (header.width, header.height);
    let expected = width as usize * height as usize * 3;
    if pixels.len() != expected {
        return Err(ImageError::corrupt(
            Format::Jpeg,
            "decoded size differs from the frame header",
        ));
    }
    let rgb_profile = matches!(input_colorspace, Some(ColorSpace::YCbCr | ColorSpace::RGB));
    Ok(Decoded {
        image: Rgb {
            width,
            height,
            pixels,
        },
        orientation: meta::upright(
            header.exif_orientation,
            header.xmp.and_then(meta::xmp_orientation),
        ),
        icc: icc.filter(|_| rgb_profile),
    })
}

fn zune_error(error: DecodeErrors) -> ImageError {
    match error {
        DecodeErrors::ExhaustedData => ImageError::Truncated {
            format: Format::Jpeg,
            detail: "data ends before the last scan",
        },
        DecodeErrors::Unsupported(_) => ImageError::UnsupportedFeature {
            format: Format::Jpeg,
            source: Box::new(error),
        },
        error => ImageError::Corrupt {
            format: Format::Jpeg,
            source: Box::new(error),
        },
    }
}

fn image_format(format: Format) -> image::ImageFormat {
    match format {
        // MPO is decoded by zune-jpeg and never reaches the `image` crate.
        Format::Jpeg | Format::Mpo => image::ImageFormat::Jpeg,
        Format::Png => image::ImageFormat::Png,
        Format::Gif => image::ImageFormat::Gif,
        Format::Webp => image::ImageFormat::WebP,
        Format::Tiff => image::ImageFormat::Tiff,
        Format::Bmp => image::ImageFormat::Bmp,
        // Decoded by libheif; never reaches the `image` crate.
        Format::Heic | Format::Heif | Format::Avif => image::ImageFormat::Avif,
    }
}

/// Decodes PNG, GIF (first frame), WebP, TIFF and BMP through the `image` crate.
pub(crate) fn other(bytes: &[u8], format: Format, max_pixels: u64) -> Result<Decoded, ImageError> {
    use image::ImageDecoder as _;

    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), image_format(format));
    let mut limits = image::Limits::default();
    // Enough for max_pixels at the widest layout the decoders produce (RGBA, 16 bits per
    // channel), plus slack for small images' fixed overheads.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).max(64 << 20));
    reader.limits(limits);

    guarded(format, || {
        let mut decoder = reader.into_decoder().map_err(|e| image_error(format, e))?;
        let (width, height) = decoder.dimensions();
        check_pixels(format, width, height, max_pixels)?;
        if width == 0 || height == 0 {
            return Err(ImageError::corrupt(format, "zero width or height"));
        }
        // Read by us, not the decoder: it accepts only a SHORT and only some containers.
        let orientation = meta::orientation(bytes, format);
        let icc = decoder.icc_profile().ok().flatten();
        let image =
            image::DynamicImage::from_decoder(decoder).map_err(|e| image_error(format, e))?;
        let has_color = image.color().has_color();
        let rgb = if image.color().has_alpha() {
            let rgba = image.into_rgba8();
            flatten_rgba(rgba.width(), rgba.height(), rgba.as_raw())
        } else {
            let rgb = image.into_rgb8();
            Rgb {
                width: rgb.width(),
                height: rgb.height(),
                pixels: rgb.into_raw(),
            }
        };
        Ok(Decoded {
            image: rgb,
            orientation,
            // A gray image's profile (if any) is a gray profile: not applicable to RGB data.
            icc: icc.filter(|_| has_color),
        })
    })
}

/// Flattens interleaved RGBA onto white.
pub(crate) fn flatten_rgba(width: u32, height: u32, rgba: &[u8]) -> Rgb {
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    for (out, px) in pixels.chunks_exact_mut(3).zip(rgba.chunks_exact(4)) {
        let alpha = u32::from(px[3]);
        let white = 255 * (255 - alpha);
        for (o, &channel) in out.iter_mut().zip(&px[..3]) {
            // round((c*a + 255*(255-a)) / 255), exact for every input (the sum is <= 65025).
            let v = u32::from(channel) * alpha + white;
            *o = (((v + 128) * 257) >> 16) as u8;
        }
    }
    Rgb {
        width,
        height,
        pixels,
    }
}

fn image_error(format: Format, error: image::ImageError) -> ImageError {
    use image::error::{ImageError as E, LimitErrorKind};

    let io_eof = matches!(&error, E::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof);
    if io_eof || ends_early(&error) {
        return ImageError::Truncated {
            format,
            detail: "data ends before the image is complete",
        };
    }
    match error {
        E::Limits(ref limit) if matches!(limit.kind(), LimitErrorKind::DimensionError) => {
            ImageError::Corrupt {
                format,
                source: Box::new(error),
            }
        }
        E::Limits(_) => ImageError::Corrupt {
            format,
            source: Box::new(Malformed(
                "decoding would need more memory than image.max_pixels allows",
            )),
        },
        E::Unsupported(_) => ImageError::UnsupportedFeature {
            format,
            source: Box::new(error),
        },
        error => ImageError::Corrupt {
            format,
            source: Box::new(error),
        },
    }
}

/// True when the error chain bottoms out in "unexpected end of file".
fn ends_early(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::UnexpectedEof {
                return true;
            }
        }
        current = e.source();
    }
    false
}
