"""Run an artifact the way a device would (onnxruntime on CPU, or LiteRT) and time it.

`Runner(path)(features) -> (probabilities, label)` for any of the version's artifacts, chosen by
file extension. Both use one thread: the agent runs inference off its event loop on a device
with 4 cores and other work to do, and one thread gives latency figures that do not depend on
what else the build machine is running.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


class Runner:
    """An artifact loaded once, called with float32 [N, F] windows."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        self.path = Path(path)
        if self.path.suffix == ".onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._run = self._run_onnx
        elif self.path.suffix == ".tflite":
            from ai_edge_litert.interpreter import Interpreter

            self._interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self._input = self._interpreter.get_input_details()[0]["index"]
            self._outputs = {d["name"]: d["index"] for d in self._interpreter.get_output_details()}
            self._batch = -1
            self._run = self._run_tflite
        else:
            raise ValueError(f"Artifact {self.path} is neither .onnx nor .tflite.")

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._run(np.ascontiguousarray(features, np.float32))

    def _run_onnx(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, label = self._session.run(["probabilities", "label"], {"features": x})
        return probabilities, label

    def _run_tflite(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if x.shape[0] != self._batch:  # resizing reallocates: only when the batch size changes
            self._interpreter.resize_tensor_input(self._input, list(x.shape))
            self._interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()
        return (self._interpreter.get_tensor(self._outputs["probabilities"]).copy(),
                self._interpreter.get_tensor(self._outputs["label"]).copy())


def latency(runner: Runner, features: np.ndarray, *, batch: int, calls: int, warmup: int = 50) -> dict[str, float]:
    """p50/p99 µs per call of `batch` windows, and windows per second at p50."""
    x = np.ascontiguousarray(np.resize(features, (batch, features.shape[1])), np.float32)
    for _ in range(warmup):
        runner(x)
    samples = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        runner(x)
        samples[i] = time.perf_counter_ns() - t0
    p50, p99 = np.percentile(samples / 1e3, [50, 99])
    return {"batch": batch, "p50_us": round(float(p50), 1), "p99_us": round(float(p99), 1),
            "windows_per_s": round(batch / (p50 / 1e6))}
