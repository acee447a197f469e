-- Identity resolution (mail, employeeId, mapping files) and drift detection.

-- Users looked up by a property Graph cannot address them by. Only matches are cached: a value
-- with no user (a new hire) is looked up again on the parked schedule.
CREATE TABLE resolutions (
    lookup_key  TEXT PRIMARY KEY NOT NULL,   -- the target key, e.g. user(employeeId):004711
    object_id   TEXT NOT NULL,
    upn         TEXT NOT NULL,
    resolved_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) STRICT;

-- The object id the last upload went to (for looked-up targets) and, for parked targets, when
-- the photo was first parked (parked_max_age counts from there).
ALTER TABLE targets ADD COLUMN graph_id TEXT;
ALTER TABLE targets ADD COLUMN parked_since INTEGER;
