"""`edgeloop features`: feature views in the hub's feature store, over its HTTP API (/v1/features).

Exit codes (edgeloop/httpclient.py): 2 bad arguments, 3 hub unreachable or failing, 4 not
found (view, run or device), 5 the hub refused the request (conflict, bad range); `check` exits
6 when the device-sent features and the hub's differ (0 when they agree).
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from pathlib import Path
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
             "written": r["rows_written"],
             "lake": "-" if r.get("lake_version") is None else r["lake_version"]} for r in v["lineage"]["runs"]]
    print_rows(runs, ["run_id", "materialized", "lake", "read", "written"],
               f"{len(runs)} run(s): lake version read, readings read, windows written (partitions: --json)")


@features_app.command("materialize")
def features_materialize(
    name: str = typer.Argument(..., help="Feature view name; its latest registered version is materialized."),
    since_us: Optional[int] = typer.Option(None, "--since-us", help="Only windows from this event time (µs)."),
    until_us: Optional[int] = typer.Option(None, "--until-us", help="Only windows before this event time (µs)."),
    lake_version: Optional[int] = typer.Option(
        None, "--lake-version", help="Read the lake as it was at this Delta version (time travel); default latest."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Compute the view over the lake as a new run, then refresh the online store from it."""
    body = {"since_us": since_us, "until_us": until_us, "lake_version": lake_version}
    s = post(hub, _path(name, "materialize"), body, timeout=MATERIALIZE_TIMEOUT_S)
    if as_json:
        _echo_json(s)
        return
    online = s["online"]
    typer.echo(f"materialized {s['name']} {s['version']} as run {s['run_id']} from lake version"
               f" {s['lake_version']}: {s['rows_read']} readings read, "
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


MISMATCH_EXIT = 6  # `features check`: the device's features and the hub's differ


@features_app.command("check")
def features_check(
    name: str = typer.Argument(..., help="Feature view name."),
    entity: Optional[str] = typer.Option(None, "--device", help="Only this device, as TENANT/DEVICE."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Compare the features devices sent with their predictions against the hub's latest run, exactly.

    Exit 0 when every window both sides have agrees, 6 when any feature differs. Windows only one
    side has (not materialized yet, dropped by the device) are listed, not failures."""
    params: dict[str, str] = {}
    if entity is not None:
        tenant, sep, device = entity.partition("/")
        if not (sep and tenant and device) or "/" in device:
            typer.echo(f"error: {entity!r} is not TENANT/DEVICE, e.g. acme/m1", err=True)
            raise typer.Exit(2)
        params = {"tenant": tenant, "device": device}
    c = get(hub, _path(name, "consistency"), **params)
    if as_json:
        _echo_json(c)
    else:
        typer.echo(f"{c['name']} {c['version']}: {c['windows_matching']} of {c['windows_compared']} window(s) agree, "
                   f"{c['mismatch_count']} feature mismatch(es); device only {len(c['device_only'])}, "
                   f"hub only {len(c['hub_only'])} (rtol {c['tolerance']['rtol']:g}, atol {c['tolerance']['atol']:g})")
        rows = [{**m, "window": _when(m["window_start"]), "entity": f"{m['tenant']}/{m['device']}"}
                for m in c["mismatches"]]
        if rows:
            print_rows(rows, ["entity", "window", "feature", "device_value", "hub_value", "abs_diff"],
                       f"first {len(rows)} mismatch(es)")
    if c["mismatch_count"]:
        raise typer.Exit(MISMATCH_EXIT)


# --- training datasets (/v1/datasets) --------------------------------------------------------
LABEL_FIELDS = ("tenant", "device", "ts_us", "label")


def _label_value(text: str) -> object:
    """A CSV cell as the JSON value it spells: int, then float, else the string; empty is null."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_labels(path: Path) -> list[dict]:
    """Label rows (tenant, device, ts_us, label) from a .csv with a header or a .jsonl file."""
    def bad(where: str, why: str) -> typer.Exit:
        typer.echo(f"error: {path}{where}: {why}", err=True)
        return typer.Exit(2)

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise bad("", f"cannot be read ({exc.strerror})") from exc
    if path.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        if tuple(reader.fieldnames or ()) != LABEL_FIELDS:
            raise bad("", f"has columns {reader.fieldnames!r}; it needs exactly {list(LABEL_FIELDS)!r}")
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                ts_us = int(row["ts_us"])
            except (TypeError, ValueError) as exc:
                raise bad(f" line {n}", f"ts_us {row['ts_us']!r} is not an integer (µs)") from exc
            rows.append({"tenant": row["tenant"], "device": row["device"], "ts_us": ts_us,
                         "label": _label_value(row["label"])})
        return rows
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise bad(f" line {n}", f"is not JSON ({exc})") from exc
            if not isinstance(row, dict) or tuple(sorted(row)) != tuple(sorted(LABEL_FIELDS)):
                raise bad(f" line {n}", f"{line.strip()[:200]} is not an object with exactly {list(LABEL_FIELDS)!r}")
            rows.append(row)
        return rows
    raise bad("", "is neither .csv nor .jsonl")


@features_app.command("dataset-build")
def features_dataset_build(
    name: str = typer.Argument(..., help="Dataset name, e.g. bearing_wear; versions are content hashes."),
    view: str = typer.Option(..., "--view", help="Feature view name; its latest registered version is used."),
    labels: Path = typer.Option(..., "--labels", help="Labels: FILE.csv (header tenant,device,ts_us,label) "
                                                       "or FILE.jsonl (one such object per line)."),
    semantics: str = typer.Option("arrival", "--semantics", help="arrival (what the hub had) or event."),
    as_of_run: Optional[str] = typer.Option(None, "--as-of-run", help="Features as of this run; default latest."),
    label_source: Optional[str] = typer.Option(None, "--label-source",
                                               help="Where the labels came from; default the file's path."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Join labels with a view's features point-in-time and store them as a versioned training dataset."""
    body = {"name": name, "view": view, "labels": read_labels(labels), "semantics": semantics,
            "as_of_run": as_of_run, "label_source": str(labels) if label_source is None else label_source}
    d = post(hub, "/v1/datasets", body, timeout=MATERIALIZE_TIMEOUT_S)
    if as_json:
        _echo_json(d)
        return
    typer.echo(f"dataset {d['name']} {d['version']}: {d['label_rows']} label(s), {d['null_feature_rows']} with "
               f"null features; view {d['view']} {d['view_version']}, {d['semantics']} semantics, "
               f"run(s) {', '.join(d['run_ids'])}")
    typer.echo(f"  {d['path']}  sha256 {d['sha256']}")


@features_app.command("datasets")
def features_datasets(
    name: Optional[str] = typer.Argument(None, help="Only the versions of this dataset."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Every training dataset version, oldest first: its view, semantics, label count and null-feature rows."""
    rows = get(hub, "/v1/datasets", name=name)
    if as_json:
        _echo_json(rows)
        return
    for r in rows:
        r["created"] = _when(r["created_at_us"])
    print_rows(rows, ["name", "version", "created", "view", "semantics", "label_rows", "null_feature_rows"],
               f"{len(rows)} dataset version(s)")
