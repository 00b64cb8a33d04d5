"""The forecasting module (``app.core.forecast``): exhaustion times that are accurate on a
steady rise and silent on a sawtooth that never fills (where a one-hour linear rule alarms),
robust trends, seasonal projections, and the properties that hold for any series.

Every series is synthetic, from a fixed seed and a fixed start time: nothing reads the clock.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core import forecast as fc
from app.core.forecast import (
    Exhaustion,
    InsufficientData,
    exhaustion,
    forecast,
    seasonal_profile,
    trend,
)

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0

Series = list[tuple[float, float]]

# Deterministic Hypothesis settings (the unit suite does not load the property suite's profile).
PROPERTIES = settings(derandomize=True, max_examples=40, deadline=None, database=None)


def sample(
    shape: Callable[[float], float],
    end: float,
    span: float,
    every: float = 10.0,
    noise: float = 0.0,
    seed: int = 1,
) -> Series:
    """``shape`` sampled every ``every`` seconds over ``span`` seconds ending at ``end``, plus
    Gaussian noise."""
    rng = random.Random(seed)
    count = round(span / every)
    times = [end - (count - 1 - i) * every for i in range(count)]
    return [(t, shape(t) + rng.gauss(0.0, noise)) for t in times]


def sawtooth(
    period: float, low: float, high: float, rise_per_hour: float = 0.0
) -> Callable[[float], float]:
    """Rises linearly from ``low`` to ``high`` over each period, then drops back at once (log
    rotation); with ``rise_per_hour`` the whole pattern, peaks included, climbs."""

    def shape(t: float) -> float:
        phase = ((t - T0) % period) / period
        return low + (high - low) * phase + rise_per_hour * (t - T0) / HOUR

    return shape


def first_crossing(
    shape: Callable[[float], float], start: float, capacity: float, every: float = 10.0
) -> float:
    """When the noise-free shape first reaches capacity after ``start`` (seconds from it)."""
    t = start
    while shape(t) < capacity:
        t += every
        assert t - start < 30 * DAY, "never crosses"
    return t - start


def naive_one_hour(series: Series, capacity: float, ahead: float) -> tuple[bool, float | None]:
    """The common rule, ``predict_linear(metric[1h], ahead) >= capacity``: least squares over
    the last hour, extrapolated. Returns whether it alarms and its seconds to capacity."""
    now = series[-1][0]
    window = [(t, v) for t, v in series if t >= now - HOUR]
    mean_t = sum(t for t, _ in window) / len(window)
    mean_v = sum(v for _, v in window) / len(window)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in window) / sum(
        (t - mean_t) ** 2 for t, _ in window
    )
    level = mean_v + slope * (now - mean_t)
    seconds = (capacity - level) / slope if slope > 0 else None
    return level + slope * ahead >= capacity, seconds


# --- exhaustion: a steady rise -----------------------------------------------------------------


def rising_disk(seed: int = 11) -> tuple[Series, float]:
    """Six hours of disk use at 10 s: 40% rising 2.5%/h with noise (sd 0.3), jittered
    sampling, a 20-minute gap and five one-sample spikes of +15%. Returns the series and the
    noise-free line's true crossing of 100%."""
    rng = random.Random(seed)
    series: Series = []
    for i in range(2160):
        t = T0 + i * 10.0 + rng.uniform(-2.0, 2.0)
        if T0 + 2 * HOUR <= t < T0 + 2 * HOUR + 20 * MINUTE:
            continue  # the monitor was restarted
        series.append((t, 40.0 + 2.5 * (t - T0) / HOUR + rng.gauss(0.0, 0.3)))
    for index in rng.sample(range(len(series)), 5):
        t, v = series[index]
        series[index] = (t, v + 15.0)
    return series, T0 + 24 * HOUR  # 40 + 2.5 * 24 = 100


def test_steady_rise_predicts_the_crossing_within_ten_percent() -> None:
    series, true_at = rising_disk()
    result = exhaustion(series, 100.0, 24 * HOUR)

    assert result is not None
    true_seconds = true_at - series[-1][0]  # about 18 h
    assert abs(result.seconds - true_seconds) <= 0.1 * true_seconds
    assert abs(result.at - true_at) <= 0.01 * true_seconds  # in fact within 1%
    assert result.method == "trend"
    assert result.resets == 0  # the spikes are not resets
    assert result.rate_per_hour == pytest.approx(2.5, rel=0.02)
    assert result.earliest_seconds <= true_seconds <= (result.latest_seconds or math.inf)
    assert result.confidence > 0.99
    assert result.horizon_seconds == 24 * HOUR
    assert result.current == series[-1][1]


