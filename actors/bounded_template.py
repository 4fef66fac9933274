"""Prompt templates rendered within bounds: Jinja's immutable sandbox plus a per-row budget of length and work.

A template runs once per prompt on values from the data; the sandbox keeps it from Python's internals, these bounds
keep one row from taking the preprocessor's memory or time (issue #30: one line took 761 MB, two nested loops
10^10 iterations). **Length:** the prompt is streamed and stops as soon as it passes `max_chars`
(`source.max_prompt_chars`); every value an operation makes stays within it too, and the operations that make a long
value from short ones (`*`, `%`, `.format`, `center`, `replace`, `join`…) are checked *before* they run.
**Work:** each loop iteration, call, filter and intercepted operator is a step, `MAX_STEPS` a prompt; as no value is
over `max_chars`, no step costs more than a pass over that many characters. Past a bound: `TemplateLimit`.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import random
import re
import string
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.constants import LOREM_IPSUM_WORDS
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, pass_context

MAX_STEPS = 100_000
"""Loop iterations, calls, filters and operators one prompt may take: ~1000x what a sentence with a few loops
needs, and at most a fraction of a second (no step touches more than `max_chars` characters)."""
WRITES_PER_PROMPT_CHAR = 4
"""Characters a template may write at every level (macros, `set` and `call` blocks, the prompt), per character
the prompt may have: a macro's text is written once inside it and again where it is used."""
MAX_INT_BITS = 4096
"""Whole numbers a template computes stay under this size (about 1,200 digits): `9 ** 9 ** 9` is refused, not
computed."""
COUNTED = "imagefleet_counted"
"""The filter put around every loop's sequence: it counts the iterations."""


class TemplateLimit(ValueError):
    """A prompt's template went past a bound; the message names it (the row becomes an error row)."""


class Budget:
    """What one prompt's rendering may still spend."""

    def __init__(self, max_chars: int, values: dict[str, Any] | None = None) -> None:
        self.max_chars = max_chars
        self.steps = 0
        self.written = 0
        # `random` and `lipsum` draw from the row's own values: the same row gives the same prompt in every run
        # and process (so the same image key: a rerun never buys a new image for an old row)
        seed = hashlib.sha256(repr(sorted((values or {}).items())).encode()).digest()
        self.rng = random.Random(int.from_bytes(seed[:8], "big"))

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateLimit(f"over {MAX_STEPS:,} steps (loop iterations, calls, filters) for one prompt; "
                                f"loop over less")

    def write(self, chars: int) -> None:
        self.written += chars
        if self.written > WRITES_PER_PROMPT_CHAR * self.max_chars:
            raise TemplateLimit(f"wrote over {WRITES_PER_PROMPT_CHAR * self.max_chars:,} characters for one prompt "
                                f"(macros and blocks included; source.max_prompt_chars={self.max_chars:,})")

    def allow(self, size: int, what: str) -> None:
        """Refuse an operation that would make a value over the limit, before it runs."""
        if size > self.max_chars:
            raise TemplateLimit(f"{what} would make {size:,} characters or items; the limit is {self.max_chars:,} "
                                f"(source.max_prompt_chars)")

    def fits(self, value: Any, what: str) -> Any:
        """`value` when it is within the limits (a check after an operation that grows its inputs at most
        linearly)."""
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"{what} made a number of over {MAX_INT_BITS} bits")
        if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
            self.allow(len(value), what)
        return value


_BUDGET: contextvars.ContextVar[Budget] = contextvars.ContextVar("imagefleet_template_budget")


def _budget() -> Budget:
    """The rendering prompt's budget. Outside a rendering (Jinja folding constants at compile time) nothing is
    evaluated: `Impossible` makes the compiler leave the expression for run time, where it is counted."""
    budget = _BUDGET.get(None)
    if budget is None:
        raise nodes.Impossible()
    return budget


def compile_template(text: str, max_chars: int) -> Callable[[dict[str, Any]], str]:
    """The template as a function of its names' values, rendering within the bounds (raises `TemplateLimit`, or
    Jinja's errors for bad values).

    Args:
        text: the Jinja template.
        max_chars: the prompt length limit; also the limit of every value and input.
    """
    template = _environment().from_string(text)

    def render(values: dict[str, Any]) -> str:
        for name, value in values.items():
            size = _input_size(value)
            if size > max_chars:
                raise TemplateLimit(f"{name!r} has {size:,} characters; the limit is {max_chars:,} "
                                    f"(source.max_prompt_chars)")
        token = _BUDGET.set(Budget(max_chars, values))
        try:
            parts, length = [], 0
            for part in template.generate(values):  # streamed: stops at the limit, never writes past it
                length += len(part)
                if length > max_chars:
                    raise TemplateLimit(f"the prompt is over {max_chars:,} characters (source.max_prompt_chars); "
                                        f"writing stopped there")
                parts.append(part)
            return "".join(parts)
        finally:
            _BUDGET.reset(token)

    return render


