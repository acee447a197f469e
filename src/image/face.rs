//! The face-centred square crop (`crop = "face"`): find the faces, pick the square.
//!
//! Detection runs rustface (a port of SeetaFace's funnel-structured cascade) with SeetaFace's
//! frontal model, which ships inside this module (`model/`, BSD-2-Clause) and is parsed once per
//! process: nothing is downloaded. It runs on a small grey copy of the photo, after orienting it
//! (the model only finds upright faces), single-threaded (rustface without rayon: the pipeline
//! runs one image per core).
//!
//! Invariants: the square lies inside the upright photo and is never larger than its short side;
//! it holds the whole chosen face box whenever the photo is large enough to; a detector panic or
//! an unusable model means "no face", never a failed photo. Every constant here decides output
//! bytes and is part of [`FINGERPRINT`].

use std::sync::OnceLock;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use super::decode::Rgb;
use super::transform::{orient_pixels, Square};
use super::CropNote;

static MODEL_BYTES: &[u8] = include_bytes!("model/seeta_fd_frontal_v1.0.bin");

/// Long side of the copy the detector sees. Faces in staff photos are large; 400 px finds faces
/// down to about a twentieth of the photo's long side and keeps detection to tens of ms.
const DETECT_SIDE: u32 = 400;
/// rustface's smallest window; faces smaller than this in the copy are not looked for.
const MIN_FACE: u32 = 20;
/// Detections scoring below this are dropped (rustface suggests 0.95-4.5; 2.0 is its example's).
const SCORE_THRESHOLD: f64 = 2.0;
const PYRAMID_SCALE: f32 = 0.8;
const WINDOW_STEP: u32 = 4;
/// The square's side in face boxes: room for hair above and shoulders below.
const FACE_TO_SIDE: f64 = 3.0;
/// The eye line, as a fraction of the face box's height from its top (SeetaFace boxes run from
/// the brows to the chin).
const EYES_IN_BOX: f64 = 0.35;
/// Where the eye line goes in the square, from its top: a little above the middle.
const EYES_IN_SQUARE: f64 = 0.42;
/// A second face at least this fraction of the largest one's area makes it a group photo.
const SEVERAL_FACES: f64 = 0.7;

/// Everything above, for the pipeline fingerprint.
pub(crate) const FINGERPRINT: &str = "detector=rustface-0.1.7/seeta_fd_frontal_v1.0;\
     side=400;min=20;score=2.0;pyramid=0.8;step=4;face_to_side=3.0;eyes=0.35/0.42;several=0.7";

/// A detected face in the upright photo's pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub score: f64,
}

impl FaceBox {
    fn area(&self) -> f64 {
        self.width * self.height
    }
}

fn model() -> Option<&'static rustface::Model> {
    static MODEL: OnceLock<Option<rustface::Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| rustface::read_model(MODEL_BYTES).ok())
        .as_ref()
}

/// The faces in a stored image that `orientation` turns upright, in the upright photo's pixels,
/// largest first.
pub(crate) fn detect(image: &Rgb, orientation: u16) -> Vec<FaceBox> {
    let Some(model) = model() else {
        return Vec::new();
    };
    let Some((width, height, grey)) = small_grey(image) else {
        return Vec::new();
    };
    let (width, height, grey) = orient_pixels(width, height, grey, 1, orientation);
    let upright_width = if orientation >= 5 {
        image.height
    } else {
        image.width
    };
    let scale = f64::from(upright_width) / f64::from(width);
    let found = std::panic::catch_unwind(|| {
        let mut detector = rustface::create_detector_with_model(model.clone());
        detector.set_min_face_size(MIN_FACE);
        detector.set_score_thresh(SCORE_THRESHOLD);
        detector.set_pyramid_scale_factor(PYRAMID_SCALE);
        detector.set_slide_window_step(WINDOW_STEP, WINDOW_STEP);
        detector.detect(&rustface::ImageData::new(&grey, width, height))
    })
    .unwrap_or_default();
    let (uw, uh) = (f64::from(width) * scale, f64::from(height) * scale);
    let mut faces: Vec<FaceBox> = found
        .iter()
        .map(|face| {
            let b = face.bbox();
            // Boxes can reach past the edges; keep the part inside the photo.
            let x0 = (f64::from(b.x()) * scale).clamp(0.0, uw);
            let y0 = (f64::from(b.y()) * scale).clamp(0.0, uh);
            let x1 = ((f64::from(b.x()) + f64::from(b.width())) * scale).clamp(0.0, uw);
            let y1 = ((f64::from(b.y()) + f64::from(b.height())) * scale).clamp(0.0, uh);
            FaceBox {
                x: x0,
                y: y0,
                width: x1 - x0,
                height: y1 - y0,
                score: face.score(),
            }
        })
        .filter(|f| f.width >= 1.0 && f.height >= 1.0)
        .collect();
    faces.sort_by(|a, b| b.area().total_cmp(&a.area()));
    faces
}

