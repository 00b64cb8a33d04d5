"""Forecasts from a metric's recent history: robust trends, exhaustion times that survive
sawtooth patterns, and seasonal projections. Pure Python, no ``app`` imports; the monitor's
forecast alert rules and the analytics projections both use it.

Input is a series of ``(timestamp seconds, value)`` pairs, possibly irregular and unsorted
(sorted here); every number must be finite. Long series are reduced to at most ``max_points``
(default 256) buckets of consecutive samples, each standing for its median time and median
value, before the one quadratic step, so any call is O(n log n) plus a bounded constant.

**Trend** (``trend``): the Theil-Sen line, whose slope is the median of the slopes between
every pair of points, and whose level is the median of what each point says the level is.
Up to 29% of the points may be wild without moving it, and a sawtooth or a spike pulls it far
less than least squares. Its 95% interval is Sen's rank interval of the pair slopes; ``tau``
(Kendall's) says how consistently the series rises (+1) or falls (-1).

**Exhaustion** (``exhaustion``): when the series reaches ``capacity``. Resets are found first,
on the series with spikes of one or two samples removed (a running median of 5): a reset is a
drawdown from the cycle's running maximum larger than both ``reset_fraction`` (0.2) of the
series' range and eight times its step noise (1.4826 times the median absolute step between
raw samples); it ends where the series rebounds from its lowest point by more than three
times that noise. Log rotation, compaction, a cleanup are resets; noise and spikes are not.
Then the forecast is:

- no reset: the trend of the whole window (``method="trend"``);
- fewer than ``min_cycles`` resets (default 2): the trend since the last reset
  (``"since_reset"``): one drop moved the level, it is no evidence of a cycle. When the
  current cycle is too short to fit (``min_points``, ``min_span_seconds``), its slope is the
  median of the pair slopes within every cycle, from its own level;
- at least ``min_cycles`` resets: the trend of the cycles' peaks, the upper envelope
  (``"envelope"``). Within the pattern, the steep rise inside a cycle says nothing about
  exhaustion, since the reset comes first; only a peak can reach capacity. So a sawtooth whose
  peaks stay level is never reported, at any phase, including the top of a tooth where a
  one-hour linear rule sees only the steep rise; rising peaks give the time the envelope
  reaches capacity, early by at most one cycle if they rise steadily. With ``min_cycles=1`` a single
  peak is a level (no slope) the current cycle must rise above;
- unless the current cycle breaks the pattern: it rises above the highest earlier peak and
  the envelope through it by more than a margin (three times the peaks' scatter around the
  envelope, at least a tenth of the median drop), or goes without a reset for 1.5 times the
  longest cycle seen. Then the trend since the last reset is a candidate as well, and the
  earlier crossing wins: a rotation that stopped, a cycle filling faster than the others.

The forecast starts from the fitted level at the last sample (the envelope's level for
``"envelope"``), not from the last raw value, so one spike neither triggers nor hides it.
``confidence`` is the Mann-Kendall probability that the rate is at least the rate needed to
reach capacity within the horizon (Kendall's S of the pair slopes against that rate, with
continuity correction): 0.5 is a coin toss, as with two peaks, three perfectly rising peaks
give 0.85, a long clear rise 1.0. Crossings below ``min_confidence`` (0.8) are not reported,
which also drops a crossing predicted right at the horizon, where the estimate is as likely
to fall either side of it.

**Seasonality** (``seasonal_profile``, ``forecast``): additive. The trend is fitted, the
residuals' median per slot of the period (hour of the day: ``period_seconds=86400,
slots=24``) is the profile, and the trend is fitted again to the series minus the profile,
twice. A forecast point is trend plus its slot's offset; its band is the residuals' robust
spread at the band's coverage, widened with the distance ahead by half the slope interval.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Direction",
    "Exhaustion",
    "Forecast",
    "ForecastPoint",
    "InsufficientData",
    "Method",
    "SeasonalProfile",
    "Trend",
    "exhaustion",
    "forecast",
    "seasonal_profile",
    "trend",
]

Method = Literal["trend", "since_reset", "envelope"]
Direction = Literal["rising", "falling"]
Point = tuple[float, float]

# Buckets the series is reduced to before the pairwise step (256 points: 32,640 pairs).
MAX_POINTS = 256
# A reset is a drop larger than this many times the step noise (and reset_fraction of the range).
RESET_NOISE_FACTOR = 8.0
# Spikes of up to this many samples are ignored when looking for resets and peaks.
SPIKE_REACH = 2
# A falling run ends when the series rebounds by this many times the step noise.
REBOUND_NOISE_FACTOR = 3.0
# The current cycle breaks the pattern above the envelope by this many times the peaks' scatter,
OUTLIER_FACTOR = 3.0
# ... and by at least this fraction of the median drop,
DROP_MARGIN = 0.1
# ... or when it lasts longer than this many times the longest cycle seen.
OVERDUE_FACTOR = 1.5
# Median absolute deviation to a normal standard deviation.
MAD_SCALE = 1.4826
# Two-sided 95% quantile of the normal distribution (the slope interval).
Z95 = 1.959963984540054
# Forecast points at most per call.
MAX_FORECAST_POINTS = 10_000

_NORMAL = statistics.NormalDist()


class InsufficientData(ValueError):
    """Too few samples, or too short a history, for the estimate asked for."""


@dataclass(frozen=True)
class Trend:
    """A robust straight line through a series: ``value_at(t) = level + slope * (t - origin)``.

    ``slope`` is in value units per second, with its 95% interval ``slope_low``..
    ``slope_high`` (the extreme pair slopes when there are too few points for one);
    ``residual_scale`` is the robust standard deviation of the samples around the line;
    ``tau`` is Kendall's tau of the series (+1 when every later point is higher).
    """

    slope: float
    slope_low: float
    slope_high: float
    origin: float  # the last sample's timestamp
    level: float  # the line's value at origin
    residual_scale: float
    tau: float
    points: int  # samples fitted
    span: float  # seconds from the first sample to the last

    def value_at(self, time: float) -> float:
        return self.level + self.slope * (time - self.origin)

    @property
    def intercept(self) -> float:
        """The line's value at timestamp 0."""
        return self.value_at(0.0)


