"""The committed condition model: what the manifest promises, each artifact delivers.

Sizes, honestly: fp32 ONNX 2.4 KB, int8 ONNX 3.4 KB, fp32 TFLite 3.0 KB, int8 TFLite 3.2 KB. At
291 parameters the int8 files are *larger* than fp32 (QDQ nodes, per-channel scales), so the
issue's "int8 at least 3x smaller" is not asserted; the model card explains the figures.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.condition import data
from models.condition.data import CLASSES, SPEC, Split, make_dataset
from models.condition.device_manifest import device_manifest
from models.condition.export import FLOAT_NODES
from models.condition.mlp import TrainConfig, scores, train
from models.condition.runtimes import Runner
from models.condition.tflite_model import MATCH_ATOL
from models.condition.train import build
from protocol import Artifact, Manifest
from protocol.features import FeatureSpec, window_features
from simulators import VibrationSpec, device_model, stuck

V1 = Path(__file__).resolve().parents[2] / "models" / "condition" / "v1"
MANIFEST = json.loads((V1 / "manifest.json").read_text())
ARTIFACTS = list(MANIFEST["artifacts"])
PAIRS = [("model.fp32.onnx", "model.int8.onnx"), ("model.fp32.tflite", "model.int8.tflite")]


@pytest.fixture(scope="module")
def held_out() -> data.Dataset:
    """A small held-out set regenerated from the recipe's seed: 5 unseen devices per class, 300 windows."""
    return make_dataset(MANIFEST["recipe"]["seed"], Split("test", devices_per_class=5, segments_per_device=2))


@pytest.fixture(scope="module")
def runners() -> dict[str, Runner]:
    return {name: Runner(V1 / name) for name in ARTIFACTS}


# --- the manifest --------------------------------------------------------------------------------
def test_every_artifact_is_committed_with_its_sha256_and_size() -> None:
    assert ARTIFACTS == ["model.fp32.onnx", "model.int8.onnx", "model.fp32.tflite", "model.int8.tflite"]
    for name, entry in MANIFEST["artifacts"].items():
        blob = (V1 / name).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == entry["sha256"], f"{name} changed since the manifest was written"
        assert len(blob) == entry["bytes"] < 16 * 1024


def test_the_feature_spec_is_the_one_this_code_computes() -> None:
    spec = MANIFEST["feature_spec"]
    rebuilt = FeatureSpec.from_params(spec["params"])
    # A mismatch means protocol/features.py (or the spec) changed under a trained model: retrain.
    assert rebuilt.version == spec["version"] == SPEC.version
    assert list(rebuilt.feature_names) == spec["names"]
    assert MANIFEST["inputs"][0]["shape"] == ["N", len(spec["names"])]


def test_onnx_graphs_have_the_promised_interface_and_quantization() -> None:
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        model = onnx.load(str(V1 / name))
        onnx.checker.check_model(model, full_check=True)
        assert (model.ir_version, model.opset_import[0].version) == (8, 17)
        assert [i.name for i in model.graph.input] == [MANIFEST["inputs"][0]["name"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in MANIFEST["outputs"]]
        props = {p.key: p.value for p in model.metadata_props}
        assert props["feature_spec_version"] == SPEC.version and props["classes"] == ",".join(CLASSES)
    int8 = onnx.load(str(V1 / "model.int8.onnx"))
    nodes = {n.name: n for n in int8.graph.node}
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) == 2  # standardized, hidden
    assert set(FLOAT_NODES) <= set(nodes)
    assert nodes["standardize_sub"].input[0] == "features"  # the raw input is never quantized
    assert nodes["dense2"].input[1] == "dense2_weight"  # a float weight, not a dequantized one
    types = {t.name: t.data_type for t in int8.graph.initializer}
    assert types["dense1_weight_quantized"] == onnx.TensorProto.INT8


# --- the artifacts run and agree -----------------------------------------------------------------
@pytest.mark.parametrize("name", ARTIFACTS)
def test_each_artifact_reproduces_the_manifest_self_test(runners: dict[str, Runner], name: str) -> None:
    test = MANIFEST["self_test"]
    expected = test["expected"][name]
    probabilities, label = runners[name](np.asarray(test["inputs"], np.float32))
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(test["inputs"]), len(CLASSES))
    assert label.dtype == np.int64
    assert label.tolist() == expected["label"] == test["true_labels"]
    np.testing.assert_allclose(probabilities, np.asarray(expected["probabilities"]), rtol=0, atol=expected["atol"])


@pytest.mark.parametrize(("fp32", "int8"), PAIRS)
def test_int8_accuracy_is_within_one_point_of_fp32(runners: dict[str, Runner], held_out: data.Dataset,
                                                    fp32: str, int8: str) -> None:
    a = scores(held_out.labels, runners[fp32](held_out.features)[1], n_classes=len(CLASSES))
    b = scores(held_out.labels, runners[int8](held_out.features)[1], n_classes=len(CLASSES))
    assert a["n"] == b["n"] == 300
    assert a["accuracy"] >= 0.95 and a["macro_f1"] >= 0.95
    assert abs(a["accuracy"] - b["accuracy"]) <= 0.01
    assert abs(a["macro_f1"] - b["macro_f1"]) <= 0.01


