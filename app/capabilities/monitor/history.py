"""Bounded in-memory history of sampled figures, for the dashboard's charts.

Each figure keeps its recent samples at full resolution (by default 24 hours at the sampling
interval) and, beyond that, one coarse point per ``coarse_every`` samples (their mean and
their maximum, so a short spike stays visible), for ``coarse_keep`` points. Adding a sample is
O(1); memory is fixed by the settings. The history belongs to one process (each worker of
``renum serve --workers N`` keeps its own) and starts empty at every start.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Point:
    """One point of a chart: when (Unix seconds), the value, and the largest value it stands
    for (the value itself at full resolution)."""

    at: float
    value: float
    peak: float


@dataclass
class _Bucket:
    start: float = 0.0
    total: float = 0.0
    peak: float = -math.inf
    count: int = 0

    def add(self, point: Point) -> None:
        if self.count == 0:
            self.start = point.at
        self.total += point.value
        self.peak = max(self.peak, point.peak)
        self.count += 1

    def point(self) -> Point:
        return Point(self.start, self.total / self.count, self.peak)


@dataclass
class Series:
    """One figure's history: ``fine`` recent points, then coarse ones."""

    fine_keep: int
    coarse_every: int
    coarse_keep: int
    fine: deque[Point] = field(init=False)
    coarse: deque[Point] = field(init=False)
    _bucket: _Bucket = field(init=False, default_factory=_Bucket)

    def __post_init__(self) -> None:
        self.fine = deque(maxlen=self.fine_keep)
        self.coarse = deque(maxlen=self.coarse_keep)

    def add(self, at: float, value: float) -> None:
        if len(self.fine) == self.fine.maxlen:
            self._bucket.add(self.fine[0])  # about to fall off the fine end
            if self._bucket.count == self.coarse_every:
                self.coarse.append(self._bucket.point())
                self._bucket = _Bucket()
        self.fine.append(Point(at, value, value))

    def points(self, since: float | None = None) -> list[Point]:
        """Oldest first: the coarse points, then the fine ones (from ``since`` on)."""
        every = [*self.coarse, *self.fine]
        return every if since is None else [p for p in every if p.at >= since]

    @property
    def latest(self) -> float | None:
        return self.fine[-1].value if self.fine else None


class History:
    """Every sampled figure's ``Series``, created on first use."""

    def __init__(
        self,
        interval_seconds: float,
        keep_seconds: float,
        coarse_every: int = 30,
        coarse_keep_seconds: float = 7 * 24 * 3600,
    ) -> None:
        if interval_seconds <= 0 or keep_seconds < interval_seconds:
            raise ValueError("the history needs an interval > 0 and keeps at least one sample")
        self.interval_seconds = interval_seconds
        self.fine_keep = max(1, round(keep_seconds / interval_seconds))
        self.coarse_every = max(1, coarse_every)
        self.coarse_keep = max(1, round(coarse_keep_seconds / (interval_seconds * coarse_every)))
        self.series: dict[str, Series] = {}

    def add(self, at: float, values: dict[str, float | None]) -> None:
        """One sample of several figures taken at ``at``; ``None`` values are left out."""
        for name, value in values.items():
            if value is None or not math.isfinite(value):
                continue
            series = self.series.get(name)
            if series is None:
                series = self.series[name] = Series(
                    self.fine_keep, self.coarse_every, self.coarse_keep
                )
            series.add(at, value)

    def latest(self) -> dict[str, float]:
        return {
            name: value
            for name, series in self.series.items()
            if (value := series.latest) is not None
        }

    def points(self, name: str, since: float | None = None) -> list[Point]:
        series = self.series.get(name)
        return [] if series is None else series.points(since)
