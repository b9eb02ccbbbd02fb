"""MODEL_CARD.md for one version, written from its manifest and the latency measured at build time."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return f"{platform.machine()} ({os.cpu_count()} cores visible)"


def _confusion(classes: list[str], matrix: list[list[int]]) -> str:
    head = "| true \\ predicted | " + " | ".join(classes) + " |\n|---|" + "---:|" * len(classes) + "\n"
    return head + "".join(f"| {c} | " + " | ".join(str(v) for v in row) + " |\n" for c, row in zip(classes, matrix))


def render(manifest: dict, timing: dict[str, list[dict]], *, build_seconds: float) -> str:
    m, arts, classes = manifest["metrics"], manifest["artifacts"], manifest["classes"]
    spec = manifest["feature_spec"]
    recipe = manifest["recipe"]
    names = list(arts)
    fp32 = names[0]
    rows_metrics = "".join(
        f"| `{n}` | {m[n]['accuracy']:.4f} | {m[n]['macro_f1']:.4f} | "
        + " / ".join(f"{x:.3f}" for x in m[n]["f1"]) + " |\n"
        for n in names
    )
    const = manifest["constant_bytes"]
    rows_size = "".join(
        f"| `{n}` | {arts[n]['bytes']:,} | {const[n]:,} | {arts[n]['bytes'] / arts[fp32]['bytes']:.2f}x "
        f"| `{arts[n]['sha256'][:16]}…` |\n"
        for n in names
    )
    rows_latency = "".join(
        f"| `{n}` | {t['batch']} | {t['p50_us']:,.1f} | {t['p99_us']:,.1f} | {t['windows_per_s']:,} |\n"
        for n in names for t in timing[n]
    )
    pairs = [(a, b) for a, b in (("model.fp32.onnx", "model.int8.onnx"), ("model.fp32.tflite", "model.int8.tflite"))
             if a in timing and b in timing]
    speed = "".join(
        f"* {b.split('.')[-1]}: int8 takes {timing[b][0]['p50_us'] / timing[a][0]['p50_us']:.2f}x the fp32 time "
        f"at batch 1 and {timing[b][1]['p50_us'] / timing[a][1]['p50_us']:.2f}x at batch {timing[a][1]['batch']}.\n"
        for a, b in pairs
    )
    deviation = "".join(
        f"* `{n}` against `{d['from']}`: largest probability difference {d['max_abs']:.2g}, "
        f"{d['label_disagreements']} of {m[n]['n']} labels differ.\n"
        for n, d in m["deviation"].items()
    )
    tol = ", ".join(f"`{n}` {e['atol']:g}" for n, e in manifest["self_test"]["expected"].items())
    return f"""# Model card: {manifest['name']} {manifest['version']}

Classifies one minute of a machine's `vibration_rms` (mm/s) and `temperature` (°C) readings as
**{'**, **'.join(classes)}**. Runs on the device, after `protocol.features.window_features`;
the hub builds its training data with the same function.

Rebuild: `{recipe['command']}` (about {build_seconds:.0f} s here, latency timing included).

## Inputs and outputs

* `features`: float32 [N, {len(spec['names'])}], raw (unstandardized) window features, in this order:
  {', '.join(f'`{n}`' for n in spec['names'])}.
  Feature spec version `{spec['version']}` = sha256 of these parameters and of the feature
  code: {spec['params']}. A device whose `FeatureSpec.from_params(params).version` differs must not
  run this model.
* `probabilities`: float32 [N, {len(classes)}], softmax over ({', '.join(classes)}).
* `label`: int64 [N], the argmax.

## Data

Simulated by `simulators.signals.device_model` at one reading a second (models/condition/data.py
says exactly how), seed {recipe['seed']}:

* train: {recipe['train']['devices_per_class']} devices per class x {recipe['train']['segments_per_device']} segments x 10 windows = {recipe['train']['windows']:,} windows;
* held out: {recipe['test']['devices_per_class']} *other* devices per class x {recipe['test']['segments_per_device']} segments x 10 windows = {recipe['test']['windows']:,} windows.

