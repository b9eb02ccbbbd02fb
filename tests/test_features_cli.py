"""`edgeloop features` against a real served feature API: materialize → list/show/history → get."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from edgeloop.features_cli import features_app
from hub.features import FeatureRegistry, FeatureService
from tests.hub.features.test_features_api import crafted_lake, features_app as served_features_app
from tests.hub.features.test_offline_store import T0, VIEW, W
from tests.hub.test_models_api import ServedApp
from tests.servers import free_port

COMMANDS = [["features"], ["features", "list"], ["features", "show"], ["features", "materialize"],
            ["features", "get"], ["features", "history"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if len(cmd) > 1:
        assert "--hub" in result.output and "--json" in result.output


def test_every_command_says_what_it_does():
    assert features_app.info.help
    for command in features_app.registered_commands:
        assert command.callback.__doc__ and len(command.callback.__doc__) > 30, command.name


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    service = FeatureService.open(tmp_path)
    try:
        with ServedApp(served_features_app(service)) as served:
            yield served.url
    finally:
        service.close()


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json").stdout)


def test_materialize_list_show_history_get(hub_url, tmp_path):
    crafted_lake(tmp_path)
    register(tmp_path)
    s = run_json("features", "materialize", VIEW.name, "--hub", hub_url)
    assert (s["rows_written"], s["online"]["updated"]) == (4, 2)
    text = run("features", "materialize", VIEW.name, "--hub", hub_url).stdout
    assert "4 windows written" in text and "0 of 2 device vector(s) updated" in text

    listed = run_json("features", "list", "--hub", hub_url)
    assert [(v["name"], v["runs"]) for v in listed] == [(VIEW.name, 2)]
    assert VIEW.name in run("features", "list", "--hub", hub_url).stdout

    shown = run_json("features", "show", VIEW.name, "--hub", hub_url)
    assert len(shown["lineage"]["runs"]) == 2
    text = run("features", "show", VIEW.name, "--hub", hub_url).stdout
    assert "condition-team" in text and "temp.mean, temp.max" in text and s["run_id"] in text

    history = run_json("features", "history", VIEW.name, "--hub", hub_url)
    assert [h["version"] for h in history] == [VIEW.version]
    assert "1 version(s)" in run("features", "history", VIEW.name, "--hub", hub_url).stdout

    got = run_json("features", "get", VIEW.name, "acme/m2", "--hub", hub_url)
    assert got["features"] == {"temp.mean": 5.0, "temp.max": 5.0} and got["event_time"] == T0 + W
    assert "temp.max" in run("features", "get", VIEW.name, "acme/m2", "--hub", hub_url).stdout


def test_failures_exit_with_their_codes(hub_url, tmp_path):
    assert "not TENANT/DEVICE" in run("features", "get", VIEW.name, "m1", "--hub", hub_url, code=2).output
    assert "is not registered" in run("features", "show", "nope", "--hub", hub_url, code=4).output
    register(tmp_path)
    assert run("features", "get", VIEW.name, "acme/m1", "--hub", hub_url, code=4).output
    out = run("features", "materialize", VIEW.name, "--since-us", str(T0 + W), "--until-us", str(T0),
              "--hub", hub_url, code=5).output
    assert "is empty" in out
    run("features", "list", "--hub", f"http://127.0.0.1:{free_port()}", code=3)


def register(data_dir: Path) -> None:
    """Views are code, registered by the hub, not over the API: register VIEW as the hub would."""
    with FeatureRegistry(data_dir) as registry:
        registry.register(VIEW, now_us=T0)


def test_check_exits_6_on_mismatches_and_0_when_consistent(hub_url, tmp_path):
    from tests.hub.features.test_consistency import crafted

    crafted(tmp_path)
    register(tmp_path)
    assert "--device" in run("features", "check", "--help").output
    run("features", "materialize", VIEW.name, "--hub", hub_url)
    got = json.loads(run("features", "check", VIEW.name, "--json", "--hub", hub_url, code=6).stdout)
    assert (got["windows_compared"], got["mismatch_count"]) == (4, 2)
    text = run("features", "check", VIEW.name, "--hub", hub_url, code=6).stdout
    assert "2 of 4 window(s) agree" in text and "99.5" in text and "acme/m1" in text
    ok = json.loads(run("features", "check", VIEW.name, "--device", "acme/m3", "--json", "--hub", hub_url).stdout)
    assert (ok["windows_compared"], ok["mismatches"]) == (1, [])
    text = run("features", "check", VIEW.name, "--device", "acme/m3", "--hub", hub_url).stdout
    assert "1 of 1 window(s) agree" in text
    assert "not TENANT/DEVICE" in run("features", "check", VIEW.name, "--device", "m3", "--hub", hub_url, code=2).output
    assert "is not registered" in run("features", "check", "nope", "--hub", hub_url, code=4).output