def test_steady_rise_outside_the_horizon_is_not_reported() -> None:
    series, _ = rising_disk()
    assert exhaustion(series, 100.0, 12 * HOUR) is None  # the crossing is 18 h away
    assert exhaustion(series, 100.0, math.inf) is not None


def test_describe_gives_the_figures_of_an_alert_message() -> None:
    series, _ = rising_disk()
    result = exhaustion(series, 100.0, 24 * HOUR)

    assert result is not None
    assert re.fullmatch(
        r"reaches 100% in 18\.0 h \(1[78]\.\d h to 18\.\d h\) at 2\.\d+%/h, confidence 1\.00; "
        r"robust linear trend, no resets; 6\.0 h of history \(2040 samples\)",
        result.describe("%"),
    )


def test_describe_formats_every_range_of_durations() -> None:
    series, _ = rising_disk()
    result = exhaustion(series, 100.0, DAY)
    assert result is not None

    def text(seconds: float, earliest: float, latest: float | None) -> str:
        changed = dataclasses.replace(
            result, seconds=seconds, earliest_seconds=earliest, latest_seconds=latest
        )
        return changed.describe()

    assert text(45.0, 30.0, None).startswith("reaches 100 in 45 s (30 s or later) at 2.")
    assert text(1800.0, 1200.0, 3 * DAY).startswith("reaches 100 in 30 min (20 min to 3.0 d)")


def test_beyond_the_float_range_is_no_forecast() -> None:
    """A crossing whose time would overflow a float is no forecast, not an error."""
    times = [1.7e308 - (9 - i) * 1e296 for i in range(10)]
    series = [(t, i * 1e-10) for i, t in enumerate(times)]  # rises 1e-306 per second

    assert exhaustion(series, 1e3, math.inf, min_confidence=0) is None
    near = exhaustion(series, 1e-7, math.inf, min_confidence=0)
    assert near is not None
    assert near.seconds == pytest.approx(9.9e298, rel=0.01)


# --- exhaustion: sawtooth series -------------------------------------------------------------

# Disk use rising from 50% to 80% over 4 h, then log rotation drops it back to 50%; a day of
# history at 10 s ending at the given phase of a tooth (0.999: at its top).
ROTATION = 4 * HOUR
PHASES = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999]


def rotating_disk(phase: float, seed: int = 3) -> Series:
    end = T0 + 6 * ROTATION + phase * ROTATION
    return sample(sawtooth(ROTATION, 50.0, 80.0), end, DAY, noise=0.2, seed=seed)


@pytest.mark.parametrize("phase", PHASES)
def test_a_sawtooth_that_never_fills_is_not_reported(phase: float) -> None:
    series = rotating_disk(phase)
    assert exhaustion(series, 100.0, 4 * HOUR) is None  # the classic rule's horizon
    assert exhaustion(series, 100.0, 24 * HOUR) is None  # the disk rule of the issue
    assert exhaustion(series, 100.0, 7 * DAY) is None  # the peaks do not rise at all
    assert exhaustion(series, 100.0, 24 * HOUR, min_confidence=0.0) is None


def test_the_one_hour_linear_rule_alarms_at_the_top_of_a_tooth() -> None:
    """The test above bites: where it finds nothing, the common rule fires."""
    series = rotating_disk(0.999)
    alarms_4h, seconds = naive_one_hour(series, 100.0, 4 * HOUR)
    alarms_24h, _ = naive_one_hour(series, 100.0, 24 * HOUR)

    assert alarms_4h
    assert alarms_24h
    assert seconds is not None
    assert 2.5 * HOUR < seconds < 3 * HOUR  # "full in 2.7 h"
    assert exhaustion(series, 100.0, 24 * HOUR) is None


def test_the_one_hour_linear_rule_alarms_most_of_the_time() -> None:
    """Over 40 evenly spread phases, a 24 h rule on the last hour fires in 3 of 4 (whenever
    the last hour is all rise); ours never does."""
    phases = [k / 40 for k in range(40)]
    naive = [
        naive_one_hour(rotating_disk(p, seed=k), 100.0, 24 * HOUR)[0] for k, p in enumerate(phases)
    ]
    ours = [exhaustion(rotating_disk(p, seed=k), 100.0, 24 * HOUR) for k, p in enumerate(phases)]

    assert sum(naive) >= 30
    assert ours == [None] * 40


def irregular_rotation(seed: int) -> Series:
    """Rotation every 4 h +-20%, each tooth peaking anywhere from 75% to 85% (rotation by
    time, writes by load); a day of history ending at a random phase."""
    rng = random.Random(seed)
    teeth: list[tuple[float, float, float]] = []  # start, length, peak
    start = T0
    while start < T0 + 2 * DAY:
        length = ROTATION * rng.uniform(0.8, 1.2)
        teeth.append((start, length, rng.uniform(75.0, 85.0)))
        start += length

    def shape(t: float) -> float:
        start, length, peak = next(tooth for tooth in teeth if t < tooth[0] + tooth[1])
        return 50.0 + (peak - 50.0) * (t - start) / length

    end = T0 + DAY + rng.uniform(0.0, ROTATION)
    return sample(shape, end, DAY, noise=0.2, seed=seed)


