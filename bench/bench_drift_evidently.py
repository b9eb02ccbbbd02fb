"""Data drift over 50 features x 1M rows beside Evidently's data-drift report on the same data.

Run: python bench/bench_drift_evidently.py [--setup] [--quick] [--sizes 100000,1000000] [--features 50]
     [--shifted 5] [--seed 0] [--budget 600] [--mem-gb GB]

Evidently is not a dependency of edgeloop. `--setup` creates bench/.evidently-venv (if missing) and
installs bench/evidently-requirements.txt into it; Evidently's side runs there, as a subprocess of
bench/evidently_driver.py reading the same arrays (.npy). Without that venv this prints one JSON
figure saying Evidently is not installed and exits 0.

Data: bench_drift.py's generator (seeded normals, each feature its own mean and scale; `--shifted`
features move by +0.3 std in the current sample, the rest drawn afresh), reference and current of
`rows` each. Per size, one figure `drift_report_vs_evidently`: values/s (rows x features, both
samples) through `hub.drift.drift_report` beside Evidently's `Report([DataDriftPreset()]).run(...)`
plus reading its values (evidently_driver.py says what is timed; imports and DataFrame building are
not). Goal (the issue's): >= 50x Evidently, flagging the same columns. Agreement is counted per
column: flagged by both, only ours, only Evidently, by neither; and the largest gap between the two
statistics where both used the same method. Evidently runs under a `--budget` (s) and `--mem-gb`
(RSS, default 90% of MemAvailable at start) cap, killed if it passes either; sizes grow until one
does not complete, and the figure says why in `evidently_status`.

Measured here (2 shared cores, 23 GB, no swap; evidently 0.7.23, pandas 2.3.3, numpy 2.4.6; `--setup`
~2 min, venv ~1 GB; a full run ~7 min, nearly all of it Evidently at 1M):

    rows (ref = cur) x 50   drift_report   Evidently DataDriftPreset         ratio   flags
    10k                     0.016 s        5.9 s,   0.3 GB peak RSS          368x    same 5 of 50
    100k                    0.12 s         29 s,    0.6 GB                   247x    same 5 of 50
    1M                      2.3 s          332 s,   3.4 GB (251 s in a       144x    same 5 of 50
                                           quieter run)

  Both pick normalized Wasserstein for every column (n > 1000) and the statistics agree to 1e-16;
  both flag exactly the 5 shifted columns (45 flagged by neither). Evidently completed every
  size on one core. Hazard: ref and cur of equal size is the fast case (the quantile coupling is
  a mean of |r - c|); with 1M reference and 999k current rows drift_report took 7.0 s (~40x),
  still 2x the 14.5-16 s it took before stats.py's Wasserstein was computed on quantiles.

Under bench/run_all.py's default 300 s per benchmark, a full run with Evidently installed is
stopped; run it on its own, or `run_all.py drift_evidently --timeout 900`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from figures import emit, note
from peer import mem_available_mb, run_driver, setup_venv

from bench_drift import data
from hub.drift import drift_report

HERE = Path(__file__).resolve().parent
VENV = HERE / ".evidently-venv"
PYTHON = VENV / "bin" / "python"
REQUIREMENTS = HERE / "evidently-requirements.txt"
DRIVER = HERE / "evidently_driver.py"
EVIDENTLY = "Evidently Report([DataDriftPreset()]).run(current, reference) + snapshot.dict(), default methods"
GOAL = ">= 50x Evidently's data-drift report, flagging the same columns (issue 5)"


def setup() -> None:
    setup_venv(VENV, REQUIREMENTS, "Evidently")


def driver(command: str, *args: str, budget: float, mem_mb: float) -> tuple[dict | None, str, float]:
    """Run the driver in the Evidently venv; (its JSON answer or None, status, peak RSS MB)."""
    return run_driver(PYTHON, DRIVER, command, *args, budget=budget, mem_mb=mem_mb)


_SAME_METHOD = {"wasserstein": "Wasserstein distance (normed)", "ks": "K-S p_value", "jensen_shannon": "Jensen-Shannon distance"}


def agreement(ours: list, theirs: dict | None) -> dict:
    mine = {r.column for r in ours if r.drifted}
    if theirs is None:
        return {"flagged": sorted(mine)}
    other = set(theirs["flags"])
    names = {r.column for r in ours}
    gaps = [abs(r.statistic - theirs["values"][r.column]) for r in ours
            if theirs["methods"].get(r.column) == _SAME_METHOD.get(r.method.value)]
    return {
        "flagged": sorted(mine), "evidently_flagged": sorted(other), "same_flags": mine == other,
        "flagged_by_both": len(mine & other), "flagged_only_ours": len(mine - other),
        "flagged_only_evidently": len(other - mine), "flagged_by_neither": len(names - mine - other),
        "evidently_drifted_columns_count": theirs["evidently_count"],
        "same_method_columns": len(gaps), "max_statistic_gap": max(gaps) if gaps else None,
        "evidently_methods": sorted(set(theirs["methods"].values())),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--setup", action="store_true", help=f"create {VENV.name} with Evidently if missing, then run")
    p.add_argument("--quick", action="store_true", help="100k rows only")
    p.add_argument("--sizes", default="100000,1000000", help="rows per sample, comma-separated, growing")
    p.add_argument("--features", type=int, default=50)
    p.add_argument("--shifted", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=600.0, help="seconds the Evidently subprocess may run per size")
    p.add_argument("--mem-gb", type=float, default=None,
                   help="RSS (GB) at which Evidently is stopped; default 90%% of MemAvailable at start")
    args = p.parse_args()
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    mem_gb = args.mem_gb if args.mem_gb is not None else round(0.9 * mem_available_mb() / 1024, 1)
    if args.setup:
        setup()
    versions = None
    if PYTHON.exists():
        answer, status, _ = driver("version", budget=120, mem_mb=4096)
        if answer is not None:
            versions = (f"evidently {answer['evidently']} (pandas {answer['pandas']}, numpy {answer['numpy']}, "
                        f"python {answer['python']})")
        else:
            note(f"{PYTHON} cannot import evidently: {status}")
    if versions is None:
        note(f"Evidently is not installed in {VENV}: run `python bench/bench_drift_evidently.py --setup` to measure it.")
        emit("drift_report_vs_evidently", None, "values/s", reference="Evidently, not installed", reference_value=None,
             goal=GOAL, meets_goal=None,
             evidently=f"not installed: no {VENV.relative_to(HERE.parent)}; run python bench/bench_drift_evidently.py --setup")
        return
    note(versions)
    with tempfile.TemporaryDirectory(prefix="bench_drift_evidently-") as d:
        for rows in sizes:
            note(f"generating {args.features} features x {rows:,} rows, reference and current")
            ref, cur, moved = data(rows, args.features, args.shifted, args.seed)
            names = list(ref)
            rpath, cpath = Path(d) / "reference.npy", Path(d) / "current.npy"
            np.save(rpath, np.column_stack([ref[n] for n in names]))
            np.save(cpath, np.column_stack([cur[n] for n in names]))
            note("drift_report")
            t0 = time.perf_counter()
            ours = drift_report(ref, cur)
            ours_s = time.perf_counter() - t0
            del ref, cur
            note(f"drift_report {ours_s:.1f} s; Evidently DataDriftPreset ...")
            theirs, status, peak = driver("drift", "--reference", str(rpath), "--current", str(cpath),
                                          "--names", ",".join(names), budget=args.budget, mem_mb=mem_gb * 1024)
            note(f"Evidently {status}" + (f" in {theirs['seconds']:.1f} s" if theirs else ""))
            cells = 2 * rows * args.features
            agree = agreement(ours, theirs)
            ratio = None if theirs is None else theirs["seconds"] / ours_s
            emit("drift_report_vs_evidently", cells / ours_s, "values/s", reference=EVIDENTLY,
                 reference_value=None if theirs is None else cells / theirs["seconds"], goal=GOAL,
                 meets_goal=None if theirs is None else bool(ratio >= 50 and agree["same_flags"]),
                 rows=rows, features=args.features, seconds=ours_s,
                 evidently_seconds=None if theirs is None else theirs["seconds"], evidently_status=status,
                 evidently_peak_rss_mb=peak, methods=sorted({r.method.value for r in ours}),
                 shifted=sorted(moved), expected_flags=set(agree["flagged"]) == moved, **agree, evidently=versions)
            rpath.unlink()
            cpath.unlink()
            if theirs is None:
                break


if __name__ == "__main__":
    main()
