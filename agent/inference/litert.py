"""The LiteRT backend: ai-edge-litert (or tflite-runtime), XNNPACK on CPU, the Edge TPU where present.

Batches: the committed models have a dynamic batch dimension (shape signature [-1, k]). A LiteRT
interpreter holds buffers for one input shape, and resizing reallocates them, so one
interpreter is kept per recent batch size (at most `MAX_BATCH_SHAPES`, least recently used
evicted): the agent alternates between a few sizes (one window, a full backlog chunk) and should
not reallocate on every call. The model bytes are read once and the file closed.

Quantized I/O: if the model's input or output tensor is int8/uint8 (a fully quantized converter's
output), features are quantized with the tensor's scale and zero point and probabilities
dequantized. The committed int8 models keep float I/O (quantization happens inside the graph), so
for them this is a no-op.

Interpreters are not thread-safe: predict holds a lock.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from protocol import Manifest

from ..errors import BackendUnavailableError, ModelLoadError, PredictError
from .base import Delegate, InferenceSettings, LatencyRing, check_features

log = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"
MAX_BATCH_SHAPES = 4
PROBABILITIES = "probabilities"


def import_interpreter() -> tuple[ModuleType, str]:
    """(the interpreter module, its distribution name): ai-edge-litert first, then tflite-runtime."""
    try:
        return importlib.import_module("ai_edge_litert.interpreter"), "ai-edge-litert"
    except ImportError as first:
        try:
            interpreter = importlib.import_module("tflite_runtime.interpreter")
        except ImportError as exc:
            raise BackendUnavailableError(
                "litert", f"neither ai_edge_litert ({first}) nor tflite_runtime ({exc}) imports; "
                "install edgeloop[inference]."
            ) from exc
        log.warning("LiteRT: ai_edge_litert does not import (%s); using tflite_runtime.", first)
        return interpreter, "tflite-runtime"


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float features as the tensor's dtype: as they are for float tensors, else scale/zero point."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero = detail["quantization"]
    if not scale:
        raise PredictError(f"Input tensor {detail['name']!r} is {dtype} with no quantization scale.")
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """An output tensor as float32 probabilities."""
    if np.dtype(detail["dtype"]).kind == "f":
        return q.astype(np.float32, copy=True)
    scale, zero = detail["quantization"]
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


class LiteRTBackend:
    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._mod, self._runtime = import_interpreter()
        self._content: bytes | None = None
        self._delegates: list[Any] = []
        self._delegate = "none"
        self._fallback: list[str] = []
        self._interpreters: OrderedDict[int, tuple[Any, dict[str, Any], dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()
        self._latency = LatencyRing()
        self._n_features: int | None = None
        self._n_classes = 0
        self._model = ""

    # --- loading -------------------------------------------------------------------------------

    def load(self, model_path: Path, manifest: Manifest) -> None:
        try:
            content = Path(model_path).read_bytes()
        except OSError as exc:
            raise ModelLoadError(str(model_path), f"it cannot be read ({exc}).") from exc
        self._content, self._n_classes = content, len(manifest.classes)
        self._choose_delegate()
        try:
            interpreter, inp, out = self._build(1, path=model_path)
        except ModelLoadError:
            self._content = None
            raise
        width = int(inp["shape_signature"][-1]) if len(inp["shape_signature"]) else -1
        self._n_features = width if width > 0 else None
        self._interpreters[int(inp["shape"][0])] = (interpreter, inp, out)
        self._model = f"{manifest.name} {manifest.version} ({manifest.runtime.quantization.value})"

    def _choose_delegate(self) -> None:
        wanted = self.settings.delegate
        self._delegates, self._delegate = [], wanted.value
        if wanted is Delegate.EDGETPU:
            try:
                # Probe with ctypes first: ai-edge-litert 2.3's Delegate.__del__ raises an
                # "exception ignored" AttributeError when load_delegate fails to open the library.
                ctypes.CDLL(EDGETPU_LIBRARY)
                self._delegates = [self._mod.load_delegate(EDGETPU_LIBRARY)]
            except (ValueError, OSError, RuntimeError) as exc:
                self._fallback_to(f"the Edge TPU delegate did not load ({EDGETPU_LIBRARY}: {exc}); using XNNPACK.")
                self._delegate = Delegate.XNNPACK.value

    def _fallback_to(self, reason: str) -> None:
        self._fallback.append(reason)
        log.warning("LiteRT: %s", reason)

    def _build(self, batch: int, *, path: Path | str = "<loaded model>") -> tuple[Any, dict[str, Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_content": self._content, "num_threads": self.settings.threads}
        if self._delegates:
            kwargs["experimental_delegates"] = self._delegates
        if self.settings.delegate is Delegate.NONE:
            # XNNPACK is applied by default; this resolver leaves it out (tflite-runtime >= 2.7).
            kwargs["experimental_op_resolver_type"] = self._mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            interpreter = self._mod.Interpreter(**kwargs)
            inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
            if len(inputs) != 1:
                raise ModelLoadError(str(path), f"it has inputs {[d['name'] for d in inputs]}; the agent feeds one.")
            inp, out = inputs[0], _probabilities_output(outputs, path, self._n_classes)
            if int(inp["shape"][0]) != batch:
                interpreter.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]])
            interpreter.allocate_tensors()
        except ModelLoadError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(str(path), f"{self._runtime} refused it ({exc}).") from exc
        # Details again after allocation: shapes change with the resize; names and quantization do not.
        inp = interpreter.get_input_details()[0]
        out = next(d for d in interpreter.get_output_details() if d["index"] == out["index"])
        return interpreter, inp, out

    def _for_batch(self, n: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        entry = self._interpreters.get(n)
        if entry is not None:
            self._interpreters.move_to_end(n)
            return entry
        try:
            entry = self._build(n)
        except ModelLoadError as exc:  # the model loaded at batch 1; another size is this batch's problem
            raise PredictError(f"LiteRT could not prepare a batch of {n} windows: {exc}") from exc
        self._interpreters[n] = entry
        while len(self._interpreters) > MAX_BATCH_SHAPES:
            self._interpreters.popitem(last=False)
        return entry

    # --- running -------------------------------------------------------------------------------

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self._content is None:
            raise PredictError("The LiteRT backend has no model loaded.")
        x = check_features(features, self._n_features)
        if not len(x):
            return np.empty((0, self._n_classes), np.float32)
        t0 = time.perf_counter_ns()
        with self._lock:
            interpreter, inp, out = self._for_batch(len(x))
            try:
                interpreter.set_tensor(inp["index"], quantize(x, inp))
                interpreter.invoke()
                probabilities = dequantize(interpreter.get_tensor(out["index"]), out)
            except (ValueError, RuntimeError) as exc:
                raise PredictError(f"LiteRT failed on a batch of shape {x.shape}: {exc}") from exc
        self._latency.record(time.perf_counter_ns() - t0, len(x))
        return probabilities

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "litert",
            "runtime": self._runtime,
            "runtime_version": getattr(self._mod, "__version__", None) or _version(self._runtime),
            "model": self._model or None,
            "delegate": self._delegate,
            "requested": self.settings.delegate.value,
            "threads": self.settings.threads,
            "batch_shapes": list(self._interpreters),
            "fallback": " ".join(self._fallback) or None,
        }

    def latency(self) -> dict[str, Any]:
        return self._latency.stats()

    def warm_up(self, features: np.ndarray) -> None:
        self.predict(features)
        self._latency = LatencyRing()

    def close(self) -> None:
        with self._lock:
            self._interpreters.clear()
            self._delegates = []
            self._content = None


def _probabilities_output(outputs: list[dict[str, Any]], path: Path | str, n_classes: int) -> dict[str, Any]:
    for d in outputs:
        if d["name"] == PROBABILITIES:
            return d
    for d in outputs:
        if len(d["shape"]) == 2 and int(d["shape"][-1]) == n_classes and np.dtype(d["dtype"]).kind in "fiu":
            return d
    raise ModelLoadError(
        str(path), f"none of its outputs {[(d['name'], list(d['shape'])) for d in outputs]} is [N, {n_classes}] probabilities."
    )


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
