//! What a dry run would do, as events: the engine emits them, the CLI prints them.

use crate::image::{Crop, Format};

use super::decide::Reason;

#[derive(Debug, Clone)]
pub enum Preview {
    /// A photo would be uploaded; what the image pipeline makes of it.
    Upload {
        target: String,
        path: String,
        reason: Reason,
        input_format: Format,
        input_size: (u32, u32),
        output_size: (u32, u32),
        bytes_before: u64,
        bytes_after: u64,
        /// The EXIF orientation applied (1 = none).
        orientation: u16,
        metadata_stripped: bool,
        /// The square that would be cut (`None` with `crop = "none"` and in passthrough).
        crop: Option<Crop>,
    },
    /// The image pipeline refuses the photo.
    Refuse {
        target: String,
        path: String,
        message: String,
    },
    /// A removed file's photo would be deleted.
    Delete { key: String, path: String },
}
