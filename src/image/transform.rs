//! Pixel work between decode and encode: centre-crop, resize, EXIF orientation, ICC to sRGB.
//!
//! Order matters for speed: crop and resize run on the stored (unrotated) pixels, so rotation,
//! flips and colour conversion touch only the small output. That is exact: a crop chosen in the
//! upright photo is mapped back to the stored pixels ([`stored_crop`]), and a fit-inside resize
//! is symmetric under the eight orientations.
//! Invariants: never upscales; output sides are at least 1 px.

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::decode::Rgb;
use super::error::ImageError;

/// Where to crop (if at all) and the size to resize to, in stored (unrotated) orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub crop: Option<Square>,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// A square in pixels: its top-left corner and side.
pub(crate) struct Square {
    pub left: u32,
    pub top: u32,
    pub side: u32,
}

/// The centred square of a `width` x `height` image (`None` when it is square already).
pub(crate) fn centre_square(width: u32, height: u32) -> Option<Square> {
    (width != height).then(|| {
        let side = width.min(height);
        Square {
            left: (width - side) / 2,
            top: (height - side) / 2,
            side,
        }
    })
}

/// A square given in the upright photo (`x`, `y`, `side`), in the stored pixels of an image
/// `width` x `height` as stored and turned upright by `orientation`.
pub(crate) fn stored_crop(upright: Square, orientation: u16, width: u32, height: u32) -> Square {
    let Square {
        left: x,
        top: y,
        side: s,
    } = upright;
    // Where the upright square's far corner and near corner come from; see `orient`.
    let far = |a: u32, len: u32| len - a - s;
    let (left, top) = match orientation {
        2 => (far(x, width), y),
        3 => (far(x, width), far(y, height)),
        4 => (x, far(y, height)),
        5 => (y, x),
        6 => (y, far(x, height)),
        7 => (far(y, width), far(x, height)),
        8 => (far(y, width), x),
        _ => (x, y),
    };
    Square { left, top, side: s }
}

pub(crate) fn plan(width: u32, height: u32, max_side: u32, crop: Option<Square>) -> Plan {
    let max_side = max_side.max(1);
    let crop = crop.filter(|c| !(c.side == width && c.side == height));
    let (w, h) = crop.map_or((width, height), |c| (c.side, c.side));
    let longest = w.max(h);
    if longest <= max_side {
        return Plan {
            crop,
            width: w,
            height: h,
        };
    }
    // Longest side becomes exactly max_side; the other is rounded to the nearest pixel.
    let scale = |side: u32| -> u32 {
        let scaled = (u64::from(side) * u64::from(max_side) * 2 + u64::from(longest))
            / (2 * u64::from(longest));
        (scaled as u32).clamp(1, max_side)
    };
    Plan {
        crop,
        width: scale(w),
        height: scale(h),
    }
}

fn resize_error(error: impl std::error::Error + Send + Sync + 'static) -> ImageError {
    ImageError::Encode {
        source: Box::new(error),
    }
}

/// Shrinking by more than this factor first averages pixels (box filter) down to
/// `PRESHRINK_TARGET` times the output size, then finishes with Lanczos3: the same result to the
/// eye as Lanczos3 all the way (the box stage only removes detail finer than the output can
/// show), at a fraction of the cost on large photos (Lanczos3's kernel grows with the factor).
const PRESHRINK_ABOVE: f64 = 3.0;
const PRESHRINK_TARGET: u32 = 2;

/// Applies a [`Plan`]: a high-quality (Lanczos3) convolution when shrinking, a plain copy of the
/// crop when not.
pub(crate) fn resize(image: Rgb, plan: Plan) -> Result<Rgb, ImageError> {
    let (cw, ch) = plan
        .crop
        .map_or((image.width, image.height), |c| (c.side, c.side));
    if plan.width == cw && plan.height == ch {
        return Ok(match plan.crop {
            None => image,
            Some(crop) => copy_crop(&image, crop),
        });
    }
    let mut options = ResizeOptions::new();
    if let Some(c) = plan.crop {
        options = options.crop(
            f64::from(c.left),
            f64::from(c.top),
            f64::from(c.side),
            f64::from(c.side),
        );
    }
    let mut resizer = Resizer::new();
    let src = Image::from_vec_u8(image.width, image.height, image.pixels, PixelType::U8x3)
        .map_err(resize_error)?;
    let factor = f64::from(cw) / f64::from(plan.width);
    let (src, options) = if factor > PRESHRINK_ABOVE {
        let mut mid = Image::new(
            plan.width.saturating_mul(PRESHRINK_TARGET),
            plan.height.saturating_mul(PRESHRINK_TARGET),
            PixelType::U8x3,
        );
        let boxed = options.resize_alg(ResizeAlg::Convolution(FilterType::Box));
        resizer
            .resize(&src, &mut mid, &boxed)
            .map_err(resize_error)?;
        (mid, ResizeOptions::new())
    } else {
        (src, options)
    };
    let mut dst = Image::new(plan.width, plan.height, PixelType::U8x3);
    let lanczos = options.resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
    resizer
        .resize(&src, &mut dst, &lanczos)
        .map_err(resize_error)?;
    Ok(Rgb {
        width: plan.width,
        height: plan.height,
        pixels: dst.into_vec(),
    })
}

fn copy_crop(image: &Rgb, crop: Square) -> Rgb {
    let stride = image.width as usize * 3;
    let side = crop.side as usize;
    let mut pixels = Vec::with_capacity(side * side * 3);
    for row in image
        .pixels
        .chunks_exact(stride)
        .skip(crop.top as usize)
        .take(side)
    {
        let start = crop.left as usize * 3;
        pixels.extend_from_slice(&row[start..start + side * 3]);
    }
    Rgb {
        width: crop.side,
        height: crop.side,
        pixels,
    }
}

