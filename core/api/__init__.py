"""The public API: ArtifactStore, its argument rules and access rules."""
