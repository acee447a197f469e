//! The image pipeline against the real photos in `shared/photos` (see its SOURCES.md for what
//! each file is and must do). Self-contained: uses only `photosync::image`, std and `image`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use photosync::image::{
    detect_format, sniff, CropMode, CropNote, Format, ImageError, Mode, Pipeline, Processed,
    Settings,
};

/// What SOURCES.md says each photo must do under the default (normalize) settings.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Converts; output is the "fit 648" size.
    Fits(u32, u32),
    /// Fails with this `ImageError::reason()`.
    Fails(&'static str),
}

fn expectations() -> BTreeMap<&'static str, Expect> {
    use Expect::{Fails, Fits};
    BTreeMap::from([
        ("orient-0-none_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-2_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-3_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-4_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-5_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-6_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-7_hopper_128x128.jpg", Fits(128, 128)),
        ("orient-8_hopper_128x128.jpg", Fits(128, 128)),
        (
            "orient-1-explicit_canon-powershot-s40_480x360.jpg",
            Fits(480, 360),
        ),
        (
            "xmp-adobergb-icc_canon-eos-t6_2000x1072.jpg",
            Fits(648, 347),
        ),
        ("cmyk-adobe-ycck_100x100.jpg", Fits(100, 100)),
        ("progressive-portrait_wine_2560x3837.jpg", Fits(432, 648)),
        ("grayscale_hopper_128x128.jpg", Fits(128, 128)),
        ("large_kleiber_6028x3391_4.2MiB.jpg", Fits(648, 365)),
        ("png-rgb_astronaut_512x512.png", Fits(512, 512)),
        (
            "png-rgba-semitransparent_mate-arc_2140x1200.png",
            Fits(648, 363),
        ),
        ("png-palette-interlaced_pil123p_162x150.png", Fits(162, 150)),
        ("png-16bit-rgb_chessboard_200x200.png", Fits(200, 200)),
        ("tiny_16x16_rgba.png", Fits(16, 16)),
        ("gif_hopper_128x128.gif", Fits(128, 128)),
        ("gif-animated_dispose-none_100x100.gif", Fits(100, 100)),
        ("webp-lossy-exif_canon_480x360.webp", Fits(480, 360)),
        // We decode TIFF, so normalize accepts it (passthrough does not; see below).
        ("tiff_hopper_128x128.tif", Fits(128, 128)),
        ("misnamed_png-content_coffee_600x400.jpg", Fits(600, 400)),
        ("not-an-image_text.jpg", Fails("not_an_image")),
        ("zero-bytes.jpg", Fails("empty")),
        ("truncated-progressive_100x100.jpg", Fails("truncated")),
        ("corrupt-ihdr-absurd-dims.png", Fails("too_many_pixels")),
        ("bomb_jpeg_64250x64250_1.4KB.jpg", Fails("too_many_pixels")),
    ])
}

/// The photos folder, or `None` (after saying why) when this checkout has none.
fn photos_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PHOTOSYNC_TEST_PHOTOS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/photos"),
        PathBuf::from,
    );
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "skipping: test photos not found at {} (set PHOTOSYNC_TEST_PHOTOS)",
            dir.display()
        );
        None
    }
}

fn read(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

fn normalize() -> Pipeline {
    Pipeline::new(Settings::default())
}

fn passthrough() -> Pipeline {
    Pipeline::new(Settings {
        mode: Mode::Passthrough,
        ..Settings::default()
    })
}

fn process_ok(pipeline: &Pipeline, dir: &Path, name: &str) -> Processed {
    pipeline
        .process(&read(dir, name))
        .unwrap_or_else(|e| panic!("{name}: expected success, got {} ({e})", e.reason()))
}

fn process_err(pipeline: &Pipeline, dir: &Path, name: &str) -> ImageError {
    match pipeline.process(&read(dir, name)) {
        Ok(p) => panic!(
            "{name}: expected an error, got {:?}",
            (p.input_format, p.output_size)
        ),
        Err(e) => e,
    }
}

fn decode_rgb(bytes: &[u8]) -> image::RgbImage {
    image::load_from_memory(bytes)
        .unwrap_or_else(|e| panic!("output does not decode: {e}"))
        .to_rgb8()
}

/// Mean of |dR|+|dG|+|dB| per pixel (the measure SOURCES.md quotes).
fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "compared images differ in size"
    );
    let total: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    total as f64 / f64::from(a.width() * a.height())
}

fn mean_rgb(img: &image::RgbImage) -> [f64; 3] {
    let mut sum = [0u64; 3];
    for px in img.pixels() {
        for (s, &c) in sum.iter_mut().zip(&px.0) {
            *s += u64::from(c);
        }
    }
    let n = f64::from(img.width() * img.height());
    sum.map(|s| s as f64 / n)
}

/// Markers of a JPEG's header segments, up to the first scan.
fn jpeg_markers(bytes: &[u8]) -> Vec<u8> {
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "output is not a JPEG");
    let mut markers = Vec::new();
    let mut pos = 2;
    while pos + 4 <= bytes.len() {
        assert_eq!(bytes[pos], 0xFF, "bad marker structure at {pos}");
        let marker = bytes[pos + 1];
        markers.push(marker);
        if marker == 0xDA {
            break;
        }
        let len = usize::from(u16::from_be_bytes([bytes[pos + 2], bytes[pos + 3]]));
        pos += 2 + len;
    }
    markers
}

