"""`edgeloop models` and `edgeloop keys` against a real served registry API: register → sign → promote → list/show."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeloop.cli import app
from edgeloop.models_cli import keys_app, models_app
from hub.registry import Registry
from tests.hub.test_models_api import ServedApp, registry_app

RECIPE_DIR = Path(__file__).resolve().parents[1] / "models" / "condition" / "v1"

COMMANDS = [["models"], ["models", "list"], ["models", "show"], ["models", "register"], ["models", "sign"],
            ["models", "promote"], ["keys"], ["keys", "list"], ["keys", "rotate"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=" ".join)
def test_every_command_has_help(cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


@pytest.mark.parametrize("group", [models_app, keys_app], ids=["models", "keys"])
def test_every_command_says_what_it_does(group):
    assert group.info.help
    for command in group.registered_commands:
        assert command.callback.__doc__ and len(command.callback.__doc__) > 30, command.name


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    registry = Registry(tmp_path / "hub")
    try:
        with ServedApp(registry_app(registry)) as served:
            yield served.url
    finally:
        registry.close()


def run(*args: str) -> object:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def run_json(*args: str) -> object:
    return json.loads(run(*args, "--json").stdout)


def test_register_sign_promote_list_show(hub_url):
    v = run_json("models", "register", str(RECIPE_DIR), "--version", "1.0.0", "--training-data", "lake://sim",
                 "--hub", hub_url)
    assert v["version"] == "1.0.0" and v["signed_at"] is None
    assert v["metadata"]["training_data"] == "lake://sim"
    assert len(v["variants"]) == 4
    signed = run_json("models", "sign", "condition", "1.0.0", "--hub", hub_url)
    assert all(x["signed"] for x in signed["variants"])
    promoted = run_json("models", "promote", "condition", "1.0.0", "--cohort", "site=north", "--hub", hub_url)
    assert promoted == {"name": "condition", "alias": "champion", "cohort": "site=north", "version": "1.0.0"}
    listed = run_json("models", "list", "--hub", hub_url)
    assert [(m["version"], m["aliases"]) for m in listed] == [("1.0.0", ["champion@site=north"])]
    shown = run_json("models", "show", "condition", "1.0.0", "--hub", hub_url)
    assert shown["key_id"] == signed["key_id"]
    text = run("models", "show", "condition", "1.0.0", "--hub", hub_url).stdout
    assert "condition 1.0.0" in text and "model.int8.onnx" in text and "champion@site=north" in text
    assert "1.0.0" in run("models", "list", "--hub", hub_url).stdout


def test_register_one_variant_and_sign_at_once(hub_url):
    v = run_json("models", "register", str(RECIPE_DIR), "--variant", "model.int8.tflite", "--sign", "--hub", hub_url)
    assert v["version"] == "v1" and [x["artifact"] for x in v["variants"]] == ["model.int8.tflite"]
    assert v["variants"][0]["signed"]


def test_keys_list_and_rotate(hub_url):
    before = run_json("keys", "list", "--hub", hub_url)
    rotated = run_json("keys", "rotate", "--hub", hub_url)
    after = run_json("keys", "list", "--hub", hub_url)
    assert [k["key_id"] for k in after] == [before[0]["key_id"], rotated["key_id"]]
    assert "new active key" in run("keys", "rotate", "--hub", hub_url).stdout


def test_refusals_are_one_line_with_an_exit_code(hub_url, tmp_path):
    copy = tmp_path / "recipe"
    shutil.copytree(RECIPE_DIR, copy)
    (copy / "model.fp32.onnx").write_bytes(b"not the model")
    result = CliRunner().invoke(app, ["models", "register", str(copy), "--hub", hub_url])
    assert result.exit_code == 5
    assert "'model.fp32.onnx' has size" in result.output
    result = CliRunner().invoke(app, ["models", "sign", "condition", "9.9.9", "--hub", hub_url])
    assert result.exit_code == 4 and "'9.9.9'" in result.output
    result = CliRunner().invoke(app, ["models", "register", str(tmp_path), "--hub", hub_url])
    assert result.exit_code == 2 and "manifest.json" in result.output
    result = CliRunner().invoke(app, ["models", "register", str(RECIPE_DIR), "--variant", "nope.onnx", "--hub", hub_url])
    assert result.exit_code == 2 and "'nope.onnx' is not an artifact" in result.output
