"""The whole device with a model: the daemon gets its model from the hub's twin, predicts every
closed window of its own readings, and its predictions and inference figures reach the lake.

And online equals offline: the classes the device predicted equal those the same model gives on
the features the hub computes from the stored telemetry with protocol.features.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.inference import InferenceSettings, make_backend
from hub.storage.lake import Lake
from hub.storage.query import query_telemetry
from models.condition.data import SPEC
from protocol import Readings
from simulators.model_faults import V1


from .harness import agent_config, hub_config, running_hub
from tests.servers import await_until

pytestmark = pytest.mark.integration

MODEL = "condition"
WINDOW_US = 60_000_000
START_US = 28_333_334 * WINDOW_US  # minute-aligned, so the first window is whole
TICKS = 600  # ten minutes at one reading a second: ten windows


def _config(tmp: Path, hub, key: Path, *, name: str, start_us: int, ticks: int, realtime: bool = False):
    path = agent_config(
        tmp / "agent.toml", device="pump-1", url=hub.state.nats_url,
        inputs=[{"type": "simulated", "name": name, "realtime": realtime, "max_ticks": ticks, "start_us": start_us,
                 "period": "1s"}],
    )
    text = path.read_text() + (
        f'\n[models]\ndir = "{tmp / "models"}"\ntrusted_keys = ["{key}"]\nhub_url = "{hub.state.api_url}"\n'
        'poll_interval = "100ms"\n'
    )
    path.write_text(text)
    return load_config(path)


async def test_daemon_installs_from_the_twin_and_its_predictions_reach_the_lake(tmp_path: Path) -> None:
    async with running_hub(hub_config(tmp_path / "hub", api=True)) as hub:
        key = hub.registry.keys.export_public(tmp_path / "fleet-key.pem")
        hub.registry.register(V1, version="1.0.0")
        hub.registry.sign(MODEL, "1.0.0")
        hub.registry.promote(MODEL, "1.0.0")

        # First boot: no model yet. The daemon's models task gets one through the twin.
        # (Its one reading lies a day before the drill's readings, and under another input name.)
        agent = Agent(_config(tmp_path, hub, key, name="boot", start_us=START_US - 1440 * WINDOW_US, ticks=1,
                              realtime=True))
        stop = asyncio.Event()
        run = asyncio.create_task(agent.run(stop))
        await await_until(lambda: agent.models.slots.active is not None, timeout=30, what="the first install")
        stop.set()
        await asyncio.wait_for(run, timeout=30)
        assert agent.models.slots.active.manifest.runtime.model == "model.int8.onnx"

        # Second boot: the installed model serves from the first reading on.
        agent = Agent(_config(tmp_path, hub, key, name="sim", start_us=START_US, ticks=TICKS))
        await asyncio.wait_for(agent.run(asyncio.Event(), until_drained=True), timeout=60)
        assert agent.final_stats.pending_readings == 0
        lake = Lake(tmp_path / "hub" / "lake")

        def rows(kind: str, channel: str | None = None) -> list[dict]:
            return query_telemetry(lake, device="pump-1", kind=kind, channel=channel, limit=100_000)

        await await_until(lambda: len(rows("prediction", "pred.class")) >= TICKS // 60, timeout=30,
                          what="one stored prediction per closed window")
        predicted = {r["ts_us"]: int(r["value"]) for r in rows("prediction", "pred.class")}
        assert sorted(predicted) == [START_US + i * WINDOW_US for i in range(TICKS // 60)]
        probs = rows("prediction", "pred.p.normal")
        assert len(probs) == TICKS // 60 and all(0.0 <= r["value"] <= 1.0 for r in probs)

        # Offline: the hub's features from the stored telemetry, through the same model file.
        tele = [r for r in rows("telemetry") if r["channel"] in SPEC.channels and r["ts_us"] >= START_US]
        readings = Readings.from_rows((r["channel"], r["ts_us"], r["value"]) for r in tele)
        from protocol.features import window_features

        _, x, ends = window_features(readings, SPEC)
        starts = ends - WINDOW_US
        active = agent.models.slots.active
        backend = make_backend(InferenceSettings(), active.manifest)
        backend.load(active.model_path, active.manifest)
        offline = dict(zip(starts.tolist(), np.argmax(backend.predict(x.astype(np.float32)), axis=1).tolist()))
        backend.close()
        assert offline == predicted

        # The hub's feature store computes the same windows from the stored telemetry (its
        # `condition` view is registered at start), and serves the latest one online.
        async with httpx.AsyncClient(base_url=hub.state.api_url) as client:
            run = (await client.post("/v1/features/condition/materialize", json={})).json()
            online = (await client.get("/v1/features/condition/online/t1/pump-1")).json()
        assert run["rows_written"] == len(starts), run
        assert online["event_time"] == int(ends.max()), online

        # The device sent the float64 features it fed the model (feat.*, with its predictions): on
        # every predicted window they equal the hub's materialized ones exactly (tolerance 0).
        async with httpx.AsyncClient(base_url=hub.state.api_url) as client:
            consistency = (await client.get("/v1/features/condition/consistency",
                                            params={"tenant": "t1", "device": "pump-1"})).json()
        assert consistency["windows_compared"] == len(predicted), consistency
        assert consistency["windows_matching"] == len(predicted), consistency
        assert consistency["mismatches"] == [] and consistency["device_only"] == [], consistency
        assert consistency["tolerance"] == {"rtol": 0.0, "atol": 0.0}

        # The device's inference figures travel in its health readings.
        health = {r["channel"] for r in rows("health")}
        assert {"inference.windows", "inference.p95_ms", "inference.errors"} <= health, sorted(health)
        assert any(c.startswith("info.model.condition.") for c in health)
