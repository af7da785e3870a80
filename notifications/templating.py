"""Notification templates: one per organization x kind x locale, a part per channel, rendered in a
sandbox. Resolution (recipient locale -> organization default -> "en"), validation on save,
rendering with a time and size budget, and the template services.

The sandbox is Jinja2's ImmutableSandboxedEnvironment (no attribute starting with "_", no
mutation of lists and dicts, no unsafe callables), with no loader (no include, import or extends:
rejected at save), StrictUndefined, and autoescape for HTML parts only. On top of it:
- a render deadline: a watchdog thread raises `RenderTimeout` in the rendering thread
  (PyThreadState_SetAsyncExc), which CPython delivers between bytecodes, so a template looping for
  seconds stops at the deadline whatever it loops over, at no cost when it does not loop;
- size budgets, since one C-level operation (`'x' * 10**9`, `s.replace('', s)`, a join of
  100,000 copies) is never interrupted: every operation that can amplify a string is checked
  *before* it runs (binary operators, string methods, filters, `~` and output buffers), and the
  output of each field is capped.
"""
import ctypes
import functools
import heapq
import itertools
import json
import os
import re
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.runtime import markup_join as _markup_join
from jinja2.runtime import str_join as _str_join
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment, safe_range

from config.errors import ApplicationError, Conflict, NotFound
from config.rawrows import RowReader
from notifications.categories import CATEGORIES, CATEGORY_NAMES
from notifications.errors import NotificationsError
from notifications.models import NotificationTemplate
from organizations.models import Organization

E = NotificationsError

# The fields of each channel's part. A field is template text, except the structured ones: push
# `data` (an object of string values) and webhook `json` (any JSON), whose string leaves are
# templates and which render to the same structure.
PART_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "text", "html"),
    "sms": ("text",),
    "push": ("title", "body", "data"),
    "slack": ("text",),
    "inapp": ("title", "body"),
    "webhook": ("json",),
    "whatsapp": ("text",),
}
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "text"), "sms": ("text",), "push": ("title",), "slack": ("text",),
    "inapp": ("title",), "webhook": ("json",), "whatsapp": ("text",),
}
STRUCTURED_FIELDS = {("push", "data"), ("webhook", "json")}
HTML_FIELDS = {("email", "html")}

KIND_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
LOCALE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}$")
VARIABLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
MAX_VARIABLES = 100
DEFAULT_LOCALE = "en"
_TEMPLATE_FILENAME = "<template>"


def _limit(name: str, default):
    return getattr(settings, name, default)


def max_source_chars() -> int:
    return int(_limit("TEMPLATE_MAX_SOURCE_CHARS", 20_000))


def max_output_chars() -> int:
    return int(_limit("TEMPLATE_MAX_OUTPUT_CHARS", 100_000))


def render_timeout_seconds() -> float:
    return float(_limit("TEMPLATE_RENDER_TIMEOUT_SECONDS", 1.0))


def locale_normalize(value: str) -> str:
    """"pt_br" -> "pt-BR", "EN" -> "en" (language lower case, a two-letter region upper case)."""
    parts = value.strip().replace("_", "-").split("-")
    parts[0] = parts[0].lower()
    return "-".join([parts[0]] + [p.upper() if len(p) == 2 else p for p in parts[1:]])


def _locale_chain(locale: str | None) -> list[str]:
    if not locale:
        return []
    locale = locale_normalize(locale)
    language = locale.split("-", 1)[0]
    return [locale, language] if language != locale else [locale]


def locale_candidates(*, locale: str | None, organization_locale: str | None) -> list[str]:
    """The locales tried in order: the recipient's (then its language), the organization's default
    (then its language), then "en"."""
    chain: list[str] = []
    for candidate in [*_locale_chain(locale), *_locale_chain(organization_locale), DEFAULT_LOCALE]:
        if candidate not in chain:
            chain.append(candidate)
    return chain


