"""Inference backends on the committed condition models: self-test, cross-runtime agreement, fallbacks."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import agent.inference.litert as litert_mod
from agent.errors import BackendUnavailableError, PredictError, SelfTestFailedError, SelfTestMismatchError
from agent.inference import Delegate, InferenceSettings, LatencyRing, make_backend, self_test
from agent.inference.litert import dequantize, quantize
from agent.models import Slots
from models.condition.device_manifest import device_manifest
from protocol import Readings, SelfTest, SelfTestSample
from protocol.features import FeatureSpec, window_features
from protocol.signing import private_key_from_raw, sign, trusted_keys
from simulators import VibrationSpec, device_model, spikes

V1 = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
RECIPE = json.loads((V1 / "manifest.json").read_text())
ARTIFACTS = ("model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.int8.tflite")
CREATED = datetime(2025, 1, 2, tzinfo=timezone.utc)
KEY = private_key_from_raw(bytes(range(32)))
CPU = InferenceSettings()


def manifest(artifact: str):
    return device_manifest(RECIPE, artifact, created_at=CREATED)


def loaded(artifact: str, settings: InferenceSettings = CPU):
    m = manifest(artifact)
    backend = make_backend(settings, m)
    backend.load(V1 / artifact, m)
    return backend


@pytest.fixture(scope="module")
def fleet_features() -> np.ndarray:
    """Windows from simulated devices (healthy, wearing, a spiking sensor), by the manifest's spec."""
    spec = FeatureSpec.from_params(RECIPE["feature_spec"]["params"])
    assert spec.version == RECIPE["feature_spec"]["version"]  # the device would refuse the model otherwise
    blocks = []
    for i, wear in enumerate((0.0, 0.0, 2.0, 3.0)):
        model = device_model(f"inf-{i}", start_us=1_700_006_400_000_000, period_us=1_000_000, wear_rate=wear)
        # Past the wear onset by ln(50)/rate days: 0.1 * (50 - 1) = 4.9 mm/s of wear on a 1.2 floor.
        first = int(VibrationSpec(wear_rate_per_day=wear).onset_s(model.seed) + np.log(50) / wear * 86_400) if wear else 0
        readings: Readings = model.frame(first, 40 * 60)
        if i == 1:
            readings = spikes(readings, "temperature", every=7, magnitude=6.0)
        blocks.append(window_features(readings, spec)[1])
    x = np.concatenate(blocks).astype(np.float32)
    assert len(x) >= 150
    return x


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_committed_model_reproduces_its_self_test(artifact: str) -> None:
    m = manifest(artifact)
    backend = loaded(artifact)
    x = np.array([s.inputs for s in m.self_test.samples], np.float32)
    got = backend.predict(x)
    assert got.dtype == np.float32 and got.shape == (len(x), len(m.classes))
    np.testing.assert_allclose(got, [s.expected for s in m.self_test.samples], atol=m.self_test.tolerance, rtol=0)
    np.testing.assert_array_equal(got.argmax(1), RECIPE["self_test"]["expected"][artifact]["label"])
    self_test(lambda mm: make_backend(CPU, mm))(V1, m)  # the hook Slots.install runs
    assert backend.latency()["calls"] == 1 and backend.latency()["p50_ms"] > 0
    assert backend.describe()["fallback"] is None


