"""`edgeloop alerts`: the anomaly alerts the hub's detectors raised, over its HTTP API (/v1/alerts).

Exit codes (edgeloop/httpclient.py): 2 bad arguments, 3 hub unreachable or failing, 4 no such
alert, 5 the hub refused the request (ack a resolved alert, an unknown --state).
"""

from __future__ import annotations

import getpass
import json
from datetime import datetime, timezone
from typing import Optional

import typer

from .httpclient import DEFAULT_HUB, get, post
from .tables import print_rows

alerts_app = typer.Typer(
    help="Anomaly alerts from the hub's detectors and the devices' own models: list, ack, resolve.",
    no_args_is_help=True,
)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
ByOpt = typer.Option(None, "--by", help="Who does it, kept with the alert; default your login name.")
IdArg = typer.Argument(..., help="The alert's id, as `edgeloop alerts list` shows it.")


def _when(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _by(by: str | None) -> str:
    if by is not None:
        return by
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (some containers)
        raise _fail("there is no login name to record; pass --by NAME") from None


@alerts_app.command("list")
def alerts_list(
    state: Optional[str] = typer.Option(None, "--state", help="Only alerts in this state: open, acked or resolved."),
    entity: Optional[str] = typer.Option(None, "--device", help="Only this device: TENANT/DEVICE, or DEVICE in "
                                                                 "every tenant."),
    limit: int = typer.Option(100, "--limit", help="At most this many alerts, the most recently active first."),
    hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Alerts, the most recently active first, and the findings the rate limit suppressed per device."""
    tenant, device = None, entity
    if entity is not None and "/" in entity:
        tenant, _, device = entity.partition("/")
        if not (tenant and device) or "/" in device:
            raise _fail(f"--device {entity!r} is not TENANT/DEVICE or DEVICE, e.g. acme/m1")
    got = get(hub, "/v1/alerts", state=state, tenant=tenant, device=device, limit=limit)
    if as_json:
        typer.echo(json.dumps(got))
        return
    c = got["counts"]
    rows = [{**a, "device": f"{a['tenant']}/{a['device']}", "score": f"{a['score']:.3g}", "last": _when(a["last_at"])}
            for a in got["alerts"]]
    # Narrow enough for 80 columns; messages, values and baselines are in --json.
    print_rows(rows, ["id", "state", "device", "channel", "kind", "count", "score", "last"],
               f"{len(rows)} alert(s) shown; in all {c['open']} open, {c['acked']} acked, {c['resolved']} resolved")
    suppressed = [{**s, "device": f"{s['tenant']}/{s['device']}", "last": _when(s["last_at"])}
                  for s in got["suppressed"]]
    if suppressed:
        print_rows(suppressed, ["device", "count", "last", "last_channel", "last_kind"],
                   f"{sum(s['count'] for s in suppressed)} finding(s) suppressed by the rate limit (no alert opened)")


def _change(alert_id: int, action: str, by: str | None, hub: str, as_json: bool) -> None:
    got = post(hub, f"/v1/alerts/{alert_id}/{action}", {"by": _by(by)})
    if as_json:
        typer.echo(json.dumps(got))
        return
    a = got["alert"]
    who = a["acked_by"] if action == "ack" else a["resolved_by"]
    typer.echo(f"alert {a['id']} {got['event']} by {who}: {a['tenant']}/{a['device']} {a['channel']} {a['kind']}, "
               f"{a['count']} finding(s) since {_when(a['first_at'])}")


@alerts_app.command("ack")
def alerts_ack(alert_id: int = IdArg, by: Optional[str] = ByOpt, hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Acknowledge an open alert: someone is on it. New findings keep counting on it until it is resolved."""
    _change(alert_id, "ack", by, hub, as_json)


@alerts_app.command("resolve")
def alerts_resolve(
    alert_id: int = IdArg, by: Optional[str] = ByOpt, hub: str = HubOpt, as_json: bool = JsonOpt,
) -> None:
    """Resolve an open or acked alert; the next finding for its device, channel and kind opens a new one."""
    _change(alert_id, "resolve", by, hub, as_json)
