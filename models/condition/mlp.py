"""A one-hidden-layer perceptron in numpy: standardize, dense + ReLU, dense, softmax.

(`train(..., inner=(256,))` inserts further dense + ReLU layers after the first, for benchmarks
that need a model whose weights dominate its file; the recipe itself never passes it.)

No torch or tensorflow: the network is small enough that full-batch Adam on float64 numpy
arrays trains it in about a second, and every step is a plain matrix product, so the same numpy
and BLAS on the same CPU give the same weights bit for bit. (BLAS kernels differ between CPU
families, so another machine may differ in the last bits; the recipe's metrics do not.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Weights:
    """What the exported graph holds, in float32: `softmax(relu((x - mean) * scale @ w1.T + b1) @ w2.T + b2)`."""

    mean: np.ndarray  # [F]
    scale: np.ndarray  # [F], 1 / std
    w1: np.ndarray  # [H, F]  (out, in), the layout of Gemm(transB=1) and TFLite FULLY_CONNECTED
    b1: np.ndarray  # [H]
    w2: np.ndarray  # [C, H] (H: the last hidden layer's width)
    b2: np.ndarray  # [C]
    # Hidden-to-hidden layers after the first ReLU, each `relu(h @ w.T + b)`, w [H_out, H_in]. Empty
    # in the recipe (and in every exported graph of export.py); only `train(..., inner=...)` fills it.
    inner: tuple[tuple[np.ndarray, np.ndarray], ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    hidden: int = 16
    steps: int = 1500
    learning_rate: float = 0.01
    l2: float = 1e-4
    seed: int = 0


def standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and 1/std; a constant feature gets scale 1 rather than a division by zero."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 1e-12, 1.0 / np.where(std > 1e-12, std, 1.0), 1.0)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(
    x: np.ndarray, y: np.ndarray, *, n_classes: int, config: TrainConfig = TrainConfig(),
    inner: Sequence[int] = (),
) -> tuple[Weights, list[float]]:
    """Weights fitted by full-batch Adam on cross-entropy + L2, and the loss every 100 steps.

    `inner`: widths of further hidden layers after the first (`config.hidden` wide), each dense +
    ReLU. The default, none, is the recipe's network, trained exactly as before: the same draws
    from the seeded generator in the same order, the same arithmetic.
    """
    mean, scale = standardizer(x)
    xs = (x - mean) * scale
    n, f = xs.shape
    rng = np.random.default_rng(config.seed)
    widths = [config.hidden, *inner]
    params = {
        "w1": rng.standard_normal((f, config.hidden)) * np.sqrt(2.0 / f),  # He init for ReLU
        "b1": np.zeros(config.hidden),
    }
    mids = [(f"w_inner{i}", f"b_inner{i}") for i in range(len(inner))]
    for (wk, bk), fan_in, width in zip(mids, widths, widths[1:]):
        params[wk] = rng.standard_normal((fan_in, width)) * np.sqrt(2.0 / fan_in)
        params[bk] = np.zeros(width)
    params["w2"] = rng.standard_normal((widths[-1], n_classes)) * np.sqrt(1.0 / widths[-1])
    params["b2"] = np.zeros(n_classes)
    onehot = np.eye(n_classes)[y]
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    losses = []
    for step in range(1, config.steps + 1):
        pre = xs @ params["w1"] + params["b1"]
        h = np.maximum(pre, 0.0)
        layers = []  # (input, pre-activation) of each inner layer, for the backward pass
        for wk, bk in mids:
            layers.append((h, h @ params[wk] + params[bk]))
            h = np.maximum(layers[-1][1], 0.0)
        p = _softmax(h @ params["w2"] + params["b2"])
        if step % 100 == 1 or step == config.steps:
            ce = -np.log(np.maximum((p * onehot).sum(axis=1), 1e-300)).mean()
            l2 = (params["w1"] ** 2).sum() + (params["w2"] ** 2).sum() + sum((params[wk] ** 2).sum() for wk, _ in mids)
            losses.append(float(ce + 0.5 * config.l2 * l2))
        d_logits = (p - onehot) / n
        grads = {
            "w2": h.T @ d_logits + config.l2 * params["w2"],
            "b2": d_logits.sum(axis=0),
        }
        d_h, w_next = d_logits, params["w2"]
        for (wk, bk), (h_in, pre_i) in zip(reversed(mids), reversed(layers)):
            d_pre_i = (d_h @ w_next.T) * (pre_i > 0)
            grads[wk] = h_in.T @ d_pre_i + config.l2 * params[wk]
            grads[bk] = d_pre_i.sum(axis=0)
            d_h, w_next = d_pre_i, params[wk]
        d_pre = (d_h @ w_next.T) * (pre > 0)
        grads["w1"] = xs.T @ d_pre + config.l2 * params["w1"]
        grads["b1"] = d_pre.sum(axis=0)
        for k in params:
            m[k] = beta1 * m[k] + (1 - beta1) * grads[k]
            v[k] = beta2 * v[k] + (1 - beta2) * grads[k] ** 2
            m_hat = m[k] / (1 - beta1**step)
            v_hat = v[k] / (1 - beta2**step)
            params[k] = params[k] - config.learning_rate * m_hat / (np.sqrt(v_hat) + eps)
    f32 = np.float32
    weights = Weights(
        mean=mean.astype(f32), scale=scale.astype(f32),
        w1=np.ascontiguousarray(params["w1"].T, f32), b1=params["b1"].astype(f32),
        w2=np.ascontiguousarray(params["w2"].T, f32), b2=params["b2"].astype(f32),
        inner=tuple((np.ascontiguousarray(params[wk].T, f32), params[bk].astype(f32)) for wk, bk in mids),
    )
    return weights, losses


def predict_proba(weights: Weights, x: np.ndarray) -> np.ndarray:
    """The exported graph's arithmetic in float32 numpy: the reference the ONNX model must match."""
    xs = (x.astype(np.float32) - weights.mean) * weights.scale
    h = np.maximum(xs @ weights.w1.T + weights.b1, np.float32(0))
    for w, b in weights.inner:
        h = np.maximum(h @ w.T + b, np.float32(0))
    return _softmax(h @ weights.w2.T + weights.b2)


def scores(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> dict[str, object]:
    """Accuracy, macro-F1, per-class F1 and the confusion matrix (rows: true, columns: predicted)."""
    confusion = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    precision = np.divide(tp, confusion.sum(axis=0), out=np.zeros(n_classes), where=confusion.sum(axis=0) > 0)
    recall = np.divide(tp, confusion.sum(axis=1), out=np.zeros(n_classes), where=confusion.sum(axis=1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_classes), where=(precision + recall) > 0)
    return {
        "accuracy": round(float(tp.sum() / confusion.sum()), 6),
        "macro_f1": round(float(f1.mean()), 6),
        "f1": [round(float(x), 6) for x in f1],
        "confusion": confusion.tolist(),
        "n": int(confusion.sum()),
    }
