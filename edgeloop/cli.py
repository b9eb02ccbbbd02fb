"""`edgeloop`: the operator's command. Subcommands import their side (agent, hub) only when run."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer

from .httpclient import DEFAULT_HUB, get
from .tables import print_rows
from .alerts_cli import alerts_app
from .drift_cli import drift_app
from .features_cli import features_app
from .labels_cli import labels_app
from .models_cli import keys_app, models_app
from .pipelines_cli import pipelines_app
from .quality_cli import quality_app
from .rollouts_cli import rollouts_app, twin_app

app = typer.Typer(help="edgeloop: edge-to-cloud IoT runtime.", no_args_is_help=True, add_completion=False)
agent_app = typer.Typer(help="Run or check the device agent.", no_args_is_help=True)
agent_config_app = typer.Typer(help="Agent configuration files.", no_args_is_help=True)
hub_app = typer.Typer(help="Run the hub.", no_args_is_help=True)
sim_app = typer.Typer(help="Simulated devices and fleets.", no_args_is_help=True)
devices_app = typer.Typer(help="Devices the hub has seen, with their loss ledgers.", no_args_is_help=True)
telemetry_app = typer.Typer(help="Query stored telemetry.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
agent_app.add_typer(agent_config_app, name="config")
app.add_typer(hub_app, name="hub")
app.add_typer(sim_app, name="sim")
app.add_typer(devices_app, name="devices")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(rollouts_app, name="rollouts")
app.add_typer(twin_app, name="twin")
app.add_typer(features_app, name="features")
app.add_typer(alerts_app, name="alerts")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(quality_app, name="quality")
app.add_typer(drift_app, name="drift")
app.add_typer(labels_app, name="labels")

HubOpt = typer.Option(DEFAULT_HUB, "--hub", help="The hub's HTTP API (or set EDGELOOP_HUB).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _log(level: str, *, stream=sys.stderr) -> None:
    logging.basicConfig(level=level.upper(), stream=stream, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_until_signal(coro_fn) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await coro_fn(stop)

    asyncio.run(main())


# --- demo ---------------------------------------------------------------------------------
@app.command()
def demo(
    devices: int = typer.Option(8, "--devices", min=1, help="How many simulated devices."),
    duration: float = typer.Option(30.0, "--duration", min=1.0, help="Seconds to run before draining."),
    as_json: bool = typer.Option(False, "--json", help="No live table; print one JSON summary at the end."),
    mqtt_share: float = typer.Option(0.25, "--mqtt-share", min=0.0, max=1.0, help="Fraction of devices on MQTT."),
    period_ms: int = typer.Option(100, "--period-ms", min=1, help="Sampling period of every virtual sensor."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Keep data here (default: a temp dir)."),
    outage: list[str] = typer.Option([], "--outage", help="Stop the broker at START for DURATION seconds: 10:5 (repeatable)."),
    models: bool = typer.Option(True, "--models/--no-models",
                                help="Devices run the condition model from the hub's registry, and a staged "
                                     "rollout of a new version runs mid-demo."),
) -> None:
    """Embedded broker + hub + a simulated fleet, with a live table; ends with a JSON summary."""
    from rich.console import Console

    from simulators.outages import Outage

    from .demo import run_demo

    try:
        outages = [Outage.parse(o) for o in outage]
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _log("error")  # warnings (an outage's reconnect attempts) would tear the live table
    console = Console(stderr=as_json)
    summary = asyncio.run(run_demo(devices=devices, duration=duration, live=not as_json, data_dir=data_dir,
                                   mqtt_share=mqtt_share, period_ms=period_ms, console=console, outages=outages,
                                   models=models))
    typer.echo(json.dumps(summary, indent=None if as_json else 2))
    if summary["lost"] or summary["duplicates"]:
        raise typer.Exit(1)


# --- agent --------------------------------------------------------------------------------
@agent_app.command("run")
def agent_run(
    config: Path = typer.Option(..., "--config", help="The agent's TOML config file."),
    until_drained: bool = typer.Option(False, "--until-drained", help="Exit once inputs finish and all is acked."),
) -> None:
    """Run the agent daemon; SIGTERM seals, flushes what the grace period allows, and exits."""
    from agent.runner import run_agent

    raise typer.Exit(run_agent(config, until_drained=until_drained))


@agent_config_app.command("check")
def agent_config_check(file: Path = typer.Argument(..., help="The agent's TOML config file.")) -> None:
    """Validate a config file without touching the network; names file, key and bad value."""
    from agent.config import load_config
    from agent.errors import ConfigError

    try:
        cfg = load_config(file)
        keys = {}
        if cfg.models is not None:  # the trusted keys must exist and parse: a device without them installs nothing
            from agent.models.slots import load_trusted_keys

            keys = load_trusted_keys(cfg.models.trusted_keys)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    models = "" if cfg.models is None else f", models in {cfg.models.dir} trusting {len(keys)} key(s)"
    typer.echo(f"{file}: ok (device {cfg.device.tenant}/{cfg.device.id}, {len(cfg.inputs)} input(s), "
               f"uplink {cfg.uplink.kind.value} {cfg.uplink.url}, buffer {cfg.buffer.path}{models})")


# --- hub ----------------------------------------------------------------------------------
@hub_app.command("serve")
def hub_serve(
    config: Optional[Path] = typer.Option(None, "--config", help="The hub's TOML config (default: embedded everything)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Override data_dir."),
    nats_url: Optional[str] = typer.Option(None, "--nats-url", help="Use this NATS server instead of the embedded one."),
    mqtt_url: Optional[str] = typer.Option(None, "--mqtt-source", help="Also ingest from this MQTT broker (Mosquitto)."),
    api_port: Optional[int] = typer.Option(None, "--api-port", help="HTTP API port (0 = any free port)."),
    no_api: bool = typer.Option(False, "--no-api", help="Ingest only: no HTTP API (extra workers)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Ingest workers in this process."),
) -> None:
    """Run the hub: embedded nats-server unless --nats-url, ingest workers, HTTP API."""
    from hub.config import load_config
    from hub.errors import ConfigError
    from hub.service import Hub

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    data = cfg.model_dump()
    if data_dir is not None:
        data["data_dir"] = data_dir
    if nats_url is not None:
        data["broker"]["url"] = nats_url
    if mqtt_url is not None:
        data["ingest"]["mqtt"] = {"url": mqtt_url}
    if api_port is not None:
        data["api"]["port"] = api_port
    if no_api:
        data["api"]["enabled"] = False
    if workers is not None:
        data["ingest"]["workers"] = workers
    cfg = type(cfg).model_validate(data)
    _log(cfg.log_level)
    hub = Hub(cfg)

    async def run(stop: asyncio.Event) -> None:
        task = asyncio.create_task(hub.run(stop))
        while not hub.state.ready.is_set() and not task.done():
            await asyncio.sleep(0.05)
        if hub.state.ready.is_set():
            # One machine-readable line for scripts and tests that start the hub.
            print(json.dumps({"event": "ready", "nats_url": hub.state.nats_url, "mqtt_url": hub.state.mqtt_url,
                              "api_url": hub.state.api_url}), flush=True)
        await task

    _run_until_signal(run)


# --- sim ----------------------------------------------------------------------------------
@sim_app.command("run")
def sim_run(
    devices: int = typer.Option(10, "--devices", min=1),
    duration: float = typer.Option(60.0, "--duration", min=0.1, help="Seconds to run, then drain and exit."),
    nats_url: Optional[str] = typer.Option(None, "--nats-url"),
    mqtt_url: Optional[str] = typer.Option(None, "--mqtt-url"),
    mqtt_share: float = typer.Option(0.25, "--mqtt-share", min=0.0, max=1.0),
    period_ms: int = typer.Option(1000, "--period-ms", min=1),
    data_dir: Path = typer.Option(Path("var/sim"), "--data-dir", help="Where the devices keep their buffers."),
    tenant: str = typer.Option("sim", "--tenant"),
    skewed: int = typer.Option(0, "--skewed", help="Devices whose clock is off by --skew-ms."),
    skew_ms: int = typer.Option(90_000, "--skew-ms"),
    wear: int = typer.Option(0, "--wear", help="Devices whose bearings wear out."),
    malformed: int = typer.Option(0, "--malformed", help="Also publish this many malformed payloads (NATS)."),
) -> None:
    """Run a simulated fleet of real agents against a broker, with optional faults."""
    from datetime import timedelta

    from simulators.fleet import Fleet, FleetSpec

    _log("warning")
    if not (nats_url or mqtt_url):
        typer.echo("error: give --nats-url and/or --mqtt-url", err=True)
        raise typer.Exit(2)
    fleet = Fleet(FleetSpec(devices=devices, data_dir=data_dir, nats_url=nats_url, mqtt_url=mqtt_url,
                            mqtt_share=mqtt_share, tenant=tenant, period=timedelta(milliseconds=period_ms),
                            skewed_devices=skewed, skew_ms=skew_ms, wear_devices=wear))

    async def run(stop: asyncio.Event) -> None:
        if malformed and nats_url:
            from simulators.rawclient import publish_malformed

            await publish_malformed(nats_url, count=malformed, tenant=tenant)
        task = asyncio.create_task(fleet.run(stop))
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration and not task.done():
            await asyncio.sleep(0.1)
        stop.set()
        await task
        views = await fleet.views()
        print(json.dumps({"devices": devices, "generated": sum(v.generated for v in views),
                          "sent": sum(v.sent for v in views), "dropped": sum(v.dropped for v in views),
                          "buffered": sum(v.buffered for v in views)}))

    _run_until_signal(run)


# --- devices / telemetry ------------------------------------------------------------------
def _when(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="seconds")


@devices_app.command("list")
def devices_list(tenant: Optional[str] = typer.Option(None, "--tenant"), hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """Every device the hub has seen: profile, last seen, readings stored, missing batches."""
    rows = get(hub, "/devices", tenant=tenant)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        r["last_seen"] = _when(r["last_seen_us"])
    print_rows(rows, ["tenant", "device", "profile", "last_seen", "readings", "batches", "duplicates",
                       "missing_batches"], f"{len(rows)} device(s)")


@devices_app.command("show")
def devices_show(device: str = typer.Argument(..., help="TENANT/DEVICE"), hub: str = HubOpt, as_json: bool = JsonOpt) -> None:
    """One device with its loss ledger (per epoch: high-water mark, gaps, late fills) and its drop counters."""
    if "/" not in device:
        typer.echo(f"error: {device!r} is not TENANT/DEVICE", err=True)
        raise typer.Exit(2)
    tenant, dev = device.split("/", 1)
    d = get(hub, f"/devices/{tenant}/{dev}")
    if as_json:
        typer.echo(json.dumps(d))
        return
    typer.echo(f"{tenant}/{dev}  profile={d['profile']}  first seen {_when(d['first_seen_us'])}  "
               f"last seen {_when(d['last_seen_us'])}")
    print_rows(d["ledger"], ["epoch", "hwm", "batches", "readings", "late_fills", "duplicates",
                              "missing_batches", "gaps"], "loss ledger")
    drops = d.get("device_drops") or {}
    typer.echo("device's own drop counters: " + (", ".join(f"{k}={int(v)}" for k, v in sorted(drops.items())) or "none"))


def _since(value: str | None) -> int | None:
    """A duration back from now ("10m", "1h30m") or an ISO 8601 time (UTC unless it says)."""
    if value is None:
        return None
    from protocol import parse_duration

    try:
        return time.time_ns() // 1000 - int(parse_duration(value).total_seconds() * 1e6)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        typer.echo(f"error: --since {value!r} is neither a duration like 10m nor an ISO time", err=True)
        raise typer.Exit(2) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1e6)


@telemetry_app.command("query")
def telemetry_query(
    device: Optional[str] = typer.Option(None, "--device", help="TENANT/DEVICE or DEVICE"),
    channel: Optional[str] = typer.Option(None, "--channel"),
    since: Optional[str] = typer.Option(None, "--since", help="A duration back from now (10m) or an ISO time."),
    limit: int = typer.Option(100, "--limit", min=1),
    kind: str = typer.Option("telemetry", "--kind", help="telemetry, prediction, health or alert"),
    hub: str = HubOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Readings from the lake, oldest first."""
    tenant = dev = None
    if device:
        tenant, dev = device.split("/", 1) if "/" in device else (None, device)
    rows = get(hub, "/telemetry", tenant=tenant, device=dev, channel=channel, kind=kind, since_us=_since(since), limit=limit)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        r["time"] = datetime.fromtimestamp(r["ts_us"] / 1e6, tz=timezone.utc).isoformat(timespec="milliseconds")
    print_rows(rows, ["tenant", "device", "channel", "time", "value"], f"{len(rows)} reading(s)")


def main() -> None:
    app()
