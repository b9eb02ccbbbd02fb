"""The device's model manager: makes what runs match what the hub desires, and never leaves a broken model serving.

Who calls it: the agent daemon runs `run()` as a supervised task when `[models]` is configured
(and a fleet simulator runs many managers in one process). Each round:

    1. judge the newly installed model against the device's own health gate (error rate, p95
       over its first `gate.windows` windows); a breach rolls back to the previous slot by itself;
    2. exchange the twin: POST what runs (and the last refusal), get back what is desired;
    3. reconcile: desired == active → nothing; desired == previous → roll back (no download);
       else pick a variant, verify its signature and feature params, download (resumable),
       install (verify files, self-test on the copies, switch), load, serve;
    4. the shadow challenger the same way, beside the champion, never acted on;
    5. wait `poll_interval_s` (the hub's, else the config's).

Refusals are remembered in `refused.json` by manifest digest, with the reason, so a model refused
for what it is (tampered, untrusted key, failed self-test, broken gate, wrong features) is not
fetched again and again; a re-signed manifest has a new digest and is tried afresh. Failures of
the way there (hub unreachable, download interrupted) are retried every round; a partial
download is resumed from where it stopped.

Blocking work (hashing, fsync, model loading) runs in threads; nothing here holds the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from protocol import Manifest, VerificationError
from protocol.features import FeatureSpec
from protocol.signing import verify
from protocol.twin import Desired, DesiredModel, FailureReport, ModelRef, Reported, Variant

from ..config import InferenceConfig, ModelsConfig
from ..errors import (
    DownloadError,
    InferenceError,
    InstallError,
    ModelError,
    RollbackError,
    TamperedModelError,
    UntrustedKeyError,
)
from ..inference import InferenceSettings, make_backend, self_test
from ..inference.pipeline import InferencePipeline
from ..twin import TwinClient, TwinError
from .download import download_all
from .slots import Slots, load_trusted_keys, verify_artifact

log = logging.getLogger(__name__)

REFUSED = "refused.json"
FAILURE = "failure.json"  # the last refusal, reported until a model installs
SPECS = "specs"
STAGING = "staging"
SHADOW = "shadow"
# Refusals that say something about the model itself; anything else is retried next round.
PERMANENT = frozenset({
    "tampered", "untrusted_key", "truncated", "self_test_failed", "health_gate", "load_failed",
    "feature_spec_mismatch", "no_variant",
})


def settings_of(cfg: InferenceConfig) -> InferenceSettings:
    return InferenceSettings(backend=cfg.backend, providers=cfg.providers, threads=cfg.threads, delegate=cfg.delegate)


@dataclass
class _Gate:
    """The device-side gate of one install, open until judged."""

    version: str
    windows: int
    max_error_rate: float | None
    max_p95_ms: float | None


class ModelManager:
    def __init__(
        self, cfg: ModelsConfig, inference: InferenceConfig, pipeline: InferencePipeline, *,
        tenant: str, device: str, tags: dict[str, str], config_version: str | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.cfg = cfg
        self.settings = settings_of(inference)
        self.pipeline = pipeline
        self.root = Path(cfg.dir)
        self.slots = Slots(self.root, clock=clock)
        self.trusted = load_trusted_keys(cfg.trusted_keys)
        self.tags = dict(tags)
        self.config_version = config_version
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self.twin: TwinClient | None = None
        self.tenant, self.device = tenant, device
        self._gate: _Gate | None = None
        self._shadow_digest: str | None = None
        self._failure: FailureReport | None = None  # last refusal, as reported
        self.desired: Desired | None = None
        self.counters: dict[str, int] = {}
        self._refused: dict[str, dict[str, Any]] = self._read_refused()
        self.changed = asyncio.Event()  # set after every switch (bench/bench_rollout.py times switches by it)
        self.started = False

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Serve what the active slot holds; a model that no longer loads is rolled back from.

        The daemon calls this before it starts its inputs, so the first window after a boot is
        already judged by the model that was serving before it."""
        if self.started:
            return
        if self._client is None:
            self._client = httpx.AsyncClient()
        if self.cfg.hub_url is not None:
            self.twin = TwinClient(self.cfg.hub_url, self.tenant, self.device, client=self._client,
                                   timeout=self.cfg.request_timeout.total_seconds())
        try:
            self._failure = FailureReport.from_dict("failure", json.loads((self.root / FAILURE).read_bytes()))
        except (OSError, ValueError):  # none yet, or torn: only a lost detail of the report
            self._failure = None
        while (active := await asyncio.to_thread(lambda: self.slots.active)) is not None:
            try:
                await self._serve(active.manifest, active.model_path)
                break
            except (InferenceError, ModelError) as exc:
                log.error("model %s %s in the active slot does not load: %s", active.manifest.name,
                          active.manifest.version, exc)
                if not await self._rollback(active.manifest, "load_failed", str(exc)):
                    self.pipeline.set_champion(None, None, None)
                    break
        self.started = True

    async def close(self) -> None:
        for old in (self.pipeline.set_champion(None, None, None), self.pipeline.set_shadow(None, None)):
            if old is not None:
                old.close()
        if self._own_client and self._client is not None:
            await self._client.aclose()

    async def run(self) -> None:
        """Exchange and reconcile forever (until cancelled); errors are logged, counted, retried."""
        await self.start()  # a no-op when the daemon already started it
        # The models keep serving when this task stops: the daemon's last health report and
        # last windows still use them; the owner calls close() at the very end.
        while True:
            await self.round()
            poll = self.desired.poll_interval_s if self.desired else self.cfg.poll_interval.total_seconds()
            await asyncio.sleep(poll)

    async def round(self) -> None:
        await self.judge_gate()
        if self.twin is None:
            return
        try:
            self.desired = await self.twin.exchange(self.reported())
        except TwinError as exc:
            self._count("twin.failures")
            log.warning("%s", exc)
            return
        await self.reconcile(self.desired)

    # --- what the device reports -----------------------------------------------------------

    def reported(self) -> Reported:
        active = _ref(self.slots.active)  # two small files; read fresh so a report never lies
        previous = _ref(self.slots.previous)
        inference, shadow = self.pipeline.report()
        return Reported(
            tags=self.tags, config_version=self.config_version, active=active, previous=previous,
            failure=self._failure, inference=inference, shadow=shadow,
        )

    # --- reconcile -------------------------------------------------------------------------

    async def reconcile(self, desired: Desired) -> None:
        if desired.model is not None:
            await self._reconcile_model(desired.model)
        await self._reconcile_shadow(desired.shadow)

    async def _reconcile_model(self, dm: DesiredModel) -> None:
        active = self.slots.active
        if active is not None and (active.manifest.name, active.manifest.version) == (dm.name, dm.version):
            return
        previous = self.slots.previous
        if previous is not None and (previous.manifest.name, previous.manifest.version) == (dm.name, dm.version):
            # The hub sends us back (a halted rollout): the previous slot has it, no download.
            log.info("hub wants %s %s back: rolling back", dm.name, dm.version)
            await self._rollback(active.manifest if active else None, None, "the hub asked for the previous model")
            return
        variant = self._choose(dm)
        if variant is None or variant.manifest.digest in self._refused:
            return
        try:
            await self._install(dm, variant)
        except (InstallError, DownloadError, InferenceError, ModelError) as exc:
            reason = _reason(exc)
            self._refuse(variant.manifest, reason, str(exc))
            log.error("model %s %s refused (%s): %s", dm.name, dm.version, reason, exc)

    def _choose(self, dm: DesiredModel) -> Variant | None:
        by_format = {f"{v.manifest.runtime.format.value}:{v.manifest.runtime.quantization.value}": v for v in dm.variants}
        allowed = [f for f in self.cfg.formats if self.settings.backend is None
                   or f.split(":")[0] == {"onnx": "onnx", "litert": "tflite"}[self.settings.backend.value]]
        for f in allowed:
            if f in by_format:
                return by_format[f]
        m = dm.variants[0].manifest
        key = f"no-variant:{dm.name}:{dm.version}"
        if key not in self._refused:
            self._refuse(m, "no_variant", f"none of its variants {sorted(by_format)} is in this device's formats "
                                          f"{list(allowed)}.", key=key)
        return None

    async def _install(self, dm: DesiredModel, variant: Variant) -> None:
        m, sig = variant.manifest, variant.signature
        # Cheap checks before any byte is downloaded: who signed it, and are the features ours.
        try:
            verify(m, sig, self.trusted)
        except VerificationError as exc:
            err = UntrustedKeyError if exc.reason == "unknown_key" else TamperedModelError
            raise err(m.name, m.version, str(exc)) from exc
        spec = self._spec_from(dm.feature_params, m)
        staged = self.root / STAGING / m.digest[:16]
        base = f"{self.cfg.hub_url}{dm.artifacts_url}"
        self._count("downloads")
        await download_all(base, m, staged, client=self._client,
                           request_timeout=self.cfg.request_timeout.total_seconds())
        old = self.slots.active
        hook = self_test(lambda man: make_backend(self.settings, man))
        info = await asyncio.to_thread(self.slots.install, staged, m, sig, self.trusted, self_test=hook)
        await asyncio.to_thread(_save_spec, self.root, spec)
        shutil.rmtree(self.root / STAGING, ignore_errors=True)
        try:
            await self._serve(m, info.model_path, spec=spec)
        except (InferenceError, ModelError) as exc:
            # Passed its self-test, then failed to load for serving: judged broken all the same.
            await self._rollback(m, "load_failed", str(exc))
            return
        self._count("installs")
        self._failure = None
        (self.root / FAILURE).unlink(missing_ok=True)
        self._gate = _Gate(m.version, self.cfg.gate.windows, self.cfg.gate.max_error_rate, self.cfg.gate.max_p95_ms)
        log.info("model %s %s (%s) installed in slot %s, replacing %s", m.name, m.version, m.runtime.model,
                 info.slot, "nothing" if old is None else f"{old.manifest.version}")

    def _spec_from(self, params: dict[str, Any], m: Manifest) -> FeatureSpec:
        try:
            spec = FeatureSpec.from_params(params)
        except (ValueError, TypeError, KeyError) as exc:
            raise _Refusal(m, "feature_spec_mismatch", f"its feature params do not parse ({exc}).") from exc
        if spec.version != m.feature_spec:
            raise _Refusal(m, "feature_spec_mismatch",
                           f"its feature params hash to {spec.version} on this device, but it was trained on "
                           f"{m.feature_spec} (different params, or different feature code on this device).")
        return spec

    async def _serve(self, m: Manifest, model_path: Path, *, spec: FeatureSpec | None = None) -> None:
        spec = spec or await asyncio.to_thread(_load_spec, self.root, m)
        backend = make_backend(self.settings, m)
        await asyncio.to_thread(_load_warm, backend, model_path, m)
        old = self.pipeline.set_champion(backend, m, spec)
        if old is not None:
            old.close()
        self.changed.set()

    async def _rollback(self, broken: Manifest | None, reason: str | None, why: str) -> bool:
        """Back to the previous slot; with `reason`, the model left is recorded as refused."""
        if broken is not None and reason is not None:
            self._refuse(broken, reason, why)
        self._gate = None
        try:
            info = await asyncio.to_thread(self.slots.rollback)
        except RollbackError as exc:
            log.error("cannot roll back: %s", exc)
            self._count("rollback_failures")
            return False
        self._count("rollbacks")
        await self._serve(info.manifest, info.model_path)
        log.warning("rolled back to %s %s (%s)", info.manifest.name, info.manifest.version, why)
        return True

    # --- the device's own gate -------------------------------------------------------------

    async def judge_gate(self) -> None:
        gate = self._gate
        if gate is None:
            return
        report, _ = self.pipeline.report()
        if report is None or report.version != gate.version or report.windows + report.errors < gate.windows:
            return
        self._gate = None
        total = report.windows + report.errors
        rate = report.errors / total if total else 0.0
        why = None
        if gate.max_error_rate is not None and rate > gate.max_error_rate:
            why = f"its error rate {rate:.3f} over {total} windows is above {gate.max_error_rate}"
        elif gate.max_p95_ms is not None and report.p95_ms is not None and report.p95_ms > gate.max_p95_ms:
            why = f"its p95 latency {report.p95_ms:.3f} ms is above {gate.max_p95_ms} ms"
        if why is None:
            log.info("model %s passed the device's health gate over %d windows", gate.version, total)
            return
        active = self.slots.active
        if active is not None:
            await self._rollback(active.manifest, "health_gate", f"Model {active.manifest.name} {gate.version} broke "
                                                                 f"the device's health gate: {why}.")

    # --- shadow ----------------------------------------------------------------------------

    async def _reconcile_shadow(self, dm: DesiredModel | None) -> None:
        if dm is None:
            if self._shadow_digest is not None:
                old = self.pipeline.set_shadow(None, None)
                if old is not None:
                    old.close()
                self._shadow_digest = None
            return
        variant = self._choose(dm)
        if variant is None:
            return
        m = variant.manifest
        if m.digest == self._shadow_digest or m.digest in self._refused:
            return
        try:
            verify(m, variant.signature, self.trusted)
            self._spec_from(dm.feature_params, m)
            folder = self.root / SHADOW / m.digest[:16]
            await download_all(f"{self.cfg.hub_url}{dm.artifacts_url}", m, folder, client=self._client,
                               request_timeout=self.cfg.request_timeout.total_seconds())
            for a in m.artifacts:
                await asyncio.to_thread(verify_artifact, folder / a.name, a)
            backend = make_backend(self.settings, m)
            await asyncio.to_thread(_load_warm, backend, folder / m.runtime.model, m)
            old = self.pipeline.set_shadow(backend, m)
        except (VerificationError, DownloadError, InferenceError, ModelError, ValueError, OSError) as exc:
            self._refuse(m, _reason(exc), f"shadow: {exc}")
            return
        if old is not None:
            old.close()
        self._shadow_digest = m.digest
        log.info("shadow challenger %s %s running beside the champion", m.name, m.version)

    # --- refusals and counters ---------------------------------------------------------------

    def _refuse(self, m: Manifest, reason: str, message: str, *, key: str | None = None) -> None:
        self._count(f"refused.{reason}")
        self._failure = FailureReport(reason, message, m.name, m.version, self._clock().isoformat())
        if reason in PERMANENT:
            self._refused[key or m.digest] = {"reason": reason, "message": message, "name": m.name,
                                              "version": m.version}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_json(self.root / FAILURE, self._failure.to_dict())
            if reason in PERMANENT:
                _write_json(self.root / REFUSED, self._refused)
        except OSError as exc:  # the refusal still holds for this run
            log.warning("refusal of %s %s not recorded on disk: %s", m.name, m.version, exc)

    def _read_refused(self) -> dict[str, dict[str, Any]]:
        try:
            d = json.loads((self.root / REFUSED).read_bytes())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def health(self) -> dict[str, float]:
        return {f"models.{k}": float(v) for k, v in self.counters.items()}


