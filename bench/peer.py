"""Peers in their own venvs (Feast, Evidently): set one up, run its driver under a time and memory cap.

A peer library is never a dependency of edgeloop: each bench that measures one keeps a venv under
bench/ (ignored by git), created by `--setup` from a requirements file, and runs a driver script
in it as a subprocess that reads the same files our side reads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from figures import note


def setup_venv(venv: Path, requirements: Path, what: str) -> None:
    """Create `venv` if missing and install `requirements` into it."""
    python = venv / "bin" / "python"
    t = time.perf_counter()
    if not python.exists():
        note(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    note(f"installing {requirements.name} into {venv} ({what} and its dependencies)")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(requirements)], check=True)
    note(f"{what} venv ready in {time.perf_counter() - t:.0f} s, {size_mb(venv):.0f} MB")


def size_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total / 2**20


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 8192.0


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _first_to_go() -> None:
    """In the driver, before exec: if memory runs out, the kernel kills it before anything else here."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def run_driver(python: Path, driver: Path, command: str, *args: str, budget: float,
               mem_mb: float) -> tuple[dict | None, str, float]:
    """Run `driver` in a peer's venv; (its JSON answer or None, status, peak RSS MB). Stopped past
    `budget` seconds or `mem_mb` of RSS; the status says which."""
    proc = subprocess.Popen([str(python), str(driver), command, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
                            preexec_fn=_first_to_go)
    started, peak, status = time.monotonic(), 0.0, ""
    try:
        while proc.poll() is None:
            peak = max(peak, rss_mb(proc.pid))
            if time.monotonic() - started > budget:
                status = f"did not complete: stopped after the {budget:.0f} s budget (peak RSS {peak:.0f} MB)"
            elif peak > mem_mb:
                status = (f"did not complete: stopped when its RSS passed the {mem_mb / 1024:.0f} GB cap after "
                          f"{time.monotonic() - started:.0f} s")
            if status:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only the driver we started
                proc.wait()
                return None, status, peak
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out, err = proc.communicate()
    if proc.returncode < 0:
        why = " (SIGKILL from outside: most likely the kernel's OOM killer)" if proc.returncode == -9 else ""
        return None, f"did not complete: killed by signal {-proc.returncode}{why}, peak RSS {peak:.0f} MB", peak
    if proc.returncode != 0:
        last = (err.strip().splitlines() or ["(no stderr)"])[-1]
        return None, f"failed: exit {proc.returncode}: {last[:300]}", peak
    return json.loads(out.strip().splitlines()[-1]), "completed", peak
