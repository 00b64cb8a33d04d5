"""The Locust side of the load profiles: one ``LoadTestShape`` asking ``qa.load.profiles``
what to run. Each file of ``load/profiles/`` subclasses it with a profile's name.

``RENUM_LOAD_USERS`` and ``RENUM_LOAD_RUN_TIME`` (seconds, or a span such as ``5m``) rescale
the profile: the peak becomes that many users and the total duration that long, keeping the
profile's form. (Locust's own ``--users`` cannot be used for this: headless Locust sets it to
1 when it is not given, so a shape cannot tell "not given" from 1.)
"""

from __future__ import annotations

import os

from locust import LoadTestShape

from qa.load.profiles import Profile, get_profile, parse_timespan


def configured(name: str) -> Profile:
    users = os.environ.get("RENUM_LOAD_USERS")
    run_time = os.environ.get("RENUM_LOAD_RUN_TIME")
    return get_profile(name).scaled(
        users=int(users) if users else None,
        run_time=parse_timespan(run_time) if run_time else None,
    )


class ProfileShape(LoadTestShape):
    abstract = True
    profile_name = ""

    def tick(self) -> tuple[int, float] | None:
        if not hasattr(self, "profile"):
            self.profile = configured(self.profile_name)
        return self.profile.tick(self.get_run_time())
