"""int8 against fp32, for ONNX and for TFLite, through the agent's own inference backends on this CPU.

Run: python bench/bench_inference.py [--calls 2000] [--batch-calls 300] [--threads 1]

Per runtime (onnxruntime, LiteRT with XNNPACK), each int8 figure beside its fp32 reference from
the same run: size on disk, held-out accuracy, throughput (windows/s at p50) at batch 1 and at
batch 256 with p50/p99 latency per call. Held-out windows are regenerated here with the recipe's
seeded generator (`models.condition.data.make_dataset`, seed 0, the test split: 15 unseen
devices per class), i.e. simulators + protocol.features, and checked against the accuracy the
manifest records. One thread, as the recipe times it: the agent runs inference off its loop on a
shared 4-core device. Timed calls alternate int8/fp32 in rounds so drift hits both alike.

Where int8 wins and loses here, and why: the network is 14 -> 16 -> 3 (~300 weights), so
neither the file nor the time is about weights. Files are mostly graph structure; QDQ int8 adds
QuantizeLinear/DequantizeLinear nodes with their scales and zero points, so the int8 ONNX file is
*bigger* than fp32 and only the constants shrink (`constant_ratio`). On time, the matmuls are a
few thousand MACs; the extra quantize/dequantize ops cost more than int8 arithmetic saves, so int8
is slower at batch 1 and at batch 256 alike. The goals ("3x smaller", "no slower") assume a model
whose weights dominate; they are reported as not met rather than bent.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from figures import ROOT, emit, note

from agent.inference import InferenceSettings, make_backend
from models.condition.data import Split, make_dataset
from models.condition.device_manifest import device_manifest

V1 = ROOT / "models" / "condition" / "v1"
RUNTIMES = {"onnx": ("model.fp32.onnx", "model.int8.onnx"), "tflite": ("model.fp32.tflite", "model.int8.tflite")}
BATCHED = 256  # the agent's backlog chunk; batch 1 is one fresh window on a quiet device


def timed(backends: dict[str, object], x: np.ndarray, *, calls: int, rounds: int = 10) -> dict[str, dict[str, float]]:
    """p50/p99 µs per call and windows/s at p50, per backend, interleaved in `rounds`."""
    samples: dict[str, list[int]] = {name: [] for name in backends}
    for b in backends.values():
        for _ in range(max(20, calls // 20)):  # warm-up: allocation, XNNPACK packing, caches
            b.predict(x)
    for _ in range(rounds):
        for name, b in backends.items():
            for _ in range(calls // rounds):
                t0 = time.perf_counter_ns()
                b.predict(x)
                samples[name].append(time.perf_counter_ns() - t0)
    out = {}
    for name, s in samples.items():
        p50, p99 = np.percentile(np.array(s) / 1e3, [50, 99])
        out[name] = {"p50_us": float(p50), "p99_us": float(p99), "windows_per_s": len(x) / (p50 / 1e6)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20000, help="timed calls per model at batch 1")
    p.add_argument("--batch-calls", type=int, default=3000, help="timed calls per model at batch 256")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    recipe = json.loads((V1 / "manifest.json").read_text())
    t0 = time.perf_counter()
    test = make_dataset(recipe["recipe"]["seed"], Split("test", **{k: recipe["recipe"]["test"][k] for k in (
        "devices_per_class", "segments_per_device")}))
    x, y = test.features.astype(np.float32), test.labels
    note(f"{len(x)} held-out windows regenerated in {time.perf_counter() - t0:.1f} s")
    settings = InferenceSettings(threads=args.threads)
    import datetime as dt

    created = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    batch1 = np.ascontiguousarray(x[:1])
    batched = np.ascontiguousarray(np.resize(x, (BATCHED, x.shape[1])))
    for runtime, (fp32, int8) in RUNTIMES.items():
        backends, describe = {}, {}
        for artifact in (fp32, int8):
            m = device_manifest(recipe, artifact, created_at=created)
            b = make_backend(settings, m)
            b.load(V1 / artifact, m)
            backends[artifact] = b
            describe[artifact] = b.describe()
        where = {"runtime": runtime, "engine": describe[int8].get("provider") or describe[int8].get("delegate"),
                 "threads": args.threads, "model": int8, "reference_model": fp32}

        size = {a: (V1 / a).stat().st_size for a in (fp32, int8)}
        consts = recipe["constant_bytes"]
        emit(f"model_bytes[{runtime},int8]", size[int8], "bytes", reference=f"model_bytes[{runtime},fp32]",
             reference_value=size[fp32], goal="<= 1/3 x reference (int8 at least 3x smaller)",
             meets_goal=bool(size[int8] * 3 <= size[fp32]), constant_bytes=consts[int8],
             reference_constant_bytes=consts[fp32], constant_ratio=consts[int8] / consts[fp32], **where)

        acc = {a: float((backends[a].predict(x).argmax(1) == y).mean()) for a in (fp32, int8)}
        for a in (fp32, int8):
            recorded = recipe["metrics"][a]["accuracy"]
            if abs(acc[a] - recorded) > 1e-6:
                note(f"WARNING {a}: accuracy {acc[a]:.6f} here, {recorded} in the manifest (data or runtime drift)")
        emit(f"held_out_accuracy[{runtime},int8]", acc[int8], "fraction", reference=f"held_out_accuracy[{runtime},fp32]",
             reference_value=acc[fp32], goal="reference - value <= 0.01 (within 1 point)",
             meets_goal=bool(acc[fp32] - acc[int8] <= 0.01), windows=len(x),
             label_disagreements=int((backends[fp32].predict(x).argmax(1) != backends[int8].predict(x).argmax(1)).sum()),
             **where)

        for batch, xb, calls, goal, meets in (
            (1, batch1, args.calls, "context: one window per call, per-call overhead dominates", None),
            (BATCHED, batched, args.batch_calls, ">= 0.95 x reference (no slower than fp32; 5% is timing noise)", True),
        ):
            t = timed(backends, xb, calls=calls)
            emit(f"throughput[{runtime},int8,batch={batch}]", t[int8]["windows_per_s"], "windows/s",
                 reference=f"throughput[{runtime},fp32,batch={batch}]", reference_value=t[fp32]["windows_per_s"],
                 goal=goal, meets_goal=None if meets is None else bool(t[int8]["windows_per_s"] >= 0.95 * t[fp32]["windows_per_s"]),
                 batch=batch, calls=calls, p50_us=t[int8]["p50_us"], p99_us=t[int8]["p99_us"],
                 reference_p50_us=t[fp32]["p50_us"], reference_p99_us=t[fp32]["p99_us"], **where)
        for b in backends.values():
            b.close()
    note(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