/// A grey copy whose long side is at most [`DETECT_SIDE`] (never enlarged), or `None` when the
/// photo is too small to hold a face the detector can see.
fn small_grey(image: &Rgb) -> Option<(u32, u32, Vec<u8>)> {
    let longest = image.width.max(image.height);
    let (width, height) = if longest > DETECT_SIDE {
        let scale = |side: u32| {
            ((u64::from(side) * u64::from(DETECT_SIDE) + u64::from(longest) / 2)
                / u64::from(longest))
            .max(1) as u32
        };
        (scale(image.width), scale(image.height))
    } else {
        (image.width, image.height)
    };
    if width.min(height) < MIN_FACE {
        return None;
    }
    let rgb = if (width, height) == (image.width, image.height) {
        image.pixels.clone()
    } else {
        let src = fast_image_resize::images::ImageRef::new(
            image.width,
            image.height,
            &image.pixels,
            PixelType::U8x3,
        )
        .ok()?;
        let mut dst = Image::new(width, height, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
        Resizer::new().resize(&src, &mut dst, &options).ok()?;
        dst.into_vec()
    };
    // ITU-R BT.601 luma in integers.
    let grey = rgb
        .chunks_exact(3)
        .map(|p| {
            ((u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114 + 500) / 1000)
                as u8
        })
        .collect();
    Some((width, height, grey))
}

/// The square to cut from a `width` x `height` upright photo given its faces (largest first),
/// with the note to record when it falls back to the centre.
pub(crate) fn choose(
    faces: &[FaceBox],
    width: u32,
    height: u32,
    max_side: u32,
) -> (Square, Option<CropNote>) {
    let centre = || {
        let side = width.min(height);
        Square {
            left: (width - side) / 2,
            top: (height - side) / 2,
            side,
        }
    };
    let Some(face) = faces.first() else {
        return (centre(), Some(CropNote::NoFace));
    };
    if faces
        .get(1)
        .is_some_and(|second| second.area() >= SEVERAL_FACES * face.area())
    {
        return (centre(), Some(CropNote::SeveralFaces));
    }
    (face_square(face, width, height, max_side), None)
}

fn face_square(face: &FaceBox, width: u32, height: u32, max_side: u32) -> Square {
    let short = width.min(height);
    // At least the output size where the photo allows, so a small face is not enlarged.
    let wanted = (face.width.max(face.height) * FACE_TO_SIDE).round() as u32;
    let side = wanted.max(max_side).min(short).max(1);
    let s = f64::from(side);
    let place = |start: f64, face_start: f64, face_len: f64, len: u32| -> u32 {
        // Keep the whole face box when it fits, then stay inside the photo.
        let start = start.min(face_start).max(face_start + face_len - s);
        start.round().clamp(0.0, f64::from(len - side)) as u32
    };
    let centre_x = face.x + face.width / 2.0;
    let eyes_y = face.y + face.height * EYES_IN_BOX;
    Square {
        left: place(centre_x - s / 2.0, face.x, face.width, width),
        top: place(eyes_y - s * EYES_IN_SQUARE, face.y, face.height, height),
        side,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f64, y: f64, side: f64) -> FaceBox {
        FaceBox {
            x,
            y,
            width: side,
            height: side,
            score: 5.0,
        }
    }

    #[test]
    fn the_model_ships_and_parses() {
        assert!(model().is_some());
    }

    #[test]
    fn centred_on_the_face_eyes_above_the_middle() {
        let f = face(900.0, 500.0, 200.0);
        let (sq, note) = choose(&[f], 3000, 2000, 648);
        assert_eq!(note, None);
        assert_eq!(sq.side, 648);
        let centre = f64::from(sq.left) + f64::from(sq.side) / 2.0;
        assert!((centre - 1000.0).abs() <= 1.0, "{sq:?}");
        let eyes = 500.0 + 200.0 * EYES_IN_BOX - f64::from(sq.top);
        assert!(eyes < f64::from(sq.side) / 2.0, "{sq:?}");
    }

    #[test]
    fn near_an_edge_the_square_stays_inside() {
        let (sq, _) = choose(&[face(10.0, 5.0, 300.0)], 2000, 1200, 648);
        assert_eq!((sq.left, sq.top, sq.side), (0, 0, 900));
        let (sq, _) = choose(&[face(1850.0, 1000.0, 150.0)], 2000, 1200, 648);
        assert!(
            sq.left + sq.side <= 2000 && sq.top + sq.side <= 1200,
            "{sq:?}"
        );
        // A face as large as the photo: the square is the short side and still holds it.
        let (sq, _) = choose(&[face(0.0, 100.0, 1000.0)], 1000, 1500, 648);
        assert_eq!((sq.left, sq.side), (0, 1000));
        assert!(sq.top <= 100 && sq.top + sq.side >= 1100, "{sq:?}");
    }

    #[test]
    fn no_face_or_a_group_falls_back_to_the_centre() {
        let centre = Square {
            left: 500,
            top: 0,
            side: 1000,
        };
        assert_eq!(
            choose(&[], 2000, 1000, 648),
            (centre, Some(CropNote::NoFace))
        );
        let group = [face(100.0, 100.0, 100.0), face(800.0, 100.0, 90.0)];
        assert_eq!(
            choose(&group, 2000, 1000, 648),
            (centre, Some(CropNote::SeveralFaces))
        );
        // A small face in the background does not make a group.
        let one = [face(100.0, 100.0, 100.0), face(800.0, 100.0, 50.0)];
        assert_eq!(choose(&one, 2000, 1000, 648).1, None);
    }
}
