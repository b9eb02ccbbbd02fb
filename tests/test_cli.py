"""Every `edgeloop` command answers --help, and commands that need a hub say so plainly."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from edgeloop.cli import app

COMMANDS = [
    [], ["demo"], ["agent"], ["agent", "run"], ["agent", "config"], ["agent", "config", "check"],
    ["hub"], ["hub", "serve"], ["sim"], ["sim", "run"], ["devices"], ["devices", "list"],
    ["devices", "show"], ["telemetry"], ["telemetry", "query"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "edgeloop")
def test_every_command_has_help(cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_unreachable_hub_is_one_clear_line():
    result = CliRunner().invoke(app, ["devices", "list", "--hub", "http://127.0.0.1:9"])
    assert result.exit_code == 3
    assert "cannot reach the hub at http://127.0.0.1:9" in result.output
