"""The commands' defaults and bounds: plain values, so the parser needs no import of the store."""

from __future__ import annotations

from pathlib import Path

SYSTEM_DATA_DIR = Path("/var/lib/artifactfs")
DATA_DIR_HELP = "$ARTIFACT_FS_ROOT, else /var/lib/artifactfs for root, else $XDG_DATA_HOME/artifactfs"
REQUEST_TIMEOUT = 120.0  # seconds a FUSE request may wait for its handler (fusefs.watchdog)
MAX_REQUEST_TIMEOUT = 86400.0
MAX_CACHE_TIMEOUT = 86400.0
# A command's store lives in its data dir (filesystem blobs, SQLite) unless the environment names other backends.
COMMAND_DEFAULTS: dict[str, object] = {"storage_provider": "filesystem", "session_provider": "sqlite"}