# --- the sandbox --------------------------------------------------------------------------------


class TemplateLimitError(Exception):
    """An operation would exceed the render's size budget (raised before it runs)."""


class RenderTimeout(BaseException):
    """Raised asynchronously in a thread whose render passed its deadline. A BaseException, so no
    `except Exception` in the template runtime swallows it."""


def _check_size(size: int) -> None:
    if size > max_output_chars():
        raise TemplateLimitError(f"a value of {size} characters exceeds the limit of {max_output_chars()}")


_INT_BITS_MAX = 4096
_PRINTF_WIDE = re.compile(r"%[-+ #0]*(\*|\d{5,})|%[-+ #0]*\d*\.(\*|\d{5,})")
_FORMAT_WIDE = re.compile(r"\{[^{}]*:[^{}]*\d{5,}[^{}]*\}|\{[^{}]*:[^{}]*\{")


def _sized(value) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple, bytes)) else None


def _check_binop(operator: str, left, right) -> None:
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            size = _sized(seq)
            if size is not None and isinstance(n, int):
                _check_size(size * max(n, 0))
        if isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() + right.bit_length() > _INT_BITS_MAX:
            raise TemplateLimitError("integer too large")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                max(left.bit_length(), 1) * right > _INT_BITS_MAX and abs(left) > 1:
            raise TemplateLimitError("integer too large")
    elif operator == "+":
        a, b = _sized(left), _sized(right)
        if a is not None and b is not None:
            _check_size(a + b)
    elif operator == "%" and isinstance(left, str) and _PRINTF_WIDE.search(left):
        raise TemplateLimitError("format width too large")


_WIDTH_METHODS = {"center", "ljust", "rjust", "zfill"}


def _check_str_method(name: str, text: str, args: tuple, kwargs: dict) -> tuple:
    """Estimate what a str method would produce before calling it; returns args to call it with
    (a materialized iterable for join)."""
    if name in _WIDTH_METHODS:
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            _check_size(width)
    elif name == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tabsize, int):
            _check_size(len(text) + text.count("\t") * max(tabsize, 0))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        count = text.count(args[0]) if args[0] else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        _check_size(len(text) + count * max(len(args[1]) - len(args[0]), 0))
    elif name == "join" and args:
        items = list(itertools.islice(args[0], MAX_RANGE + 1))
        if len(items) > MAX_RANGE:
            raise TemplateLimitError("too many items to join")
        _check_size(sum(len(i) if isinstance(i, str) else 0 for i in items) + len(text) * max(len(items) - 1, 0))
        args = (items, *args[1:])
    return args


def _checked_join(join):
    def checked(seq):
        items = list(seq)
        _check_size(sum(len(i) if isinstance(i, str) else 0 for i in items))
        result = join(items)
        _check_size(len(result))
        return result
    return checked


