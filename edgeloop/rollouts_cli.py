"""`edgeloop rollouts` and `edgeloop twin`: staged model rollouts and device twins, over the hub's HTTP API.

Exit codes (edgeloop/httpclient.py): 2 bad arguments, 3 hub unreachable or failing, 4 not found,
5 the hub refused the request (a plan or rule that breaks a rule, a state that does not allow it).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, Optional
from urllib.parse import quote

import typer

from .httpclient import DEFAULT_HUB, get, post, put
from .tables import print_rows

rollouts_app = typer.Typer(help="Staged rollouts of a model version, judged by health gates.", no_args_is_help=True)
twin_app = typer.Typer(help="Device twins: what devices report, and what they are told to run.", no_args_is_help=True)

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")
TERMINAL = ("complete", "rolled_back")
INT_GATES = ("min_reporting", "min_windows", "max_failures")


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _when(us: int | None) -> str:
    return "never" if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="seconds")


def _stages(text: str) -> list[dict]:
    """`5:60,25:10m,100:0` as [{percent, bake_s}]; the hub checks the rules and names what breaks them."""
    from protocol import parse_duration

    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        percent, _, bake = part.partition(":")
        try:
            seconds = float(bake) if bake.replace(".", "", 1).isdigit() else parse_duration(bake or "0").total_seconds()
            out.append({"percent": float(percent), "bake_s": seconds})
        except ValueError:
            raise _fail(f"--stages part {part!r} is not PERCENT:BAKE like 5:60 or 25:10m") from None
    return out


def _gates(items: list[str]) -> dict[str, Any]:
    gates: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise _fail(f"--gate {item!r} is not NAME=VALUE like max_p95_ratio=1.5 (VALUE off turns a gate off)")
        name, value = name.strip(), value.strip()
        try:
            gates[name] = None if value.lower() in ("off", "none", "null") else \
                int(value) if name in INT_GATES else float(value)
        except ValueError:
            raise _fail(f"--gate {name}={value!r}: the value is not a number") from None
    return gates


def _rid(rollout_id: str) -> str:
    return f"/v1/rollouts/{quote(rollout_id, safe='')}"


# --- the status view -------------------------------------------------------------------------------
def render(s: dict) -> Any:
    """One rollout as a rich renderable: state, stage bar, per-stage counts, gates, last events."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    colour = {"complete": "green", "halted": "red", "rolled_back": "yellow", "paused": "yellow"}.get(s["state"], "cyan")
    head = Text.assemble((f"{s['id']}  ", "bold"), f"{s['model']} {s['version']} over champion {s['champion']}  "
                         f"cohort {s['cohort']}\n", ("state ", ""), (s["state"], f"bold {colour}"),
                         f"  stage {s['stage']} of 0-{s['stage_count'] - 1} ({s['stage_percent']:g}%)"
                         + ("" if s["time_in_stage_s"] is None else f", {s['time_in_stage_s']:.0f}s in stage")
                         + f"  converged {s['converged']}/{s['devices']}")
    share = 0 if s["state"] == "rolled_back" else s["stage_percent"]
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=100, completed=share, width=50, complete_style=colour),
                Text(f"{share:g}% of the cohort assigned {s['version']}"))
    stages = Table(title="stages", title_justify="left")
    for c in ("", "stage", "percent", "bake", "assigned", "reporting", "on candidate", "failed"):
        stages.add_column(c, justify="right" if c else "left")
    for st in s["stages"]:
        mark = "▶" if st["stage"] == s["stage"] and s["state"] not in TERMINAL else \
            "✓" if st["stage"] < s["stage"] or s["state"] == "complete" else " "
        stages.add_row(mark, str(st["stage"]), f"{st['percent']:g}%", f"{st['bake_s']:g}s", str(st["assigned"]),
                       str(st["reporting"]), str(st["on_candidate"]), str(st["failed"]))
    gates = Table(title="gates (last evaluation)", title_justify="left")
    for c in ("gate", "value", "threshold", "result", "detail"):
        gates.add_column(c)
    for g in s["gates"]:
        result = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "[dim]n/a[/]"}[g["passed"]]
        gates.add_row(g["name"], "" if g["value"] is None else f"{g['value']:g}",
                      "" if g["threshold"] is None else f"{g['threshold']:g}", result, g["detail"])
    parts: list[Any] = [head, bar, stages, gates]
    if s.get("reason"):
        parts.append(Text(f"reason: {s['reason']}"))
    if s.get("unconverged"):
        parts.append(Text(f"unconverged after the deadline: {', '.join(s['unconverged'])}", style="red"))
    for e in (s.get("events") or [])[-5:]:
        parts.append(Text(f"{_when(e['at_us'])}  {e['from'] or '-'} -> {e['to']} (stage {e['stage']}): {e['reason']}",
                          style="dim"))
    return Group(*parts)