def _input_size(value: Any) -> int:
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, (list, tuple)):  # a list column: its items and their text
        return len(value) + sum(len(v) for v in value if isinstance(v, (str, bytes)))
    return 0


@functools.cache
def _environment() -> BoundedEnvironment:
    return BoundedEnvironment()


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox (no `list.append` growing a value across iterations) with every loop, call,
    filter, output and growing operator counted against the rendering prompt's `Budget`."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False,
                         finalize=_written)
        self.filters = {name: _bounded_filter(name, fn) for name, fn in self.filters.items()}
        self.filters[COUNTED] = _counted
        self.filters["random"] = _bounded_filter("random", _row_random)
        self.globals.update(namespace=BoundedNamespace, lipsum=_lipsum)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then count: each loop iterates through `COUNTED`, and literal text is written through
        `finalize` like values are (Jinja writes literal text directly)."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            if loop.recursive:
                raise jinja2.TemplateSyntaxError("recursive loops are not supported in prompt templates",
                                                 loop.lineno, name, filename)
            loop.iter = nodes.Filter(loop.iter, COUNTED, [], [], None, None, lineno=loop.lineno)
        for output in tree.find_all(nodes.Output):
            output.nodes = [nodes.Const(n.data, lineno=n.lineno) if isinstance(n, nodes.TemplateData) else n
                            for n in output.nodes]
        tree.set_environment(self)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        if operator == "*":
            _check_product(budget, left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            budget.allow(_percent_size(left, right), "'%' formatting")
        return budget.fits(super().call_binop(context, operator, left, right), f"'{operator}'")

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        args = _check_method(budget, obj, args, kwargs)
        return budget.fits(super().call(context, obj, *args, **kwargs), "a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` / `format_map`: the sandbox's, with its widths checked first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        budget = _budget()
        for _, _, spec, _ in string.Formatter().parse(value.__self__):
            if spec and "{" in spec:
                raise TemplateLimit("nested format specs ('{:{width}}') are not supported in prompt templates")
            budget.allow(max(map(_number, re.findall(r"\d+", spec or "")), default=0), "str.format")
        return wrapped


class BoundedNamespace(Namespace):
    """`namespace()`: the one value a template can carry from one loop iteration to the next, so each assignment
    is checked (doubling a string 60 times would otherwise take 2^60 characters in 60 steps)."""

    def __setitem__(self, name: str, value: Any) -> None:
        super().__setitem__(name, _budget().fits(value, f"namespace value {name!r}"))


@pass_context
def _written(context: Any, value: Any) -> str:
    """Jinja's `finalize`: everything written, at any level, passes here and is counted (`pass_context` keeps the
    compiler from writing constants without it)."""
    text = value if isinstance(value, str) else str(value)
    _budget().write(len(text))
    return text


def _counted(values: Iterable[Any]) -> Iterator[Any]:
    budget = _budget()

    def iterate() -> Iterator[Any]:
        for value in values:
            budget.step()
            yield value

    return iterate()


def _row_random(seq: Any) -> Any:
    """Jinja's `random` filter, drawn from the row's values (Jinja's draws from the process: another prompt, so
    another image key, in every run)."""
    items = list(seq)
    if not items:
        raise ValueError("the 'random' filter got an empty sequence")
    return items[_budget().rng.randrange(len(items))]


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - Jinja's names
    """Jinja's `lipsum`: `n` paragraphs of `min`..`max` words, drawn from the row's values like `random`."""
    budget = _budget()
    budget.allow(int(n) * int(max) * 12, "lipsum")  # at most 12 characters a word
    words, rng, paragraphs = LOREM_IPSUM_WORDS.split(), budget.rng, []
    for _ in range(int(n)):
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(int(min), int(max))))
        paragraphs.append(text[:1].upper() + text[1:] + ".")
    return "\n".join(f"<p>{p}</p>" for p in paragraphs) if html else "\n\n".join(paragraphs)


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A built-in filter, counted as a step, checked before it runs where its arguments can make its result long,
    and after it runs for the rest (whose results grow at most linearly with their input)."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0  # context / environment comes first
    what = f"filter {name!r}"

    @functools.wraps(fn)  # keeps jinja_pass_arg, so Jinja passes the same arguments
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        if len(args) > skip:
            value, rest = args[skip], args[skip + 1:]
            budget.allow(_filter_size(name, value, rest, kwargs), what)
            if name == "join" and _arg(rest, kwargs, 1, "attribute") is None:  # its items, listed and measured
                args = (*args[:skip], _joined(budget, str(_arg(rest, kwargs, 0, "d", "")), value, what), *rest)
        return budget.fits(fn(*args, **kwargs), what)

    return bounded


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _number(digits: str) -> int:
    return int(digits) if len(digits) < 12 else 10**12  # past any limit, without parsing a million digits


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _percent_size(fmt: str, args: Any) -> int:
    """`'%*s' % (10**9, x)`: the largest width or precision in the format, or in the arguments `*` takes them
    from."""
    widths = [w for m in _PERCENT_SPEC.finditer(fmt) for w in m.groups() if w]
    most = max((_number(w) for w in widths if w != "*"), default=0)
    if "*" in widths:
        most = max([most, *(v for v in (args if isinstance(args, tuple) else (args,)) if isinstance(v, int))])
    return most


