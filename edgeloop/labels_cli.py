"""`edgeloop labels`: what maintenance found on a device at a time, for retraining and concept drift.

Exit codes (edgeloop/httpclient.py): 2 a bad file (the message names the line), 3 hub unreachable,
5 the hub refused a row (it names the row and the value).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from .features_cli import read_labels
from .httpclient import DEFAULT_HUB, get, post
from .tables import print_rows

labels_app = typer.Typer(
    help="Labels (maintenance findings, inspections): what really happened to a device at a time.",
    no_args_is_help=True,
)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")


@labels_app.command("add")
def labels_add(
    file: Path = typer.Argument(..., help="FILE.csv (header tenant,device,ts_us,label) or FILE.jsonl "
                                          "(one such object per line); label is a class name, e.g. normal."),
    source: str = typer.Option("cli", "--source", help="Where the labels come from, kept with each one."),
    hub: str = HubOpt,
) -> None:
    """Send labels to the hub. A label already stored for the same device and time is kept; a
    different one for it is counted as a conflict, not stored."""
    rows = [{**r, "label": str(r["label"])} for r in read_labels(file)]
    got = post(hub, "/v1/labels", {"labels": rows, "source": source})
    typer.echo(f"{got['added']} label(s) added, {got['repeats']} already stored, {got['conflicts']} conflict(s)")


@labels_app.command("list")
def labels_list(
    device: Optional[str] = typer.Option(None, "--device", help="Only this device: TENANT/DEVICE."),
    limit: int = typer.Option(100, "--limit", help="The newest this many."),
    hub: str = HubOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """The newest labels, oldest first, with how many the hub holds and how many conflicted."""
    tenant, name = (device.split("/", 1) if device and "/" in device else (None, device))
    got = get(hub, "/v1/labels", tenant=tenant, device=name, limit=limit)
    if as_json:
        typer.echo(json.dumps(got, indent=2))
        return
    rows = [{**r, "at": datetime.fromtimestamp(r["ts_us"] / 1e6, timezone.utc).isoformat(timespec="seconds")}
            for r in got["rows"]]
    print_rows(rows, ["tenant", "device", "at", "label"],
               f"{got['labels']} label(s) stored, {got['conflicts']} conflict(s); the newest {len(rows)}")
