"""Load profiles (qa/load/profiles.py): the users each profile runs over time, rescaled by
--users and --run-time, and the time spans the command line accepts."""

from __future__ import annotations

import pytest

from qa.launcher import REPO_ROOT
from qa.load.profiles import PROFILES, Profile, Stage, describe, get_profile, parse_timespan


def users_over(profile: Profile, step: float = 1.0) -> list[int]:
    """The users asked for at each step until the profile ends."""
    counts, elapsed = [], 0.0
    while (tick := profile.tick(elapsed)) is not None:
        counts.append(tick[0])
        elapsed += step
    return counts


def test_every_profile_has_a_shape_file_and_ends() -> None:
    assert set(PROFILES) == {"smoke", "release", "soak", "spike", "throughput"}
    for profile in PROFILES.values():
        shape = (REPO_ROOT / "load" / "profiles" / f"{profile.name}.py").read_text()
        assert f'profile_name = "{profile.name}"' in shape
        assert profile.tick(profile.duration) is None
        assert profile.tick(profile.duration - 0.01) is not None
        assert profile.tick(0) == (profile.stages[0].users, profile.stages[0].spawn_rate)


def test_smoke_is_short_enough_for_every_ci_run() -> None:
    smoke = get_profile("smoke")
    assert smoke.duration <= 60
    assert smoke.peak_users >= 3  # one API user at least, beside the operator and the prober


def test_release_ramps_up_holds_and_ramps_down() -> None:
    release = get_profile("release")
    assert 180 <= release.duration <= 600  # several minutes
    counts = users_over(release)
    peak = release.peak_users
    assert counts[0] == peak  # the target; Locust ramps towards it at the spawn rate
    assert release.tick(0)[1] < 1  # ... slowly: the ramp takes most of the first minute
    assert counts.count(peak) == 240  # ramp stage and hold stage target the peak
    assert counts[-1] < peak  # ramp down
    assert counts[-1] >= 1


def test_soak_is_long_and_steady() -> None:
    soak = get_profile("soak")
    assert soak.duration >= 3600
    assert max(users_over(soak, 60.0)[1:-1]) == min(users_over(soak, 60.0)[1:-1])


def test_spike_bursts_fast_and_recovers() -> None:
    spike = get_profile("spike")
    calm, burst, recovery = spike.stages
    assert burst.users >= 4 * calm.users
    assert burst.spawn_rate >= 10  # users arrive within seconds, not a ramp
    assert recovery.users == calm.users
    assert spike.tick(calm.seconds + 1) == (burst.users, burst.spawn_rate)


def test_users_rescale_every_stage_to_the_new_peak() -> None:
    release = get_profile("release").scaled(users=40)
    assert release.peak_users == 40
    assert [s.users for s in release.stages] == [40, 40, 8]
    assert release.stages[0].spawn_rate == pytest.approx(0.8)
    assert release.duration == get_profile("release").duration
    tiny = get_profile("release").scaled(users=1)
    assert [s.users for s in tiny.stages] == [1, 1, 1]  # never zero users


def test_run_time_stretches_every_stage_and_keeps_the_ramp() -> None:
    base = get_profile("release")
    short = base.scaled(run_time=27)
    assert short.duration == pytest.approx(27)
    assert [s.seconds for s in short.stages] == pytest.approx([6, 18, 3])
    # a ten times shorter ramp must spawn ten times faster to reach the same peak
    assert short.stages[0].spawn_rate == pytest.approx(base.stages[0].spawn_rate * 10)
    assert short.peak_users == base.peak_users


def test_scaling_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="--users"):
        get_profile("smoke").scaled(users=0)
    with pytest.raises(ValueError, match="--run-time"):
        get_profile("smoke").scaled(run_time=0)
    with pytest.raises(ValueError, match="choose from release, smoke, soak, spike"):
        get_profile("stress")


def test_tick_walks_the_stages_in_order() -> None:
    profile = Profile("t", "test", (Stage(10, 2, 1.0), Stage(5, 8, 4.0)))
    assert [profile.tick(t) for t in (0, 9.9, 10, 14.9, 15)] == [
        (2, 1.0),
        (2, 1.0),
        (8, 4.0),
        (8, 4.0),
        None,
    ]
    assert describe(profile) == "t: peak 8 users, about 1 min"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("1h", 3600), (" 2m10s ", 130)],
)
def test_time_spans(text: str, seconds: int) -> None:
    assert parse_timespan(text) == seconds


@pytest.mark.parametrize("text", ["", "fast", "5 minutes", "m", "1.5m"])
def test_bad_time_spans(text: str) -> None:
    with pytest.raises(ValueError, match="not a time span"):
        parse_timespan(text)