def _show(hub: str, rollout_id: str, *, watch: bool, as_json: bool, interval: float) -> None:
    from rich.console import Console
    from rich.live import Live

    s = get(hub, _rid(rollout_id))
    if as_json and not watch:
        typer.echo(json.dumps(s))
        return
    console = Console()
    if not watch:
        console.print(render(s))
        return
    try:
        with Live(render(s), console=console, refresh_per_second=4) as live:
            while s["state"] not in TERMINAL:
                time.sleep(interval)
                s = get(hub, _rid(rollout_id))
                live.update(render(s))
    except KeyboardInterrupt:
        console.print("stopped watching; the rollout goes on")
    if as_json:
        typer.echo(json.dumps(s))


# --- rollouts ------------------------------------------------------------------------------------------
@rollouts_app.command("start")
def rollouts_start(
    model: str = typer.Argument(..., help="The model's registry name."),
    version: str = typer.Argument(..., help="The candidate version (registered and signed)."),
    stages: str = typer.Option("5:60,25:60,50:60,100:60", "--stages",
                               help="PERCENT:BAKE per stage, the first is the canary, the last 100."),
    cohort: str = typer.Option("*", "--cohort", help="Devices to roll out to: '*' or tags like site=north,hw=rpi4."),
    gate: list[str] = typer.Option([], "--gate", help="A gate NAME=VALUE (repeatable): min_reporting, min_windows, "
                                   "max_failures, max_error_rate, max_p95_ms, max_p95_ratio, max_divergence, "
                                   "min_shadow_agreement, min_accuracy; VALUE off turns one off."),
    deadline: float = typer.Option(3600, "--deadline", min=0, help="Seconds after the end for devices to converge."),
    stage_timeout: float = typer.Option(3600, "--stage-timeout", help="Halt a stage short of min_reporting after this."),
    poll_interval: float = typer.Option(30, "--poll-interval", help="How often devices in the rollout ask (seconds)."),
    watch: bool = typer.Option(False, "--watch", help="Then watch it until it completes or rolls back."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between refreshes with --watch."),
    hub: str = HubOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Start a staged rollout of MODEL VERSION over its champion; the hub's controller drives it."""
    plan = {"model": model, "version": version, "cohort": cohort, "stages": _stages(stages), "gates": _gates(gate),
            "deadline_s": deadline, "stage_timeout_s": stage_timeout, "poll_interval_s": poll_interval}
    s = post(hub, "/v1/rollouts", plan)
    if watch:
        _show(hub, s["id"], watch=True, as_json=as_json, interval=interval)
    elif as_json:
        typer.echo(json.dumps(s))
    else:
        typer.echo(f"{s['id']}: {s['state']} ({model} {version} over champion {s['champion']}, cohort {s['cohort']})")


@rollouts_app.command("status")
def rollouts_status(
    rollout_id: Optional[str] = typer.Argument(None, metavar="[ID]", help="The rollout (default: the newest)."),
    watch: bool = typer.Option(False, "--watch", help="Refresh until it completes or rolls back (Ctrl-C stops)."),
    interval: float = typer.Option(2.0, "--interval", min=0.1, help="Seconds between refreshes with --watch."),
    hub: str = HubOpt,
    as_json: bool = JsonOpt,
) -> None:
    """A rollout's state, stage bar, per-stage device counts, gate results and last events."""
    if rollout_id is None:
        rows = get(hub, "/v1/rollouts")
        if not rows:
            typer.echo("error: the hub has no rollouts", err=True)
            raise typer.Exit(4)
        rollout_id = rows[0]["id"]
    _show(hub, rollout_id, watch=watch, as_json=as_json, interval=interval)


@rollouts_app.command("list")
def rollouts_list(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Every rollout, newest first."""
    rows = get(hub, "/v1/rollouts")
    if as_json:
        typer.echo(json.dumps(rows))
        return
    # Narrow enough for 80 columns (the id names model and version); the rest is in --json and status.
    print_rows([{**r, "stage": f"{r['stage']} ({r['stage_percent']:g}%)",
             "converged": f"{r['converged']}/{r['devices']}"} for r in rows],
           ["id", "champion", "cohort", "state", "stage", "converged"], f"{len(rows)} rollout(s)")


def _act(hub: str, rollout_id: str, action: str, body: dict | None = None) -> None:
    s = post(hub, f"{_rid(rollout_id)}/{action}", body)
    typer.echo(f"{s['id']}: {s['state']}" + (f" ({s['reason']})" if s.get("reason") else ""))


@rollouts_app.command("pause")
def rollouts_pause(rollout_id: str = typer.Argument(..., metavar="ID"), hub: str = HubOpt) -> None:
    """Hold a rollout at its stage; devices keep what they were told. Resume restarts the stage's bake."""
    _act(hub, rollout_id, "pause")


@rollouts_app.command("resume")
def rollouts_resume(rollout_id: str = typer.Argument(..., metavar="ID"), hub: str = HubOpt) -> None:
    """Resume a paused rollout at the same stage; its bake starts again."""
    _act(hub, rollout_id, "resume")


@rollouts_app.command("abort")
def rollouts_abort(
    rollout_id: str = typer.Argument(..., metavar="ID"),
    reason: str = typer.Option("aborted by the operator", "--reason", help="Why; kept in the rollout's events."),
    hub: str = HubOpt,
) -> None:
    """Halt a rollout: every device it reached is sent back to the champion."""
    _act(hub, rollout_id, "abort", {"reason": reason})


# --- twin -------------------------------------------------------------------------------------------------
def _ref(m: dict | None) -> str | None:
    return None if m is None else f"{m['name']} {m['version']}"


@twin_app.command("list")
def twin_list(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Every device twin: tags, the model it runs, the one it is told to run and why, last seen."""
    rows = get(hub, "/v1/twin")
    if as_json:
        typer.echo(json.dumps(rows))
        return
    print_rows([{"device": f"{r['tenant']}/{r['device']}", "tags": ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items())),
             "runs": _ref(r["reported"].get("active")),
             "desired": None if r["desired"]["model"] is None else f"{r['desired']['model']} {r['desired']['version']}",
             "source": r["desired"]["source"], "rollout": r["desired"]["rollout"], "last_seen": _when(r["last_seen_us"])}
            for r in rows], ["device", "tags", "runs", "desired", "source", "rollout", "last_seen"],
           f"{len(rows)} twin(s)")


@twin_app.command("show")
def twin_show(device: str = typer.Argument(..., help="TENANT/DEVICE"), hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """One twin: what the device reported last, and what it was told."""
    tenant, sep, dev = device.partition("/")
    if not sep:
        raise _fail(f"{device!r} is not TENANT/DEVICE")
    t = get(hub, f"/v1/twin/{quote(tenant, safe='')}/{quote(dev, safe='')}")
    if as_json:
        typer.echo(json.dumps(t))
        return
    rep, want = t["reported"], t["desired"]
    inf = rep.get("inference") or {}
    lines = [f"{tenant}/{dev}  first seen {_when(t['first_seen_us'])}  last seen {_when(t['last_seen_us'])}  "
             f"exchanges {t['exchanges']}",
             "tags: " + (", ".join(f"{k}={v}" for k, v in sorted(t["tags"].items())) or "none"),
             f"runs: {_ref(rep.get('active')) or 'nothing'}  (previous {_ref(rep.get('previous')) or 'none'}; "
             f"config {rep.get('config_version') or 'none'})"]
    if inf:
        lines.append(f"inference: {inf['windows']} windows, {inf['errors']} errors, p95 {inf['p95_ms']} ms, "
                     f"classes {json.dumps(inf['classes'])}")
    if rep.get("shadow"):
        sh = rep["shadow"]
        lines.append(f"shadow {sh['version']}: {sh['agreed']} of {sh['windows']} windows agree")
    if rep.get("failure"):
        f = rep["failure"]
        lines.append(f"last failure: {f['reason']} with {f['name']} {f['version']} at {f['at']}: {f['message']}")
    lines.append(f"told to run: {want['model'] or 'nothing'} {want['version'] or ''} (from {want['source'] or 'nothing'}"
                 + (f", rollout {want['rollout']}" if want["rollout"] else "") + ")"
                 + (f", shadow {want['shadow']}" if want["shadow"] else "")
                 + (f", config {want['config_version']}" if want["config_version"] else ""))
    if want.get("error"):
        lines.append(f"skipped: {want['error']}")
    typer.echo("\n".join(lines))


@twin_app.command("set")
def twin_set(
    device: Optional[str] = typer.Option(None, "--device", help="A rule for one device: TENANT/DEVICE."),
    cohort: Optional[str] = typer.Option(None, "--cohort", help="A rule for a cohort: tags like site=north."),
    fleet: bool = typer.Option(False, "--fleet", help="A rule for the whole fleet."),
    model: Optional[str] = typer.Option(None, "--model", help="NAME@VERSION to run (omit for config only)."),
    config_version: Optional[str] = typer.Option(None, "--config-version", help="The config version to run."),
    tenant: Optional[str] = typer.Option(None, "--tenant", help="Limit a cohort or fleet rule to one tenant."),
    hub: str = HubOpt,
) -> None:
    """Pin the desired model (and config) of a device, a cohort or the fleet; neither --model nor
    --config-version removes the rule. A device rule beats rollouts; rollouts beat cohort and fleet rules."""
    if sum((device is not None, cohort is not None, fleet)) != 1:
        raise _fail("give exactly one of --device TENANT/DEVICE, --cohort k=v, --fleet")
    body: dict[str, Any] = {"scope": "device" if device else "cohort" if cohort else "fleet",
                            "cohort": cohort, "config_version": config_version, "tenant": tenant, "model": None}
    if device is not None:
        t, sep, d = device.partition("/")
        if not sep:
            raise _fail(f"--device {device!r} is not TENANT/DEVICE")
        body.update(tenant=t, device=d)
    if model is not None:
        name, sep, version = model.partition("@")
        if not sep or not name or not version:
            raise _fail(f"--model {model!r} is not NAME@VERSION")
        body["model"] = {"name": name, "version": version}
    rule = put(hub, "/v1/twin/desired", json.dumps(body).encode())
    target = f"{rule['tenant']}/{rule['device']}" if rule["device"] else rule["cohort"] or "the fleet"
    if rule.get("removed"):
        typer.echo(f"removed the {rule['scope']} rule for {target}")
    else:
        typer.echo(f"{rule['scope']} rule for {target}: model {_ref(rule['model']) or 'unchanged'}, "
                   f"config {rule['config_version'] or 'unchanged'}")


@twin_app.command("rules")
def twin_rules(hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """The desired-state rules in force (device, cohort, fleet)."""
    rows = get(hub, "/v1/twin/desired")
    if as_json:
        typer.echo(json.dumps(rows))
        return
    print_rows([{**r, "model": _ref(r["model"]), "set": _when(r["at_us"])} for r in rows],
           ["scope", "tenant", "device", "cohort", "model", "config_version", "set"], f"{len(rows)} rule(s)")
