"""Per-key rate limits (token bucket) for the token endpoint (per client) and the login form (per phone
and per address). In memory, per process: with N worker processes the effective limit is N times this."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class Limit:
    rate: float  # tokens per second
    burst: int  # bucket size


class RateLimiter:
    MAX_KEYS = 100_000

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, float]:
        """(allowed, seconds to wait before the next attempt would be)."""
        t = time.monotonic()
        with self._lock:
            if len(self._buckets) > self.MAX_KEYS:
                self._buckets.clear()
            tokens, last = self._buckets.get(key, (float(self.limit.burst), t))
            tokens = min(float(self.limit.burst), tokens + (t - last) * self.limit.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, t)
                return False, (1.0 - tokens) / self.limit.rate if self.limit.rate > 0 else 60.0
            self._buckets[key] = (tokens - 1.0, t)
            return True, 0.0
