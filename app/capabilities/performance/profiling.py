"""Profiles of slow requests, taken with pyinstrument's sampling profiler.

A request cannot be known to be slow before it ends, and profiling every request in case it is
would cost every request (pyinstrument's hook runs on each Python call and return). So a slow
request *arms* its route: the route's next requests (``profiling.attempts`` of them, one at a
time per process) run under the profiler, and a profiled request that turns out slow as well is
kept. A route whose profile was kept, or whose attempts all ran fast, rests for
``cooldown_seconds`` before it can be armed again; at most ``MAX_ARMED`` routes are armed at
once. It is all a request observer of the base middleware, which already times every request:
no middleware layer of its own. When nothing is slow, a request costs a look at an empty table
when it starts and one comparison when it ends.

Slow means that the service spent longer on the request than the route's threshold: the time
the request waited for its client (a body sent slowly, an answer read slowly) does not count,
so no client can make a request slow at will. The threshold is ``p95_factor`` times the
route's p95 from the monitor once the route has ``min_requests`` timed requests, else
``threshold_ms``; never below ``floor_ms``. The p95s are read from the monitor's figures every
``P95_REFRESH_SECONDS``, never on a request's path. Requests held open on purpose (event
streams, long-polls) are never slow, and one that is held open while profiled stops being
profiled at once; a profile holds at most ``max_seconds`` of one request. Answers 404 and 405
(nothing of the service's to see) and made-up methods are never slow.

A synchronous endpoint or dependency (a plain ``def``) runs in a worker thread of the thread
pool, where the event loop's profiler does not see it: for a profiled request only, FastAPI's
``run_in_threadpool`` (hooked once per process, see ``hook_threadpool``) runs the call under a
profiler of its own in that worker thread, and the call's samples join the request's profile
under the worker thread's name. Every other call pays one context variable read.

Profiles are kept in memory, per process, the newest ``keep`` of them; each is rendered when an
admin asks for it, as pyinstrument's HTML page (made self-contained: its web font link is
removed) or as a speedscope document.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from pyinstrument import Profiler
from pyinstrument.renderers import HTMLRenderer, SpeedscopeRenderer
from pyinstrument.session import Session
from pyinstrument.stack_sampler import AsyncState
from starlette._utils import get_route_path
from starlette.types import Scope

from app.core.config import ProfilingSettings
from app.core.logging import get_logger, scrub
from app.core.middleware import CLIENT_SECONDS, HELD_OPEN, HOLD_OPEN_HOOKS
from app.core.request_context import UNMATCHED, route_template

P95_REFRESH_SECONDS = 30.0
MAX_ARMED = 20  # routes armed at once, at most
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNROUTED = frozenset({404, 405})  # a made-up path or method: nothing of the service's to see
# pyinstrument's page fetches a web font from Google at run time; a page served here loads
# nothing from outside, so the link gets an empty stylesheet instead.
_WEB_FONT = re.compile(r"https://fonts\.googleapis\.com/[^\"']*")
EMPTY_STYLESHEET = "data:text/css,"
HTML_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline' data:; "
    "img-src data:; font-src 'none'"
)

log = get_logger("app.performance")
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Profile:
    """One slow request's profile."""

    id: str
    method: str
    route: str
    path: str
    status: int
    duration_ms: float
    threshold_ms: float
    at: datetime
    session: Session = field(repr=False)

    @property
    def samples(self) -> int:
        return int(self.session.sample_count)

    def html(self) -> str:
        return _WEB_FONT.sub(EMPTY_STYLESHEET, HTMLRenderer().render(self.session))

    def speedscope(self) -> str:
        return str(SpeedscopeRenderer().render(self.session))


@dataclass
class _Armed:
    """A route whose next requests are profiled."""

    pattern: re.Pattern[str]
    attempts: int


def _pattern(template: str) -> re.Pattern[str]:
    """The paths of a route template: ``{name}`` one segment, ``{name:path}`` any rest."""
    parts = re.split(r"(\{[^}]*\})", template)
    regex = "".join(
        (".+" if part.endswith(":path}") else "[^/]+") if part.startswith("{") else re.escape(part)
        for part in parts
    )
    return re.compile(regex + "$")