def test_irregular_rotation_is_not_reported() -> None:
    series = [irregular_rotation(seed) for seed in range(30)]
    naive = [naive_one_hour(s, 100.0, 24 * HOUR)[0] for s in series]

    assert [exhaustion(s, 100.0, 24 * HOUR) for s in series] == [None] * 30
    assert sum(naive) >= 20


def test_a_sawtooth_with_rising_peaks_is_reported_near_the_envelope_crossing() -> None:
    """Teeth of 25% every 3 h whose peaks climb 1%/h from 75%: the envelope reaches 100% at
    25 h; after a day of history, the forecast says so within 10%, and the series itself
    crosses no earlier than the forecast and at most one cycle later."""
    shape = sawtooth(3 * HOUR, 50.0, 75.0, rise_per_hour=1.0)
    envelope_at = T0 + 25 * HOUR  # 75 + 1 * 25 = 100
    for phase in (0.0, 0.3, 0.7, 0.99):
        end = T0 + 13 * HOUR + phase * 3 * HOUR
        series = sample(shape, end, DAY, noise=0.2, seed=int(phase * 100))
        result = exhaustion(series, 100.0, 24 * HOUR)

        assert result is not None, phase
        assert result.method == "envelope"
        envelope_seconds = envelope_at - end
        assert abs(result.seconds - envelope_seconds) <= 0.1 * envelope_seconds, phase
        crossing = first_crossing(shape, end, 100.0)
        assert result.seconds - 10 * MINUTE <= crossing <= result.seconds + 3 * HOUR, phase
        assert result.rate_per_hour == pytest.approx(1.0, rel=0.05)
        assert result.resets >= 7
        assert result.cycle_seconds == pytest.approx(3 * HOUR, rel=0.01)


def test_a_rotation_that_stops_is_reported() -> None:
    """Rotation stops after the fifth tooth and the disk keeps filling at 7.5%/h: once the
    cycle rises above the earlier peaks, the rise since the last reset is forecast."""
    broken = sawtooth(ROTATION, 50.0, 80.0)
    stop = T0 + 5 * ROTATION

    def shape(t: float) -> float:
        return broken(t) if t < stop else 50.0 + 7.5 * (t - stop) / HOUR

    end = stop + 4.5 * HOUR  # 83.75%, above the 80% peaks
    result = exhaustion(sample(shape, end, DAY, noise=0.2), 100.0, 24 * HOUR)

    assert result is not None
    assert result.method == "since_reset"
    assert "rose above the highest of 5 earlier peaks" in result.reason
    true_seconds = first_crossing(shape, end, 100.0)
    assert abs(result.seconds - true_seconds) <= 0.1 * true_seconds


def test_an_overdue_rotation_is_reported() -> None:
    """Rotation stops and the disk fills at half the usual rate: below the earlier peaks,
    but without a reset for over 1.5 cycles, the rise since the last reset is forecast."""
    broken = sawtooth(ROTATION, 50.0, 80.0)
    stop = T0 + 5 * ROTATION

    def shape(t: float) -> float:
        return broken(t) if t < stop else 50.0 + 3.75 * (t - stop) / HOUR

    end = stop + 6.5 * HOUR  # 74.4%
    result = exhaustion(sample(shape, end, DAY, noise=0.2), 100.0, 24 * HOUR)

    assert result is not None
    assert result.method == "since_reset"
    assert "no reset for 6.5 h" in result.reason
    true_seconds = first_crossing(shape, end, 100.0)
    assert abs(result.seconds - true_seconds) <= 0.1 * true_seconds


def test_one_cleanup_moves_the_level_not_the_rate() -> None:
    """A single reset (someone deleted files) is not a pattern: the rise since it is."""

    def shape(t: float) -> float:
        level = 60.0 + 2.5 * (t - T0) / HOUR
        return level if t < T0 + 4 * HOUR else level - 30.0

    end = T0 + 6 * HOUR
    result = exhaustion(sample(shape, end, 6 * HOUR, noise=0.3), 100.0, 48 * HOUR)

    assert result is not None
    assert result.method == "since_reset"
    assert result.resets == 1
    assert "1 reset, 2 needed" in result.reason
    true_seconds = first_crossing(shape, end, 100.0)  # from 45% at 2.5%/h: 22 h
    assert abs(result.seconds - true_seconds) <= 0.1 * true_seconds


