//! Reading what a file says about itself without decoding it: the format from its magic bytes,
//! and for JPEG and PNG the declared dimensions (and, for JPEG, the metadata the decoder needs).
//!
//! Invariants: only reads inside the slice (every offset is checked, no indexing can panic), never
//! allocates in proportion to the declared image size, and never trusts a file name.

use super::error::ImageError;
use super::{meta, Format};

/// What the magic bytes say. `None` means "not one of the formats we know", not "not an image".
///
/// JPEG files carrying a Multi-Picture (MPF) index are reported as [`Format::Mpo`]; ISO base
/// media files are told apart by their `ftyp` brands (HEIC, other HEIF, AVIF).
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] if has_mpf_index(bytes) => Some(Format::Mpo),
        [0xFF, 0xD8, 0xFF, ..] => Some(Format::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(Format::Png),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(Format::Gif),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some(Format::Webp),
        // Classic TIFF (42) and BigTIFF (43), both byte orders.
        [b'I', b'I', 42 | 43, 0, ..] | [b'M', b'M', 0, 42 | 43, ..] => Some(Format::Tiff),
        // "BM" alone is too weak (text can start with it): also require a known DIB header size.
        [b'B', b'M', _, _, _, _, _, _, _, _, _, _, _, _, d0, d1, d2, d3, ..]
            if matches!(
                u32::from_le_bytes([*d0, *d1, *d2, *d3]),
                12 | 16 | 40 | 52 | 56 | 64 | 108 | 124
            ) =>
        {
            Some(Format::Bmp)
        }
        [_, _, _, _, b'f', b't', b'y', b'p', ..] => heif_brand(bytes),
        _ => None,
    }
}

/// The same as [`sniff`] (its older name).
pub fn detect_format(bytes: &[u8]) -> Option<Format> {
    sniff(bytes)
}

/// Classifies an ISO base media file by its major brand, then its compatible brands.
fn heif_brand(bytes: &[u8]) -> Option<Format> {
    let size = usize::try_from(be32(bytes, 0)?).ok()?;
    let ftyp = bytes.get(8..size.min(bytes.len()).min(1024))?;
    let major = ftyp.get(..4)?;
    let compatible = ftyp.get(8..).unwrap_or_default().chunks_exact(4);
    let classify = |brand: &[u8]| match brand {
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" => Some(Format::Heic),
        b"avif" | b"avis" => Some(Format::Avif),
        _ => None,
    };
    if let Some(format) = classify(major) {
        return Some(format);
    }
    let mut general = matches!(major, b"mif1" | b"msf1" | b"heif" | b"miaf");
    let mut found = None;
    for brand in compatible {
        match classify(brand) {
            Some(format) if found.is_none() => found = Some(format),
            _ => general |= matches!(brand, b"mif1" | b"msf1"),
        }
    }
    found.or(general.then_some(Format::Heif))
}

/// Whether a JPEG's header segments hold an `MPF` APP2 segment (CIPA DC-007 Multi-Picture).
fn has_mpf_index(bytes: &[u8]) -> bool {
    let mut pos = 2;
    while let (Some(0xFF), Some(&marker)) = (bytes.get(pos), bytes.get(pos + 1)) {
        if marker == 0xDA || marker == 0xD9 {
            return false;
        }
        let Some(len) = be16(bytes, pos + 2) else {
            return false;
        };
        if marker == 0xE2 && bytes.get(pos + 4..pos + 8) == Some(b"MPF\0") {
            return true;
        }
        pos += 2 + usize::from(len);
    }
    false
}

/// How much of a JPEG to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// Stop at the frame header (SOF): enough for dimensions. Used by passthrough.
    ToFrame,
    /// Walk every marker, skipping entropy-coded data, up to EOI: finds truncation.
    ToEnd,
}

/// The parts of a JPEG's headers the pipeline acts on.
#[derive(Debug, Clone, Default)]
pub(crate) struct JpegHeader<'a> {
    pub width: u32,
    pub height: u32,
    pub components: u8,
    /// The Orientation of the first `Exif\0\0` APP1 segment that has one, as stored.
    pub exif_orientation: Option<i64>,
    /// The first XMP APP1 packet.
    pub xmp: Option<&'a [u8]>,
    /// Offset just past the EOI marker (only with [`Walk::ToEnd`]): the end of the first frame
    /// of an MPO.
    pub end: usize,
    /// `true` once EOI was seen after at least one scan (only looked for with [`Walk::ToEnd`]).
    pub complete: bool,
}

const TRUNCATED_HEADERS: &str = "data ends inside the headers";
const TRUNCATED_SCAN: &str = "data ends before the last scan (no end-of-image marker)";

pub(crate) fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

