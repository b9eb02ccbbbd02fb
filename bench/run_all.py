"""Run every bench/bench_*.py in its own interpreter, one after another, passing their JSON lines through.

Run: python bench/run_all.py [NAME_FRAGMENT ...] [--timeout 300]

stdout carries only the benchmarks' JSON lines (anything else they print to stdout is sent to
stderr, marked); their stderr passes through. A benchmark that fails or runs past `--timeout`
is stopped by PID and named at the end; the exit status is 1 if any failed. Goals not met are
listed on stderr too, but do not fail the run: a figure is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_one(path: Path, timeout: float) -> tuple[int | str, list[dict]]:
    proc = subprocess.Popen([sys.executable, str(path)], cwd=HERE.parent, stdout=subprocess.PIPE,
                            stderr=None, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    figures: list[dict] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            text = line.strip()
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                print(text, flush=True)
                figures.append(obj)
            elif text:
                print(f"[{path.name} stdout] {text}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code: int | str = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGTERM: Python turns it into KeyboardInterrupt (asyncio.run cancels its main
        # task), so the bench's finally blocks stop the nats-servers and agents it started. Its own
        # session means the agents it spawned get the signal too; nats-server runs in a session of
        # its own and is stopped by the bench.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        code = f"timed out after {timeout:.0f}s"
    reader.join(10)
    return code, figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("only", nargs="*", help="run only benchmarks whose file name contains one of these")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds each benchmark may run")
    args = p.parse_args()
    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        benches = [b for b in benches if any(o in b.name for o in args.only)]
    if not benches:
        print(f"No benchmark in {HERE} matches {args.only}.", file=sys.stderr)
        return 2
    failed, missed = [], []
    # Benchmarks that measure a slow peer at full size need longer (Feast's Dask store and Evidently
    # each take 4-6 min at 1M rows); --timeout raises every limit, never lowers these.
    longer = {"bench_feast.py": 900.0, "bench_drift_evidently.py": 900.0}
    for bench in benches:
        print(f"[run_all] {bench.name} ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        code, figures = run_one(bench, max(args.timeout, longer.get(bench.name, 0.0)))
        print(f"[run_all] {bench.name}: exit {code}, {len(figures)} figures, {time.monotonic() - started:.1f}s",
              file=sys.stderr, flush=True)
        if code != 0:
            failed.append(f"{bench.name} ({code})")
        missed += [f"{bench.name}: {f.get('figure')}" for f in figures if f.get("meets_goal") is False]
    if missed:
        print("[run_all] goals not met:\n  " + "\n  ".join(missed), file=sys.stderr)
    if failed:
        print("[run_all] failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
