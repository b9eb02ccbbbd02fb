"""The inference backend contract, its settings, latency figures, the self-test and the factory.

Contract (`Backend`):

* **Who calls it.** The agent's inference task, off the event loop (`asyncio.to_thread`): blocking
  work never runs on the loop. `Slots.install` calls `self_test(...)` in its own thread before a
  switch. `describe()` and `latency()` are read by the health reporter, from the loop, while a
  `predict` may be running in a worker thread: both must be cheap and thread-safe.
* **How often.** `load` once per model (a new backend object per installed model: no module-level
  state, so a champion and a shadow challenger can run side by side). `predict` once per batch of
  ready feature windows, `[n, k]` float32 with `k` the manifest's feature count; n is whatever
  is ready (1 on a quiet device, hundreds after a backlog), so backends must handle any n >= 0.
  `describe`/`latency` once per health interval.
* **What errors mean.** `BackendUnavailableError`: the runtime does not import on this device;
  no model of this format can run, retrying will not help. `ModelLoadError`: this model file is
  refused by the runtime; refuse the model (the slot rolls back). `PredictError`: this one batch
  failed; count it, drop or dead-letter the windows, keep the model. A backend never raises
  anything else from these methods: errors from the runtime are translated at the boundary.
  A missing accelerator is *not* an error: the backend falls back (ultimately to CPU), logs the
  reason once at WARNING, and reports it in `describe()["fallback"]`.
* **close()** drops the runtime's objects; the model file is not held open after `load` returns.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from protocol import Manifest, ModelFormat

from ..errors import BackendUnavailableError, PredictError, SelfTestMismatchError

__all__ = [
    "Backend", "BackendKind", "Delegate", "InferenceSettings", "LatencyRing", "check_features",
    "make_backend", "self_test",
]

LATENCY_WINDOW = 1024  # predict calls kept for p50/p95: ~17 min of one call a second


class BackendKind(enum.Enum):
    ONNX = "onnx"  # onnxruntime, for .onnx models
    LITERT = "litert"  # ai-edge-litert (or tflite-runtime), for .tflite models


class Delegate(enum.Enum):
    """LiteRT's delegate. XNNPACK is LiteRT's default CPU delegate; NONE runs the builtin kernels."""

    NONE = "none"
    XNNPACK = "xnnpack"
    EDGETPU = "edgetpu"  # Coral; falls back to XNNPACK (logged) where libedgetpu is missing


_FORMAT_BACKEND = {ModelFormat.ONNX: BackendKind.ONNX, ModelFormat.TFLITE: BackendKind.LITERT}


@dataclass(frozen=True)
class InferenceSettings:
    """What a device profile says about inference; checked here, never read from globals.

    `backend` None follows the model's `runtime.format`; set, it refuses models of the other
    format (a Coral profile that must never run ONNX on its CPU). `providers` is onnxruntime's
    preference order: those this build lacks are skipped, with the reason logged; CPU is always
    the last resort. `threads` is the runtime's intra-op thread count.
    """

    backend: BackendKind | None = None
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 1
    delegate: Delegate = Delegate.XNNPACK

    def __post_init__(self) -> None:
        if self.backend is not None and not isinstance(self.backend, BackendKind):
            object.__setattr__(self, "backend", _enum("backend", self.backend, BackendKind))
        if not isinstance(self.delegate, Delegate):
            object.__setattr__(self, "delegate", _enum("delegate", self.delegate, Delegate))
        providers = self.providers
        if isinstance(providers, str) or not isinstance(providers, Sequence) or not providers:
            raise ValueError(f"InferenceSettings.providers is {providers!r}; it must be a non-empty list of names.")
        if not all(isinstance(p, str) and p.endswith("ExecutionProvider") for p in providers):
            raise ValueError(
                f"InferenceSettings.providers is {list(providers)!r}; each must be an onnxruntime provider "
                "name such as 'CUDAExecutionProvider'."
            )
        object.__setattr__(self, "providers", tuple(providers))
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 1 <= self.threads <= 64:
            raise ValueError(f"InferenceSettings.threads is {self.threads!r}; it must be an int from 1 to 64.")


def _enum(name: str, value: object, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(
            f"InferenceSettings.{name} is {value!r}; it must be one of {[k.value for k in kind]!r}."
        ) from None


@runtime_checkable
class Backend(Protocol):
    def load(self, model_path: Path, manifest: Manifest) -> None:
        """Load the model file; raises ModelLoadError or BackendUnavailableError."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """float32 [n, k] windows -> float32 [n, classes] probabilities; raises PredictError."""

    def warm_up(self, features: np.ndarray) -> None:
        """Predict once without recording the latency: runtimes initialise lazily on the first run
        (measured: 2-20x a warm call), and a rollout gate must not judge a model by that one call."""

    def describe(self) -> dict[str, Any]:
        """backend, runtime version, provider/delegate actually used, `fallback` reason or None."""

    def latency(self) -> dict[str, Any]:
        """`LatencyRing.stats()` of the recent predict calls."""

    def close(self) -> None:
        """Drop the runtime's objects; the backend cannot predict after this."""


