"""numpy einsum subscripts to the IR's explicit, letters-only form.

``"ij,jk"`` (implicit output: the letters used once, in alphabetical order) becomes
``"ij,jk->ik"``; an ellipsis becomes fresh letters, right-aligned per operand like numpy's
broadcasting: ``"...ij,jk->...ik"`` on ranks (3, 2) becomes ``"aij,jk->aik"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from string import ascii_letters

from dtensor_compiler.errors import ShapeError
from dtensor_compiler.tracing.location import user_location

_ELLIPSIS = "..."


def explicit_spec(subscripts: str, ranks: Sequence[int]) -> tuple[list[str], str]:
    """Operand subscripts and output subscripts, letters only, for operands of `ranks`."""
    text = subscripts.replace(" ", "")
    lhs, arrow, out = text.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(ranks):
        raise ShapeError(f"einsum subscripts {subscripts!r} name {len(ins)} operands, got "
                         f"{len(ranks)}", user_location())
    for sub in ins + [out]:
        if sub.count(_ELLIPSIS) > 1 or not all(c.isalpha() for c in sub.replace(_ELLIPSIS, "")):
            raise ShapeError(f"invalid einsum subscripts {subscripts!r}", user_location())

    ellipsis_ranks = []
    for sub, rank in zip(ins, ranks):
        letters = len(sub.replace(_ELLIPSIS, ""))
        covered = rank - letters if _ELLIPSIS in sub else 0
        if covered < 0 or (_ELLIPSIS not in sub and letters != rank):
            raise ShapeError(f"einsum subscripts {sub!r} do not fit an operand of rank {rank}",
                             user_location())
        ellipsis_ranks.append(covered)
    used = set(text)
    ellipsis = "".join([c for c in ascii_letters if c not in used][: max(ellipsis_ranks,
                                                                          default=0)])
    explicit = [sub.replace(_ELLIPSIS, ellipsis[len(ellipsis) - n:])
                for sub, n in zip(ins, ellipsis_ranks)]

    if not arrow:
        counts = Counter(c for sub in ins for c in sub.replace(_ELLIPSIS, ""))
        return explicit, ellipsis + "".join(sorted(c for c, n in counts.items() if n == 1))
    if _ELLIPSIS not in out and ellipsis:
        raise ShapeError(f"einsum output {out!r} has no '...' for the broadcast dims of "
                         f"{subscripts!r}", user_location())
    return explicit, out.replace(_ELLIPSIS, ellipsis)
