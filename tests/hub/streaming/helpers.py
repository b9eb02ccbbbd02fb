"""Shared helpers for the stream processor tests: readings builders and an order-sensitive aggregate."""

from __future__ import annotations

import numpy as np

from protocol.readings import Readings

S = 1_000_000  # µs per second


def rows(*items: tuple[str, float, float]) -> Readings:
    """Readings from (channel, seconds, value) triples."""
    return Readings.from_rows((c, int(round(t * S)), v) for c, t, v in items)


def at(*seconds: float, value: float = 1.0, channel: str = "x") -> Readings:
    return Readings.from_rows((channel, int(round(t * S)), value) for t in seconds)


def summary(key, start, end, r: Readings):
    """Row count, value sum and the sorted event times in seconds."""
    return (len(r), float(r.value.sum()), sorted(t / S for t in r.ts_us.tolist()))


def exact(key, start, end, r: Readings):
    """Everything, in arrival order: any reordering or loss of a row changes it."""
    return (tuple(r.ts_us.tolist()), tuple(r.value.tolist()), tuple(r.channels[c] for c in r.channel.tolist()))


def flat(out) -> list[tuple]:
    """A StreamOutput as comparable tuples (windows, then late rows)."""
    ws = [(w.key, w.start_us, w.end_us, w.revision, w.update, w.rows, w.value) for w in out.windows]
    late = [(lr.key, tuple(lr.readings.rows())) for lr in out.late]
    return ws + late


def random_batches(seed: int, *, keys: int = 5, batches: int = 40, per_key: int = 30, step_s: float = 7.0,
                   jitter_s: float = 4.0, backlog_p: float = 0.05, backlog_s: float = 60.0):
    """Batches of (key, Readings): per key a moving clock with jitter, a few rows far behind (backlog)."""
    rng = np.random.default_rng(seed)
    names = ("a", "b", "c")
    out = []
    for b in range(batches):
        batch = []
        for k in range(keys):
            if rng.random() < 0.15:  # this key is silent in this batch
                continue
            base = (b + 1) * step_s + k * 0.3
            n = int(rng.integers(1, per_key))
            t = base + rng.uniform(-jitter_s, 0.0, n)
            back = rng.random(n) < backlog_p
            t[back] -= rng.uniform(0, backlog_s, int(back.sum()))
            ts = np.round(t * S).astype(np.int64)
            ch = rng.integers(0, len(names), n).astype(np.uint16)
            perm = rng.permutation(len(names))  # channel order differs per batch
            val = np.round(rng.normal(0, 10, n), 3)
            batch.append((("t1", f"d{k}"), Readings(tuple(names[i] for i in perm), ch, ts, val)))
        out.append(batch)
    return out
