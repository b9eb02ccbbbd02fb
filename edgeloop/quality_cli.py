"""`edgeloop quality`: the data quality of the latest closed-loop round, over the hub's API (/v1/quality).

Exit codes (edgeloop/httpclient.py): 3 hub unreachable or failing, 4 no such endpoint (the hub
runs without its control plane).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import typer

from .httpclient import DEFAULT_HUB, get
from .tables import print_rows

quality_app = typer.Typer(
    help="Data quality per device: health scores, failing checks, quarantined (flagged, never deleted) rows.",
    no_args_is_help=True,
)


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@quality_app.command("report")
def quality_report(
    hub: str = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Per device its health score (1 = every check passed) and failing checks, then the flagged row
    ranges, from the latest closed-loop round (its event-time span is printed first)."""
    r = get(hub, "/v1/quality")
    if as_json:
        typer.echo(json.dumps(r, indent=2))
        return
    if r["at_us"] is None:
        typer.echo("no quality round yet: the closed loop has not run (see [loop] interval)")
        return
    typer.echo(f"quality of readings from {_when(r['since_us'])} to {_when(r['until_us'])}, checked {_when(r['at_us'])}")
    rows = [{"device": d, "score": f"{v['score']:.2f}", "failing": ", ".join(v["failing"]) or "-"}
            for d, v in sorted(r["devices"].items(), key=lambda kv: kv[1]["score"])]
    print_rows(rows, ["device", "score", "failing"], f"{len(rows)} device(s), worst first")
    flagged = [{"device": f"{q['tenant']}/{q['device']}", "channel": q["channel"], "check": q["check"],
                "from": _when(q["first_ts_us"]), "to": _when(q["last_ts_us"]), "rows": q["rows"]}
               for q in r["quarantine"]]
    print_rows(flagged, ["device", "channel", "check", "from", "to", "rows"],
               f"{len(flagged)} quarantined range(s): flagged, kept in the lake")
