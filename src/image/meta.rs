//! The orientation a file asks for, read from wherever its container keeps it: EXIF (an APP1
//! segment in JPEG, `eXIf` in PNG, `EXIF` in WebP, IFD0 of a TIFF file itself), with XMP's
//! `tiff:Orientation` as the fallback when no EXIF Orientation tag exists.
//!
//! Invariants: reads only inside the slice, never panics, allocates nothing; a tag stored with any
//! integer type (BYTE, SHORT, LONG and their signed forms) counts, since cameras and editors do
//! not all write the SHORT the spec names; a value outside 1-8 means upright, as it does for
//! Pillow's `exif_transpose` and ImageMagick's `-auto-orient`. HEIF is not read here: libheif
//! applies the container's own `irot`/`imir` transforms while decoding.

use super::probe::be32;
use super::Format;

/// The prefix of an XMP packet in a JPEG APP1 segment.
pub(crate) const XMP_APP1_PREFIX: &[u8] = b"http://ns.adobe.com/xap/1.0/\0";

const ORIENTATION_TAG: u16 = 0x0112;

/// An orientation value as stored, turned into the one the pipeline applies (1 = upright).
pub(crate) fn upright(exif: Option<i64>, xmp: Option<i64>) -> u16 {
    exif.or(xmp)
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| (1..=8).contains(v))
        .unwrap_or(1)
}