def _checked_filter(name: str, func):
    """A built-in filter behind the size budget: arguments that amplify are checked first, the
    result after."""

    @functools.wraps(func)
    def checked(*args, **kwargs):
        skip = 1 if getattr(func, "jinja_pass_arg", None) else 0  # the context or environment comes first
        value = args[skip] if len(args) > skip else None
        rest = args[skip + 1:]
        if name in ("center", "indent", "truncate", "wordwrap", "batch", "slice"):
            for n in [*rest, *kwargs.values()]:
                if isinstance(n, int) and n > (MAX_RANGE if name in ("batch", "slice") else max_output_chars()):
                    raise TemplateLimitError(f"{name}: argument too large")
            if name == "indent" and isinstance(value, str):
                width = rest[0] if rest else kwargs.get("width", 4)
                if isinstance(width, int):
                    _check_size(len(value) + (value.count("\n") + 1) * width)
        elif name == "replace" and isinstance(value, str) and len(rest) >= 2:
            _check_str_method("replace", value, tuple(str(r) if isinstance(r, str) else r for r in rest), {})
        elif name == "format" and isinstance(value, str) and _PRINTF_WIDE.search(value):
            raise TemplateLimitError("format width too large")
        elif name == "join" and value is not None:
            items = list(itertools.islice(value, MAX_RANGE + 1))
            if len(items) > MAX_RANGE:
                raise TemplateLimitError("too many items to join")
            sep = rest[0] if rest else kwargs.get("d", "")
            _check_size(sum(len(i) if isinstance(i, str) else 0 for i in items)
                        + len(sep if isinstance(sep, str) else "") * max(len(items) - 1, 0))
            args = (*args[:skip], items, *args[skip + 1:])
        result = func(*args, **kwargs)
        size = _sized(result)
        if size is not None:
            _check_size(size)
        return result

    return checked


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, html: bool):
        super().__init__(undefined=StrictUndefined, autoescape=html, loader=None, auto_reload=False,
                         cache_size=0, extensions=())
        # Only what a notification needs; no lipsum (CPU), cycler/joiner/namespace (state across
        # loop iterations), nothing that reaches Python internals.
        self.globals = {"range": safe_range, "dict": dict}
        self.filters = {name: _checked_filter(name, func) for name, func in self.filters.items()}
        self.concat = _checked_join("".join)  # joins the output buffers of macros and {% set %} blocks

        base = self.template_class

        class SandboxTemplate(base):
            @classmethod
            def _from_namespace(cls, environment, namespace, globals):
                # The compiled module joins `~` (and, with autoescape, buffers) with these: checked
                # before they allocate.
                namespace["str_join"] = _checked_join(_str_join)
                namespace["markup_join"] = _checked_join(_markup_join)
                return super()._from_namespace(environment, namespace, globals)

        self.template_class = SandboxTemplate

    def call_binop(self, context, operator, left, right):
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)
        if wrapped is not None and _FORMAT_WIDE.search(value.__self__):
            def refuse(*args, **kwargs):
                raise TemplateLimitError("format width too large")
            return refuse
        return wrapped

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            args = _check_str_method(getattr(__obj, "__name__", ""), owner, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        size = _sized(result)
        if size is not None:
            _check_size(size)
        return result


_TEXT_ENV = _Sandbox(html=False)
_HTML_ENV = _Sandbox(html=True)


def _env(channel: str, field: str) -> _Sandbox:
    return _HTML_ENV if (channel, field) in HTML_FIELDS else _TEXT_ENV


@functools.lru_cache(maxsize=2048)
def _compile(source: str, html: bool):
    return (_HTML_ENV if html else _TEXT_ENV).from_string(source)


# --- the render deadline ------------------------------------------------------------------------

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = [ctypes.c_ulong, ctypes.py_object]


class _Guard:
    __slots__ = ("thread_id", "deadline", "done", "fired")

    def __init__(self, thread_id: int, deadline: float):
        self.thread_id = thread_id
        self.deadline = deadline
        self.done = False
        self.fired = False


class _Watchdog:
    """One thread per process that interrupts renders past their deadline."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []
        self._counter = itertools.count()
        self._pid = None
        self._thread = None

    def arm(self, seconds: float) -> _Guard:
        guard = _Guard(threading.get_ident(), time.monotonic() + seconds)
        with self._cond:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                # First use, or a forked child (Celery prefork) that did not inherit the thread.
                self._heap = []
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="template-watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (guard.deadline, next(self._counter), guard))
            self._cond.notify()
        return guard

    def disarm(self, guard: _Guard) -> None:
        with self._cond:
            guard.done = True
            if guard.fired:
                # The exception may still be pending (the render ended right at the deadline):
                # clear it so it never surfaces in unrelated code.
                _set_async_exc(guard.thread_id, ctypes.py_object())

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                guard = heapq.heappop(self._heap)[2]
                guard.fired = True
                _set_async_exc(guard.thread_id, ctypes.py_object(RenderTimeout))


_WATCHDOG = _Watchdog()


# --- validation ---------------------------------------------------------------------------------


def _invalid(code: str, message: str, **extra) -> ApplicationError:
    return ApplicationError(message, code=code, extra=extra)


def _leaves(value, path: str = ""):
    """(path, text) of every string leaf of a structured field."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")


