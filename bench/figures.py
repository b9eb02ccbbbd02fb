"""The JSON line every benchmark prints: one figure beside a reference measured in the same run.

Shape (one object per line, on stdout):

    {"figure": ..., "value": X, "unit": ..., "reference": ..., "reference_value": Y,
     "ratio": X / Y, "goal": ..., "meets_goal": true | false | null, ...extra fields}

`meets_goal` is null only for figures printed for context, whose `goal` says so.
Progress and diagnostics go to stderr, so stdout stays machine-readable. Every benchmark imports
this module first; run as `python bench/x.py`, it puts the repository root on the path.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _round(x: Any) -> Any:
    if isinstance(x, float) and math.isfinite(x):
        return float(f"{x:.4g}") if abs(x) < 1000 else round(x, 1)
    return x


def emit(
    figure: str,
    value: float,
    unit: str,
    *,
    reference: str,
    reference_value: float,
    goal: str,
    meets_goal: bool | None,
    **extra: Any,
) -> dict[str, Any]:
    """Print one figure line and return it."""
    line = {
        "figure": figure,
        "value": _round(value),
        "unit": unit,
        "reference": reference,
        "reference_value": _round(reference_value),
        "ratio": _round(value / reference_value) if reference_value else None,
        "goal": goal,
        "meets_goal": meets_goal,
        **{k: _round(v) for k, v in extra.items()},
    }
    print(json.dumps(line), flush=True)
    return line


def note(message: str) -> None:
    """A progress line for the person watching; never part of the results."""
    print(f"[{sys.argv[0].rsplit('/', 1)[-1]}] {message}", file=sys.stderr, flush=True)
