"""Evidently's side of bench/bench_drift_evidently.py; runs inside bench/.evidently-venv, never in the project's venv.

Run by bench_drift_evidently.py, one subprocess per measurement, with one JSON object on the last line of stdout:

    evidently_driver.py version
    evidently_driver.py drift --reference R.npy --current C.npy --names f00,f01,...

R.npy and C.npy are float64 matrices (rows x features, np.save), the same arrays the bench hands
`hub.drift.drift_report`. They become pandas DataFrames and Evidently is imported before the clock
starts; the clock times `Report([DataDriftPreset()]).run(current, reference)` and reading every
metric's value (`snapshot.dict()`), which is Evidently's data-drift report with its default
method rule (the rule our stats.py copies). Rendering the HTML is not timed.

Per column the verdict is read from the ValueDrift metric: a method whose name has "p_value"
drifts when the value is below its threshold, the distances when it is at or above it (Evidently's
convention); `evidently_count` is Evidently's own DriftedColumnsCount, as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def version() -> dict:
    import evidently
    import numpy
    import pandas

    return {"evidently": evidently.__version__, "pandas": pandas.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}


def drift(reference: str, current: str, names: list[str]) -> dict:
    import numpy as np
    import pandas as pd
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref = pd.DataFrame(np.load(reference), columns=names)
    cur = pd.DataFrame(np.load(current), columns=names)
    t0 = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(cur, ref)
    result = snapshot.dict()
    seconds = time.perf_counter() - t0
    flags, methods, values, count = [], {}, {}, None
    for m in result["metrics"]:
        config = m["config"]
        if config["type"].endswith("ValueDrift"):
            column, method, threshold, value = config["column"], config["method"], config["threshold"], m["value"]
            methods[column] = method
            values[column] = value
            if (value < threshold) if "p_value" in method else (value >= threshold):
                flags.append(column)
        elif config["type"].endswith("DriftedColumnsCount"):
            count = int(m["value"]["count"])
    return {"seconds": seconds, "flags": sorted(flags), "methods": methods, "values": values, "evidently_count": count}


def main() -> None:
    warnings.simplefilter("ignore")  # Evidently's and pandas' deprecation chatter is not the bench's output
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("version")
    d = sub.add_parser("drift")
    d.add_argument("--reference", required=True)
    d.add_argument("--current", required=True)
    d.add_argument("--names", required=True)
    args = p.parse_args()
    answer = version() if args.command == "version" else drift(args.reference, args.current, args.names.split(","))
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
