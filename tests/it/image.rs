//! The image pipeline against the real photos in `shared/photos` (see its SOURCES.md for what
//! each file is and must do). Self-contained: uses only `photosync::image`, std and `image`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use photosync::image::{detect_format, Format, ImageError, Mode, Pipeline, Processed, Settings};

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
        square: true,
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
            square: true,
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
            square: true,
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