def _check_source(*, channel: str, field: str, path: str, source: str, declared: set[str]) -> None:
    where = {"channel": channel, "field": field, **({"path": path} if path else {})}
    if len(source) > max_source_chars():
        raise _invalid(E.TEMPLATE_TOO_LARGE, f"{channel}.{field} is longer than {max_source_chars()} characters.",
                       **where, line=None)
    env = _env(channel, field)
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        raise _invalid(E.TEMPLATE_SYNTAX_ERROR, f"{channel}.{field}, line {exc.lineno}: {exc.message}",
                       **where, line=exc.lineno, detail=exc.message) from None
    for node in ast.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)):
        raise _invalid(E.TEMPLATE_FORBIDDEN,
                       f"{channel}.{field}, line {node.lineno}: include, import and extends are not available.",
                       **where, line=node.lineno, detail=node.__class__.__name__.lower())
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else (
            node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None)
        if name is not None and name.startswith("_"):
            raise _invalid(E.TEMPLATE_FORBIDDEN,
                           f"{channel}.{field}, line {node.lineno}: attributes starting with '_' are not available.",
                           **where, line=node.lineno, detail=name)
    for node in ast.find_all(nodes.Filter):
        if node.name not in env.filters:
            raise _invalid(E.TEMPLATE_SYNTAX_ERROR, f"{channel}.{field}, line {node.lineno}: no filter {node.name!r}.",
                           **where, line=node.lineno, detail=f"no filter named {node.name!r}")
    for node in ast.find_all(nodes.Test):
        if node.name not in env.tests:
            raise _invalid(E.TEMPLATE_SYNTAX_ERROR, f"{channel}.{field}, line {node.lineno}: no test {node.name!r}.",
                           **where, line=node.lineno, detail=f"no test named {node.name!r}")
    undeclared = meta.find_undeclared_variables(ast) - declared - set(env.globals)
    if undeclared:
        lines = {n.name: n.lineno for n in reversed(list(ast.find_all(nodes.Name))) if n.name in undeclared}
        name = min(undeclared, key=lambda n: (lines.get(n, 0), n))
        raise _invalid(E.TEMPLATE_UNDECLARED_VARIABLE,
                       f"{channel}.{field}, line {lines.get(name)}: {name!r} is not a declared variable.",
                       **where, line=lines.get(name), variable=name, declared=sorted(declared))