def _check_product(budget: Budget, left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"'*' would make a number of over {MAX_INT_BITS} bits")
        return
    for seq, times in ((left, right), (right, left)):
        if isinstance(times, int) and isinstance(seq, (str, bytes, list, tuple)):
            budget.allow(len(seq) * times, "'*'")


def _check_power(base: Any, exponent: Any) -> None:
    ints = isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
    if ints and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
        raise TemplateLimit(f"'**' would make a number of over {MAX_INT_BITS} bits")


def _replaced_size(text: str, old: Any, new: Any, count: Any = None) -> int:
    old, new = str(old), str(new)
    hits = len(text) + 1 if not old else text.count(old)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _joined(budget: Budget, sep: str, items: Any, what: str) -> list[Any]:
    """The items to join, listed, once their joined length is known to fit."""
    if hasattr(items, "__len__"):  # the separators alone, before listing 100,000 items
        budget.allow(len(sep) * max(len(items) - 1, 0), what)
    listed = list(items)
    text = sum(len(item) for item in listed if isinstance(item, str))
    budget.allow(text + len(sep) * max(len(listed) - 1, 0), what)
    return listed


def _check_method(budget: Budget, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The str methods that make a long string from a short one, checked before the call (`join` gets its items
    as a list, counted)."""
    text = getattr(obj, "__self__", None)
    if not isinstance(obj, types.BuiltinMethodType) or not isinstance(text, str):
        return args
    name, what = obj.__name__, f"str.{obj.__name__}"
    if name in ("center", "ljust", "rjust", "zfill"):
        budget.allow(int(_arg(args, kwargs, 0, "width", 0)), what)
    elif name == "expandtabs":
        budget.allow(len(text) + text.count("\t") * int(_arg(args, kwargs, 0, "tabsize", 8)), what)
    elif name == "replace":
        budget.allow(_replaced_size(text, *args[:3]), what)
    elif name == "join" and args:
        return (_joined(budget, text, args[0], what), *args[1:])
    elif name == "translate" and args and isinstance(args[0], dict):
        longest = max((len(v) for v in args[0].values() if isinstance(v, str)), default=1)
        budget.allow(len(text) * max(longest, 1), what)
    return args


def _filter_size(name: str, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """At most how many characters or items filter `name` makes of `value` where its arguments can make that
    much more than `value` has (0 for the other filters: their result grows at most linearly, checked after)."""
    arg = functools.partial(_arg, args, kwargs)
    if name == "center":
        return int(arg(0, "width", 80))
    if name in ("batch", "slice"):  # n lists, or n fill items
        return int(arg(0, "linecount" if name == "batch" else "slices", 1))
    if name == "format":
        return _percent_size(str(value), args)
    if name == "tojson" and arg(0, "indent") is not None:
        return (len(str(value)) + 1) * (int(arg(0, "indent")) + 1)  # an indent per item, at most
    if name == "sum" and not isinstance(arg(1, "start", 0), (int, float)):
        raise TemplateLimit("filter 'sum' adds numbers only in prompt templates (adding lists takes time "
                            "quadratic in their length)")
    if name not in ("indent", "wordwrap", "replace", "urlize"):
        return 0
    text = str(value)
    if name == "indent":
        width = arg(0, "width", 4)
        return len(text) + (text.count("\n") + 1) * (len(width) if isinstance(width, str) else int(width))
    if name == "wordwrap":  # a line ends at a space, a newline or the width
        lines = len(text) // max(int(arg(0, "width", 79)), 1) + text.count(" ") + text.count("\n") + 1
        return len(text) + lines * len(str(arg(2, "wrapstring") or "\n"))
    if name == "replace":
        return _replaced_size(text, arg(0, "old", ""), arg(1, "new", ""), arg(2, "count"))
    links = sum(1 for word in text.split() if "." in word or "@" in word or ":" in word)  # urlize
    return 2 * len(text) + links * (len(str(arg(2, "target") or "")) + len(str(arg(3, "rel") or "")) + 40)
