"""ONNX export (built node by node with `onnx.helper`) and static int8 quantization with onnxruntime.

Graph (fp32): `features` float32 [N, F] → Sub(mean) → Mul(1/std) → Gemm(w1, b1, transB=1) → Relu
→ Gemm(w2, b2, transB=1) → `logits` → Softmax → `probabilities` float32 [N, C] → ArgMax →
`label` int64 [N]. The standardization is part of the graph, so a device feeds raw window
features and can never pair a model with the wrong scaler.

Quantization: `quantize_static` in **QDQ** format, int8 activations and int8 weights (S8S8),
weights symmetric per output channel, MinMax calibration on representative windows. Why QDQ and
not QOperator: QDQ keeps the float graph and marks every quantized tensor with an explicit
QuantizeLinear/DequantizeLinear pair; onnxruntime's CPU provider fuses those into integer
kernels when it loads the model, and TensorRT (the Jetson provider) only takes explicit QDQ.
QOperator (QLinearMatMul, QGemm) bakes in onnxruntime's own operators, which TensorRT refuses,
and QGemm is a `com.microsoft` contrib op. QDQ is also onnxruntime's recommended default.

What is int8 and what stays float, on purpose:

* the Sub/Mul that standardize: the raw features span five orders of magnitude (a temperature
  slope near 1e-4 °C/s beside a vibration max near 40 mm/s), and one per-tensor int8 scale over
  the raw input would round the small ones to zero. After them every feature is O(1), and the
  standardized tensor is what gets the first int8 scale;
* the first Gemm (224 of the 272 weights) and its Relu are int8: quantize_static folds the Relu
  into the output's zero point (-128 at 0.0);
* the last Gemm (16 x 3), Softmax and ArgMax stay float. Its logits reach the hundreds on the
  far windows calibration must cover (a bearing at 20 mm/s), so an int8 logits tensor would
  step by ~2 and give coarse probabilities. Measured on the held-out set: with int8 logits the
  probabilities strayed up to 0.48 from fp32; with this float last layer, up to 0.34 on the
  few windows near a class boundary and 0.003 at the median. Its 51 float parameters cost 204
  bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .mlp import Weights

INPUT = "features"
OUTPUTS = ("probabilities", "label")
OPSET = 17  # onnxruntime >= 1.14 and TensorRT 8.6 (JetPack 6) run opset 17
IR_VERSION = 8  # the IR of opset 17; a newer IR would lock out older onnxruntime builds on devices
PRODUCER = "edgeloop.models.condition"
# The float nodes quantize_static must leave alone (see the module docstring).
FLOAT_NODES = ("standardize_sub", "standardize_mul", "dense2")


def build_fp32(weights: Weights, *, feature_names: Sequence[str], metadata: dict[str, str]) -> onnx.ModelProto:
    f, c = len(weights.mean), len(weights.b2)
    if len(feature_names) != f:
        raise ValueError(f"{len(feature_names)} feature names for a model of {f} inputs.")
    inits = [
        numpy_helper.from_array(weights.mean, "std_mean"),
        numpy_helper.from_array(weights.scale, "std_scale"),
        numpy_helper.from_array(weights.w1, "dense1_weight"),
        numpy_helper.from_array(weights.b1, "dense1_bias"),
        numpy_helper.from_array(weights.w2, "dense2_weight"),
        numpy_helper.from_array(weights.b2, "dense2_bias"),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT, "std_mean"], ["centred"], name="standardize_sub"),
        helper.make_node("Mul", ["centred", "std_scale"], ["standardized"], name="standardize_mul"),
        helper.make_node("Gemm", ["standardized", "dense1_weight", "dense1_bias"], ["dense1_out"], name="dense1", transB=1),
        helper.make_node("Relu", ["dense1_out"], ["hidden"], name="relu1"),
        helper.make_node("Gemm", ["hidden", "dense2_weight", "dense2_bias"], ["logits"], name="dense2", transB=1),
        helper.make_node("Softmax", ["logits"], [OUTPUTS[0]], name="softmax", axis=-1),
        helper.make_node("ArgMax", [OUTPUTS[0]], [OUTPUTS[1]], name="argmax", axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "condition",
        inputs=[helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", f])],
        outputs=[
            helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, ["N", c]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.INT64, ["N"]),
        ],
        initializer=inits,
        doc_string="Raw window features in (protocol.features), class probabilities and label out.",
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
        producer_name=PRODUCER, producer_version="1",
    )
    helper.set_model_props(model, {**metadata, "feature_names": ",".join(feature_names)})
    onnx.checker.check_model(model, full_check=True)
    return model


class WindowReader:
    """An onnxruntime `CalibrationDataReader` over a matrix of windows, in batches, in order."""

    def __init__(self, features: np.ndarray, *, batch: int = 64) -> None:
        self._features = np.ascontiguousarray(features, np.float32)
        self._batch = batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self._features), self._batch):
            yield {INPUT: self._features[i:i + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._batches()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_int8(fp32_path: Path, int8_path: Path, *, calibration: np.ndarray) -> None:
    """Static QDQ S8S8 quantization of the first Gemm, calibrated (MinMax) on `calibration` windows."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(WindowReader, CalibrationDataReader):
        pass

    # quantize_static logs (root logger) a plea to run quant_pre_process first: shape inference
    # and graph fusions. This graph is built with every shape known and nothing to fuse, so the
    # advice does not apply; drop that message, keep the rest.
    root = logging.getLogger()
    advice = _DropMessage("pre-processing before quantization", "to run pre-processing")
    root.addFilter(advice)
    try:
        quantize_static(
            str(fp32_path), str(int8_path), Reader(calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=["Gemm", "Relu"],
            nodes_to_exclude=list(FLOAT_NODES),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    finally:
        root.removeFilter(advice)
    onnx.checker.check_model(onnx.load(str(int8_path)), full_check=True)


class _DropMessage(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self._fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(f in message for f in self._fragments)