class LatencyRing:
    """Durations of the last `capacity` predict calls, for p50/p95 in health. Thread-safe."""

    def __init__(self, capacity: int = LATENCY_WINDOW, *, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        if capacity < 1:
            raise ValueError(f"LatencyRing capacity is {capacity!r}; it must be >= 1.")
        self._ns: deque[int] = deque(maxlen=capacity)
        self._rows: deque[int] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.clock = clock
        self.calls = 0  # since load, not only those in the ring

    def record(self, ns: int, rows: int) -> None:
        with self._lock:
            self._ns.append(ns)
            self._rows.append(rows)
            self.calls += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            ns = np.array(self._ns, dtype=np.float64)
            rows = int(sum(self._rows))
            calls = self.calls
        if not len(ns):
            return {"calls": calls, "window": 0, "p50_ms": None, "p95_ms": None, "windows_per_call": None}
        p50, p95 = np.percentile(ns / 1e6, [50, 95])
        return {"calls": calls, "window": len(ns), "p50_ms": round(float(p50), 4),
                "p95_ms": round(float(p95), 4), "windows_per_call": round(rows / len(ns), 2)}


def check_features(features: object, n_features: int | None) -> np.ndarray:
    """The predict input as C-contiguous float32 [n, k], or PredictError naming what came instead."""
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        shape = getattr(features, "shape", type(features).__name__)
        raise PredictError(f"Features must be a 2-D array [windows, features]; got {shape}.")
    if n_features is not None and features.shape[1] != n_features:
        raise PredictError(f"Features have {features.shape[1]} columns; the model takes {n_features}.")
    if not np.issubdtype(features.dtype, np.floating):
        raise PredictError(f"Features must be float32; got {features.dtype}.")
    return np.ascontiguousarray(features, dtype=np.float32)


def make_backend(settings: InferenceSettings, manifest: Manifest) -> Backend:
    """An unloaded backend for this model's `runtime.format`; imports only the runtime it needs."""
    kind = _FORMAT_BACKEND[manifest.runtime.format]
    if settings.backend is not None and settings.backend is not kind:
        raise BackendUnavailableError(
            kind.value,
            f"model {manifest.name} {manifest.version} is {manifest.runtime.format.value}, and this device's "
            f"inference settings allow only the {settings.backend.value} backend.",
        )
    if kind is BackendKind.ONNX:
        from .onnx import OnnxBackend

        return OnnxBackend(settings)
    from .litert import LiteRTBackend

    return LiteRTBackend(settings)


SelfTestHook = Callable[[Path, Manifest], None]


def self_test(backend_factory: Callable[[Manifest], Backend]) -> SelfTestHook:
    """The check `Slots.install(..., self_test=...)` runs on the copied artifacts before a switch.

    Loads `manifest.runtime.model` from the slot's folder with a fresh backend, predicts the
    manifest's samples in one batch, and raises SelfTestMismatchError for the first sample whose
    largest absolute difference exceeds the tolerance. Load errors propagate as they are.
    """

    def check(artifacts_dir: Path, manifest: Manifest) -> None:
        backend = backend_factory(manifest)
        try:
            backend.load(Path(artifacts_dir) / manifest.runtime.model, manifest)
            samples = manifest.self_test.samples
            got = backend.predict(np.array([s.inputs for s in samples], dtype=np.float32))
        finally:
            backend.close()
        tol = manifest.self_test.tolerance
        for i, s in enumerate(samples):
            row = got[i].tolist() if i < len(got) else []
            expected = list(s.expected)
            # `not <=` so that a NaN output fails too.
            if len(row) != len(expected) or not max(abs(e - g) for e, g in zip(expected, row)) <= tol:
                raise SelfTestMismatchError(i, expected, row, tol)

    return check

