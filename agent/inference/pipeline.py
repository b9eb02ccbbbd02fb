"""The inference pipeline: feature windows to prediction readings, a shadow challenger, the figures.

Contract (`InferencePipeline`):

* **Who calls it.** The model manager (agent/models/manager.py) swaps models with `set_champion`
  and `set_shadow`, from the event loop or its own thread, whenever the twin says so. The
  inference tap (agent/inference/tap.py) calls `predict` off the event loop
  (`asyncio.to_thread`), once per batch of closed windows, and `count_*` for windows that never
  reached a model. The health reporter calls `health()` and the twin client `report()` from the
  event loop, once per interval: both are cheap and never wait for a running predict.
* **Swaps.** One lock is held for the whole of a predict and of a swap, so a swap waits for the
  predict in flight (milliseconds) and a backend is never closed under a running predict: the
  caller closes the backend a setter returns, after it returned. Figures restart with every
  champion, as `protocol.twin.InferenceReport` says; shadow figures restart with either model.
* **What errors mean.** `PredictError` from the champion: the batch's windows are counted in
  `errors` and `predict` returns None; the model keeps serving. From the shadow: counted in the
  shadow's `errors`; the champion's readings go out without shadow channels. A model whose
  feature spec does not match is refused with `InferenceError` (set_champion/set_shadow).

Prediction readings (`Kind.PREDICTION`), one timestamp per window, its start:

    pred.class        index of the champion's most probable class, as a float
    pred.p.<class>    the champion's probability of each class
    shadow.class      the shadow's class index (only while a shadow runs and did not fail)
    shadow.agree      1.0 when both chose the same class (compared by name), else 0.0
    feat.<feature>    each feature the champion was fed, as the float64 window_features computed
                      it, before the float32 cast for the model (only with `send_features`, the
                      default): the hub's consistency check (hub/features/consistency.py) compares
                      them with its own features of the same windows

Class and model names become channel names, whose rule (protocol.readings.check_channel) is
1-64 characters of `A-Z a-z 0-9 _ . : -`: other characters turn into `_` (a model version
`1.0.0+rc1` gives `info.model.condition.1.0.0_rc1`); `info.model.*` is cut to 64 characters; a
class whose channel would collide with another's or pass 64 characters is named by its index
instead (`pred.p.2`). Likewise a feature whose `feat.<feature>` would pass 64 characters is sent
as `feat.<i>`, `i` its index in the spec's `feature_names` (feature names are `<channel>.<agg>`,
valid channel names, so `feat.<i>` never collides with a named one).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from protocol import Manifest, Readings
from protocol.features import FeatureSpec
from protocol.twin import InferenceReport, ShadowReport

from ..errors import InferenceError, PredictError
from .base import Backend

__all__ = ["InferencePipeline", "channel_safe", "feature_channels"]

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")
_MAX_CHANNEL = 64


def channel_safe(prefix: str, name: str) -> str | None:
    """`prefix + name` as a valid channel name (see module docstring), or None when it cannot fit."""
    channel = prefix + _UNSAFE.sub("_", name)
    return channel if len(channel) <= _MAX_CHANNEL else None


def _class_channels(classes: tuple[str, ...]) -> tuple[str, ...]:
    named = [channel_safe("pred.p.", c) for c in classes]
    taken = Counter(named)
    return tuple(c if c is not None and taken[c] == 1 else f"pred.p.{i}" for i, c in enumerate(named))


def feature_channels(names: tuple[str, ...]) -> tuple[str, ...]:
    """The `feat.*` channel of each feature name (module docstring); the hub applies the same rule."""
    return tuple(c if (c := channel_safe("feat.", n)) is not None else f"feat.{i}" for i, n in enumerate(names))


@dataclass
class _Figures:
    """Counts since a model was set; guarded by the pipeline's figures lock."""

    calls: int = 0
    windows: int = 0
    errors: int = 0
    classes: Counter = field(default_factory=Counter)
    late_windows: int = 0
    dropped_windows: int = 0
    stale_windows: int = 0
    shadow_windows: int = 0
    shadow_agreed: int = 0
    shadow_errors: int = 0


@dataclass(frozen=True)
class _Model:
    backend: Backend
    manifest: Manifest