def test_a_reset_just_now_borrows_the_rate_of_the_cycle_before() -> None:
    def shape(t: float) -> float:
        level = 60.0 + 2.5 * (t - T0) / HOUR
        return level if t < T0 + 6 * HOUR - 2 * MINUTE else level - 30.0

    end = T0 + 6 * HOUR
    result = exhaustion(sample(shape, end, 6 * HOUR, noise=0.3), 100.0, 48 * HOUR)

    assert result is not None
    assert result.method == "since_reset"
    assert result.rate_per_hour == pytest.approx(2.5, rel=0.05)
    assert result.level == pytest.approx(45.0, abs=1.0)


def test_a_pool_whose_bursts_grow_is_exhausted_within_the_hour() -> None:
    """Connections checked out of a pool of 20, sampled every 10 s: 2 at rest and a burst of
    one minute every 5 minutes whose height grows by 0.75 a burst; whole connections only.
    The bursts' envelope reaches 20 about 32 minutes after the last sample."""

    def height(k: int) -> float:
        return 6.0 + 0.75 * k

    series: Series = []
    for i in range(360):  # one hour
        t = T0 + i * 10.0
        k, into = divmod(i, 30)
        series.append((t, float(round(height(k))) if 12 <= into < 18 else 2.0))
    result = exhaustion(series, 20.0, HOUR, min_span_seconds=15 * MINUTE)

    assert result is not None
    assert result.method == "envelope"
    assert result.resets == 12
    last_peak = T0 + (11 * 30 + 17) * 10.0
    true_at = last_peak + (20.0 - height(11)) / 0.75 * 5 * MINUTE
    true_seconds = true_at - series[-1][0]
    assert abs(result.seconds - true_seconds) <= 0.1 * true_seconds + 5 * MINUTE


def test_free_space_falling_to_zero() -> None:
    """``direction="falling"``: free gigabytes falling 1 per hour from 30, with rotation
    freeing 5 every 2 hours on top of it (jumps up, the resets of a falling series)."""

    def shape(t: float) -> float:
        phase = ((t - T0) % (2 * HOUR)) / (2 * HOUR)
        return 30.0 - (t - T0) / HOUR + 5.0 * (1.0 - phase) - 5.0

    end = T0 + 12 * HOUR + 1.0
    series = sample(shape, end, 12 * HOUR, every=30.0, noise=0.05)
    result = exhaustion(series, 0.0, 48 * HOUR, direction="falling")

    assert result is not None
    assert result.method == "envelope"  # the troughs, here
    assert result.rate_per_hour == pytest.approx(-1.0, rel=0.05)
    assert result.rate_low <= result.rate <= result.rate_high < 0
    true_seconds = first_crossing(lambda t: -shape(t), end, 0.0)
    assert abs(result.seconds - true_seconds) <= 0.1 * true_seconds
    assert exhaustion(series, 40.0, 48 * HOUR) is None  # falling, it never rises to 40


# --- exhaustion: nothing to report ---------------------------------------------------------


def test_too_little_data_is_not_a_forecast() -> None:
    line = [(T0 + i * 60.0, 50.0 + i) for i in range(60)]  # 1 h, 1 point a minute
    assert exhaustion(line[:9], 100.0, DAY) is None  # fewer than 10 points
    assert exhaustion(line[:20], 100.0, DAY) is None  # 19 minutes, less than 30
    assert exhaustion(line[:20], 100.0, DAY, min_span_seconds=0) is not None
    assert exhaustion(line[:31], 100.0, DAY) is not None
    assert exhaustion(line[:5], 100.0, DAY, min_points=5, min_span_seconds=0) is not None
    assert exhaustion([], 100.0, DAY) is None


def test_flat_and_falling_series_never_fill() -> None:
    flat = sample(lambda t: 70.0, T0 + DAY, DAY)
    noisy = sample(lambda t: 70.0, T0 + DAY, DAY, noise=2.0)
    falling = sample(lambda t: 90.0 - (t - T0) / HOUR, T0 + 6 * HOUR, 6 * HOUR, noise=0.3)
    for series in (flat, noisy, falling):
        assert exhaustion(series, 100.0, 7 * DAY) is None
    for series in (flat, falling):
        assert exhaustion(series, 100.0, math.inf) is None
    # Noise is not a reset, and its trend, if any, is negligible.
    far = exhaustion(noisy, 100.0, math.inf)
    assert far is None or far.seconds > 365 * DAY
    assert far is None or far.resets == 0


