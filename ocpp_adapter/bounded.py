"""Bounded building blocks, sans I/O: a token-bucket rate limiter and an LRU map."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up. Time is passed in, never read."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        assert rate > 0 and burst >= 1, (rate, burst)
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float) -> float:
        """Take one token: returns 0.0 if granted, else the seconds until one is available."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class LruMap(Generic[K, V]):
    """A dict that keeps at most `capacity` entries, evicting the least recently used."""

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        assert len(self._items) <= self.capacity

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def oldest(self) -> tuple[K, V] | None:
        """The least recently used entry (left where it is), None when empty."""
        key = next(iter(self._items), None)
        return None if key is None else (key, self._items[key])

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)
