"""The README's commands: what their Python steps print, run as the scripts run them.

``scripts/mount`` asks Python for the data dir before it mounts; a change of
that function's signature once broke the README's first command while every
other test passed, so the script's own line is run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def _data_dir_line() -> str:
    """The Python code that scripts/mount runs for its data dir, as written there."""
    match = re.search(r"DATA_DIR=\$\(\.venv/bin/python -c '([^']+)'\)", (REPO / "scripts/mount").read_text())
    assert match, "scripts/mount no longer asks Python for its data dir the way this test reads it"
    return match.group(1)


def _data_dir(env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", _data_dir_line()], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_scripts_mount_finds_the_data_dir_the_mount_uses(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTIFACT_", "SESSION_"))}
    assert _data_dir({**env, "ARTIFACT_FS_ROOT": str(tmp_path)}) == str(tmp_path)
    expected = "/var/lib/artifactfs" if os.geteuid() == 0 else str(Path.home() / ".local/share/artifactfs")
    assert _data_dir(env) == expected


def test_scripts_bench_finds_every_section() -> None:
    """``scripts/bench --list`` imports every section, as a run does (a stale import once broke them all)."""
    result = subprocess.run([sys.executable, "scripts/bench_main.py", "--list"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["core", "mount", "peers", "presign", "redis"]


def test_setup_puts_the_command_on_path() -> None:
    """Regression (issue #11): after scripts/setup, the README's bare `artifactfs` was not found."""
    subprocess.run(["scripts/setup"], cwd=REPO, check=True, capture_output=True, timeout=600)
    found = subprocess.run(["bash", "-c", "command -v artifactfs"], capture_output=True, text=True, check=False)
    assert found.returncode == 0, "artifactfs is not on PATH after scripts/setup"
    assert Path(found.stdout.strip()).resolve() == (REPO / ".venv/bin/artifactfs").resolve()
    done = subprocess.run(["artifactfs", "--help"], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0 and "mount" in done.stdout


def _bench_common() -> ModuleType:
    """scripts/bench_common.py, imported from scripts/ as the sections import it."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_common
    finally:
        sys.path.remove(str(REPO / "scripts"))
    return bench_common


def test_bench_ratios_are_paired_per_round() -> None:
    """A row's ratio is the median of each round's ratio, not the ratio of the medians (issue #12)."""
    table = _bench_common().Table(title="t", key_columns=["op"], ref_columns=["native", "published"])
    rate = table.add(["rate"], [100.0, 50.0, 200.0], "ops/s", native=[50.0, 100.0, 400.0], published=25.0)
    assert rate.refs == {"native": 100.0, "published": 25.0}
    assert rate.paired_ratios("native") == [2.0, 0.5, 0.5]
    assert rate.ratio("native") == 0.5  # the medians alone would say 1.0
    assert rate.ratio("published") == 4.0
    seconds = table.add(["time"], [2.0, None, 1.0], "s", higher_is_better=False, native=[1.0, 1.0, 4.0])
    assert seconds.paired_ratios("native") == [0.5, None, 4.0]
    assert seconds.ratio("native") == 2.25  # a round without a figure is left out, not counted as 0


def test_bench_tables_show_and_keep_every_sample() -> None:
    common = _bench_common()
    table = common.Table(title="t", key_columns=["op"], ref_columns=["native"])
    table.add(["rate"], [123.0, 456.0, 789.0], "ops/s", native=[321.0, 654.0, 987.0])
    shown = table.render()
    assert all(figure in shown for figure in ("123", "456", "789", "321", "654", "987"))
    dumped = table.model_dump()["rows"][0]
    assert dumped["samples"] == [123.0, 456.0, 789.0] and dumped["ref_samples"] == {"native": [321.0, 654.0, 987.0]}
    assert "123" not in table.render(samples=False)
