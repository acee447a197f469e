//! Throughput of the image pipeline, single-threaded, for `benches/image.sh`.
//!
//! Usage: `pipeline_bench [--iterations N] [--mode normalize|passthrough] [--crop none|center|face]
//! [--max-side N] [--out DIR] PHOTO...`
//! Reads each photo from disk and runs `Pipeline::process` on it N times (the read is inside the
//! loop, as in the daemon), then prints one line per photo and a total, in photos per second of
//! wall-clock time and per second of this thread's CPU time (from /proc/thread-self/schedstat,
//! which stays meaningful when other work shares the machine).

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use photosync::image::{CropMode, Mode, Pipeline, Settings};

fn main() -> Result<(), Box<dyn Error>> {
    let mut iterations = 10u32;
    let mut mode = Mode::Normalize;
    let mut crop = CropMode::None;
    let mut max_side = Settings::default().max_side;
    let mut out_dir: Option<PathBuf> = None;
    let mut photos = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                iterations = args.next().ok_or("--iterations needs a value")?.parse()?;
            }
            "--mode" => {
                mode = match args.next().as_deref() {
                    Some("normalize") => Mode::Normalize,
                    Some("passthrough") => Mode::Passthrough,
                    _ => return Err("--mode is normalize or passthrough".into()),
                }
            }
            "--crop" => {
                crop = match args.next().as_deref() {
                    Some("none") => CropMode::None,
                    Some("center") => CropMode::Center,
                    Some("face") => CropMode::Face,
                    _ => return Err("--crop is none, center or face".into()),
                }
            }
            "--max-side" => {
                max_side = args.next().ok_or("--max-side needs a value")?.parse()?;
            }
            "--out" => out_dir = Some(args.next().ok_or("--out needs a directory")?.into()),
            _ => photos.push(PathBuf::from(arg)),
        }
    }
    if photos.is_empty() {
        return Err(
            "usage: pipeline_bench [--iterations N] [--mode M] [--crop C] [--out DIR] PHOTO..."
                .into(),
        );
    }
    let pipeline = Pipeline::new(Settings {
        mode,
        crop,
        max_side,
        ..Settings::default()
    });

    let mut total = Duration::ZERO;
    let mut total_cpu = Duration::ZERO;
    let mut count = 0u32;
    for photo in &photos {
        let name = photo
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        let mut last = None;
        for _ in 0..iterations {
            let bytes = std::fs::read(photo)?;
            last = Some(
                pipeline
                    .process(&bytes)
                    .map_err(|e| format!("{name}: {e}"))?,
            );
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu_time().saturating_sub(cpu_start);
        total += elapsed;
        total_cpu += cpu;
        count += iterations;
        if let Some(p) = last {
            println!(
                "{name}\t{:.2} photos/s\t{:.2} photos/cpu-s\t{:.1} ms/photo\t{}x{} -> {}x{}\t{} bytes\t{}",
                f64::from(iterations) / elapsed.as_secs_f64(),
                f64::from(iterations) / cpu.as_secs_f64(),
                elapsed.as_secs_f64() * 1000.0 / f64::from(iterations),
                p.input_size.0,
                p.input_size.1,
                p.output_size.0,
                p.output_size.1,
                p.bytes.len(),
                p.crop
                    .map_or_else(|| "crop none".to_owned(), |c| format!("crop {c}")),
            );
            if let Some(dir) = &out_dir {
                std::fs::write(dir.join(format!("{name}.out.jpg")), &p.bytes)?;
            }
        }
    }
    println!(
        "total\t{:.2} photos/s\t{:.2} photos/cpu-s",
        f64::from(count) / total.as_secs_f64(),
        f64::from(count) / total_cpu.as_secs_f64()
    );
    Ok(())
}

/// Time this thread has spent on a CPU (Linux); zero where unavailable.
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}
