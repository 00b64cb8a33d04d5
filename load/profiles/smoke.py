"""The ``smoke`` profile: Short and small, for every CI run: the scenarios work and nothing is slow.

Run with ``locust -f load/locustfile.py,load/profiles/smoke.py`` (see ``qa.load.profiles``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # load/, for shapes

from shapes import ProfileShape


class SmokeShape(ProfileShape):
    profile_name = "smoke"
