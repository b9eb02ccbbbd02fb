"""The ONNX models rewritten as TFLite flatbuffers, tensor for tensor, with no TensorFlow.

Why write the flatbuffer by hand: every usual converter goes through TensorFlow (the
TFLiteConverter itself, onnx2tf, ai-edge-torch via torch and TF), hundreds of MB to install for
a model of two dense layers. The `tflite` package carries the schema's generated builders (pure
Python, on `flatbuffers`), and these graphs need eight builtin operators. The int8 variant reuses
the int8 ONNX model's own integers and scales, so both int8 artifacts hold the same quantized
network; the fp32 variant (a reference for the benchmarks) the fp32 model's floats.

Graph, batch dimension dynamic (`shape_signature` -1; resize the input to run N windows):

    features f32 [N,F] - SUB(mean) - MUL(1/std) - QUANTIZE -> int8 - FULLY_CONNECTED(int8
    per-channel weights, int32 bias, fused RELU) -> int8 hidden - DEQUANTIZE - FULLY_CONNECTED
    (f32) -> logits - SOFTMAX -> probabilities f32 [N,C] - ARG_MAX -> label int64 [N]

(fp32: no QUANTIZE/DEQUANTIZE, a float first FULLY_CONNECTED.) Op versions follow TFLite's rules
(tensorflow/lite/tools/versioning/op_version.cc): int8 FULLY_CONNECTED is 4, int8 QUANTIZE and
DEQUANTIZE 2, the float ops 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# How far the int8 TFLite model's probabilities may stray from the int8 ONNX model's, on any
# window. Measured: 1.5e-6 (float rounding in the last layer and softmax). Under XNNPACK both
# runtimes requantize the same way (fp32 multiplier, round half to even); TFLite's builtin
# kernels use a fixed-point multiplier instead, which can put a hidden unit one int8 step apart
# only when a value sits on a rounding tie.
MATCH_ATOL = 1e-4


@dataclass(frozen=True)
class Network:
    """The tensors of one of models/condition/export.py's graphs; `quantized` is None for fp32."""

    mean: np.ndarray  # float32 [F]
    scale: np.ndarray  # float32 [F]
    w2: np.ndarray  # float32 [C, H]
    b2: np.ndarray  # float32 [C]
    w1: np.ndarray  # float32 [H, F], or int8 when quantized
    b1: np.ndarray  # float32 [H], or int32 when quantized
    quantized: "Int8Layer | None" = None
    # Further hidden layers between dense1 and dense2 (dense_inner{i} in the ONNX graph), each
    # dense + ReLU: (w [H', H], b [H']) floats, or int8/int32 with their Int8Layer when quantized.
    inner: tuple = ()


@dataclass(frozen=True)
class Int8Layer:
    """The first dense layer's quantization, as the int8 QDQ graph holds it."""

    in_scale: float
    in_zero: int
    w1_scale: np.ndarray  # [H], symmetric
    b1_scale: np.ndarray  # [H] = in_scale * w1_scale
    hidden_scale: float
    hidden_zero: int  # -128: the Relu folded into the zero point


