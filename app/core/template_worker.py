"""A render worker of the bounded template renderer (:mod:`app.core.templates`).

Started by the pool as ``python -m app.core.template_worker CONFIG`` (CONFIG: JSON with the
limits, ``memory_mb``, ``cpu_seconds`` and the kits ``{name: "module:factory"}``), with an
environment holding none of the server's secrets. It imports the kits, caps its own address
space at its start-up size plus ``memory_mb`` (so a memory bomb is a ``MemoryError``, reported
like any limit), says it is ready, then renders one request at a time: frames of JSON on stdin;
on stdout (the real one: ``print`` goes to stderr) an acknowledgement as soon as it has a
request, then the reply. Each render may spend at most ``cpu_seconds`` of processor time
(``RLIMIT_CPU``; the pool kills it long before, so only a worker whose server died meets it).
It exits normally when stdin closes (or breaks off mid-request), so coverage measurement saves
its data, and a worker whose server died does not outlive it.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from collections.abc import Callable
from typing import IO, Any

from app.core.templates import ACK, RenderError, RenderLimits, encode_frame, render_template

NICENESS = 5  # renders yield the processors to the API process when both want them


def _load(path: str) -> Callable[[Any], Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def _limit_memory(megabytes: int) -> None:
    """Cap the address space at what the process uses now plus ``megabytes``."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
    except (ImportError, OSError):  # pragma: no cover - not Linux: no cap
        return
    size = pages * os.sysconf("SC_PAGE_SIZE") + megabytes * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        size = min(size, hard)
    resource.setrlimit(resource.RLIMIT_AS, (size, hard))


def _limit_cpu(seconds: int) -> None:
    """Let the next render spend at most ``seconds`` of processor time: the kernel ends the
    process past it (SIGXCPU, no core file)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Unix: no limit
        return
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = math.ceil(used.ru_utime + used.ru_stime)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = spent + seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _no_core_files() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ImportError, ValueError, OSError):  # pragma: no cover - not Unix, or not allowed
        pass


def _read(stream: IO[bytes]) -> Any:
    """The next request, or None when stdin closed (or broke off mid-request)."""
    header = stream.readline()
    if not header.strip().isdigit():
        return None
    size = int(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return json.loads(payload)


def handle(request: Any, kits: dict[str, Callable[[Any], Any]], limits: RenderLimits) -> Any:
    """One render request, answered as JSON data."""
    try:
        name = request.get("kit")
        kit = kits[name](request.get("kit_data")) if name else None
        rendered = render_template(request["source"], request["data"], limits=limits, kit=kit)
    except RenderError as error:
        return {"ok": False, "reason": error.reason}
    except MemoryError:
        return {"ok": False, "reason": "template stopped: out of memory"}
    except Exception as error:  # a kit refused its data
        return {"ok": False, "reason": f"template error: {type(error).__name__}: {error}"}
    return {"ok": True, "output": rendered.output, "effects": rendered.effects}


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    kits = {name: _load(path) for name, path in config.get("kits", {}).items()}
    limits = RenderLimits(config["max_output_chars"], config["max_iterations"])
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    os.nice(NICENESS)
    _no_core_files()
    _limit_memory(config["memory_mb"])
    replies.write(encode_frame({"ready": True}))
    replies.flush()
    while (request := _read(requests)) is not None:
        _limit_cpu(config["cpu_seconds"])
        replies.write(ACK)
        replies.flush()
        try:
            frame = encode_frame(handle(request, kits, limits))
        except MemoryError:
            frame = encode_frame({"ok": False, "reason": "template stopped: out of memory"})
        replies.write(frame)
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
