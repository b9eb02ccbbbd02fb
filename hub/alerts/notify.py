"""AlertPublisher: alert events to NATS `alerts.<tenant>.<device>` and, optionally, a webhook.

    publisher = AlertPublisher(nc, update_interval_us=store.rate_limit.interval_us,
                               webhook=WebhookConfig("https://ops.example/hooks/edgeloop"))
    event = await run_in_threadpool(store.raise_, finding, now_us)
    if event is not None:
        await publisher.publish(event)

Contract
--------

Who calls it: whoever changed an alert (the stream's sink after AlertStore.raise_ or resolve_quiet,
the API after ack and resolve), once per AlertEvent, from the event loop.

What goes out: a JSON object (`event_payload`: id, event raised|updated|acked|resolved, tenant,
device, channel, kind, state, count, score, value, baseline, message, window_end_us, at in µs).
New alerts and state changes always; an `updated` event at most once per `update_interval_us` per
alert (measured on the events' own `at`), the rest counted as `throttled`. The throttle is memory
only: after a restart the first update of every live alert goes out again.

NATS: core publish (at most once, no PubAck); a subscriber that is away misses events, which the
store and `GET /v1/alerts` still have. Webhook: a POST with the payload, `timeout_s` per attempt,
retried `retries` times after a transport error, a timeout, 429 or 5xx (other 4xx are final), waiting
backoff_s, 2 * backoff_s, ... between attempts. A publish therefore waits at most
(retries + 1) * timeout_s + the backoffs: call it from a task of its own where that matters.

Errors: a failure on either side is logged and counted in `stats` (nats_failed, webhook_failed), never
raised into the caller; CancelledError is never swallowed. Webhook headers and the URL's path and
query (where webhooks keep their secret) are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import nats.errors

from .errors import AlertConfigError
from .store import AlertEvent, EventType

__all__ = ["SUBJECT_PREFIX", "AlertPublisher", "PublisherStats", "WebhookConfig", "event_payload", "subject_for"]

log = logging.getLogger(__name__)

SUBJECT_PREFIX = "alerts"
MAX_THROTTLE_KEYS = 100_000  # alerts whose last published update is remembered; forgetting one only un-throttles it


class _Nats(Protocol):
    async def publish(self, subject: str, payload: bytes = b"") -> None: ...


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout_s: float = 5.0  # per attempt
    retries: int = 2  # attempts after the first
    backoff_s: float = 0.5  # before the first retry, doubled for each next one
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # e.g. authorization; never logged

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise AlertConfigError("webhook.url", self.url, "it must be an http:// or https:// URL")
        if not isinstance(self.timeout_s, (int, float)) or not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise AlertConfigError("webhook.timeout_s", self.timeout_s, "it must be a finite number of seconds above 0")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or not 0 <= self.retries <= 10:
            raise AlertConfigError("webhook.retries", self.retries, "it must be an integer from 0 to 10")
        if not isinstance(self.backoff_s, (int, float)) or not (math.isfinite(self.backoff_s) and self.backoff_s >= 0):
            raise AlertConfigError("webhook.backoff_s", self.backoff_s,
                                   "it must be a finite number of seconds, 0 or more")


@dataclass
class PublisherStats:
    published: int = 0  # events handed to NATS
    throttled: int = 0  # updates not sent: one went out less than update_interval_us before
    nats_failed: int = 0  # events NATS refused (connection closed, payload too big ...)
    webhook_sent: int = 0  # events the webhook answered 2xx
    webhook_retries: int = 0  # attempts after a first one
    webhook_failed: int = 0  # events the webhook never took, after every attempt


def subject_for(tenant: str, device: str) -> str:
    return f"{SUBJECT_PREFIX}.{tenant}.{device}"


def _redacted(url: str) -> str:
    """Scheme and host only: webhook URLs often carry their secret in the path or query (Slack, Teams)."""
    u = httpx.URL(url)
    return f"{u.scheme}://{u.host}{'' if u.port is None else f':{u.port}'}/…"


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def event_payload(e: AlertEvent) -> dict[str, Any]:
    a = e.alert
    return {
        "id": a.id, "event": str(e.event), "tenant": a.tenant, "device": a.device, "channel": a.channel,
        "kind": a.kind, "state": a.state, "count": a.count, "score": _finite(a.score), "value": _finite(a.value),
        "baseline": _finite(a.baseline), "message": a.message, "window_end_us": a.window_end_us, "at": e.at,
    }


class AlertPublisher:
    """Publishes AlertEvents; `stats` counts what went out, what was throttled and what failed."""

    def __init__(
        self, nc: _Nats | None, *, update_interval_us: int, webhook: WebhookConfig | None = None,
        http: httpx.AsyncClient | None = None, sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if not isinstance(update_interval_us, int) or isinstance(update_interval_us, bool) or update_interval_us < 0:
            raise AlertConfigError("update_interval_us", update_interval_us, "it must be an integer, 0 or more (µs)")
        self._nc = nc
        self.update_interval_us = update_interval_us
        self.webhook = webhook
        self._http = http
        self._own_http = http is None and webhook is not None
        if self._own_http:
            self._http = httpx.AsyncClient()
        self._sleep = sleep
        self._last_sent: dict[int, int] = {}  # alert id -> `at` of its last published event
        self.stats = PublisherStats()

    async def aclose(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> "AlertPublisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _due(self, e: AlertEvent) -> bool:
        alert_id = e.alert.id
        if e.event is EventType.UPDATED:
            last = self._last_sent.get(alert_id)
            if last is not None and e.at - last < self.update_interval_us:
                self.stats.throttled += 1
                return False
        self._last_sent.pop(alert_id, None)  # re-inserted below: the dict stays ordered oldest first
        if e.event is not EventType.RESOLVED:
            self._last_sent[alert_id] = e.at
            if len(self._last_sent) > MAX_THROTTLE_KEYS:
                del self._last_sent[next(iter(self._last_sent))]
        return True

    async def publish(self, event: AlertEvent) -> bool:
        """Send the event (False when throttled). Failures are counted and logged, not raised."""
        if not self._due(event):
            return False
        payload = event_payload(event)
        body = json.dumps(payload, separators=(",", ":")).encode()
        if self._nc is not None:
            subject = subject_for(event.alert.tenant, event.alert.device)
            try:
                await self._nc.publish(subject, body)
                self.stats.published += 1
            except nats.errors.Error as exc:
                self.stats.nats_failed += 1
                log.warning("alert %s %s not published on %s: %s", event.alert.id, event.event, subject, exc)
        if self.webhook is not None:
            await self._post(event, body)
        return True

    async def _post(self, event: AlertEvent, body: bytes) -> None:
        hook = self.webhook
        assert hook is not None and self._http is not None
        headers = {"content-type": "application/json", **hook.headers}
        why = ""
        for attempt in range(hook.retries + 1):
            if attempt:
                self.stats.webhook_retries += 1
                await self._sleep(hook.backoff_s * 2 ** (attempt - 1))
            try:
                r = await self._http.post(hook.url, content=body, headers=headers, timeout=hook.timeout_s)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
                continue
            if r.is_success:
                self.stats.webhook_sent += 1
                return
            why = f"HTTP {r.status_code}"
            if r.status_code < 500 and r.status_code != 429:
                break  # the hook refused this payload; sending it again would not change that
        self.stats.webhook_failed += 1
        log.warning("alert %s %s not delivered to the webhook at %s after %d attempt(s): %s",
                    event.alert.id, event.event, _redacted(hook.url), attempt + 1, why)
