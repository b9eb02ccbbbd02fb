"""AlertPublisher against a real nats-server and a webhook on 127.0.0.1: what goes out, is throttled, fails."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from hub.alerts import AlertConfigError, AlertPublisher, AlertStore, RateLimit, WebhookConfig, event_payload
from tests.hub.alerts.test_store import HOUR, S, finding
from tests.hub.alerts.series import T0
from tests.servers import free_port

WAIT_S = 5.0


class Webhook:
    """An HTTP server on 127.0.0.1:0 that records every POST and answers with the next status of `statuses`
    (the last one repeats)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses) or [200]
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.bodies.append(json.loads(body))
                hook.headers.append(dict(self.headers))
                status = hook.statuses.pop(0) if len(hook.statuses) > 1 else hook.statuses[0]
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/s3cr3t-token"
        # A short poll interval: shutdown() waits for the serving loop's next poll.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="webhook", daemon=True)

    def __enter__(self) -> "Webhook":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=WAIT_S)


class Sleeps:
    """An injected sleep that records what it was asked to wait, and waits for nothing."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    with AlertStore(tmp_path / "alerts.db", rate_limit=RateLimit(max_new=10, interval_us=HOUR)) as s:
        yield s


@pytest.fixture
async def nc(nats_server) -> AsyncIterator[NatsClient]:
    client = await nats.connect(nats_server.url, connect_timeout=WAIT_S, allow_reconnect=False)
    try:
        yield client
    finally:
        await client.close()


async def received_until_marker(nc: NatsClient, sub, subject: str) -> list[dict]:
    """Everything the subscription got before a marker we publish now (one connection keeps order)."""
    await nc.publish(subject, b'{"marker": true}')
    out = []
    while True:
        msg = await sub.next_msg(timeout=WAIT_S)
        body = json.loads(msg.data)
        if body.get("marker"):
            return out
        out.append({"subject": msg.subject, **body})


async def test_new_alerts_and_state_changes_reach_a_nats_subscriber(nc, store):
    sub = await nc.subscribe("alerts.acme.*")
    await nc.flush()
    publisher = AlertPublisher(nc, update_interval_us=HOUR)

    raised = store.raise_(finding(), T0)
    assert await publisher.publish(raised) is True
    # Updates within the interval are throttled; the first one an interval after the last event goes out.
    assert await publisher.publish(store.raise_(finding(), T0 + S)) is False
    assert await publisher.publish(store.raise_(finding(), T0 + HOUR - 1)) is False
    assert await publisher.publish(store.raise_(finding(), T0 + HOUR)) is True
    assert await publisher.publish(store.ack(raised.alert.id, "ana", now_us=T0 + HOUR + S)) is True
    assert await publisher.publish(store.raise_(finding(), T0 + HOUR + 2 * S)) is False  # an ack resets the clock
    assert await publisher.publish(store.resolve(raised.alert.id, "ana", now_us=T0 + HOUR + 3 * S)) is True
    other = store.raise_(finding(device="m2"), T0)  # another device: another subject
    assert await publisher.publish(other) is True

    got = await received_until_marker(nc, sub, "alerts.acme.m2")
    assert [(m["subject"], m["event"], m["count"]) for m in got] == [
        ("alerts.acme.m1", "raised", 1), ("alerts.acme.m1", "updated", 4), ("alerts.acme.m1", "acked", 4),
        ("alerts.acme.m1", "resolved", 5), ("alerts.acme.m2", "raised", 1)]
    assert got[0] == {"subject": "alerts.acme.m1", **event_payload(raised)}
    assert {k: got[0][k] for k in ("id", "tenant", "device", "channel", "kind", "score", "value", "at")} == {
        "id": raised.alert.id, "tenant": "acme", "device": "m1", "channel": "temp", "kind": "robust_z",
        "score": 9.5, "value": 30.0, "at": T0}
    s = publisher.stats
    assert (s.published, s.throttled, s.nats_failed) == (5, 3, 0)


async def test_a_closed_connection_is_counted_not_raised(nats_server, store, caplog):
    client = await nats.connect(nats_server.url, connect_timeout=WAIT_S, allow_reconnect=False)
    await client.close()
    publisher = AlertPublisher(client, update_interval_us=HOUR)
    with caplog.at_level(logging.WARNING, logger="hub.alerts.notify"):
        assert await publisher.publish(store.raise_(finding(), T0)) is True
    assert (publisher.stats.published, publisher.stats.nats_failed) == (0, 1)
    assert "not published on alerts.acme.m1" in caplog.text


async def test_the_webhook_gets_each_event_with_its_headers(store):
    with Webhook(200) as hook:
        config = WebhookConfig(hook.url, headers={"authorization": "Bearer hook-secret"})
        async with AlertPublisher(None, update_interval_us=HOUR, webhook=config) as publisher:
            raised = store.raise_(finding(), T0)
            await publisher.publish(raised)
            await publisher.publish(store.ack(raised.alert.id, "ana", now_us=T0 + S))
    assert hook.bodies == [event_payload(raised), {**event_payload(raised), "event": "acked", "state": "acked",
                                                   "at": T0 + S}]
    assert hook.headers[0]["authorization"] == "Bearer hook-secret"
    assert hook.headers[0]["content-type"] == "application/json"
    assert (publisher.stats.webhook_sent, publisher.stats.webhook_failed, publisher.stats.published) == (2, 0, 0)


async def test_a_failing_webhook_is_retried_a_bounded_number_of_times_then_counted(store, caplog):
    sleeps = Sleeps()
    with Webhook(500) as hook:
        config = WebhookConfig(hook.url, retries=2, backoff_s=0.5, headers={"authorization": "Bearer hook-secret"})
        async with AlertPublisher(None, update_interval_us=HOUR, webhook=config, sleep=sleeps) as publisher:
            with caplog.at_level(logging.WARNING, logger="hub.alerts.notify"):
                assert await publisher.publish(store.raise_(finding(), T0)) is True
    assert len(hook.bodies) == 3 and sleeps.calls == [0.5, 1.0]
    s = publisher.stats
    assert (s.webhook_sent, s.webhook_retries, s.webhook_failed) == (0, 2, 1)
    assert "after 3 attempt(s): HTTP 500" in caplog.text
    assert "s3cr3t" not in caplog.text and "hook-secret" not in caplog.text  # the URL's path and headers


async def test_a_webhook_that_recovers_within_the_retries_counts_as_sent(store):
    sleeps = Sleeps()
    with Webhook(503, 429, 204) as hook:
        async with AlertPublisher(None, update_interval_us=HOUR, webhook=WebhookConfig(hook.url, retries=2),
                                  sleep=sleeps) as publisher:
            await publisher.publish(store.raise_(finding(), T0))
    assert len(hook.bodies) == 3
    assert (publisher.stats.webhook_sent, publisher.stats.webhook_retries, publisher.stats.webhook_failed) == (1, 2, 0)


async def test_a_webhook_refusal_is_final_and_an_unreachable_one_is_retried(store):
    sleeps = Sleeps()
    with Webhook(400) as hook:
        async with AlertPublisher(None, update_interval_us=HOUR, webhook=WebhookConfig(hook.url, retries=3),
                                  sleep=sleeps) as publisher:
            await publisher.publish(store.raise_(finding(), T0))
    assert len(hook.bodies) == 1 and sleeps.calls == []
    assert (publisher.stats.webhook_retries, publisher.stats.webhook_failed) == (0, 1)

    nowhere = WebhookConfig(f"http://127.0.0.1:{free_port()}/hook", retries=1, timeout_s=2.0)
    async with AlertPublisher(None, update_interval_us=HOUR, webhook=nowhere, sleep=sleeps) as publisher:
        await publisher.publish(store.raise_(finding("vib"), T0))
    assert (publisher.stats.webhook_retries, publisher.stats.webhook_failed) == (1, 1)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: WebhookConfig("ftp://x"), "webhook.url = 'ftp://x' is refused: it must be an http:// or https:// URL"),
    (lambda: WebhookConfig("http://x", timeout_s=0), "webhook.timeout_s = 0"),
    (lambda: WebhookConfig("http://x", retries=11), "webhook.retries = 11"),
    (lambda: WebhookConfig("http://x", backoff_s=-1), "webhook.backoff_s = -1"),
    (lambda: AlertPublisher(None, update_interval_us=-1), "update_interval_us = -1"),
])
def test_settings_out_of_range_name_the_setting_and_value(make, message):
    with pytest.raises(AlertConfigError, match=message):
        make()


def test_webhook_headers_stay_out_of_its_repr():
    assert "hook-secret" not in repr(WebhookConfig("http://x", headers={"authorization": "Bearer hook-secret"}))
