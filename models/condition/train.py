"""`python -m models.condition.train --out models/condition/v1`: the whole recipe, seed to model card.

simulator readings (data.py) → window features (protocol.features) → numpy MLP (mlp.py) →
ONNX fp32 → static int8 QDQ (export.py) → TFLite fp32 and int8 (tflite_model.py) → evaluation on
held-out devices, latency (runtimes.py) → manifest.json + MODEL_CARD.md (card.py).

Reproducible: the same seed, numpy, onnx, onnxruntime and tflite versions on the same CPU give
the same bytes in every artifact and in manifest.json (checked by running it twice, with
OpenBLAS on one thread and on two). Only the latency table in MODEL_CARD.md is measured afresh.
BLAS kernels differ between CPU families, so on another machine the weights may differ in the
last bits (not checked); tests/models rebuilds the recipe and holds its metrics to the
committed ones.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from . import card
from .data import CLASSES, SPEC, Split, make_dataset
from .export import FLOAT_NODES, INPUT, OPSET, OUTPUTS, build_fp32, quantize_int8
from .mlp import TrainConfig, scores, train
from .runtimes import Runner, latency

NAME = "condition"
TRAIN = Split("train", devices_per_class=40, segments_per_device=6)
TEST = Split("test", devices_per_class=15, segments_per_device=4)
CALIBRATION_STRIDE = 24  # every 24th training window: 300, 100 per class (the data is class-major)
SELF_TEST_PER_CLASS = 2
FP32, INT8 = "model.fp32.onnx", "model.int8.onnx"
TFLITE_FP32, TFLITE = "model.fp32.tflite", "model.int8.tflite"
# Self-test tolerance on probabilities, per artifact (labels must match exactly). fp32: float
# summation order differs between CPUs and onnxruntime builds. int8: integer kernels differ too
# (x86 without VNNI can saturate int16 pairs; ARM rounds its own way), which can move a hidden
# unit by one int8 step; the self-test rows are confident ones (p >= 0.99), where that moves a
# probability by well under this.
TOLERANCE = {FP32: 1e-5, INT8: 0.02, TFLITE_FP32: 1e-5, TFLITE: 0.02}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions(tflite: bool) -> dict[str, str]:
    names = ["numpy", "onnx", "onnxruntime"] + (["tflite", "flatbuffers", "ai-edge-litert"] if tflite else [])
    return {n: importlib.metadata.version(n) for n in names}


def _self_test_rows(labels: np.ndarray, fp32: np.ndarray, agree: np.ndarray) -> np.ndarray:
    """SELF_TEST_PER_CLASS confident rows per class, on which every artifact agrees, spread out."""
    rows = []
    for c in range(len(CLASSES)):
        candidates = np.flatnonzero((labels == c) & (fp32.argmax(1) == c) & (fp32.max(1) >= 0.99) & agree)
        rows.extend(candidates[np.linspace(0, len(candidates) - 1, SELF_TEST_PER_CLASS).astype(int)])
    return np.asarray(rows)


def _constant_bytes(path: Path) -> int:
    """Weights, biases, scales, zero points and the standardizer: the bytes that are not structure."""
    if path.suffix == ".tflite":
        from .tflite_model import weight_bytes

        return weight_bytes(path)
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def build(out: Path, *, seed: int, version: str, tflite: bool, log: Callable[[str], object] = print) -> dict:
    t0 = time.perf_counter()

    def step(message: str) -> None:
        log(f"[{time.perf_counter() - t0:6.2f} s] {message}")

    out.mkdir(parents=True, exist_ok=True)
    step(f"simulating {TRAIN} and {TEST} (seed {seed})")
    train_set, test_set = make_dataset(seed, TRAIN), make_dataset(seed, TEST)
    step(f"{len(train_set.labels)} training and {len(test_set.labels)} held-out windows of {len(SPEC.feature_names)} features")

    config = TrainConfig(seed=seed)
    weights, losses = train(train_set.features, train_set.labels, n_classes=len(CLASSES), config=config)
    step(f"trained a {len(SPEC.feature_names)}-{config.hidden}-{len(CLASSES)} MLP; loss {losses[0]:.3f} -> {losses[-1]:.4f}")

    metadata = {"name": NAME, "version": version, "classes": ",".join(CLASSES), "feature_spec_version": SPEC.version}
    onnx.save(build_fp32(weights, feature_names=SPEC.feature_names, metadata=metadata), str(out / FP32))
    calibration = train_set.features[::CALIBRATION_STRIDE]
    quantize_int8(out / FP32, out / INT8, calibration=calibration)
    artifacts = [FP32, INT8]
    step(f"exported {FP32} and quantized {INT8} (QDQ, calibrated on {len(calibration)} windows)")
    if tflite:
        from .tflite_model import convert

        convert(out / FP32, out / TFLITE_FP32, description=f"edgeloop {NAME} {version} fp32 (from {FP32})")
        convert(out / INT8, out / TFLITE, description=f"edgeloop {NAME} {version} int8 (from {INT8})")
        artifacts += [TFLITE_FP32, TFLITE]
        step(f"wrote {TFLITE_FP32} and {TFLITE} from the ONNX models")

    runners = {name: Runner(out / name) for name in artifacts}
    outputs = {name: runner(test_set.features) for name, runner in runners.items()}
    metrics = {name: scores(test_set.labels, outputs[name][1], n_classes=len(CLASSES)) for name in artifacts}
    for name in artifacts:
        step(f"{name}: accuracy {metrics[name]['accuracy']:.4f}, macro-F1 {metrics[name]['macro_f1']:.4f}")
    fp32_p = outputs[FP32][0]
    reference = {INT8: FP32, TFLITE_FP32: FP32, TFLITE: INT8}
    deviation = {
        name: {
            "from": ref,
            "max_abs": float(np.abs(outputs[name][0] - outputs[ref][0]).max()),
            "label_disagreements": int((outputs[name][1] != outputs[ref][1]).sum()),
        }
        for name, ref in reference.items() if name in outputs
    }

    agree = np.logical_and.reduce([outputs[name][1] == outputs[FP32][1] for name in artifacts])
    rows = _self_test_rows(test_set.labels, fp32_p, agree)
    sample = test_set.features[rows].astype(np.float32)
    expected = {}
    for name, runner in runners.items():
        p, label = runner(sample)
        expected[name] = {"probabilities": p.astype(float).tolist(), "label": label.astype(int).tolist(),
                          "atol": TOLERANCE[name]}

    step("timing each artifact on one thread (batch 1 and 256)")
    timing = {
        name: [latency(runner, test_set.features, batch=1, calls=3000),
               latency(runner, test_set.features, batch=256, calls=400)]
        for name, runner in runners.items()
    }

    files = {
        FP32: {"format": "onnx", "precision": "fp32", "opset": OPSET, "runtime": "onnxruntime"},
        INT8: {"format": "onnx", "precision": "int8", "opset": OPSET, "runtime": "onnxruntime", "quantization": {
            "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ",
            "activations": "int8, asymmetric, per tensor", "weights": "int8, symmetric, per output channel",
            "calibration": f"MinMax over {len(calibration)} training windows (every {CALIBRATION_STRIDE}th)",
            "float_nodes": list(FLOAT_NODES),
        }},
        TFLITE_FP32: {"format": "tflite", "precision": "fp32", "runtime": "ai-edge-litert",
                      "converted_from": FP32, "converter": "models.condition.tflite_model"},
        TFLITE: {"format": "tflite", "precision": "int8", "runtime": "ai-edge-litert",
                 "converted_from": INT8, "converter": "models.condition.tflite_model",
                 "quantization": {"same_as": INT8}},
    }
    manifest = {
        "name": NAME,
        "version": version,
        "task": "classify one window of vibration_rms and temperature readings",
        "classes": list(CLASSES),
        "feature_spec": {"version": SPEC.version, "params": SPEC.params(), "names": list(SPEC.feature_names)},
        "inputs": [{"name": INPUT, "dtype": "float32", "shape": ["N", len(SPEC.feature_names)]}],
        "outputs": [
            {"name": OUTPUTS[0], "dtype": "float32", "shape": ["N", len(CLASSES)]},
            {"name": OUTPUTS[1], "dtype": "int64", "shape": ["N"]},
        ],
        "artifacts": {
            name: {**files[name], "sha256": sha256(out / name), "bytes": (out / name).stat().st_size}
            for name in artifacts
        },
        "constant_bytes": {name: _constant_bytes(out / name) for name in artifacts},
        "metrics": {
            "held_out": f"{TEST.devices_per_class} unseen devices per class x {TEST.segments_per_device} "
                        f"segments x 10 windows (seed {seed})",
            **metrics,
            "deviation": deviation,
        },
        "self_test": {
            "inputs": sample.astype(float).tolist(),
            "true_labels": test_set.labels[rows].astype(int).tolist(),
            "expected": expected,
            "note": "Feed `inputs` as float32 [N, F]; labels must match exactly, probabilities within atol.",
        },
        "recipe": {
            "command": f"python -m models.condition.train --out models/condition/{version} --seed {seed}",
            "seed": seed,
            "train": vars(TRAIN) | {"windows": len(train_set.labels)},
            "test": vars(TEST) | {"windows": len(test_set.labels)},
            "mlp": vars(config) | {"optimizer": "Adam, full batch", "loss": "cross-entropy + L2"},
            "toolchain": _versions(tflite),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    train_seconds = time.perf_counter() - t0
    (out / "MODEL_CARD.md").write_text(card.render(manifest, timing, build_seconds=train_seconds))
    step(f"wrote manifest.json and MODEL_CARD.md to {out}")
    return manifest | {"timing": timing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.condition.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="version directory, e.g. models/condition/v1")
    parser.add_argument("--seed", type=int, default=0, help="the one seed all data and training derive from")
    parser.add_argument("--version", help="version name for the manifest (default: the --out directory's name)")
    parser.add_argument("--no-tflite", action="store_true",
                        help="skip the .tflite models (they need the models-tflite extra: tflite, flatbuffers)")
    args = parser.parse_args(argv)
    tflite = not args.no_tflite
    if tflite:
        try:
            importlib.import_module("tflite")
            importlib.import_module("ai_edge_litert")
        except ImportError as exc:
            print(f"error: the TFLite step needs {exc.name!r}: pip install -e '.[models,models-tflite]', "
                  "or pass --no-tflite.", file=sys.stderr)
            return 2
    result = build(args.out, seed=args.seed, version=args.version or args.out.name, tflite=tflite,
                   log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({
        "artifacts": {k: {"bytes": v["bytes"], "sha256": v["sha256"][:16]} for k, v in result["artifacts"].items()},
        "metrics": {k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"]}
                    for k, v in result["metrics"].items() if k.startswith("model.")},
        "latency": result["timing"],
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
