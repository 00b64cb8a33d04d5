"""The app's Prometheus metrics, in one place: the registry capabilities define their metrics
in, and the text exposition of ``GET /metrics``.

Two kinds of metric live here. **Shared** metrics (counters, histograms and gauges that
capabilities define with ``registry=metrics.shared``) describe the service: under
``renum serve --workers N`` they add up across the worker processes through prometheus_client's
multiprocess mode (each worker writes its values to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR``, which ``renum serve`` creates for several workers; the scrape
reads them all). **Local** metrics describe the process that answers the scrape: the standard
``process_*`` and ``python_*`` collectors and the build's ``renum_build_info``, which
prometheus_client cannot add up across processes.

A gauge that is shared needs a ``multiprocess_mode`` saying how workers' values combine
(``livesum`` for things in flight, ``max`` for one value every worker reads alike, ``all`` for
one series per worker, labelled ``pid``); ``gauge`` below picks the mode.

A capability may record on the request path into plain numbers of its own and fold them into
its shared metrics only when they are read (the monitor's endpoint figures, where the metrics'
locks would cost every request): it registers the fold with ``before_collect``, and the
exposition runs it first, so a scrape reads what was recorded up to that moment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    GC_COLLECTOR,
    CollectorRegistry,
    Gauge,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

GaugeMode = Literal[
    "livesum", "livemin", "livemax", "max", "min", "sum", "all", "liveall", "mostrecent"
]


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process is one of several workers."""
    return os.environ.get(MULTIPROCESS_ENV) or None


class Metrics:
    """One app's metrics: ``shared`` for the service's, ``local`` for this process's."""

    def __init__(self, version: str, environment: str) -> None:
        self.shared = CollectorRegistry(auto_describe=True)
        self.local = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.local)
        PlatformCollector(registry=self.local)
        if GC_COLLECTOR is not None:  # absent on interpreters without gc.get_stats
            GCCollector(registry=self.local)
        Info("renum_build", "The running Renum build.", registry=self.local).info(
            {"version": version, "environment": environment}
        )
        self._before_collect: list[Callable[[], None]] = []

    def before_collect(self, fold: Callable[[], None]) -> None:
        """Run ``fold`` (on the event loop, like the scrape) before the shared metrics are
        read (``service_registry``, hence every exposition)."""
        self._before_collect.append(fold)

    def gauge(
        self, name: str, documentation: str, mode: GaugeMode, labelnames: tuple[str, ...] = ()
    ) -> Gauge:
        """A shared gauge whose workers' values combine by ``mode``."""
        return Gauge(name, documentation, labelnames, registry=self.shared, multiprocess_mode=mode)

    def service_registry(self) -> CollectorRegistry:
        """The shared metrics as the service has them: every worker's, added up, in
        multiprocess mode; this process's otherwise. The ``before_collect`` folds run first:
        this process's figures are exact, other workers' are as of their own last fold."""
        for fold in self._before_collect:
            fold()
        directory = multiprocess_dir()
        if directory is None:
            return self.shared
        combined = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        return combined

    def exposition(self) -> bytes:
        """The text format: the shared metrics (every worker's, added up, in multiprocess
        mode) followed by this process's own."""
        return generate_latest(self.service_registry()) + generate_latest(self.local)

    @staticmethod
    def process_exited(pid: int | None = None) -> None:
        """Drop a finished worker's live gauges (``livesum``, ``liveall``) from the sums."""
        if multiprocess_dir() is not None:
            prometheus_multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]  # unannotated upstream
