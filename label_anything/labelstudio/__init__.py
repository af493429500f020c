"""Everything that knows Label Studio: its label configs, its results, its brush RLE, its API."""
