"""One settings model, read from the environment in one place; backends chosen by name.

The library, ``artifactfs mount`` and ``artifactfs serve`` all take their
configuration from :meth:`core.settings.Settings.from_env` and build their
backends in :mod:`core.config` from the registry. These tests pin the
variable names users rely on, the precedence of arguments over the
environment over a command's defaults, the one-line refusal of an unknown
provider, and that no other module of the code base reads the environment.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core import ArtifactStore, InvalidArgumentError
from core.backends.blobs.base import BlobStore
from core.backends.blobs.memory import MemoryBlobStore
from core.backends.registry import BLOB_STORES, META_STORES, BlobBackend, Registry
from core.config import build_backends, build_upload_registry, checked, data_dir, signing_key
from core.errors import ConfigurationError, UnknownProviderError
from core.infra.signing import RecordSigner
from core.settings import Settings
from fusefs.defaults import COMMAND_DEFAULTS, SYSTEM_DATA_DIR
from fusefs.options import default_data_dir

REPO = Path(__file__).resolve().parents[1]
SETTINGS_MODULE = REPO / "core" / "settings.py"
KEY = "settings-test-key-0123456789abcdef"


# -- the names users rely on


def test_every_variable_the_readme_documents_is_read() -> None:
    documented = set(re.findall(r"\b(?:ARTIFACT|SESSION|S3|AWS)_[A-Z0-9_]+\b", (REPO / "README.md").read_text()))
    assert {"ARTIFACT_PROVIDER", "SESSION_PROVIDER", "ARTIFACT_FS_ROOT", "ARTIFACT_BUCKET", "SESSION_REDIS_URL",
            "ARTIFACT_SANDBOX_ID", "ARTIFACT_SIGNING_KEY"} <= documented
    assert documented <= Settings.environment_names()


def test_the_reference_variables_configure_a_store() -> None:
    env = {
        "ARTIFACT_PROVIDER": "vfs-s3", "SESSION_PROVIDER": "REDIS", "ARTIFACT_BUCKET": "b", "ARTIFACT_FS_ROOT": "/d",
        "ARTIFACT_SANDBOX_ID": "box", "SESSION_REDIS_URL": "redis://r:6379/1", "S3_ENDPOINT_URL": "http://s3:9000",
        "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_SECURITY_TOKEN": "T", "S3_SSE_ALGORITHM": "AES256", "S3_SSE_KMS_KEY_ID": "kms",
        "S3_CONNECT_TIMEOUT": "1.5", "S3_READ_TIMEOUT": "7", "ARTIFACT_REDIS_PREFIX": "p", "ARTIFACT_S3_PREFIX": "s/",
        "ARTIFACT_REDIS_NOTIFY": "0", "ARTIFACT_SIGNING_KEY": KEY, "ARTIFACT_SQLITE_PATH": "/m.db",
        "ARTIFACT_PRESIGN_URL": "https://files/", "ARTIFACT_SERVE_HOST": "0.0.0.0", "ARTIFACT_SERVE_PORT": "9",
        "ARTIFACT_MIN_PART_BYTES": "6000000",
    }
    s = checked(Settings.from_env(environ=env))
    assert (s.storage_provider, s.session_provider, s.bucket, s.fs_root, s.sandbox_id) == ("s3", "redis", "b", Path("/d"), "box")
    assert (s.redis_url, s.s3_endpoint_url, s.s3_region, s.aws_access_key_id) == (
        "redis://r:6379/1", "http://s3:9000", "eu-west-1", "AK")
    assert s.aws_secret_access_key is not None and s.aws_secret_access_key.get_secret_value() == "SK"
    assert s.aws_session_token is not None and s.aws_session_token.get_secret_value() == "T"
    assert (s.s3_sse_algorithm, s.s3_sse_kms_key_id, s.s3_connect_timeout, s.s3_read_timeout) == ("AES256", "kms", 1.5, 7.0)
    assert (s.redis_prefix, s.s3_prefix, s.redis_notify, s.sqlite_path) == ("p", "s/", False, Path("/m.db"))
    assert s.signing_key is not None and s.signing_key.get_secret_value() == KEY
    assert (s.presign.url, s.presign.host, s.presign.port, s.presign.min_part_bytes) == (
        "https://files/", "0.0.0.0", 9, 6000000)


def test_empty_variables_count_as_unset() -> None:
    s = Settings.from_env(environ={"ARTIFACT_PROVIDER": "", "ARTIFACT_BUCKET": "", "ARTIFACT_SERVE_PORT": ""})
    assert (s.storage_provider, s.bucket, s.presign.port) == ("memory", "artifacts", 8470)
    assert s.model_fields_set == set()


def test_arguments_win_over_the_environment_which_wins_over_a_commands_defaults() -> None:
    env = {"ARTIFACT_PROVIDER": "s3", "ARTIFACT_SANDBOX_ID": "from-env"}
    s = Settings.from_env(environ=env, defaults=COMMAND_DEFAULTS, sandbox_id="given", bucket=None)
    assert (s.storage_provider, s.session_provider, s.sandbox_id, s.bucket) == ("s3", "sqlite", "given", "artifacts")


def test_settings_built_in_code_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARTIFACT_PROVIDER", "filesystem")
    monkeypatch.setenv("ARTIFACT_SIGNING_KEY", KEY)
    s = Settings(session_provider="sqlite")
    assert (s.storage_provider, s.session_provider, s.signing_key) == ("memory", "sqlite", None)
    assert Settings.from_env().storage_provider == "filesystem"  # and from_env is where it comes in


def test_vfs_sqlite_means_the_embedded_store_in_the_data_dir() -> None:
    s = Settings.from_env(environ={"ARTIFACT_PROVIDER": "vfs-sqlite"})
    assert (s.storage_provider, s.session_provider) == ("filesystem", "sqlite")
    s = Settings.from_env(environ={"ARTIFACT_PROVIDER": "vfs-sqlite", "SESSION_PROVIDER": "memory"})
    assert (s.storage_provider, s.session_provider) == ("filesystem", "memory")


@pytest.mark.parametrize(("given", "blobs"), [
    ("memory", "memory"), ("vfs-memory", "memory"), ("filesystem", "filesystem"), ("fs", "filesystem"),
    ("vfs-filesystem", "filesystem"), ("s3", "s3"), ("vfs-s3", "s3"), ("ibm_cos", "s3"), (" S3 ", "s3"),
])
def test_provider_aliases_keep_working(given: str, blobs: str) -> None:
    assert checked(Settings.from_env(environ={"ARTIFACT_PROVIDER": given})).storage_provider == blobs


def test_a_bad_value_is_one_sentence_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(environ={"S3_READ_TIMEOUT": "0", "ARTIFACT_SERVE_PORT": "http"})
    message = str(caught.value)
    assert "\n" not in message
    assert "s3_read_timeout (S3_READ_TIMEOUT)" in message and "presign.port (ARTIFACT_SERVE_PORT)" in message


# -- choosing backends by name


@pytest.mark.parametrize(("variable", "field", "accepted"), [
    ("ARTIFACT_PROVIDER", "storage_provider", "filesystem, memory, s3"),
    ("SESSION_PROVIDER", "session_provider", "memory, redis, sqlite"),
])
def test_an_unknown_provider_is_one_line_with_the_accepted_names(variable: str, field: str, accepted: str) -> None:
    with pytest.raises(UnknownProviderError) as caught:
        checked(Settings.from_env(environ={variable: "floppy-disk"}))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200
    assert f"{variable}='floppy-disk'" in message and accepted in message
    with pytest.raises(InvalidArgumentError, match=accepted):  # the library's own argument names it the same way
        ArtifactStore(**{field: "floppy-disk"})


def test_uploads_live_beside_the_metadata_else_in_the_data_dir(tmp_path: Path) -> None:
    signer = RecordSigner(KEY.encode())
    for storage, session, kind in [
        ("memory", "memory", "MemoryUploadRegistry"), ("filesystem", "memory", "DirUploadRegistry"),
        ("memory", "sqlite", "MemoryUploadRegistry"), ("s3", "sqlite", "DirUploadRegistry"),
        ("s3", "memory", "MemoryUploadRegistry"), ("filesystem", "sqlite", "DirUploadRegistry"),
    ]:
        settings = Settings(storage_provider=storage, session_provider=session, fs_root=tmp_path, signing_key=KEY)
        _, meta = build_backends(settings)
        assert type(build_upload_registry(settings, meta, signer)).__name__ == kind, (storage, session)


def test_the_signing_key_is_configured_or_kept_in_the_data_dir(tmp_path: Path) -> None:
    assert signing_key(Settings(signing_key=KEY)) == KEY.encode()
    embedded = Settings(storage_provider="filesystem", session_provider="sqlite", fs_root=tmp_path)
    assert data_dir(embedded) == tmp_path
    assert signing_key(embedded) == (tmp_path / "signing.key").read_bytes()
    assert data_dir(Settings()) is None
    with pytest.raises(ConfigurationError, match="SESSION_PROVIDER=redis needs ARTIFACT_SIGNING_KEY"):
        signing_key(Settings(session_provider="redis", redis_url="redis://127.0.0.1:1"))
    with pytest.raises(ConfigurationError, match="needs SESSION_REDIS_URL"):
        build_backends(Settings(session_provider="redis", signing_key=KEY))


class CountingBlobs(MemoryBlobStore):
    """A blob store from outside the package: registering it is all it takes to use it."""

    made = 0

    def __init__(self) -> None:
        super().__init__()
        CountingBlobs.made += 1


def _counting(settings: Settings) -> BlobStore:
    return CountingBlobs()


async def test_a_backend_registered_by_name_is_built_like_any_other() -> None:
    BLOB_STORES.add(BlobBackend("counting", _counting, aliases=("vfs-counting",), in_memory=True))
    try:
        async with ArtifactStore(storage_provider="vfs-counting") as store:
            assert isinstance(store.ns.blobs, CountingBlobs) and CountingBlobs.made == 1
            file_id = await store.store(b"counted", user_id="u", scope="user")
            assert await store.retrieve(file_id) == b"counted"
            assert (await store.get_stats())["storage_provider"] == "counting"
    finally:
        BLOB_STORES.remove("counting")
    assert "counting" not in BLOB_STORES and "vfs-counting" not in BLOB_STORES


def test_names_are_unique_in_a_registry() -> None:
    registry: Registry[BlobBackend] = Registry("blob store", "ARTIFACT_PROVIDER")
    registry.add(BlobBackend("a", _counting, aliases=("b",)))
    with pytest.raises(ValueError, match="taken"):
        registry.add(BlobBackend("b", _counting))
    assert [backend.name for backend in META_STORES] == ["memory", "sqlite", "redis"]


# -- the commands' data dir


def test_a_commands_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert default_data_dir(Settings.from_env(environ={"ARTIFACT_FS_ROOT": "/srv/a"})) == Path("/srv/a")
    assert default_data_dir(Settings.from_env(environ={"XDG_DATA_HOME": "/x", "HOME": "/h"})) == Path("/x/artifactfs")
    assert default_data_dir(Settings.from_env(environ={"HOME": "/h"})) == Path("/h/.local/share/artifactfs")
    monkeypatch.setattr("os.geteuid", lambda: 0)
    assert default_data_dir(Settings.from_env(environ={"HOME": "/h"})) == SYSTEM_DATA_DIR


# -- nobody else reads the environment


def _reads_of_the_environment(path: Path) -> list[str]:
    """Where ``path`` touches the process environment: os.environ, getenv/putenv, expanduser, Path.home."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "environb", "getenv", "putenv", "unsetenv",
                                                            "expanduser"):
            name = node.attr
        elif isinstance(node, ast.Attribute) and node.attr == "home" and getattr(node.value, "id", "") == "Path":
            name = "Path.home"
        elif isinstance(node, ast.Name) and node.id in ("environ", "getenv"):
            name = node.id
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            name = next((a.name for a in node.names if a.name in ("environ", "getenv")), None)
        if name is not None:
            found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    return found


def test_only_the_settings_module_reads_the_environment() -> None:
    sources = sorted([*(REPO / "core").rglob("*.py"), *(REPO / "fusefs").rglob("*.py")])
    reads = [read for path in sources if path != SETTINGS_MODULE for read in _reads_of_the_environment(path)]
    assert reads == []
    assert _reads_of_the_environment(SETTINGS_MODULE)  # the checker does see a read where there is one


def test_no_test_hooks_in_production_modules() -> None:
    sources = [*(REPO / "core").rglob("*.py"), *(REPO / "fusefs").rglob("*.py")]
    assert [str(p.relative_to(REPO)) for p in sources if "ARTIFACTFS_TEST" in p.read_text()] == []
