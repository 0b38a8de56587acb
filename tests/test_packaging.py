"""What `pip install artifactfs` brings, and what each part of the code may import.

The library is installable without FUSE (no libfuse headers): the mount is
the ``fuse`` extra, each remote backend its own extra. These tests read the
imports of every module and the declared dependencies, and run the library
in a process where the optional packages cannot be imported at all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Which extra a part of the tree may rely on, beyond the base dependencies.
EXTRA_OF_PLACE = {
    "core/backends/blobs/s3/": "s3",
    "core/backends/meta/redis/": "redis",
    "core/backends/uploads/redis.py": "redis",
    "core/transfers/service.py": "serve",
    "core/transfers/connections.py": "serve",
    "core/transfers/monitor.py": "serve",
    "core/infra/metrics.py": "metrics",
    "fusefs/": "all",
}
OPTIONAL_MODULES = ("pyfuse3", "trio", "redis", "aioboto3", "botocore", "aiohttp", "yarl", "hypercorn", "prometheus_client")


def _names(requirements: list[str]) -> set[str]:
    """Distribution names of requirements, following ``artifactfs[...]`` self-references."""
    names: set[str] = set()
    for text in requirements:
        req = Requirement(text)
        if req.name == "artifactfs":
            for extra in req.extras:
                names |= _names(PYPROJECT["optional-dependencies"][extra])
        else:
            names.add(req.name.lower().replace("_", "-"))
    return names


def _imported(path: Path) -> set[str]:
    """Top-level modules a file imports (at any depth: lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def _allowed(relative: str) -> set[str]:
    base = _names(PYPROJECT["dependencies"])
    for place, extra in EXTRA_OF_PLACE.items():
        if relative.startswith(place):
            return base | _names(PYPROJECT["optional-dependencies"][extra])
    return base


@pytest.mark.parametrize("package", ["core", "fusefs"])
def test_every_third_party_import_is_declared_where_it_is_used(package: str) -> None:
    """A module may import only what the install that ships it declares (base, or its backend's extra)."""
    dists = packages_distributions()
    undeclared = []
    for path in sorted((REPO / package).rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        for module in sorted(_imported(path)):
            if module in sys.stdlib_module_names or module in ("core", "fusefs"):
                continue
            owners = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
            if not owners & _allowed(relative):
                undeclared.append(f"{relative}: {module} ({', '.join(sorted(owners))})")
    assert not undeclared, "imported but not declared for that part of the tree:\n" + "\n".join(undeclared)


def test_the_base_install_needs_no_fuse() -> None:
    base = _names(PYPROJECT["dependencies"])
    assert not base & {"pyfuse3", "trio", "redis", "aioboto3", "hypercorn"}
    assert {"pyfuse3", "trio"} <= _names(PYPROJECT["optional-dependencies"]["fuse"])


_WITHOUT_EXTRAS = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = set(sys.argv[1].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    """
)


def _run_without_extras(code: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    script = _WITHOUT_EXTRAS + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script, ",".join(OPTIONAL_MODULES), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )


def test_the_library_works_without_any_extra(tmp_path: Path) -> None:
    """Store, list and read back on the embedded backends, under asyncio, with every extra unimportable."""
    result = _run_without_extras(
        """
        import asyncio
        from core import ArtifactStore

        async def main(root):
            async with ArtifactStore(storage_provider="filesystem", session_provider="sqlite", fs_root=root) as store:
                session = await store.create_session(user_id="alice")
                artifact = await store.store(b"no fuse here", mime="text/plain", filename="a/b.txt",
                                             session_id=session, user_id="alice")
                listed = [m.filename for m in await store.list_by_session(session)]
                print(await store.retrieve(artifact), listed)

        asyncio.run(main(sys.argv[2]))
        assert not BLOCKED & {m.partition(".")[0] for m in sys.modules}, "an optional package was imported"
        """,
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "b'no fuse here' ['a/b.txt']"


def test_the_mount_command_without_the_fuse_extra_says_what_to_install(tmp_path: Path) -> None:
    result = _run_without_extras(
        """
        from fusefs.cli import main
        sys.argv = ["artifactfs", "mount", sys.argv[2]]
        main()
        """,
        str(tmp_path),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "pip install 'artifactfs[fuse]'" in result.stderr


def test_umount_loads_neither_the_store_nor_fuse(tmp_path: Path) -> None:
    """`artifactfs umount` runs on the standard library: half a second of imports saved on every unmount."""
    code = textwrap.dedent(
        """
        import sys
        from fusefs.cli import run
        status = run(["umount", sys.argv[1]])
        heavy = {"core", "pydantic", "pydantic_settings", "trio", "pyfuse3", "redis", "aioboto3"}
        print(status, sorted(heavy & {m.partition(".")[0] for m in sys.modules}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.split("\n")[0] == "1 []", done.stdout + done.stderr
    assert "is not mounted" in done.stderr
