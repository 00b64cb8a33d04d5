"""The ``release`` profile: Ramp up to 20 users over a minute, hold three minutes, ramp down.

Run with ``locust -f load/locustfile.py,load/profiles/release.py`` (see ``qa.load.profiles``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # load/, for shapes

from shapes import ProfileShape


class ReleaseShape(ProfileShape):
    profile_name = "release"
