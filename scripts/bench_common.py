"""What every benchmark section shares: the section registry, timing, medians, tables.

A section is a module ``scripts/bench_<name>.py`` that defines ``SECTION``;
``scripts/bench_main.py`` finds it by that name, so adding a benchmark is
adding one file. A section runs its targets interleaved, round by round, so
a figure and its references (the native disk, a C passthrough, a peer
library) share each round's machine noise. A table prints the medians, the
median of the per-round paired ratios, and every sample.
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

from pydantic import BaseModel, Field, computed_field

MB = 1_000_000  # MB/s figures are decimal megabytes, as dd and the published figures print them
MiB = 1 << 20
KiB = 1 << 10


class Context(BaseModel):
    """Options every section receives from the command line."""

    repeat: int = 3
    seconds: float = 0.6  # length of one timed run of a per-operation benchmark
    work_dir: Path = Path("/var/tmp")  # real disk, not tmpfs: where data dirs are made
    keep: bool = False  # keep the data dirs for inspection


Sample = float | None  # one round's figure; None where that round did not give one


class Row(BaseModel):
    """One measured figure, per round, with the reference figures of the same rounds.

    ``samples[i]`` and every ``ref_samples[col][i]`` come from round ``i``, so
    a ratio is taken per round (a slow moment of the machine falls on both
    sides of it) and the median of those ratios is reported, not the ratio of
    the medians. ``fixed`` holds references that are one figure for every
    round (published figures).
    """

    keys: list[str]  # values of the table's key columns
    unit: str
    samples: list[Sample]
    ref_samples: dict[str, list[Sample]] = Field(default_factory=dict)
    fixed: dict[str, float | None] = Field(default_factory=dict)
    higher_is_better: bool = True

    @computed_field  # type: ignore[prop-decorator]
    @property
    def value(self) -> float:
        return median(self.samples)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def refs(self) -> dict[str, float | None]:
        """Each reference's median (or fixed figure)."""
        medians: dict[str, float | None] = {col: median(s) if _present(s) else None
                                            for col, s in self.ref_samples.items()}
        return {**medians, **self.fixed}

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ratios(self) -> dict[str, float | None]:
        """How many times better than each reference (above 1 is better, whatever the unit)."""
        return {col: self.ratio(col) for col in [*self.ref_samples, *self.fixed]}

    def paired_ratios(self, column: str) -> list[Sample]:
        """Round by round: this figure against the reference's figure of the same round."""
        if column in self.fixed:
            theirs: list[Sample] = [self.fixed[column]] * len(self.samples)
        else:
            theirs = self.ref_samples.get(column, [])
        return [self._better(mine, ref) for mine, ref in zip(self.samples, theirs)]

    def ratio(self, column: str) -> float | None:
        paired = self.paired_ratios(column)
        return median(paired) if _present(paired) else None

    def _better(self, mine: Sample, ref: Sample) -> Sample:
        return better(mine, ref, self.higher_is_better)


def better(mine: Sample, ref: Sample, higher_is_better: bool = True) -> Sample:
    """How many times better ``mine`` is than ``ref`` (above 1 is better, whatever the unit)."""
    if not mine or not ref:
        return None
    return mine / ref if higher_is_better else ref / mine


def paired_ratio(mine: Sequence[Sample], theirs: Sequence[Sample], higher_is_better: bool = True) -> float | None:
    """The median over the rounds of round i's ``mine`` against round i's ``theirs``."""
    paired = [better(a, b, higher_is_better) for a, b in zip(mine, theirs)]
    return median(paired) if _present(paired) else None


def _present(samples: Sequence[Sample]) -> bool:
    return any(s is not None for s in samples)


RefArg = Sequence[Sample] | float | None  # a reference's per-round samples, or one fixed figure


class Table(BaseModel):
    title: str
    key_columns: list[str]
    ref_columns: list[str]
    rows: list[Row] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    def add(self, keys: Sequence[object], samples: Sequence[Sample], unit: str, *, higher_is_better: bool = True,
            **refs: RefArg) -> Row:
        """A row; each reference is either its samples from the same rounds or one fixed figure."""
        row = Row(keys=[str(k) for k in keys], unit=unit, samples=list(samples), higher_is_better=higher_is_better)
        for col, ref in refs.items():
            if ref is None or isinstance(ref, (int, float)):
                row.fixed[col] = None if ref is None else float(ref)
            else:
                row.ref_samples[col] = [None if v is None else float(v) for v in ref]
        self.rows.append(row)
        return row

    def render(self, samples: bool = True) -> str:
        """The table of medians and paired ratios, its notes, then every row's samples round by round."""
        header = [*self.key_columns, "measured", "unit"]
        for col in self.ref_columns:
            header += [col, f"x {col}"]
        body = []
        for row in self.rows:
            refs = row.refs
            line = [*row.keys, _num(row.value), row.unit]
            for col in self.ref_columns:
                ref, ratio = refs.get(col), row.ratio(col)
                line += [_num(ref) if ref else "-", f"{ratio:.2f}" if ratio is not None else "-"]
            body.append(line)
        widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
        numeric = set(range(len(self.key_columns), len(header)))

        def fmt(line: list[str]) -> str:
            return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))

        out = [f"== {self.title}", fmt(header), fmt(["-" * w for w in widths])]
        out += [fmt(line) for line in body]
        out += [f"   {note}" for note in self.notes]
        if any(row.ref_samples for row in self.rows):
            out.append("   x col: median over the rounds of this round's figure against the same round's col "
                       "(measured / col for rates, col / measured for s, ms and MiB)")
        if samples:
            out += self._sample_lines()
        return "\n".join(out)

    def _sample_lines(self) -> list[str]:
        """Every sample, one line per row: a reader can see the spread and any outlier round."""
        if not any(len(row.samples) > 1 or row.ref_samples for row in self.rows):
            return []
        cols = [c for c in self.ref_columns if any(c in row.ref_samples for row in self.rows)]
        lines = [f"   samples by round: measured{''.join(f' | {c}' for c in cols)}"]
        width = max(len(" ".join(row.keys)) for row in self.rows)
        for row in self.rows:
            parts = [_samples(row.samples)]
            parts += [f"{c} {_samples(row.ref_samples[c])}" for c in cols if c in row.ref_samples]
            lines.append(f"     {' '.join(row.keys).ljust(width)}  {' | '.join(parts)}")
        return lines


def _samples(values: Sequence[Sample]) -> str:
    return " ".join(_num(v) for v in values) or "-"


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


def median(samples: Sequence[Sample]) -> float:
    """The median of the rounds that gave a figure (0 when none did)."""
    present = [s for s in samples if s is not None]
    return statistics.median(present) if present else 0.0


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
    "MB", "Context", "KiB", "MiB", "Row", "Sample", "Section", "Stopwatch", "Table", "better", "filesystem_of",
    "load_line", "machine_line", "median", "paired_ratio", "repeat", "write_json",
]
