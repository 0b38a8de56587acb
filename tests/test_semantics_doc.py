"""docs/SEMANTICS.md and the tests behind it cannot drift apart.

Each statement of the page (``- **S-...** — ...``) lists the tests that show
it, and each of those tests names the statement with
``@pytest.mark.semantics("S-...")``. Checked both ways, over the whole suite
as pytest collects it (in a subprocess, ``--collect-only``, so this test sees
every test whichever subset of the suite is running):

- every statement lists at least one test, and every test it lists exists
  and claims it;
- every claim of a collected test names a statement of the page, and the
  page lists that test under it.

Parametrized tests are listed once, without their parameters.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "SEMANTICS.md"
STATEMENT = re.compile(r"^- \*\*(S-[a-z0-9-]+)\*\*")
LISTED_TEST = re.compile(r"`(tests/[^`:]+\.py::[^`\[]+)(?:\[[^`]*\])?`")
STATEMENT_ID = re.compile(r"^S-[a-z0-9]+(-[a-z0-9]+)*$")

Pairs = set[tuple[str, str]]  # (statement id, test id without parameters)


def documented(text: str) -> tuple[list[str], Pairs]:
    """The statement ids in page order, and the tests each lists (up to the next statement or heading)."""
    order: list[str] = []
    pairs: Pairs = set()
    current: str | None = None
    for line in text.splitlines():
        started = STATEMENT.match(line)
        if started:
            current = started.group(1)
            order.append(current)
        elif line.startswith("#"):
            current = None
        if current is not None:
            pairs |= {(current, test) for test in LISTED_TEST.findall(line)}
    return order, pairs


def claimed(tmp_path: Path) -> tuple[set[str], Pairs]:
    """Every collected test id (parameters dropped), and the statements each claims."""
    out = tmp_path / "claims.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "--semantics-claims", str(out), "tests"],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    claims: dict[str, list[str]] = json.loads(out.read_text())
    base = {node: re.sub(r"\[.*\]$", "", node) for node in claims}
    return set(base.values()), {(sid, base[node]) for node, ids in claims.items() for sid in ids}


@pytest.fixture(scope="module")
def page() -> tuple[list[str], Pairs]:
    return documented(DOC.read_text(encoding="utf-8"))


def test_each_statement_is_stated_once_and_lists_its_tests(page: tuple[list[str], Pairs]) -> None:
    order, pairs = page
    assert order, f"no statements found in {DOC}"
    assert len(order) == len(set(order)), sorted({sid for sid in order if order.count(sid) > 1})
    assert all(STATEMENT_ID.match(sid) for sid in order)
    untested = [sid for sid in order if not any(s == sid for s, _ in pairs)]
    assert not untested, f"statements that list no test: {untested}"


def test_the_page_and_the_tests_agree_both_ways(page: tuple[list[str], Pairs], tmp_path: Path) -> None:
    order, listed = page
    collected, claims = claimed(tmp_path)
    unknown = sorted({sid for sid, _ in claims} - set(order))
    assert not unknown, f"tests claim statements docs/SEMANTICS.md does not have: {unknown}"
    missing_tests = sorted(test for _, test in listed if test not in collected)
    assert not missing_tests, f"docs/SEMANTICS.md lists tests that pytest does not collect: {missing_tests}"
    unclaimed = sorted(listed - claims)
    assert not unclaimed, f"listed under a statement, but the test does not claim it: {unclaimed}"
    unlisted = sorted(claims - listed)
    assert not unlisted, f"a test claims a statement, but docs/SEMANTICS.md does not list it there: {unlisted}"
    unbacked = sorted(set(order) - {sid for sid, _ in claims})
    assert not unbacked, f"statements no collected test claims: {unbacked}"


def test_the_parser_sees_what_a_reader_sees() -> None:
    """The rules above, on a small page: a heading ends a statement; tests may wrap and carry no parameters."""
    text = (
        "# Title\n- **S-a-b** — text `tests/x.py::test_one` and\n  - `tests/y.py::test_two`\n"
        "## Next\n`tests/z.py::test_orphan`\n- **S-c-d** — `tests/x.py::test_three[param]`\n"
    )
    order, pairs = documented(text)
    assert order == ["S-a-b", "S-c-d"]
    assert pairs == {("S-a-b", "tests/x.py::test_one"), ("S-a-b", "tests/y.py::test_two"),
                     ("S-c-d", "tests/x.py::test_three")}
