"""The condition model's retraining pipeline: a drift trigger in, a challenger in a staged rollout out.

    dataset ─▶ train ─▶ evaluate ─▶ quantize ─▶ register ─▶ sign ─▶ approval ─▶ rollout
                                                                   (only with require_approval)

    dataset    labels (the `labels` hook, for the trigger) + the `condition` feature view →
               hub.features.build_dataset (a versioned snapshot with lineage); rows split train /
               holdout by device (no device on both sides), stratified by each device's majority label
    train      models.condition.mlp on the train rows, seeded; weights.npz in the step's folder
    evaluate   the candidate's fp32 ONNX and the cohort's champion's fp32 ONNX (registry alias
               `champion`, resolved as a rollout resolves it), both in onnxruntime on the holdout;
               the candidate must beat the champion's `metric` by `min_improvement`, else the step
               fails (StepError, both scores in its outputs) and nothing is registered
    quantize   fp32 ONNX + static int8 QDQ (models.condition.export), calibrated on train rows; a
               recipe folder (manifest.json with self-test) the registry takes. No TFLite: it
               would add the `models-tflite` extra to the hub for a variant devices can get later
    register   the next free `1.<n>.0` of the model, provenance: run, trigger, dataset, metrics
    sign       every variant with the registry's active key; alias `challenger` for the cohort
    rollout    Rollouts.start(RolloutPlan(...)) to the cohort; the plan's stages and gates from params;
               refused (StepError) if the cohort's champion changed since `evaluate`

Registering and rolling out are effects outside the run's folder: each step looks for its own
earlier effect (a version whose provenance names this run, a rollout of that version) before
making it again, so a crash between the effect and the step's record does not make two.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..registry import normalize_cohort, parse_cohort
from .dag import Pipeline, Step, StepContext
from .errors import PipelineDefinitionError, StepError

RETRAIN = "retrain-condition"
MODEL = "condition"
VIEW = "condition"
METRICS = ("macro_f1", "accuracy")
FP32, INT8 = "model.fp32.onnx", "model.int8.onnx"
CALIBRATION_ROWS = 300  # at most this many train rows calibrate int8 (the recipe uses 300)
SELF_TEST_PER_CLASS = 2
TOLERANCE = {FP32: 1e-5, INT8: 0.02}  # the recipe's (models/condition/train.py), for the same reasons

REPLAYED = "replayed"  # a drift reference column: rows replayed from the champion, not the cohort's own
LabelsHook = Callable[["Trigger"], tuple[pa.Table, str]]
"""(tenant, device, ts_us, label) rows for the trigger's cohort, and a sentence saying where they came from."""


@dataclass(frozen=True)
class Trigger:
    """What starts a retraining: drift past its threshold for `cohort` (debounced by the caller)."""

    cohort: str
    model: str
    reason: str
    evidence: Mapping[str, Any]
    _: KW_ONLY
    key: str | None = None  # the trigger's identity; default: a hash of everything above

    def __post_init__(self) -> None:
        if self.model != MODEL:
            raise PipelineDefinitionError(f"Trigger model {self.model!r}: only {MODEL!r} has a retraining recipe.")
        object.__setattr__(self, "cohort", normalize_cohort(self.cohort))
        try:
            json.dumps(dict(self.evidence), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise PipelineDefinitionError(f"Trigger evidence must be JSON-able: {exc}.") from exc

    @property
    def run_key(self) -> str:
        if self.key is not None:
            return self.key
        body = json.dumps([self.model, self.cohort, self.reason, dict(self.evidence)], sort_keys=True)
        return "trigger:" + hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"cohort": self.cohort, "model": self.model, "reason": self.reason,
                "evidence": dict(self.evidence), "key": self.run_key}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Trigger":
        return cls(d["cohort"], d["model"], d["reason"], d["evidence"], key=d.get("key"))

    @classmethod
    def from_drift(cls, t: Any) -> "Trigger":
        """From a hub.drift DriftTrigger (id, model, cohort, evidence): keyed by its id, so handing
        the same trigger on twice (the monitor's at-least-once) starts one run."""
        reasons = t.evidence.get("reasons") if isinstance(t.evidence, Mapping) else None
        reason = "; ".join(map(str, reasons)) if isinstance(reasons, list) and reasons else "drift past its threshold"
        return cls(t.cohort, t.model, reason, dict(t.evidence), key=f"drift:{t.model}:{t.id}")


