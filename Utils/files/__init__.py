"""Files: our checkpoint format and the published-file importer (Checkpoint), exact resume and the
protection of earlier outputs (Resume)."""
