"""Stage 5, the journal: one fsync'd line per finished module, so that a scan can die and resume,
and the lock that keeps two scans from writing the same results."""