def template_validate(*, kind: str, locale: str, category: str, variables: list, parts: dict) -> dict:
    """Check a template before it is saved; returns the normalized fields. Every error is a 400
    naming the channel, field and line."""
    if not isinstance(kind, str) or not KIND_RE.match(kind):
        raise _invalid(E.INVALID_TEMPLATE, "kind must be a lower-case slug (letters, digits, '_', '.', '-').",
                       fields={"kind": ["Invalid slug."]})
    if not isinstance(locale, str) or not LOCALE_RE.match(locale_normalize(locale)):
        raise _invalid(E.INVALID_TEMPLATE, "locale must be a language tag such as 'en' or 'pt-BR'.",
                       fields={"locale": ["Invalid language tag."]})
    if category not in CATEGORIES:
        raise _invalid(E.UNKNOWN_CATEGORY, f"Unknown category {category!r}.", category=category,
                       choices=list(CATEGORY_NAMES))
    if not isinstance(variables, list) or len(variables) > MAX_VARIABLES or \
            not all(isinstance(v, str) and VARIABLE_RE.match(v) for v in variables):
        raise _invalid(E.INVALID_TEMPLATE, f"variables must be a list of up to {MAX_VARIABLES} names "
                       "(a letter, then letters, digits or '_').", fields={"variables": ["Invalid names."]})
    if not isinstance(parts, dict) or not parts:
        raise _invalid(E.INVALID_TEMPLATE, "parts must have at least one channel.",
                       fields={"parts": ["At least one channel."]})
    declared = set(variables)
    for channel, part in parts.items():
        if channel not in PART_FIELDS:
            raise _invalid(E.UNKNOWN_CHANNEL, f"Templates have no part for channel {channel!r}.", channel=channel,
                           choices=list(PART_FIELDS))
        if not isinstance(part, dict):
            raise _invalid(E.INVALID_TEMPLATE, f"parts.{channel} must be an object of fields.", channel=channel)
        unknown = sorted(set(part) - set(PART_FIELDS[channel]))
        if unknown:
            raise _invalid(E.INVALID_TEMPLATE, f"parts.{channel} has no field {unknown[0]!r}.", channel=channel,
                           field=unknown[0], choices=list(PART_FIELDS[channel]))
        missing = [f for f in REQUIRED_FIELDS[channel] if not part.get(f)]
        if missing:
            raise _invalid(E.INVALID_TEMPLATE, f"parts.{channel}.{missing[0]} is required.", channel=channel,
                           field=missing[0])
        for field, value in part.items():
            if (channel, field) in STRUCTURED_FIELDS:
                if channel == "push" and not (isinstance(value, dict) and all(isinstance(v, str)
                                                                               for v in value.values())):
                    raise _invalid(E.INVALID_TEMPLATE, "parts.push.data must be an object of strings.",
                                   channel=channel, field=field)
                if len(json.dumps(value)) > max_source_chars():
                    raise _invalid(E.TEMPLATE_TOO_LARGE, f"{channel}.{field} is too large.", channel=channel,
                                   field=field, line=None)
                for path, text in _leaves(value):
                    _check_source(channel=channel, field=field, path=path, source=text, declared=declared)
            elif not isinstance(value, str):
                raise _invalid(E.INVALID_TEMPLATE, f"parts.{channel}.{field} must be template text.",
                               channel=channel, field=field)
            else:
                _check_source(channel=channel, field=field, path="", source=value, declared=declared)
    return {"kind": kind, "locale": locale_normalize(locale), "category": category, "variables": variables,
            "parts": parts}


# --- rendering ----------------------------------------------------------------------------------


def _template_line(exc: BaseException, template, stream=None) -> int | None:
    """The template line an exception came from: Jinja rewrites tracebacks of ordinary errors to
    template lines; an asynchronous timeout carries the generated code's line, mapped back (or,
    when it struck between two chunks of output, the line where the template is suspended)."""
    line = None
    inner = getattr(stream, "gi_yieldfrom", None)
    if isinstance(exc, RenderTimeout) and getattr(inner, "gi_frame", None) is not None and template is not None:
        line = template.get_corresponding_lineno(inner.gi_frame.f_lineno)
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == _TEMPLATE_FILENAME and lineno is not None:
            line = lineno
            if isinstance(exc, RenderTimeout) and template is not None:
                line = template.get_corresponding_lineno(lineno)
    return line


@dataclass
class _Budget:
    deadline: float


