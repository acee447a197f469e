//! What the CLI prints: a dry run's plan as the engine makes it, and the summary of a run.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::engine::human_bytes;
use crate::engine::preview::Preview;
use crate::stats::Stats;

/// Prints a dry run's plan as it comes; the task ends when the engine is shut down.
pub fn previews(mut rx: mpsc::UnboundedReceiver<Preview>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(p) = rx.recv().await {
            println!("{}", preview(&p));
        }
    })
}

/// One line of a dry run's plan.
pub fn preview(p: &Preview) -> String {
    match p {
        Preview::Upload {
            target,
            path,
            reason,
            input_format,
            input_size,
            output_size,
            bytes_before,
            bytes_after,
            orientation,
            metadata_stripped,
            crop,
        } => format!(
            "would upload {target} ({}) from {path}: {} {}x{} {} -> {}x{} {}{}{}{}",
            reason.as_str(),
            input_format.name(),
            input_size.0,
            input_size.1,
            human_bytes(*bytes_before),
            output_size.0,
            output_size.1,
            human_bytes(*bytes_after),
            crop.map(|c| format!(", crop {c}")).unwrap_or_default(),
            if *orientation > 1 {
                format!(", EXIF orientation {orientation} applied")
            } else {
                String::new()
            },
            if *metadata_stripped {
                ", metadata stripped"
            } else {
                ""
            },
        ),
        Preview::Refuse {
            target,
            path,
            message,
        } => format!("would refuse {path} for {target}: {message}"),
        Preview::Delete { key, path } => {
            format!("would delete the photo of {key} ({path} was removed)")
        }
    }
}

/// The summary line of a run, and every failure with its reason.
pub fn summary(stats: &Stats, elapsed: Duration, dry_run: bool) {
    println!("{}", summary_line(stats, elapsed, dry_run));
    let failures = stats.failures();
    if !failures.is_empty() {
        println!("failed:");
        for f in failures {
            println!(
                "  {}{}: {}: {}",
                f.path,
                f.target.map(|t| format!(" ({t})")).unwrap_or_default(),
                f.reason,
                f.message
            );
        }
    }
}

fn summary_line(stats: &Stats, elapsed: Duration, dry_run: bool) -> String {
    let skipped_detail = stats
        .skipped()
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (done, verb) = if dry_run {
        (Stats::get(&stats.pending), "to upload")
    } else {
        (Stats::get(&stats.uploaded), "uploaded")
    };
    let deleted = Stats::get(&stats.deleted);
    let parked = Stats::get(&stats.parked);
    let parked = if parked > 0 {
        format!("{parked} parked (user not found yet), ")
    } else {
        String::new()
    };
    let skipped_detail = if skipped_detail.is_empty() {
        String::new()
    } else {
        format!(" ({skipped_detail})")
    };
    let deleted = if deleted > 0 {
        format!("; {deleted} photos deleted")
    } else {
        String::new()
    };
    let traffic = if dry_run {
        String::new()
    } else {
        format!(
            "; {} retries, {} throttled; {} sent in {:.1}s",
            Stats::get(&stats.retries),
            Stats::get(&stats.throttled),
            human_bytes(Stats::get(&stats.bytes_uploaded)),
            elapsed.as_secs_f64()
        )
    };
    format!(
        "{} photos: {done} {verb}, {} unchanged, {parked}{} failed, {} skipped{skipped_detail}{deleted}{traffic}",
        Stats::get(&stats.files),
        Stats::get(&stats.unchanged),
        Stats::get(&stats.failed),
        stats.skipped_total(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decide::Reason;
    use crate::image::{Crop, CropMode, CropNote, Format};

    #[test]
    fn a_dry_run_line_says_what_would_be_uploaded() {
        let p = Preview::Upload {
            target: "user:alice@contoso.com".into(),
            path: "/t/users/alice@contoso.com.jpg".into(),
            reason: Reason::New,
            input_format: Format::Jpeg,
            input_size: (4000, 3000),
            output_size: (648, 648),
            bytes_before: 3 << 20,
            bytes_after: 60 << 10,
            orientation: 6,
            metadata_stripped: true,
            crop: None,
        };
        assert_eq!(
            preview(&p),
            "would upload user:alice@contoso.com (new) from /t/users/alice@contoso.com.jpg: JPEG 4000x3000 3.0 MiB -> 648x648 60.0 KiB, EXIF orientation 6 applied, metadata stripped"
        );
        let face = Crop {
            mode: CropMode::Face,
            width: 812,
            height: 812,
            x: 140,
            y: 60,
            note: None,
        };
        let with_crop = |c: Crop| {
            let mut q = p.clone();
            if let Preview::Upload { crop, .. } = &mut q {
                *crop = Some(c);
            }
            preview(&q)
        };
        let line = with_crop(face);
        assert!(
            line.ends_with("-> 648x648 60.0 KiB, crop face 812x812+140+60, EXIF orientation 6 applied, metadata stripped"),
            "{line}"
        );
        let line = with_crop(Crop {
            mode: CropMode::Center,
            width: 3000,
            height: 3000,
            x: 500,
            y: 0,
            note: Some(CropNote::NoFace),
        });
        assert!(
            line.contains(", crop center 3000x3000+500+0 (no_face),"),
            "{line}"
        );
        let d = Preview::Delete {
            key: "user:bob@contoso.com".into(),
            path: "/t/users/bob@contoso.com.jpg".into(),
        };
        assert_eq!(
            preview(&d),
            "would delete the photo of user:bob@contoso.com (/t/users/bob@contoso.com.jpg was removed)"
        );
    }

    #[test]
    fn the_summary_counts_every_kind_of_ending() {
        let stats = Stats::default();
        Stats::add(&stats.files, 5);
        Stats::add(&stats.uploaded, 2);
        Stats::add(&stats.unchanged, 1);
        Stats::add(&stats.parked, 1);
        stats.skip("conflict");
        let line = summary_line(&stats, Duration::from_secs(2), false);
        assert_eq!(
            line,
            "5 photos: 2 uploaded, 1 unchanged, 1 parked (user not found yet), 0 failed, 1 skipped (conflict 1); 0 retries, 0 throttled; 0 B sent in 2.0s"
        );
    }
}