pub(crate) fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn is_sof(marker: u8) -> bool {
    // C4 (DHT), C8 (JPG extension) and CC (DAC) sit in the SOF range but are not frame headers.
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Walks the marker structure of a JPEG (the caller has checked the magic bytes).
pub(crate) fn jpeg(bytes: &[u8], walk: Walk) -> Result<JpegHeader<'_>, ImageError> {
    let truncated = |detail| ImageError::Truncated {
        format: Format::Jpeg,
        detail,
    };
    let corrupt = |detail| ImageError::corrupt(Format::Jpeg, detail);

    let mut header = JpegHeader::default();
    let mut seen_frame = false;
    let mut seen_scan = false;
    let mut pos = 2; // after SOI
    loop {
        // A marker is 0xFF, any number of 0xFF fill bytes, then the marker code.
        match bytes.get(pos) {
            None if seen_scan => return Err(truncated(TRUNCATED_SCAN)),
            None => return Err(truncated(TRUNCATED_HEADERS)),
            Some(0xFF) => {}
            Some(_) => return Err(corrupt("expected a marker between segments")),
        }
        while bytes.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let Some(&marker) = bytes.get(pos) else {
            return Err(truncated(if seen_scan {
                TRUNCATED_SCAN
            } else {
                TRUNCATED_HEADERS
            }));
        };
        pos += 1;
        match marker {
            0xD9 => {
                if !seen_frame {
                    return Err(corrupt("no frame header (SOF) before the end of the image"));
                }
                if !seen_scan {
                    return Err(corrupt("no scan (SOS) before the end of the image"));
                }
                header.complete = true;
                header.end = pos;
                return Ok(header);
            }
            0xD8 => return Err(corrupt("second start-of-image marker")),
            // Standalone markers without a length.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = usize::from(be16(bytes, pos).ok_or_else(|| truncated(TRUNCATED_HEADERS))?);
        if len < 2 {
            return Err(corrupt("segment length below 2"));
        }
        let end = pos + len;
        let Some(payload) = bytes.get(pos + 2..end) else {
            return Err(truncated(TRUNCATED_HEADERS));
        };
        match marker {
            m if is_sof(m) && !seen_frame => {
                let [_precision, h0, h1, w0, w1, components, ..] = *payload else {
                    return Err(corrupt("frame header (SOF) too short"));
                };
                header.height = u32::from(u16::from_be_bytes([h0, h1]));
                header.width = u32::from(u16::from_be_bytes([w0, w1]));
                header.components = components;
                if header.width == 0 || header.height == 0 {
                    return Err(corrupt("frame header declares a zero width or height"));
                }
                seen_frame = true;
                if walk == Walk::ToFrame {
                    return Ok(header);
                }
            }
            0xE1 => {
                if let Some(tiff) = payload.strip_prefix(b"Exif\0\0") {
                    if header.exif_orientation.is_none() {
                        header.exif_orientation = meta::exif_orientation(tiff);
                    }
                } else if let Some(xmp) = payload.strip_prefix(meta::XMP_APP1_PREFIX) {
                    header.xmp = header.xmp.or(Some(xmp));
                }
            }
            0xDA => {
                if !seen_frame {
                    return Err(corrupt("scan (SOS) before the frame header (SOF)"));
                }
                seen_scan = true;
                pos = skip_entropy_coded(bytes, end);
                continue;
            }
            _ => {}
        }
        pos = end;
    }
}

/// Returns the offset of the first marker after entropy-coded data starting at `pos`
/// (or `bytes.len()` when the data runs to the end). Inside the data, 0xFF is followed by 0x00
/// (a stuffed byte), a restart marker, or more 0xFF fill.
fn skip_entropy_coded(bytes: &[u8], mut pos: usize) -> usize {
    while let Some(offset) = bytes
        .get(pos..)
        .and_then(|rest| rest.iter().position(|&b| b == 0xFF))
    {
        let ff = pos + offset;
        match bytes.get(ff + 1) {
            Some(0x00 | 0xD0..=0xD7 | 0xFF) => pos = ff + 1,
            Some(_) => return ff,
            None => return bytes.len(),
        }
    }
    bytes.len()
}

/// PNG dimensions from the IHDR chunk, which must come first.
pub(crate) fn png(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    const SIGNATURE_LEN: usize = 8;
    let truncated = ImageError::Truncated {
        format: Format::Png,
        detail: "data ends inside the IHDR chunk",
    };
    let length = be32(bytes, SIGNATURE_LEN).ok_or(truncated)?;
    let chunk = bytes
        .get(SIGNATURE_LEN + 4..SIGNATURE_LEN + 4 + 4 + 13 + 4)
        .ok_or(ImageError::Truncated {
            format: Format::Png,
            detail: "data ends inside the IHDR chunk",
        })?;
    if length != 13 || &chunk[..4] != b"IHDR" {
        return Err(ImageError::corrupt(
            Format::Png,
            "the first chunk is not a 13-byte IHDR",
        ));
    }
    let stored_crc = be32(chunk, 17).unwrap_or_default();
    if crc32(&chunk[..17]) != stored_crc {
        return Err(ImageError::corrupt(Format::Png, "IHDR checksum mismatch"));
    }
    let width = be32(chunk, 4).unwrap_or_default();
    let height = be32(chunk, 8).unwrap_or_default();
    // The PNG spec caps both at 2^31-1.
    if width == 0 || height == 0 || width > i32::MAX as u32 || height > i32::MAX as u32 {
        return Err(ImageError::corrupt(
            Format::Png,
            "IHDR declares a zero or out-of-range width or height",
        ));
    }
    Ok((width, height))
}

/// CRC-32 (ISO-HDLC, as PNG uses it). Bitwise: it only ever runs over 17 bytes.
fn crc32(data: &[u8]) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_known_value() {
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }

    #[test]
    fn jpeg_without_frame_is_corrupt() {
        let err = jpeg(&[0xFF, 0xD8, 0xFF, 0xD9], Walk::ToFrame).expect_err("must fail");
        assert_eq!(err.reason(), "corrupt");
    }

    #[test]
    fn jpeg_cut_in_headers_is_truncated() {
        let err = jpeg(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x4A], Walk::ToFrame)
            .expect_err("must fail");
        assert_eq!(err.reason(), "truncated");
    }

    #[test]
    fn text_starting_with_bm_is_not_bmp() {
        assert_eq!(detect_format(b"BMW owners manual, chapter 1: ..."), None);
    }
}
