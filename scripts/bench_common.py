"""What every benchmark section shares: the section registry, timing, medians, tables.

A section is a module ``scripts/bench_<name>.py`` that defines ``SECTION``;
``scripts/bench_main.py`` finds it by that name, so adding a benchmark is
adding one file. Figures are medians of repeated runs, printed next to one or
more reference columns (published figures, the native disk, a C passthrough)
with the ratio to each.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

MB = 1_000_000  # MB/s figures are decimal megabytes, as dd and the published figures print them
MiB = 1 << 20
KiB = 1 << 10


class Context(BaseModel):
    """Options every section receives from the command line."""

    repeat: int = 3
    seconds: float = 0.6  # length of one timed run of a per-operation benchmark
    work_dir: Path = Path("/var/tmp")  # real disk, not tmpfs: where data dirs are made
    keep: bool = False  # keep the data dirs for inspection


class Row(BaseModel):
    """One measured figure, with the reference figures it is compared to."""

    keys: list[str]  # values of the table's key columns
    value: float
    unit: str
    refs: dict[str, float | None] = Field(default_factory=dict)  # reference column -> figure
    higher_is_better: bool = True
    samples: list[float] = Field(default_factory=list)

    def ratio(self, column: str) -> float | None:
        """How many times the reference this is (above 1 is better, whatever the unit)."""
        ref = self.refs.get(column)
        if not ref or not self.value:
            return None
        return self.value / ref if self.higher_is_better else ref / self.value


class Table(BaseModel):
    title: str
    key_columns: list[str]
    ref_columns: list[str]
    rows: list[Row] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def add(self, keys: Sequence[object], samples: Sequence[float], unit: str, **refs: float | None) -> Row:
        row = Row(keys=[str(k) for k in keys], value=median(samples), unit=unit, refs=dict(refs),
                  samples=list(samples))
        self.rows.append(row)
        return row

    def render(self) -> str:
        header = [*self.key_columns, "measured", "unit"]
        for col in self.ref_columns:
            header += [col, f"x {col}"]
        body = []
        for row in self.rows:
            line = [*row.keys, _num(row.value), row.unit]
            for col in self.ref_columns:
                ref, ratio = row.refs.get(col), row.ratio(col)
                line += [_num(ref) if ref else "-", f"{ratio:.2f}" if ratio is not None else "-"]
            body.append(line)
        widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
        numeric = set(range(len(self.key_columns), len(header)))

        def fmt(line: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))

        out = [f"== {self.title}", fmt(header), fmt(["-" * w for w in widths])]
        out += [fmt(line) for line in body]
        out += [f"   {note}" for note in self.notes]
        return "\n".join(out)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


class Section:
    """A named group of benchmarks; ``run`` yields its tables as each is measured."""

    def __init__(self, name: str, help: str, run: Callable[[Context], Iterable[Table]]) -> None:
        self.name, self.help, self.run = name, help, run


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else 0.0


def repeat(n: int, measure: Callable[[], float]) -> list[float]:
    return [measure() for _ in range(n)]


class Stopwatch:
    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.start


def filesystem_of(path: Path) -> str:
    """``ext4 on /dev/vda`` for the mount that holds ``path``: figures depend on it."""
    try:
        out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        return f"{out[0]} on {out[1]}" if len(out) >= 2 else "unknown filesystem"
    except (OSError, subprocess.CalledProcessError):
        return "unknown filesystem"


def machine_line() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"python {sys.version.split()[0]}, {os.cpu_count()} cpus ({cpu})"


def load_line() -> str:
    """How busy the machine is: figures taken while something else runs are not comparable."""
    parts = []
    try:
        parts.append("load " + " ".join(Path("/proc/loadavg").read_text().split()[:3]))
    except OSError:
        pass
    for what in ("cpu", "io"):
        try:
            some = Path(f"/proc/pressure/{what}").read_text().splitlines()[0].split()
            parts.append(f"{what} pressure {some[1].split('=')[1]}%")  # "some avg10=..."
        except (OSError, IndexError):
            pass
    return ", ".join(parts) or "machine load unknown"


def write_json(path: Path, tables: list[Table]) -> None:
    path.write_text(json.dumps([t.model_dump() for t in tables], indent=1, default=str))


__all__ = [
    "MB", "MiB", "KiB", "Context", "Row", "Table", "Section", "median", "repeat", "Stopwatch",
    "filesystem_of", "machine_line", "load_line", "write_json",
]
