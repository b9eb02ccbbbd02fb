"""The retraining pipeline end to end on a temp hub data dir: lake → features → dataset → … → rollout.

The fleet is the condition recipe's simulator (models/condition/data.py), written into the lake
as readings. In the drifted case the cohort's vibration sensors read `GAIN` times the true value
(a new sensor model with another calibration): the committed v1 champion calls healthy machines
worn, and a model retrained on the cohort's labelled windows wins on held-out devices. Without
the drift the champion stays better and nothing is registered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from hub.features import FeatureRegistry, FeatureView, materialize
from hub.pipelines import PipelineRunner, RetrainDeps, Trigger, retrain_pipeline, start_retraining
from hub.registry import Registry
from hub.rollouts import Rollouts
from hub.storage.lake import SCHEMA, Lake
from models.condition.data import CLASSES, SEGMENT_WINDOWS, SPEC, device_segments
from protocol import Manifest, signing

V1 = Path(__file__).resolve().parents[3] / "models" / "condition" / "v1"
DEVICES_PER_CLASS, SEGMENTS = 8, 2
GAIN = 3.0
COHORT = "site=north"
FAST = {"hidden": 8, "steps": 300}  # the recipe trains 16 wide for 1500 steps; a test needs less
W = SPEC.window_us


def write_fleet(data_dir: Path, *, gain: float) -> pa.Table:
    """The model's channels of 8 devices per class into the lake (vibration x gain); each window's label."""
    cols: dict[str, list] = {k: [] for k in ("device", "channel", "ts", "value")}
    labels: dict[str, list] = {k: [] for k in ("tenant", "device", "ts_us", "label")}
    for label, kind in enumerate(CLASSES):
        for i in range(DEVICES_PER_CLASS):
            device, segments = device_segments(0, "train", label=label, index=i, segments=SEGMENTS)
            for r in segments:
                names = np.array(r.channels)[r.channel]
                keep = np.isin(names, SPEC.channels)  # the simulator adds humidity and power_w
                value = np.where(names == "vibration_rms", r.value * gain, r.value)
                cols["device"] += [device] * int(keep.sum())
                cols["channel"] += names[keep].tolist()
                cols["ts"] += r.ts_us[keep].tolist()
                cols["value"] += value[keep].tolist()
                ends = r.t_min + W * np.arange(1, SEGMENT_WINDOWS + 1)  # each window's end
                labels["tenant"] += ["acme"] * len(ends)
                labels["device"] += [device] * len(ends)
                labels["ts_us"] += ends.tolist()
                labels["label"] += [kind] * len(ends)
    n = len(cols["ts"])
    ts = pa.array(cols["ts"], pa.int64()).cast(SCHEMA.field("ts").type)
    Lake(data_dir / "lake").append(pa.Table.from_arrays([
        pa.array(["acme"] * n, pa.string()), pa.array(cols["device"], pa.string()),
        pa.array(["telemetry"] * n, pa.string()), pa.array(cols["channel"], pa.string()), ts,
        pa.array(cols["value"], pa.float64()), pa.array([0] * n, pa.int64()), pa.array(range(n), pa.int64()), ts,
    ], schema=SCHEMA))
    return pa.table({"tenant": pa.array(labels["tenant"], pa.string()), "device": pa.array(labels["device"]),
                     "ts_us": pa.array(labels["ts_us"], pa.int64()), "label": pa.array(labels["label"])})


class Hub:
    """What the hub holds for retraining: registry (v1 as champion 1.0.0), rollouts, runner, labels."""

    def __init__(self, data_dir: Path, *, gain: float) -> None:
        self.data_dir = data_dir
        self.labels = write_fleet(data_dir, gain=gain)
        with FeatureRegistry(data_dir) as features:
            features.register(FeatureView("condition", SPEC, owner="models/condition"))
        materialize(data_dir, FeatureView("condition", SPEC, owner="models/condition"))
        self.registry = Registry(data_dir)
        self.registry.register(V1, version="1.0.0")
        self.registry.sign("condition", "1.0.0")
        self.registry.promote("condition", "1.0.0")
        self.rollouts = Rollouts(data_dir, self.registry)
        self.label_calls: list[Trigger] = []
        self.runner = self.open_runner()

    def open_runner(self) -> PipelineRunner:
        deps = RetrainDeps(self.data_dir, self.registry, self.rollouts, self.cohort_labels)
        return PipelineRunner(self.data_dir, [retrain_pipeline(deps)])

    def cohort_labels(self, trigger: Trigger) -> tuple[pa.Table, str]:
        self.label_calls.append(trigger)
        return self.labels, f"simulator windows of cohort {trigger.cohort}"

    def close(self) -> None:
        self.runner.close()
        self.rollouts.close()
        self.registry.close()


@pytest.fixture
def drifted(tmp_path: Path) -> Iterator[Hub]:
    hub = Hub(tmp_path, gain=GAIN)
    yield hub
    hub.close()


@pytest.fixture
def steady(tmp_path: Path) -> Iterator[Hub]:
    hub = Hub(tmp_path, gain=1.0)
    yield hub
    hub.close()


TRIGGER = Trigger(COHORT, "condition", "vibration_rms.mean drifted past its threshold",
                  {"feature": "vibration_rms.mean", "psi": 1.7, "window": "2023-11-15T00:00Z/P1D"})


def steps(run: dict) -> dict[str, dict]:
    return {s["name"]: s for s in run["steps"]}


def test_a_drifted_cohort_gets_a_signed_challenger_in_a_staged_rollout(drifted):
    rid = start_retraining(drifted.runner, TRIGGER, **FAST, rollout={"stages": [{"percent": 10, "bake_s": 60},
                                                                       {"percent": 100, "bake_s": 60}]})
    assert start_retraining(drifted.runner, TRIGGER) == rid  # one trigger, one run
    run = drifted.runner.run(rid)
    assert run["state"] == "done", run["error"]
    s = steps(run)
    assert [n for n in s] == ["dataset", "train", "evaluate", "quantize", "register", "sign", "approval", "rollout"]
    assert s["approval"]["status"] == "skipped" and all(
        x["status"] == "done" for n, x in s.items() if n != "approval")

    dataset = s["dataset"]["outputs"]
    assert dataset["rows"] == {"train": 360, "holdout": 120, "dropped_null_features": 0}
    assert dataset["classes"]["holdout"] == {c: 40 for c in CLASSES}
    assert dataset["dataset"]["label_source"] == "simulator windows of cohort site=north"
    train_devices = {f"acme/{d}" for d in drifted.labels.column("device").to_pylist()} - set(dataset["holdout_devices"])
    assert len(train_devices) == dataset["train_devices"] == 18  # disjoint by construction: a set difference

    assert s["train"]["outputs"]["config"] == {"hidden": 8, "steps": 300, "learning_rate": 0.01, "l2": 1e-4, "seed": 0}
    evaluation = s["evaluate"]["outputs"]
    champion, candidate = evaluation["champion"]["scores"], evaluation["candidate"]["scores"]
    assert evaluation["champion"]["version"] == "1.0.0"
    assert champion["macro_f1"] < 0.6 < 0.85 < candidate["macro_f1"], evaluation  # v1 calls the cohort worn
    assert evaluation["improvement"] == pytest.approx(candidate["macro_f1"] - champion["macro_f1"], abs=1e-6)
    assert s["quantize"]["outputs"]["metrics"]["model.int8.onnx"]["macro_f1"] > 0.8

    version = s["register"]["outputs"]["version"]
    assert version == "1.1.0"
    got = drifted.registry.get("condition", version)
    assert got["metadata"]["pipeline_run"] == rid and got["metadata"]["trigger"]["cohort"] == COHORT
    assert got["metadata"]["training_data"]["dataset"] == dataset["dataset"]
    assert got["metadata"]["metrics"]["holdout"] == candidate
    assert got["metadata"]["metrics"]["champion"]["scores"] == champion
    assert [v["artifact"] for v in got["variants"]] == ["model.int8.onnx", "model.fp32.onnx"]
    trust = signing.trusted_keys(signing.public_key_from_pem(k["pem"].encode())
                                 for k in drifted.registry.keys.public_keys())
    for v in got["variants"]:  # signed with the registry's key: a device would take it
        assert v["signed"] and v["manifest"]["version"] == version
        signing.verify(Manifest.from_dict(v["manifest"]), signing.Signature.from_json(json.dumps(v["signature"])),
                       trust)
    assert drifted.registry.alias("condition", "challenger", COHORT) == version
    assert drifted.registry.alias("condition", "champion", "*") == "1.0.0"

    rollout = s["rollout"]["outputs"]
    status = drifted.rollouts.status(rollout["rollout_id"])
    assert (status["version"], status["champion"], status["cohort"]) == (version, "1.0.0", COHORT)
    assert status["state"] in ("pending", "canary") and status["stage_count"] == 2
    assert len(drifted.label_calls) == 1


def test_a_candidate_that_cannot_beat_the_champion_is_neither_registered_nor_rolled_out(steady):
    rid = start_retraining(steady.runner, TRIGGER, **FAST)
    run = steady.runner.run(rid)
    assert run["state"] == "failed"
    s = steps(run)
    assert {n: x["status"] for n, x in s.items()} == {
        "dataset": "done", "train": "done", "evaluate": "failed", "quantize": "pending", "register": "pending",
        "sign": "pending", "approval": "pending", "rollout": "pending"}
    assert "does not beat champion condition 1.0.0" in s["evaluate"]["error"]
    assert "nothing is registered or rolled out" in run["error"]
    evaluation = s["evaluate"]["outputs"]  # both scores kept, though the step failed
    assert evaluation["champion"]["scores"]["macro_f1"] > 0.99  # the undrifted cohort leaves nothing to win
    assert evaluation["improvement"] < evaluation["min_improvement"] == 0.01
    assert [v["version"] for v in steady.registry.list("condition")] == ["1.0.0"]
    assert steady.registry.alias("condition", "challenger", COHORT) is None
    assert steady.rollouts.list() == []


def test_approval_holds_the_rollout_and_a_failed_rollout_resumes_without_retraining(drifted):
    # Another rollout of the model is under way: the pipeline's own cannot start yet.
    drifted.registry.register(V1, version="0.9.0")
    drifted.registry.sign("condition", "0.9.0")
    from hub.rollouts import RolloutPlan

    busy = drifted.rollouts.start(RolloutPlan("condition", "0.9.0"))["id"]
    rid = start_retraining(drifted.runner, TRIGGER, **FAST, require_approval=True)
    run = drifted.runner.run(rid)
    assert run["state"] == "awaiting_approval" and steps(run)["rollout"]["status"] == "pending"
    assert drifted.registry.alias("condition", "challenger", COHORT) == "1.1.0"  # registered, signed, waiting
    drifted.runner.close()
    drifted.runner = drifted.open_runner()  # a hub restart while it waits

    drifted.runner.approve(rid, "alice")
    run = drifted.runner.run(rid)
    assert run["state"] == "failed" and "is pending; let it finish or abort it" in run["error"]
    drifted.rollouts.abort(busy)
    run = drifted.runner.resume(rid)
    assert run["state"] == "done"
    s = steps(run)
    assert s["approval"]["outputs"]["approved_by"] == "alice"
    assert {n: x["attempts"] for n, x in s.items()} == {
        "dataset": 1, "train": 1, "evaluate": 1, "quantize": 1, "register": 1, "sign": 1, "approval": 1,
        "rollout": 2}
    assert drifted.rollouts.status(s["rollout"]["outputs"]["rollout_id"])["version"] == "1.1.0"
    assert len(drifted.label_calls) == 1


def test_a_champion_changed_while_waiting_for_approval_stops_the_rollout(drifted):
    rid = start_retraining(drifted.runner, TRIGGER, **FAST, require_approval=True)
    assert drifted.runner.run(rid)["state"] == "awaiting_approval"
    drifted.registry.register(V1, version="1.0.1")
    drifted.registry.sign("condition", "1.0.1")
    drifted.registry.promote("condition", "1.0.1", cohort=COHORT)
    drifted.runner.approve(rid, "alice")
    run = drifted.runner.run(rid)
    assert run["state"] == "failed"
    assert "is 1.0.1 now, not 1.0.0, which the candidate 1.1.0 was evaluated against" in run["error"]
    assert drifted.rollouts.list() == []


def test_the_same_data_gives_the_same_split_scores_and_model_bytes(tmp_path):
    outputs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        hub = Hub(tmp_path / name, gain=GAIN)
        try:
            run = hub.runner.run(start_retraining(hub.runner, TRIGGER, **FAST))
            s = steps(run)
            # (The dataset's version differs: its lineage names each data dir's own materialization run.)
            outputs.append((s["dataset"]["outputs"]["dataset"]["sha256"], s["dataset"]["outputs"]["holdout_devices"],
                            s["evaluate"]["outputs"], s["quantize"]["outputs"]["artifacts"]))
        finally:
            hub.close()
    assert outputs[0] == outputs[1]


def test_triggers_and_params_are_checked_and_a_drift_trigger_keys_its_run(drifted):
    class DriftTrigger:  # the shape of hub.drift's: id, model, cohort, evidence
        id = 7
        model = "condition"
        cohort = "site = north"
        evidence = {"reasons": ["vibration_rms.mean psi 1.7"], "checks": [3, 4, 5]}

    t = Trigger.from_drift(DriftTrigger)
    assert (t.cohort, t.reason, t.run_key) == (COHORT, "vibration_rms.mean psi 1.7", "drift:condition:7")
    rid = start_retraining(drifted.runner, t, **FAST)
    assert start_retraining(drifted.runner, Trigger.from_drift(DriftTrigger), seed=3) == rid
    assert drifted.runner.get(rid)["params"]["trigger"]["evidence"]["checks"] == [3, 4, 5]
    assert TRIGGER.run_key == Trigger(COHORT, "condition", TRIGGER.reason, dict(TRIGGER.evidence)).run_key
    assert TRIGGER.run_key.startswith("trigger:")

    from hub.pipelines import PipelineDefinitionError

    with pytest.raises(PipelineDefinitionError, match="only 'condition'"):
        Trigger(COHORT, "other", "drift", {})
    with pytest.raises(PipelineDefinitionError, match="JSON-able"):
        Trigger(COHORT, "condition", "drift", {"x": object()})
    for bad, match in (({"holdout_fraction": 1.0}, "holdout_fraction"), ({"metric": "auc"}, "'auc'"),
                       ({"steps": 0}, "steps 0"), ({"semantics": "asof"}, "'asof'"),
                       ({"rollout": {"stages": []}}, "stages")):
        with pytest.raises(PipelineDefinitionError, match=match):
            start_retraining(drifted.runner, Trigger(COHORT, "condition", "drift", {"n": 1}), **bad)
    assert [r["id"] for r in drifted.runner.list()] == [rid]  # none of those started a run
