"""Alerts through a running hub: the streaming path's closed windows and the devices' own predictions
feed the detectors; alerts land in the store, as events on NATS `alerts.<tenant>.<device>`, and the
operator acks and resolves them with the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import nats
import pytest

from hub.storage import metadata as meta
from simulators.drift_fleet import DeviceSpec, Drift, DriftFleet
from simulators.model_faults import V1

from tests.integration.harness import hub_config, running_hub
from tests.servers import await_until

pytestmark = pytest.mark.integration

MINUTE = 60_000_000
T0 = 1_700_006_400_000_000
SHIFT_AT = T0 + 40 * MINUTE  # after the detectors' warm-up (24 windows)


def _stored(data_dir) -> int:
    db = meta.connect_readonly(data_dir / "meta.db")
    try:
        return db.execute("SELECT count(*) FROM batches").fetchone()[0]
    finally:
        db.close()


async def test_a_level_shift_and_a_run_of_wear_predictions_raise_alerts_on_nats_and_the_cli_acks_them(tmp_path):
    config = hub_config(tmp_path / "hub", api=True,
                        features={"stream_interval": "50ms", "max_out_of_orderness": "5s", "idle_timeout": "1h"})
    async with running_hub(config) as hub:
        key = hub.registry.keys.export_public(tmp_path / "k.pem")
        hub.registry.register(V1, version="1.0.0")
        hub.registry.sign("condition", "1.0.0")
        hub.registry.promote("condition", "1.0.0")
        fleet = DriftFleet(tmp_path / "fleet", hub.state.api_url, (key,), [
            DeviceSpec("calm", {"site": "a"}),
            DeviceSpec("shaky", {"site": "a"}, drifts=(Drift("vibration_rms", SHIFT_AT, scale=2.0),)),
        ], start_us=T0)
        nc = await nats.connect(hub.state.nats_url)
        events: list[dict] = []
        async def got(msg) -> None:
            events.append(json.loads(msg.data))

        sub = await nc.subscribe("alerts.>", cb=got)
        try:
            await fleet.start()
            await fleet.exchange()
            published = 0
            for _ in range(7):  # 70 minutes
                published += (await fleet.step(nc.jetstream(), 600))["batches"]
                await await_until(lambda: _stored(hub.config.data_dir) >= published, timeout=30, interval=0.02,
                                  what="the fleet's batches stored")
            await await_until(lambda: any(e["device"] == "shaky" and e["kind"] == "prediction" for e in events)
                              and any(e["device"] == "shaky" and e["channel"] == "vibration_rms" for e in events),
                              timeout=30, interval=0.05, what="alert events on NATS")
        finally:
            await sub.unsubscribe()
            await fleet.close()
            await nc.close()

        alerts = hub.alerts.list(state="open")
        shaky = {(a.channel, str(a.kind)) for a in alerts if a.device == "shaky"}
        assert any(k == "prediction" for _, k in shaky), shaky  # its own model: bearing_wear, window after window
        assert any(c == "vibration_rms" and k in ("robust_z", "ewma") for c, k in shaky), shaky  # the hub's detectors
        assert not [a for a in alerts if a.device == "calm"]  # no alert for the unchanged machine
        first = next(a for a in alerts if a.device == "shaky")

        cli = [sys.executable, "-m", "edgeloop", "alerts"]
        hub_url = ["--hub", hub.state.api_url]
        listed = await asyncio.to_thread(subprocess.run, [*cli, "list", "--json", *hub_url],
                                         capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert first.id in [a["id"] for a in json.loads(listed.stdout)["alerts"]]
        for action in ("ack", "resolve"):
            done = await asyncio.to_thread(subprocess.run, [*cli, action, str(first.id), "--by", "ops", *hub_url],
                                           capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        assert hub.alerts.get(first.id).state == "resolved"

        # The inspection that followed: maintenance's labels, through `edgeloop labels`.
        found = tmp_path / "inspection.csv"
        found.write_text(f"tenant,device,ts_us,label\nsim,shaky,{SHIFT_AT + 10 * MINUTE},normal\n"
                         f"sim,calm,{SHIFT_AT + 10 * MINUTE},normal\n")
        labels = [sys.executable, "-m", "edgeloop", "labels"]
        added = await asyncio.to_thread(subprocess.run, [*labels, "add", str(found), "--source", "inspection",
                                                         *hub_url], capture_output=True, text=True, timeout=60)
        assert added.returncode == 0 and "2 label(s) added" in added.stdout, added.stderr
        listed = await asyncio.to_thread(subprocess.run, [*labels, "list", "--device", "sim/shaky", "--json", *hub_url],
                                         capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["rows"] == [
            {"tenant": "sim", "device": "shaky", "ts_us": SHIFT_AT + 10 * MINUTE, "label": "normal"}]