/// Everything SOURCES.md asks of any converted output.
fn assert_clean_output(name: &str, p: &Processed, fit: (u32, u32)) {
    assert_eq!(p.content_type, "image/jpeg", "{name}");
    assert!(p.metadata_stripped, "{name}");
    assert!(
        p.bytes.len() < 4 * 1024 * 1024,
        "{name}: output {} bytes",
        p.bytes.len()
    );
    let markers = jpeg_markers(&p.bytes);
    assert!(
        markers.contains(&0xC0),
        "{name}: not baseline (markers {markers:02X?})"
    );
    for (marker, what) in [
        (0xC2, "progressive SOF2"),
        (0xE1, "APP1 (EXIF/XMP)"),
        (0xE2, "APP2 (ICC)"),
        (0xED, "APP13 (IPTC)"),
        (0xFE, "COM"),
    ] {
        assert!(!markers.contains(&marker), "{name}: output has {what}");
    }
    let decoded = image::load_from_memory_with_format(&p.bytes, image::ImageFormat::Jpeg)
        .unwrap_or_else(|e| panic!("{name}: output does not decode: {e}"));
    let (w, h) = (decoded.width(), decoded.height());
    assert_eq!(
        (w, h),
        p.output_size,
        "{name}: output_size disagrees with the JPEG"
    );
    assert!(w.max(h) <= 648, "{name}: {w}x{h} exceeds max_side");
    assert!(
        w.abs_diff(fit.0) <= 1 && h.abs_diff(fit.1) <= 1,
        "{name}: {w}x{h}, expected {}x{} (fit 648)",
        fit.0,
        fit.1
    );
}