def test_already_at_capacity_is_now() -> None:
    series = sample(lambda t: 95.0 + (t - T0) / HOUR, T0 + 10 * HOUR, 10 * HOUR, noise=0.2)
    result = exhaustion(series, 100.0, HOUR)

    assert result is not None
    assert result.seconds == 0.0
    assert result.at == series[-1][0]
    assert result.earliest_seconds == 0.0
    assert result.latest_seconds == 0.0
    assert result.confidence == pytest.approx(1.0)
    assert exhaustion(series, 100.0, 0.0) is not None  # a zero horizon: only "now" counts
    assert exhaustion(series, 110.0, 0.0) is None


def test_one_spike_neither_triggers_nor_hides_a_forecast() -> None:
    flat = sample(lambda t: 60.0, T0 + 2 * HOUR, 2 * HOUR, noise=0.2)
    flat[-1] = (flat[-1][0], 100.0)  # the last sample reads full
    assert exhaustion(flat, 100.0, DAY) is None

    rising = sample(lambda t: 50.0 + 2.0 * (t - T0) / HOUR, T0 + 6 * HOUR, 6 * HOUR, noise=0.2)
    rising[-1] = (rising[-1][0], 0.0)  # the last sample reads empty
    result = exhaustion(rising, 100.0, DAY)
    assert result is not None
    assert result.seconds == pytest.approx(19 * HOUR, rel=0.02)


def test_unsorted_samples_are_sorted() -> None:
    series, _ = rising_disk()
    shuffled = list(series)
    random.Random(5).shuffle(shuffled)
    assert exhaustion(shuffled, 100.0, DAY) == exhaustion(series, 100.0, DAY)


def test_two_peaks_are_a_coin_toss() -> None:
    """With exactly two resets the envelope is the line through two peaks: the confidence of
    a coin toss, below the default ``min_confidence`` (0.8); three rising peaks pass it."""
    shape = sawtooth(4 * HOUR, 50.0, 80.0, rise_per_hour=2.0)
    series = sample(shape, T0 + 9 * HOUR, 9 * HOUR, noise=0.1)
    assert exhaustion(series, 100.0, DAY) is None
    result = exhaustion(series, 100.0, DAY, min_confidence=0.0)

    assert result is not None
    assert result.method == "envelope"
    assert result.resets == 2
    assert result.confidence == pytest.approx(0.5)


def test_three_rising_peaks_are_enough() -> None:
    shape = sawtooth(4 * HOUR, 40.0, 65.0, rise_per_hour=1.0)
    series = sample(shape, T0 + 13 * HOUR, 13 * HOUR, noise=0.1)
    result = exhaustion(series, 100.0, DAY)

    assert result is not None
    assert result.resets == 3
    assert result.seconds == pytest.approx(22 * HOUR, rel=0.05)  # 65 + 1 * 35 = 100
    assert result.confidence == pytest.approx(0.85, abs=0.01)


def daily_rotation(t: float) -> float:
    """Rotated every day at 00:00 UTC: 50% after rotation, 80% before."""
    return 50.0 + 30.0 * (t % DAY) / DAY


