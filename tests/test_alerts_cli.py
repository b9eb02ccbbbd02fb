"""`edgeloop alerts` against a real served alerts API: list → ack → resolve, and the exit codes of failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from edgeloop.alerts_cli import alerts_app
from hub.alerts import AlertStore, RateLimit
from hub.api.alerts import router
from tests.hub.alerts.series import T0
from tests.hub.alerts.test_store import HOUR, S, finding
from tests.hub.test_models_api import ServedApp
from tests.servers import free_port

COMMANDS = [[], ["list"], ["ack"], ["resolve"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "alerts")
def test_every_command_has_help(cmd):
    result = CliRunner().invoke(alerts_app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if cmd:
        assert "--hub" in result.output and "--json" in result.output


def test_every_command_says_what_it_does():
    assert alerts_app.info.help
    for command in alerts_app.registered_commands:
        assert command.callback.__doc__ and len(command.callback.__doc__) > 30, command.name


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    with AlertStore(tmp_path / "alerts.db", rate_limit=RateLimit(max_new=2, interval_us=HOUR)) as s:
        yield s


@pytest.fixture
def hub_url(store) -> Iterator[str]:
    app = FastAPI()
    app.include_router(router(store))
    with ServedApp(app) as served:
        yield served.url


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(alerts_app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == code, result.output
    return result


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json").stdout)


def test_list_ack_resolve(hub_url, store):
    a = store.raise_(finding("temp"), T0).alert
    store.raise_(finding("vib"), T0 + S)
    store.raise_(finding("rpm"), T0 + 2 * S)  # suppressed: 2 per hour
    other = store.raise_(finding("temp", device="m2", tenant="other"), T0 + 3 * S).alert

    listed = run_json("list", "--hub", hub_url)
    assert len(listed["alerts"]) == 3 and listed["counts"]["suppressed"] == 1
    text = run("list", "--hub", hub_url).stdout
    assert "3 alert(s) shown; in all 3 open, 0 acked, 0 resolved" in text
    assert "acme/m1" in text and "robust_z" in text and "2026-01-01T00:00:00Z" in text
    assert "1 finding(s) suppressed by the rate limit" in text and "rpm" in text
    assert [x["id"] for x in run_json("list", "--device", "other/m2", "--hub", hub_url)["alerts"]] == [other.id]
    assert [x["id"] for x in run_json("list", "--device", "m2", "--hub", hub_url)["alerts"]] == [other.id]

    acked = run_json("ack", str(a.id), "--by", "ana", "--hub", hub_url)
    assert (acked["event"], acked["alert"]["acked_by"]) == ("acked", "ana")
    assert [x["id"] for x in run_json("list", "--state", "acked", "--hub", hub_url)["alerts"]] == [a.id]
    text = run("resolve", str(a.id), "--by", "bob", "--hub", hub_url).stdout
    assert text.startswith(f"alert {a.id} resolved by bob: acme/m1 temp robust_z, 1 finding(s) since 2026-01-01")
    assert store.get(a.id).state == "resolved"
    # No --by: the login name.
    assert run_json("ack", str(other.id), "--hub", hub_url)["alert"]["acked_by"]


def test_failures_exit_with_their_codes(hub_url, store):
    a = store.raise_(finding(), T0).alert
    run("resolve", str(a.id), "--by", "bob", "--hub", hub_url)
    assert "cannot be acked: bob resolved it" in run("ack", str(a.id), "--by", "ana", "--hub", hub_url, code=5).output
    assert "There is no alert 999." in run("resolve", "999", "--by", "ana", "--hub", hub_url, code=4).output
    assert "must be one of open, acked, resolved" in run("list", "--state", "closed", "--hub", hub_url, code=5).output
    assert "is not TENANT/DEVICE" in run("list", "--device", "acme/", "--hub", hub_url, code=2).output
    run("ack", "x", "--hub", hub_url, code=2)
    run("list", "--hub", f"http://127.0.0.1:{free_port()}", code=3)
