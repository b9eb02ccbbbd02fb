"""With `api.token` set, every change needs the operator's bearer token; reads and devices' twin
exchanges do not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from hub.config import HubConfig
from protocol.twin import Desired, Reported
from simulators.model_faults import V1

from .harness import hub_config, running_hub

pytestmark = pytest.mark.integration


async def test_changes_need_the_operator_token(tmp_path: Path, monkeypatch) -> None:
    base = hub_config(tmp_path / "hub", api=True).model_dump()
    base["api"]["token"] = "s3cret-operator-token"
    async with running_hub(HubConfig.model_validate(base)) as hub:
        url = hub.state.api_url
        async with httpx.AsyncClient(base_url=url) as client:
            r = await client.post("/v1/keys/rotate")
            assert r.status_code == 401 and "operator token" in r.json()["detail"]
            r = await client.post("/v1/keys/rotate", headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401
            assert (await client.get("/v1/keys")).status_code == 200  # reads stay open
            r = await client.post("/v1/keys/rotate", headers={"authorization": "Bearer s3cret-operator-token"})
            assert r.status_code == 200 and len(r.json()["keys"]) == 2
            # A device's own exchange needs no operator token.
            r = await client.post("/v1/twin/t/d1", content=json.dumps(Reported().to_dict()))
            assert r.status_code == 200 and Desired.from_json(r.content).model is None
        # The CLI sends EDGELOOP_TOKEN (run in a thread: the hub serves from this event loop).
        runner = CliRunner()
        refused = await asyncio.to_thread(runner.invoke, app, ["models", "register", str(V1), "--version", "1.0.0",
                                                                 "--hub", url])
        assert refused.exit_code == 5 and "operator token" in refused.output
        monkeypatch.setenv("EDGELOOP_TOKEN", "s3cret-operator-token")
        done = await asyncio.to_thread(runner.invoke, app, ["models", "register", str(V1), "--version", "1.0.0",
                                                              "--hub", url])
        assert done.exit_code == 0, done.output
        assert hub.registry.get("condition", "1.0.0")["version"] == "1.0.0"