#[test]
fn every_photo_does_what_sources_md_says() {
    let Some(dir) = photos_dir() else { return };
    let expected = expectations();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("listing the photos folder")
        .map(|entry| entry.expect("reading a directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name != "SOURCES.md")
        .collect();
    on_disk.sort();
    for name in &on_disk {
        assert!(
            expected.contains_key(name.as_str()),
            "{name}: no expectation in this test"
        );
    }
    for name in expected.keys() {
        assert!(
            on_disk.iter().any(|n| n == name),
            "{name}: missing from {}",
            dir.display()
        );
    }

    let pipeline = normalize();
    for name in &on_disk {
        match expected[name.as_str()] {
            Expect::Fits(w, h) => {
                let p = process_ok(&pipeline, &dir, name);
                assert_clean_output(name, &p, (w, h));
            }
            Expect::Fails(reason) => {
                let e = process_err(&pipeline, &dir, name);
                assert_eq!(e.reason(), reason, "{name}: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

#[test]
fn orientation_matches_the_upright_reference() {
    let Some(dir) = photos_dir() else { return };
    let reference = decode_rgb(&read(&dir, "orient-0-none_hopper_128x128.jpg"));
    let pipeline = normalize();
    for n in 2..=8u16 {
        let name = format!("orient-{n}_hopper_128x128.jpg");
        let p = process_ok(&pipeline, &dir, &name);
        assert_eq!(p.orientation, n, "{name}: orientation reported");
        let diff = mean_abs_diff(&decode_rgb(&p.bytes), &reference);
        // SOURCES.md: ~14 when applied correctly, 177-245 when ignored.
        assert!(
            diff < 20.0,
            "{name}: mean |dRGB| {diff:.1} to the upright reference"
        );
    }
    let p = process_ok(
        &pipeline,
        &dir,
        "orient-1-explicit_canon-powershot-s40_480x360.jpg",
    );
    assert_eq!((p.orientation, p.output_size), (1, (480, 360)));
}

#[test]
fn cmyk_is_not_a_colour_negative() {
    let Some(dir) = photos_dir() else { return };
    let p = process_ok(&normalize(), &dir, "cmyk-adobe-ycck_100x100.jpg");
    let [r, g, b] = mean_rgb(&decode_rgb(&p.bytes));
    // Red lettering on black. ImageMagick's conversion (and ours) averages (30, 5, 7); a naive
    // conversion that forgets Adobe's inverted storage gives the negative, about (225, 250, 248).
    for (got, want, channel) in [(r, 30.0, "R"), (g, 5.0, "G"), (b, 7.0, "B")] {
        assert!(
            (got - want).abs() < 20.0,
            "mean {channel} {got:.0}, expected about {want}"
        );
    }
}

#[test]
fn transparency_is_flattened_onto_white() {
    let Some(dir) = photos_dir() else { return };
    let name = "png-rgba-semitransparent_mate-arc_2140x1200.png";
    let source = image::load_from_memory(&read(&dir, name))
        .expect("decoding the source PNG")
        .to_rgba8();
    // Means survive resizing, so compare the output with the source flattened on white/black.
    let (mut on_white, mut on_black) = ([0f64; 3], [0f64; 3]);
    for px in source.pixels() {
        let a = f64::from(px[3]) / 255.0;
        for c in 0..3 {
            on_white[c] += f64::from(px[c]) * a + 255.0 * (1.0 - a);
            on_black[c] += f64::from(px[c]) * a;
        }
    }
    let n = f64::from(source.width() * source.height());
    let p = process_ok(&normalize(), &dir, name);
    let got = mean_rgb(&decode_rgb(&p.bytes));
    for c in 0..3 {
        let (white, black) = (on_white[c] / n, on_black[c] / n);
        assert!(
            (got[c] - white).abs() < 6.0,
            "channel {c}: mean {:.0}, on white {white:.0}, on black {black:.0}",
            got[c]
        );
    }

    // Where alpha is 0 the output is white: the tiny mask is half fully transparent.
    let tiny = image::load_from_memory(&read(&dir, "tiny_16x16_rgba.png"))
        .expect("decoding the tiny PNG")
        .to_rgba8();
    let out = decode_rgb(&process_ok(&normalize(), &dir, "tiny_16x16_rgba.png").bytes);
    let clear: Vec<_> = tiny
        .enumerate_pixels()
        .filter(|(_, _, px)| px[3] == 0)
        .collect();
    assert!(!clear.is_empty());
    let brightness: f64 = clear
        .iter()
        .map(|(x, y, _)| {
            out.get_pixel(*x, *y)
                .0
                .iter()
                .map(|&c| f64::from(c))
                .sum::<f64>()
                / 3.0
        })
        .sum::<f64>()
        / clear.len() as f64;
    assert!(
        brightness > 230.0,
        "transparent pixels average {brightness:.0}, expected white"
    );
}

#[test]
fn animated_gif_uses_the_first_frame() {
    use image::AnimationDecoder as _;

    let Some(dir) = photos_dir() else { return };
    let name = "gif-animated_dispose-none_100x100.gif";
    let bytes = read(&dir, name);
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&bytes))
        .expect("opening the GIF")
        .into_frames()
        .collect_frames()
        .expect("decoding the GIF frames");
    assert!(frames.len() > 1, "{name} should be animated");
    let first = image::DynamicImage::ImageRgba8(frames[0].buffer().clone()).to_rgb8();
    let last = image::DynamicImage::ImageRgba8(frames[frames.len() - 1].buffer().clone()).to_rgb8();
    let out = decode_rgb(&process_ok(&normalize(), &dir, name).bytes);
    let to_first = mean_abs_diff(&out, &first);
    let to_last = mean_abs_diff(&out, &last);
    assert!(
        to_first < 15.0,
        "output differs from frame 1 by {to_first:.1}"
    );
    if mean_abs_diff(&first, &last) > 30.0 {
        assert!(
            to_first < to_last,
            "output is closer to the last frame than the first"
        );
    }
}

#[test]
fn formats_come_from_magic_bytes() {
    let Some(dir) = photos_dir() else { return };
    let p = process_ok(
        &normalize(),
        &dir,
        "misnamed_png-content_coffee_600x400.jpg",
    );
    assert_eq!(p.input_format, Format::Png);
    assert_eq!(
        detect_format(&read(&dir, "tiff_hopper_128x128.tif")),
        Some(Format::Tiff)
    );
    assert_eq!(
        detect_format(&read(&dir, "webp-lossy-exif_canon_480x360.webp")),
        Some(Format::Webp)
    );
    assert_eq!(detect_format(&read(&dir, "not-an-image_text.jpg")), None);
    assert_eq!(detect_format(b""), None);

    let e = process_err(&normalize(), &dir, "not-an-image_text.jpg");
    assert!(e.to_string().contains("54 68 69 73"), "{e}");
    let e = process_err(&normalize(), &dir, "bomb_jpeg_64250x64250_1.4KB.jpg");
    assert!(e.to_string().contains("64250x64250"), "{e}");
    assert!(e.to_string().contains("image.max_pixels"), "{e}");
}

#[test]
fn large_photos_are_shrunk_below_the_upload_limit() {
    let Some(dir) = photos_dir() else { return };
    let p = process_ok(&normalize(), &dir, "large_kleiber_6028x3391_4.2MiB.jpg");
    assert_eq!(p.input_size, (6028, 3391));
    assert_eq!(p.output_size, (648, 365));
    assert!(p.resized);
    assert!(
        p.bytes.len() < 1024 * 1024,
        "{} bytes for a 648 px JPEG",
        p.bytes.len()
    );
}

#[test]
fn passthrough_sends_valid_originals_and_refuses_the_rest() {
    let Some(dir) = photos_dir() else { return };
    let pipeline = passthrough();

    for name in [
        "orient-1-explicit_canon-powershot-s40_480x360.jpg",
        "png-rgb_astronaut_512x512.png",
    ] {
        let input = read(&dir, name);
        let p = pipeline
            .process(&input)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.bytes.as_ref(), input.as_slice(), "{name}: bytes changed");
        assert_eq!(p.input_size, p.output_size);
        assert!(!p.resized && !p.metadata_stripped);
    }
    let p = process_ok(&pipeline, &dir, "misnamed_png-content_coffee_600x400.jpg");
    assert_eq!((p.content_type, p.input_size), ("image/png", (600, 400)));

    for (name, reason) in [
        ("large_kleiber_6028x3391_4.2MiB.jpg", "too_large"),
        ("tiff_hopper_128x128.tif", "unsupported_format"),
        ("gif_hopper_128x128.gif", "unsupported_format"),
        ("bomb_jpeg_64250x64250_1.4KB.jpg", "too_many_pixels"),
        ("corrupt-ihdr-absurd-dims.png", "too_many_pixels"),
        ("not-an-image_text.jpg", "not_an_image"),
        ("zero-bytes.jpg", "empty"),
    ] {
        let e = process_err(&pipeline, &dir, name);
        assert_eq!(e.reason(), reason, "{name}: {e}");
    }
    let e = process_err(&pipeline, &dir, "tiff_hopper_128x128.tif");
    assert!(e.to_string().contains("normalize"), "no hint in: {e}");
}

#[test]
fn passthrough_rejects_a_jpeg_without_a_frame_header() {
    let e = passthrough()
        .process(&[0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x04, b'h', b'i', 0xFF, 0xD9])
        .expect_err("a JPEG with no SOF must not pass");
    assert_eq!(e.reason(), "corrupt", "{e}");
}

#[test]
fn square_crops_the_centre() {
    let Some(dir) = photos_dir() else { return };
    let square = Pipeline::new(Settings {
        crop: CropMode::Center,
        ..Settings::default()
    });
    let p = process_ok(&square, &dir, "progressive-portrait_wine_2560x3837.jpg");
    assert_eq!(p.output_size, (648, 648));
    let p = process_ok(
        &square,
        &dir,
        "orient-1-explicit_canon-powershot-s40_480x360.jpg",
    );
    assert_eq!(p.output_size, (360, 360));

    // A synthetic 60x20 PNG: red | green | blue thirds. The square is the green middle.
    let img = image::RgbImage::from_fn(60, 20, |x, _| match x / 20 {
        0 => image::Rgb([255, 0, 0]),
        1 => image::Rgb([0, 255, 0]),
        _ => image::Rgb([0, 0, 255]),
    });
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encoding the test PNG");
    let p = square.process(&png).expect("processing the test PNG");
    assert_eq!(p.output_size, (20, 20));
    let [r, g, b] = mean_rgb(&decode_rgb(&p.bytes));
    assert!(
        g > 200.0 && r < 40.0 && b < 40.0,
        "mean ({r:.0}, {g:.0}, {b:.0}), expected green"
    );
}

#[test]
fn fingerprint_tracks_output_settings_only() {
    let base = Settings::default();
    let fp = |s: Settings| Pipeline::new(s).fingerprint();
    let a = fp(base.clone());
    assert_eq!(a, fp(base.clone()), "not stable");
    assert_eq!(a.len(), 16);
    assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(
        a,
        fp(Settings {
            max_side: 512,
            ..base.clone()
        })
    );
    assert_ne!(
        a,
        fp(Settings {
            crop: CropMode::Center,
            ..base.clone()
        })
    );
    assert_ne!(
        fp(Settings {
            crop: CropMode::Center,
            ..base.clone()
        }),
        fp(Settings {
            crop: CropMode::Face,
            ..base.clone()
        })
    );
    assert_ne!(
        a,
        fp(Settings {
            jpeg_quality: 80,
            ..base.clone()
        })
    );
    assert_ne!(
        a,
        fp(Settings {
            mode: Mode::Passthrough,
            ..base.clone()
        })
    );
    // max_pixels only accepts or refuses: it never changes the bytes.
    assert_eq!(
        a,
        fp(Settings {
            max_pixels: 1,
            ..base.clone()
        })
    );
    // Passthrough sends originals: output settings do not matter there.
    let pass = Settings {
        mode: Mode::Passthrough,
        ..base.clone()
    };
    assert_eq!(
        fp(pass.clone()),
        fp(Settings {
            max_side: 100,
            jpeg_quality: 50,
            crop: CropMode::Face,
            ..pass
        })
    );
}

#[test]
fn tiny_limits_and_odd_inputs_never_panic() {
    let Some(dir) = photos_dir() else { return };
    let strict = Pipeline::new(Settings {
        max_pixels: 10_000,
        ..Settings::default()
    });
    let e = process_err(&strict, &dir, "orient-0-none_hopper_128x128.jpg");
    assert_eq!(e.reason(), "too_many_pixels");
    let e = process_err(&strict, &dir, "gif_hopper_128x128.gif");
    assert_eq!(e.reason(), "too_many_pixels");

    // Every prefix of a real JPEG and PNG is reported as cut short: no panic, no grey fill.
    for name in [
        "orient-6_hopper_128x128.jpg",
        "png-palette-interlaced_pil123p_162x150.png",
    ] {
        let bytes = read(&dir, name);
        for cut in (8..bytes.len()).step_by(97) {
            match normalize().process(&bytes[..cut]) {
                Ok(p) => panic!("{name} cut at {cut} bytes succeeded: {:?}", p.output_size),
                Err(e) => assert_eq!(e.reason(), "truncated", "{name} cut at {cut}: {e}"),
            }
        }
    }
    let odd = Pipeline::new(Settings {
        max_side: 0,
        jpeg_quality: 0,
        ..Settings::default()
    });
    let p = process_ok(&odd, &dir, "tiny_16x16_rgba.png");
    assert_eq!(p.output_size, (1, 1));
}

// ---- Orientation in every container, built from the shared photos by rewriting the tag ----

/// The fixtures shipped in this repository (see their SOURCES.md).
fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/photos")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Rewrites IFD0's Orientation entry of the TIFF block at `tiff` in `bytes`: its type, count 1
/// and value, stored in the block's byte order. The tag must exist.
fn rewrite_orientation(bytes: &mut [u8], tiff: usize, field_type: u16, value: i64) {
    let little = &bytes[tiff..tiff + 2] == b"II";
    let rd16 = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1]];
        if little {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        }
    };
    let rd32 = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    };
    let ifd = tiff + rd32(bytes, tiff + 4) as usize;
    let count = usize::from(rd16(bytes, ifd));
    let entry = (0..count)
        .map(|i| ifd + 2 + 12 * i)
        .find(|&e| rd16(bytes, e) == 0x0112)
        .expect("IFD0 has an Orientation tag");
    let mut field = Vec::new();
    let w16 = |v: u16| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    let w32 = |v: u32| {
        if little {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        }
    };
    field.extend_from_slice(&w16(0x0112));
    field.extend_from_slice(&w16(field_type));
    field.extend_from_slice(&w32(1));
    let mut value_bytes = match field_type {
        1 | 6 => vec![value as u8],
        3 | 8 => w16(value as u16).to_vec(),
        _ => w32(value as u32).to_vec(),
    };
    value_bytes.resize(4, 0);
    field.extend_from_slice(&value_bytes);
    bytes[entry..entry + 12].copy_from_slice(&field);
}