def test_runtimes_agree_on_simulated_windows(fleet_features: np.ndarray) -> None:
    p = {a: loaded(a).predict(fleet_features) for a in ARTIFACTS}
    # Same network in two runtimes: within the manifest's self-test tolerance of fp32 (1e-5).
    np.testing.assert_allclose(p["model.fp32.tflite"], p["model.fp32.onnx"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(p["model.int8.tflite"], p["model.int8.onnx"], atol=1e-5, rtol=0)
    labels = {a: v.argmax(1) for a, v in p.items()}
    assert (labels["model.fp32.tflite"] == labels["model.fp32.onnx"]).all()
    assert (labels["model.int8.tflite"] == labels["model.int8.onnx"]).all()
    # Quantization moves probabilities (up to 0.34 on the recipe's held-out set) but rarely labels:
    # at most 1 % of windows may change class, and all classes must be seen.
    agree = (labels["model.int8.onnx"] == labels["model.fp32.onnx"]).mean()
    assert agree >= 0.99, agree
    assert set(labels["model.fp32.onnx"].tolist()) == {0, 1, 2}
    np.testing.assert_allclose(p["model.int8.onnx"].sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_any_batch_size_including_empty(artifact: str, fleet_features: np.ndarray) -> None:
    backend = loaded(artifact)
    whole = backend.predict(fleet_features)
    for n in (0, 1, 7, 7, 64, 1):
        np.testing.assert_allclose(backend.predict(fleet_features[:n]), whole[:n], atol=1e-6, rtol=0)
    with pytest.raises(PredictError, match="13 columns"):
        backend.predict(fleet_features[:, :13])
    with pytest.raises(PredictError, match="2-D"):
        backend.predict(fleet_features[0])
    if artifact.endswith(".tflite"):
        assert len(backend.describe()["batch_shapes"]) <= litert_mod.MAX_BATCH_SHAPES


def test_missing_accelerator_provider_falls_back_to_cpu(monkeypatch, caplog) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    settings = InferenceSettings(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    with caplog.at_level(logging.WARNING, logger="agent.inference.onnx"):
        backend = loaded("model.int8.onnx", settings)
    d = backend.describe()
    assert d["provider"] == "CPUExecutionProvider"
    assert "TensorrtExecutionProvider, CUDAExecutionProvider not in this onnxruntime build" in d["fallback"]
    assert d["fallback"] in caplog.text
    assert backend.predict(np.zeros((2, 14), np.float32)).shape == (2, 3)


def test_missing_edgetpu_falls_back_to_xnnpack(monkeypatch, caplog) -> None:
    monkeypatch.setattr(litert_mod, "EDGETPU_LIBRARY", "libedgetpu-not-here.so.1")
    with caplog.at_level(logging.WARNING, logger="agent.inference.litert"):
        backend = loaded("model.int8.tflite", InferenceSettings(delegate=Delegate.EDGETPU))
    d = backend.describe()
    assert (d["requested"], d["delegate"]) == ("edgetpu", "xnnpack")
    assert "libedgetpu-not-here.so.1" in d["fallback"] and d["fallback"] in caplog.text


def test_litert_without_default_delegate_matches() -> None:
    x = np.array([s.inputs for s in manifest("model.int8.tflite").self_test.samples], np.float32)
    plain = loaded("model.int8.tflite", InferenceSettings(delegate="none"))
    np.testing.assert_allclose(plain.predict(x), loaded("model.int8.tflite").predict(x), atol=1e-5, rtol=0)


def test_falls_back_to_tflite_runtime_when_only_it_imports(monkeypatch, caplog) -> None:
    from ai_edge_litert import interpreter as real

    fake = types.ModuleType("tflite_runtime")
    fake.interpreter = real  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", real)
    with caplog.at_level(logging.WARNING, logger="agent.inference.litert"):
        backend = loaded("model.fp32.tflite")
    assert backend.describe()["runtime"] == "tflite-runtime"
    assert "using tflite_runtime" in caplog.text


def test_quantized_io_round_trip() -> None:
    detail = {"name": "features", "dtype": np.int8, "quantization": (0.05, -3)}
    q = quantize(np.array([[0.0, 1.0, -100.0, 100.0]], np.float32), detail)
    assert q.dtype == np.int8 and q.tolist() == [[-3, 17, -128, 127]]
    np.testing.assert_allclose(dequantize(q, detail), [[0.0, 1.0, -6.25, 6.5]], atol=1e-6)


def test_self_test_refuses_tampered_expected_outputs() -> None:
    m = manifest("model.int8.onnx")
    samples = list(m.self_test.samples)
    wrong = list(samples[3].expected)
    wrong[1], wrong[2] = wrong[2], wrong[1]  # bearing_wear swapped for sensor_fault
    samples[3] = SelfTestSample(samples[3].inputs, tuple(wrong))
    tampered = dataclasses.replace(m, self_test=SelfTest(tuple(samples), m.self_test.tolerance))
    with pytest.raises(SelfTestMismatchError) as info:
        self_test(lambda mm: make_backend(CPU, mm))(V1, tampered)
    e = info.value
    assert (e.index, e.tolerance, e.expected) == (3, 0.02, wrong)
    assert "Self-test sample 3 is off by" in str(e) and "tolerance of 0.02" in str(e) and str(wrong) in str(e)


def test_profile_backend_refuses_the_other_format() -> None:
    with pytest.raises(BackendUnavailableError, match="allow only the litert backend"):
        make_backend(InferenceSettings(backend="litert"), manifest("model.int8.onnx"))


@pytest.mark.parametrize("bad, match", [
    ({"threads": 0}, "threads"), ({"providers": ()}, "providers"), ({"providers": ["cuda"]}, "provider name"),
    ({"delegate": "gpu"}, "delegate"), ({"backend": "tensorrt"}, "backend"),
])
def test_settings_are_checked(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        InferenceSettings(**bad)


def test_latency_ring_is_bounded() -> None:
    ring = LatencyRing(capacity=4)
    assert ring.stats()["p50_ms"] is None
    for ns in (1_000_000, 2_000_000, 3_000_000, 4_000_000, 100_000_000):
        ring.record(ns, rows=2)
    s = ring.stats()
    assert (s["calls"], s["window"], s["windows_per_call"]) == (5, 4, 2.0)
    assert s["p50_ms"] == 3.5 and 4 < s["p95_ms"] < 100


@pytest.mark.parametrize("artifact", ["model.int8.onnx", "model.int8.tflite"])
def test_slots_install_runs_the_real_self_test(tmp_path: Path, artifact: str) -> None:
    m = manifest(artifact)
    hook = self_test(lambda mm: make_backend(CPU, mm))
    slots = Slots(tmp_path / "slots")
    info = slots.install(V1, m, sign(m, KEY), trusted_keys([KEY.public_key()]), self_test=hook)
    assert slots.active == info and info.model_path.name == artifact

    # The same bytes, claiming other outputs: refused, and the first model keeps serving.
    samples = list(m.self_test.samples)
    samples[0] = SelfTestSample(samples[0].inputs, (0.0, 1.0, 0.0))
    bad = dataclasses.replace(m, version="v1-bad", self_test=SelfTest(tuple(samples), m.self_test.tolerance))
    with pytest.raises(SelfTestFailedError, match="Self-test sample 0"):
        slots.install(V1, bad, sign(bad, KEY), trusted_keys([KEY.public_key()]), self_test=hook)
    assert slots.active.manifest == m and slots.last_failure.reason == "self_test_failed"
