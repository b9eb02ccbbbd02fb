"""`edgeloop drift`: the drift monitor's cohorts and reports, over the hub's HTTP API (/v1/drift).

Exit codes (edgeloop/httpclient.py): 2 bad arguments, 3 hub unreachable or failing, 4 not found
(cohort never checked, report file), 5 the hub refused the request.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import typer

from .httpclient import DEFAULT_HUB, get, get_bytes
from .tables import print_rows

drift_app = typer.Typer(
    help="Data, prediction and concept drift per cohort: status, and the drift report with its charts.",
    no_args_is_help=True,
)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
REPORT_TIMEOUT_S = 120  # the first request of a check's report renders its charts


def _path(cohort: str, *rest: str) -> str:
    return "/v1/drift/" + "/".join(quote(s, safe="") for s in (cohort, *rest))


def _when(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@drift_app.command("status")
def drift_status(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Every cohort's drift state (ok, suspect, drifting, cooldown), drifted share and worst features."""
    rows = get(hub, "/v1/drift")
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        r["checked"] = _when(r["last_check_us"])
        r["drifted"] = f"{r['drifted_features']}/{r['features']}" if r["sufficient"] else "no verdict"
        r["top"] = ", ".join(r["top_features"])
        t = r["last_trigger"]
        r["trigger"] = None if t is None else f"#{t['id']} {_when(t['started_at_us'])}"
        r["gated"] = len(r["quality_problems"]) or None
    print_rows(rows, ["cohort", "state", "checked", "drifted", "top", "gated", "trigger"],
               f"{len(rows)} cohort(s); gated: devices left out as quality problems")


@drift_app.command("report")
def drift_report(
    cohort: str = typer.Argument(..., help="The cohort, as `edgeloop drift status` names it (e.g. site=north or '*')."),
    out: Path = typer.Option(..., "--out", help="Folder to write index.html and its PNG charts into (created)."),
    hub: str = HubOpt,
) -> None:
    """Download the cohort's latest drift report (index.html and its charts) into a folder to open in a browser."""
    manifest = get(hub, _path(cohort, "report", "manifest.json"))
    out.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        if "/" in name or name.startswith("."):
            typer.echo(f"error: the hub listed the report file {name!r}, which is not a plain file name", err=True)
            raise typer.Exit(3)
        (out / name).write_bytes(get_bytes(hub, _path(cohort, "report", name), timeout=REPORT_TIMEOUT_S))
    typer.echo(f"wrote {len(manifest['files'])} file(s) to {out}; open {out / 'index.html'}")


