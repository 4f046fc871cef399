"""Parsing time of the printed final IR of an L-layer transformer, against printing it.

Model: B=8, S=128, D=512, 8 heads, MLP 4·D, Megatron tensor parallelism on a dp=2 × tp=4 mesh
(the model of plan_speed.py), compiled with the default pipeline; the text is its final,
localized module (``Lowered.module``) as `print_module` writes it, about 48 lines per layer.
Targets: parsing the 200-layer module (about 9,600 lines) in under 1 s and in at most 5× the
time of printing it. Each time is the best of 3; every parse is checked to print back the
same text.

Run: ``python benchmarks/parse_speed.py`` (prints a table, writes results/parse_speed.json).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import transformer  # noqa: E402
from report import report  # noqa: E402

import dtensor_compiler as dtc  # noqa: E402
from dtensor_compiler.ir import parse_module, print_module  # noqa: E402
from dtensor_compiler.ir.core import Module  # noqa: E402

B, S, D, HEADS = 8, 128, 512, 8
T = TypeVar("T")


def final_module(layers: int) -> Module:
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    in_layouts, out_layout = transformer.layouts(mesh, layers)
    f = dtc.compile(transformer.make_forward(layers, HEADS), in_layouts=in_layouts,
                    out_layouts=out_layout, keep_ir=False)
    return f.lower(*transformer.specs(B, S, D, 4 * D, layers)).module


def best_of(repeats: int, work: Callable[[T], object], arg: T) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work(arg)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rows = []
    for layers in (1, 8, 32, 64, 200):
        module = final_module(layers)
        text = print_module(module)
        assert print_module(parse_module(text)) == text, "the parse does not round-trip"
        print_s = best_of(3, print_module, module)
        parse_s = best_of(3, parse_module, text)
        rows.append([layers, text.count("\n"), round(print_s, 4), round(parse_s, 4),
                     round(parse_s / print_s, 2)])
    parse_200, ratio_200 = rows[-1][3], rows[-1][4]
    met = parse_200 < 1 and ratio_200 <= 5
    report("parse_speed", ["layers", "lines", "print_s", "parse_s", "parse_over_print"], rows,
           {"target": "200 layers parsed in < 1 s and <= 5x the print time",
            "target_met": met})


if __name__ == "__main__":
    main()
