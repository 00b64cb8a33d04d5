"""Load profiles: how many Locust users run at each moment of a test.

A profile is a list of stages, each holding a number of users (reached at a spawn rate) for a
duration. The Locust shapes in ``load/profiles/`` ask ``Profile.tick`` what to run; ``--users``
scales every stage to a new peak and ``--run-time`` stretches or shrinks every stage to a new
total duration, so each profile keeps its form at any size. Pure Python, no Locust import, so
the shapes are tested without gevent.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SPAN = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


@dataclass(frozen=True)
class Stage:
    """Run ``users`` users for ``seconds``, reaching them at ``spawn_rate`` users per second."""

    seconds: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class Profile:
    """A load shape. ``user_classes``: the only Locust users it runs (their names; none: every
    user of ``load/locustfile.py``); ``thresholds``: its own service levels, a file of
    ``load/`` (none: ``load/thresholds.toml``)."""

    name: str
    description: str
    stages: tuple[Stage, ...]
    user_classes: tuple[str, ...] = ()
    thresholds: str | None = None

    @property
    def duration(self) -> float:
        return sum(stage.seconds for stage in self.stages)

    @property
    def peak_users(self) -> int:
        return max(stage.users for stage in self.stages)

    def scaled(self, users: int | None = None, run_time: float | None = None) -> Profile:
        """The same form with a new peak of users and/or a new total duration."""
        if users is not None and users < 1:
            raise ValueError("--users must be at least 1")
        if run_time is not None and run_time <= 0:
            raise ValueError("--run-time must be positive")
        people = users / self.peak_users if users is not None else 1.0
        time = run_time / self.duration if run_time is not None else 1.0
        stages = tuple(
            Stage(
                seconds=stage.seconds * time,
                users=max(1, round(stage.users * people)),
                spawn_rate=max(0.1, stage.spawn_rate * people / time),
            )
            for stage in self.stages
        )
        return Profile(self.name, self.description, stages, self.user_classes, self.thresholds)

    def tick(self, elapsed: float) -> tuple[int, float] | None:
        """(users, spawn rate) at ``elapsed`` seconds into the test; None once it is over."""
        start = 0.0
        for stage in self.stages:
            if elapsed < start + stage.seconds:
                return stage.users, stage.spawn_rate
            start += stage.seconds
        return None


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "smoke",
            "Short and small, for every CI run: the scenarios work and nothing is slow.",
            (Stage(10, 6, 1.0), Stage(35, 6, 1.0)),
        ),
        Profile(
            "release",
            "Ramp up to 20 users over a minute, hold three minutes, ramp down.",
            (Stage(60, 20, 0.4), Stage(180, 20, 1.0), Stage(30, 4, 1.0)),
        ),
        Profile(
            "soak",
            "Twelve users steady for an hour: leaks, growth and drift show up here.",
            (Stage(60, 12, 0.25), Stage(3600, 12, 1.0), Stage(30, 2, 1.0)),
        ),
        Profile(
            "spike",
            "A calm load, a sudden burst of five times as many users, and the recovery.",
            (Stage(60, 6, 1.0), Stage(45, 30, 15.0), Stage(75, 6, 5.0)),
        ),
        Profile(
            "throughput",
            "Executions of a 3-agent builtin team back to back, 8 users without pauses for a "
            "minute: how many executions per second the backend completes through HTTP.",
            (Stage(10, 8, 2.0), Stage(60, 8, 1.0)),
            user_classes=("ThroughputUser",),
            thresholds="throughput.toml",
        ),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown load profile {name!r}; choose from {', '.join(sorted(PROFILES))}"
        ) from None


def parse_timespan(text: str) -> int:
    """Seconds in a Locust-style time string: ``90``, ``90s``, ``5m``, ``1h30m``."""
    match = _SPAN.match(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise ValueError(f"not a time span: {text!r} (use e.g. 90s, 5m, 1h30m)")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def describe(profile: Profile) -> str:
    minutes = math.ceil(profile.duration / 60)
    return f"{profile.name}: peak {profile.peak_users} users, about {minutes} min"
