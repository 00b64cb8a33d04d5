"""The ``soak`` profile: Twelve users steady for an hour: leaks, growth and drift show up here.

Run with ``locust -f load/locustfile.py,load/profiles/soak.py`` (see ``qa.load.profiles``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # load/, for shapes

from shapes import ProfileShape


class SoakShape(ProfileShape):
    profile_name = "soak"