/// A minimal big-endian TIFF block whose IFD0 holds only Orientation (SHORT).
fn tiff_with_orientation(value: u16) -> Vec<u8> {
    let mut t = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    t.extend_from_slice(&value.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    t
}

fn png_crc(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `png` with an extra chunk right after IHDR.
fn png_with_chunk(png: &[u8], kind: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut chunk = Vec::new();
    chunk.extend_from_slice(&(data.len() as u32).to_be_bytes());
    chunk.extend_from_slice(&kind);
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(&png_crc(&chunk[4..]).to_be_bytes());
    let after_ihdr = 8 + 8 + 13 + 4;
    [&png[..after_ihdr], &chunk, &png[after_ihdr..]].concat()
}

/// `jpeg` with an extra segment right after SOI.
fn jpeg_with_segment(jpeg: &[u8], marker: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len() + 2).expect("segment fits");
    let mut seg = vec![0xFF, marker];
    seg.extend_from_slice(&len.to_be_bytes());
    seg.extend_from_slice(payload);
    [&jpeg[..2], &seg, &jpeg[2..]].concat()
}

/// The upright reference, computed with the `image` crate from the orientation-1 original.
fn reference(original: &[u8], orientation: u8) -> image::RgbImage {
    let mut img = image::load_from_memory(original).expect("decoding the original");
    img.apply_orientation(
        image::metadata::Orientation::from_exif(orientation).expect("orientation 1-8"),
    );
    img.to_rgb8()
}

fn assert_upright(what: &str, p: &Processed, want: &image::RgbImage) {
    let got = decode_rgb(&p.bytes);
    assert_eq!(got.dimensions(), want.dimensions(), "{what}: size");
    let diff = mean_abs_diff(&got, want);
    assert!(
        diff < 12.0,
        "{what}: mean |dRGB| {diff:.1} to the reference"
    );
}

#[test]
fn every_orientation_in_every_container() {
    let Some(dir) = photos_dir() else { return };
    let pipeline = normalize();

    // JPEG (JFIF APP0 before the EXIF APP1), the tag as SHORT, LONG, SLONG, SSHORT and BYTE.
    let jpeg = read(&dir, "orient-1-explicit_canon-powershot-s40_480x360.jpg");
    let exif = find(&jpeg, b"Exif\0\0").expect("EXIF in the Canon JPEG") + 6;
    assert!(find(&jpeg[..exif], b"JFIF").is_some(), "JFIF comes first");
    // PNG: the original carries no EXIF; an eXIf chunk is added.
    let png = read(&dir, "misnamed_png-content_coffee_600x400.jpg");
    // WebP: its EXIF chunk (with the JPEG prefix, as Pillow writes it) gets the new value.
    let webp = read(&dir, "webp-lossy-exif_canon_480x360.webp");
    let webp_exif = find(&webp, b"EXIF").expect("EXIF chunk") + 8;
    let webp_exif = webp_exif
        + if &webp[webp_exif..webp_exif + 6] == b"Exif\0\0" {
            6
        } else {
            0
        };
    // TIFF: the file's own IFD0.
    let tiff = read(&dir, "tiff_hopper_128x128.tif");

    for n in 1..=8u8 {
        let value = i64::from(n);
        for (field_type, type_name) in [
            (3, "SHORT"),
            (4, "LONG"),
            (9, "SLONG"),
            (8, "SSHORT"),
            (1, "BYTE"),
        ] {
            let mut file = jpeg.clone();
            rewrite_orientation(&mut file, exif, field_type, value);
            let p = pipeline.process(&file).expect("JPEG");
            assert_eq!(p.orientation, u16::from(n), "JPEG {type_name} {n}");
            assert_upright(&format!("JPEG {type_name} {n}"), &p, &reference(&jpeg, n));
        }

        let file = png_with_chunk(&png, *b"eXIf", &tiff_with_orientation(u16::from(n)));
        let p = pipeline.process(&file).expect("PNG");
        assert_eq!(p.orientation, u16::from(n), "PNG eXIf {n}");
        assert_upright(&format!("PNG eXIf {n}"), &p, &reference(&png, n));

        let mut file = webp.clone();
        rewrite_orientation(&mut file, webp_exif, 3, value);
        let p = pipeline.process(&file).expect("WebP");
        assert_eq!(p.orientation, u16::from(n), "WebP EXIF {n}");
        assert_upright(&format!("WebP EXIF {n}"), &p, &reference(&webp, n));

        let mut file = tiff.clone();
        rewrite_orientation(&mut file, 0, 3, value);
        let p = pipeline.process(&file).expect("TIFF");
        assert_eq!(p.orientation, u16::from(n), "TIFF {n}");
        assert_upright(&format!("TIFF {n}"), &p, &reference(&tiff, n));
    }
}

#[test]
fn orientation_edge_cases() {
    let Some(dir) = photos_dir() else { return };
    let pipeline = normalize();
    let jpeg = read(&dir, "orient-1-explicit_canon-powershot-s40_480x360.jpg");
    let exif = find(&jpeg, b"Exif\0\0").expect("EXIF") + 6;

    // Out of range, in either direction: upright (what Pillow and ImageMagick do).
    for (field_type, value) in [(3, 0), (3, 9), (3, 65535), (9, -6), (8, -1)] {
        let mut file = jpeg.clone();
        rewrite_orientation(&mut file, exif, field_type, value);
        let p = pipeline.process(&file).expect("JPEG");
        assert_eq!(p.orientation, 1, "type {field_type} value {value}");
        assert_eq!(p.output_size, (480, 360));
    }

    // A first EXIF APP1 without the tag (e.g. written by an editor) does not hide the second.
    let mut file = jpeg.clone();
    rewrite_orientation(&mut file, exif, 3, 6);
    let empty_exif = [b"Exif\0\0".as_slice(), b"II\x2a\0\x08\0\0\0\0\0\0\0\0\0"].concat();
    let file = jpeg_with_segment(&file, 0xE1, &empty_exif);
    let p = pipeline.process(&file).expect("two EXIF segments");
    assert_eq!((p.orientation, p.output_size), (6, (360, 480)));

    // No EXIF tag at all: XMP's tiff:Orientation decides (JPEG APP1, PNG iTXt, WebP XMP).
    let hopper = read(&dir, "orient-0-none_hopper_128x128.jpg");
    let xmp = br#"<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>"#;
    let file = jpeg_with_segment(
        &hopper,
        0xE1,
        &[b"http://ns.adobe.com/xap/1.0/\0".as_slice(), xmp].concat(),
    );
    let p = pipeline.process(&file).expect("JPEG with XMP");
    assert_eq!(p.orientation, 8);
    assert_upright("JPEG XMP 8", &p, &reference(&hopper, 8));
    let png = read(&dir, "misnamed_png-content_coffee_600x400.jpg");
    let file = png_with_chunk(
        &png,
        *b"iTXt",
        &[b"XML:com.adobe.xmp\0\0\0\0\0".as_slice(), xmp].concat(),
    );
    let p = pipeline.process(&file).expect("PNG with XMP");
    assert_eq!((p.orientation, p.output_size), (8, (400, 600)));
    // Where an EXIF tag exists, XMP does not override it.
    let file = jpeg_with_segment(
        &jpeg,
        0xE1,
        &[b"http://ns.adobe.com/xap/1.0/\0".as_slice(), xmp].concat(),
    );
    assert_eq!(pipeline.process(&file).expect("JPEG").orientation, 1);
}

// ---- HEIC, HEIF, AVIF and MPO ----

#[test]
fn formats_are_sniffed_from_content() {
    let dir = fixtures_dir();
    let heic = std::fs::read(dir.join("iphone-arrow_irot270_3024x4032.heic")).expect("HEIC");
    assert_eq!(sniff(&heic), Some(Format::Heic));
    let avif = std::fs::read(dir.join("avif_hopper_128x128.avif")).expect("AVIF");
    assert_eq!(sniff(&avif), Some(Format::Avif));
    let mpo = std::fs::read(dir.join("mpo-stereo_sugarshack.mpo")).expect("MPO");
    assert_eq!(sniff(&mpo), Some(Format::Mpo));
    let mut mif1 = b"\0\0\0\x14ftypmif1\0\0\0\0mif1".to_vec();
    assert_eq!(sniff(&mif1), Some(Format::Heif));
    mif1.truncate(6);
    assert_eq!(sniff(&mif1), None);
    assert_eq!(
        sniff(b"\0\0\0\x14ftypisom\0\0\0\0mp41"),
        None,
        "an MP4 video"
    );
}

#[cfg(feature = "heif")]
#[test]
fn iphone_heic_uploads_upright_as_a_small_clean_jpeg() {
    let heic = std::fs::read(fixtures_dir().join("iphone-arrow_irot270_3024x4032.heic"))
        .expect("reading the HEIC fixture");
    // The content decides, not the name: the same bytes behind a .jpg name.
    let tmp = tempfile::tempdir().expect("temp dir");
    let renamed = tmp.path().join("arrow.jpg");
    std::fs::write(&renamed, &heic).expect("writing the renamed copy");
    for bytes in [
        heic.clone(),
        std::fs::read(&renamed).expect("reading it back"),
    ] {
        let p = normalize()
            .process(&bytes)
            .expect("the iPhone HEIC converts");
        assert_eq!(p.input_format, Format::Heic);
        // Stored 4032x3024 with irot 270: upright it is a portrait.
        assert_eq!(p.input_size, (3024, 4032));
        assert_eq!(p.orientation, 1, "libheif applied irot; nothing more to do");
        assert_clean_output("iphone HEIC", &p, (486, 648));
    }
    assert_heic_upright(&heic);
    // Passthrough sends only JPEG and PNG.
    let e = passthrough()
        .process(&heic)
        .expect_err("HEIC in passthrough");
    assert_eq!(e.reason(), "unsupported_format", "{e}");
    assert!(e.to_string().starts_with("HEIC"), "{e}");
}

/// The upload against libheif's own upright decode (this binding cannot switch libheif's
/// transforms off, so the stored pixels are out of reach), plus a check that this really is
/// upright: the arrow's widest row (the base of its head) lies in the upper half.
#[cfg(feature = "heif")]
fn assert_heic_upright(heic: &[u8]) {
    let p = normalize().process(heic).expect("converts");
    let ctx = libheif_rs::HeifContext::read_from_bytes(heic).expect("libheif reads it");
    let handle = ctx.primary_image_handle().expect("a primary image");
    let raw = handle
        .decode(
            libheif_rs::ColorSpace::Rgb(libheif_rs::RgbChroma::Rgb),
            None,
        )
        .expect("decodes");
    let plane = raw.planes().interleaved.expect("interleaved RGB");
    let upright = image::RgbImage::from_fn(plane.width, plane.height, |x, y| {
        let at = y as usize * plane.stride + x as usize * 3;
        image::Rgb([plane.data[at], plane.data[at + 1], plane.data[at + 2]])
    });
    let (w, h) = p.output_size;
    let want = image::imageops::resize(&upright, w, h, image::imageops::FilterType::Triangle);
    let got = decode_rgb(&p.bytes);
    let diff = mean_abs_diff(&got, &want);
    // Colour management (Display P3 to sRGB) moves the pixels a little; a wrong turn, a lot.
    let turned = mean_abs_diff(&image::imageops::rotate180(&got), &want);
    assert!(
        diff < 20.0 && diff * 2.0 < turned,
        "mean |dRGB| {diff:.1} (turned: {turned:.1})"
    );

    let dark = |x: u32, y: u32| {
        got.get_pixel(x, y)
            .0
            .iter()
            .map(|&c| u32::from(c))
            .sum::<u32>()
            < 250
    };
    let span = |y: u32| {
        let xs: Vec<u32> = (0..w).filter(|&x| dark(x, y)).collect();
        xs.last().map_or(0, |&last| last - xs[0])
    };
    let widest = (0..h).max_by_key(|&y| span(y)).expect("rows");
    assert!(
        widest < h / 2,
        "the arrow's widest row is at {widest} of {h}: upside down"
    );
}

#[cfg(feature = "heif")]
#[test]
fn heif_rotations_and_mirrors_are_applied_once() {
    let dir = fixtures_dir();
    let want = decode_rgb(
        &normalize()
            .process(&std::fs::read(dir.join("avif-rot0mir0_640x427.avif")).expect("AVIF"))
            .expect("the upright AVIF converts")
            .bytes,
    );
    // The eight files differ in their printed labels ("irot: 1"...), so compare thumbnails: a
    // rotated or mirrored field differs from the upright one by far more than the labels do.
    let thumb = |img: &image::RgbImage| {
        image::imageops::resize(img, 32, 21, image::imageops::FilterType::Triangle)
    };
    let want = thumb(&want);
    let mirrored = image::imageops::flip_horizontal(&want);
    let ignored = mean_abs_diff(&want, &mirrored);
    for rot in 0..4 {
        for mir in 0..2 {
            let name = format!("avif-rot{rot}mir{mir}_640x427.avif");
            let p = normalize()
                .process(&std::fs::read(dir.join(&name)).expect("AVIF"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.input_format, Format::Avif);
            assert_eq!(p.output_size, (640, 427), "{name}");
            // These files also carry an EXIF Orientation that disagrees with irot/imir
            // (Pillow's tests read 2, 4, 5 or 7 from them): it must not be applied on top.
            assert_eq!(p.orientation, 1, "{name}");
            let diff = mean_abs_diff(&thumb(&decode_rgb(&p.bytes)), &want);
            assert!(
                diff < ignored / 3.0,
                "{name}: {diff:.1} from the upright thumbnail (mirrored: {ignored:.1})"
            );
        }
    }
}

#[cfg(not(feature = "heif"))]
#[test]
fn without_the_heif_feature_heic_fails_naming_the_format() {
    let heic = std::fs::read(fixtures_dir().join("iphone-arrow_irot270_3024x4032.heic"))
        .expect("reading the HEIC fixture");
    let e = normalize().process(&heic).expect_err("no HEIF support");
    assert_eq!(e.reason(), "no_heif_support");
    assert!(
        e.to_string()
            .starts_with("HEIC: this photosync was built without HEIF support"),
        "{e}"
    );
}

#[test]
fn mpo_uploads_its_first_frame() {
    let mpo = std::fs::read(fixtures_dir().join("mpo-stereo_sugarshack.mpo")).expect("MPO");
    // The first frame's size, read from the MP Entry of the MPF index (CIPA DC-007): APP2
    // "MPF\0", a TIFF header, IFD0 whose tag 0xB002 points at 16-byte entries.
    let mpf = find(&mpo, b"MPF\0").expect("an MPF segment") + 4;
    assert_eq!(&mpo[mpf..mpf + 2], b"MM", "this file's index is big-endian");
    let be16 = |at: usize| usize::from(u16::from_be_bytes([mpo[at], mpo[at + 1]]));
    let be32 =
        |at: usize| u32::from_be_bytes([mpo[at], mpo[at + 1], mpo[at + 2], mpo[at + 3]]) as usize;
    let ifd = mpf + be32(mpf + 4);
    let entry = (0..be16(ifd))
        .map(|i| ifd + 2 + 12 * i)
        .find(|&e| be16(e) == 0xB002)
        .expect("an MP Entry tag");
    let entries = mpf + be32(entry + 8);
    let first = &mpo[..be32(entries + 4)];
    assert_eq!(&first[first.len() - 2..], &[0xFF, 0xD9]);
    let second = mpf + be32(entries + 16 + 8);
    assert_eq!(
        &mpo[second..second + 3],
        &[0xFF, 0xD8, 0xFF],
        "a second frame follows"
    );

    let p = normalize().process(&mpo).expect("MPO converts");
    assert_eq!(p.input_format, Format::Mpo);
    let want = decode_rgb(first);
    assert_clean_output("MPO", &p, want.dimensions());
    assert!(mean_abs_diff(&decode_rgb(&p.bytes), &want) < 12.0);

    let p = passthrough().process(&mpo).expect("MPO in passthrough");
    assert_eq!(p.content_type, "image/jpeg");
    assert_eq!(
        p.bytes.as_ref(),
        first,
        "passthrough sends the first frame as it is"
    );
}

// ---- Face-centred square crop ----

fn face_crop() -> Pipeline {
    Pipeline::new(Settings {
        crop: CropMode::Face,
        ..Settings::default()
    })
}

/// The largest face the crop was made around, found again with rustface directly (the test's
/// own detector settings, on the whole upright photo).
fn faces_in(img: &image::RgbImage) -> Vec<(f64, f64, f64, f64)> {
    let model = rustface::read_model(
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("src/image/model/seeta_fd_frontal_v1.0.bin"),
        )
        .expect("model")
        .as_slice(),
    )
    .expect("model parses");
    // Detect on a copy whose long side is 480 px, then scale back.
    let scale = f64::from(img.width().max(img.height())) / 480.0;
    let small = if scale > 1.0 {
        image::imageops::resize(
            img,
            (f64::from(img.width()) / scale).round() as u32,
            (f64::from(img.height()) / scale).round() as u32,
            image::imageops::FilterType::Triangle,
        )
    } else {
        img.clone()
    };
    let scale = scale.max(1.0);
    let grey = image::DynamicImage::ImageRgb8(small).to_luma8();
    let mut detector = rustface::create_detector_with_model(model);
    detector.set_min_face_size(20);
    detector.set_score_thresh(2.0);
    let mut faces: Vec<_> = detector
        .detect(&rustface::ImageData::new(
            grey.as_raw(),
            grey.width(),
            grey.height(),
        ))
        .iter()
        .map(|f| {
            let b = f.bbox();
            (
                f64::from(b.x()) * scale,
                f64::from(b.y()) * scale,
                f64::from(b.width()) * scale,
                f64::from(b.height()) * scale,
            )
        })
        .collect();
    faces.sort_by(|a, b| (b.2 * b.3).total_cmp(&(a.2 * a.3)));
    faces
}

/// The crop holds the face box with margin, centred on it horizontally unless flush with the
/// photo's edge on the face's side, and stays inside the photo.
fn assert_face_crop(what: &str, p: &Processed, upright: &image::RgbImage) {
    let crop = p.crop.unwrap_or_else(|| panic!("{what}: no crop reported"));
    assert_eq!(crop.mode, CropMode::Face, "{what}: {crop}");
    assert_eq!(crop.note, None, "{what}: {crop}");
    assert_eq!(crop.width, crop.height, "{what}: not square");
    let (w, h) = upright.dimensions();
    assert!(
        crop.x + crop.width <= w && crop.y + crop.height <= h,
        "{what}: {crop} outside {w}x{h}"
    );
    assert!(crop.width <= w.min(h));
    let faces = faces_in(upright);
    let &(fx, fy, fw, fh) = faces
        .first()
        .unwrap_or_else(|| panic!("{what}: the test finds no face"));
    let (cx, cy, side) = (f64::from(crop.x), f64::from(crop.y), f64::from(crop.width));
    let margin = 0.05 * fw;
    assert!(
        fx - cx >= margin.min(fx) && cx + side - (fx + fw) >= margin.min(f64::from(w) - fx - fw),
        "{what}: {crop} cuts into the face {fx:.0},{fy:.0} {fw:.0}x{fh:.0} horizontally"
    );
    assert!(
        fy - cy >= margin.min(fy) && cy + side - (fy + fh) >= margin.min(f64::from(h) - fy - fh),
        "{what}: {crop} cuts into the face {fx:.0},{fy:.0} {fw:.0}x{fh:.0} vertically"
    );
    let off = (fx + fw / 2.0) - (cx + side / 2.0);
    let flush = (off < 0.0 && crop.x == 0) || (off > 0.0 && crop.x + crop.width == w);
    assert!(
        off.abs() <= 0.10 * side || flush,
        "{what}: face centre {off:.0} px from the crop's centre ({crop})"
    );
    assert_eq!(p.output_size.0, p.output_size.1);
    assert!(p.output_size.0 <= crop.width.min(648), "never upscaled");
}

fn upright_of(bytes: &[u8]) -> image::RgbImage {
    decode_rgb(bytes)
}

#[test]
fn face_crop_is_centred_on_the_face() {
    let Some(dir) = photos_dir() else { return };
    for name in [
        "orient-0-none_hopper_128x128.jpg",
        "png-rgb_astronaut_512x512.png",
        "grayscale_hopper_128x128.jpg",
    ] {
        let bytes = read(&dir, name);
        let p = process_ok(&face_crop(), &dir, name);
        assert_face_crop(name, &p, &upright_of(&bytes));
    }
    // With a smaller output the square is smaller than the photo: a real cut around the face.
    let small = Pipeline::new(Settings {
        crop: CropMode::Face,
        max_side: 200,
        ..Settings::default()
    });
    let name = "png-rgb_astronaut_512x512.png";
    let p = process_ok(&small, &dir, name);
    assert!(p.crop.expect("a crop").width < 512, "{:?}", p.crop);
    assert_face_crop(name, &p, &upright_of(&read(&dir, name)));
    // Stored sideways (orientation 6 and 8): detection runs on the upright pixels.
    for n in [6u8, 8] {
        let name = format!("orient-{n}_hopper_128x128.jpg");
        let p = process_ok(&face_crop(), &dir, &name);
        assert_eq!(p.orientation, u16::from(n));
        let upright = reference(&read(&dir, &name), n);
        assert_face_crop(&name, &p, &upright);
    }
}

#[test]
fn face_crop_finds_faces_in_soft_upscaled_and_sideways_portraits() {
    let Some(dir) = photos_dir() else { return };
    let hopper = decode_rgb(&read(&dir, "orient-0-none_hopper_128x128.jpg"));
    // A soft portrait: 128 px blown up 8 times, as badge software does with a small scan; then
    // padded into a wide frame with the face near the left edge.
    let soft = image::imageops::resize(&hopper, 1024, 1024, image::imageops::FilterType::Triangle);
    let mut wide = image::RgbImage::from_pixel(2600, 1100, image::Rgb([200, 200, 190]));
    image::imageops::overlay(&mut wide, &soft, 20, 40);
    for (what, img) in [("soft", soft), ("soft, near the left edge", wide.clone())] {
        let mut jpeg = Vec::new();
        image::DynamicImage::ImageRgb8(img.clone())
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .expect("encoding");
        let p = face_crop().process(&jpeg).expect("converts");
        assert_face_crop(what, &p, &img);
    }
    // The wide frame stored sideways, as a phone held upright writes it: orientation 6 (the
    // stored pixels are the upright ones turned 90 degrees counter-clockwise).
    let stored = image::imageops::rotate270(&wide);
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(stored)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .expect("encoding");
    let exif = [b"Exif\0\0".as_slice(), &tiff_with_orientation(6)].concat();
    let jpeg = jpeg_with_segment(&jpeg, 0xE1, &exif);
    let p = face_crop().process(&jpeg).expect("converts");
    assert_eq!(p.orientation, 6);
    assert_face_crop("sideways", &p, &wide);
    let crop = p.crop.expect("a crop");
    assert_eq!(
        crop.x, 0,
        "the face is near the left edge: the square is flush with it"
    );
}

#[test]
fn face_crop_without_a_face_is_the_centre_crop() {
    let Some(dir) = photos_dir() else { return };
    let centre = Pipeline::new(Settings {
        crop: CropMode::Center,
        ..Settings::default()
    });
    for name in [
        "misnamed_png-content_coffee_600x400.jpg",
        // A still life and a bird: no person in either.
        "progressive-portrait_wine_2560x3837.jpg",
        "large_kleiber_6028x3391_4.2MiB.jpg",
        "png-16bit-rgb_chessboard_200x200.png",
        "png-rgba-semitransparent_mate-arc_2140x1200.png",
        "cmyk-adobe-ycck_100x100.jpg",
    ] {
        let face = process_ok(&face_crop(), &dir, name);
        let crop = face.crop.expect("a crop");
        assert_eq!(crop.note, Some(CropNote::NoFace), "{name}: {crop}");
        assert_eq!(crop.mode, CropMode::Center, "{name}");
        assert!(crop.to_string().ends_with("(no_face)"), "{crop}");
        let centre = process_ok(&centre, &dir, name);
        let centre_crop = centre.crop.expect("a crop");
        assert_eq!(
            (crop.x, crop.y, crop.width),
            (centre_crop.x, centre_crop.y, centre_crop.width),
            "{name}"
        );
        assert_eq!(
            face.bytes, centre.bytes,
            "{name}: same output as the centre crop"
        );
    }
}

#[test]
fn face_crop_with_two_similar_faces_is_the_centre_crop() {
    let Some(dir) = photos_dir() else { return };
    let hopper = decode_rgb(&read(&dir, "orient-0-none_hopper_128x128.jpg"));
    let big = image::imageops::resize(&hopper, 384, 384, image::imageops::FilterType::Triangle);
    let mut group = image::RgbImage::from_pixel(1200, 500, image::Rgb([220, 220, 220]));
    image::imageops::overlay(&mut group, &big, 60, 60);
    image::imageops::overlay(&mut group, &big, 760, 60);
    let mut png = Vec::new();
    group
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("encoding");
    let p = face_crop().process(&png).expect("converts");
    let crop = p.crop.expect("a crop");
    assert_eq!(crop.note, Some(CropNote::SeveralFaces), "{crop}");
    assert_eq!((crop.x, crop.y, crop.width), (350, 0, 500));
}
