"""Stage 1, the source: a checkpoint's shard headers (local or on the Hub), checked, and the shard
files themselves while the scan runs. No weight bytes are read here."""
