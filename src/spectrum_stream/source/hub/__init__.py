"""Hub repos as a source: repo ids, one-line errors, headers by range requests, shard downloads."""
