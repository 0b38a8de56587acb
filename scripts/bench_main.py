"""The benchmark command behind ``scripts/bench``: finds the sections and runs them.

Every ``scripts/bench_<name>.py`` that defines ``SECTION`` is a section;
``--only core,mount`` picks some, the default runs all in file-name order.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # sections import bench_common as a sibling
sys.path.insert(0, str(HERE.parent))  # and the project's packages (core, fusefs)

from bench_common import Context, Section, Table, load_line, machine_line, write_json  # noqa: E402

_NOT_SECTIONS = {"bench_common", "bench_main"}


def discover() -> dict[str, Section]:
    sections: dict[str, Section] = {}
    for path in sorted(HERE.glob("bench_*.py")):
        if path.stem in _NOT_SECTIONS:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        section = getattr(module, "SECTION", None)
        if isinstance(section, Section):
            sections[section.name] = section
    return sections


def main(argv: list[str] | None = None) -> int:
    sections = discover()
    parser = argparse.ArgumentParser(prog="scripts/bench", description="artifactfs benchmarks")
    parser.add_argument("--only", default="", help=f"comma-separated sections, of: {', '.join(sections)}")
    parser.add_argument("--list", action="store_true", help="list the sections and exit")
    parser.add_argument("--repeat", type=int, default=Context().repeat,
                        help="rounds; every target runs once per round, and the median is shown")
    parser.add_argument("--seconds", type=float, default=Context().seconds, help="length of one timed run")
    parser.add_argument("--work-dir", type=Path, default=Context().work_dir, help="where data dirs go (a real disk)")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs")
    parser.add_argument("--json", type=Path, help="also write every figure, with its samples, to this file")
    parser.add_argument("--no-samples", action="store_true", help="print the tables without each row's samples")
    args = parser.parse_args(argv)
    if args.list:
        for section in sections.values():
            print(f"{section.name:10} {section.help}")
        return 0
    chosen = [s.strip() for s in args.only.split(",") if s.strip()] or list(sections)
    unknown = [name for name in chosen if name not in sections]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    ctx = Context(repeat=args.repeat, seconds=args.seconds, work_dir=args.work_dir, keep=args.keep)
    print(f"# artifactfs bench: {machine_line()}; {ctx.repeat} interleaved rounds: medians, the median of the "
          "per-round ratios, every sample", flush=True)
    tables: list[Table] = []
    for name in chosen:
        started, load_before = time.perf_counter(), load_line()
        for table in sections[name].run(ctx):
            tables.append(table)
            print(table.render(samples=not args.no_samples), flush=True)
        print(f"   (section {name}: {time.perf_counter() - started:.0f} s; before: {load_before}; after: {load_line()})\n",
              flush=True)
    if args.json:
        write_json(args.json, tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())
