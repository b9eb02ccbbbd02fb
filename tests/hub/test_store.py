"""Exactly-once storage and the loss ledger, without a broker: repeats, gaps, late fills, crashes."""

from __future__ import annotations

import numpy as np
import pytest

from hub.storage import metadata as meta
from hub.storage.query import lake_counts, query_telemetry
from hub.storage.store import Store
from protocol import Kind, Readings, decode_batch, encode_batch

T0 = 1_700_000_000_000_000


def batch(seq: int, *, device: str = "d1", epoch: int = 7, n: int = 10, kind: Kind = Kind.TELEMETRY,
          t0: int = T0, channel: str = "temperature"):
    ts = t0 + seq * 10**7 + np.arange(n) * 1000
    r = Readings.from_columns([channel], ts, np.round(np.linspace(20, 21, n), 2).reshape(n, 1))
    return decode_batch(encode_batch(r, tenant="t1", device=device, kind=kind, epoch=epoch, seq=seq))


def ledger_of(store: Store, device: str = "d1"):
    return meta.ledger(store.db, "t1", device)


def test_repeats_are_stored_once(tmp_path):
    s = Store(tmp_path)
    r1 = s.commit([batch(1), batch(2), batch(2)])
    r2 = s.commit([batch(1), batch(3)])
    assert (r1.stored_batches, r1.duplicate_batches) == (2, 1)
    assert (r2.stored_batches, r2.duplicate_batches) == (1, 1)
    assert lake_counts(s.lake) == {"rows": 30, "distinct": 30, "duplicate_rows": 0}
    (led,) = ledger_of(s)
    assert (led.hwm, led.batches, led.duplicates, led.gaps) == (3, 3, 2, [])


def test_gaps_open_and_late_fills_close_them(tmp_path):
    s = Store(tmp_path)
    s.commit([batch(1), batch(5)])
    assert ledger_of(s)[0].gaps == [(2, 4)]
    s.commit([batch(3)])
    (led,) = ledger_of(s)
    assert led.gaps == [(2, 2), (4, 4)] and led.late_fills == 1 and led.missing == 2
    s.commit([batch(2), batch(4)])
    (led,) = ledger_of(s)
    assert led.gaps == [] and led.late_fills == 3


def test_epochs_are_separate_streams(tmp_path):
    s = Store(tmp_path)
    s.commit([batch(1, epoch=1), batch(2, epoch=1)])
    s.commit([batch(1, epoch=2)])  # the device lost its storage: seq starts again, not a repeat
    assert [(x.epoch, x.hwm) for x in ledger_of(s)] == [(1, 2), (2, 1)]
    assert lake_counts(s.lake)["rows"] == 30


def test_health_updates_device_and_profile(tmp_path):
    s = Store(tmp_path)
    r = Readings.from_rows([("dropped.drop_oldest", T0, 4.0), ("info.profile.rpi4", T0, 1.0),
                            ("buffer.readings", T0, 12.0)])
    h = decode_batch(encode_batch(r, tenant="t1", device="d1", kind=Kind.HEALTH, epoch=7, seq=1))
    s.commit([h])
    (dev,) = meta.devices(s.db)
    assert dev["profile"] == "rpi4"
    assert dev["last_health"]["dropped.drop_oldest"] == 4.0


def test_partitions_follow_event_date_and_late_backlog_lands_in_its_day(tmp_path):
    s = Store(tmp_path)
    day = 86_400_000_000
    s.commit([batch(1, t0=T0), batch(2, t0=T0 - 3 * day)])
    parts = sorted(p.name for p in (tmp_path / "lake" / "telemetry").glob("date=*"))
    assert parts == ["date=2023-11-11", "date=2023-11-14"]
    rows = query_telemetry(s.lake, device="d1", channel="temperature", limit=100)
    assert len(rows) == 20 and rows[0]["ts_us"] < rows[-1]["ts_us"]


