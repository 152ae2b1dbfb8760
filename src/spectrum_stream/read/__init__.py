"""Stage 3, reading: one tensor's bytes from its shard (memory-mapped, its own byte range only),
dequantized where needed, as float32 on the scan's device; the next one read ahead on request."""
