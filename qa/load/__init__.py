"""The load-test harness: Locust (always a subprocess: it needs gevent) against a launched or
deployed backend, with load profiles, SLA thresholds, baselines and the backend's resource use.

``python -m qa.load --profile release`` is what ``nox -s load`` runs; see ``qa.load.runner``.
The Locust scenarios and profile shapes live in ``load/``; they import only
``qa.load.profiles`` from here.
"""