class SlowRequests:
    """A request observer of the base middleware: finds slow requests, profiles the next
    requests of their routes, and keeps the profiles of the slow ones."""

    def __init__(
        self,
        settings: ProfilingSettings,
        p95s: Callable[[], dict[tuple[str, str], tuple[float, float]]] | None = None,
    ) -> None:
        self._p95s = p95s  # (method, route) -> (timed requests, p95 seconds), from the monitor
        self._route_p95: dict[tuple[str, str], tuple[float, float]] = {}
        self._refreshed = float("-inf")
        self.armed: dict[tuple[str, str], _Armed] = {}
        self._resting: dict[tuple[str, str], float] = {}  # armed routes' cool-downs
        self.profiling = False  # one profiled request at a time
        self.profiles: OrderedDict[str, Profile] = OrderedDict()
        self._ids = itertools.count(1)
        self.apply(settings)
        hook_threadpool()

    def apply(self, settings: ProfilingSettings) -> None:
        """Use ``settings`` from now on (at start, and after each live reload)."""
        self.config = settings
        # The one figure every request is compared with: nothing faster is ever slow.
        self.floor_seconds = settings.floor_ms / 1000 if settings.enabled else float("inf")
        if not settings.enabled:
            self.armed.clear()
        while len(self.profiles) > settings.keep:
            self.profiles.popitem(last=False)

    # -- thresholds --------------------------------------------------------------------------

    def threshold_seconds(self, method: str, route: str) -> float:
        config = self.config
        floor = config.floor_ms / 1000
        timed, p95 = self._route_p95.get((method, route), (0.0, 0.0))
        if timed >= config.min_requests and p95 > 0:
            return max(floor, config.p95_factor * p95)
        return max(floor, config.threshold_ms / 1000)

    def refresh(self, now: float | None = None) -> None:
        """Read the routes' p95s from the monitor (at most every ``P95_REFRESH_SECONDS``)."""
        now = time.monotonic() if now is None else now
        if self._p95s is None or now - self._refreshed < P95_REFRESH_SECONDS:
            return
        self._refreshed = now
        self._route_p95 = self._p95s()

    # -- the request observer ----------------------------------------------------------------

    def request_started(self, scope: Scope) -> None:
        """Start the profiler for a request of an armed route (when no other request is being
        profiled). The base middleware calls this in the request's own task, so the profiler
        (in pyinstrument's async mode) follows that task and nothing else, and the request's
        synchronous calls in their worker threads (``hook_threadpool``)."""
        if not self.armed or self.profiling or scope["type"] != "http":
            return  # the common case: nothing armed
        key = self._armed_route(scope)
        if key is None:
            return
        profiling = _Profiling(
            Profiler(interval=self.config.interval_ms / 1000, async_mode="enabled"), key
        )
        profiling.profiler.start()
        self.profiling = True
        scope[_PROFILING] = profiling
        profiling.token = _PROFILED.set(profiling)  # its synchronous calls: see hook_threadpool
        # At most max_seconds of samples, whatever the request does; none for a request held
        # open on purpose (an event stream, a long-poll), which is never slow.
        loop, thread = asyncio.get_running_loop(), threading.get_ident()
        profiling.cap = loop.call_later(self.config.max_seconds, profiling.stop)
        scope.setdefault(HOLD_OPEN_HOOKS, []).append(lambda: self._held_open(scope, loop, thread))

    def _held_open(self, scope: Scope, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        """Stop profiling a request held open: at once on the event loop's ``thread`` (where
        the profiler started, the only one that can stop it); from a synchronous route's worker
        thread, on the loop's next turn (the worker thread's samples stop with it)."""
        if threading.get_ident() == thread:
            self._end(scope)
        else:
            loop.call_soon_threadsafe(self._end, scope)

    def _end(self, scope: Scope, finished: bool = False) -> Session | None:
        """Stop the profiler of this request, if it runs one: its session. ``finished``: called
        when the request ended, in the context it started in."""
        profiling: _Profiling | None = scope.pop(_PROFILING, None)
        if profiling is None:
            return None
        profiling.stop()
        self.profiling = False
        self._attempted(profiling.key)
        if finished and profiling.token is not None:
            _PROFILED.reset(profiling.token)
        return profiling.session()

    def request_finished(self, scope: Scope, status: int, seconds: float) -> None:
        if self.profiling:
            session = self._end(scope, finished=True)
        elif seconds < self.floor_seconds:
            return  # the common case: one comparison
        else:
            session = None
        # Slow is the service's own time: not the time spent waiting for the client (a body
        # sent slowly, an answer read slowly), which any client could stretch.
        seconds -= scope.get(CLIENT_SECONDS, 0.0)
        if seconds < self.floor_seconds or scope.get(HELD_OPEN):
            return
        method = scope["method"]
        if status in UNROUTED or method not in METHODS:
            return
        route = route_template(scope)
        if route == UNMATCHED:
            return
        self.refresh()
        threshold = self.threshold_seconds(method, route)
        if seconds < threshold:
            return
        key = (method, route)
        if session is not None and scope.get(_PROFILED_KEY, key) == key:
            self._keep(scope, method, route, status, seconds, threshold, session)
        elif session is None:
            self._arm(key, seconds, threshold)

    def _arm(self, key: tuple[str, str], seconds: float, threshold: float) -> None:
        now = time.monotonic()
        if key in self.armed or self._resting.get(key, 0.0) > now:
            return
        if len(self.armed) >= MAX_ARMED:
            return
        self.armed[key] = _Armed(_pattern(key[1]), self.config.attempts)
        log.info(
            "slow_request_armed",
            method=key[0],
            route=key[1],
            duration_ms=round(seconds * 1000, 1),
            threshold_ms=round(threshold * 1000, 1),
        )

    def _keep(
        self,
        scope: Scope,
        method: str,
        route: str,
        status: int,
        seconds: float,
        threshold: float,
        session: Session,
    ) -> None:
        self._disarm((method, route))
        profile = Profile(
            id=f"p{next(self._ids)}",
            method=method,
            route=route,
            path=scrub(scope["path"]),
            status=status,
            duration_ms=round(seconds * 1000, 1),
            threshold_ms=round(threshold * 1000, 1),
            at=datetime.now(UTC),
            session=session,
        )
        self.profiles[profile.id] = profile
        while len(self.profiles) > self.config.keep:
            self.profiles.popitem(last=False)
        log.info(
            "slow_request_profiled",
            profile=profile.id,
            method=method,
            route=route,
            duration_ms=profile.duration_ms,
        )

    def _armed_route(self, scope: Scope) -> tuple[str, str] | None:
        """The armed route this request's method and path belong to, if any (a path can fit
        another route's template too: ``request_finished`` keeps the profile only when the
        route that answered is the armed one)."""
        path = get_route_path(scope)
        method = scope["method"]
        for key, armed in self.armed.items():
            if key[0] == method and armed.pattern.match(path):
                scope[_PROFILED_KEY] = key
                return key
        return None

    def _attempted(self, key: tuple[str, str]) -> None:
        """A profiled request of ``key``'s route ended: one attempt fewer; a route out of
        attempts rests for ``cooldown_seconds`` before it can be armed again."""
        armed = self.armed.get(key)
        if armed is not None:
            armed.attempts -= 1
            if armed.attempts <= 0:
                self._disarm(key)

    def _disarm(self, key: tuple[str, str]) -> None:
        self.armed.pop(key, None)
        now = time.monotonic()
        self._resting = {k: t for k, t in self._resting.items() if t > now}
        self._resting[key] = now + self.config.cooldown_seconds


@dataclass
class _Profiling:
    """The profiler of one request (on the event loop's thread), the timer that stops it at
    ``max_seconds``, and the profiles of its synchronous calls (in worker threads)."""

    profiler: Profiler
    key: tuple[str, str]
    cap: asyncio.TimerHandle | None = None
    token: Token[_Profiling | None] | None = None
    threads: list[Session] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return bool(self.profiler.is_running)

    def stop(self) -> None:
        if self.cap is not None:
            self.cap.cancel()
        if self.profiler.is_running:
            self.profiler.stop()

    def session(self) -> Session | None:
        """The request's profile: the event loop's samples, then its worker threads' (each
        thread a root of its own). Its duration stays the request's: the threads' samples
        overlap the loop's, which shows the request awaiting them meanwhile."""
        session = self.profiler.last_session
        if session is None or not self.threads:
            return session
        parts = [session, *self.threads]
        return Session(
            frame_records=[record for part in parts for record in part.frame_records],
            start_time=session.start_time,
            duration=session.duration,
            min_interval=session.min_interval,
            max_interval=session.max_interval,
            sample_count=sum(part.sample_count for part in parts),
            start_call_stack=session.start_call_stack,
            target_description=session.target_description,
            cpu_time=session.cpu_time,  # the process's, worker threads included
            sys_path=session.sys_path,
            sys_prefixes=session.sys_prefixes,
        )

    def in_thread(self, func: Callable[P, T]) -> Callable[P, T]:
        """``func``, profiled in the worker thread that runs it, for this request."""

        def profiled(*args: P.args, **kwargs: P.kwargs) -> T:
            if not self.running:  # stopped meanwhile (max_seconds, held open)
                return func(*args, **kwargs)
            profiler = _ThreadProfiler(self)
            profiler.start()
            try:
                return func(*args, **kwargs)
            finally:
                self.threads.append(profiler.stop())

        return profiled


class _ThreadProfiler(Profiler):
    """The profiler of one synchronous call of a profiled request, in its worker thread (which
    it alone can stop): it keeps no sample once the request's profile stopped."""

    def __init__(self, request: _Profiling) -> None:
        super().__init__(interval=request.profiler.interval, async_mode="disabled")
        self.request = request

    def _sampler_saw_call_stack(
        self, call_stack: list[str], time_since_last_sample: float, async_state: AsyncState | None
    ) -> None:
        if self.request.running:
            super()._sampler_saw_call_stack(call_stack, time_since_last_sample, async_state)


_PROFILING = "renum.profiling"
_PROFILED_KEY = "renum.profiled_route"
# The profiled request's profiling, set in its context only (and so in its worker threads').
_PROFILED: ContextVar[_Profiling | None] = ContextVar("renum_profiled_request", default=None)
# Where FastAPI sends a synchronous endpoint (and the validation of its answer), a synchronous
# dependency and a synchronous generator dependency's setup to the thread pool: each module's
# own ``run_in_threadpool``, looked up at each call.
THREADPOOL_CALLERS = ("fastapi.routing", "fastapi.dependencies.utils", "fastapi.concurrency")
_RUN_IN_THREADPOOL = "run_in_threadpool"


def hook_threadpool() -> None:
    """Make ``run_in_threadpool`` in ``THREADPOOL_CALLERS`` profile the calls of a profiled
    request in their worker threads, once per process (a second call changes nothing); a call
    of any other request costs one context variable read."""
    for name in THREADPOOL_CALLERS:
        module = importlib.import_module(name)
        run_in_threadpool = getattr(module, _RUN_IN_THREADPOOL, None)
        if run_in_threadpool is None or getattr(run_in_threadpool, "profiles_threads", False):
            continue  # not called that way by this FastAPI (the tests tell), or hooked already
        setattr(module, _RUN_IN_THREADPOOL, _profiling_threads(run_in_threadpool))


def _profiling_threads(
    run_in_threadpool: Callable[..., Coroutine[Any, Any, T]],
) -> Callable[..., Coroutine[Any, Any, T]]:
    def run(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> Coroutine[Any, Any, T]:
        profiling = _PROFILED.get()
        if profiling is not None and profiling.running:
            func = profiling.in_thread(func)
        return run_in_threadpool(func, *args, **kwargs)

    run.profiles_threads = True  # type: ignore[attr-defined]  # a marker: hooked already
    return run


def p95s_from(
    table: Callable[[], list[Any]],
) -> Callable[[], dict[tuple[str, str], tuple[float, float]]]:
    """The routes' (timed requests, p95) from the monitor's ``EndpointStats.table``."""

    def read() -> dict[tuple[str, str], tuple[float, float]]:
        found: dict[tuple[str, str], tuple[float, float]] = {}
        for row in table():
            timed = row.buckets[-1][1] if row.buckets else 0.0
            if row.p95 is not None:
                found[(row.method, row.route)] = (timed, row.p95)
        return found

    return read
