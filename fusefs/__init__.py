"""artifactfs mount: the pyfuse3 face of the store (depends on core, never the reverse)."""