def read_onnx(path: Path) -> Network:
    """The tensors of an fp32 or int8 graph from export.py, checked for the layout it writes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ops = [n.op_type for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    k = sum(1 for n in model.graph.node if n.op_type == "Gemm" and n.name.startswith("dense_inner"))
    if ops not in (["Sub", "Mul", "Gemm", "Relu", *["Gemm", "Relu"] * k, "Gemm", "Softmax", "ArgMax"],
                   ["Sub", "Mul", "Gemm", *["Gemm"] * k, "Gemm", "Softmax", "ArgMax"]):
        raise ValueError(f"{path} is not a condition graph this converter knows: its float ops are {ops!r}.")
    common = dict(
        mean=init["std_mean"].astype(np.float32), scale=init["std_scale"].astype(np.float32),
        w2=init["dense2_weight"].astype(np.float32), b2=init["dense2_bias"].astype(np.float32),
    )
    if "dense1_weight" in init:
        inner = tuple((init[f"dense_inner{i}_weight"].astype(np.float32), init[f"dense_inner{i}_bias"].astype(np.float32))
                      for i in range(k))
        return Network(w1=init["dense1_weight"].astype(np.float32), b1=init["dense1_bias"].astype(np.float32),
                       inner=inner, **common)
    for name in ("dense1_weight_zero_point", "dense1_bias_quantized_zero_point"):
        if np.any(init[name] != 0):
            raise ValueError(f"{path}: {name} is not all zero; TFLite needs symmetric weights and bias.")
    layer = Int8Layer(
        in_scale=float(init["standardized_scale"]),
        in_zero=int(init["standardized_zero_point"]),
        w1_scale=init["dense1_weight_scale"].astype(np.float32),
        b1_scale=init["dense1_bias_quantized_scale"].astype(np.float32),
        hidden_scale=float(init["hidden_scale"]),
        hidden_zero=int(init["hidden_zero_point"]),
    )
    if layer.hidden_zero != -128:
        raise ValueError(f"{path}: hidden zero point is {layer.hidden_zero}, not -128; the Relu was not folded.")
    inner, in_scale, in_zero = [], layer.hidden_scale, layer.hidden_zero
    for i in range(k):
        name, out = f"dense_inner{i}", f"hidden_inner{i}"
        for z in (f"{name}_weight_zero_point", f"{name}_bias_quantized_zero_point"):
            if np.any(init[z] != 0):
                raise ValueError(f"{path}: {z} is not all zero; TFLite needs symmetric weights and bias.")
        q = Int8Layer(in_scale=in_scale, in_zero=in_zero, w1_scale=init[f"{name}_weight_scale"].astype(np.float32),
                      b1_scale=init[f"{name}_bias_quantized_scale"].astype(np.float32),
                      hidden_scale=float(init[f"{out}_scale"]), hidden_zero=int(init[f"{out}_zero_point"]))
        if q.hidden_zero != -128:
            raise ValueError(f"{path}: {out} zero point is {q.hidden_zero}, not -128; the Relu was not folded.")
        inner.append((init[f"{name}_weight_quantized"].astype(np.int8), init[f"{name}_bias_quantized"].astype(np.int32), q))
        in_scale, in_zero = q.hidden_scale, q.hidden_zero
    return Network(w1=init["dense1_weight_quantized"].astype(np.int8),
                   b1=init["dense1_bias_quantized"].astype(np.int32), quantized=layer, inner=tuple(inner), **common)


def build_tflite(net: Network, *, description: str) -> bytes:
    import flatbuffers
    import tflite as t

    b = flatbuffers.Builder(4096)
    f, h, c = net.w1.shape[1], net.w1.shape[0], net.w2.shape[0]

    buffers: list[bytes] = [b""]  # buffer 0: the empty sentinel every non-constant tensor points at

    def const(data: np.ndarray) -> int:
        buffers.append(np.ascontiguousarray(data).astype(data.dtype.newbyteorder("<")).tobytes())
        return len(buffers) - 1

    def vector(start: Callable, items: list, prepend: Callable) -> int:
        start(b, len(items))
        for item in reversed(items):
            prepend(item)
        return b.EndVector()

    def quant(scale: np.ndarray, zero: np.ndarray, dim: int = 0) -> int:
        s = vector(t.QuantizationParametersStartScaleVector, [float(x) for x in scale], b.PrependFloat32)
        z = vector(t.QuantizationParametersStartZeroPointVector, [int(x) for x in zero], b.PrependInt64)
        t.QuantizationParametersStart(b)
        t.QuantizationParametersAddScale(b, s)
        t.QuantizationParametersAddZeroPoint(b, z)
        t.QuantizationParametersAddQuantizedDimension(b, dim)
        return t.QuantizationParametersEnd(b)

    tensors: list[int] = []
    index: dict[str, int] = {}

    def tensor(name: str, ttype: int, shape: list[int], *, buffer: int = 0, q: int | None = None) -> int:
        nm = b.CreateString(name)
        sh = vector(t.TensorStartShapeVector, [max(d, 1) for d in shape], b.PrependInt32)
        sig = vector(t.TensorStartShapeSignatureVector, shape, b.PrependInt32) if -1 in shape else None
        t.TensorStart(b)
        t.TensorAddShape(b, sh)
        if sig is not None:
            t.TensorAddShapeSignature(b, sig)
        t.TensorAddType(b, ttype)
        t.TensorAddBuffer(b, buffer)
        t.TensorAddName(b, nm)
        if q is not None:
            t.TensorAddQuantization(b, q)
        tensors.append(t.TensorEnd(b))
        index[name] = len(tensors) - 1
        return index[name]

    T = t.TensorType
    tensor("features", T.FLOAT32, [-1, f])
    tensor("std_mean", T.FLOAT32, [f], buffer=const(net.mean))
    tensor("centred", T.FLOAT32, [-1, f])
    tensor("std_scale", T.FLOAT32, [f], buffer=const(net.scale))
    tensor("standardized", T.FLOAT32, [-1, f])
    q = net.quantized
    if q is not None:
        h_zero = np.zeros(h, np.int64)
        tensor("standardized_q", T.INT8, [-1, f], q=quant(np.array([q.in_scale]), np.array([q.in_zero])))
        tensor("dense1_weight", T.INT8, [h, f], buffer=const(net.w1), q=quant(q.w1_scale, h_zero))
        tensor("dense1_bias", T.INT32, [h], buffer=const(net.b1), q=quant(q.b1_scale, h_zero))
        tensor("hidden_q", T.INT8, [-1, h], q=quant(np.array([q.hidden_scale]), np.array([q.hidden_zero])))
        for i, (w, bias, lq) in enumerate(net.inner):
            zero = np.zeros(len(bias), np.int64)
            tensor(f"dense_inner{i}_weight", T.INT8, list(w.shape), buffer=const(w), q=quant(lq.w1_scale, zero))
            tensor(f"dense_inner{i}_bias", T.INT32, [len(bias)], buffer=const(bias), q=quant(lq.b1_scale, zero))
            tensor(f"hidden_inner{i}_q", T.INT8, [-1, len(bias)],
                   q=quant(np.array([lq.hidden_scale]), np.array([lq.hidden_zero])))
    else:
        tensor("dense1_weight", T.FLOAT32, [h, f], buffer=const(net.w1))
        tensor("dense1_bias", T.FLOAT32, [h], buffer=const(net.b1))
        for i, (w, bias) in enumerate(net.inner):
            tensor(f"hidden_pre_inner{i}", T.FLOAT32, [-1, w.shape[1]])
            tensor(f"dense_inner{i}_weight", T.FLOAT32, list(w.shape), buffer=const(w))
            tensor(f"dense_inner{i}_bias", T.FLOAT32, [len(bias)], buffer=const(bias))
    h_last = len(net.inner[-1][1]) if net.inner else h
    tensor("hidden", T.FLOAT32, [-1, h_last])
    tensor("dense2_weight", T.FLOAT32, [c, h_last], buffer=const(net.w2))
    tensor("dense2_bias", T.FLOAT32, [c], buffer=const(net.b2))
    tensor("logits", T.FLOAT32, [-1, c])
    tensor("probabilities", T.FLOAT32, [-1, c])
    tensor("argmax_axis", T.INT32, [1], buffer=const(np.array([1], np.int32)))
    tensor("label", T.INT64, [-1])

    O, BO, AF = t.BuiltinOperator, t.BuiltinOptions, t.ActivationFunctionType
    opcodes: list[tuple[int, int]] = []

    def opcode(code: int, version: int) -> int:
        if (code, version) not in opcodes:
            opcodes.append((code, version))
        return opcodes.index((code, version))

    def options_fc(activation: int) -> int:
        t.FullyConnectedOptionsStart(b)
        t.FullyConnectedOptionsAddFusedActivationFunction(b, activation)
        return t.FullyConnectedOptionsEnd(b)

    def options_simple(start: Callable, add_activation: Callable, end: Callable) -> int:
        start(b)
        add_activation(b, AF.NONE)
        return end(b)

    def options_softmax() -> int:
        t.SoftmaxOptionsStart(b)
        t.SoftmaxOptionsAddBeta(b, 1.0)
        return t.SoftmaxOptionsEnd(b)

    def options_argmax() -> int:
        t.ArgMaxOptionsStart(b)
        t.ArgMaxOptionsAddOutputType(b, T.INT64)
        return t.ArgMaxOptionsEnd(b)

    def options_empty(start: Callable, end: Callable) -> int:
        start(b)
        return end(b)

    sub = (O.SUB, 1, ["features", "std_mean"], ["centred"], BO.SubOptions,
           lambda: options_simple(t.SubOptionsStart, t.SubOptionsAddFusedActivationFunction, t.SubOptionsEnd))
    mul = (O.MUL, 1, ["centred", "std_scale"], ["standardized"], BO.MulOptions,
           lambda: options_simple(t.MulOptionsStart, t.MulOptionsAddFusedActivationFunction, t.MulOptionsEnd))
    k = len(net.inner)
    if q is not None:
        hq = ["hidden_q", *[f"hidden_inner{i}_q" for i in range(k)]]
        dense1 = [
            (O.QUANTIZE, 2, ["standardized"], ["standardized_q"], BO.QuantizeOptions,
             lambda: options_empty(t.QuantizeOptionsStart, t.QuantizeOptionsEnd)),
            (O.FULLY_CONNECTED, 4, ["standardized_q", "dense1_weight", "dense1_bias"], ["hidden_q"],
             BO.FullyConnectedOptions, lambda: options_fc(AF.RELU)),
            *[(O.FULLY_CONNECTED, 4, [hq[i], f"dense_inner{i}_weight", f"dense_inner{i}_bias"], [hq[i + 1]],
               BO.FullyConnectedOptions, lambda: options_fc(AF.RELU)) for i in range(k)],
            (O.DEQUANTIZE, 2, [hq[-1]], ["hidden"], BO.DequantizeOptions,
             lambda: options_empty(t.DequantizeOptionsStart, t.DequantizeOptionsEnd)),
        ]
    else:
        hf = [*[f"hidden_pre_inner{i}" for i in range(k)], "hidden"]
        dense1 = [(O.FULLY_CONNECTED, 1, ["standardized", "dense1_weight", "dense1_bias"], [hf[0]],
                   BO.FullyConnectedOptions, lambda: options_fc(AF.RELU)),
                  *[(O.FULLY_CONNECTED, 1, [hf[i], f"dense_inner{i}_weight", f"dense_inner{i}_bias"], [hf[i + 1]],
                     BO.FullyConnectedOptions, lambda: options_fc(AF.RELU)) for i in range(k)]]
    ops = [
        sub, mul, *dense1,
        (O.FULLY_CONNECTED, 1, ["hidden", "dense2_weight", "dense2_bias"], ["logits"],
         BO.FullyConnectedOptions, lambda: options_fc(AF.NONE)),
        (O.SOFTMAX, 1, ["logits"], ["probabilities"], BO.SoftmaxOptions, options_softmax),
        (O.ARG_MAX, 1, ["probabilities", "argmax_axis"], ["label"], BO.ArgMaxOptions, options_argmax),
    ]
    operators = []
    for code, version, ins, outs, opt_type, make_options in ops:
        opts = make_options()
        i = vector(t.OperatorStartInputsVector, [index[n] for n in ins], b.PrependInt32)
        o = vector(t.OperatorStartOutputsVector, [index[n] for n in outs], b.PrependInt32)
        t.OperatorStart(b)
        t.OperatorAddOpcodeIndex(b, opcode(code, version))
        t.OperatorAddInputs(b, i)
        t.OperatorAddOutputs(b, o)
        t.OperatorAddBuiltinOptionsType(b, opt_type)
        t.OperatorAddBuiltinOptions(b, opts)
        operators.append(t.OperatorEnd(b))

    name = b.CreateString("main")
    tvec = vector(t.SubGraphStartTensorsVector, tensors, b.PrependUOffsetTRelative)
    ivec = vector(t.SubGraphStartInputsVector, [index["features"]], b.PrependInt32)
    ovec = vector(t.SubGraphStartOutputsVector, [index["probabilities"], index["label"]], b.PrependInt32)
    opvec = vector(t.SubGraphStartOperatorsVector, operators, b.PrependUOffsetTRelative)
    t.SubGraphStart(b)
    t.SubGraphAddTensors(b, tvec)
    t.SubGraphAddInputs(b, ivec)
    t.SubGraphAddOutputs(b, ovec)
    t.SubGraphAddOperators(b, opvec)
    t.SubGraphAddName(b, name)
    subgraph = t.SubGraphEnd(b)

    codes = []
    for code, version in opcodes:
        t.OperatorCodeStart(b)
        # Codes below 127 go in the deprecated int8 field too: older runtimes read only that one.
        t.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        t.OperatorCodeAddBuiltinCode(b, code)
        t.OperatorCodeAddVersion(b, version)
        codes.append(t.OperatorCodeEnd(b))

    buffer_offsets = []
    for data in buffers:
        dvec = b.CreateNumpyVector(np.frombuffer(data, np.uint8)) if data else None
        t.BufferStart(b)
        if dvec is not None:
            t.BufferAddData(b, dvec)
        buffer_offsets.append(t.BufferEnd(b))

    def tensor_map(name: str) -> int:
        s = b.CreateString(name)
        t.TensorMapStart(b)
        t.TensorMapAddName(b, s)
        t.TensorMapAddTensorIndex(b, index[name])
        return t.TensorMapEnd(b)

    sig_in = vector(t.SignatureDefStartInputsVector, [tensor_map("features")], b.PrependUOffsetTRelative)
    sig_out = vector(t.SignatureDefStartOutputsVector, [tensor_map("probabilities"), tensor_map("label")],
                     b.PrependUOffsetTRelative)
    key = b.CreateString("serving_default")
    t.SignatureDefStart(b)
    t.SignatureDefAddInputs(b, sig_in)
    t.SignatureDefAddOutputs(b, sig_out)
    t.SignatureDefAddSignatureKey(b, key)
    t.SignatureDefAddSubgraphIndex(b, 0)
    signature = t.SignatureDefEnd(b)

    desc = b.CreateString(description)
    subgraphs = vector(t.ModelStartSubgraphsVector, [subgraph], b.PrependUOffsetTRelative)
    code_vec = vector(t.ModelStartOperatorCodesVector, codes, b.PrependUOffsetTRelative)
    buf_vec = vector(t.ModelStartBuffersVector, buffer_offsets, b.PrependUOffsetTRelative)
    sig_vec = vector(t.ModelStartSignatureDefsVector, [signature], b.PrependUOffsetTRelative)
    t.ModelStart(b)
    t.ModelAddVersion(b, 3)
    t.ModelAddOperatorCodes(b, code_vec)
    t.ModelAddSubgraphs(b, subgraphs)
    t.ModelAddDescription(b, desc)
    t.ModelAddBuffers(b, buf_vec)
    t.ModelAddSignatureDefs(b, sig_vec)
    b.Finish(t.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def convert(onnx_path: Path, out: Path, *, description: str) -> None:
    """Write `out` (.tflite) from the fp32 or int8 ONNX model at `onnx_path`."""
    out.write_bytes(build_tflite(read_onnx(onnx_path), description=description))


def weight_bytes(path: Path) -> int:
    """Bytes of constant data (weights, biases, the standardizer) in a .tflite file."""
    import tflite as t

    model = t.Model.GetRootAs(Path(path).read_bytes(), 0)
    return sum(model.Buffers(i).DataLength() for i in range(model.BuffersLength()))
