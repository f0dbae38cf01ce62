"""FineWeb-style cleaning of web pages on datatrove: readers, blocks, presets, runs and reports."""
