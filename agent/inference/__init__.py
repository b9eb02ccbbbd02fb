"""On-device inference: one backend contract (base.py), onnxruntime (onnx.py) and LiteRT (litert.py).

    settings = InferenceSettings(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    backend = make_backend(settings, manifest)        # by manifest.runtime.format
    backend.load(slot.model_path, manifest)
    probabilities = backend.predict(features)         # float32 [n, k] -> float32 [n, classes]
    slots.install(..., self_test=self_test(lambda m: make_backend(settings, m)))

The runtimes are imported only by the backend that needs them (extra `edgeloop[inference]`).
"""

from .base import (
    Backend,
    BackendKind,
    Delegate,
    InferenceSettings,
    LatencyRing,
    make_backend,
    self_test,
)

__all__ = ["Backend", "BackendKind", "Delegate", "InferenceSettings", "LatencyRing", "make_backend", "self_test"]
