"""The SQLite buffer: append, seal, order, ack, checkpoints, and every when_full policy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from agent.buffer import Buffer
from agent.config import BufferConfig
from agent.errors import BufferError_, BufferFullError
from protocol import Kind, Readings, decode_batch


class Clock:
    def __init__(self, t: int = 1_700_000_000_000_000) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += int(seconds * 1e6)


def readings(n: int, *, t0: int = 1_700_000_000_000_000, seed: int = 0) -> Readings:
    rng = np.random.default_rng(seed)
    ticks = n // 2
    vals = np.round(rng.normal(20, 2, (ticks, 2)), 2)
    return Readings.from_columns(["temperature", "humidity"], t0 + np.arange(ticks) * 1000, vals)


def make(tmp_path: Path, clock: Clock | None = None, **cfg) -> Buffer:
    settings = BufferConfig(path=tmp_path / "b.db", synchronous="normal", **cfg)
    return Buffer(settings, tenant="t1", device="d1", clock_us=clock or Clock())


def test_sealed_batches_hold_exactly_what_was_appended(tmp_path):
    b = make(tmp_path, batch_max_readings=300)
    parts = [readings(200, seed=i, t0=1_700_000_000_000_000 + i * 10**9) for i in range(5)]
    for p in parts:
        b.append(p)
    assert b.seal(force=True) == 4  # 1000 readings, 300 per batch
    batches = b.next_batches(100)
    assert [x.seq for x in batches] == [1, 2, 3, 4]
    decoded = [decode_batch(x.payload) for x in batches]
    assert all(d.header.epoch == b.epoch and d.header.device == "d1" for d in decoded)
    assert Readings.concat([d.readings for d in decoded]).equals(Readings.concat(parts))
    assert b.stats().pending_readings == 1000


def test_ack_deletes_and_counts(tmp_path):
    b = make(tmp_path)
    b.append(readings(100))
    b.seal(force=True)
    (batch,) = b.next_batches(10)
    assert b.ack([batch.seq]) == 100
    st = b.stats()
    assert st.pending_readings == 0 and st.bytes_used == 0
    assert st.counters["sent.telemetry"] == 100


def test_seq_and_epoch_survive_reopen(tmp_path):
    b = make(tmp_path)
    b.append(readings(10))
    b.seal(force=True)
    epoch = b.epoch
    b.close()
    b2 = make(tmp_path)
    assert b2.epoch == epoch
    b2.append(readings(10))
    b2.seal(force=True)
    assert [x.seq for x in b2.next_batches(10)] == [1, 2]


def test_seal_waits_for_interval_or_size(tmp_path):
    clock = Clock()
    b = make(tmp_path, clock, batch_max_readings=1000, seal_interval="2s")
    b.append(readings(100))
    assert b.seal() == 0
    clock.advance(2.0)
    assert b.seal() == 1
    b.append(readings(1000))
    assert b.seal() == 1  # full batch: no need to wait


def test_alerts_first_then_health_then_predictions_then_live_then_backlog(tmp_path):
    clock = Clock()
    b = make(tmp_path, clock, live_window="5s")
    b.append(readings(10))
    b.seal(force=True)  # seq 1: will be backlog
    clock.advance(60)
    b.append(readings(10))
    b.seal(force=True)  # seq 2: live telemetry
    b.append(readings(10), kind=Kind.HEALTH)
    b.seal(force=True)  # seq 3
    b.append(readings(10), kind=Kind.ALERT)
    b.seal(force=True)  # seq 4
    b.append(readings(10), kind=Kind.PREDICTION)
    b.seal(force=True)  # seq 5
    assert [(x.seq, x.kind) for x in b.next_batches(10)] == [
        (4, Kind.ALERT), (3, Kind.HEALTH), (5, Kind.PREDICTION), (2, Kind.TELEMETRY), (1, Kind.TELEMETRY)
    ]
    assert [x.seq for x in b.next_batches(10, exclude=[4, 2])] == [3, 5, 1]
    assert decode_batch(b.next_batches(10, exclude=[4, 3])[0].payload).header.kind is Kind.PREDICTION


def test_checkpoint_commits_with_the_readings(tmp_path):
    b = make(tmp_path)
    b.append(readings(10), checkpoint=("sim", "0:5"))
    assert b.checkpoint("sim") == "0:5"
    b.close()
    assert make(tmp_path).checkpoint("sim") == "0:5"


def test_block_refuses_without_storing(tmp_path):
    b = make(tmp_path, max_bytes=4000, when_full="block")
    b.append(readings(100), checkpoint=("sim", "1"))
    with pytest.raises(BufferFullError, match="full"):
        b.append(readings(200), checkpoint=("sim", "2"))
    assert b.checkpoint("sim") == "1"  # the input does not advance past what was refused
    assert b.stats().pending_readings == 100
    assert not any(k.startswith("dropped") for k in b.stats().counters)


def test_drop_newest_refuses_and_counts(tmp_path):
    b = make(tmp_path, max_bytes=4000, when_full="drop_newest")
    b.append(readings(100))
    r = b.append(readings(200), checkpoint=("sim", "2"))
    assert (r.accepted, r.dropped) == (0, 200)
    assert b.stats().counters["dropped.drop_newest"] == 200
    assert b.checkpoint("sim") == "2"  # consciously dropped: the input moves on


def test_drop_oldest_evicts_sealed_batches_first_and_counts_gaps(tmp_path):
    clock = Clock()
    b = make(tmp_path, clock, max_bytes=6000, when_full="drop_oldest")
    for i in range(3):
        b.append(readings(100, seed=i))
        b.seal(force=True)
        clock.advance(1)
    used = b.bytes_used
    b.append(readings(300, seed=9))
    st = b.stats()
    assert st.bytes_used <= 6000
    assert st.counters["dropped.drop_oldest"] > 0
    assert st.counters["dropped_batches"] >= 1
    remaining = [x.seq for x in b.next_batches(10)]
    assert remaining and 1 not in remaining  # the oldest went first
    assert used > 0


def test_drop_oldest_takes_telemetry_before_alerts(tmp_path):
    clock = Clock()
    b = make(tmp_path, clock, max_bytes=5000, when_full="drop_oldest")
    b.append(readings(100, seed=1), kind=Kind.ALERT)
    b.seal(force=True)
    clock.advance(1)
    b.append(readings(100, seed=2))
    b.seal(force=True)
    clock.advance(1)
    b.append(readings(120, seed=3))
    kinds = {x.kind for x in b.next_batches(10)}
    assert Kind.ALERT in kinds


def test_downsample_oldest_halves_before_evicting(tmp_path):
    clock = Clock()
    probe = make(tmp_path / "probe", clock)
    probe.append(readings(4000, seed=1))
    probe.seal(force=True)
    sealed = probe.bytes_used
    incoming = len(readings(100, seed=2).to_bytes()) + 32
    # room for the batch and most, not all, of the next append: one halving makes it fit
    limit = sealed + incoming - sealed // 4
    first = make(tmp_path, clock)  # fill with a roomy cap, then reopen with the tight one
    first.append(readings(4000, seed=1))
    first.seal(force=True)
    first.close()
    b = make(tmp_path, clock, max_bytes=limit, when_full="downsample_oldest")
    clock.advance(1)
    b.append(readings(100, seed=2))
    st = b.stats()
    assert st.bytes_used <= limit
    assert st.counters.get("dropped.downsample_oldest", 0) > 0
    assert st.counters.get("dropped_batches", 0) == 0  # thinned, not gone
    (oldest,) = [x for x in b.next_batches(10) if x.seq == 1]
    assert 0 < oldest.n < 4000
    assert st.counters["dropped.downsample_oldest"] == 4000 - oldest.n
    kept = decode_batch(oldest.payload).readings.canonical()
    full = readings(4000, seed=1).canonical()
    # every other reading of each channel, with its own timestamp and value
    assert set(kept.ts_us.tolist()) <= set(full.ts_us.tolist())
    assert set(kept.channels) == {"temperature", "humidity"}


def test_in_flight_batches_are_never_evicted(tmp_path):
    clock = Clock()
    b = make(tmp_path, clock, max_bytes=4000, when_full="drop_oldest")
    b.append(readings(100))
    b.seal(force=True)
    clock.advance(1)
    with pytest.raises(BufferFullError):
        b.append(readings(200), in_flight=[1])
    assert [x.seq for x in b.next_batches(10)] == [1]


def test_oversize_append_is_counted_not_stored(tmp_path):
    b = make(tmp_path, max_bytes=1000, when_full="drop_oldest")
    r = b.append(readings(400))
    assert r.dropped == 400
    assert b.stats().counters["dropped.oversize"] == 400


def test_dead_letters_are_kept_and_counted(tmp_path):
    b = make(tmp_path)
    b.dead_letter("jsonl", "Value 'x' of channel 'temperature' is not a number.", b'{"temperature": "x"}')
    (row,) = b.dead_letters()
    assert row[1:] == ("jsonl", "Value 'x' of channel 'temperature' is not a number.", b'{"temperature": "x"}')
    assert b.stats().counters["dead_letters.jsonl"] == 1


def test_bytes_used_is_recomputed_on_open(tmp_path):
    b = make(tmp_path)
    b.append(readings(100))
    b.seal(force=True)
    b.append(readings(50))
    used = b.bytes_used
    b.close()
    assert make(tmp_path).bytes_used == used


@pytest.mark.parametrize("policy", ["block", "drop_newest"])
def test_health_is_not_crowded_out_by_a_full_buffer(tmp_path, policy):
    b = make(tmp_path, max_bytes=4000, when_full=policy)
    b.append(readings(150))
    if policy == "block":
        with pytest.raises(BufferFullError):
            b.append(readings(100))
    else:
        assert b.append(readings(100)).dropped == 100
    assert b.append(readings(100), kind=Kind.HEALTH).accepted == 100
    assert b.stats().bytes_used > 4000  # the overdraft, bounded at 1 MiB


def test_a_chunk_of_several_kinds_commits_whole_or_not_at_all(tmp_path):
    b = make(tmp_path, max_bytes=4000, when_full="block")
    b.append_groups([(Kind.ALERT, readings(10)), (Kind.TELEMETRY, readings(100))], checkpoint=("jsonl", "100"))
    with pytest.raises(BufferFullError):
        b.append_groups([(Kind.ALERT, readings(10, seed=1)), (Kind.TELEMETRY, readings(200, seed=1))],
                        checkpoint=("jsonl", "200"))
    st = b.stats()
    assert (st.counters["appended.alert"], st.counters["appended.telemetry"]) == (10, 100)
    assert b.checkpoint("jsonl") == "100"


def test_drop_oldest_takes_telemetry_before_predictions(tmp_path):
    clock = Clock()
    b = make(tmp_path, clock, max_bytes=1000, when_full="drop_oldest")
    b.append(readings(40, seed=1), kind=Kind.PREDICTION)  # the oldest, yet evicted last
    b.seal(force=True)
    clock.advance(1)
    b.append(readings(20, seed=2))
    b.seal(force=True)
    clock.advance(1)
    assert b.append(readings(34, seed=3)).accepted == 34  # room for it: one of the two sealed batches
    st = b.stats()
    assert st.counters["evicted.telemetry"] > 0 and "evicted.prediction" not in st.counters
    assert Kind.PREDICTION in {x.kind for x in b.next_batches(10)}


@pytest.mark.parametrize("policy", ["block", "drop_newest"])
def test_predictions_get_no_overdraft(tmp_path, policy):
    b = make(tmp_path, max_bytes=4000, when_full=policy)
    b.append(readings(150))
    if policy == "block":
        with pytest.raises(BufferFullError):
            b.append(readings(100), kind=Kind.PREDICTION)
    else:
        assert b.append(readings(100), kind=Kind.PREDICTION).dropped == 100
        assert b.stats().counters["refused.prediction"] == 100
    assert b.stats().bytes_used <= 4000


def test_a_buffer_from_before_predictions_keeps_its_telemetry_telemetry(tmp_path):
    """Files written with lanes alert 0, health 1, telemetry 2 are renumbered once, on open."""
    b = make(tmp_path)
    b.append(readings(10), kind=Kind.HEALTH)
    b.append(readings(20))
    b.seal(force=True)
    b.append(readings(30, seed=1))  # still pending
    b.close()
    db = sqlite3.connect(tmp_path / "b.db")
    with db:  # what an agent of layout 1 left behind
        for table in ("pending", "batches"):
            db.execute(f"UPDATE {table} SET lane = 2 WHERE lane = ?", (Kind.TELEMETRY.lane,))
        db.execute("DELETE FROM meta WHERE key = 'lanes'")
    db.close()
    b = make(tmp_path)
    assert [x.kind for x in b.next_batches(10)] == [Kind.HEALTH, Kind.TELEMETRY]
    b.seal(force=True)
    assert [x.kind for x in b.next_batches(10)] == [Kind.HEALTH, Kind.TELEMETRY, Kind.TELEMETRY]
    assert all(decode_batch(x.payload).header.kind is x.kind for x in b.next_batches(10))
    b.close()
    assert [x.kind for x in make(tmp_path).next_batches(10)] == [Kind.HEALTH, Kind.TELEMETRY, Kind.TELEMETRY]


def test_a_buffer_from_a_newer_agent_is_refused_naming_its_layout(tmp_path):
    make(tmp_path).close()
    db = sqlite3.connect(tmp_path / "b.db")
    with db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'lanes'")
    db.close()
    with pytest.raises(BufferError_, match="lane layout 99"):
        make(tmp_path)
