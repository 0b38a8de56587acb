"""What a mount is asked to be: the parsed command line, shared by the CLI and the mount."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.settings import Settings
from core.tree import grid
from fusefs.defaults import MAX_CACHE_TIMEOUT, MAX_REQUEST_TIMEOUT, REQUEST_TIMEOUT, SYSTEM_DATA_DIR


def default_data_dir(settings: Settings) -> Path:
    """The data dir of a command given none: ``ARTIFACT_FS_ROOT``, else the system's for root, else the user's own.

    ``settings`` come from the environment (:meth:`Settings.from_env`); the
    library's own default (``./artifacts``) is no place for a mount.
    """
    if "fs_root" in settings.model_fields_set:
        return settings.fs_root
    if os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    home = settings.home or Path(pwd.getpwuid(os.getuid()).pw_dir)  # as expanduser("~")
    return (settings.xdg_data_home or home / ".local" / "share") / "artifactfs"


class MountOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    mountpoint: Path
    data_dir: Path  # the CLI's default: default_data_dir()
    sandbox: str | None = None  # None: the root shows every sandbox
    foreground: bool = False
    allow_other: bool = False
    user_uids: dict[str, int] = Field(default_factory=dict)  # --map-user NAME=UID
    admin_uids: frozenset[int] = frozenset()
    debug: bool = False
    serve: str | None = None  # --serve: None off, "" the default address, else HOST:PORT
    metrics: str | None = None  # --metrics HOST:PORT: /metrics and /healthz (core.transfers.monitor)
    request_timeout: float = Field(default=REQUEST_TIMEOUT, gt=0, le=MAX_REQUEST_TIMEOUT)  # --request-timeout SECONDS
    # --cache-timeout SECONDS: how long the kernel may answer lookups and stats from its caches (as other FUSE
    # filesystems' entry_timeout/attr_timeout). None: 5 s, or 600 s on a store that announces changes (fusefs.handed).
    cache_timeout: float | None = Field(default=None, ge=0, le=MAX_CACHE_TIMEOUT)

    @field_validator("serve")
    @classmethod
    def _serve(cls, value: str | None) -> str | None:
        if value:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"--serve takes HOST:PORT, got {value!r}")
        return value

    @property
    def serve_address(self) -> tuple[str | None, int | None]:
        """(host, port) for the presign service; None picks the configured default."""
        if not self.serve:
            return None, None
        host, _, port = self.serve.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("sandbox")
    @classmethod
    def _sandbox(cls, value: str | None) -> str | None:
        return None if value is None else grid.validate_id(value, "sandbox id")

    @field_validator("user_uids")
    @classmethod
    def _users(cls, value: dict[str, int]) -> dict[str, int]:
        for name, uid in value.items():
            grid.validate_id(name, "user id")
            if uid < 0:
                raise ValueError(f"uid {uid} of user {name} is negative")
        return value

    @property
    def mountpoint_abs(self) -> Path:
        return Path(os.path.abspath(self.mountpoint))
