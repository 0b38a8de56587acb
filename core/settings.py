"""What can be configured, and the one place that reads it from the environment.

:class:`Settings` is every knob of a store: which backends, where they are,
limits, the presign service, and the few process facts the commands need.
The library (``ArtifactStore()``), ``artifactfs mount`` and ``artifactfs
serve`` all get theirs from :meth:`Settings.from_env`, and nothing else in the
code base looks at ``os.environ``: a backend, the mount or a test hook that
read a variable of its own would be configuration nobody can see in one place.

Each field names its variables with an :class:`Env` marker. The names are the
reference API's (``ARTIFACT_PROVIDER``, ``SESSION_PROVIDER``,
``ARTIFACT_FS_ROOT``, ...) and the usual ones of the tools behind the backends
(``AWS_*``); an empty variable counts as unset, as it always has.

``Settings(...)`` itself reads nothing: it is built from its arguments only,
so a store configured in code (or a test) is not changed behind its back by
whatever the process environment happens to hold.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigurationError

MiB = 1 << 20
GiB = 1 << 30
YEAR = 365 * 24 * 3600
MAX_TTL_CEILING = 150 * YEAR  # now + this, in nanoseconds, stays below 2**63 until about 2110
MAX_META_DEPTH_CEILING = 100


class Env:
    """The environment variables a setting is read from; the first one set (non-empty) wins."""

    __slots__ = ("names",)

    def __init__(self, *names: str) -> None:
        self.names = names

    def __repr__(self) -> str:
        return f"Env{self.names!r}"


def env_names(field: FieldInfo) -> tuple[str, ...]:
    """The variables ``field`` is read from (none: it is set in code only)."""
    for marker in field.metadata:
        if isinstance(marker, Env):
            return marker.names
    return ()


def _nested_model(field: FieldInfo) -> type[BaseModel] | None:
    """The model class of a field that holds a whole model of settings (``presign``)."""
    annotation = field.annotation
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


class Limits(BaseModel):
    """Sizes, quotas and default lifetimes; ``None`` means unlimited.

    The sizes and quotas have variables so that every process of one store
    (the application, ``artifactfs serve``, a mount) enforces the same ones:
    set in code only, a separate service process would accept what the
    application refuses.
    """

    max_artifact_bytes: Annotated[int, Env("ARTIFACT_MAX_BYTES"), Field(ge=0)] = 64 * GiB
    session_quota_bytes: Annotated[int | None, Env("ARTIFACT_SESSION_QUOTA_BYTES"), Field(ge=0)] = None
    session_quota_files: Annotated[int | None, Env("ARTIFACT_SESSION_QUOTA_FILES"), Field(ge=0)] = None
    user_quota_bytes: Annotated[int | None, Env("ARTIFACT_USER_QUOTA_BYTES"), Field(ge=0)] = None
    user_quota_files: Annotated[int | None, Env("ARTIFACT_USER_QUOTA_FILES"), Field(ge=0)] = None
    session_ttl: int = Field(default=900, gt=0, le=MAX_TTL_CEILING)
    default_ttl: int = Field(default=900, gt=0, le=MAX_TTL_CEILING)  # for session-scope artifacts stored without a ttl
    # Every lifetime a caller gives (ttl, ttl_hours, extend_ttl, the ttl xattr) is at most this,
    # so an expiry always fits the 64-bit nanosecond times the metadata backends keep.
    max_ttl: int = Field(default=100 * YEAR, gt=0, le=MAX_TTL_CEILING)
    # Custom metadata (``meta``, session ``custom_metadata``) as JSON: its size, and how deeply
    # it nests. The depth stays well under what the record decoder reads back (about 200 levels
    # for the whole record), so a record the store writes is always a record it can read.
    max_meta_bytes: int = Field(default=64 * 1024, gt=0, le=16 * MiB)
    max_meta_depth: int = Field(default=32, gt=0, le=MAX_META_DEPTH_CEILING)

    # Seconds a blob no record names any more waits before gc deletes it (issue #16): what a reader
    # that opened the old version, or a host slower to see the new one, has to finish in.
    blob_grace: int = Field(default=3600, ge=0)
    # Seconds after its upload began that gc may reclaim a blob no commit came to name (the writer died).
    # Longer than any upload takes: reclaiming a blob whose commit is still coming would lose it.
    upload_intent_ttl: int = Field(default=24 * 3600, gt=0)

    @model_validator(mode="after")
    def _defaults_within_max(self) -> Limits:
        if self.default_ttl > self.max_ttl or self.session_ttl > self.max_ttl:
            raise ValueError(f"default_ttl and session_ttl must not exceed max_ttl ({self.max_ttl} s)")
        return self


class PresignSettings(BaseModel):
    """Where the presign service listens and what uploads it accepts."""

    base_url: Annotated[str | None, Env("ARTIFACT_PRESIGN_URL")] = None  # how clients reach it; default http://{host}:{port}
    host: Annotated[str, Env("ARTIFACT_SERVE_HOST")] = "127.0.0.1"
    port: Annotated[int, Env("ARTIFACT_SERVE_PORT"), Field(ge=0, le=65535)] = 8470
    # Every multipart part but the last, as on S3.
    min_part_bytes: Annotated[int, Env("ARTIFACT_MIN_PART_BYTES"), Field(ge=1)] = 5 * MiB
    multipart_window: int = Field(default=24 * 3600, gt=0)  # seconds an initiated multipart upload stays open
    register_grace: int = Field(default=3600, ge=0)  # seconds after its URL expires that an upload can be registered
    # Connection handling: a client that can reach the port must not pin the
    # process's file descriptors (inside a mount they are the mount's too).
    max_connections: Annotated[int, Env("ARTIFACT_SERVE_MAX_CONNECTIONS"), Field(ge=1)] = 256
    # Seconds a client may take to send a request's headers, or stay idle between requests.
    idle_timeout: Annotated[float, Env("ARTIFACT_SERVE_IDLE_TIMEOUT"), Field(gt=0)] = 15.0
    # Seconds a request body may stall, and a response may wait for the client to read.
    io_timeout: Annotated[float, Env("ARTIFACT_SERVE_IO_TIMEOUT"), Field(gt=0)] = 60.0

    @property
    def url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}"


class EnvironmentSource(PydanticBaseSettingsSource):
    """Exactly the variables the fields name with :class:`Env`, nested models included.

    pydantic-settings' own environment source also matches a variable named
    like the field (``storage_provider``) once fields may be set by name, and
    JSON-decodes any variable named like a model field (``limits``): this one
    reads the declared names and nothing else.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        super().__init__(settings_cls)
        self._environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for name in env_names(field):
            value = self._environ.get(name)
            if value:
                return value, name, False
        return None, field_name, False

    def _values(self, fields: Mapping[str, FieldInfo]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for field_name, field in fields.items():
            value, _, _ = self.get_field_value(field, field_name)
            if value is not None:
                values[field_name] = value
                continue
            nested = _nested_model(field)
            if nested is not None and (inner := self._values(nested.model_fields)):
                values[field_name] = inner
        return values

    def __call__(self) -> dict[str, Any]:
        return self._values(self.settings_cls.model_fields)


def _problem(error: Mapping[str, Any], fields: Mapping[str, FieldInfo]) -> str:
    """One pydantic error as ``field (VARIABLE): message``."""
    where = ".".join(str(part) for part in error["loc"])
    field: FieldInfo | None = None
    scope: Mapping[str, FieldInfo] | None = fields
    for part in error["loc"]:
        field = scope.get(str(part)) if scope is not None else None
        if field is None:
            break
        nested = _nested_model(field)
        scope = nested.model_fields if nested is not None else None
    names = env_names(field) if field is not None else ()
    return f"{where} ({'/'.join(names)}): {error['msg']}" if names else f"{where}: {error['msg']}"


class Settings(BaseSettings):
    """Everything that selects and tunes a store; see the README's Configuration for each variable.

    The provider names are checked against the registered backends when a
    store is built (:mod:`core.config`), not here: this model sits below the
    backends, and a backend added later needs no change to it.
    """

    model_config = SettingsConfigDict(extra="ignore", validate_default=True)

    # -- which backends
    storage_provider: Annotated[str, Env("ARTIFACT_PROVIDER")] = "memory"
    session_provider: Annotated[str, Env("SESSION_PROVIDER")] = "memory"
    sandbox_id: Annotated[str, Env("ARTIFACT_SANDBOX_ID")] = "default"
    # -- where: a data dir for the embedded backends, a bucket, a Redis server
    fs_root: Annotated[Path, Env("ARTIFACT_FS_ROOT")] = Path("./artifacts")
    sqlite_path: Annotated[Path | None, Env("ARTIFACT_SQLITE_PATH")] = None  # default: <fs_root>/meta.sqlite3
    bucket: Annotated[str, Env("ARTIFACT_BUCKET")] = "artifacts"
    redis_url: Annotated[str | None, Env("SESSION_REDIS_URL")] = None
    s3_endpoint_url: Annotated[str | None, Env("S3_ENDPOINT_URL")] = None
    s3_region: Annotated[str, Env("AWS_REGION")] = "us-east-1"
    # Keys of the S3 backend; unset, botocore's own chain (profile, SSO, instance role) finds them.
    aws_access_key_id: Annotated[str | None, Env("AWS_ACCESS_KEY_ID")] = None
    aws_secret_access_key: Annotated[SecretStr | None, Env("AWS_SECRET_ACCESS_KEY")] = None
    aws_session_token: Annotated[SecretStr | None, Env("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")] = None
    s3_sse_algorithm: Annotated[str | None, Env("S3_SSE_ALGORITHM")] = None
    s3_sse_kms_key_id: Annotated[str | None, Env("S3_SSE_KMS_KEY_ID")] = None
    s3_prefix: Annotated[str, Env("ARTIFACT_S3_PREFIX")] = ""  # key prefix inside the bucket, so stores can share one
    # Seconds to connect, and to wait for the next bytes of a reply; each attempt (of a few) waits this long.
    s3_connect_timeout: Annotated[float, Env("S3_CONNECT_TIMEOUT"), Field(gt=0)] = 5.0
    s3_read_timeout: Annotated[float, Env("S3_READ_TIMEOUT"), Field(gt=0)] = 60.0
    # Key prefix in Redis. No {hash tag}: each scope's keys carry their own (core.shards), so a
    # cluster spreads the scopes over its masters; a tag in the prefix would pin them all to one slot.
    redis_prefix: Annotated[str, Env("ARTIFACT_REDIS_PREFIX"), Field(pattern=r"^[^{}]+$")] = "artifactfs"
    # A Redis Cluster (SESSION_REDIS_URL names any of its nodes); a single server, Sentinel URL otherwise.
    redis_cluster: Annotated[bool, Env("ARTIFACT_REDIS_CLUSTER")] = False
    # Replicas a change waits for (WAIT) before it is acknowledged; unset: 1 if every master has one.
    redis_wait_replicas: Annotated[int | None, Env("ARTIFACT_REDIS_WAIT_REPLICAS"), Field(ge=0, le=16)] = None
    # Announce every change on <prefix>:events (mounts follow them); see the README.
    redis_notify: Annotated[bool, Env("ARTIFACT_REDIS_NOTIFY")] = True
    signing_key: Annotated[SecretStr | None, Env("ARTIFACT_SIGNING_KEY")] = None  # every host of one store shares it
    # -- policy
    limits: Limits = Field(default_factory=Limits)
    presign: PresignSettings = Field(default_factory=PresignSettings)
    # -- the commands' process (artifactfs mount / serve), not the store
    xdg_data_home: Annotated[Path | None, Env("XDG_DATA_HOME")] = None  # a non-root mount's default data dir is below
    home: Annotated[Path | None, Env("HOME")] = None  # unset: the password database's
    # Set: glibc sized its malloc arenas from it, and the mount leaves them alone (fusefs.mount).
    malloc_arena_max: Annotated[str | None, Env("MALLOC_ARENA_MAX")] = None
    # -- the mount's fair sharing (fusefs.fairness): requests one uid may have running at once (the
    # rest wait behind that uid's own), and requests the mount reads from the kernel at once.
    mount_uid_requests: Annotated[int, Env("ARTIFACT_MOUNT_UID_REQUESTS"), Field(ge=1)] = 8
    mount_max_tasks: Annotated[int, Env("ARTIFACT_MOUNT_MAX_TASKS"), Field(ge=2)] = 256

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments only: the environment comes in through :meth:`from_env`, nowhere else."""
        return (init_settings,)

    @model_validator(mode="before")
    @classmethod
    def _names(cls, data: Any) -> Any:
        """Provider names compare in lower case; ``vfs-sqlite`` is the reference's "all in the data dir".

        ``ARTIFACT_PROVIDER=vfs-sqlite`` named blobs and metadata at once:
        filesystem blobs, and SQLite metadata unless ``SESSION_PROVIDER`` says
        otherwise.
        """
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("storage_provider", "session_provider"):
            if isinstance(data.get(key), str):
                data[key] = data[key].strip().lower()
        if data.get("storage_provider") == "vfs-sqlite":
            data["storage_provider"] = "filesystem"
            data.setdefault("session_provider", "sqlite")
        return data

    @classmethod
    def from_env(
        cls, *, defaults: Mapping[str, object] | None = None, environ: Mapping[str, str] | None = None,
        **overrides: object,
    ) -> Settings:
        """The settings of this process: ``overrides`` (None ones skipped) over the environment over ``defaults``.

        The one read of the environment (``environ``, default ``os.environ``).
        ``defaults`` are a command's own defaults that the environment may
        still change (a mount stores in its data dir unless ``ARTIFACT_PROVIDER``
        says otherwise). An invalid value is one :class:`ConfigurationError`
        naming each field and its variable.
        """
        values: dict[str, Any] = {**(defaults or {}), **EnvironmentSource(cls, environ)()}
        values.update({key: value for key, value in overrides.items() if value is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(_problem(error, cls.model_fields) for error in exc.errors())
            raise ConfigurationError(f"invalid configuration: {problems}") from None

    @classmethod
    def environment_names(cls) -> set[str]:
        """Every variable the settings are read from (the README documents each)."""
        names: set[str] = set()

        def walk(fields: Mapping[str, FieldInfo]) -> None:
            for field in fields.values():
                names.update(env_names(field))
                nested = _nested_model(field)
                if nested is not None:
                    walk(nested.model_fields)

        walk(cls.model_fields)
        return names
