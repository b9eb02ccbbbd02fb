"""`edgeloop pipelines`: pipeline runs (retraining) in the hub, over its HTTP API (/v1/pipelines).

Exit codes (edgeloop/httpclient.py): 2 bad arguments, 3 hub unreachable or failing, 4 no such
run, 5 the hub refused the request (the run's state does not allow it); `approve` and `resume`
exit 6 when the run they continued failed again (0 when it is done or waits for an approval).
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime
from typing import Optional
from urllib.parse import quote

import typer

from .httpclient import DEFAULT_HUB, get, post
from .tables import print_rows

pipelines_app = typer.Typer(
    help="Pipeline runs (model retraining): list, show steps, approve or reject a rollout, resume a failed run.",
    no_args_is_help=True,
)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
RUN_TIMEOUT_S = 600  # approve and resume answer once the remaining steps ran: training takes a while
FAILED_EXIT = 6  # `approve` / `resume`: the run failed again


def _run(run_id: str, action: str = "") -> str:
    return f"/v1/pipelines/runs/{quote(run_id, safe='')}" + (f"/{action}" if action else "")


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def _took(step: dict) -> str | None:
    if not step["started"] or not step["finished"]:
        return None
    seconds = (datetime.fromisoformat(step["finished"]) - datetime.fromisoformat(step["started"])).total_seconds()
    return f"{max(seconds, 0):.2f}"


def _first_line(text: str | None, width: int = 70) -> str | None:
    if not text:
        return None
    line = text.strip().splitlines()[0]
    return line if len(line) <= width else line[:width - 1] + "…"


def _print_run(run: dict) -> None:
    typer.echo(f"{run['id']}  {run['pipeline']}  state {run['state']}  created {run['created']}"
               + (f"  key {run['key']}" if run["key"] else ""))
    if run["error"]:
        typer.echo(f"  {run['error']}")
    rows = [{**s, "took_s": _took(s), "error": _first_line(s["error"]),
             "outputs": None if not s["outputs"] else ", ".join(sorted(s["outputs"]))} for s in run["steps"]]
    print_rows(rows, ["name", "status", "attempts", "took_s", "outputs", "error"],
               f"{len(rows)} step(s) (inputs, outputs and whole errors: --json)")


def _done(run: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(run))
    else:
        _print_run(run)
    if run["state"] == "failed":
        raise typer.Exit(FAILED_EXIT)


@pipelines_app.command("list")
def pipelines_list(
    pipeline: Optional[str] = typer.Option(None, "--pipeline", help="Only runs of this pipeline."),
    state: Optional[str] = typer.Option(None, "--state", help="Only runs in this state, e.g. awaiting_approval."),
    limit: int = typer.Option(100, "--limit", min=1, max=10_000, help="At most this many runs."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Pipeline runs, newest first: state, when, and the step each one is at."""
    rows = get(hub, "/v1/pipelines/runs", pipeline=pipeline, state=state, limit=limit)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        at = [n for n, status in r["steps"].items() if status not in ("done", "skipped")]
        r["at_step"] = f"{at[0]} ({r['steps'][at[0]]})" if at else None
    print_rows(rows, ["id", "state", "created", "at_step"], f"{len(rows)} run(s)")


@pipelines_app.command("show")
def pipelines_show(
    run_id: str = typer.Argument(..., metavar="ID", help="The run, e.g. retrain-condition-3."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """One run's steps: status, attempts, time taken, what each produced and the first line of any error."""
    run = get(hub, _run(run_id))
    if as_json:
        typer.echo(json.dumps(run))
        return
    _print_run(run)


@pipelines_app.command("approve")
def pipelines_approve(
    run_id: str = typer.Argument(..., metavar="ID", help="A run awaiting approval."),
    by: Optional[str] = typer.Option(None, "--by", help="Who approves (default: your user name)."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Approve the step a run waits at (the rollout of a retrained model) and run the rest; exit 6 if it fails."""
    _done(post(hub, _run(run_id, "approve"), {"by": by or _who()}, timeout=RUN_TIMEOUT_S), as_json)


@pipelines_app.command("reject")
def pipelines_reject(
    run_id: str = typer.Argument(..., metavar="ID", help="A run awaiting approval."),
    reason: str = typer.Option("", "--reason", help="Why, recorded with the run."),
    by: Optional[str] = typer.Option(None, "--by", help="Who rejects (default: your user name)."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Reject the step a run waits at: the run ends rejected and its later steps are skipped."""
    run = post(hub, _run(run_id, "reject"), {"by": by or _who(), "reason": reason})
    if as_json:
        typer.echo(json.dumps(run))
    else:
        _print_run(run)


@pipelines_app.command("resume")
def pipelines_resume(
    run_id: str = typer.Argument(..., metavar="ID", help="A failed run."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Run a failed run's failed step again, then the steps after it (done ones are not); exit 6 on failure."""
    _done(post(hub, _run(run_id, "resume"), timeout=RUN_TIMEOUT_S), as_json)
