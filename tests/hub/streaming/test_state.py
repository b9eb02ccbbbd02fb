"""Durable state: restart equals an uninterrupted run; a crash before a checkpoint replays without double counting."""

from __future__ import annotations

import sqlite3

import pytest

from hub.streaming import StreamConfigError, StreamError, StreamProcessor, Windows

from .helpers import S, at, exact, flat, random_batches

PARAMS = [
    dict(windows=Windows(10 * S), max_out_of_orderness_us=2 * S, allowed_lateness_us=20 * S),
    dict(windows=Windows(20 * S, 5 * S), max_out_of_orderness_us=3 * S, allowed_lateness_us=15 * S),
]


def run(p: StreamProcessor, batches, first: int = 0, *, checkpoint_every: int | None = None) -> list:
    """Feed batches[first:], batch i at position i; checkpoint after every `checkpoint_every`-th."""
    out = []
    for i in range(first, len(batches)):
        for key, r in batches[i]:
            out.append(flat(p.process(key, r, now_us=i * 10 * S)))
        if checkpoint_every and (i + 1) % checkpoint_every == 0:
            p.checkpoint(i)
    return out


def uninterrupted(params, batches):
    p = StreamProcessor(exact, **params)
    out = run(p, batches)
    out.append(flat(p.flush()))
    return out, p.counters


@pytest.mark.parametrize("params", PARAMS, ids=["tumbling", "sliding"])
def test_restart_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, params):
    batches = random_batches(7)
    want, want_counters = uninterrupted(params, batches)
    assert want_counters["too_late"] > 0 and want_counters["windows_updated"] > 0  # the data exercises lateness
    half = len(batches) // 2
    p, pos = StreamProcessor.open(tmp_path / "s.db", exact, **params)
    assert pos is None
    got = run(p, batches[:half], checkpoint_every=3)  # several checkpoints: incremental writes and evictions
    p.checkpoint(half - 1)
    p.close()
    del p
    p, pos = StreamProcessor.open(tmp_path / "s.db", exact, **params)
    assert pos == half - 1
    got += run(p, batches, pos + 1)
    got.append(flat(p.flush()))
    assert got == want
    assert p.counters == want_counters


@pytest.mark.parametrize("params", PARAMS, ids=["tumbling", "sliding"])
def test_a_crash_before_checkpoint_replays_from_the_previous_position(tmp_path, params):
    batches = random_batches(8)
    want, want_counters = uninterrupted(params, batches)
    p, _ = StreamProcessor.open(tmp_path / "s.db", exact, **params)
    run(p, batches[:12], checkpoint_every=4)  # last checkpoint: position 11
    for key, r in batches[12] + batches[13] + batches[14]:  # work that is never checkpointed
        p.process(key, r)
    del p  # crash: no checkpoint, no close
    p, pos = StreamProcessor.open(tmp_path / "s.db", exact, **params)
    assert pos == 11
    assert p.counters["rows_in"] == sum(len(r) for b in batches[:12] for _, r in b)
    got = run(p, batches, pos + 1)
    got.append(flat(p.flush()))
    n_before = sum(len(b) for b in batches[:12])
    assert got == want[n_before:]  # the replayed outputs are the same, nothing counted twice
    assert p.counters == want_counters


def test_closed_windows_leave_memory_and_the_file(tmp_path):
    params = PARAMS[0]
    batches = random_batches(9, batches=60)
    p, _ = StreamProcessor.open(tmp_path / "s.db", exact, **params)
    run(p, batches, checkpoint_every=5)
    p.checkpoint(len(batches))
    db = sqlite3.connect(tmp_path / "s.db")
    rows_in_file = sum(len(ts) // 8 for (ts,) in db.execute("SELECT ts FROM chunks"))
    assert rows_in_file == p.counters["open_rows"]
    assert 0 < rows_in_file < p.counters["rows_in"] // 10
    panes = {(k, pn) for k, pn in db.execute("SELECT key_id, pane FROM chunks")}
    assert len(panes) <= 5 * 5  # keys x (size + out-of-orderness + lateness) / size, with slack
    fired = db.execute("SELECT count(*) FROM fired").fetchone()[0]
    assert fired == sum(p.key_stats(k)["updatable_windows"] for k in p.keys())
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_opening_with_other_parameters_is_refused(tmp_path):
    p, _ = StreamProcessor.open(tmp_path / "s.db", exact, Windows(10 * S))
    p.process("d", at(1))
    p.checkpoint(1)
    p.close()
    with pytest.raises(StreamConfigError):
        StreamProcessor.open(tmp_path / "s.db", exact, Windows(20 * S))
    with pytest.raises(StreamConfigError):
        StreamProcessor.open(tmp_path / "s.db", exact, Windows(10 * S), allowed_lateness_us=1)
    p, pos = StreamProcessor.open(tmp_path / "s.db", exact, Windows(10 * S), idle_timeout_us=5)  # may change
    assert pos == 1 and p.key_stats("d")["rows_in"] == 1


def test_checkpoint_after_close_is_refused(tmp_path):
    p, _ = StreamProcessor.open(tmp_path / "s.db", exact, Windows(10 * S))
    p.close()
    with pytest.raises(StreamError):
        p.checkpoint(1)
