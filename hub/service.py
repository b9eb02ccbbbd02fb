"""The hub process: broker (embedded or external), streams, ingest workers, HTTP API."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field

import nats
import nats.errors

from .broker import EmbeddedNats, EmbeddedNatsSettings
from .config import HubConfig
from .ingest.jetstream import JetStreamDeadLetters, JetStreamSource, ensure_streams
from .ingest.mqtt import MqttSource
from .ingest.pipeline import Pipeline
from .storage.store import Store

log = logging.getLogger(__name__)


@dataclass
class HubState:
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    nats_url: str = ""
    mqtt_url: str | None = None
    api_url: str | None = None
    restarts: dict[str, int] = field(default_factory=dict)


class Hub:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self.state = HubState()
        self.broker: EmbeddedNats | None = None
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        # The control plane (registry, twins, rollouts): built in run(), before the API starts.
        self.registry = None
        self.rollouts = None
        self.twins = None
        self.features = None  # feature views, offline and online stores
        # The closed loop (built with the control plane): labels, alerts, drift, retraining runs.
        self.labels = None
        self.alerts = None
        self.drift = None
        self.pipelines = None
        self.loop = None
        self.alert_feed = None
        self.alert_publisher = None
        self.on_alert_change = None

    def _embedded(self) -> EmbeddedNats:
        e = self.config.broker.embedded
        return EmbeddedNats(EmbeddedNatsSettings(
            store_dir=self.config.data_dir / "nats" / "jetstream", host=e.host, port=e.port,
            mqtt_port=e.mqtt_port, http_port=e.http_port, sync_always=e.sync_always,
            max_payload=self.config.ingest.max_payload,
        ))

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if cfg.broker.url is None:
            self.broker = self._embedded()
            await asyncio.to_thread(self.broker.start)
            self.state.nats_url, self.state.mqtt_url = self.broker.url, self.broker.mqtt_url
            log.info("hub: embedded nats-server at %s (MQTT %s)", self.broker.url, self.broker.mqtt_url)
        else:
            self.state.nats_url = cfg.broker.url
        nc = None
        try:
            nc = await nats.connect(
                self.state.nats_url, name="edgeloop-hub", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                connect_timeout=10, error_cb=_on_nats_error, disconnected_cb=_on_disconnect,
                reconnected_cb=_on_reconnect,
            )
            js = nc.jetstream(timeout=10)
            await ensure_streams(js, cfg.broker.stream)
            self.store = await asyncio.to_thread(Store, cfg.data_dir)
            self.pipeline = Pipeline(self.store, JetStreamDeadLetters(js), cfg.ingest)
            if cfg.control.enabled:
                await asyncio.to_thread(self._open_control)
            tasks = [
                asyncio.create_task(self._supervise(
                    f"ingest-{i}",
                    JetStreamSource(js, stream=cfg.broker.stream.name, settings=cfg.ingest, name=f"worker-{i}").run,
                ), name=f"ingest-{i}")
                for i in range(cfg.ingest.workers)
            ]
            try:
                if cfg.ingest.mqtt is not None:
                    source = MqttSource(cfg.ingest.mqtt, cfg.ingest)
                    tasks.append(asyncio.create_task(self._supervise("ingest-mqtt", source.run), name="ingest-mqtt"))
                    # Mosquitto keeps nothing for a session it has never seen: not ready before it has.
                    try:
                        await asyncio.wait_for(source.connected.wait(), timeout=30)
                    except TimeoutError:
                        log.warning("hub: no connection to %s yet; ingest from it starts when it answers",
                                    cfg.ingest.mqtt.url)
                if self.rollouts is not None and cfg.control.controller:
                    from .rollouts import run_controller

                    tasks.append(asyncio.create_task(run_controller(
                        self.rollouts, self.twins, stop, tick_s=cfg.control.tick.total_seconds(),
                    ), name="rollouts"))
                if cfg.lake.maintenance:
                    from .storage.maintenance import run_maintenance

                    tasks.append(asyncio.create_task(run_maintenance(
                        self.store.lake, stop, interval=cfg.lake.compact_interval,
                        compact_min_files=cfg.lake.compact_min_files, vacuum_retention=cfg.lake.vacuum_retention,
                    ), name="lake-maintenance"))
                if self.features is not None and cfg.features.streaming:
                    from .features.streaming import run_feature_stream

                    f = cfg.features
                    tasks.append(asyncio.create_task(run_feature_stream(
                        cfg.data_dir, self.features, self.store.lake, stop, interval=f.stream_interval,
                        max_out_of_orderness=f.max_out_of_orderness, allowed_lateness=f.allowed_lateness,
                        idle_timeout=f.idle_timeout, sinks=self._alert_sinks(nc, stop, tasks),
                    ), name="feature-stream"))
                if self.loop is not None and cfg.loop.enabled:
                    from .pipelines import run_worker

                    tasks.append(asyncio.create_task(run_worker(
                        self.pipelines, stop, tick_s=cfg.loop.pipeline_tick.total_seconds()), name="pipelines"))
                    if cfg.loop.interval.total_seconds() > 0:
                        tasks.append(asyncio.create_task(self._run_loop(stop), name="loop"))
                if cfg.api.enabled:
                    tasks.append(asyncio.create_task(self._serve_api(), name="api"))
                else:
                    self.state.ready.set()
                await _first_of(stop.wait(), *tasks)
            finally:
                await _cancel(tasks)
        finally:
            if nc is not None and not nc.is_closed:
                try:  # close, not drain: every delivery was acked or will be redelivered anyway
                    await asyncio.wait_for(nc.close(), timeout=5)
                except (nats.errors.Error, TimeoutError) as exc:
                    log.debug("hub: close: %s", exc)
            if self.pipeline is not None:
                self.pipeline.close()
            for part in (self.loop, self.drift, self.pipelines, self.alerts, self.labels,
                         self.twins, self.rollouts, self.registry, self.features):
                if part is not None:
                    part.close()
            if self.store is not None:
                self.store.close()
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)

    def _open_control(self) -> None:
        from .registry import Registry
        from .rollouts import Rollouts
        from .twin import TwinStore

        cfg = self.config
        self.registry = Registry(cfg.data_dir)
        self.rollouts = Rollouts(cfg.data_dir, self.registry)
        self.twins = TwinStore(cfg.data_dir, self.registry, self.rollouts,
                               poll_interval_s=cfg.control.poll_interval.total_seconds())
        from .features import FeatureService, FeatureView

        self.features = FeatureService.open(cfg.data_dir, cfg.features.online)
        # The fleet's one model today is the condition model: its windows are a view from the start
        # (registering the same version again is a no-op; a new feature code version is history).
        from models.condition.data import SPEC

        self.features.registry.register(FeatureView(
            "condition", SPEC, owner="models/condition",
            description="One-minute windows of vibration_rms and temperature: the condition model's inputs.",
        ))
        # The same channels and aggregates over ten minutes: slower trends, for retraining and drift.
        self.features.registry.register(FeatureView(
            "condition_10m", dataclasses.replace(SPEC, window_us=10 * SPEC.window_us), owner="models/condition",
            description="Ten-minute windows of the condition model's channels and aggregates.",
        ))
        self._open_loop()

    def _open_loop(self) -> None:
        from .alerts import AlertStore, RateLimit
        from .drift import DriftMonitor, DriftPolicy
        from .labels import LabelStore
        from .loop import ClosedLoop, LoopSettings, labels_hook
        from .pipelines import PipelineRunner, RetrainDeps, retrain_pipeline

        cfg = self.config
        lc = cfg.loop
        self.labels = LabelStore(cfg.data_dir)
        self.alerts = AlertStore(cfg.data_dir / "alerts.db", rate_limit=RateLimit(
            max_new=cfg.alerts.max_new_per_device, interval_us=_us(cfg.alerts.rate_interval)))
        self.pipelines = PipelineRunner(cfg.data_dir, [retrain_pipeline(RetrainDeps(
            cfg.data_dir, self.registry, self.rollouts, labels_hook(self.labels, self.twins)))])
        recovered = self.pipelines.recover()
        if recovered:
            log.warning("hub: retraining runs %s were cut short by the last stop; resume them with"
                        " `edgeloop pipelines resume`", recovered)
        self.drift = DriftMonitor(cfg.data_dir, policy=DriftPolicy(
            consecutive=lc.consecutive, cooldown=lc.cooldown, min_windows=lc.min_windows, min_share=lc.min_share))
        self.loop = ClosedLoop(cfg.data_dir, registry=self.registry, twins=self.twins, runner=self.pipelines,
                               labels=self.labels, monitor=self.drift, settings=LoopSettings(
                                   cohort_tag=lc.cohort_tag, lookback=lc.lookback, grace=lc.grace,
                                   baseline=lc.baseline,
                                   retrain={"require_approval": lc.require_approval, "metric": lc.metric,
                                            "min_improvement": lc.min_improvement, "replay": lc.replay,
                                            "rollout": dict(lc.rollout)}))

    def _alert_sinks(self, nc, stop: asyncio.Event, tasks: list) -> list:
        """The stream's alert feed, and the task that publishes its events (none when alerts are off)."""
        if self.alerts is None or not self.config.alerts.enabled:
            return []
        from models.condition.data import CLASSES

        from .alerts import AlertPublisher, WebhookConfig
        from .alerts.feed import AlertFeed, publish_events, put_event

        a = self.config.alerts
        queue: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        publisher = AlertPublisher(nc, update_interval_us=_us(a.update_interval),
                                   webhook=None if a.webhook is None else WebhookConfig(a.webhook))
        self.alert_publisher = publisher
        tasks.append(asyncio.create_task(publish_events(queue, publisher, stop), name="alert-events"))
        loop = asyncio.get_running_loop()
        self.alert_feed = AlertFeed(self.alerts, view_name="condition", classes=CLASSES, loop=loop, queue=queue)
        # The API's ack/resolve (in its threadpool) publish through the same queue.
        self.on_alert_change = lambda event: loop.call_soon_threadsafe(put_event, queue, event)
        return [self.alert_feed]

    async def _run_loop(self, stop: asyncio.Event) -> None:
        """A closed-loop round every `[loop] interval`; a failed round is logged, the next one runs."""
        from .ticker import wait_or_stop

        interval = self.config.loop.interval.total_seconds()
        while not await wait_or_stop(stop, interval):
            try:
                await asyncio.to_thread(self.loop.tick)
            except Exception:  # noqa: BLE001 - a round must not stop ingest; the next one tries again
                log.exception("hub: closed-loop round failed")

    async def _supervise(self, name: str, run) -> None:
        """Keep an ingest source running: a crash is counted, logged and restarted with backoff."""
        delay = 0.5
        while True:
            try:
                await run(self.pipeline)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # the supervisor: count, log, restart
                self.state.restarts[name] = self.state.restarts.get(name, 0) + 1
                log.exception("hub: %s crashed (restart %d in %.1fs)", name, self.state.restarts[name], delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _serve_api(self) -> None:
        import uvicorn

        from .api.app import create_app

        app = create_app(self)
        server = uvicorn.Server(uvicorn.Config(
            app, host=self.config.api.host, port=self.config.api.port, log_level="warning", lifespan="off",
        ))
        server.install_signal_handlers = lambda: None  # the CLI owns signals
        task = asyncio.create_task(server.serve())
        try:
            while not server.started:
                if task.done():
                    await task
                    raise RuntimeError(f"The HTTP API could not listen on {self.config.api.host}:{self.config.api.port}.")
                await asyncio.sleep(0.02)
            sock = server.servers[0].sockets[0].getsockname()
            self.state.api_url = f"http://{sock[0]}:{sock[1]}"
            self.state.ready.set()
            log.info("hub: HTTP API at %s", self.state.api_url)
            await asyncio.shield(task)  # cancelling us must not cancel uvicorn mid-serve
        finally:
            server.should_exit = True  # uvicorn's own shutdown closes its sockets
            if not task.done():
                await asyncio.wait_for(task, timeout=5)


def _us(d) -> int:
    return int(d.total_seconds() * 1_000_000)


async def _first_of(*aws) -> None:
    """Wait for the stop event, or for a task that ended early (its error is raised)."""
    waiters = [asyncio.ensure_future(a) for a in aws]
    done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    waiters[0].cancel()
    for t in done:
        if t is not waiters[0] and not t.cancelled() and t.exception() is not None:
            raise t.exception()


async def _cancel(tasks: list[asyncio.Task], *, timeout: float = 5.0) -> None:
    """Cancel and wait, re-cancelling a task that swallowed its cancellation (nats-py can)."""
    for attempt in range(3):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            return
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=timeout)
    stuck = [t.get_name() for t in tasks if not t.done()]
    if stuck:
        log.error("hub: tasks did not stop: %s", ", ".join(stuck))


async def _on_nats_error(exc: Exception) -> None:
    log.debug("hub: nats: %s", exc)  # reconnect attempts; disconnects are logged below


async def _on_disconnect() -> None:
    log.warning("hub: disconnected from the broker; reconnecting")


async def _on_reconnect() -> None:
    log.warning("hub: reconnected to the broker")
