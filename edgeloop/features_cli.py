"""`edgeloop features`: feature views in the hub's feature store, over its HTTP API (/v1/features).

Exit codes (edgeloop/httpclient.py): 2 bad arguments, 3 hub unreachable or failing, 4 not
found (view, run or device), 5 the hub refused the request (conflict, bad range).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import quote

import typer

from .httpclient import DEFAULT_HUB, get, post
from .tables import print_rows

features_app = typer.Typer(
    help="Feature views: list, show lineage, materialize, read a device's online vector, version history.",
    no_args_is_help=True,
)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
MATERIALIZE_TIMEOUT_S = 600  # a run reads the lake and computes every window: minutes on a big lake


def _path(*segments: str) -> str:
    return "/v1/features/" + "/".join(quote(s, safe="") for s in segments)


def _when(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value))


@features_app.command("list")
def features_list(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Every feature view at its latest version: owner, window, feature count and how many runs it has."""
    rows = get(hub, "/v1/features")
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        r["features"] = len(r["features"])
        r["window_s"] = r["window_us"] / 1e6
    # Narrow enough for 80 columns; the last run's id is in --json and `show`.
    print_rows(rows, ["name", "version", "owner", "window_s", "features", "runs"], f"{len(rows)} view(s)")


@features_app.command("show")
def features_show(
    name: str = typer.Argument(..., help="Feature view name, e.g. machine_temp."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """One view's latest version: owner, features, source and the lineage of every materialization run."""
    v = get(hub, _path(name))
    if as_json:
        _echo_json(v)
        return
    typer.echo(f"{v['name']} {v['version']}  owner {v['owner']}  window {v['window_us'] / 1e6:g} s  "
               f"registered {_when(v['registered_us'])}")
    if v["description"]:
        typer.echo(f"  {v['description']}")
    source = v["lineage"]["source"]
    typer.echo(f"  source: lake {source['lake']}, kind {source['kind']}, channels {', '.join(source['channels'])}")
    typer.echo(f"  features: {', '.join(v['features'])}")
    # Narrow enough for 80 columns; each run's lake files are in --json.
    runs = [{"run_id": r["run_id"], "materialized": _when(r["materialized_us"]), "read": r["rows_read"],
             "written": r["rows_written"], "parts": len(r["partitions"])} for r in v["lineage"]["runs"]]
    print_rows(runs, ["run_id", "materialized", "read", "written", "parts"],
               f"{len(runs)} run(s): readings read, windows written, date partitions")


@features_app.command("materialize")
def features_materialize(
    name: str = typer.Argument(..., help="Feature view name; its latest registered version is materialized."),
    since_us: Optional[int] = typer.Option(None, "--since-us", help="Only windows from this event time (µs)."),
    until_us: Optional[int] = typer.Option(None, "--until-us", help="Only windows before this event time (µs)."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Compute the view over the lake as a new run, then refresh the online store from it."""
    body = {"since_us": since_us, "until_us": until_us}
    s = post(hub, _path(name, "materialize"), body, timeout=MATERIALIZE_TIMEOUT_S)
    if as_json:
        _echo_json(s)
        return
    online = s["online"]
    typer.echo(f"materialized {s['name']} {s['version']} as run {s['run_id']}: {s['rows_read']} readings read, "
               f"{s['rows_written']} windows written, {len(s['partitions'])} partition(s)")
    typer.echo(f"online store: {online['updated']} of {online['entities']} device vector(s) updated")


@features_app.command("get")
def features_get(
    name: str = typer.Argument(..., help="Feature view name."),
    entity: str = typer.Argument(..., help="The device as TENANT/DEVICE, e.g. acme/m1."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """A device's latest feature vector from the online store, with its window and arrival times."""
    tenant, sep, device = entity.partition("/")
    if not (sep and tenant and device) or "/" in device:
        typer.echo(f"error: {entity!r} is not TENANT/DEVICE, e.g. acme/m1", err=True)
        raise typer.Exit(2)
    v = get(hub, _path(name, "online", tenant, device))
    if as_json:
        _echo_json(v)
        return
    typer.echo(f"{v['name']} {v['version']}  {v['tenant']}/{v['device']}  window "
               f"{_when(v['window_start'])} .. {_when(v['event_time'])}  available {_when(v['available_at'])}")
    rows = [{"feature": k, "value": x} for k, x in v["features"].items()]
    print_rows(rows, ["feature", "value"], f"from run {v['run_id']}" if v["run_id"] else "from the stream")


@features_app.command("history")
def features_history(
    name: str = typer.Argument(..., help="Feature view name."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Every registered version of a view, oldest first: when, by whom, over which window and features."""
    rows = get(hub, _path(name))["history"]
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        r["registered"] = _when(r["registered_us"])
        r["window_s"] = r["window_us"] / 1e6
        r["features"] = len(r["features"])
    print_rows(rows, ["version", "registered", "owner", "window_s", "features", "description"],
               f"{len(rows)} version(s) of {name}")