def test_one_rotation_in_the_window_needs_min_cycles_one() -> None:
    """Daily rotation with 30 h of history: one reset. By default one reset is not a pattern
    and the rise since it is forecast (a false alarm here); with ``min_cycles=1`` the one
    peak is a level the current cycle must rise above."""
    end = (T0 // DAY + 2) * DAY - 10 * MINUTE  # near the top of a tooth
    series = sample(daily_rotation, end, 30 * HOUR, every=30.0, noise=0.2)

    default = exhaustion(series, 100.0, DAY)
    assert default is not None
    assert default.method == "since_reset"
    assert exhaustion(series, 100.0, DAY, min_cycles=1) is None

    def stuck(t: float) -> float:  # rotation did not run at midnight
        return daily_rotation(t) if t < end - 4 * HOUR else 80.0 + 1.25 * (t - end) / HOUR + 5.0

    result = exhaustion(
        sample(stuck, end + 6 * HOUR, 30 * HOUR, every=30.0), 100.0, DAY, min_cycles=1
    )
    assert result is not None
    assert result.method == "since_reset"
    assert "rose above the highest of 1 earlier peaks" in result.reason


@pytest.mark.parametrize(
    ("samples", "capacity", "horizon", "options", "message"),
    [
        ([(T0, math.nan)], 100.0, HOUR, {}, "sample 0: the value is nan"),
        ([(T0, 1.0), (math.inf, 2.0)], 100.0, HOUR, {}, "sample 1: the timestamp is inf"),
        ([(T0, 1.0, 2.0)], 100.0, HOUR, {}, "sample 0 is not a (timestamp, value) pair"),
        ([(T0, "full")], 100.0, HOUR, {}, "sample 0 is not a (timestamp, value) pair"),
        ("12", 100.0, HOUR, {}, "samples must be (timestamp, value) pairs, not a string"),
        ([], math.nan, HOUR, {}, "capacity must be a finite number"),
        ([], 100.0, -1.0, {}, "horizon_seconds must be 0 or more"),
        ([], 100.0, math.nan, {}, "horizon_seconds must be 0 or more"),
        ([], 100.0, "1h", {}, "horizon_seconds must be a number"),
        ([], 100.0, HOUR, {"direction": "up"}, "direction must be 'rising' or 'falling'"),
        ([], 100.0, HOUR, {"min_points": 1}, "min_points must be an integer of 2 or more"),
        ([], 100.0, HOUR, {"min_span_seconds": -1.0}, "min_span_seconds must be 0 or more"),
        ([], 100.0, HOUR, {"reset_fraction": 0.0}, "reset_fraction must be in (0, 1]"),
        ([], 100.0, HOUR, {"min_cycles": 0}, "min_cycles must be an integer of 1 or more"),
        ([], 100.0, HOUR, {"max_points": 2}, "max_points must be an integer of 3 or more"),
        ([], 100.0, HOUR, {"min_confidence": 1.5}, "min_confidence must be between 0 and 1"),
    ],
)
def test_bad_input_is_refused_with_a_readable_message(
    samples: object, capacity: float, horizon: float, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        exhaustion(samples, capacity, horizon, **options)  # type: ignore[arg-type]


# --- trend -----------------------------------------------------------------------------------


def test_trend_of_an_exact_line() -> None:
    result = trend([(T0 + i * 60.0, 5.0 + 0.5 * i) for i in range(100)])

    assert result.slope == pytest.approx(0.5 / 60)
    assert result.slope_low == result.slope_high == pytest.approx(0.5 / 60)
    assert result.origin == T0 + 99 * 60.0
    assert result.level == pytest.approx(5.0 + 0.5 * 99)
    assert result.value_at(T0) == pytest.approx(5.0)
    assert result.intercept == pytest.approx(5.0 - 0.5 / 60 * T0)
    assert result.tau == 1.0
    assert result.residual_scale == pytest.approx(0.0, abs=1e-9)
    assert result.points == 100
    assert result.span == 99 * 60.0


def test_trend_shrugs_off_a_fifth_of_wild_points() -> None:
    rng = random.Random(2)
    series = sample(lambda t: 10.0 + 3.0 * (t - T0) / HOUR, T0 + 10 * HOUR, 10 * HOUR, 60.0, 0.5)
    for index in rng.sample(range(len(series)), len(series) // 5):
        series[index] = (series[index][0], rng.uniform(-1000.0, 1000.0))
    result = trend(series)

    assert result.slope * HOUR == pytest.approx(3.0, rel=0.05)
    assert result.slope_low < result.slope < result.slope_high
    assert 0.5 < result.tau < 1.0


def test_trend_interval_covers_the_true_slope() -> None:
    hits = 0
    for seed in range(20):
        series = sample(lambda t: 0.001 * (t - T0), T0 + HOUR, HOUR, 30.0, noise=1.0, seed=seed)
        result = trend(series)
        hits += result.slope_low <= 0.001 <= result.slope_high
    assert hits >= 17  # a 95% interval


def test_trend_needs_two_times() -> None:
    with pytest.raises(InsufficientData, match="two different times"):
        trend([(T0, 1.0), (T0, 2.0)])
    with pytest.raises(InsufficientData):
        trend([])


# --- seasonality -----------------------------------------------------------------------------


def daily_usage(t: float) -> float:
    """Requests per minute: 100, growing 5 a day, with a daily swing of +-20."""
    return 100.0 + 5.0 * (t - T0) / DAY + 20.0 * math.sin(2 * math.pi * (t - T0) / DAY)


def test_a_daily_cycle_is_forecast_for_the_next_day() -> None:
    """Two weeks at 5 minutes with noise (sd 3); the next day, hour by hour, within 3 (15% of
    the swing) of the noise-free truth, and the 95% band holds at least 90% of the noisy
    truth."""
    end = T0 + 14 * DAY
    history = sample(daily_usage, end, 14 * DAY, every=5 * MINUTE, noise=3.0, seed=4)
    result = forecast(history, end + DAY, period=DAY)

    assert result.method == "trend+season"
    assert len(result.points) == 24
    assert [p.time for p in result.points] == [end + k * HOUR for k in range(1, 25)]
    errors = [abs(p.value - daily_usage(p.time)) for p in result.points]
    assert max(errors) <= 3.0
    assert result.trend.slope * DAY == pytest.approx(5.0, rel=0.05)
    assert result.residual_scale == pytest.approx(3.0, rel=0.15)

    future = sample(daily_usage, end + DAY, DAY, every=5 * MINUTE, noise=3.0, seed=5)
    inside = [result.at(t).low <= v <= result.at(t).high for t, v in future]
    assert sum(inside) / len(inside) >= 0.9
    assert all(p.low < p.value < p.high for p in result.points)


def test_without_the_period_the_swing_is_missed() -> None:
    end = T0 + 14 * DAY
    history = sample(daily_usage, end, 14 * DAY, every=5 * MINUTE, noise=3.0, seed=4)
    result = forecast(history, end + DAY, step=HOUR)

    assert result.method == "trend"
    assert result.season is None
    assert result.note == ""
    assert max(abs(p.value - daily_usage(p.time)) for p in result.points) > 15.0


def test_a_weekly_cycle_of_daily_costs() -> None:
    """Eight weeks of daily cost at noon UTC: 50 a day, 20 on Saturdays and Sundays, growing
    1 a week. Weekly period, one slot a day: next week's weekend is forecast low."""

    def cost(t: float) -> float:
        weekday = int(t // DAY + 3) % 7  # 1970-01-01 was a Thursday (3)
        return (20.0 if weekday >= 5 else 50.0) + (t - T0) / (7 * DAY)

    first_noon = (T0 // DAY + 1) * DAY + 12 * HOUR
    history = [(first_noon + k * DAY, cost(first_noon + k * DAY)) for k in range(56)]
    end = history[-1][0]
    result = forecast(history, end + 7 * DAY, period=7 * DAY, slots=7)

    assert [p.time for p in result.points] == [end + k * DAY for k in range(1, 8)]
    for point in result.points:
        assert point.value == pytest.approx(cost(point.time), abs=1.0)
    assert result.season is not None
    assert result.season.counts == (8,) * 7


def test_too_short_for_the_period_falls_back_to_the_trend() -> None:
    end = T0 + 1.5 * DAY
    history = sample(daily_usage, end, 1.5 * DAY, every=5 * MINUTE, seed=6)
    result = forecast(history, end + DAY, period=DAY)

    assert result.method == "trend"
    assert result.season is None
    assert result.note == "no seasonality: 2 periods of 86400 s needed, the samples cover 1.50"
    with pytest.raises(InsufficientData, match="needs 2 periods of 86400 s"):
        seasonal_profile(history, DAY)


def test_seasonal_profile() -> None:
    end = T0 + 7 * DAY
    history = sample(daily_usage, end, 7 * DAY, every=HOUR, seed=7)
    history = [(t, v) for t, v in history if (t % DAY) // HOUR != 5]  # none 05:00-06:00 UTC
    profile = seasonal_profile(history, DAY)

    assert (profile.slots, profile.period, profile.origin) == (24, DAY, 0.0)
    assert sum(profile.offsets) == pytest.approx(0.0, abs=1e-9)
    assert profile.counts[5] == 0
    assert sum(profile.counts) == len(history)
    assert profile.offsets[5] == pytest.approx((profile.offsets[4] + profile.offsets[6]) / 2)
    for t, _ in history:  # the profile is the daily swing
        swing = 20.0 * math.sin(2 * math.pi * (t - T0) / DAY)
        assert profile.offset(t) == pytest.approx(swing, abs=1.0)
    assert [profile.slot(t) for t in (0.0, HOUR, DAY - 1, DAY)] == [0, 1, 23, 0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"until": T0}, "until (1.7e+09) must be after the last sample"),
        ({"until": math.inf}, "until must be a finite number"),
        ({"period": 0.0}, "the period must be positive"),
        ({"period": DAY, "slots": 0}, "slots must be an integer of 1 or more"),
        ({"period": DAY, "min_periods": 0.5}, "min_periods must be 1 or more"),
        ({"coverage": 1.0}, "coverage must be between 0 and 1"),
        ({"step": -1.0}, "step must be positive"),
        ({"step": 0.1}, "86400 s every 0.1 s is more than 10000 points"),
    ],
)
def test_bad_forecast_arguments(options: dict[str, object], message: str) -> None:
    history = [(T0 - HOUR, 1.0), (T0, 2.0)]
    arguments: dict[str, object] = {"until": T0 + DAY, **options}
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        forecast(history, **arguments)  # type: ignore[arg-type]


def test_forecast_needs_two_times() -> None:
    with pytest.raises(InsufficientData, match="two different times"):
        forecast([(T0, 1.0)], T0 + DAY)
    with pytest.raises(InsufficientData, match=r"the samples cover 0\.00"):
        seasonal_profile([(T0, 1.0)], DAY)


# --- properties ------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
samples_st = st.lists(st.tuples(finite, finite), max_size=60)


@PROPERTIES
@given(
    samples=samples_st,
    capacity=finite,
    horizon=st.one_of(st.floats(min_value=0.0, allow_nan=False), st.just(math.inf)),
    direction=st.sampled_from(["rising", "falling"]),
    min_confidence=st.floats(0.0, 1.0),
)
def test_exhaustion_never_raises_on_finite_input(
    samples: Series,
    capacity: float,
    horizon: float,
    direction: fc.Direction,
    min_confidence: float,
) -> None:
    result = exhaustion(
        samples,
        capacity,
        horizon,
        direction=direction,
        min_span_seconds=0,
        min_confidence=min_confidence,
    )
    if result is not None:
        assert 0.0 <= result.seconds <= horizon
        assert result.earliest_seconds <= result.seconds
        assert min_confidence <= result.confidence <= 1.0


def _usage_series(seed: int, days: float, noise: float) -> Series:
    return sample(daily_usage, T0 + days * DAY, days * DAY, every=HOUR, noise=noise, seed=seed)


@PROPERTIES
@given(
    seed=st.integers(0, 1000),
    shift=st.floats(-1e6, 1e6),
    seasonal=st.booleans(),
)
def test_adding_a_constant_shifts_the_forecast_by_it(
    seed: int, shift: float, seasonal: bool
) -> None:
    history = _usage_series(seed, 3.0, noise=5.0)
    until = history[-1][0] + DAY
    period = DAY if seasonal else None
    plain = forecast(history, until, period=period, step=HOUR)
    moved = forecast([(t, v + shift) for t, v in history], until, period=period, step=HOUR)

    tolerance = 1e-6 * (1.0 + abs(shift))
    for a, b in zip(plain.points, moved.points, strict=True):
        assert b.time == a.time
        assert b.value == pytest.approx(a.value + shift, abs=tolerance)
        assert b.high - b.low == pytest.approx(a.high - a.low, abs=tolerance)


@PROPERTIES
@given(
    seed=st.integers(0, 1000),
    exponent=st.integers(-40, 40),
    phase=st.floats(0.0, 1.0),
    rise=st.floats(0.0, 3.0),
    capacity=st.floats(60.0, 200.0),
)
def test_scaling_values_and_capacity_keeps_the_crossing_time(
    seed: int, exponent: int, phase: float, rise: float, capacity: float
) -> None:
    """Scaling by a power of two is exact in floating point, so the answer is identical
    (bytes or gigabytes, connections or a fraction of the pool)."""
    shape = sawtooth(2 * HOUR, 40.0, 60.0, rise_per_hour=rise)
    series = sample(shape, T0 + 6 * HOUR + phase * HOUR, 6 * HOUR, every=60.0, noise=0.3, seed=seed)
    k = 2.0**exponent
    plain = exhaustion(series, capacity, 2 * DAY)
    scaled = exhaustion([(t, k * v) for t, v in series], k * capacity, 2 * DAY)

    if plain is None:
        assert scaled is None
    else:
        assert scaled is not None
        assert scaled.seconds == plain.seconds
        assert scaled.method == plain.method
        assert scaled.rate == k * plain.rate
        assert scaled.confidence == plain.confidence


@PROPERTIES
@given(
    period_hours=st.floats(0.5, 6.0),
    low=st.floats(5.0, 70.0),
    height=st.floats(5.0, 30.0),
    phase=st.floats(0.0, 1.0),
    noise=st.floats(0.0, 0.25),
    fall_minutes=st.floats(0.0, 3.0),
    seed=st.integers(0, 1000),
)
def test_no_sawtooth_with_level_peaks_is_ever_reported(
    period_hours: float,
    low: float,
    height: float,
    phase: float,
    noise: float,
    fall_minutes: float,
    seed: int,
) -> None:
    """Any period from 30 min to 6 h, any level and height below 95%, any phase, noise up to
    1/20 of the tooth, and a fall that takes up to 3 minutes (compaction): never reported."""
    period = period_hours * HOUR
    fall = fall_minutes * MINUTE
    high = min(low + height, 95.0)

    def shape(t: float) -> float:
        into = (t - T0) % period
        rise = period - fall
        if into < rise:
            return low + (high - low) * into / rise
        return high - (high - low) * (into - rise) / fall

    end = T0 + 5 * period + phase * period
    span = max(DAY, 4 * period)
    series = sample(shape, end, span, every=30.0, noise=min(noise, (high - low) / 20), seed=seed)
    assert exhaustion(series, 100.0, 24 * HOUR) is None
    assert exhaustion(series, 100.0, 7 * DAY) is None


def test_exhaustion_is_a_frozen_value() -> None:
    series, _ = rising_disk()
    result = exhaustion(series, 100.0, DAY)
    assert isinstance(result, Exhaustion)
    with pytest.raises(AttributeError):
        result.seconds = 0.0  # type: ignore[misc]
