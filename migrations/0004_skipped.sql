-- What the photo pipeline left out or fell back on, so that `status` can name it.

-- Files under a source root that are not photos: the name is not a photo's and the first bytes
-- say no known image format either. A rescan compares size and mtime against the row and reads
-- the file again only when they changed.
CREATE TABLE skipped (
    path     TEXT PRIMARY KEY NOT NULL,
    source   TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    reason   TEXT NOT NULL,
    seen_at  INTEGER NOT NULL
) STRICT;

-- Why the last upload's face crop cut the centre instead (no_face, several_faces), or NULL.
ALTER TABLE targets ADD COLUMN crop_note TEXT;
