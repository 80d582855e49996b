"""Schema revisions, oldest first; each docstring is the release note of its schema change."""
