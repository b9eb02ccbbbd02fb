"""InferencePipeline on the committed condition models: predictions, shadow agreement, errors, swaps, figures."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.buffer import BufferStats
from agent.errors import InferenceError, PredictError
from agent.health import HealthProbe
from agent.inference import InferencePipeline, InferenceSettings, make_backend
from agent.inference.pipeline import channel_safe, feature_channels
from models.condition.device_manifest import device_manifest
from protocol import Readings, check_channel
from protocol.features import FeatureSpec, window_features
from protocol.twin import InferenceReport, Reported, ShadowReport
from simulators import device_model

V1 = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
RECIPE = json.loads((V1 / "manifest.json").read_text())
SPEC = FeatureSpec.from_params(RECIPE["feature_spec"]["params"])
CREATED = datetime(2025, 1, 2, tzinfo=timezone.utc)
X = np.array(RECIPE["self_test"]["inputs"], np.float32)
T0 = 1_700_006_400_000_000
STARTS = T0 + SPEC.window_us * np.arange(len(X), dtype=np.int64)
CLASSES = tuple(RECIPE["classes"])


def loaded(artifact: str):
    m = device_manifest(RECIPE, artifact, created_at=CREATED)
    backend = make_backend(InferenceSettings(), m)
    backend.load(V1 / artifact, m)
    return backend, m


def serving(artifact: str = "model.int8.onnx") -> InferencePipeline:
    p = InferencePipeline()
    backend, m = loaded(artifact)
    assert p.set_champion(backend, m, SPEC) is None
    return p


def columns(r: Readings) -> dict[str, np.ndarray]:
    """channel -> values ordered by timestamp."""
    out = {}
    for i, name in enumerate(r.channels):
        rows = np.flatnonzero(r.channel == i)
        out[name] = r.value[rows[np.argsort(r.ts_us[rows])]]
    return out


class Flaky:
    """A real backend that fails its next `fail` predict calls with PredictError."""

    def __init__(self, backend: Any) -> None:
        self.inner, self.fail, self.closed = backend, 0, False

    def load(self, path: Path, manifest: Any) -> None:
        self.inner.load(path, manifest)

    def predict(self, features: np.ndarray) -> np.ndarray:
        if self.fail:
            self.fail -= 1
            raise PredictError("The runtime ran out of memory on this batch.")
        return self.inner.predict(features)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def latency(self) -> dict[str, Any]:
        return self.inner.latency()

    def close(self) -> None:
        self.closed = True
        self.inner.close()


@pytest.mark.parametrize("artifact", ["model.int8.onnx", "model.int8.tflite"])
def test_predictions_match_the_recipes_expected_probabilities(artifact: str) -> None:
    expected = RECIPE["self_test"]["expected"][artifact]
    p = serving(artifact)
    assert p.spec == SPEC
    r = p.predict(STARTS, X)
    feats = {f"feat.{f}" for f in SPEC.feature_names}
    assert r is not None and set(r.channels) == {"pred.class", *(f"pred.p.{c}" for c in CLASSES), *feats}
    assert sorted(set(r.ts_us.tolist())) == STARTS.tolist()  # one prediction per window, at its start
    got = columns(r)
    probabilities = np.column_stack([got[f"pred.p.{c}"] for c in CLASSES])
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=expected["atol"], rtol=0)
    np.testing.assert_array_equal(got["pred.class"], expected["label"])
    inference, shadow = p.report()
    assert shadow is None
    assert (inference.version, inference.calls, inference.windows, inference.errors) == ("v1", 1, 6, 0)
    assert inference.classes == {"normal": 2, "bearing_wear": 2, "sensor_fault": 2}
    assert inference.p50_ms is not None and inference.p95_ms >= inference.p50_ms
    Reported(inference=inference).to_dict()  # a valid twin report


@pytest.fixture(scope="module")
def fleet_windows() -> np.ndarray:
    """Windows of simulated machines, wearing and not, by the model's feature spec."""
    blocks = []
    for i, wear in enumerate((0.0, 2.0, 3.0)):
        model = device_model(f"pipe-{i}", start_us=T0, period_us=1_000_000, wear_rate=wear)
        blocks.append(window_features(model.frame(i * 86_400 * 3, 40 * 60), SPEC)[1])
    return np.concatenate([X, *blocks]).astype(np.float32)


