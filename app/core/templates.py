"""The one bounded renderer of tenant templates (builtin ``template`` agents, workflow
``input_template``s): a Jinja2 sandbox with size and iteration limits, run in worker processes
that are killed past a hard time limit, so no template can stall or exhaust the server.

Two halves:

- **The sandbox** (:func:`render_template`, run inside a worker): Jinja2's immutable sandbox,
  plus limits on the template's size (:data:`MAX_TEMPLATE_CHARS`), the output's size, every
  string or list a template builds (``*``, ``+``, ``~``, ``%``, ``**``, ``join``,
  ``format``/``str.format`` widths, ``center``/``ljust``/``rjust``/``zfill``/``indent``/
  ``wordwrap``/``replace``/``sum``/``batch``/``slice``, every filter's and string method's
  result: checked before building where the size is known, after otherwise), the iterations of
  one render (every ``for`` loop's items, ``range()`` items as they are produced and macro
  calls, summed), and the size of integers. Recursion and running out of memory (the worker's
  address space is capped) are reported like the other limits.
- **The pool** (:class:`TemplateRenderer`): ``settings.templates.workers`` processes
  (``python -m app.core.template_worker``), started on first use, each render given to an idle
  one over pipes (JSON both ways, never pickle). Past ``timeout_seconds`` the worker is
  SIGKILLed and replaced; a worker that died (killed from outside, crashed) is replaced too.
  Renders name their owner (the account): an account holds at most half the workers (at least
  one) and a freed worker goes to the longest-waiting render whose account is under that share
  (:class:`FairShares`), so an account whose renders all run until killed delays only itself.
  Workers start with a scrubbed environment (:func:`worker_environment`: no ``RENUM_*``
  secrets) and a processor-time limit per render, so one whose server died cannot spin on.
  Closing the pool closes the workers' stdin, so they exit normally (and save coverage data).

Functions with effects (``remember``, messages) come in **kits**: the pool is given
``{name: "module:factory"}``, each worker imports them at start-up, a render names one and
passes it JSON data; the factory makes a :class:`TemplateKit` whose ``names`` the template sees
and whose ``effects()`` come back as JSON with the output. ``app.core`` imports no kit; the
services register theirs.

Every failure (syntax, undefined names, sandbox violations, a limit, the time limit, a crashed
worker) is a :class:`RenderError` whose ``reason`` says what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import operator
import os
import re
import sys
import types
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, UndefinedError
from jinja2.filters import do_batch, do_indent, do_wordwrap, make_attrgetter, sync_do_slice
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace, htmlsafe_json_dumps
from markupsafe import EscapeFormatter, Markup

from app.core.config import TemplateSettings
from app.core.logging import get_logger

log = get_logger("app.templates")

MAX_TEMPLATE_CHARS = 64_000
MAX_INT_BITS = 100_000  # about 30,000 decimal digits
MAX_EFFECTS_FACTOR = 8  # a kit's effects (context writes, messages) up to 8x the output limit
MAX_REASON_CHARS = 1_000
WORKER_MODULE = "app.core.template_worker"
START_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 5.0

_SIZED = (str, bytes, list, tuple)


class RenderError(Exception):
    """A template could not be rendered; ``reason`` says why, in words fit for a tenant."""

    def __init__(self, reason: str) -> None:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 3] + "..."
        super().__init__(reason)
        self.reason = reason


class KitError(Exception):
    """Raised by a kit's function: the render fails with this message as its reason."""


class TemplateKit(Protocol):
    """Functions with effects for one render, made in the worker from the caller's JSON data."""

    names: Mapping[str, Any]  # what the template sees

    def effects(self) -> Any:
        """What the render did, as JSON data, returned to the caller with the output."""


@dataclass(frozen=True)
class RenderLimits:
    max_output_chars: int = 1_000_000
    max_iterations: int = 100_000


@dataclass(frozen=True)
class Rendered:
    output: str
    effects: Any = None


class _LimitExceeded(Exception):
    """A render went past one of its limits (reported as "template stopped: ...")."""


# -- validation, in any process -----------------------------------------------------------------


def syntax_problem(error: TemplateSyntaxError) -> str:
    return f"template syntax error on line {error.lineno}: {error.message}"