def test_a_crash_before_the_lake_append_leaves_nothing_and_the_redelivery_is_stored(tmp_path, monkeypatch):
    s = Store(tmp_path)
    # The process dies after step 1 (pending recorded) and before the Delta commit (a kill: no
    # clean-up runs; a failure the process survives drops its pending rows, tested below).
    monkeypatch.setattr(s.lake, "append", _die)
    monkeypatch.setattr(s, "_drop_pending", _die)
    with pytest.raises(KeyboardInterrupt):
        s.commit([batch(1)])
    monkeypatch.undo()
    assert _pending(s) == 1  # what a dead process leaves: a pending row, no lake rows
    s.close()
    s2 = Store(tmp_path)
    assert _pending(s2) == 0 and lake_counts(s2.lake)["rows"] == 0 and ledger_of(s2) == []
    assert s2.commit([batch(1)]).stored_batches == 1  # the broker's redelivery
    assert lake_counts(s2.lake) == {"rows": 10, "distinct": 10, "duplicate_rows": 0}


def test_a_crash_after_the_lake_append_is_recorded_and_the_redelivery_is_a_repeat(tmp_path, monkeypatch):
    s = Store(tmp_path)
    # The Delta commit landed; the process dies before step 3 records the batch.
    monkeypatch.setattr(meta, "record_batch", _die)
    with pytest.raises(KeyboardInterrupt):
        s.commit([batch(1), batch(2)])
    monkeypatch.undo()
    assert _pending(s) == 2 and lake_counts(s.lake)["rows"] == 20 and ledger_of(s) == []
    s.close()
    s2 = Store(tmp_path)
    assert _pending(s2) == 0
    (led,) = ledger_of(s2)
    assert (led.hwm, led.batches) == (2, 2)
    again = s2.commit([batch(1), batch(2)])
    assert (again.stored_batches, again.duplicate_batches) == (0, 2)
    assert lake_counts(s2.lake) == {"rows": 20, "distinct": 20, "duplicate_rows": 0}
    assert meta.counters(s2.db)["ingest.recovered_batches"] == 2


def test_a_batch_pending_under_a_live_writer_is_deferred_and_under_a_dead_one_is_settled(tmp_path, monkeypatch):
    a = Store(tmp_path)
    b = Store(tmp_path)  # a second writer on the same data_dir (its own slot)
    assert a.writer_id != b.writer_id
    monkeypatch.setattr(meta, "record_batch", _die)
    with pytest.raises(KeyboardInterrupt):
        a.commit([batch(1)])  # in the lake, still pending under a's slot
    monkeypatch.undo()
    got = b.commit([batch(1), batch(2)])
    assert (got.stored_batches, got.deferred) == (1, (0,))  # a is alive: not b's to settle, not acked
    a.close()  # a's process is gone: its slot is free
    got = b.commit([batch(1)])
    assert (got.stored_batches, got.duplicate_batches, got.deferred) == (0, 1, ())
    assert lake_counts(b.lake) == {"rows": 20, "distinct": 20, "duplicate_rows": 0}
    assert _pending(b) == 0


def test_a_failed_append_the_process_survives_leaves_no_pending_rows(tmp_path, monkeypatch):
    s = Store(tmp_path)

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s.lake, "append", disk_full)
    with pytest.raises(OSError, match="No space"):
        s.commit([batch(1)])
    monkeypatch.undo()
    assert _pending(s) == 0 and ledger_of(s) == []
    assert s.commit([batch(1)]).stored_batches == 1


def test_writer_slots_are_reused_after_close(tmp_path):
    a = Store(tmp_path)
    first = a.writer_id
    a.close()
    b = Store(tmp_path)
    assert b.writer_id == first


def _die(*a, **k):
    raise KeyboardInterrupt("simulated crash")


def _pending(store: Store) -> int:
    return store.db.execute("SELECT count(*) FROM lake_pending").fetchone()[0]


def test_predictions_are_stored_as_their_own_kind_and_queried_by_it(tmp_path):
    s = Store(tmp_path)
    s.commit([batch(1), batch(2, kind=Kind.PREDICTION, channel="pred.class"), batch(3, kind=Kind.HEALTH)])
    (led,) = ledger_of(s)
    assert (led.hwm, led.gaps) == (3, [])  # one numbering for every kind of a device
    predictions = query_telemetry(s.lake, kind="prediction", limit=100)
    assert len(predictions) == 10 and {r["kind"] for r in predictions} == {"prediction"}
    assert {r["channel"] for r in predictions} == {"pred.class"}
    assert {r["kind"] for r in query_telemetry(s.lake, limit=100)} == {"telemetry"}  # the default
    assert lake_counts(s.lake, kind="prediction")["rows"] == 10
    assert len(query_telemetry(s.lake, kind=None, limit=100)) == 30
