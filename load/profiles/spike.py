"""The ``spike`` profile: A calm load, a sudden burst of five times as many users, and the recovery.

Run with ``locust -f load/locustfile.py,load/profiles/spike.py`` (see ``qa.load.profiles``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # load/, for shapes

from shapes import ProfileShape


class SpikeShape(ProfileShape):
    profile_name = "spike"