@dataclass(frozen=True)
class Exhaustion:
    """A series predicted to reach ``capacity`` within the horizon, and why.

    Times are seconds from the last sample (``at`` is the timestamp). ``earliest_seconds`` and
    ``latest_seconds`` come from the rate's 95% interval; ``latest_seconds`` is None when the
    slow end of that interval never reaches capacity. ``rate`` is per second and signed
    (negative for a falling series). ``level`` is the forecast's starting point at the last
    sample (on the envelope for ``method="envelope"``), ``current`` the last sample's value.
    """

    at: float
    seconds: float
    earliest_seconds: float
    latest_seconds: float | None
    rate: float
    rate_low: float
    rate_high: float
    confidence: float
    capacity: float
    level: float
    current: float
    method: Method
    reason: str
    points: int
    history_seconds: float
    horizon_seconds: float
    resets: int
    cycle_seconds: float | None  # median time between the cycles' peaks, when resets were seen

    @property
    def rate_per_hour(self) -> float:
        return self.rate * 3600.0

    def describe(self, unit: str = "") -> str:
        """One line for an alert message, e.g. ``reaches 100% in 18.0 h (18.0 h to 18.1 h) at
        2.497%/h, confidence 1.00; robust linear trend, no resets; 6.0 h of history (2040
        samples)``."""
        if self.latest_seconds is None:
            window = f"{_duration(self.earliest_seconds)} or later"
        else:
            window = f"{_duration(self.earliest_seconds)} to {_duration(self.latest_seconds)}"
        return (
            f"reaches {_number(self.capacity)}{unit} in {_duration(self.seconds)} ({window}) "
            f"at {_number(self.rate_per_hour)}{unit}/h, confidence {self.confidence:.2f}; "
            f"{self.reason}; {_duration(self.history_seconds)} of history "
            f"({self.points} samples)"
        )


