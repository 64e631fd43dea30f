"""Exponential back-off for the background loops, so a database or NATS outage
is retried calmly instead of spinning or killing the loop."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, initial: float = 0.2, maximum: float = 10.0) -> None:
        self._initial = initial
        self._maximum = maximum
        self._next = initial

    def next_delay(self) -> float:
        """The delay to wait now (with jitter); each call doubles the next one."""
        delay = self._next
        self._next = min(self._maximum, self._next * 2)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self._initial