def test_a_shadow_runs_on_the_same_windows_and_agreement_is_reported(fleet_windows: np.ndarray) -> None:
    p = serving("model.int8.onnx")
    shadow, sm = loaded("model.fp32.onnx")
    assert p.set_shadow(shadow, sm) is None
    starts = T0 + SPEC.window_us * np.arange(len(fleet_windows), dtype=np.int64)
    r = p.predict(starts, fleet_windows)
    got = columns(r)
    champion_labels = loaded("model.int8.onnx")[0].predict(fleet_windows).argmax(1)
    shadow_labels = loaded("model.fp32.onnx")[0].predict(fleet_windows).argmax(1)
    np.testing.assert_array_equal(got["pred.class"], champion_labels)
    np.testing.assert_array_equal(got["shadow.class"], shadow_labels)
    np.testing.assert_array_equal(got["shadow.agree"], champion_labels == shadow_labels)
    inference, report = p.report()
    agreed = int((champion_labels == shadow_labels).sum())
    assert report == ShadowReport("v1", len(fleet_windows), agreed, 0)
    assert agreed >= 0.99 * len(fleet_windows)  # quantization rarely moves a label (tests/agent/test_inference.py)
    h = p.health()
    assert (h["shadow.windows"], h["shadow.agreed"], h["shadow.errors"]) == (len(fleet_windows), agreed, 0)
    Reported(inference=inference, shadow=report).to_dict()


def test_a_failing_batch_is_counted_and_the_model_keeps_serving() -> None:
    backend, m = loaded("model.int8.onnx")
    flaky = Flaky(backend)
    p = InferencePipeline()
    p.set_champion(flaky, m, SPEC)
    flaky.fail = 1
    assert p.predict(STARTS, X) is None
    r = p.predict(STARTS[:2], X[:2])
    assert r is not None and len(set(r.ts_us.tolist())) == 2
    inference, _ = p.report()
    assert (inference.calls, inference.windows, inference.errors) == (2, 2, 6)
    h = p.health()
    assert (h["inference.calls"], h["inference.windows"], h["inference.errors"]) == (2.0, 2.0, 6.0)


def test_shadow_errors_are_the_shadows_alone() -> None:
    p = serving()
    shadow, sm = loaded("model.fp32.onnx")
    flaky = Flaky(shadow)
    p.set_shadow(flaky, sm)
    flaky.fail = 1
    r = p.predict(STARTS, X)
    assert r is not None and "shadow.class" not in r.channels and "pred.class" in r.channels
    r = p.predict(STARTS, X)
    assert "shadow.agree" in r.channels
    inference, report = p.report()
    assert (inference.windows, inference.errors) == (12, 0)
    assert report == ShadowReport("v1", 6, 6, 6)


def test_wrong_probabilities_fail_the_batch_like_a_predict_error() -> None:
    backend, m = loaded("model.int8.onnx")
    flaky = Flaky(backend)
    flaky.predict = lambda features: np.full((len(features), 3), np.nan, np.float32)  # type: ignore[method-assign]
    p = InferencePipeline()
    p.set_champion(flaky, m, SPEC)
    assert p.predict(STARTS, X) is None and p.report()[0].errors == 6


def test_setting_a_champion_returns_the_old_one_and_restarts_the_figures() -> None:
    p = serving()
    p.predict(STARTS, X)
    old = p._champion.backend  # noqa: SLF001 - the object the caller must get back
    backend, m = loaded("model.int8.tflite")
    assert p.set_champion(backend, m, SPEC) is old
    inference, _ = p.report()
    assert (inference.calls, inference.windows, inference.classes) == (0, 0, {})
    assert p.set_champion(None, None, None) is backend
    assert p.spec is None and p.report() == (None, None) and p.predict(STARTS, X) is None
    assert "info.model.condition.v1" not in p.health()