def test_tflite_int8_matches_onnx_int8_on_every_window(runners: dict[str, Runner], held_out: data.Dataset) -> None:
    onnx_p, onnx_label = runners["model.int8.onnx"](held_out.features)
    tfl_p, tfl_label = runners["model.int8.tflite"](held_out.features)
    assert np.array_equal(onnx_label, tfl_label)
    np.testing.assert_allclose(tfl_p, onnx_p, rtol=0, atol=MATCH_ATOL)


def test_tflite_runs_any_batch_size(runners: dict[str, Runner], held_out: data.Dataset) -> None:
    runner = runners["model.int8.tflite"]
    whole = runner(held_out.features)[0]
    for n in (1, 7, 64):
        np.testing.assert_array_equal(runner(held_out.features[:n])[0], whole[:n])


@pytest.mark.parametrize("name", ARTIFACTS)
def test_each_artifact_maps_to_a_device_manifest_whose_self_test_passes(runners: dict[str, Runner], name: str) -> None:
    signed = device_manifest(MANIFEST, name, created_at=datetime(2026, 1, 2, tzinfo=timezone.utc))
    assert Manifest.from_json(signed.to_json()) == signed
    assert signed.feature_spec == SPEC.version and signed.runtime.model == name
    assert signed.artifact(name) == Artifact.of(name, (V1 / name).read_bytes())
    inputs = np.asarray([s.inputs for s in signed.self_test.samples], np.float32)
    probabilities, _ = runners[name](inputs)
    expected = np.asarray([s.expected for s in signed.self_test.samples])
    assert np.abs(probabilities - expected).max() <= signed.self_test.tolerance
    with pytest.raises(ValueError, match="'model.onnx' is not in condition v1"):
        device_manifest(MANIFEST, "model.onnx", created_at=datetime(2026, 1, 2, tzinfo=timezone.utc))


# --- readings in, condition out --------------------------------------------------------------------
def test_readings_to_prediction_through_the_shared_feature_code(runners: dict[str, Runner]) -> None:
    t0, minute = data.START_US, 60
    spec = FeatureSpec.from_params(MANIFEST["feature_spec"]["params"])
    healthy = device_model("field-7", start_us=t0, period_us=1_000_000).frame(3 * 86_400, 10 * minute)
    worn_model = device_model("field-8", start_us=t0, period_us=1_000_000, wear_rate=1.5)
    late = int(VibrationSpec(wear_rate_per_day=1.5).onset_s(worn_model.seed)) + 3 * 86_400  # wear ~ 8.9 mm/s
    worn = worn_model.frame(late - late % minute, 10 * minute)
    frozen = stuck(healthy, "temperature", from_us=healthy.t_min)
    for readings, want in ((healthy, "normal"), (worn, "bearing_wear"), (frozen, "sensor_fault")):
        _, features, _ = window_features(readings, spec)
        assert len(features) == 10
        for name in ("model.int8.onnx", "model.int8.tflite"):
            labels = runners[name](features)[1]
            assert [CLASSES[i] for i in labels] == [want] * 10, name


# --- the recipe is deterministic -----------------------------------------------------------------
def test_recipe_data_and_training_are_deterministic() -> None:
    split = Split("train", devices_per_class=2, segments_per_device=1)
    a, b = make_dataset(0, split), make_dataset(0, split)
    assert a.features.tobytes() == b.features.tobytes() and a.devices == b.devices
    assert make_dataset(1, split).features.tobytes() != a.features.tobytes()
    config = TrainConfig(steps=50)
    wa, _ = train(a.features, a.labels, n_classes=len(CLASSES), config=config)
    wb, _ = train(b.features, b.labels, n_classes=len(CLASSES), config=config)
    assert all(np.array_equal(getattr(wa, f), getattr(wb, f)) for f in ("mean", "scale", "w1", "b1", "w2", "b2"))


def test_the_recipe_rebuilds_a_model_as_good_as_the_committed_one(tmp_path: Path) -> None:
    manifest = build(tmp_path / "v1", seed=MANIFEST["recipe"]["seed"], version="v1", tflite=False, log=lambda _: None)
    assert manifest["feature_spec"] == MANIFEST["feature_spec"]
    assert manifest["recipe"]["train"] == MANIFEST["recipe"]["train"]
    for name in ("model.fp32.onnx", "model.int8.onnx"):
        got, committed = manifest["metrics"][name], MANIFEST["metrics"][name]
        assert abs(got["accuracy"] - committed["accuracy"]) <= 0.005, name
        labels = Runner(tmp_path / "v1" / name)(np.asarray(MANIFEST["self_test"]["inputs"], np.float32))[1]
        assert labels.tolist() == MANIFEST["self_test"]["true_labels"], name


def test_the_committed_tflite_models_are_what_the_converter_writes() -> None:
    pytest.importorskip("tflite", reason="the converter needs the models-tflite extra (pip install -e '.[models-tflite]')")
    from models.condition.tflite_model import build_tflite, read_onnx

    for onnx_name, tflite_name in (("model.fp32.onnx", "model.fp32.tflite"), ("model.int8.onnx", "model.int8.tflite")):
        precision = onnx_name.split(".")[1]
        blob = build_tflite(read_onnx(V1 / onnx_name), description=f"edgeloop condition v1 {precision} (from {onnx_name})")
        assert blob == (V1 / tflite_name).read_bytes()