def _render_text(*, channel: str, field: str, path: str, source: str, data: dict, budget: _Budget) -> str:
    where = {"channel": channel, "field": field, **({"path": path} if path else {})}
    template = stream = None
    try:
        template = _compile(source, (channel, field) in HTML_FIELDS)
        if time.monotonic() > budget.deadline:
            raise RenderTimeout()
        out: list[str] = []
        size = 0
        limit = max_output_chars()
        stream = template.generate(**data)
        for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise TemplateLimitError(f"the output exceeds {limit} characters")
            out.append(chunk)
        return "".join(out)
    except RenderTimeout as exc:
        raise ApplicationError(f"{channel}.{field} did not finish rendering within {render_timeout_seconds()} s.",
                               code=E.TEMPLATE_RENDER_ERROR,
                               extra={**where, "line": _template_line(exc, template, stream),
                                      "reason": "timeout"}) from None
    except TemplateSyntaxError as exc:
        raise ApplicationError(f"{channel}.{field}, line {exc.lineno}: {exc.message}", code=E.TEMPLATE_RENDER_ERROR,
                               extra={**where, "line": exc.lineno, "reason": "syntax"}) from None
    except (TemplateError, TemplateLimitError, ArithmeticError, TypeError, ValueError, LookupError,
            AttributeError, RecursionError, MemoryError) as exc:
        line = _template_line(exc, template)
        if isinstance(exc, SecurityError):
            reason = "security"
        elif isinstance(exc, UndefinedError):
            reason = "undefined"
        elif isinstance(exc, TemplateLimitError):
            reason = "too_large"
        else:
            reason = "error"
        message = str(exc) or exc.__class__.__name__
        raise ApplicationError(f"{channel}.{field}, line {line}: {message}"[:500], code=E.TEMPLATE_RENDER_ERROR,
                               extra={**where, "line": line, "reason": reason, "detail": message[:300]}) from None


