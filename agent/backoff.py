"""Jittered exponential backoff as an object, with injectable randomness for tests."""

from __future__ import annotations

import random

from .config import BackoffConfig


class Backoff:
    def __init__(self, settings: BackoffConfig, *, rng: random.Random | None = None) -> None:
        self._s = settings
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; grows until `max`, each spread by `jitter`."""
        base = min(self._s.initial.total_seconds() * self._s.multiplier**self._attempt, self._s.max.total_seconds())
        self._attempt += 1
        spread = base * self._s.jitter
        return max(0.0, base + self._rng.uniform(-spread, spread))

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
