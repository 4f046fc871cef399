"""Shared output of the benchmark scripts: a fixed-width table on stdout and a JSON file."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def report(name: str, columns: list[str], rows: list[list[object]], notes: dict) -> None:
    """Print `rows` as a table and write ``benchmarks/results/<name>.json``."""
    widths = [max(len(str(c)), *(len(_fmt(r[i])) for r in rows)) for i, c in enumerate(columns)]
    print(f"# {name} — {machine()}")
    print("  ".join(str(c).rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(v).rjust(w) for v, w in zip(r, widths)))
    for k, v in notes.items():
        print(f"{k}: {v}")
    RESULTS.mkdir(exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), "columns": columns, "rows": rows,
               **notes}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