def test_a_model_of_another_feature_spec_is_refused_naming_both() -> None:
    p = InferencePipeline()
    backend, m = loaded("model.fp32.onnx")
    with pytest.raises(InferenceError, match="no champion"):
        p.set_shadow(backend, m)
    p.set_champion(*loaded("model.int8.onnx"), SPEC)
    other = dataclasses.replace(m, version="v2", feature_spec="0123456789abcdef")
    with pytest.raises(InferenceError, match=f"shadow condition v2 was trained on feature spec 0123456789abcdef, not {SPEC.version}"):
        p.set_shadow(backend, other)
    with pytest.raises(InferenceError, match="champion condition v2 was trained on feature spec 0123456789abcdef"):
        p.set_champion(backend, other, SPEC)
    with pytest.raises(InferenceError, match="needs the model's manifest and spec"):
        p.set_champion(backend, m, None)
    assert p.spec == SPEC  # refusals change nothing


def test_rows_of_a_spec_the_champion_no_longer_takes_are_stale_not_errors() -> None:
    p = serving()
    old_spec = dataclasses.replace(SPEC, min_samples=10)
    assert p.predict(STARTS, X, spec=old_spec) is None
    h = p.health()
    assert (h["inference.stale_windows"], h["inference.errors"], h["inference.calls"]) == (6.0, 0.0, 0.0)
    assert p.predict(STARTS, X, spec=SPEC) is not None


def test_health_channels_are_valid_channel_names_and_merge_into_the_probe() -> None:
    p = serving()
    shadow, sm = loaded("model.fp32.onnx")
    p.set_shadow(shadow, sm)
    p.predict(STARTS, X)
    p.count_late(2)
    p.count_dropped(3)
    h = p.health()
    assert set(h) == {
        "inference.calls", "inference.windows", "inference.errors", "inference.p50_ms", "inference.p95_ms",
        "inference.late_windows", "inference.dropped_windows", "inference.stale_windows",
        "shadow.windows", "shadow.agreed", "shadow.errors", "info.model.condition.v1",
    }
    assert (h["inference.late_windows"], h["inference.dropped_windows"], h["info.model.condition.v1"]) == (2, 3, 1)
    for name in h:
        check_channel(name)
    probe = HealthProbe(disk_path=V1, uplink_state=dict, extra=p.health)
    stats = BufferStats(0, 0, 0, 1, None, 1, 7, {"appended.prediction": 12})
    snapshot = dict((c, v) for c, _, v in probe.snapshot(stats, now_us=T0).rows())
    assert snapshot["inference.windows"] == 6 and snapshot["appended.prediction"] == 12
    assert snapshot["info.model.condition.v1"] == 1 and "buffer.readings" in snapshot
    assert "inference.windows" not in dict((c, v) for c, _, v in HealthProbe(
        disk_path=V1, uplink_state=dict).snapshot(stats, now_us=T0).rows())


def test_names_that_are_not_channel_names_are_made_into_ones() -> None:
    assert channel_safe("pred.p.", "bearing wear/µ") == "pred.p.bearing_wear__"
    assert channel_safe("pred.p.", "x" * 57) == "pred.p." + "x" * 57  # 64: the most a channel may have
    assert channel_safe("pred.p.", "x" * 58) is None
    backend, m = loaded("model.int8.onnx")
    odd = dataclasses.replace(m, version="1.0.0+rc1", classes=("ok", "a b", "a/b"))
    p = InferencePipeline()
    p.set_champion(backend, odd, SPEC)
    r = p.predict(STARTS, X)
    assert set(r.channels) - {f"feat.{f}" for f in SPEC.feature_names} == {
        "pred.class", "pred.p.ok", "pred.p.1", "pred.p.2"}  # a b, a/b collide
    assert "info.model.condition.1.0.0_rc1" in p.health()
    assert p.report()[0].classes.keys() <= {"ok", "a b", "a/b"}