class _Refusal(InstallError):
    def __init__(self, m: Manifest, reason: str, why: str) -> None:
        self.reason = reason
        super().__init__(m.name, m.version, why)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (InstallError, VerificationError, DownloadError)):
        return exc.reason
    if isinstance(exc, InferenceError):
        return "load_failed"
    return "install_failed"


def _load_warm(backend: Any, path: Path, m: Manifest) -> None:
    backend.load(path, m)
    backend.warm_up(np.array([s.inputs for s in m.self_test.samples], dtype=np.float32))


def _ref(info: Any) -> ModelRef | None:
    return None if info is None else ModelRef.of(info.manifest)


def _save_spec(root: Path, spec: FeatureSpec) -> None:
    folder = root / SPECS
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / f"{spec.version}.json", spec.params())


def _load_spec(root: Path, m: Manifest) -> FeatureSpec:
    path = root / SPECS / f"{m.feature_spec}.json"
    try:
        spec = FeatureSpec.from_params(json.loads(path.read_bytes()))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"The feature params of {m.name} {m.version} ({path}) cannot be read: {exc}.") from exc
    if spec.version != m.feature_spec:
        raise ModelError(f"The feature params in {path} hash to {spec.version}, not {m.feature_spec}.")
    return spec


def _write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(json.dumps(obj, sort_keys=True).encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["ModelManager", "PERMANENT", "settings_of"]
