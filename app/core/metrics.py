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
"""

from __future__ import annotations

import os
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

GaugeMode = Literal["livesum", "max", "min", "sum", "all", "liveall", "mostrecent"]


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

    def gauge(
        self, name: str, documentation: str, mode: GaugeMode, labelnames: tuple[str, ...] = ()
    ) -> Gauge:
        """A shared gauge whose workers' values combine by ``mode``."""
        return Gauge(name, documentation, labelnames, registry=self.shared, multiprocess_mode=mode)

    def exposition(self) -> bytes:
        """The text format: the shared metrics (every worker's, added up, in multiprocess
        mode) followed by this process's own."""
        directory = multiprocess_dir()
        if directory is None:
            shared = generate_latest(self.shared)
        else:
            combined = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
            shared = generate_latest(combined)
        return shared + generate_latest(self.local)

    @staticmethod
    def process_exited(pid: int | None = None) -> None:
        """Drop a finished worker's live gauges (``livesum``, ``liveall``) from the sums."""
        if multiprocess_dir() is not None:
            prometheus_multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]  # unannotated upstream