def test_the_float64_features_fed_to_the_model_go_out_as_feat_channels_exactly() -> None:
    rows = window_features(device_model("feat-1", start_us=T0, period_us=1_000_000).frame(0, 6 * 60), SPEC)[1]
    assert rows.dtype == np.float64 and len(rows) == 6
    starts = STARTS[: len(rows)]
    p = serving()
    got = columns(p.predict(starts, rows))
    for j, name in enumerate(SPEC.feature_names):
        check_channel(f"feat.{name}")
        assert got[f"feat.{name}"].tobytes() == rows[:, j].tobytes()  # the float64 bits, not float32's
    # ... while the model got them as float32: the same classes as float32 rows give
    np.testing.assert_array_equal(got["pred.class"], columns(serving().predict(starts, rows.astype(np.float32)))[
        "pred.class"])
    assert any(rows[:, j].astype(np.float32).astype(np.float64).tobytes() != rows[:, j].tobytes()
               for j in range(rows.shape[1]))  # the test would not tell float32 from float64 otherwise

    quiet = InferencePipeline(send_features=False)
    quiet.set_champion(*loaded("model.int8.onnx"), SPEC)
    r = quiet.predict(starts, rows)
    assert not any(c.startswith("feat.") for c in r.channels) and "pred.class" in r.channels


def test_feature_channels_too_long_for_a_channel_go_by_index() -> None:
    long = "x" * 54  # "feat." + 54 + ".mean" is 64: fits; ".slope" does not
    names = ("vibration_rms.mean", f"{long}.mean", f"{long}.slope")
    assert feature_channels(names) == ("feat.vibration_rms.mean", f"feat.{long}.mean", "feat.2")
    for c in feature_channels(names):
        check_channel(c)
    spec = FeatureSpec(window_us=60_000_000, channels=("y" * 64,))
    assert feature_channels(spec.feature_names) == tuple(f"feat.{i}" for i in range(len(spec.feature_names)))


class ObservedLock:
    """A lock that says when someone had to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = threading.Event()

    def __enter__(self) -> "ObservedLock":
        if not self._lock.acquire(blocking=False):
            self.waiting.set()
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_swap_waits_for_the_predict_in_flight() -> None:
    entered, release, swapped = threading.Event(), threading.Event(), threading.Event()
    backend, m = loaded("model.int8.onnx")
    slow = Flaky(backend)
    inner = slow.predict

    def blocking(features: np.ndarray) -> np.ndarray:
        entered.set()
        assert release.wait(timeout=30)
        out = inner(features)
        assert not slow.closed  # never closed under a running predict
        return out

    slow.predict = blocking  # type: ignore[method-assign]
    p = InferencePipeline()
    p.set_champion(slow, m, SPEC)
    p._swap = lock = ObservedLock()  # noqa: SLF001 - to see the swap wait, without timing it
    result: list[Readings | None] = []
    predicting = threading.Thread(target=lambda: result.append(p.predict(STARTS, X)))
    predicting.start()
    assert entered.wait(timeout=30)
    new_backend, _ = loaded("model.int8.tflite")

    def swap() -> None:
        old = p.set_champion(new_backend, m, SPEC)
        old.close()
        swapped.set()

    swapping = threading.Thread(target=swap)
    swapping.start()
    assert lock.waiting.wait(timeout=30)  # the swap is blocked on the predict's lock ...
    assert not swapped.is_set() and not slow.closed  # ... so the old backend is still open
    release.set()
    predicting.join(timeout=30)
    swapping.join(timeout=30)
    assert swapped.is_set() and slow.closed and result[0] is not None
    assert p.report()[0].windows == 0  # the new champion's figures start after the swap


def test_an_inference_report_round_trips_through_the_twin() -> None:
    p = serving()
    p.predict(STARTS, X)
    inference, _ = p.report()
    assert InferenceReport.from_dict("inference", inference.to_dict()) == inference
