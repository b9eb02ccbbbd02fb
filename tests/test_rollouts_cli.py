"""`edgeloop rollouts` and `edgeloop twin` against the control API served for real on a free port."""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from typer.testing import CliRunner

from edgeloop.rollouts_cli import rollouts_app, twin_app
from hub.api.control import router
from hub.rollouts import Rollouts
from hub.twin import TwinStore
from tests.hub.test_twin import FakeClock, FakeRegistry, report

COMMANDS = [(rollouts_app, []), (rollouts_app, ["start"]), (rollouts_app, ["status"]), (rollouts_app, ["list"]),
            (rollouts_app, ["pause"]), (rollouts_app, ["resume"]), (rollouts_app, ["abort"]), (twin_app, []),
            (twin_app, ["list"]), (twin_app, ["show"]), (twin_app, ["set"]), (twin_app, ["rules"])]


@pytest.mark.parametrize("app, cmd", COMMANDS, ids=lambda c: " ".join(c) if isinstance(c, list) else c.info.name)
def test_every_command_has_help(app, cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.fixture
def world(tmp_path):
    clock, registry = FakeClock(), FakeRegistry().add("condition", "1.0.0").add("condition", "1.1.0")
    registry.promote("condition", "1.0.0")
    rollouts = Rollouts(tmp_path, registry, clock=clock)
    twins = TwinStore(tmp_path, registry, rollouts, clock=clock)
    for i in range(10):
        twins.exchange("acme", f"d{i}", report(tags={"site": "north"}))
    yield clock, twins, rollouts
    twins.close()
    rollouts.close()


@pytest.fixture
def hub(world):
    """The control router under uvicorn on 127.0.0.1, port 0, in a thread; its URL."""
    app = FastAPI()
    app.include_router(router(world[1], world[2]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # poll with a deadline: uvicorn has no ready event to wait on
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def run(app, hub: str, *args: str):
    return CliRunner().invoke(app, [*args, "--hub", hub])


def test_start_status_pause_resume_abort(world, hub):
    clock, twins, rollouts = world
    r = run(rollouts_app, hub, "start", "condition", "1.1.0", "--stages", "10:1m,100:0", "--gate", "max_p95_ratio=1.5",
            "--gate", "min_reporting=off", "--deadline", "60")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == "condition-1.1.0-1: pending (condition 1.1.0 over champion 1.0.0, cohort *)"
    rollouts.tick(twins)
    r = run(rollouts_app, hub, "status", "--json")
    s = json.loads(r.output)
    assert (s["state"], s["plan"]["stages"][0]["bake_s"], s["plan"]["gates"]["min_reporting"]) == ("canary", 60.0, None)
    r = run(rollouts_app, hub, "status", "condition-1.1.0-1")
    assert r.exit_code == 0 and "canary" in r.output and "max_p95_ratio" in r.output and "stages" in r.output
    assert "condition-1.1.0-1" in run(rollouts_app, hub, "list").output
    assert run(rollouts_app, hub, "pause", "condition-1.1.0-1").output.startswith("condition-1.1.0-1: paused")
    assert run(rollouts_app, hub, "resume", "condition-1.1.0-1").output.startswith("condition-1.1.0-1: canary")
    r = run(rollouts_app, hub, "abort", "condition-1.1.0-1", "--reason", "wrong build")
    assert r.output.strip() == "condition-1.1.0-1: halted (wrong build)"
    rollouts.tick(twins)  # nobody took the candidate: rolled back at once
    r = run(rollouts_app, hub, "status", "--watch", "--interval", "0.1")  # a terminal state: one frame, no wait
    assert r.exit_code == 0 and "rolled_back" in r.output and "wrong build" in r.output


def test_refusals_are_one_line_with_the_bad_value(hub):
    r = run(rollouts_app, hub, "start", "condition", "1.1.0", "--stages", "50:0,40:0")
    assert r.exit_code == 5 and "stages[1].percent = 40.0" in r.output
    r = run(rollouts_app, hub, "start", "condition", "1.1.0", "--gate", "max_latency=3")
    assert r.exit_code == 5 and "gates.max_latency" in r.output
    assert run(rollouts_app, hub, "start", "condition", "1.1.0", "--gate", "oops").exit_code == 2
    assert run(rollouts_app, hub, "status", "nope").exit_code == 4
    assert run(rollouts_app, hub, "status").exit_code == 4
    r = run(rollouts_app, hub, "pause", "nope")
    assert r.exit_code == 4 and "'nope'" in r.output


def test_twin_list_show_set(world, hub):
    clock, twins, rollouts = world
    r = run(twin_app, hub, "set", "--cohort", "site=north", "--model", "condition@1.1.0", "--config-version", "c9")
    assert r.exit_code == 0 and r.output.strip() == "cohort rule for site=north: model condition 1.1.0, config c9"
    twins.exchange("acme", "d1", report(tags={"site": "north"}))
    r = run(twin_app, hub, "show", "acme/d1")
    assert r.exit_code == 0, r.output
    assert "runs: condition 1.0.0" in r.output and "told to run: condition 1.1.0 (from cohort rule site=north)" in r.output
    assert "acme/d1" in run(twin_app, hub, "list").output
    assert json.loads(run(twin_app, hub, "rules", "--json").output)[0]["config_version"] == "c9"
    r = run(twin_app, hub, "set", "--fleet", "--model", "condition@8.8.8")
    assert r.exit_code == 5 and "8.8.8" in r.output
    assert run(twin_app, hub, "set", "--fleet", "--cohort", "a=b").exit_code == 2
    assert run(twin_app, hub, "set", "--device", "acme/d1", "--model", "condition").exit_code == 2
    assert run(twin_app, hub, "set", "--cohort", "site=north").output.strip() == "removed the cohort rule for site=north"
    assert run(twin_app, hub, "show", "acme/ghost").exit_code == 4
