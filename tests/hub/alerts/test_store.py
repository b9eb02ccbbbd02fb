"""AlertStore: dedup per key, the per-device rate limit and its suppressed counter, transitions, auto-resolve."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.alerts import (
    AUTO_RESOLVER, AlertConfigError, AlertStore, AlertTransitionError, DetectorBank, EventType, Finding, FindingKind,
    RateLimit, RobustZConfig, UnknownAlertError,
)
from protocol.errors import InvalidIdError
from tests.hub.alerts.series import T0

S = 1_000_000
HOUR = 3600 * S
LIMIT = RateLimit(max_new=3, interval_us=HOUR)


def finding(channel: str = "temp", kind: FindingKind = FindingKind.ROBUST_Z, *, device: str = "m1",
            tenant: str = "acme", end: int = T0, value: float = 30.0, score: float = 9.5) -> Finding:
    return Finding(tenant, device, channel, kind, end, value, score, 5.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    with AlertStore(tmp_path / "alerts.db", rate_limit=LIMIT) as s:
        yield s


def test_a_finding_opens_an_alert_and_the_same_key_updates_it(store):
    raised = store.raise_(finding(), T0)
    assert raised is not None and raised.event is EventType.RAISED and raised.at == T0
    a = raised.alert
    assert (a.tenant, a.device, a.channel, a.kind, a.state, a.count, a.first_at, a.last_at) == (
        "acme", "m1", "temp", "robust_z", "open", 1, T0, T0)
    assert (a.value, a.score, a.baseline, a.window_end_us) == (30.0, 9.5, 5.0, T0)
    assert a.message == "temp = 30 is 9.5 robust z from its bucket's median 5."

    updated = store.raise_(finding(end=T0 + 60 * S, value=31.0, score=10.0), T0 + 5 * S)
    assert updated is not None and updated.event is EventType.UPDATED
    u = updated.alert
    assert (u.id, u.count, u.first_at, u.last_at, u.value, u.score, u.window_end_us) == (
        a.id, 2, T0, T0 + 5 * S, 31.0, 10.0, T0 + 60 * S)
    # Another kind, channel or device is another key, so another alert.
    others = [store.raise_(finding(kind=FindingKind.EWMA), T0), store.raise_(finding("vib"), T0),
              store.raise_(finding(device="m2"), T0)]
    assert [e.event for e in others] == [EventType.RAISED] * 3
    assert len({e.alert.id for e in others} | {a.id}) == 4
    assert store.stats() == {"open": 4, "acked": 0, "resolved": 0, "suppressed": 0}


def test_the_rate_limit_suppresses_new_alerts_per_device_and_counts_them(store):
    for i in range(3):
        assert store.raise_(finding(f"c{i}"), T0 + i * S).event is EventType.RAISED
    assert store.raise_(finding("c3"), T0 + 10 * S) is None
    assert store.raise_(finding("c4", FindingKind.EWMA), T0 + 11 * S) is None
    # Updates of live alerts are never limited, and other devices have their own budget.
    assert store.raise_(finding("c0"), T0 + 12 * S).event is EventType.UPDATED
    assert store.raise_(finding("c3", device="m2"), T0 + 12 * S).event is EventType.RAISED
    assert store.list_suppressed() == [{"tenant": "acme", "device": "m1", "count": 2, "last_at": T0 + 11 * S,
                                        "last_channel": "c4", "last_kind": "ewma"}]
    assert store.list_suppressed(device="m2") == []
    assert store.stats() == {"open": 4, "acked": 0, "resolved": 0, "suppressed": 2}
    # The window slides: an hour after the first alert opened, one more may open.
    assert store.raise_(finding("c3"), T0 + HOUR - 1) is None
    assert store.raise_(finding("c3"), T0 + HOUR).event is EventType.RAISED
    assert store.list_suppressed()[0]["count"] == 3


def test_ack_and_resolve_move_an_alert_once_and_name_bad_transitions(store):
    a = store.raise_(finding(), T0).alert
    acked = store.ack(a.id, "ana", now_us=T0 + S)
    assert (acked.event, acked.alert.state, acked.alert.acked_by, acked.alert.acked_at) == (
        EventType.ACKED, "acked", "ana", T0 + S)
    with pytest.raises(AlertTransitionError, match=f"Alert {a.id} is acked, so it cannot be acked: ana acked it"):
        store.ack(a.id, "bob")
    # An acked alert keeps counting findings and stays acked.
    assert store.raise_(finding(), T0 + 2 * S).alert.state == "acked"
    resolved = store.resolve(a.id, "bob", now_us=T0 + 3 * S)
    assert (resolved.event, resolved.alert.state, resolved.alert.resolved_by, resolved.alert.count) == (
        EventType.RESOLVED, "resolved", "bob", 2)
    with pytest.raises(AlertTransitionError, match="is resolved, so it cannot be resolved: bob resolved it already"):
        store.resolve(a.id, "ana")
    with pytest.raises(AlertTransitionError, match="cannot be acked: bob resolved it"):
        store.ack(a.id, "ana")
    assert store.get(a.id) == resolved.alert

    # Open → resolved directly is fine too.
    b = store.raise_(finding("vib"), T0).alert
    assert store.resolve(b.id, "ana").alert.state == "resolved"


def test_unknown_ids_and_bad_names_are_refused_with_the_value(store):
    with pytest.raises(UnknownAlertError, match="There is no alert 42."):
        store.ack(42, "ana")
    with pytest.raises(UnknownAlertError, match="There is no alert 42."):
        store.resolve(42, "ana")
    with pytest.raises(UnknownAlertError, match="There is no alert '1'."):
        store.get("1")  # type: ignore[arg-type]
    a = store.raise_(finding(), T0).alert
    with pytest.raises(AlertConfigError, match="Alert by = ' ' is refused: it must be 1-200 characters"):
        store.ack(a.id, " ")
    with pytest.raises(InvalidIdError):
        store.raise_(finding(device="m1.x"), T0)  # it would be two tokens of the NATS subject
    assert store.get(a.id).state == "open"


def test_a_finding_after_resolve_opens_a_new_alert(store):
    first = store.raise_(finding(), T0).alert
    store.resolve(first.id, "ana", now_us=T0 + S)
    again = store.raise_(finding(), T0 + 2 * S)
    assert again.event is EventType.RAISED and again.alert.id != first.id and again.alert.count == 1
    assert [a.state for a in store.list()] == ["open", "resolved"]
    assert store.get(first.id).count == 1


def test_resolve_quiet_resolves_open_alerts_without_findings_for_long_enough(store):
    quiet = store.raise_(finding("a"), T0).alert
    acked = store.raise_(finding("b"), T0).alert
    store.ack(acked.id, "ana", now_us=T0)
    busy = store.raise_(finding("c"), T0).alert
    store.raise_(finding("c"), T0 + 50 * S)

    events = store.resolve_quiet(T0 + 60 * S, after_us=60 * S)
    assert [(e.event, e.alert.id, e.alert.resolved_by, e.alert.resolved_at) for e in events] == [
        (EventType.RESOLVED, quiet.id, AUTO_RESOLVER, T0 + 60 * S)]
    assert store.get(busy.id).state == "open" and store.get(acked.id).state == "acked"
    assert [e.alert.id for e in store.resolve_quiet(T0 + 60 * S, after_us=60 * S, include_acked=True)] == [acked.id]
    assert [e.alert.id for e in store.resolve_quiet(T0 + 110 * S, after_us=60 * S)] == [busy.id]
    with pytest.raises(AlertConfigError, match="after_us = 0"):
        store.resolve_quiet(T0, after_us=0)


def test_list_filters_by_state_and_device_newest_first(store):
    a = store.raise_(finding("a"), T0).alert
    b = store.raise_(finding("b", device="m2"), T0 + S).alert
    c = store.raise_(finding("c", device="m2", tenant="other"), T0 + 2 * S).alert
    store.ack(b.id, "ana")
    assert [x.id for x in store.list()] == [c.id, b.id, a.id]
    assert [x.id for x in store.list(state="acked")] == [b.id]
    assert [x.id for x in store.list(device="m2")] == [c.id, b.id]
    assert [x.id for x in store.list(device="m2", tenant="acme")] == [b.id]
    assert [x.id for x in store.list(limit=1)] == [c.id]
    with pytest.raises(AlertConfigError, match="state = 'closed' is refused: it must be one of open, acked, resolved"):
        store.list(state="closed")
    with pytest.raises(AlertConfigError, match="limit = 0"):
        store.list(limit=0)


def test_alerts_and_detector_state_survive_a_reopen(tmp_path):
    bank = DetectorBank(robust_z=RobustZConfig(window=4, min_obs=2))
    for i in range(6):
        bank.observe("acme", "m1", "temp", T0 + i * S, float(i % 2))
    with AlertStore(tmp_path / "alerts.db", rate_limit=LIMIT) as store:
        assert store.load_detectors("stream") is None
        a = store.raise_(finding(), T0).alert
        store.save_detectors("stream", bank.to_state(), now_us=T0)
    with AlertStore(tmp_path / "alerts.db", rate_limit=LIMIT) as store:
        assert store.get(a.id) == a
        assert DetectorBank.from_state(store.load_detectors("stream")).to_state() == bank.to_state()
        assert store.raise_(finding(), T0 + S).event is EventType.UPDATED
    with sqlite3.connect(tmp_path / "alerts.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_one_live_alert_per_key_is_enforced_by_the_schema(store):
    store.raise_(finding(), T0)
    with pytest.raises(sqlite3.IntegrityError):
        store._db.execute("INSERT INTO alerts (tenant, device, channel, kind, state, first_at, last_at, count, "
                          "window_end_us, value, score, baseline, message) "
                          "VALUES ('acme', 'm1', 'temp', 'robust_z', 'acked', 0, 0, 1, 0, 0, 0, 0, '')")


def test_rate_limit_settings_are_checked():
    with pytest.raises(AlertConfigError, match="rate_limit.max_new = 0"):
        RateLimit(max_new=0)
    with pytest.raises(AlertConfigError, match="rate_limit.interval_us = 1.5"):
        RateLimit(interval_us=1.5)  # type: ignore[arg-type]