class InferencePipeline:
    def __init__(self, *, send_features: bool = True) -> None:
        self.send_features = bool(send_features)  # also emit feat.* readings (module docstring)
        self._swap = threading.Lock()  # held by predict and the setters: a swap never races a predict
        self._figs_lock = threading.Lock()  # short: counters and the current models, for readers
        self._champion: _Model | None = None
        self._shadow: _Model | None = None
        self._spec: FeatureSpec | None = None
        self._channels: tuple[str, ...] = ()
        self._feature_channels: tuple[str, ...] = ()
        self._figs = _Figures()

    # --- models -----------------------------------------------------------------------------------
    @property
    def spec(self) -> FeatureSpec | None:
        """The champion's feature spec; None while no model serves (the tap then feeds nothing)."""
        return self._spec

    def set_champion(
        self, backend: Backend | None, manifest: Manifest | None, spec: FeatureSpec | None
    ) -> Backend | None:
        """Serve `backend` (loaded) from now on, or nothing when all three are None. Returns the
        previous champion's backend for the caller to close. A shadow whose feature spec differs
        from the new champion's stays set but is not run until `set_shadow` replaces it."""
        if backend is None:
            if manifest is not None or spec is not None:
                raise InferenceError("set_champion(None, ...) takes no manifest and no spec: no model, no spec.")
        else:
            if manifest is None or spec is None:
                raise InferenceError(f"set_champion({type(backend).__name__}, ...) needs the model's manifest and spec.")
            _check_spec(manifest, spec, "champion")
        with self._swap:
            old = self._champion.backend if self._champion is not None else None
            with self._figs_lock:
                self._champion = None if backend is None else _Model(backend, manifest)  # type: ignore[arg-type]
                self._spec = spec
                self._channels = _class_channels(manifest.classes) if manifest is not None else ()
                self._feature_channels = feature_channels(spec.feature_names) if spec is not None else ()
                self._figs = _Figures()
        return old

    def set_shadow(self, backend: Backend | None, manifest: Manifest | None) -> Backend | None:
        """Run `backend` beside the champion on the same windows (never acted on), or no shadow
        with None. It must take the champion's feature spec. Returns the previous shadow's backend."""
        with self._swap:
            if backend is not None:
                if manifest is None:
                    raise InferenceError(f"set_shadow({type(backend).__name__}, None) needs the shadow's manifest.")
                if self._spec is None:
                    raise InferenceError(
                        f"Shadow {manifest.name} {manifest.version} cannot run: there is no champion to compare it with."
                    )
                _check_spec(manifest, self._spec, "shadow")
            old = self._shadow.backend if self._shadow is not None else None
            with self._figs_lock:
                self._shadow = None if backend is None else _Model(backend, manifest)  # type: ignore[arg-type]
                self._figs.shadow_windows = self._figs.shadow_agreed = self._figs.shadow_errors = 0
        return old

    # --- predictions ------------------------------------------------------------------------------
    def predict(self, starts_us: np.ndarray, features: np.ndarray, *, spec: FeatureSpec | None = None) -> Readings | None:
        """Prediction readings for a batch of windows, or None (no model, a failed batch, no rows).

        Blocking: run it in a worker thread. `spec`, when given, is the spec the rows were
        computed with; rows of another spec than the champion's (a swap happened while they
        queued) are counted as `stale_windows` and not predicted. `features` may be float64 (the
        tap's, sent as `feat.*` as they are) or float32; the models get them as float32."""
        starts_us = np.asarray(starts_us, np.int64)
        n = len(starts_us)
        if features.ndim != 2 or len(features) != n:
            raise ValueError(f"predict got {n} window starts and features of shape {features.shape}; they must pair up.")
        with self._swap:
            champion, shadow = self._champion, self._shadow
            if champion is None or n == 0:
                return None
            if spec is not None and spec != self._spec:
                with self._figs_lock:
                    self._figs.stale_windows += n
                return None
            fed = np.asarray(features, np.float32)  # what the models take; `features` stays float64
            try:
                probabilities = _checked(champion.backend.predict(fed), n, champion.manifest)
            except PredictError:
                with self._figs_lock:
                    self._figs.calls += 1
                    self._figs.errors += n
                return None
            labels = probabilities.argmax(axis=1)
            classes = champion.manifest.classes
            columns = [labels.astype(np.float64), *probabilities.T.astype(np.float64)]
            names = ["pred.class", *self._channels]
            shadow_counts = None
            if shadow is not None and shadow.manifest.feature_spec == champion.manifest.feature_spec:
                try:
                    other = _checked(shadow.backend.predict(fed), n, shadow.manifest).argmax(axis=1)
                except PredictError:
                    shadow_counts = (0, 0, n)
                else:
                    agree = np.array([classes[a] == shadow.manifest.classes[b] for a, b in zip(labels, other)], bool)
                    columns += [other.astype(np.float64), agree.astype(np.float64)]
                    names += ["shadow.class", "shadow.agree"]
                    shadow_counts = (n, int(agree.sum()), 0)
            if self.send_features and features.shape[1] == len(self._feature_channels):
                columns += list(np.asarray(features, np.float64).T)
                names += self._feature_channels
            with self._figs_lock:
                f = self._figs
                f.calls += 1
                f.windows += n
                f.classes.update(classes[i] for i in labels.tolist())
                if shadow_counts is not None:
                    f.shadow_windows += shadow_counts[0]
                    f.shadow_agreed += shadow_counts[1]
                    f.shadow_errors += shadow_counts[2]
        return Readings.from_columns(names, starts_us, np.column_stack(columns))

    def count_late(self, windows: int) -> None:
        """Windows that got readings after they had closed (FeatureWindower.late_windows deltas)."""
        with self._figs_lock:
            self._figs.late_windows += windows

    def count_dropped(self, windows: int) -> None:
        """Closed windows dropped unpredicted because the tap's queue was full."""
        with self._figs_lock:
            self._figs.dropped_windows += windows

    # --- figures ----------------------------------------------------------------------------------
    def report(self) -> tuple[InferenceReport | None, ShadowReport | None]:
        """What the twin client reports: the champion's figures and the shadow's, None without one."""
        with self._figs_lock:
            champion, shadow, f = self._champion, self._shadow, self._figs
            counts = (f.calls, f.windows, f.errors, dict(f.classes), f.shadow_windows, f.shadow_agreed, f.shadow_errors)
        calls, windows, errors, classes, s_windows, s_agreed, s_errors = counts
        inference = None
        if champion is not None:
            latency = champion.backend.latency()
            inference = InferenceReport(champion.manifest.version, calls, windows, errors,
                                        latency.get("p50_ms"), latency.get("p95_ms"), classes)
        return inference, None if shadow is None else ShadowReport(shadow.manifest.version, s_windows, s_agreed, s_errors)

    def health(self) -> dict[str, float]:
        """Health channels (docs/protocol.md §5): inference.*, shadow.*, info.model.<name>.<version>."""
        with self._figs_lock:
            champion, shadow, f = self._champion, self._shadow, self._figs
            out = {
                "inference.calls": f.calls, "inference.windows": f.windows, "inference.errors": f.errors,
                "inference.late_windows": f.late_windows, "inference.dropped_windows": f.dropped_windows,
                "inference.stale_windows": f.stale_windows,
            }
            if shadow is not None:
                out |= {"shadow.windows": f.shadow_windows, "shadow.agreed": f.shadow_agreed,
                        "shadow.errors": f.shadow_errors}
        if champion is not None:
            latency = champion.backend.latency()
            for key in ("p50_ms", "p95_ms"):
                if latency.get(key) is not None:
                    out[f"inference.{key}"] = latency[key]
            m = champion.manifest
            out[("info.model." + _UNSAFE.sub("_", f"{m.name}.{m.version}"))[:_MAX_CHANNEL]] = 1.0
        return {k: float(v) for k, v in out.items()}


def _check_spec(manifest: Manifest, spec: FeatureSpec, role: str) -> None:
    if not isinstance(spec, FeatureSpec):
        raise InferenceError(f"The {role} spec {spec!r} is not a protocol.features.FeatureSpec.")
    if spec.version != manifest.feature_spec:
        raise InferenceError(
            f"The {role} {manifest.name} {manifest.version} was trained on feature spec {manifest.feature_spec}, "
            f"not {spec.version}, the one {'given' if role == 'champion' else 'the champion takes'}."
        )


def _checked(probabilities: np.ndarray, n: int, manifest: Manifest) -> np.ndarray:
    """The backend's output as float [n, classes]; anything else fails the batch like a PredictError."""
    p = np.asarray(probabilities)
    if p.shape != (n, len(manifest.classes)) or not np.isfinite(p).all():
        raise PredictError(
            f"{manifest.name} {manifest.version} returned probabilities of shape {p.shape} (finite: "
            f"{bool(np.isfinite(p).all())}) for {n} windows; expected ({n}, {len(manifest.classes)}), finite."
        )
    return p
