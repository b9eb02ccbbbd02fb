"""The onnxruntime backend: execution providers from the device profile, CPU as the last resort.

Providers are the profile's preference list (TensorRT, CUDA on a Jetson) kept in order where
`onnxruntime.get_available_providers()` has them; CPU is appended when missing. Two fallbacks are
logged and reported in `describe()["fallback"]`: a preferred provider this onnxruntime build
lacks (the `onnxruntime` wheel from PyPI has only CPU; Jetsons need NVIDIA's build), and one the
build has but that failed to start (missing CUDA/TensorRT libraries), which onnxruntime itself
only prints to stderr and drops from the session.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from protocol import Manifest

from ..errors import BackendUnavailableError, ModelLoadError, PredictError
from .base import InferenceSettings, LatencyRing, check_features

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
PROBABILITIES = "probabilities"  # the output name the recipe writes; others are found by shape


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime", f"onnxruntime does not import ({exc}); install edgeloop[inference]."
        ) from exc
    return onnxruntime


class OnnxBackend:
    """An onnxruntime session for one model. Session.run is thread-safe; no lock is needed."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self._ort = _import_ort()
        self._session: Any = None
        self._input = ""
        self._output = ""
        self._n_features: int | None = None
        self._model = ""
        self._fallback: list[str] = []
        self._latency = LatencyRing()

    def load(self, model_path: Path, manifest: Manifest) -> None:
        ort = self._ort
        available = list(ort.get_available_providers())
        wanted = list(self.settings.providers)
        providers = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available and p != CPU]
        if CPU not in providers:
            providers.append(CPU)
        if missing:
            self._fallback_to(f"{', '.join(missing)} not in this onnxruntime build (it has {available}).")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.settings.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # onnxruntime's own stderr chatter; what matters is logged here
        try:
            session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile classes
            raise ModelLoadError(str(model_path), f"onnxruntime refused it ({type(exc).__name__}: {exc}).") from exc
        used = session.get_providers()
        dropped = [p for p in providers if p not in used]
        if dropped:
            self._fallback_to(f"{', '.join(dropped)} failed to start (missing libraries or device).")
        self._input, self._n_features = _single_input(session, model_path)
        self._output = _probabilities_output(session, model_path, len(manifest.classes))
        self._session = session
        self._model = f"{manifest.name} {manifest.version} ({manifest.runtime.quantization.value})"

    def _fallback_to(self, reason: str) -> None:
        self._fallback.append(reason)
        log.warning("onnxruntime: %s Running on what is left of %s.", reason, list(self.settings.providers))

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise PredictError("The onnxruntime backend has no model loaded.")
        x = check_features(features, self._n_features)
        t0 = time.perf_counter_ns()
        try:
            (probabilities,) = self._session.run([self._output], {self._input: x})
        except Exception as exc:  # onnxruntime's runtime errors, translated at the boundary
            raise PredictError(f"onnxruntime failed on a batch of shape {x.shape}: {type(exc).__name__}: {exc}") from exc
        self._latency.record(time.perf_counter_ns() - t0, len(x))
        return np.asarray(probabilities, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        used = self._session.get_providers() if self._session is not None else []
        return {
            "backend": "onnxruntime",
            "runtime_version": self._ort.__version__,
            "model": self._model or None,
            "provider": used[0] if used else None,
            "providers": used,
            "requested": list(self.settings.providers),
            "threads": self.settings.threads,
            "fallback": " ".join(self._fallback) or None,
        }

    def latency(self) -> dict[str, Any]:
        return self._latency.stats()

    def warm_up(self, features: np.ndarray) -> None:
        self.predict(features)
        self._latency = LatencyRing()

    def close(self) -> None:
        self._session = None


def _single_input(session: Any, path: Path) -> tuple[str, int | None]:
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(str(path), f"it has inputs {[i.name for i in inputs]}; the agent feeds exactly one.")
    width = inputs[0].shape[-1] if inputs[0].shape else None
    return inputs[0].name, width if isinstance(width, int) else None


def _probabilities_output(session: Any, path: Path, n_classes: int) -> str:
    outputs = session.get_outputs()
    for o in outputs:
        if o.name == PROBABILITIES:
            return o.name
    for o in outputs:
        if o.type == "tensor(float)" and o.shape and o.shape[-1] == n_classes:
            return o.name
    raise ModelLoadError(
        str(path), f"none of its outputs {[(o.name, o.shape) for o in outputs]} is float [N, {n_classes}] probabilities."
    )