def _render_structure(value, *, channel: str, field: str, data: dict, budget: _Budget, path: str = ""):
    if isinstance(value, str):
        return _render_text(channel=channel, field=field, path=path, source=value, data=data, budget=budget)
    if isinstance(value, dict):
        return {k: _render_structure(v, channel=channel, field=field, data=data, budget=budget,
                                     path=f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_structure(v, channel=channel, field=field, data=data, budget=budget, path=f"{path}[{i}]")
                for i, v in enumerate(value)]
    return value


def template_render(*, template: NotificationTemplate, data: dict,
                    channels: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Render the template's parts (all, or those of `channels` it has) with `data`:
    {channel: {field: text}}; structured fields (push `data`, webhook `json`) render to their
    structure with every string leaf rendered. Only declared variables are visible. Raises
    ApplicationError `template_render_error` with extra {channel, field, line, reason}."""
    if not isinstance(data, dict):
        raise ApplicationError("data must be an object.", code=E.TEMPLATE_RENDER_ERROR,
                               extra={"channel": None, "field": None, "line": None, "reason": "data"})
    declared = set(template.variables or [])
    visible = {k: v for k, v in data.items() if k in declared}
    wanted = None if channels is None else set(channels)
    seconds = render_timeout_seconds()
    budget = _Budget(deadline=time.monotonic() + seconds)
    result: dict[str, dict[str, Any]] = {}
    guard = _WATCHDOG.arm(seconds)
    try:
        try:
            for channel, part in template.parts.items():
                if wanted is not None and channel not in wanted:
                    continue
                rendered: dict[str, Any] = {}
                for field, value in part.items():
                    if (channel, field) in STRUCTURED_FIELDS:
                        rendered[field] = _render_structure(value, channel=channel, field=field, data=visible,
                                                            budget=budget)
                    else:
                        rendered[field] = _render_text(channel=channel, field=field, path="", source=value,
                                                       data=visible, budget=budget)
                result[channel] = rendered
        finally:
            _WATCHDOG.disarm(guard)
    except RenderTimeout:  # delivered after a field finished, between two fields
        raise ApplicationError(f"The template did not finish rendering within {seconds} s.",
                               code=E.TEMPLATE_RENDER_ERROR,
                               extra={"channel": None, "field": None, "line": None, "reason": "timeout"}) from None
    return result


# --- resolution ---------------------------------------------------------------------------------


def template_resolve(*, organization_id: int, kind: str, locale: str | None) -> NotificationTemplate:
    """The organization's template of `kind` for `locale`: the recipient's locale (or its
    language), else the organization's default locale, else "en". One query."""
    return template_resolve_locales(organization_id=organization_id, kind=kind, locales=[locale])[locale]


# Every send resolves its template: the organization's default locale and the kind's templates in
# one statement, written out (config.rawrows). All locales of the kind come back (an organization
# has a few per kind); the chain picks among them.
_TEMPLATE_ROW = RowReader(NotificationTemplate, "t")


def _templates_sql() -> str:
    return (f"SELECT o.locale, {_TEMPLATE_ROW.columns} FROM organizations_organization o "
            "LEFT JOIN notifications_notificationtemplate t ON t.organization_id = o.id AND t.kind = %s "
            "WHERE o.id = %s")


def template_resolve_locales(*, organization_id: int, kind: str,
                             locales: Iterable[str | None]) -> dict[str | None, NotificationTemplate]:
    """template_resolve for several recipient locales at once (a send's recipients): one query
    whatever their number. Raises `unknown_template` if any of them resolves to nothing."""
    locales = list(dict.fromkeys(locales))
    with connection.cursor() as cursor:
        cursor.execute(_templates_sql(), [kind, organization_id])
        rows = cursor.fetchall()
    organization_locale = rows[0][0] if rows else None
    found = {t.locale: t for t in (_TEMPLATE_ROW.build(row[1:]) for row in rows if row[1] is not None)}
    result = {}
    for loc in locales:
        chain = locale_candidates(locale=loc, organization_locale=organization_locale)
        template = next((found[c] for c in chain if c in found), None)
        if template is None:
            # 400, not 404: the caller named a kind (a send's input), not a resource of the URL.
            raise ApplicationError(f"No template {kind!r} for locale {loc or organization_locale or DEFAULT_LOCALE!r}.",
                                   code=E.UNKNOWN_TEMPLATE, extra={"kind": kind, "locale": loc, "tried": chain})
        result[loc] = template
    return result


def template_list(*, organization_id: int, kind: str | None = None, locale: str | None = None):
    rows = NotificationTemplate.objects.filter(organization_id=organization_id).order_by("kind", "locale", "id")
    if kind:
        rows = rows.filter(kind=kind)
    if locale:
        rows = rows.filter(locale=locale_normalize(locale))
    return rows


def template_get(*, organization_ids, id: int) -> NotificationTemplate:
    """A template of one of `organization_ids` (another organization's: 404)."""
    template = NotificationTemplate.objects.filter(id=id, organization_id__in=organization_ids).first()
    if template is None:
        raise NotFound("Template not found.", code=E.TEMPLATE_NOT_FOUND)
    return template


# --- services -----------------------------------------------------------------------------------


def _exists(organization_id: int, kind: str, locale: str) -> Conflict:
    return Conflict(f"This organization already has a {kind!r} template for {locale!r}.", code=E.TEMPLATE_EXISTS,
                    extra={"kind": kind, "locale": locale})


def template_create(*, organization: Organization, kind: str, locale: str, category: str, parts: dict,
                    variables: list | None = None, description: str = "", created_by=None) -> NotificationTemplate:
    fields = template_validate(kind=kind, locale=locale, category=category, variables=variables or [], parts=parts)
    try:
        with transaction.atomic():
            return NotificationTemplate.objects.create(organization=organization, description=description,
                                                       created_by=created_by, **fields)
    except IntegrityError:
        raise _exists(organization.id, fields["kind"], fields["locale"]) from None


def template_update(*, template: NotificationTemplate, kind: str, locale: str, category: str, parts: dict,
                    variables: list | None = None, description: str = "") -> NotificationTemplate:
    """Replace the template's content (PUT); its version goes up by one."""
    fields = template_validate(kind=kind, locale=locale, category=category, variables=variables or [], parts=parts)
    for name, value in fields.items():
        setattr(template, name, value)
    template.description = description
    template.version += 1
    try:
        with transaction.atomic():
            template.save(update_fields=[*fields, "description", "version", "updated_at"])
    except IntegrityError:
        raise _exists(template.organization_id, fields["kind"], fields["locale"]) from None
    return template


@transaction.atomic
def template_delete(*, template: NotificationTemplate) -> None:
    template.delete()