normal: healthy devices, and wearing ones before wear onset. bearing_wear: wear adding 0.3–20
mm/s to the 1.2 mm/s floor. sensor_fault: a stuck channel, or spikes (every 2–60 readings,
±0.3–8 mm/s or ±0.5–15 °C) on vibration or temperature, on healthy and wearing devices alike.

## Model

Standardize (mean and 1/std from the training set, inside the graph) → dense {len(spec['names'])}→16 + ReLU →
dense 16→{len(classes)} → softmax. Trained in numpy: full-batch Adam, {recipe['mlp']['steps']} steps, learning rate
{recipe['mlp']['learning_rate']}, L2 {recipe['mlp']['l2']}.

int8 (`model.int8.onnx`): onnxruntime `quantize_static`, QDQ format, int8 activations
(asymmetric, per tensor) and weights (symmetric, per output channel), MinMax calibration on 300
training windows. Standardization, the last dense layer and softmax stay float: see
models/condition/export.py for why. `model.int8.tflite` holds the same integers and scales,
written as a TFLite flatbuffer (models/condition/tflite_model.py).

## Metrics (held-out devices)

| artifact | accuracy | macro-F1 | F1 per class ({' / '.join(classes)}) |
|---|---:|---:|---|
{rows_metrics}
{deviation}
Confusion of `{fp32}`:

{_confusion(classes, m[fp32]['confusion'])}
## Size

| artifact | bytes | constant bytes | vs fp32 ONNX | sha256 |
|---|---:|---:|---:|---|
{rows_size}
The int8 files are *not* smaller, and no one should expect them to be: the network has 291
parameters. Its int8 layer's weights shrink 4x (896 → 224 bytes), but that layer also carries
per-channel scales and zero points and an int32 bias, the standardizer and the last layer stay
float, and in ONNX the QDQ nodes and their names outweigh what quantization saves. The
"constant bytes" column is the data without the graph structure. A model large enough for
int8 to pay in size (the issue's 3x) would be far too large for this task.

## Latency

One thread, {_cpu()}, measured when this version was built; per call, from Python.

| artifact | batch | p50 µs | p99 µs | windows/s |
|---|---:|---:|---:|---:|
{rows_latency}
{speed}
int8 is no faster here, and at this size it cannot be: a window costs about 300
multiply-adds, so a call is almost all fixed cost (the Python binding, copying the input,
allocating outputs, dispatching kernels), and int8 adds kernels of its own. onnxruntime runs
the int8 graph as QuantizeLinear → QGemm → DequantizeLinear where the fp32 graph runs one
FusedGemm with the Relu folded in; TFLite adds QUANTIZE and DEQUANTIZE around its int8
FULLY_CONNECTED. Each is a pass over the batch that saves no arithmetic worth having. Where the
runtimes differ from each other at batch 1, that is their per-call overhead, not the
arithmetic. Timings at this scale move by 10–30 % from run to run.

## Self-test

`manifest.json` carries {len(manifest['self_test']['inputs'])} input rows with each artifact's expected outputs. Labels must
match exactly; probabilities within {tol}.

## Limits

* Trained on simulated machines only. Real bearings, sensors and sampling jitter will differ:
  expect to retrain on fleet data (the hub's retraining loop) before trusting it on hardware.
* Early wear (under 0.3 mm/s above the floor) is not in the data; the model calls it normal.
* A sensor fault on a worn machine is the hardest case: most of its errors are faulty
  channels on wearing devices called bearing_wear.
* Windows must be one minute, epoch-aligned, with at least {spec['params']['min_samples']} readings of each channel
  (protocol.features drops the rest); at other sampling rates the feature distributions shift.
* Humidity and power are ignored. One window at a time: no memory of the machine's history.
"""
