"""Candidate models for rollout drills: a good one, and one of each way a model goes bad in the field.

Each builder writes a recipe folder shaped like `models/condition/v1` (manifest.json plus one
artifact, `model.fp32.onnx`), so the registry takes it exactly as it takes a trained model and
signs it like any other. The bad ones are bad in the field, not on paper: their manifests are
honest about them, so each passes everything the hub checks before a rollout.

    good       v1's fp32 graph unchanged under a new version
    broken     bytes that are not an ONNX model: the device's self-test cannot load it
    slow       v1's outputs exactly, plus an input-dependent chain of `slow_matmuls` 512x512 MatMuls
               whose result is multiplied by 0 and added to the logits: same answers, far slower
    divergent  v1 with the sensor_fault logit raised by `divergent_bias`: it passes its own
               self-test (the expected outputs are its own) but calls nearly everything a fault

Needs `onnx` and `onnxruntime` (the `models` and `inference` extras); imported only here.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np

V1 = Path(__file__).resolve().parent.parent / "models" / "condition" / "v1"
ARTIFACT = "model.fp32.onnx"
KINDS = ("good", "broken", "slow", "divergent")


def build_candidate(out_dir: Path, kind: str, *, version: str, slow_matmuls: int = 400,
                    divergent_bias: float = 60.0, source: Path = V1) -> Path:
    """Write a recipe folder for a `kind` candidate of the condition model; returns `out_dir`."""
    if kind not in KINDS:
        raise ValueError(f"Candidate kind {kind!r} is not one of {KINDS}.")
    import onnx

    recipe = json.loads((source / "manifest.json").read_text())
    model = onnx.load(str(source / ARTIFACT))
    inputs = np.array(recipe["self_test"]["inputs"], dtype=np.float32)
    if kind == "broken":
        data = b"edgeloop drill: these bytes are not an ONNX model\n" * 64
        expected = recipe["self_test"]["expected"][ARTIFACT]["probabilities"]
    else:
        if kind == "slow":
            _add_slow_branch(model, slow_matmuls)
        elif kind == "divergent":
            _raise_logit(model, class_index=recipe["classes"].index("sensor_fault"), by=divergent_bias)
        data = model.SerializeToString()
        expected = _run(data, inputs).tolist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ARTIFACT).write_bytes(data)
    manifest = copy.deepcopy(recipe)
    manifest["version"] = version
    entry = dict(recipe["artifacts"][ARTIFACT], sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest["artifacts"] = {ARTIFACT: entry}
    manifest["self_test"]["expected"] = {ARTIFACT: {
        "probabilities": [[float(v) for v in row] for row in expected],
        "label": [int(np.argmax(row)) for row in expected],
        "atol": recipe["self_test"]["expected"][ARTIFACT]["atol"],
    }}
    manifest["drill"] = kind  # not read by anyone: says what this folder is to a person
    manifest["metrics"] = {"drill": f"{kind} candidate built by simulators.model_faults"}
    manifest.pop("constant_bytes", None)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _run(data: bytes, inputs: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"features": inputs})[0]


def _raise_logit(model, *, class_index: int, by: float) -> None:
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if init.name == "dense2_bias":
            b = numpy_helper.to_array(init).copy()
            b[class_index] += by
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(b.astype(np.float32), "dense2_bias"))
            return
    raise ValueError("The source model has no dense2_bias initializer to change.")


def _add_slow_branch(model, matmuls: int) -> None:
    """logits' = logits + 0 * f(features), f a chain of input-dependent MatMuls (not foldable)."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    width = 512
    g = model.graph
    g.initializer.extend([
        numpy_helper.from_array((rng.standard_normal((14, width)) / 4).astype(np.float32), "slow_in"),
        numpy_helper.from_array((rng.standard_normal((width, width)) / 16).astype(np.float32), "slow_w"),
        numpy_helper.from_array((rng.standard_normal((width, 3)) / 16).astype(np.float32), "slow_out"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "slow_zero"),
    ])
    nodes = [helper.make_node("MatMul", ["standardized", "slow_in"], ["slow_0"], name="slow_in")]
    for i in range(matmuls):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_m{i}"], name=f"slow_mm{i}"))
        nodes.append(helper.make_node("Tanh", [f"slow_m{i}"], [f"slow_{i + 1}"], name=f"slow_tanh{i}"))
    nodes += [
        helper.make_node("MatMul", [f"slow_{matmuls}", "slow_out"], ["slow_logits"], name="slow_out"),
        helper.make_node("Mul", ["slow_logits", "slow_zero"], ["slow_nothing"], name="slow_times_zero"),
        helper.make_node("Add", ["logits_fast", "slow_nothing"], ["logits"], name="slow_add"),
    ]
    for n in g.node:  # dense2 now writes logits_fast; the Add writes what Softmax reads
        if n.name == "dense2":
            n.output[0] = "logits_fast"
    position = [i for i, n in enumerate(g.node) if n.name == "dense2"][0] + 1
    for offset, n in enumerate(nodes):
        g.node.insert(position + offset, n)