/// Turns stored pixels upright according to an EXIF orientation (1-8; anything else is 1).
pub(crate) fn orient(image: Rgb, orientation: u16) -> Rgb {
    let (width, height, pixels) =
        orient_pixels(image.width, image.height, image.pixels, 3, orientation);
    Rgb {
        width,
        height,
        pixels,
    }
}

/// [`orient`] for any number of interleaved channels.
pub(crate) fn orient_pixels(
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    channels: usize,
    orientation: u16,
) -> (u32, u32, Vec<u8>) {
    if !(2..=8).contains(&orientation) {
        return (width, height, pixels);
    }
    let (w, h) = (width as usize, height as usize);
    let swaps = orientation >= 5;
    let (ow, oh) = if swaps { (h, w) } else { (w, h) };
    let mut out = vec![0u8; pixels.len()];
    for y in 0..oh {
        for x in 0..ow {
            // Source pixel for output (x, y); see the EXIF 2.3 Orientation tag.
            let (sx, sy) = match orientation {
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (y, h - 1 - x),
                7 => (w - 1 - y, h - 1 - x),
                _ => (w - 1 - y, x), // 8
            };
            let s = (sy * w + sx) * channels;
            let d = (y * ow + x) * channels;
            out[d..d + channels].copy_from_slice(&pixels[s..s + channels]);
        }
    }
    (ow as u32, oh as u32, out)
}

/// Converts RGB pixels described by an embedded ICC profile to sRGB, since the output carries
/// no profile. Best effort: a profile that cannot be parsed or used (or that makes the colour
/// engine panic) leaves the pixels as they are, which is what a viewer ignoring ICC shows.
pub(crate) fn to_srgb(image: &mut Rgb, icc: Option<&[u8]>) {
    let Some(icc) = icc else { return };
    let converted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        convert_to_srgb(&image.pixels, icc)
    }));
    if let Ok(Some(pixels)) = converted {
        image.pixels = pixels;
    }
}

fn convert_to_srgb(pixels: &[u8], icc: &[u8]) -> Option<Vec<u8>> {
    use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

    let source = ColorProfile::new_from_slice(icc).ok()?;
    if source.color_space != DataColorSpace::Rgb {
        return None;
    }
    let transform = source
        .create_transform_8bit(
            Layout::Rgb,
            &ColorProfile::new_srgb(),
            Layout::Rgb,
            TransformOptions::default(),
        )
        .ok()?;
    let mut out = vec![0u8; pixels.len()];
    transform.transform(pixels, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fits_longest_side_and_never_upscales() {
        assert_eq!(
            plan(6028, 3391, 648, None),
            Plan {
                crop: None,
                width: 648,
                height: 365
            }
        );
        assert_eq!(
            plan(2560, 3837, 648, None),
            Plan {
                crop: None,
                width: 432,
                height: 648
            }
        );
        assert_eq!(
            plan(16, 16, 648, None),
            Plan {
                crop: None,
                width: 16,
                height: 16
            }
        );
        assert_eq!(plan(10_000, 1, 648, None).height, 1);
    }

    #[test]
    fn plan_square_crops_the_centre() {
        let p = plan(300, 200, 648, centre_square(300, 200));
        assert_eq!(
            p.crop,
            Some(Square {
                left: 50,
                top: 0,
                side: 200
            })
        );
        assert_eq!((p.width, p.height), (200, 200));
    }

    #[test]
    fn stored_crop_maps_an_upright_square_back() {
        // A 5x3 stored image; mark each pixel with its index and check that cropping the stored
        // pixels, then orienting, equals orienting, then cropping the upright square.
        let (w, h) = (5u32, 3u32);
        let stored: Vec<u8> = (0..w * h).map(|i| i as u8).collect();
        for o in 1..=8u16 {
            let (uw, uh, upright) = orient_pixels(w, h, stored.clone(), 1, o);
            for side in 1..=uw.min(uh) {
                for y in 0..=uh - side {
                    for x in 0..=uw - side {
                        let want: Vec<u8> = (y..y + side)
                            .flat_map(|r| (x..x + side).map(move |c| (r, c)))
                            .map(|(r, c)| upright[(r * uw + c) as usize])
                            .collect();
                        let c = stored_crop(
                            Square {
                                left: x,
                                top: y,
                                side,
                            },
                            o,
                            w,
                            h,
                        );
                        let cut: Vec<u8> = (c.top..c.top + side)
                            .flat_map(|r| (c.left..c.left + side).map(move |k| (r, k)))
                            .map(|(r, k)| stored[(r * w + k) as usize])
                            .collect();
                        let (_, _, got) = orient_pixels(side, side, cut, 1, o);
                        assert_eq!(got, want, "orientation {o}, square {side}+{x}+{y}");
                    }
                }
            }
        }
    }

    #[test]
    fn orientation_6_rotates_clockwise() {
        // 2x1: red, green  ->  rotated 90 CW: 1x2, red on top.
        let img = Rgb {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 255, 0],
        };
        let out = orient(img, 6);
        assert_eq!((out.width, out.height), (1, 2));
        assert_eq!(out.pixels, vec![255, 0, 0, 0, 255, 0]);
        let img = Rgb {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 255, 0],
        };
        let out = orient(img, 8);
        assert_eq!(out.pixels, vec![0, 255, 0, 255, 0, 0]);
    }
}