def retrain_params(trigger: Trigger, *, holdout_fraction: float = 0.25, min_improvement: float = 0.01,
                   metric: str = "macro_f1", seed: int = 0, hidden: int = 16, steps: int = 1500,
                   require_approval: bool = False, semantics: str = "event", replay: bool = False,
                   replay_ratio: float = 1.0, rollout: Mapping[str, Any] | None = None) -> dict:
    """A run's params, checked. `rollout`: RolloutPlan fields other than model, version and cohort.

    `hidden`, `steps`: the MLP's width and Adam steps, the recipe's by default (TrainConfig).

    `replay`: train on the champion's drift reference (its own training windows, with labels)
    as well as the new labels, so classes the cohort's labels lack are not forgotten; a random
    `replay_ratio` x as many rows as the new labels gave (seeded), not all of them.

    `semantics="event"`: a label says what a window *was*, so it joins the window its readings
    made, however late they reached the hub ("arrival" would drop late windows from training).
    """
    from ..rollouts import PlanError, RolloutPlan

    if not 0 < holdout_fraction < 1:
        raise PipelineDefinitionError(f"holdout_fraction {holdout_fraction!r} must be between 0 and 1.")
    if metric not in METRICS:
        raise PipelineDefinitionError(f"metric {metric!r} is not one of {METRICS!r}.")
    if not 0 <= min_improvement < 1:
        raise PipelineDefinitionError(f"min_improvement {min_improvement!r} must be from 0 to 1.")
    if isinstance(replay_ratio, bool) or not isinstance(replay_ratio, (int, float)) or not 0 <= replay_ratio <= 100:
        raise PipelineDefinitionError(f"replay_ratio {replay_ratio!r} must be a number from 0 to 100.")
    if semantics not in ("event", "arrival"):
        raise PipelineDefinitionError(f"semantics {semantics!r} is not 'event' or 'arrival'.")
    for name, value in (("seed", seed), ("hidden", hidden), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
            raise PipelineDefinitionError(f"{name} {value!r} must be a whole number"
                                          f"{' >= 0' if name == 'seed' else ' >= 1'}.")
    plan = dict(rollout or {})
    try:  # fail now, not after training; the rollout step builds the plan again with the real version
        RolloutPlan.from_dict({**plan, "model": MODEL, "version": "0.0.0", "cohort": trigger.cohort})
    except PlanError as exc:
        raise PipelineDefinitionError(f"The rollout params are not a plan: {exc}") from exc
    return {"trigger": trigger.to_dict(), "holdout_fraction": holdout_fraction, "min_improvement": min_improvement,
            "metric": metric, "seed": seed, "hidden": hidden, "steps": steps,
            "require_approval": bool(require_approval), "semantics": semantics, "replay": bool(replay),
            "replay_ratio": float(replay_ratio),
            "rollout": plan}


def start_retraining(runner: Any, trigger: Trigger, **params: Any) -> str:
    """Start (or find: same trigger, same run) the retraining run of `trigger`; its id. Nothing runs yet."""
    return runner.start(RETRAIN, retrain_params(trigger, **params), key=trigger.run_key)


@dataclass(frozen=True)
class RetrainDeps:
    """What the steps use: the hub's data dir, model registry and rollouts, and where labels come from."""

    data_dir: Path
    registry: Any  # hub.registry.Registry
    rollouts: Any  # hub.rollouts.Rollouts
    labels: LabelsHook


def retrain_pipeline(deps: RetrainDeps) -> Pipeline:
    s = _Steps(deps)
    return Pipeline(RETRAIN, (
        Step("dataset", s.dataset, retries=1),
        Step("train", s.train, deps=("dataset",)),
        Step("evaluate", s.evaluate, deps=("dataset", "train")),
        Step("quantize", s.quantize, deps=("dataset", "train", "evaluate")),
        Step("register", s.register, deps=("dataset", "train", "evaluate", "quantize"), retries=2),
        Step("sign", s.sign, deps=("register",), retries=1),
        Step("approval", approval=True, deps=("sign",), when=lambda p: bool(p["require_approval"])),
        Step("rollout", s.rollout, deps=("evaluate", "sign", "approval")),
    ))


class _Steps:
    def __init__(self, deps: RetrainDeps) -> None:
        self.deps = deps

    def dataset(self, ctx: StepContext, inputs: dict) -> dict:
        from models.condition.data import SPEC

        from ..features import FeatureRegistry, build_dataset, materialize

        trigger = Trigger.from_dict(ctx.params["trigger"])
        labels, source = self.deps.labels(trigger)
        if labels.num_rows == 0:
            raise StepError(f"No labels for cohort {trigger.cohort!r}: {source}. Post them to /v1/labels, then resume.")
        with FeatureRegistry(self.deps.data_dir) as features:
            view = features.get(VIEW).view
            if view.version != SPEC.version:
                raise StepError(f"Feature view {VIEW!r} is at version {view.version}, but the {MODEL} recipe's "
                                f"feature spec is {SPEC.version}; register the recipe's view first.")
        # A fresh run over the labels' span, so windows that arrived since the last run count too.
        ts = labels.column("ts_us").to_numpy()
        run = materialize(self.deps.data_dir, view, since_us=int(ts.min()) - view.spec.window_us,
                          until_us=int(ts.max()) + 1)
        with FeatureRegistry(self.deps.data_dir) as features:
            record = build_dataset(self.deps.data_dir, view, labels, name=f"{MODEL}-retrain",
                                   semantics=ctx.params["semantics"], label_source=source, registry=features)
        table = _table(self.deps.data_dir, record["name"], record["version"])
        x, y, devices = _matrix(table)
        holdout = _holdout_devices(devices, y, ctx.params["holdout_fraction"], ctx.params["seed"])
        mask = np.array([d in holdout for d in devices], bool)
        if mask.all() or not mask.any():
            raise StepError(f"Dataset {record['name']} {record['version']} has {len(set(devices))} labelled device(s):"
                            " too few to keep train and holdout devices apart.")
        counts = {"train": Counter(y[~mask].tolist()), "holdout": Counter(y[mask].tolist())}
        return {
            "dataset": {k: record[k] for k in ("name", "version", "label_rows", "null_feature_rows", "view",
                                               "view_version", "semantics", "label_source", "sha256")},
            "rows": {"train": int((~mask).sum()), "holdout": int(mask.sum()),
                     "dropped_null_features": int(record["label_rows"] - len(y))},
            "classes": {split: {_classes()[c]: n for c, n in sorted(cnt.items())} for split, cnt in counts.items()},
            "materialized": {"run_id": run["run_id"], "lake_version": run["lake_version"],
                             "rows_written": run["rows_written"]},
            "holdout_devices": sorted(holdout),
            "train_devices": len(set(devices) - holdout),
        }

    def train(self, ctx: StepContext, inputs: dict) -> dict:
        from models.condition.mlp import TrainConfig, scores, train

        x, y, _, _ = _split(self.deps.data_dir, inputs["dataset"])
        replayed = 0
        if ctx.params["replay"]:
            # The champion's own training windows go in too, so the new model keeps what the old one
            # knew (classes the cohort's new labels lack) while it learns the cohort's new normal.
            trigger = Trigger.from_dict(ctx.params["trigger"])
            champion = self.deps.registry.alias_for(MODEL, "champion", parse_cohort(trigger.cohort))
            if champion is not None:
                rx, ry = _reference_rows(self.deps.data_dir, self.deps.registry, champion)
                # At most replay_ratio x the cohort's rows, so the new labels are not outvoted by
                # old windows that look the same (a mild wear window of old = the cohort's new normal).
                take = min(len(ry), int(round(ctx.params["replay_ratio"] * len(y))))
                pick = np.sort(np.random.default_rng(ctx.params["seed"]).choice(len(ry), take, replace=False))
                x, y, replayed = np.concatenate([x, rx[pick]]), np.concatenate([y, ry[pick]]), take
        config = TrainConfig(hidden=ctx.params["hidden"], steps=ctx.params["steps"], seed=ctx.params["seed"])
        weights, losses = train(x, y, n_classes=len(_classes()), config=config)
        path = ctx.workdir / "weights.npz"
        np.savez(path, mean=weights.mean, scale=weights.scale, w1=weights.w1, b1=weights.b1, w2=weights.w2,
                 b2=weights.b2)
        from models.condition.mlp import predict_proba

        fit = scores(y, predict_proba(weights, x).argmax(1), n_classes=len(_classes()))
        return {"weights": str(path), "config": vars(config), "loss": {"first": losses[0], "last": losses[-1]},
                "train_metrics": {k: fit[k] for k in ("accuracy", "macro_f1", "n")}, "replayed_rows": replayed}

    def evaluate(self, ctx: StepContext, inputs: dict) -> dict:
        from models.condition.mlp import scores

        trigger = Trigger.from_dict(ctx.params["trigger"])
        registry = self.deps.registry
        champion = registry.alias_for(MODEL, "champion", parse_cohort(trigger.cohort))
        if champion is None:
            raise StepError(f"{MODEL} has no champion for cohort {trigger.cohort!r} to beat; promote one first.")
        record = registry.get(MODEL, champion)
        if record["feature_spec"] != inputs["dataset"]["dataset"]["view_version"]:
            raise StepError(f"Champion {MODEL} {champion} takes feature spec {record['feature_spec']}, the dataset has "
                            f"{inputs['dataset']['dataset']['view_version']}: their scores would not compare.")
        onnx_variants = [v["artifact"] for v in record["variants"] if v["format"] == "onnx"]
        if not onnx_variants:
            raise StepError(f"Champion {MODEL} {champion} has no ONNX variant to evaluate.")
        artifact = FP32 if FP32 in onnx_variants else onnx_variants[0]
        _, _, x, y = _split(self.deps.data_dir, inputs["dataset"])
        n = len(_classes())
        champ = scores(y, _onnx_labels(registry.artifact_path(MODEL, champion, artifact).read_bytes(), x), n_classes=n)
        cand = scores(y, _onnx_labels(_fp32_bytes(_load_weights(inputs["train"]["weights"]), ctx.run_id), x),
                      n_classes=n)
        metric, margin = ctx.params["metric"], ctx.params["min_improvement"]
        outputs = {"metric": metric, "min_improvement": margin, "holdout_rows": int(len(y)),
                   "champion": {"version": champion, "artifact": artifact, "scores": champ},
                   "candidate": {"artifact": FP32, "scores": cand},
                   "improvement": round(cand[metric] - champ[metric], 6)}
        if not cand[metric] >= champ[metric] + margin:
            raise StepError(
                f"The candidate's holdout {metric} {cand[metric]:.4f} does not beat champion {MODEL} {champion}'s "
                f"{champ[metric]:.4f} by min_improvement {margin:g}; nothing is registered or rolled out.",
                outputs=outputs)
        return outputs

    def quantize(self, ctx: StepContext, inputs: dict) -> dict:
        from models.condition.data import SPEC
        from models.condition.export import FLOAT_NODES, INPUT, OPSET, OUTPUTS, quantize_int8
        from models.condition.mlp import scores
        from models.condition.runtimes import Runner

        x_train, _, x_hold, y_hold = _split(self.deps.data_dir, inputs["dataset"])
        out = ctx.workdir / "recipe"
        out.mkdir(exist_ok=True)
        (out / FP32).write_bytes(_fp32_bytes(_load_weights(inputs["train"]["weights"]), ctx.run_id))
        calibration = x_train[::max(1, len(x_train) // CALIBRATION_ROWS)]
        quantize_int8(out / FP32, out / INT8, calibration=calibration)
        runners = {a: Runner(out / a) for a in (FP32, INT8)}
        outs = {a: r(x_hold) for a, r in runners.items()}
        n = len(_classes())
        metrics = {a: scores(y_hold, outs[a][1], n_classes=n) for a in (FP32, INT8)}
        deviation = {"from": FP32, "max_abs": float(np.abs(outs[INT8][0] - outs[FP32][0]).max()),
                     "label_disagreements": int((outs[INT8][1] != outs[FP32][1]).sum())}
        rows = _self_test_rows(y_hold, outs)
        sample = x_hold[rows].astype(np.float32)
        expected = {}
        for a, runner in runners.items():
            p, label = runner(sample)
            expected[a] = {"probabilities": p.astype(float).tolist(), "label": label.astype(int).tolist(),
                           "atol": TOLERANCE[a]}
        onnx_entry = {"format": "onnx", "opset": OPSET, "runtime": "onnxruntime"}
        recipe = {
            "name": MODEL, "version": ctx.run_id,
            "task": "classify one window of vibration_rms and temperature readings",
            "classes": list(_classes()),
            "feature_spec": {"version": SPEC.version, "params": SPEC.params(), "names": list(SPEC.feature_names)},
            "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["N", len(SPEC.feature_names)]}],
            "outputs": [{"name": OUTPUTS[0], "dtype": "float32", "shape": ["N", n]},
                        {"name": OUTPUTS[1], "dtype": "int64", "shape": ["N"]}],
            "artifacts": {
                FP32: {**onnx_entry, "precision": "fp32"},
                INT8: {**onnx_entry, "precision": "int8", "quantization": {
                    "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
                    "calibration": f"MinMax over {len(calibration)} training windows",
                    "float_nodes": list(FLOAT_NODES)}},
            },
            "metrics": {"held_out": f"{len(y_hold)} windows of the pipeline's holdout devices",
                        **metrics, "deviation": {INT8: deviation}},
            "self_test": {"inputs": sample.astype(float).tolist(), "true_labels": y_hold[rows].astype(int).tolist(),
                          "expected": expected,
                          "note": "Feed `inputs` as float32 [N, F]; labels must match exactly, "
                                  "probabilities within atol."},
            "recipe": {"command": f"hub.pipelines {RETRAIN} run {ctx.run_id}", "seed": ctx.params["seed"],
                       "train": {"dataset": inputs["dataset"]["dataset"], "rows": inputs["dataset"]["rows"]},
                       "mlp": inputs["train"]["config"], "tflite": "not built by the pipeline"},
        }
        for a in (FP32, INT8):
            data = (out / a).read_bytes()
            recipe["artifacts"][a].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        (out / "manifest.json").write_text(json.dumps(recipe, indent=2) + "\n")
        return {"recipe_dir": str(out), "artifacts": {a: recipe["artifacts"][a]["sha256"] for a in (FP32, INT8)},
                "metrics": {a: {k: metrics[a][k] for k in ("accuracy", "macro_f1", "n")} for a in metrics},
                "deviation": deviation, "tflite": "skipped"}

    def register(self, ctx: StepContext, inputs: dict) -> dict:
        registry = self.deps.registry
        earlier = [v for v in registry.list(MODEL)
                   if registry.get(MODEL, v["version"])["metadata"].get("pipeline_run") == ctx.run_id]
        if earlier:  # this run registered it before a crash kept the step from recording so
            return {"model": MODEL, "version": earlier[0]["version"], "existing": True}
        taken = [int(m.group(1)) for v in registry.list(MODEL) if (m := re.fullmatch(r"1\.(\d+)\.0", v["version"]))]
        version = f"1.{max(taken, default=0) + 1}.0"
        recipe_dir = Path(inputs["quantize"]["recipe_dir"])
        recipe = json.loads((recipe_dir / "manifest.json").read_text())
        evaluation = inputs["evaluate"]
        metadata = {
            "pipeline_run": ctx.run_id, "trigger": ctx.params["trigger"],
            "training_data": {"dataset": inputs["dataset"]["dataset"], "rows": inputs["dataset"]["rows"],
                              "holdout_devices": len(inputs["dataset"]["holdout_devices"])},
            "metrics": {"holdout": evaluation["candidate"]["scores"], "champion": evaluation["champion"],
                        "quantized": inputs["quantize"]["metrics"], "deviation": inputs["quantize"]["deviation"]},
            "recipe_command": recipe["recipe"]["command"],
        }
        # ModelConflictError when another registration took the version first: the step's retry picks the next.
        registry.register_files(MODEL, version, recipe, {a: recipe_dir / a for a in recipe["artifacts"]}, metadata)
        reference = self._save_reference(inputs, version)
        return {"model": MODEL, "version": version, "existing": False, "drift_reference": reference}

    def _save_reference(self, inputs: dict, version: str) -> dict:
        """The drift reference of the new version: the cohort's labelled windows it was trained and
        evaluated on, with its own predictions, plus the replayed rows marked `replayed` (the next
        retraining replays them; drift never judges them). Drift on the cohort then clears once
        the cohort runs it: the new normal is its reference."""
        from ..drift import ReferenceExistsError, reference_table, save_reference
        from models.condition.data import SPEC
        from models.condition.mlp import predict_proba

        x, y, _ = _matrix(_table(self.deps.data_dir, inputs["dataset"]["dataset"]["name"],
                                 inputs["dataset"]["dataset"]["version"]))
        replayed = np.zeros(len(y), bool)
        if inputs["train"].get("replayed_rows"):  # kept for the next retraining's replay, never judged
            rx, ry = _reference_rows(self.deps.data_dir, self.deps.registry, inputs["evaluate"]["champion"]["version"])
            x, y = np.concatenate([x, rx]), np.concatenate([y, ry])
            replayed = np.r_[replayed, np.ones(len(ry), bool)]  # all of them: a later replay samples again
        predicted = predict_proba(_load_weights(inputs["train"]["weights"]), x).argmax(1)
        table = reference_table(x, SPEC.feature_names, predictions=predicted, labels=y, classes=_classes())
        table = table.append_column(REPLAYED, pa.array(replayed))
        try:
            path = save_reference(self.deps.data_dir, MODEL, version, table)
        except ReferenceExistsError:  # a retry of this step after the save
            from ..drift import reference_path

            path = reference_path(self.deps.data_dir, MODEL, version)
        return {"path": str(path), "rows": int(table.num_rows)}

    def sign(self, ctx: StepContext, inputs: dict) -> dict:
        registry, version = self.deps.registry, inputs["register"]["version"]
        cohort = ctx.params["trigger"]["cohort"]
        signed = registry.sign(MODEL, version)
        registry.promote(MODEL, version, "challenger", cohort)
        return {"model": MODEL, "version": version, "key_id": signed["key_id"], "signed_at": signed["signed_at"],
                "alias": {"challenger": cohort},
                "variants": {v["artifact"]: v["digest"] for v in signed["variants"]}}

    def rollout(self, ctx: StepContext, inputs: dict) -> dict:
        from ..rollouts import RolloutPlan

        version = inputs["sign"]["version"]
        cohort = ctx.params["trigger"]["cohort"]
        earlier = [r for r in self.deps.rollouts.list() if (r["model"], r["version"]) == (MODEL, version)]
        if earlier:  # started by this run before a crash kept the step from recording so
            r = earlier[-1]
        else:
            # An approval can wait for days: the candidate won against one champion, and a rollout
            # falls back to whichever is champion when it starts.
            beaten = inputs["evaluate"]["champion"]["version"]
            now = self.deps.registry.alias_for(MODEL, "champion", parse_cohort(cohort))
            if now != beaten:
                raise StepError(f"The champion of cohort {cohort!r} is {now} now, not {beaten}, which the candidate "
                                f"{version} was evaluated against; start a new retraining run.")
            plan = RolloutPlan.from_dict({**ctx.params["rollout"], "model": MODEL, "version": version,
                                          "cohort": cohort})
            r = self.deps.rollouts.start(plan)
        return {"rollout_id": r["id"], "state": r["state"], "champion": r["champion"], "version": version,
                "cohort": r["cohort"]}


# --- data -----------------------------------------------------------------------------------
def _classes() -> tuple[str, ...]:
    from models.condition.data import CLASSES

    return CLASSES


def _table(data_dir: Path, name: str, version: str) -> pa.Table:
    from ..features import load_dataset

    return load_dataset(data_dir, name, version)


def _matrix(table: pa.Table) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, class indexes and `tenant/device` per row; rows with a null or NaN feature dropped."""
    from models.condition.data import SPEC

    x = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                         for n in SPEC.feature_names]) if table.num_rows else np.empty((0, len(SPEC.feature_names)))
    keep = np.isfinite(x).all(axis=1)
    classes = _classes()
    y = []
    for value in table.column("label").to_pylist():
        if isinstance(value, str) and value in classes:
            y.append(classes.index(value))
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
            y.append(value)
        else:
            raise StepError(f"Label {value!r} is neither a class of {MODEL} {list(classes)!r} nor its index.")
    devices = [f"{t}/{d}" for t, d in zip(table.column("tenant").to_pylist(), table.column("device").to_pylist())]
    return x[keep], np.asarray(y, np.int64)[keep], [d for d, k in zip(devices, keep) if k]


def _holdout_devices(devices: list[str], y: np.ndarray, fraction: float, seed: int) -> set[str]:
    """`fraction` of the devices of each majority label (at least one of a label with two or more)."""
    labels: dict[str, Counter] = {}
    for d, c in zip(devices, y.tolist()):
        labels.setdefault(d, Counter())[c] += 1
    groups: dict[int, list[str]] = {}
    for d, counts in labels.items():
        groups.setdefault(min(counts, key=lambda c: (-counts[c], c)), []).append(d)
    out: set[str] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda d: hashlib.sha256(f"{seed}/{d}".encode()).hexdigest())
        out.update(members[:max(1, round(fraction * len(members)))])
    return out


def _split(data_dir: Path, dataset: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, holdout x, holdout y) of the dataset step's outputs, as that step split them."""
    x, y, devices = _matrix(_table(data_dir, dataset["dataset"]["name"], dataset["dataset"]["version"]))
    mask = np.array([d in set(dataset["holdout_devices"]) for d in devices], bool)
    return x[~mask], y[~mask], x[mask], y[mask]


def _reference_rows(data_dir: Path, registry: Any, version: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and class indexes of `version`'s labelled drift reference (empty without one)."""
    from models.condition.data import SPEC

    table = ensure_recipe_reference(data_dir, registry, version)
    if table is None or "label" not in table.column_names:
        return np.empty((0, len(SPEC.feature_names))), np.empty(0, np.int64)
    x = np.column_stack([table.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
                         for n in SPEC.feature_names])
    classes = _classes()
    y = np.array([v if isinstance(v, int) else classes.index(v) for v in table.column("label").to_pylist()], np.int64)
    keep = np.isfinite(x).all(axis=1)
    return x[keep], y[keep]


def ensure_recipe_reference(data_dir: Path, registry: Any, version: str) -> pa.Table | None:
    """`version`'s drift reference, saved first if it is a version the recipe built (models/condition,
    `models.condition.train`): its training split rebuilt from the seed its provenance names, with the
    model's own fp32 predictions. None for a version with neither (no reference can be made)."""
    from ..drift import UnknownReferenceError, load_reference, reference_table, save_reference

    try:
        return load_reference(data_dir, MODEL, version)
    except UnknownReferenceError:
        pass
    record = registry.get(MODEL, version)
    meta = record.get("metadata") or {}
    command = str(meta.get("recipe_command", ""))
    found = re.search(r"models\.condition\.train .*--seed (\d+)", command)
    training = meta.get("training_data") or {}
    if found is None or training.get("name") != "train":
        return None
    from models.condition.data import SPEC, Split, make_dataset

    data = make_dataset(int(found.group(1)), Split("train", int(training["devices_per_class"]),
                                                   int(training["segments_per_device"])))
    onnx_variants = [v["artifact"] for v in record["variants"] if v["format"] == "onnx"]
    artifact = FP32 if FP32 in onnx_variants else onnx_variants[0]
    predicted = _onnx_labels(registry.artifact_path(MODEL, version, artifact).read_bytes(), data.features)
    table = reference_table(data.features, SPEC.feature_names, predictions=predicted, labels=data.labels,
                            classes=_classes())
    try:
        save_reference(data_dir, MODEL, version, table)
    except Exception:  # noqa: BLE001 - another process saved it first; theirs is the same rows
        return load_reference(data_dir, MODEL, version)
    return table


# --- models ---------------------------------------------------------------------------------
def _load_weights(path: str) -> Any:
    from models.condition.mlp import Weights

    with np.load(path) as z:
        return Weights(**{k: z[k] for k in ("mean", "scale", "w1", "b1", "w2", "b2")})


def _fp32_bytes(weights: Any, run_id: str) -> bytes:
    from models.condition.data import SPEC
    from models.condition.export import build_fp32

    metadata = {"name": MODEL, "version": run_id, "classes": ",".join(_classes()),
                "feature_spec_version": SPEC.version}
    return build_fp32(weights, feature_names=SPEC.feature_names, metadata=metadata).SerializeToString()


def _onnx_labels(model: bytes, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(["label"], {"features": np.ascontiguousarray(x, np.float32)})[0]


def _self_test_rows(y: np.ndarray, outs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Up to SELF_TEST_PER_CLASS rows per class, the most confident on which fp32 and int8 agree."""
    p32, l32 = outs[FP32]
    agree = np.logical_and.reduce([label == l32 for _, label in outs.values()])
    rows: list[int] = []
    for c in range(len(_classes())):
        candidates = np.flatnonzero((y == c) & (l32 == c) & agree)
        rows.extend(candidates[np.argsort(-p32[candidates].max(1), kind="stable")][:SELF_TEST_PER_CLASS].tolist())
    if not rows:
        raise StepError("No holdout window is classified alike and correctly by fp32 and int8: no self-test to ship.")
    return np.asarray(sorted(rows))
