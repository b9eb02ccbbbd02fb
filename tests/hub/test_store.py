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
    parts = sorted(p.name for p in (tmp_path / "lake" / "telemetry").iterdir())
    assert len(parts) == 2 and all(p.startswith("date=") for p in parts)
    rows = query_telemetry(s.lake, device="d1", channel="temperature", limit=100)
    assert len(rows) == 20 and rows[0]["ts_us"] < rows[-1]["ts_us"]


def test_crash_before_commit_leaves_nothing_and_crash_after_commit_is_finished(tmp_path, monkeypatch):
    s = Store(tmp_path)
    # 1) the process dies between staging files and COMMIT: the tmp file is an orphan
    real_record = meta.record_batch

    def die(*a, **k):
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(meta, "record_batch", die)
    with pytest.raises(KeyboardInterrupt):
        s.commit([batch(1)])
    monkeypatch.setattr(meta, "record_batch", real_record)
    assert lake_counts(s.lake)["rows"] == 0
    assert not list((tmp_path / "lake").rglob("*.tmp"))

    # 2) the process dies after COMMIT, before the rename: recovery renames at the next start
    monkeypatch.setattr(type(s.lake), "publish", staticmethod(lambda staged: None))
    s.commit([batch(2)])
    assert lake_counts(s.lake)["rows"] == 0 and list((tmp_path / "lake").rglob("*.tmp"))
    s.close()
    monkeypatch.undo()
    s2 = Store(tmp_path)
    assert lake_counts(s2.lake)["rows"] == 10
    assert s2.commit([batch(2)]).duplicate_batches == 1  # the redelivery is a repeat


def test_orphan_tmp_from_a_dead_writer_is_discarded_on_start(tmp_path):
    s = Store(tmp_path)
    s.commit([batch(1)])
    s.close()
    folder = next((tmp_path / "lake" / "telemetry").iterdir())
    orphan = folder / ".part-deadbeef.parquet.tmp"
    orphan.write_bytes(b"half a parquet file")
    s2 = Store(tmp_path)
    assert not orphan.exists()
    assert lake_counts(s2.lake)["rows"] == 10


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