def template_problem(source: str) -> str | None:
    """Why ``source`` is not a usable template (too long, not Jinja2 syntax), or None.

    Parses only: nothing of the template runs (no constant folding either), and parsing is
    linear in its size: the longest, densest template takes a few tenths of a second."""
    if len(source) > MAX_TEMPLATE_CHARS:
        return f"template longer than {MAX_TEMPLATE_CHARS} characters"
    try:
        _PARSER.parse(source)
    except TemplateSyntaxError as error:
        return syntax_problem(error)
    except (RecursionError, MemoryError):
        return "template nested too deeply"
    return None


# -- the sandbox --------------------------------------------------------------------------------


class _Budget:
    """The iterations one render may still run."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.left = self.limit = limit

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise _LimitExceeded(f"more than {self.limit} iterations (loop items and macro calls)")


_BUDGET: ContextVar[_Budget] = ContextVar("template_budget")


def _counted(iterator: Iterator[Any]) -> Iterator[Any]:
    budget = _BUDGET.get()
    for item in iterator:
        budget.spend()
        yield item


class _Range:
    """``range()`` for templates: lazy, and its items count as iterations when produced. It
    has no ``__len__``, which ``list()`` and ``join`` would use to allocate room for every item
    at once (``range(10**9) | list``); the ``length`` filter knows it."""

    def __init__(self, *args: Any) -> None:
        self._range: range = (
            args[0] if len(args) == 1 and isinstance(args[0], range) else range(*args)
        )

    @property
    def start(self) -> int:
        return self._range.start

    @property
    def stop(self) -> int:
        return self._range.stop

    @property
    def step(self) -> int:
        return self._range.step

    def __iter__(self) -> Iterator[int]:
        return _counted(iter(self._range))

    def __reversed__(self) -> Iterator[int]:
        return _counted(reversed(self._range))

    def __contains__(self, item: object) -> bool:
        return item in self._range

    def __getitem__(self, index: Any) -> Any:
        item = self._range[index]
        return _Range(item) if isinstance(item, range) else item

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Range) and self._range == other._range

    def __hash__(self) -> int:
        return hash(self._range)

    def __repr__(self) -> str:
        return repr(self._range)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles every ``for`` loop's iterable through ``environment.counted`` and every ``~``
    through ``environment.concat_text``, so both are bounded."""

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        counted = nodes.EnvironmentAttribute("counted", lineno=node.lineno)
        node.iter = nodes.Call(counted, [node.iter], [], None, None, lineno=node.lineno)
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat_text((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class _BoundedFormatter(SandboxedFormatter):
    """``str.format`` with field widths and the whole result kept within the size limit."""

    def __init__(self, env: _BoundedSandbox, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._sandbox = env
        self._produced = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "s", "a"):
            self._sandbox.measure(value)
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        limit = self._sandbox.max_chars
        width = max((int(digits) for digits in re.findall(r"\d+", format_spec)), default=0)
        if width > limit or self._produced + width > limit:
            raise _LimitExceeded(f"format() wider than {limit} characters")
        if not isinstance(value, str):
            self._sandbox.measure(value)
        text = super().format_field(value, format_spec)
        self._produced += len(text)
        if self._produced > limit:
            raise _LimitExceeded(f"format() longer than {limit} characters")
        return text


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    pass


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox with every way of building something big bounded.

    Immutable: a template cannot change ``context``, ``variables`` or a kit's data in place;
    it writes only through a kit's functions."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: RenderLimits) -> None:
        super().__init__(
            autoescape=False,
            undefined=StrictUndefined,
            keep_trailing_newline=True,
            optimized=False,  # no constant folding: nothing of a template runs at compile time
            finalize=self.to_text,
        )
        self.max_chars = limits.max_output_chars
        self.max_iterations = limits.max_iterations
        self.globals["range"] = _Range
        self.globals.pop("lipsum", None)
        self.filters.pop("urlize", None)  # its size grows with each link's attributes
        self.filters.update(
            {
                "batch": self._batch,
                "center": self._center,
                "format": self._format,
                "indent": self._indent,
                "join": self._join,
                "length": _length,
                "count": _length,
                "pprint": self._measured(self.filters["pprint"], factor=2),
                "replace": self._replace,
                "slice": self._slice,
                "string": self.to_text,
                "sum": self._sum,
                "tojson": self._tojson,
                "wordwrap": self._wordwrap,
            }
        )
        self.filters = {name: self._checked(f, name) for name, f in self.filters.items()}
        self._compiled = functools.lru_cache(maxsize=64)(self.from_string)

    # -- sizes --------------------------------------------------------------------------------

    def _fail_size(self, what: str) -> _LimitExceeded:
        return _LimitExceeded(f"{what} longer than {self.max_chars} characters or items")

    def sized(self, value: Any, what: str) -> Any:
        if isinstance(value, _SIZED) and len(value) > self.max_chars:
            raise self._fail_size(what)
        return value

    def _check(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise self._fail_size(what)

    def measure(self, value: Any, limit: int | None = None) -> None:
        """Refuse ``value`` if its text would be longer than the limit; the walk itself stops
        there, so measuring is bounded too."""
        budget = self.max_chars if limit is None else limit
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str | bytes):
                budget -= len(item) + 2
            elif isinstance(item, Mapping):
                budget -= 2 + 4 * len(item)
                if budget >= 0:
                    stack.extend(chain(item.keys(), item.values()))
            elif isinstance(item, Collection):
                budget -= 2 + 2 * len(item)
                if budget >= 0:
                    stack.extend(item)
            elif isinstance(item, Namespace):
                stack.append(item._Namespace__attrs)
            else:
                budget -= 8
            if budget < 0:
                raise self._fail_size("a value's text")

    def to_text(self, value: Any) -> str:
        """``str(value)``, refused if it would be too long (a list repeating a long string)."""
        if isinstance(value, str):
            return value
        if not isinstance(value, int | float | bool | type(None)):
            self.measure(value)
        return self.sized(str(value), "a value's text")  # type: ignore[no-any-return]

    def concat_text(self, parts: tuple[Any, ...]) -> str:
        texts = [self.to_text(part) for part in parts]
        self._check(sum(map(len, texts)), "a ~ concatenation")
        return "".join(texts)

    def concat(self, parts: Iterable[str]) -> str:
        """Joins the output of blocks captured by ``{% set %}``, macros and filter blocks."""
        collected, total = [], 0
        for part in parts:
            total += len(part)
            if total > self.max_chars:
                raise self._fail_size("a block's output")
            collected.append(part)
        return "".join(collected)

    # -- iterations ---------------------------------------------------------------------------

    def counted(self, iterable: Any) -> Any:
        """A ``for`` loop's iterable, counting each item (a ``range()`` counts itself)."""
        if isinstance(iterable, _Range):
            return iterable
        return _counted(iter(iterable))

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, Macro):
            _BUDGET.get().spend()
        elif isinstance(obj, LoopContext) and args:  # a recursive loop's loop(children)
            args = (self.counted(args[0]), *args[1:])
        return super().call(context, obj, *args, **kwargs)

    # -- operators ----------------------------------------------------------------------------

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "+":
            if isinstance(left, _SIZED) and isinstance(right, _SIZED):
                self._check(len(left) + len(right), "a + result")
            return left + right
        if operator_name == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, _SIZED) and isinstance(count, int):
                    self._check(len(sequence) * count, "a repetition")
            if isinstance(left, int) and isinstance(right, int):
                self._check_bits(left.bit_length() + right.bit_length())
            return left * right
        if operator_name == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                self._check_bits((left.bit_length() - 1) * right)
            return left**right
        if operator_name == "%" and isinstance(left, str | bytes):
            return self._percent(left, right)
        return operator.mod(left, right)

    @staticmethod
    def _check_bits(bits: int) -> None:
        if bits > MAX_INT_BITS:
            raise _LimitExceeded(f"a number larger than {MAX_INT_BITS} bits")

    def _percent(self, text: Any, arguments: Any) -> Any:
        """``text % arguments`` (``text`` a str or bytes), its widths checked before."""
        spec = text.decode("latin-1") if isinstance(text, bytes) else text
        width = 0
        for match in _PERCENT_SPEC.finditer(spec):
            if "*" in match.groups():
                raise _LimitExceeded("a * width in % formatting")
            width += sum(int(group) for group in match.groups() if group)
        self._check(width, "% formatting")
        self.measure(arguments)
        return self.sized(text % arguments, "% formatting")

    # -- string methods -----------------------------------------------------------------------

    def wrap_str_format(self, value: Any) -> Callable[..., Any] | None:
        """Every method of a string reached from a template is bounded: widths and counts are
        checked before it runs where they tell the result's size, and the result after."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType):
            return None
        owner = value.__self__
        if not isinstance(owner, str | bytes):
            return None
        name = value.__name__
        if name in ("format", "format_map") and isinstance(owner, str):
            return self._str_format(owner, name == "format_map")

        def bounded(*args: Any, **kwargs: Any) -> Any:
            if name == "join" and args:
                args = (self._joinable(owner, args[0]), *args[1:])
            else:
                self._check_method(owner, name, args, kwargs)
            return self.sized(value(*args, **kwargs), f"{name}()")

        return functools.update_wrapper(bounded, value)

    def _check_method(self, owner: Any, name: str, args: Any, kwargs: Any) -> None:
        def argument(position: int, keyword: str, default: Any) -> Any:
            return args[position] if len(args) > position else kwargs.get(keyword, default)

        if name in ("center", "ljust", "rjust", "zfill"):
            width = argument(0, "width", 0)
            if isinstance(width, int):
                self._check(width, f"{name}()")
        elif name == "expandtabs":
            size = argument(0, "tabsize", 8)
            tab = "\t" if isinstance(owner, str) else b"\t"
            if isinstance(size, int):
                self._check(len(owner) + owner.count(tab) * size, "expandtabs()")
        elif name == "replace" and len(args) >= 2:
            self._check(_replaced_length(owner, args[0], args[1], argument(2, "count", -1)), name)
        elif name == "translate" and args and isinstance(args[0], Mapping):
            longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
            self._check(len(owner) * max(longest, 1), "translate()")

    def _joinable(self, separator: Any, items: Any) -> list[Any]:
        collected: list[Any] = list(items)
        self._check(
            sum(len(item) for item in collected if isinstance(item, _SIZED))
            + len(separator) * max(len(collected) - 1, 0),
            "join()",
        )
        return collected

    def _str_format(self, text: str, is_map: bool) -> Callable[..., str]:
        def bounded(*args: Any, **kwargs: Any) -> str:
            if isinstance(text, Markup):
                formatter: _BoundedFormatter = _BoundedEscapeFormatter(self, escape=text.escape)
            else:
                formatter = _BoundedFormatter(self)
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                mapping: Any = args[0]
                return type(text)(formatter.vformat(text, (), mapping))
            return type(text)(formatter.vformat(text, args, kwargs))

        return bounded

    # -- filters ------------------------------------------------------------------------------

    def _checked(self, function: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(function)  # keeps jinja's pass_* markers
        def checked(*args: Any, **kwargs: Any) -> Any:
            return self.sized(function(*args, **kwargs), f"the {name} filter's result")

        return checked

    def _measured(self, function: Callable[..., Any], factor: int) -> Callable[..., Any]:
        @functools.wraps(function)
        def measured(value: Any, *args: Any, **kwargs: Any) -> Any:
            self.measure(value, self.max_chars // factor)
            return function(value, *args, **kwargs)

        return measured

    def _tojson(self, value: Any, indent: int | None = None) -> Markup:
        if indent is not None and not 0 <= indent <= 8:
            raise _LimitExceeded("a tojson() indent above 8")
        self.measure(value, self.max_chars // (1 + (indent or 0)))
        return htmlsafe_json_dumps(value, indent=indent, sort_keys=True)

    def _join(self, value: Any, d: Any = "", attribute: Any = None) -> str:
        if attribute is not None:
            value = map(make_attrgetter(self, attribute), value)
        separator = self.to_text(d)
        parts, total = [], -len(separator)
        for item in value:
            text = self.to_text(item)
            total += len(text) + len(separator)
            if total > self.max_chars:
                raise self._fail_size("join()")
            parts.append(text)
        return separator.join(parts)

    def _format(self, value: Any, *args: Any, **kwargs: Any) -> str:
        if args and kwargs:
            raise TypeError("format() takes positional or keyword arguments, not both")
        formatted: str = self._percent(self.to_text(value), kwargs or args)
        return formatted

    def _center(self, value: Any, width: int = 80) -> str:
        if isinstance(width, int):
            self._check(width, "center()")
        return self.to_text(value).center(width)

    def _indent(
        self, s: Any, width: int | str = 4, first: bool = False, blank: bool = False
    ) -> str:
        text = self.to_text(s)
        pad = len(width) if isinstance(width, str) else width
        if isinstance(pad, int):
            self._check(len(text) + (len(text.splitlines()) + 1) * pad, "indent()")
        return do_indent(text, width, first, blank)

    def _wordwrap(
        self,
        s: Any,
        width: int = 79,
        break_long_words: bool = True,
        wrapsep: str | None = None,
        break_on_hyphens: bool = True,
    ) -> str:
        separator = self.newline_sequence if wrapsep is None else self.to_text(wrapsep)
        wrapped = do_wordwrap(
            self, self.to_text(s), width, break_long_words, "\n", break_on_hyphens
        )
        breaks = wrapped.count("\n")
        self._check(len(wrapped) + breaks * (len(separator) - 1), "wordwrap()")
        return wrapped.replace("\n", separator) if separator != "\n" else wrapped

    def _replace(self, s: Any, old: Any, new: Any, count: int | None = None) -> str:
        text, old, new = self.to_text(s), self.to_text(old), self.to_text(new)
        count = -1 if count is None else count
        self._check(_replaced_length(text, old, new, count), "replace()")
        return text.replace(old, new, count)

    def _sum(self, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
        if attribute is not None:
            iterable = map(make_attrgetter(self, attribute), iterable)
        items = list(iterable)
        if isinstance(start, _SIZED):
            self._check(len(start) + sum(len(i) for i in items if isinstance(i, _SIZED)), "sum()")
            if isinstance(start, list) and all(isinstance(i, list) for i in items):
                return [*start, *chain.from_iterable(items)]  # linear, not quadratic
        return sum(items, start)

    def _batch(self, value: Any, linecount: int, fill_with: Any = None) -> Any:
        self._check(linecount, "batch()")
        return do_batch(value, linecount, fill_with)

    def _slice(self, value: Any, slices: int, fill_with: Any = None) -> Any:
        self._check(slices, "slice()")
        return sync_do_slice(value, slices, fill_with)

    # -- rendering ----------------------------------------------------------------------------

    def render_source(self, source: str, names: Mapping[str, Any]) -> str:
        template: Template = self._compiled(source)
        token = _BUDGET.set(_Budget(self.max_iterations))
        try:
            chunks, total = [], 0
            for chunk in template.root_render_func(template.new_context(dict(names))):
                total += len(chunk)
                if total > self.max_chars:
                    raise _LimitExceeded(f"output longer than {self.max_chars} characters")
                chunks.append(chunk)
            return "".join(chunks)
        finally:
            _BUDGET.reset(token)


def _length(value: Any) -> int:
    return len(value._range) if isinstance(value, _Range) else len(value)


def _replaced_length(text: Any, old: Any, new: Any, count: Any) -> int:
    """The length of ``text.replace(old, new, count)``, without building it."""
    try:
        found = text.count(old) if old else len(text) + 1
    except TypeError:
        return 0  # the replace itself will say what is wrong
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old)) if isinstance(new, str | bytes) else 0


_PARSER = _BoundedSandbox(RenderLimits())
_SANDBOXES: dict[RenderLimits, _BoundedSandbox] = {}


def render_template(
    source: str,
    data: Mapping[str, Any],
    *,
    limits: RenderLimits | None = None,
    kit: TemplateKit | None = None,
) -> Rendered:
    """Render ``source`` over ``data`` (and the kit's names) in this process, within every
    limit but the time limit and the memory cap, which the pool's workers add. Raises
    :class:`RenderError`."""
    limits = limits or RenderLimits()
    if len(source) > MAX_TEMPLATE_CHARS:
        raise RenderError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
    sandbox = _SANDBOXES.get(limits)
    if sandbox is None:
        sandbox = _SANDBOXES[limits] = _BoundedSandbox(limits)
    try:
        output = sandbox.render_source(source, {**data, **(kit.names if kit else {})})
        effects = kit.effects() if kit else None
        if effects is not None:
            sandbox.measure(effects, sandbox.max_chars * MAX_EFFECTS_FACTOR)
    except KitError as error:
        raise RenderError(str(error)) from None
    except _LimitExceeded as error:
        raise RenderError(f"template stopped: {error}") from None
    except RecursionError:
        raise RenderError("template stopped: recursion too deep") from None
    except MemoryError:
        raise RenderError("template stopped: out of memory") from None
    except TemplateSyntaxError as error:
        raise RenderError(syntax_problem(error)) from None
    except SecurityError as error:
        raise RenderError(f"template not allowed: {error}") from None
    except UndefinedError as error:
        raise RenderError(f"template error: {error.message}") from None
    except TemplateError as error:
        raise RenderError(f"template error: {error}") from None
    except Exception as error:  # a Python error inside an expression: 1/0, int('x'), ...
        raise RenderError(f"template error: {type(error).__name__}: {error}") from None
    return Rendered(output, effects)


# -- the pool -----------------------------------------------------------------------------------


ACK = b"+\n"  # a worker's first answer to a request: it has it (so it was alive)
CPU_FACTOR = 10  # a render's processor time, at most this many times the time limit


def worker_cpu_seconds(timeout_seconds: float) -> int:
    """The processor time a worker may spend on one render before the kernel ends it
    (``RLIMIT_CPU``): far past the time limit, so only a worker whose pool is gone (a dead
    server) ever meets it, and it then stops instead of spinning forever."""
    return max(10, math.ceil(timeout_seconds * CPU_FACTOR))


def encode_frame(message: Any) -> bytes:
    """One message on a worker's pipe: its length in bytes on a line, then the JSON."""
    payload = json.dumps(message, ensure_ascii=True, default=str).encode()
    return b"%d\n" % len(payload) + payload


class _WorkerGone(Exception):
    """The worker's pipes closed: it exited or was killed (``while_idle``: before it was given
    the request, so the request can go to another worker)."""

    def __init__(self, *, while_idle: bool = False) -> None:
        super().__init__()
        self.while_idle = while_idle


class _Worker:
    def __init__(
        self, process: asyncio.subprocess.Process, max_reply: int, settings: TemplateSettings
    ) -> None:
        if process.stdin is None or process.stdout is None:  # pragma: no cover - always piped
            raise RuntimeError("a render worker needs pipes")
        self.process = process
        self.settings = settings  # the limits it was started with
        self.requests: asyncio.StreamWriter = process.stdin
        self.replies: asyncio.StreamReader = process.stdout
        self.max_reply = max_reply

    @property
    def pid(self) -> int:
        return self.process.pid

    async def receive(self) -> Any:
        try:
            header = await self.replies.readline()
            if not header.strip().isdigit() or int(header) > self.max_reply:
                raise _WorkerGone()
            return json.loads(await self.replies.readexactly(int(header)))
        except (asyncio.IncompleteReadError, ValueError) as error:
            raise _WorkerGone() from error

    async def exchange(self, request: bytes) -> Any:
        try:
            self.requests.write(request)
            await self.requests.drain()
            if await self.replies.readline() != ACK:
                raise _WorkerGone(while_idle=True)
        except (BrokenPipeError, ConnectionResetError) as error:
            raise _WorkerGone(while_idle=True) from error
        return await self.receive()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class FairShares:
    """Who renders next, so that one account cannot starve the others of workers.

    The rule: an owner (an account) holds at most ``per_owner`` of the ``slots`` at once (the
    pool gives each account half its workers, at least one); a freed slot goes to the
    longest-waiting render whose owner is under its share, so an owner at its share waits
    behind everyone else. A render without an owner (``None``) is held to no share.

    An account whose renders all run until killed thus delays only its own renders: with two
    workers or more, another account finds a worker free (unless other accounts use the rest);
    with one, it waits for the render in progress only, not for the hostile account's queue."""

    def __init__(self, slots: int, per_owner: int) -> None:
        self.free = slots
        self.per_owner = per_owner
        self.held: dict[Hashable, int] = {}  # owner -> slots it holds
        self._waiting: list[tuple[Hashable | None, asyncio.Future[None]]] = []

    @property
    def waiting(self) -> list[Hashable | None]:
        """The owners of the waiting renders, in the order they came."""
        return [owner for owner, future in self._waiting if not future.done()]

    def _may_take(self, owner: Hashable | None) -> bool:
        return owner is None or self.held.get(owner, 0) < self.per_owner

    def _take(self, owner: Hashable | None) -> None:
        self.free -= 1
        if owner is not None:
            self.held[owner] = self.held.get(owner, 0) + 1

    async def acquire(self, owner: Hashable | None) -> None:
        """Wait for a slot for ``owner``; cancelled, it takes none."""
        if self.free > 0 and self._may_take(owner):
            self._take(owner)  # no one who may take a slot is waiting: see _dispatch
            return
        entry = (owner, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        try:
            await entry[1]
        except BaseException:
            if entry[1].done() and not entry[1].cancelled():
                self.release(owner)  # given a slot, then cancelled before it could use it
            else:
                self._waiting.remove(entry)
            raise

    def release(self, owner: Hashable | None) -> None:
        self.free += 1
        if owner is not None:
            left = self.held[owner] - 1
            if left:
                self.held[owner] = left
            else:
                del self.held[owner]
        self._dispatch()

    def _dispatch(self) -> None:
        index = 0
        while self.free > 0 and index < len(self._waiting):
            owner, future = self._waiting[index]
            if future.done() or not self._may_take(owner):
                index += 1  # cancelled (its waiter removes it), or its owner at its share
                continue
            del self._waiting[index]
            self._take(owner)
            future.set_result(None)


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a render worker: only what Python needs (``PATH``, the locale, the
    ``PYTHON*`` variables that find and run the code) and coverage's ``COVERAGE_*`` variables
    (so measured runs measure the workers too); never the server's secrets (the secret key,
    the database URL, the platform's provider key: every ``RENUM_*`` variable)."""
    return {
        name: value
        for name, value in environ.items()
        if name in _WORKER_VARIABLES or name.startswith(("LC_", "COVERAGE_"))
    }


_WORKER_VARIABLES = frozenset(
    {
        "PATH",
        "LD_LIBRARY_PATH",  # an interpreter built with a shared libpython may need it
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONPYCACHEPREFIX",
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONSAFEPATH",
        "PYTHONNOUSERSITE",
    }
)


class TemplateRenderer:
    """A small pool of render workers; see the module's docstring. Usable from one event loop
    (the one it first renders on); ``close()`` ends its workers."""

    def __init__(self, settings: TemplateSettings, kits: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.kits = dict(kits or {})
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self.shares = FairShares(settings.workers, max(1, settings.workers // 2))
        self._reaping: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.started = 0  # workers started so far (replacements included)

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers."""
        return sorted(worker.pid for worker in self._live)

    async def render(
        self,
        source: str,
        data: Mapping[str, Any],
        *,
        kit: str | None = None,
        kit_data: Any = None,
        owner: Hashable | None = None,
    ) -> Rendered:
        """Render ``source`` over ``data`` (JSON data) in a worker; with ``kit``, its
        functions too, made from ``kit_data``. ``owner`` (the account whose template it is)
        holds at most its share of the workers (see :class:`FairShares`). Raises
        :class:`RenderError`."""
        if kit is not None and kit not in self.kits:
            raise ValueError(f"unknown template kit {kit!r}")
        if len(source) > MAX_TEMPLATE_CHARS:
            raise RenderError(f"template longer than {MAX_TEMPLATE_CHARS} characters")
        request = encode_frame({"source": source, "data": data, "kit": kit, "kit_data": kit_data})
        await self.shares.acquire(owner)
        try:
            reply = await self._exchange(request)
        finally:
            self.shares.release(owner)
        if not reply.get("ok"):
            raise RenderError(str(reply.get("reason") or "template error"))
        return Rendered(str(reply.get("output", "")), reply.get("effects"))

    def reconfigure(self, settings: TemplateSettings) -> None:
        """Apply new limits (a live reload of the settings): the time limit from the next
        render, the size, iteration and memory limits through workers started with them. Idle
        workers are replaced at once, busy ones after their render; the pool's size changes
        only with a restart. Call it on the renderer's event loop."""
        settings = settings.model_copy(update={"workers": self.settings.workers})
        if settings == self.settings:
            return
        self.settings = settings
        for worker in list(self._idle):
            self._discard(worker)
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self.warm())
            self._reaping.add(task)
            task.add_done_callback(self._reaping.discard)

    async def warm(self) -> None:
        """Start idle workers up to the pool's size, so the first renders do not wait for a
        worker to start (about half a second each); the app's lifespan runs it in the
        background."""
        while not self._closed and len(self._live) < self.settings.workers:
            try:
                worker = await self._start()
            except RenderError:
                return  # logged by _start; renders will try again when they need a worker
            if self._closed:
                self._discard(worker)
                return
            if worker.settings is not self.settings:
                self._discard(worker)  # started before a reconfigure: replaced by the loop
                continue
            self._idle.append(worker)

    async def _exchange(self, request: bytes) -> Any:
        for _attempt in range(2):
            if self._closed:
                raise RenderError("template stopped: the renderer is shutting down")
            worker = self._idle.pop() if self._idle else await self._start()
            deadline = asyncio.timeout(self.settings.timeout_seconds)
            try:
                async with deadline:
                    reply = await worker.exchange(request)
            except _WorkerGone as gone:
                self._discard(worker)
                if gone.while_idle:
                    continue  # killed from outside while idle: the request goes to a new one
                log.warning("template_worker_died", pid=worker.pid)
                raise RenderError("template stopped: the renderer crashed") from None
            except TimeoutError:
                self._discard(worker)
                if not deadline.expired():
                    raise
                log.info("template_worker_killed", pid=worker.pid, reason="time limit")
                raise RenderError(
                    f"template stopped: rendering took longer than "
                    f"{self.settings.timeout_seconds:g} s"
                ) from None
            except BaseException:  # cancelled (a step's budget, a cancel): the worker is busy
                self._discard(worker)
                raise
            if worker.settings is self.settings:
                self._idle.append(worker)
            else:
                self._discard(worker)  # started with limits a reload has since changed
            return reply
        raise RenderError("template stopped: the renderer crashed")  # pragma: no cover

    async def _start(self) -> _Worker:
        config = {
            "max_output_chars": self.settings.max_output_chars,
            "max_iterations": self.settings.max_iterations,
            "memory_mb": self.settings.memory_mb,
            "cpu_seconds": worker_cpu_seconds(self.settings.timeout_seconds),
            "kits": self.kits,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_MODULE,
            json.dumps(config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=worker_environment(os.environ),
        )
        max_reply = 8 * self.settings.max_output_chars * (2 + MAX_EFFECTS_FACTOR) + 65_536
        worker = _Worker(process, max_reply, self.settings)
        self._live.add(worker)
        self.started += 1
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                ready = await worker.receive()
            if ready != {"ready": True}:
                raise _WorkerGone()
        except (TimeoutError, _WorkerGone):
            self._discard(worker)
            log.error("template_worker_start_failed", pid=worker.pid)
            raise RenderError("template stopped: the renderer could not start") from None
        except BaseException:
            self._discard(worker)
            raise
        return worker

    def _discard(self, worker: _Worker) -> None:
        """Kill the worker (if it still runs) and reap it in the background."""
        self._live.discard(worker)
        with contextlib.suppress(ValueError):
            self._idle.remove(worker)
        worker.kill()
        task = asyncio.get_running_loop().create_task(worker.process.wait())
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        """End every worker: idle ones see their stdin close and exit normally."""
        self._closed = True
        workers = list(self._live)
        self._live.clear()
        self._idle.clear()
        for worker in workers:
            worker.requests.close()
        waits = [asyncio.ensure_future(w.process.wait()) for w in workers]
        if waits:
            _, late = await asyncio.wait(waits, timeout=CLOSE_TIMEOUT_SECONDS)
            for worker, wait in zip(workers, waits, strict=True):
                if wait in late:
                    worker.kill()
            await asyncio.gather(*waits, return_exceptions=True)
        await asyncio.gather(*self._reaping, return_exceptions=True)
