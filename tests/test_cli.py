"""Every `edgeloop` command answers --help, and commands that need a hub say so plainly."""

from __future__ import annotations

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from edgeloop.cli import app


def _walk(group, prefix: list[str]) -> list[list[str]]:
    out = [prefix]
    for name, sub in getattr(group, "commands", {}).items():
        out += _walk(sub, [*prefix, name])
    return out


# Every command the CLI has, found by walking it: a new command cannot miss this test.
COMMANDS = _walk(typer.main.get_command(app), [])
assert {"models", "keys", "rollouts", "twin", "telemetry"} <= {c[0] for c in COMMANDS if c}
assert ["rollouts", "start"] in COMMANDS and ["models", "promote"] in COMMANDS


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "edgeloop")
def test_every_command_has_help(cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_unreachable_hub_is_one_clear_line():
    result = CliRunner().invoke(app, ["devices", "list", "--hub", "http://127.0.0.1:9"])
    assert result.exit_code == 3
    assert "cannot reach the hub at http://127.0.0.1:9" in result.output
