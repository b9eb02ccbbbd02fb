"""Window semantics: firing at the watermark, out-of-order rows, lateness, per-key independence, idle flush."""

from __future__ import annotations

import numpy as np
import pytest

from hub.streaming import StreamConfigError, StreamKeyError, StreamProcessor, Windows
from protocol.readings import Readings

from .helpers import S, at, flat, random_batches, summary


def proc(size_s=10, slide_s=None, ooo_s=0, al_s=0, **kw) -> StreamProcessor:
    win = Windows(size_s * S, None if slide_s is None else slide_s * S)
    return StreamProcessor(summary, win, max_out_of_orderness_us=ooo_s * S, allowed_lateness_us=al_s * S, **kw)


def spans(out):
    return [(w.start_us // S, w.end_us // S, w.revision, w.update, w.value) for w in out.windows]


def test_tumbling_fires_when_the_watermark_reaches_the_end():
    p = proc(10)
    assert spans(p.process("d", at(1, 5, 9.999999))) == []
    assert spans(p.process("d", at(12, value=2.0))) == [(0, 10, 1, False, (3, 3.0, [1.0, 5.0, 9.999999]))]
    assert spans(p.process("d", at(19.9))) == []
    assert spans(p.process("d", at(20))) == [(10, 20, 1, False, (2, 3.0, [12.0, 19.9]))]
    assert p.counters == {"rows_in": 6, "windows_fired": 2, "windows_updated": 0, "too_late": 0, "keys": 1, "open_rows": 1}


def test_a_row_exactly_at_the_end_fires_the_window_and_opens_the_next():
    p = proc(10)
    p.process("d", at(3))
    assert spans(p.process("d", at(10))) == [(0, 10, 1, False, (1, 1.0, [3.0]))]


def test_windows_are_epoch_aligned_and_empty_windows_never_fire():
    p = proc(10)
    p.process("d", at(1))
    out = p.process("d", at(95))  # jumps over 8 empty windows
    assert spans(out) == [(0, 10, 1, False, (1, 1.0, [1.0]))]
    assert spans(p.process("d", at(100))) == [(90, 100, 1, False, (1, 1.0, [95.0]))]


def test_sliding_windows_fire_each_at_its_own_end():
    p = proc(10, slide_s=5)
    # 1 s is in [-5, 5) and [0, 10); 7 s in [0, 10) and [5, 15).
    assert spans(p.process("d", at(1, 7))) == [(-5, 5, 1, False, (1, 1.0, [1.0]))]
    assert spans(p.process("d", at(10))) == [(0, 10, 1, False, (2, 2.0, [1.0, 7.0]))]
    assert spans(p.process("d", at(15))) == [(5, 15, 1, False, (2, 2.0, [7.0, 10.0]))]
    assert spans(p.process("d", at(30))) == [(10, 20, 1, False, (2, 2.0, [10.0, 15.0])),
                                              (15, 25, 1, False, (1, 1.0, [15.0]))]


def test_sliding_with_many_panes_matches_a_brute_force_count():
    rng = np.random.default_rng(3)
    ts_s = np.sort(rng.uniform(0, 200, 400))
    p = proc(12, slide_s=3)
    got = {}
    for chunk in np.array_split(ts_s, 17):
        for w in p.process("d", at(*chunk)).windows:
            got[w.start_us // S] = w.value[0]
    for w in p.flush().windows:
        got[w.start_us // S] = w.value[0]
    want = {}
    for t in ts_s:
        for start in range(int(np.floor(t / 3)) * 3 - 9, int(np.floor(t / 3)) * 3 + 1, 3):
            want[start] = want.get(start, 0) + 1
    assert got == want


def test_out_of_order_rows_within_bound_land_in_their_window():
    p = proc(10, ooo_s=3)
    assert spans(p.process("d", at(1, 12))) == []  # watermark 9: [0, 10) still open
    assert spans(p.process("d", at(8))) == []  # out of order, lands in [0, 10)
    assert spans(p.process("d", at(13))) == [(0, 10, 1, False, (2, 2.0, [1.0, 8.0]))]
    assert spans(p.process("d", at(23))) == [(10, 20, 1, False, (2, 2.0, [12.0, 13.0]))]
    assert p.counters["too_late"] == 0 and p.counters["windows_updated"] == 0


def test_late_row_within_allowed_lateness_updates_the_window_with_revision_2():
    p = proc(10, al_s=10)
    p.process("d", at(1, 2, value=1.5))
    assert spans(p.process("d", at(10))) == [(0, 10, 1, False, (2, 3.0, [1.0, 2.0]))]
    out = p.process("d", at(5, value=4.0))
    assert spans(out) == [(0, 10, 2, True, (3, 7.0, [1.0, 2.0, 5.0]))]
    assert out.late == []
    out = p.process("d", at(6, 7, value=1.0))  # two more: one update, revision 3
    assert spans(out) == [(0, 10, 3, True, (5, 9.0, [1.0, 2.0, 5.0, 6.0, 7.0]))]
    assert p.counters["windows_updated"] == 2 and p.counters["windows_fired"] == 1


def test_rows_later_than_allowed_lateness_are_counted_and_returned_not_applied():
    p = proc(10, al_s=10)
    p.process("d", at(1, 2))
    p.process("d", at(10))
    assert spans(p.process("d", at(20))) == [(10, 20, 1, False, (1, 1.0, [10.0]))]  # [0, 10) closes at 20
    late_batch = Readings.from_rows([("x", 3 * S, 9.0), ("y", 4 * S, 8.0), ("x", 21 * S, 1.0)])
    out = p.process("d", late_batch)
    assert out.windows == []
    assert len(out.late) == 1 and out.late[0].key == "d"
    assert sorted(out.late[0].readings.rows()) == [("x", 3 * S, 9.0), ("y", 4 * S, 8.0)]
    assert p.counters["too_late"] == 2 and p.key_stats("d")["too_late"] == 2
    # [10, 20) is still updatable; [0, 10) is gone for good.
    assert spans(p.process("d", at(15))) == [(10, 20, 2, True, (2, 2.0, [10.0, 15.0]))]
    assert spans(p.process("d", at(40))) == [(20, 30, 1, False, (2, 2.0, [20.0, 21.0]))]
    assert p.counters["windows_fired"] == 3 and p.counters["rows_in"] == 9


def test_without_allowed_lateness_every_row_behind_the_watermark_of_a_fired_window_is_too_late():
    p = proc(10)
    p.process("d", at(1))
    p.process("d", at(10))
    out = p.process("d", at(9.5, 11))
    assert out.windows == [] and [lr.readings.ts_us.tolist() for lr in out.late] == [[9_500_000]]


def test_late_row_for_a_window_never_fired_but_passed_by_the_watermark_fires_it():
    p = proc(10, al_s=30)
    p.process("d", at(1))
    p.process("d", at(35))  # fires [0, 10); [10, 20) and [20, 30) were empty
    assert spans(p.process("d", at(15))) == [(10, 20, 1, False, (1, 1.0, [15.0]))]


def test_keys_are_independent():
    p = proc(10, al_s=5)
    p.process(("t", "b"), at(1, 2))
    out = p.process(("t", "a"), at(1, 500))  # a's watermark jumps; b's stays at 2 s
    assert [(w.key, w.start_us // S) for w in out.windows] == [(("t", "a"), 0)]
    out = p.process(("t", "b"), at(3))  # not late for b, whatever a did
    assert out.windows == [] and out.late == []
    out = p.process(("t", "a"), at(4))  # a's backlog is too late for a only
    assert out.windows == [] and [lr.key for lr in out.late] == [("t", "a")]
    assert p.key_stats(("t", "a"))["too_late"] == 1 and p.key_stats(("t", "b"))["too_late"] == 0
    assert [(w.key, w.value) for w in p.process(("t", "b"), at(10)).windows] == [(("t", "b"), (3, 3.0, [1.0, 2.0, 3.0]))]


def test_process_many_equals_one_call_per_key():
    batches = random_batches(11, batches=25)
    one = proc(10, slide_s=5, ooo_s=2, al_s=20)
    many = proc(10, slide_s=5, ooo_s=2, al_s=20)
    for batch in batches:
        want_w, want_late = [], []
        for key, r in batch:
            o = one.process(key, r)
            want_w += o.windows
            want_late += o.late
        want = flat(type(o)(want_w, want_late))
        keys = [k for k, _ in batch]
        joined = Readings.concat([r for _, r in batch])
        idx = np.repeat(np.arange(len(batch)), [len(r) for _, r in batch])
        got = flat(many.process_many(keys, idx, joined))
        # Same windows in the same order; late rows grouped per key alike (channel numbering may differ).
        assert got == want
    assert one.counters == many.counters and one.counters["too_late"] > 0 and one.counters["windows_updated"] > 0


def test_flush_fires_idle_keys_only_by_processing_time():
    p = proc(10, al_s=10, idle_timeout_us=30 * S)
    p.process("quiet", at(1, 4), now_us=1000 * S)
    p.process("busy", at(1, 4), now_us=1000 * S)
    p.process("busy", at(5), now_us=1025 * S)
    assert p.flush(1029 * S).windows == []
    out = p.flush(1030 * S)
    assert spans(out) == [(0, 10, 1, False, (2, 2.0, [1.0, 4.0]))] and out.windows[0].key == "quiet"
    assert p.flush(1030 * S).windows == []  # fired once
    # A row arriving later for the flushed window is late: an update within allowed lateness.
    assert spans(p.process("quiet", at(6), now_us=1031 * S)) == [(0, 10, 2, True, (3, 3.0, [1.0, 4.0, 6.0]))]
    # flush() without a time flushes everything; close=True evicts too.
    out = p.flush(close=True)
    assert [(w.key, w.start_us) for w in out.windows] == [("busy", 0)]
    assert p.counters["open_rows"] == 0
    with pytest.raises(StreamConfigError):
        proc(10).flush(5)


def test_advance_raises_one_keys_watermark():
    p = proc(10)
    p.process("a", at(1))
    p.process("b", at(1))
    assert [(w.key, w.start_us) for w in p.advance("a", 10 * S).windows] == [("a", 0)]
    assert p.advance("a", 5 * S).windows == []  # never goes back
    assert p.key_stats("a")["watermark_us"] == 10 * S and p.key_stats("b")["watermark_us"] == 1 * S


def test_eviction_keeps_memory_to_open_windows():
    p = proc(10, al_s=20)
    for t in range(0, 1000):
        p.process("d", at(t))
    stats = p.key_stats("d")
    assert stats["open_rows"] <= 40 and stats["updatable_windows"] <= 3
    assert p.counters["windows_fired"] == 99


def test_bad_parameters_and_keys_are_refused():
    with pytest.raises(StreamConfigError):
        Windows(10, 3)
    with pytest.raises(StreamConfigError):
        Windows(0)
    with pytest.raises(StreamConfigError):
        proc(10, ooo_s=-1)
    p = proc(10)
    with pytest.raises(StreamKeyError):
        p.process({"a": 1}, at(1))
    with pytest.raises(StreamKeyError):
        p.process(np.int64(3), at(1))
    with pytest.raises(StreamKeyError):
        p.process_many(["a", "a"], np.zeros(1, int), at(1))
    with pytest.raises(StreamKeyError):
        p.process_many(["a", "b"], np.array([0, 2]), at(1, 2))


def test_the_caller_may_reuse_its_arrays():
    p = proc(10)
    r = at(1, 2, value=1.0)
    p.process("d", r)
    r.value[:] = 100.0
    assert spans(p.process("d", at(10))) == [(0, 10, 1, False, (2, 2.0, [1.0, 2.0]))]
