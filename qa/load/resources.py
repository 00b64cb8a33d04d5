"""The backend's CPU and memory while a load test runs, sampled once a second.

A launched backend is one local process: ``ProcessSampler`` reads it (and any children) with
psutil. A deployment is only reachable over HTTP: ``MetricsSampler`` scrapes its ``/metrics``
(``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` from prometheus_client's
process collector) and turns the CPU counter into a percentage between scrapes. Either way
the series lands in the report and its mean and peak are checked against ``[sla.resources]``.
CPU is in percent of one core, so a process busy on both cores of a 2-core machine reads 200.
"""

from __future__ import annotations

import contextlib
import csv
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

MB = 2**20


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the sampler started
    cpu_percent: float
    rss_mb: float


class Sampler:
    """A background thread taking one ``Sample`` per interval until ``stop``."""

    source = "none"

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="load-sampler", daemon=True)
        self._started = 0.0

    def start(self) -> Sampler:
        self._started = time.monotonic()
        self._prime()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.interval * 5)
        return self.samples

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                reading = self._read()
            except Exception as exc:  # the backend may be briefly unreachable; keep sampling
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if reading is not None:
                cpu, rss = reading
                elapsed = round(time.monotonic() - self._started, 2)
                self.samples.append(Sample(elapsed, round(cpu, 1), round(rss, 1)))

    def _prime(self) -> None:
        """Take the reading that the first interval's CPU share is measured from."""

    def _read(self) -> tuple[float, float] | None:
        raise NotImplementedError


class ProcessSampler(Sampler):
    """A local process and its children, with psutil."""

    source = "psutil"

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(interval)
        self.root = psutil.Process(pid)
        self._known: dict[int, psutil.Process] = {}

    def _processes(self) -> list[psutil.Process]:
        found = [self.root]
        with contextlib.suppress(psutil.Error):
            found += self.root.children(recursive=True)
        current = []
        for process in found:
            known = self._known.setdefault(process.pid, process)
            current.append(known)
        return current

    def _prime(self) -> None:
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                process.cpu_percent(None)

    def _read(self) -> tuple[float, float] | None:
        cpu = rss = 0.0
        alive = False
        for process in self._processes():
            try:
                with process.oneshot():
                    cpu += process.cpu_percent(None)
                    rss += process.memory_info().rss / MB
                alive = True
            except psutil.Error:
                self._known.pop(process.pid, None)
        return (cpu, rss) if alive else None


class MetricsSampler(Sampler):
    """A deployment's ``/metrics``: the CPU share between two scrapes, and resident memory."""

    source = "metrics"

    def __init__(self, base_url: str, interval: float = 2.0, **client: Any) -> None:
        super().__init__(interval)
        self.client = httpx.Client(base_url=base_url, timeout=5.0, **client)
        self._last: tuple[float, float] | None = None

    def _scrape(self) -> tuple[float, float]:
        response = self.client.get("/metrics")
        response.raise_for_status()
        values = {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name in ("process_cpu_seconds_total", "process_resident_memory_bytes")
        }
        if len(values) < 2:
            raise ValueError("/metrics has no process_cpu_seconds_total or resident memory")
        return values["process_cpu_seconds_total"], values["process_resident_memory_bytes"]

    def _prime(self) -> None:
        try:
            cpu_seconds, _ = self._scrape()
            self._last = (time.monotonic(), cpu_seconds)
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def _read(self) -> tuple[float, float] | None:
        cpu_seconds, rss = self._scrape()
        now = time.monotonic()
        last, self._last = self._last, (now, cpu_seconds)
        if last is None or now <= last[0]:
            return None
        return max(0.0, (cpu_seconds - last[1]) / (now - last[0]) * 100), rss / MB

    def stop(self) -> list[Sample]:
        samples = super().stop()
        self.client.close()
        return samples


def summarise(samples: list[Sample], source: str) -> dict[str, Any]:
    """Mean and peak of the series; an empty series gives no figures (thresholds go missing)."""
    if not samples:
        return {"source": source, "samples": 0}
    cpu = [s.cpu_percent for s in samples]
    rss = [s.rss_mb for s in samples]
    return {
        "source": source,
        "samples": len(samples),
        "cpu_percent_mean": round(sum(cpu) / len(cpu), 1),
        "cpu_percent_peak": max(cpu),
        "rss_mb_mean": round(sum(rss) / len(rss), 1),
        "rss_mb_peak": max(rss),
    }


def write_series(samples: list[Sample], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["seconds", "cpu_percent", "rss_mb"])
        for sample in samples:
            writer.writerow([sample.seconds, sample.cpu_percent, sample.rss_mb])
    return path