@dataclass(frozen=True)
class SeasonalProfile:
    """How far a series sits above or below its trend in each slot of a period.

    Slot ``k`` covers ``[origin + k*w, origin + (k+1)*w)`` modulo ``period`` with
    ``w = period / slots``; with the default origin 0 and a period of a day, slot 0 is
    00:00-01:00 UTC. ``offsets`` average to zero; ``counts`` are the samples in each slot
    (a slot without samples takes the average of its nearest neighbours' offsets).
    """

    period: float
    origin: float
    offsets: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def slots(self) -> int:
        return len(self.offsets)

    def slot(self, time: float) -> int:
        width = self.period / self.slots
        return min(int(((time - self.origin) % self.period) // width), self.slots - 1)

    def offset(self, time: float) -> float:
        return self.offsets[self.slot(time)]


@dataclass(frozen=True)
class ForecastPoint:
    """A predicted value and its band (``low`` <= ``value`` <= ``high``)."""

    time: float
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Forecast:
    """Predicted points after the last sample, from a trend and, if any, a seasonal profile.

    ``residual_scale`` is the robust standard deviation of the history around trend plus
    profile; the band at distance ``h`` seconds ahead is
    ``z * residual_scale + h * (slope_high - slope_low) / 2`` either side, where ``z`` is the
    normal quantile for ``coverage``. ``note`` says why no seasonality was used when a period
    was asked for.
    """

    points: tuple[ForecastPoint, ...]
    trend: Trend
    season: SeasonalProfile | None
    residual_scale: float
    coverage: float
    start: float  # the last sample's timestamp
    method: Literal["trend", "trend+season"]
    note: str = ""

    def at(self, time: float) -> ForecastPoint:
        """The prediction for any time (after the history, for a meaningful band)."""
        value = self.trend.value_at(time)
        if self.season is not None:
            value += self.season.offset(time)
        ahead = max(0.0, time - self.start)
        z = _NORMAL.inv_cdf(0.5 + self.coverage / 2.0)
        half = z * self.residual_scale + ahead * (self.trend.slope_high - self.trend.slope_low) / 2
        return ForecastPoint(time=time, value=value, low=value - half, high=value + half)


# --- public functions ----------------------------------------------------------------------


def trend(samples: Iterable[Point], *, max_points: int = MAX_POINTS) -> Trend:
    """The Theil-Sen trend of a series; InsufficientData without two distinct timestamps."""
    _check_max_points(max_points)
    times, values = _clean(samples)
    line = _fit([_bucket(times, values, max_points)], origin=_last(times))
    if line is None:
        raise InsufficientData("a trend needs samples at two different times at least")
    return _trend(line, times, values)


def exhaustion(
    samples: Iterable[Point],
    capacity: float,
    horizon_seconds: float,
    *,
    direction: Direction = "rising",
    min_points: int = 10,
    min_span_seconds: float = 1800.0,
    reset_fraction: float = 0.2,
    min_cycles: int = 2,
    min_confidence: float = 0.8,
    max_points: int = MAX_POINTS,
) -> Exhaustion | None:
    """When the series is predicted to reach ``capacity``, if within ``horizon_seconds`` of
    its last sample (``math.inf``: whenever it would) with at least ``min_confidence``; None
    otherwise, or when there are fewer than ``min_points`` samples or they span less than
    ``min_span_seconds``.

    ``direction="falling"`` forecasts a series falling to a floor (free bytes reaching 0);
    resets are then jumps up. Already at or past capacity (by the fitted level) is 0 seconds.
    """
    capacity = _finite_number(capacity, "capacity")
    horizon = _number_arg(horizon_seconds, "horizon_seconds")
    if math.isnan(horizon) or horizon < 0:
        raise ValueError(f"horizon_seconds must be 0 or more (math.inf allowed), not {horizon}")
    if direction not in ("rising", "falling"):
        raise ValueError(f"direction must be 'rising' or 'falling', not {direction!r}")
    if isinstance(min_points, bool) or not isinstance(min_points, int) or min_points < 2:
        raise ValueError(f"min_points must be an integer of 2 or more, not {min_points!r}")
    min_span = _finite_number(min_span_seconds, "min_span_seconds")
    if min_span < 0:
        raise ValueError(f"min_span_seconds must be 0 or more, not {min_span}")
    reset_fraction = _finite_number(reset_fraction, "reset_fraction")
    if not 0 < reset_fraction <= 1:
        raise ValueError(f"reset_fraction must be in (0, 1], not {reset_fraction}")
    if isinstance(min_cycles, bool) or not isinstance(min_cycles, int) or min_cycles < 1:
        raise ValueError(f"min_cycles must be an integer of 1 or more, not {min_cycles!r}")
    min_confidence = _finite_number(min_confidence, "min_confidence")
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be between 0 and 1, not {min_confidence}")
    _check_max_points(max_points)

    times, raw = _clean(samples)
    if len(times) < min_points or times[-1] - times[0] < min_span:
        return None
    sign = 1.0 if direction == "rising" else -1.0
    values = [sign * v for v in raw]
    target = sign * capacity
    settings = _Settings(min_points, min_span, reset_fraction, min_cycles, max_points)
    models, resets, cycle = _models(times, values, settings)

    best: tuple[float, float, _Model] | None = None
    for model in models:
        seconds = _crossing(model.line, target)
        if seconds is None or seconds > horizon or (best is not None and seconds >= best[0]):
            continue
        if seconds == 0:
            confidence = 1.0  # the fitted level is at capacity already
        else:  # the rate that reaches capacity just at the horizon
            needed = (target - model.line.level) / horizon
            confidence = model.line.probability_at_least(needed)
        if confidence >= min_confidence:
            best = (seconds, confidence, model)
    if best is None:
        return None
    seconds, confidence, model = best
    line = model.line
    slow = _crossing(dataclasses.replace(line, slope=line.low), target)
    fast = _crossing(dataclasses.replace(line, slope=line.high), target)
    rates = sorted((sign * line.low, sign * line.high))
    result = Exhaustion(
        at=times[-1] + seconds,
        seconds=seconds,
        earliest_seconds=min(seconds, fast if fast is not None else seconds),
        latest_seconds=None if slow is None else max(seconds, slow),
        rate=sign * line.slope,
        rate_low=rates[0],
        rate_high=rates[1],
        confidence=confidence,
        capacity=capacity,
        level=sign * line.level,
        current=raw[-1],
        method=model.method,
        reason=model.reason,
        points=len(times),
        history_seconds=times[-1] - times[0],
        horizon_seconds=horizon,
        resets=resets,
        cycle_seconds=cycle,
    )
    numbers = (result.at, result.seconds, result.rate, result.level, result.earliest_seconds)
    if not all(math.isfinite(x) for x in numbers):
        return None  # magnitudes beyond float range: no meaningful forecast
    return result


def seasonal_profile(
    samples: Iterable[Point],
    period_seconds: float,
    *,
    slots: int = 24,
    origin: float = 0.0,
    min_periods: float = 2.0,
    max_points: int = MAX_POINTS,
) -> SeasonalProfile:
    """The series' offsets from its trend per slot of the period (see ``SeasonalProfile``).
    InsufficientData when the samples cover less than ``min_periods`` periods: with less
    than two, a trend and a season cannot be told apart."""
    period, slots, origin = _check_season(period_seconds, slots, origin, min_periods)
    _check_max_points(max_points)
    times, values = _clean(samples)
    covered = _coverage(times)
    if covered < min_periods * period:
        raise InsufficientData(
            f"a seasonal profile needs {min_periods:g} periods of {period:g} s; "
            f"the samples cover {covered / period:.2f}"
        )
    _, profile, _ = _decompose(times, values, period, slots, origin, max_points)
    return profile


def forecast(
    samples: Iterable[Point],
    until: float,
    *,
    period: float | None = None,
    slots: int = 24,
    origin: float = 0.0,
    step: float | None = None,
    coverage: float = 0.95,
    min_periods: float = 2.0,
    max_points: int = MAX_POINTS,
) -> Forecast:
    """Predicted points from the last sample to ``until`` (included), every ``step`` seconds
    (default: one slot, ``period / slots``, with a period; else a hundredth of the range).

    With a ``period`` covered ``min_periods`` times the forecast is trend plus seasonal
    profile; with less, a plain trend and a ``note`` saying why. InsufficientData without
    two distinct timestamps; ValueError for ``until`` not after the last sample or more than
    10,000 points.
    """
    until = _finite_number(until, "until")
    coverage = _finite_number(coverage, "coverage")
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1 (exclusive), not {coverage}")
    _check_max_points(max_points)
    if period is not None:
        period, slots, origin = _check_season(period, slots, origin, min_periods)
    times, values = _clean(samples)
    if len(times) < 2 or times[-1] == times[0]:
        raise InsufficientData("a forecast needs samples at two different times at least")
    start = times[-1]
    if until <= start:
        raise ValueError(f"until ({until:g}) must be after the last sample ({start:g})")
    if step is None:
        step = period / slots if period is not None else (until - start) / 100
    step = _finite_number(step, "step")
    if step <= 0:
        raise ValueError(f"step must be positive, not {step}")
    count = (until - start) / step
    if not count <= MAX_FORECAST_POINTS:
        raise ValueError(
            f"{until - start:g} s every {step:g} s is more than {MAX_FORECAST_POINTS} points"
        )

    note = ""
    profile: SeasonalProfile | None = None
    if period is not None and _coverage(times) >= min_periods * period:
        line, profile, scale = _decompose(times, values, period, slots, origin, max_points)
        fitted = _trend(line, times, values)
    else:
        if period is not None:
            note = (
                f"no seasonality: {min_periods:g} periods of {period:g} s needed, "
                f"the samples cover {_coverage(times) / period:.2f}"
            )
        fitted = trend(zip(times, values, strict=True), max_points=max_points)
        scale = fitted.residual_scale
    result = Forecast(
        points=(),
        trend=fitted,
        season=profile,
        residual_scale=scale,
        coverage=coverage,
        start=start,
        method="trend" if profile is None else "trend+season",
        note=note,
    )
    steps = max(1, math.ceil(count - 1e-9))
    moments = [min(until, start + k * step) for k in range(1, steps + 1)]
    moments[-1] = until
    return dataclasses.replace(result, points=tuple(result.at(t) for t in moments))


# --- the fit ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    """A Theil-Sen fit with what the interval and the rank test need."""

    slope: float
    low: float
    high: float
    origin: float
    level: float
    tau: float
    slopes: tuple[float, ...]  # sorted pair slopes
    variance: float  # variance of Kendall's S under no trend

    def value_at(self, time: float) -> float:
        return self.level + self.slope * (time - self.origin)

    def probability_at_least(self, rate: float) -> float:
        """Mann-Kendall: the probability that the true slope is at least ``rate``."""
        if math.isnan(rate):
            return 0.5
        above = len(self.slopes) - bisect.bisect_right(self.slopes, rate)
        below = bisect.bisect_left(self.slopes, rate)
        s = above - below
        if self.variance <= 0:
            return 0.5
        corrected = s - 1 if s > 0 else s + 1 if s < 0 else 0
        return _NORMAL.cdf(corrected / math.sqrt(self.variance))


def _fit(
    groups: Sequence[Sequence[Point]], origin: float, anchor: Sequence[Point] | None = None
) -> _Line | None:
    """Theil-Sen over the pairs within each group; the level is the median over ``anchor``
    (every point by default) of what each point says the value at ``origin`` is."""
    slopes: list[float] = []
    variance = 0.0
    for points in groups:
        m = len(points)
        variance += m * (m - 1) * (2 * m + 5) / 18
        for i, (ti, vi) in enumerate(points):
            slopes.extend((vj - vi) / (tj - ti) for tj, vj in points[i + 1 :] if tj > ti)
    if not slopes:
        return None
    slopes.sort()
    n = len(slopes)
    slope = statistics.median(slopes)
    reach = Z95 * math.sqrt(variance)
    low_rank = round((n - reach) / 2) - 1
    high_rank = round((n + reach) / 2)
    low = slopes[min(max(low_rank, 0), n - 1)]
    high = slopes[min(max(high_rank, 0), n - 1)]
    positive = n - bisect.bisect_right(slopes, 0.0)
    negative = bisect.bisect_left(slopes, 0.0)
    level_points = anchor if anchor is not None else [p for g in groups for p in g]
    level = statistics.median(v - slope * (t - origin) for t, v in level_points)
    return _Line(
        slope=slope,
        low=low,
        high=high,
        origin=origin,
        level=level,
        tau=(positive - negative) / n,
        slopes=tuple(slopes),
        variance=variance,
    )


def _trend(line: _Line, times: Sequence[float], values: Sequence[float]) -> Trend:
    residuals = [abs(v - line.value_at(t)) for t, v in zip(times, values, strict=True)]
    return Trend(
        slope=line.slope,
        slope_low=line.low,
        slope_high=line.high,
        origin=line.origin,
        level=line.level,
        residual_scale=MAD_SCALE * statistics.median(residuals),
        tau=line.tau,
        points=len(times),
        span=times[-1] - times[0],
    )


def _crossing(line: _Line, target: float) -> float | None:
    """Seconds from the line's origin until it reaches ``target``; None if it never does."""
    if line.level >= target:
        return 0.0
    if line.slope > 0:
        return (target - line.level) / line.slope
    return None


# --- resets and the choice of method ---------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    min_points: int
    min_span: float
    reset_fraction: float
    min_cycles: int
    max_points: int


@dataclass(frozen=True)
class _Model:
    method: Method
    line: _Line
    reason: str


def _despike(values: Sequence[float]) -> list[float]:
    """The running median of 5 (of 3 or 4 at the ends): removes spikes of one or two samples,
    the last samples included, and keeps steps, such as a rotation's drop, where they are."""
    return [
        statistics.median(values[max(0, i - SPIKE_REACH) : i + SPIKE_REACH + 1])
        for i in range(len(values))
    ]


def _resets(
    values: Sequence[float], raw: Sequence[float], reset_fraction: float
) -> list[tuple[int, int]]:
    """Each reset of the despiked ``values`` as (index of the cycle's peak, index of the
    trough after it); the step noise is measured on the ``raw`` values."""
    steps = [b - a for a, b in itertools.pairwise(raw)]
    if not steps:
        return []
    noise = MAD_SCALE * statistics.median(abs(d) for d in steps)
    threshold = max(reset_fraction * (max(values) - min(values)), RESET_NOISE_FACTOR * noise)
    if not threshold > 0 or not math.isfinite(threshold):
        return []
    rebound = REBOUND_NOISE_FACTOR * noise
    resets: list[tuple[int, int]] = []
    top, trough = 0, -1  # trough -1: in a rise
    for j in range(1, len(values)):
        value = values[j]
        if trough < 0:
            if value >= values[top]:
                top = j
            elif values[top] - value > threshold:
                trough = j
        elif value <= values[trough]:
            trough = j
        elif value - values[trough] > rebound:
            resets.append((top, trough))
            top, trough = j, -1
    if trough >= 0:
        resets.append((top, trough))
    return resets


def _models(
    times: Sequence[float], values: Sequence[float], settings: _Settings
) -> tuple[list[_Model], int, float | None]:
    """The forecasts to consider, how many resets were seen, the median cycle length."""
    now = times[-1]
    smooth = _despike(values)
    resets = _resets(smooth, values, settings.reset_fraction)
    if not resets:
        line = _fit([_bucket(times, values, settings.max_points)], origin=now)
        if line is None:
            return [], 0, None
        return [_Model("trend", line, "robust linear trend, no resets")], 0, None

    starts = [0] + [trough for _, trough in resets]
    segments = [(start, top) for start, (top, _) in zip(starts, resets, strict=False)]
    current = (resets[-1][1], len(times) - 1)
    drops = [smooth[top] - smooth[trough] for top, trough in resets]
    peaks = [(times[top], smooth[top]) for top, _ in resets]
    cycles = [b[0] - a[0] for a, b in itertools.pairwise(peaks)]
    cycle = statistics.median(cycles) if cycles else None
    n = len(resets)
    since = _since_reset(times, values, segments, current, settings)

    if n < settings.min_cycles:
        if since is None:
            return [], n, cycle
        seen = f"{n} reset{'s' if n != 1 else ''}, {settings.min_cycles} needed to trust a cycle"
        return [_Model("since_reset", since, f"trend since the last reset ({seen})")], n, cycle

    if n == 1:  # min_cycles=1: one peak is a level, not a trend
        envelope: _Line | None = _Line(0.0, 0.0, 0.0, now, peaks[0][1], 0.0, (), 0.0)
        text = "level of the peak of 1 cycle"
    else:
        envelope = _fit([_bucket_points(peaks, settings.max_points)], origin=now)
        text = f"trend of the peaks of {n} cycles (one every {_duration(cycle or 0.0)})"
    if envelope is None:  # every peak at one time: cannot happen with resets in order
        return [], n, cycle
    residuals = [v - envelope.value_at(t) for t, v in peaks]
    scatter = MAD_SCALE * statistics.median(abs(r) for r in residuals)
    margin = max(OUTLIER_FACTOR * scatter, DROP_MARGIN * statistics.median(drops))
    models = [_Model("envelope", envelope, text)]
    highest = max(smooth[current[0] : current[1] + 1])
    elapsed = now - peaks[-1][0]
    broken = ""
    ceiling = max(envelope.level + max(0.0, *residuals), max(v for _, v in peaks))
    if highest > ceiling + margin:
        broken = f"the current cycle rose above the highest of {n} earlier peaks"
    elif cycles and elapsed > OVERDUE_FACTOR * max(cycles):
        broken = (
            f"no reset for {_duration(elapsed)}, longer than {OVERDUE_FACTOR:g} times the "
            f"longest of {n} cycles ({_duration(max(cycles))})"
        )
    if broken and since is not None:
        models.append(_Model("since_reset", since, f"trend since the last reset: {broken}"))
    return models, n, cycle


def _since_reset(
    times: Sequence[float],
    values: Sequence[float],
    segments: Sequence[tuple[int, int]],
    current: tuple[int, int],
    settings: _Settings,
) -> _Line | None:
    """The trend of the current cycle, or, when it is too short to fit, the median slope of
    the pairs within every cycle anchored on the current cycle's level."""
    first, last = current
    now = times[-1]
    if last - first + 1 >= settings.min_points and now - times[first] >= settings.min_span:
        return _fit([_bucket(times[first:], values[first:], settings.max_points)], origin=now)
    everything = [*segments, current]
    total = len(times)
    groups = []
    for a, b in everything:
        share = max(2, settings.max_points * (b - a + 1) // total)
        groups.append(_bucket(times[a : b + 1], values[a : b + 1], share))
    anchor = list(zip(times[first:], values[first:], strict=True))
    return _fit(groups, origin=now, anchor=anchor)


# --- seasonality -----------------------------------------------------------------------------


def _decompose(
    times: Sequence[float],
    values: Sequence[float],
    period: float,
    slots: int,
    origin: float,
    max_points: int,
) -> tuple[_Line, SeasonalProfile, float]:
    """Trend and profile, each fitted twice to the series without the other; the residual
    scale around both."""
    width = period / slots
    slot_of = [min(int(((t - origin) % period) // width), slots - 1) for t in times]

    def refit(offsets: Sequence[float]) -> tuple[_Line, list[float], list[int]]:
        adjusted = [v - offsets[s] for v, s in zip(values, slot_of, strict=True)]
        line = _fit([_bucket(times, adjusted, max_points)], origin=times[-1])
        if line is None:
            raise InsufficientData("a seasonal profile needs samples at two different times")
        residuals = [v - line.value_at(t) for t, v in zip(times, values, strict=True)]
        return line, *_slot_medians(residuals, slot_of, slots)

    line, offsets, counts = refit([0.0] * slots)
    line, offsets, counts = refit(offsets)
    line, offsets, counts = refit(offsets)
    mean = statistics.fmean(offsets)
    line = dataclasses.replace(line, level=line.level + mean)
    offsets = [o - mean for o in offsets]
    spread = [
        abs(v - line.value_at(t) - offsets[s])
        for t, v, s in zip(times, values, slot_of, strict=True)
    ]
    profile = SeasonalProfile(
        period=period, origin=origin, offsets=tuple(offsets), counts=tuple(counts)
    )
    return line, profile, MAD_SCALE * statistics.median(spread)


def _slot_medians(
    residuals: Sequence[float], slot_of: Sequence[int], slots: int
) -> tuple[list[float], list[int]]:
    """Median residual per slot; an empty slot takes the mean of its nearest filled neighbours
    on either side (the period wraps)."""
    members: list[list[float]] = [[] for _ in range(slots)]
    for r, s in zip(residuals, slot_of, strict=True):
        members[s].append(r)
    counts = [len(m) for m in members]
    medians = [statistics.median(m) if m else math.nan for m in members]
    filled = [k for k in range(slots) if counts[k]]
    result = list(medians)
    for k in range(slots):
        if counts[k]:
            continue
        before = max((f for f in filled if f < k), default=filled[-1])
        after = min((f for f in filled if f > k), default=filled[0])
        result[k] = (medians[before] + medians[after]) / 2
    return result, counts


# --- input and helpers -----------------------------------------------------------------------


def _clean(samples: Iterable[Point]) -> tuple[list[float], list[float]]:
    """Timestamps and values as floats, sorted by time; ValueError naming the bad sample."""
    if isinstance(samples, str | bytes):
        raise ValueError("samples must be (timestamp, value) pairs, not a string")
    pairs: list[Point] = []
    for index, sample in enumerate(samples):
        try:
            t, v = sample
            pair = (float(t), float(v))
        except (TypeError, ValueError):
            raise ValueError(
                f"sample {index} is not a (timestamp, value) pair of numbers: {sample!r:.80}"
            ) from None
        for name, x in zip(("timestamp", "value"), pair, strict=True):
            if not math.isfinite(x):
                raise ValueError(f"sample {index}: the {name} is {x}; samples must be finite")
        pairs.append(pair)
    if any(a[0] > b[0] for a, b in itertools.pairwise(pairs)):
        pairs.sort(key=lambda p: p[0])
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _bucket(times: Sequence[float], values: Sequence[float], max_points: int) -> list[Point]:
    """At most ``max_points`` points: runs of consecutive samples as (median time, median
    value)."""
    n = len(times)
    if n <= max_points:
        return list(zip(times, values, strict=True))
    size = math.ceil(n / max_points)
    return [
        (statistics.median(times[i : i + size]), statistics.median(values[i : i + size]))
        for i in range(0, n, size)
    ]


def _bucket_points(points: Sequence[Point], max_points: int) -> list[Point]:
    return _bucket([t for t, _ in points], [v for _, v in points], max_points)


def _coverage(times: Sequence[float]) -> float:
    """The time the samples stand for: their span plus one typical interval."""
    if len(times) < 2:
        return 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return times[-1] - times[0] + statistics.median(gaps)


def _last(times: Sequence[float]) -> float:
    return times[-1] if times else 0.0


def _number_arg(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r:.80}")
    return float(value)


def _finite_number(value: object, name: str) -> float:
    number = _number_arg(value, name)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, not {number}")
    return number


def _check_max_points(max_points: int) -> None:
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 3:
        raise ValueError(f"max_points must be an integer of 3 or more, not {max_points!r}")


def _check_season(
    period: float, slots: int, origin: float, min_periods: float
) -> tuple[float, int, float]:
    period = _finite_number(period, "period")
    if period <= 0:
        raise ValueError(f"the period must be positive, not {period}")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"slots must be an integer of 1 or more, not {slots!r}")
    min_periods = _finite_number(min_periods, "min_periods")
    if min_periods < 1:
        raise ValueError(f"min_periods must be 1 or more, not {min_periods}")
    return period, slots, _finite_number(origin, "origin")


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _number(value: float) -> str:
    return f"{value:.4g}"