/// The Orientation tag of IFD0 in a TIFF structure (an EXIF block or a TIFF file), as stored.
/// `None` when there is no readable tag.
pub(crate) fn exif_orientation(tiff: &[u8]) -> Option<i64> {
    let little = match tiff.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u16> {
        let b = tiff.get(at..at.checked_add(2)?)?;
        Some(if little {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = tiff.get(at..at.checked_add(4)?)?;
        let b = [b[0], b[1], b[2], b[3]];
        Some(if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    };
    let ifd = usize::try_from(u32_at(4)?).ok()?;
    let count = usize::from(u16_at(ifd)?);
    (0..count).find_map(|i| {
        let entry = ifd.checked_add(2 + 12 * i)?;
        if u16_at(entry)? != ORIENTATION_TAG || u32_at(entry + 4)? == 0 {
            return None;
        }
        let field_type = u16_at(entry + 2)?;
        let size = match field_type {
            1 | 6 => 1,
            3 | 8 => 2,
            4 | 9 => 4,
            _ => return None,
        };
        let count = usize::try_from(u32_at(entry + 4)?).ok()?;
        // Values of up to 4 bytes sit in the entry itself; longer ones at an offset.
        let at = if count.saturating_mul(size) <= 4 {
            entry + 8
        } else {
            usize::try_from(u32_at(entry + 8)?).ok()?
        };
        Some(match field_type {
            1 => i64::from(*tiff.get(at)?),
            6 => i64::from(tiff.get(at).map(|&b| b as i8)?),
            3 => i64::from(u16_at(at)?),
            8 => i64::from(u16_at(at)? as i16),
            4 => i64::from(u32_at(at)?),
            _ => i64::from(u32_at(at)? as i32),
        })
    })
}

/// `tiff:Orientation` from an XMP packet, as an attribute (`tiff:Orientation="6"`) or an
/// element (`<tiff:Orientation>6</tiff:Orientation>`).
pub(crate) fn xmp_orientation(xmp: &[u8]) -> Option<i64> {
    const NAME: &[u8] = b"tiff:Orientation";
    let start = xmp.windows(NAME.len()).position(|w| w == NAME)? + NAME.len();
    let rest = xmp.get(start..)?;
    let skip = rest
        .iter()
        .take_while(|b| matches!(b, b'=' | b'"' | b'\'' | b'>' | b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    let rest = rest.get(skip..)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(rest.get(..digits)?).ok()?.parse().ok()
}

/// The orientation of a PNG, WebP or TIFF file (1 = upright); other formats are upright.
pub(crate) fn orientation(bytes: &[u8], format: Format) -> u16 {
    let (exif, xmp) = match format {
        Format::Png => png(bytes),
        Format::Webp => webp(bytes),
        Format::Tiff => (exif_orientation(bytes), None),
        _ => (None, None),
    };
    upright(exif, xmp.and_then(xmp_orientation))
}

/// Some writers keep the JPEG APP1 prefix in front of a PNG/WebP EXIF payload.
fn strip_exif_prefix(data: &[u8]) -> &[u8] {
    data.strip_prefix(b"Exif\0\0").unwrap_or(data)
}

/// The `eXIf` orientation and the XMP packet (an uncompressed `iTXt` `XML:com.adobe.xmp`).
fn png(bytes: &[u8]) -> (Option<i64>, Option<&[u8]>) {
    let (mut exif, mut xmp) = (None, None);
    let mut pos = 8;
    while let (Some(len), Some(kind)) = (be32(bytes, pos), bytes.get(pos + 4..pos + 8)) {
        let Some(data) = usize::try_from(len)
            .ok()
            .and_then(|len| bytes.get(pos + 8..(pos + 8).checked_add(len)?))
        else {
            break;
        };
        match kind {
            b"eXIf" if exif.is_none() => exif = exif_orientation(strip_exif_prefix(data)),
            b"iTXt" if xmp.is_none() => {
                if let Some(rest) = data.strip_prefix(b"XML:com.adobe.xmp\0\0") {
                    xmp = Some(rest);
                }
            }
            b"IEND" => break,
            _ => {}
        }
        pos += 12 + data.len();
    }
    (exif, xmp)
}

/// The `EXIF` chunk's orientation and the `XMP ` chunk of a RIFF WebP.
fn webp(bytes: &[u8]) -> (Option<i64>, Option<&[u8]>) {
    let (mut exif, mut xmp) = (None, None);
    let mut pos = 12;
    while let Some(kind) = bytes.get(pos..pos + 4) {
        let Some(len) = bytes
            .get(pos + 4..pos + 8)
            .and_then(|b| usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok())
        else {
            break;
        };
        let Some(data) = bytes.get(pos + 8..(pos + 8).saturating_add(len)) else {
            break;
        };
        match kind {
            b"EXIF" if exif.is_none() => exif = exif_orientation(strip_exif_prefix(data)),
            b"XMP " if xmp.is_none() => xmp = Some(data),
            _ => {}
        }
        // Chunks are padded to an even size.
        pos += 8 + len + (len & 1);
    }
    (exif, xmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Writers = (fn(u16) -> [u8; 2], fn(u32) -> [u8; 4]);

    /// A little- or big-endian TIFF block whose IFD0 holds one Orientation entry.
    fn tiff(little: bool, field_type: u16, value: [u8; 4]) -> Vec<u8> {
        let mut t = Vec::new();
        let (u16b, u32b): Writers = if little {
            (u16::to_le_bytes, u32::to_le_bytes)
        } else {
            (u16::to_be_bytes, u32::to_be_bytes)
        };
        t.extend_from_slice(if little { b"II" } else { b"MM" });
        t.extend_from_slice(&u16b(42));
        t.extend_from_slice(&u32b(8));
        t.extend_from_slice(&u16b(1));
        t.extend_from_slice(&u16b(ORIENTATION_TAG));
        t.extend_from_slice(&u16b(field_type));
        t.extend_from_slice(&u32b(1));
        t.extend_from_slice(&value);
        t.extend_from_slice(&u32b(0));
        t
    }

    #[test]
    fn orientation_of_every_integer_type() {
        for little in [true, false] {
            let short = if little { [6, 0, 0, 0] } else { [0, 6, 0, 0] };
            let long = if little { [6, 0, 0, 0] } else { [0, 0, 0, 6] };
            assert_eq!(exif_orientation(&tiff(little, 3, short)), Some(6));
            assert_eq!(exif_orientation(&tiff(little, 8, short)), Some(6));
            assert_eq!(exif_orientation(&tiff(little, 4, long)), Some(6));
            assert_eq!(exif_orientation(&tiff(little, 9, long)), Some(6));
            assert_eq!(exif_orientation(&tiff(little, 1, [6, 0, 0, 0])), Some(6));
            assert_eq!(exif_orientation(&tiff(little, 6, [6, 0, 0, 0])), Some(6));
            // RATIONAL is not an integer type.
            assert_eq!(exif_orientation(&tiff(little, 5, long)), None);
        }
        let minus_one = tiff(true, 9, (-1i32).to_le_bytes());
        assert_eq!(exif_orientation(&minus_one), Some(-1));
        assert_eq!(upright(Some(-1), Some(6)), 1, "a stored EXIF tag wins");
        assert_eq!(upright(Some(9), None), 1);
        assert_eq!(upright(None, Some(8)), 8);
        assert_eq!(upright(None, None), 1);
    }

    #[test]
    fn broken_exif_never_panics() {
        let good = tiff(false, 3, [0, 3, 0, 0]);
        for cut in 0..good.len() {
            let _ = exif_orientation(&good[..cut]);
        }
        assert_eq!(exif_orientation(b"II*\0\xff\xff\xff\xff"), None);
    }

    #[test]
    fn xmp_attribute_and_element() {
        let attr = br#"<rdf:Description tiff:Orientation="6" tiff:Make="x"/>"#;
        assert_eq!(xmp_orientation(attr), Some(6));
        let elem = b"<tiff:Orientation>8</tiff:Orientation>";
        assert_eq!(xmp_orientation(elem), Some(8));
        assert_eq!(
            xmp_orientation(b"<tiff:Orientation></tiff:Orientation>"),
            None
        );
        assert_eq!(xmp_orientation(b"no tag here"), None);
    }
}
