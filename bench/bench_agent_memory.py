"""Agent resident memory when idle, beside a bare interpreter's, and what each heavy import costs.

Run: python bench/bench_agent_memory.py [--settle 5]

`python -m agent --config FILE` runs one simulated realtime input (period 1 s) with a NATS uplink
to an embedded nats-server whose `EL` stream exists (created with the hub's settings; no hub
consumes it). RSS (psutil) is read once the stream holds at least one of the agent's batches and
the agent has been up `--settle` seconds (both bounded by `--timeout`). Reference: a bare
interpreter blocked on stdin. Then, for context, one fresh interpreter per module imports it and
blocks: its RSS less the bare interpreter's is what that import costs on its own (shared
dependencies such as numpy are counted in each module that pulls them in).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

from figures import emit, note
import rig

from hub.broker import EmbeddedNats, EmbeddedNatsSettings
from hub.config import StreamConfig
from hub.ingest.jetstream import ensure_streams

GOAL_MB = 60.0
MB = 1e6  # decimal megabytes: the goal says 60 MB
# What the agent process imports; each measured alone. `agent.daemon` is the whole agent.
# ssl, asyncio and sqlite3 are stdlib, listed because nats (ssl) and the buffer pull them in.
MODULES = ("numpy", "zstandard", "nats", "pydantic", "aiomqtt", "psutil", "ssl", "asyncio", "sqlite3",
           "agent.daemon")
# A device that runs models also holds httpx and cryptography (twin, verification) and a runtime
# with the model loaded: each measured as a fresh interpreter that loads v1 and predicts once.
_SERVE = ("import numpy as np, json\n"
          "from pathlib import Path\n"
          "import agent.daemon, agent.models.manager\n"
          "from agent.inference import InferenceSettings, make_backend\n"
          "from protocol import Manifest\n"
          "from datetime import datetime, timezone\n"
          "from models.condition.device_manifest import device_manifest\n"
          "v1 = Path('models/condition/v1'); r = json.loads((v1 / 'manifest.json').read_text())\n"
          "m = device_manifest(r, {artifact!r}, created_at=datetime.now(timezone.utc))\n"
          "b = make_backend(InferenceSettings(), m); b.load(v1 / {artifact!r}, m)\n"
          "b.predict(np.array([s.inputs for s in m.self_test.samples], dtype=np.float32))")
SERVING = {"models (httpx, cryptography)": "import agent.daemon, agent.models.manager",
           "onnxruntime, v1 int8 loaded": _SERVE.format(artifact="model.int8.onnx"),
           "litert, v1 int8 loaded": _SERVE.format(artifact="model.int8.tflite")}


def _vm_hwm(pid: int) -> int | None:
    """Peak RSS (VmHWM) from /proc, in bytes; None where there is no /proc."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def idle_process_rss(code: str, *, timeout: float = 30.0) -> int:
    """RSS of `python -c code` once it has printed a line, blocked on stdin; stopped by PID after."""
    script = f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=rig.ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # blocks until ready (or the process dies: b"")
        if line.strip() != b"ready":
            raise RuntimeError(f"`{code}` did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        return psutil.Process(proc.pid).memory_info().rss
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


async def stream_messages(js) -> int:
    return (await js.stream_info(StreamConfig().name)).state.messages


async def agent_rss(tmp: Path, *, settle: float, timeout: float) -> dict:
    async with EmbeddedNats(EmbeddedNatsSettings(store_dir=tmp / "nats" / "store", mqtt_port=None)) as server:
        nc = await nats.connect(server.url, allow_reconnect=False, connect_timeout=10)
        try:
            js = nc.jetstream(timeout=10)
            await ensure_streams(js, StreamConfig())
            cfg = tmp / "agent.toml"
            cfg.write_text(rig.agent_toml(buffer_path=tmp / "agent" / "buffer.db", url=server.url, max_ticks=0,
                                          period="1s", start_us=time.time_ns() // 1000, realtime=True))
            proc = rig.AgentProcess(cfg, until_drained=False, log_path=tmp / "agent.log")
            started = time.monotonic()
            try:
                ps = psutil.Process(proc.pid)
                deadline = started + timeout
                sent = 0
                while time.monotonic() < deadline:
                    if proc.poll() is not None:
                        raise RuntimeError(f"The agent exited with {proc.poll()}:\n{proc.log_tail()}")
                    sent = await stream_messages(js)
                    if sent and time.monotonic() - started >= settle:
                        break
                    await asyncio.sleep(0.1)
                info = ps.memory_full_info()
                up_s = time.monotonic() - started
                peak = _vm_hwm(proc.pid)
            finally:
                proc.stop()
        finally:
            await nc.close()
    return {"rss": info.rss, "uss": info.uss, "peak": peak, "up_s": up_s, "batches_sent": sent}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settle", type=float, default=5.0, help="seconds the agent runs before RSS is read")
    p.add_argument("--timeout", type=float, default=20.0, help="at most this long waiting for a sent batch")
    p.add_argument("--no-imports", action="store_true", help="skip the per-module import costs")
    args = p.parse_args()
    bare = idle_process_rss("pass")
    with tempfile.TemporaryDirectory(prefix="bench-agent-memory-") as tmp:
        got = await agent_rss(Path(tmp), settle=args.settle, timeout=args.timeout)
    bare_after = idle_process_rss("pass")
    bare = min(bare, bare_after)
    rss_mb = got["rss"] / MB
    note(f"agent RSS {rss_mb:.1f} MB after {got['up_s']:.1f}s ({got['batches_sent']} batches in the stream)")
    emit("agent_idle_rss_mb", rss_mb, "MB", reference="bare_python_rss_mb", reference_value=bare / MB,
         goal=f"<= {GOAL_MB} MB", meets_goal=rss_mb <= GOAL_MB,
         uss_mb=got["uss"] / MB, peak_rss_mb=(got["peak"] or 0) / MB, up_s=got["up_s"],
         batches_in_stream=got["batches_sent"], input="simulated realtime, period 1s", uplink="nats")
    if args.no_imports:
        return
    daemon = idle_process_rss("import agent.daemon")
    for what, code in SERVING.items():
        rss = idle_process_rss(code)
        emit(f"agent_with_models_rss_mb[{what}]", rss / MB, "MB", reference="import agent.daemon (no models)",
             reference_value=daemon / MB, goal="context: what models add on a device (the 60 MB goal is for "
             "an agent without models)", meets_goal=None, added_mb=(rss - daemon) / MB)
    for module in MODULES:
        rss = idle_process_rss(f"import {module}")
        emit(f"import_rss_mb[{module}]", (rss - bare) / MB, "MB", reference="bare_python_rss_mb",
             reference_value=bare / MB, goal="context: where the agent's memory goes", meets_goal=None,
             process_rss_mb=rss / MB)


if __name__ == "__main__":
    asyncio.run(main())
