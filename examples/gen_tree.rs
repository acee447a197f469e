//! Writes a synthetic HR photo tree for `benches/sync.sh`.
//!
//! Usage: `gen_tree --root DIR --count N [--prefix user] [--domain contoso.com] [--seed S]`
//!
//! Photo `n` (0-based) is `DIR/{n / 10000:02}/{n / 100 % 100:02}/{prefix}{n}@{domain}.jpg`: two
//! levels of folders, at most 100 photos in each leaf. Every file is 20–60 KiB and starts with a
//! valid JPEG header (SOI, a JFIF APP0 segment and a baseline SOF0 frame header declaring
//! 648x648, which is all that passthrough validation reads), followed by one comment segment of
//! pseudo-random filler unique to (`seed`, `n`) and the end-of-image marker. The files are not
//! decodable images: they are for passthrough mode only. Same arguments, same bytes. Writes on
//! every core.

use std::error::Error;
use std::path::{Path, PathBuf};

const MIN_SIZE: usize = 20 * 1024;
const SIZE_SPREAD: u64 = 40 * 1024;

/// SOI, APP0 (JFIF 1.01, 72 dpi, no thumbnail), SOF0 (8 bit, 648x648, 3 components 4:2:0).
const HEADER: [u8; 2 + 18 + 19] = [
    0xFF, 0xD8, // SOI
    0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01, 0x01, 0x01, 0x00, 0x48, 0x00, 0x48,
    0x00, 0x00, // APP0
    0xFF, 0xC0, 0x00, 0x11, 0x08, 0x02, 0x88, 0x02, 0x88, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01,
    0x03, 0x11, 0x01, // SOF0
];

struct Args {
    root: PathBuf,
    count: u64,
    prefix: String,
    domain: String,
    seed: u64,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut root = None;
    let mut count = None;
    let mut prefix = "user".to_owned();
    let mut domain = "contoso.com".to_owned();
    let mut seed = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--root" => root = Some(PathBuf::from(value()?)),
            "--count" => count = Some(value()?.parse()?),
            "--prefix" => prefix = value()?,
            "--domain" => domain = value()?,
            "--seed" => seed = value()?.parse()?,
            _ => return Err(format!("unknown argument {arg}").into()),
        }
    }
    let usage = "usage: gen_tree --root DIR --count N [--prefix P] [--domain D] [--seed S]";
    Ok(Args {
        root: root.ok_or(usage)?,
        count: count.ok_or(usage)?,
        prefix,
        domain,
        seed,
    })
}

/// SplitMix64: fast, and every (seed, n) stream differs.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn leaf_dir(root: &Path, n: u64) -> PathBuf {
    root.join(format!("{:02}", n / 10_000))
        .join(format!("{:02}", n / 100 % 100))
}

/// The bytes of photo `n`, written into `buf`.
fn photo(seed: u64, n: u64, buf: &mut Vec<u8>) {
    let mut rng = SplitMix(seed.wrapping_mul(0x0100_0000_01B3) ^ n.wrapping_mul(0x9E37_79B9));
    let size = MIN_SIZE + (rng.next() % SIZE_SPREAD) as usize;
    // Header, a COM segment (marker + 2 length bytes + filler), EOI.
    let filler = size - HEADER.len() - 4 - 2;
    buf.clear();
    buf.extend_from_slice(&HEADER);
    buf.extend_from_slice(&[0xFF, 0xFE]);
    buf.extend_from_slice(&((filler + 2) as u16).to_be_bytes());
    while buf.len() < size - 2 {
        let word = rng.next().to_le_bytes();
        let take = (size - 2 - buf.len()).min(word.len());
        buf.extend_from_slice(&word[..take]);
    }
    buf.extend_from_slice(&[0xFF, 0xD9]);
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args()?;
    let mut n = 0;
    while n < args.count {
        std::fs::create_dir_all(leaf_dir(&args.root, n))?;
        n += 100;
    }
    let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) as u64;
    let args = &args;
    std::thread::scope(|scope| -> Result<(), Box<dyn Error>> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> Result<(), String> {
                    let mut buf = Vec::with_capacity(MIN_SIZE + SIZE_SPREAD as usize);
                    let mut n = t;
                    while n < args.count {
                        photo(args.seed, n, &mut buf);
                        let path = leaf_dir(&args.root, n)
                            .join(format!("{}{n}@{}.jpg", args.prefix, args.domain));
                        std::fs::write(&path, &buf)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        n += threads;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a writer thread panicked")??;
        }
        Ok(())
    })?;
    println!("{} photos under {}", args.count, args.root.display());
    Ok(())
}
