"""On-device inference: one backend contract (base.py), onnxruntime (onnx.py) and LiteRT (litert.py);
feature windows (windows.py), predictions and a shadow (pipeline.py), fed from the inputs (tap.py).

    settings = InferenceSettings(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    backend = make_backend(settings, manifest)        # by manifest.runtime.format
    backend.load(slot.model_path, manifest)
    probabilities = backend.predict(features)         # float32 [n, k] -> float32 [n, classes]
    slots.install(..., self_test=self_test(lambda m: make_backend(settings, m)))

    pipeline = InferencePipeline()
    pipeline.set_champion(backend, manifest, spec)    # spec.version == manifest.feature_spec
    tap = InferenceTap(buffer, pipeline)              # inputs append to the tap, not the buffer
    await tap.run()                                   # closed windows -> Kind.PREDICTION readings

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
from .pipeline import InferencePipeline
from .tap import InferenceTap
from .windows import FeatureWindower

__all__ = [
    "Backend", "BackendKind", "Delegate", "FeatureWindower", "InferencePipeline", "InferenceSettings",
    "InferenceTap", "LatencyRing", "make_backend", "self_test",
]
