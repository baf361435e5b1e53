"""Rendering a model's chat template with bounded work.

A chat template is a small program shipped in the model's files. transformers renders it in
jinja's immutable sandbox, which keeps it away from Python's internals but not from work: two
nested `range(100000)` loops run for hours, `'x' * 100000000` takes 100 MB at a stroke, and a
string doubled in a loop takes gigabytes a minute. memecap renders it in the same sandbox with the
same options, filters and globals as transformers (so prompts are byte-identical), and bounds the
work: at most MAX_SECONDS, no range longer than MAX_RANGE, no value and no output longer than
MAX_CHARS, at most MAX_MADE characters made in all. Loops, calls, filters, arithmetic, `~` and
output are checked as they run; the operations that could make a large value in one step (`*`,
`**`, `%`, `+`, joins, replacements, paddings and widths) are checked before they run. Going
past a limit, or past the sandbox, stops the render with one line naming the template's file.
"""
from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Optional

import jinja2
from jinja2 import nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

MAX_SECONDS = 2.0
MAX_CHARS = 1_000_000  # one value (characters of a string, or items and their characters) and the output
MAX_MADE = 20 * MAX_CHARS  # every value the template makes, in all: what a loop of large values can hold
MAX_RANGE = 10_000  # jinja's sandbox allows 100,000
LARGE_NUMBER = re.compile(r"\d{%d,}" % len(str(MAX_CHARS)))  # a width or precision of MAX_CHARS or more


@dataclass(frozen=True)
class ChatTemplate:
    text: str
    source: str  # the file it was read from, for messages


class ChatTemplateError(ValueError):
    """A chat template failed, went past a limit or past the sandbox."""


class _Exceeded(Exception):
    """A limit was reached; the message says which."""


class _Budget:
    """The work one render may still do."""

    def __init__(self):
        self.deadline = time.monotonic() + MAX_SECONDS
        self.made = self.written = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Exceeded(f"ran past {MAX_SECONDS:g} s")

    def count(self, size: int, what: str = "made") -> None:
        if what == "written":
            self.written += size
            if self.written > MAX_CHARS:
                raise _Exceeded(f"wrote more than {MAX_CHARS:,} characters")
        self.made += size
        if self.made > MAX_MADE:
            raise _Exceeded(f"made more than {MAX_MADE:,} characters of values")


_BUDGET: contextvars.ContextVar[Optional[_Budget]] = contextvars.ContextVar("memecap_template_budget", default=None)


def _tick() -> None:
    budget = _BUDGET.get()
    if budget is not None:  # None while jinja folds constants at compile time: only sizes are checked then
        budget.tick()


def _count(value, what: str = "made") -> None:
    size = size_of(value)
    if size > MAX_CHARS:
        raise _Exceeded(f"made a value of more than {MAX_CHARS:,} characters")
    budget = _BUDGET.get()
    if budget is not None:
        budget.count(size, what)


def size_of(value, limit: int = MAX_CHARS, depth: int = 0) -> int:
    """About how many characters `value` takes written out (a container: its items' and one per item),
    counted up to just past `limit`."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    if isinstance(value, Namespace):
        value = object.__getattribute__(value, "_Namespace__attrs")
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if not isinstance(value, (list, tuple, set, frozenset)):
        return 1  # numbers, None, undefined, functions, generators (their items are checked as they are made)
    if depth > 32:
        return limit + 1  # deeper than any template's data
    total = len(value)
    for item in value:
        if total > limit:
            break
        total += size_of(item, limit - total, depth + 1)
    return total


def _refuse_big(*values) -> None:
    """No value larger than MAX_CHARS (a list of many references to one long string counts as written out)."""
    if any(size_of(v) > MAX_CHARS for v in values):
        raise _Exceeded(f"made a value of more than {MAX_CHARS:,} characters")


def _refuse_big_counts(*values) -> None:
    """No count or width (a number given to a padding, repeating or batching operation) of MAX_CHARS or more."""
    if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= MAX_CHARS for v in values):
        raise _Exceeded(f"asked for a count or width of {MAX_CHARS:,} or more")


def _refuse_big_result(estimate: int) -> None:
    if estimate > MAX_CHARS:
        raise _Exceeded(f"would make a value of more than {MAX_CHARS:,} characters")


def _refuse_big_format(fmt: str) -> None:
    if LARGE_NUMBER.search(fmt):
        raise _Exceeded(f"asked for a count or width of {MAX_CHARS:,} or more")


def _weight(value) -> int:
    """What an argument can multiply a result by: a number its value, anything else its size."""
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value)
    return size_of(value)


def _listed(value):
    """A one-pass iterator (a generator a filter returned) as a list, so that it can be measured and
    still be used; anything else as it is."""
    return list(value) if isinstance(value, Iterator) else value


def _joined_size(items, separator) -> int:
    items = items if isinstance(items, (list, tuple)) else list(items)
    return size_of(items) + size_of(separator) * len(items)


def _check_binop(operator: str, left, right) -> None:
    """Before `left operator right`: the size of what it would make."""
    _refuse_big(left, right)
    if operator == "*":
        count, item = (right, left) if isinstance(right, int) else (left, right)
        if isinstance(count, int) and not isinstance(item, (int, float)):
            _refuse_big_result(size_of(item) * max(count, 0))
        elif isinstance(count, int) and isinstance(item, int):
            _refuse_big_result(size_of(count) + size_of(item))
    elif operator == "**" and isinstance(left, int) and isinstance(right, int):
        _refuse_big_result(abs(right) * max(left.bit_length(), 1) // 3)
    elif operator == "+":
        _refuse_big_result(size_of(left) + size_of(right))
    elif operator == "%" and isinstance(left, str):
        _refuse_big_format(left)
        if "*" in left:  # widths taken from the arguments
            _refuse_big_counts(*(right if isinstance(right, tuple) else (right,)))


def _check_str_method(method, args: tuple, kwargs: dict) -> None:
    """Before calling a method of a string: a join or a replacement by what it makes, a format by
    its widths, the rest by the string's length times its weightiest argument (none makes more)."""
    text, name = method.__self__, method.__name__
    if name == "join" and args:
        _refuse_big_result(_joined_size(args[0], text))
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _refuse_big_result(len(text) + (text.count(args[0]) + 1) * len(args[1]))
    elif name in ("format", "format_map"):
        _refuse_big_format(text)
        fields = args[0].values() if name == "format_map" and args and isinstance(args[0], dict) else ()
        _refuse_big_counts(*args, *kwargs.values(), *fields)  # widths given as `{:{}}`
    else:
        _refuse_big_result(len(text) * max((_weight(a) for a in (*args, *kwargs.values())), default=1))


# Filters whose result can be far longer than their input: checked by input size times their arguments.
EXPANDING_FILTERS = ("center", "format", "indent", "pprint", "tojson", "urlize", "wordwrap")


def _checked_filter(name: str, function):
    """A filter that checks its arguments before and its result after (`functools.wraps` keeps
    jinja's pass_context / pass_eval_context marks, so it is called as the filter was)."""

    @functools.wraps(function)
    def checked(*args, **kwargs):
        _tick()
        lead = 0  # the context, evaluation context or environment jinja passes first
        while lead < len(args) and isinstance(args[lead], (Context, EvalContext, jinja2.Environment)):
            lead += 1
        args = (*args[:lead], *(_listed(a) for a in args[lead:]))
        values, options = args[lead:], (*args[lead + 1:], *kwargs.values())
        _refuse_big(*values, *kwargs.values())
        _refuse_big_counts(*options)
        if name == "join" and values:
            _refuse_big_result(_joined_size(values[0], values[1] if len(values) > 1 else ""))
        elif name == "replace" and len(values) >= 3 and all(isinstance(v, str) for v in values[:3]):
            _refuse_big_result(len(values[0]) + (values[0].count(values[1]) + 1) * len(values[2]))
        elif name in EXPANDING_FILTERS and values:
            if name == "format" and isinstance(values[0], str):
                _refuse_big_format(values[0])
            _refuse_big_result(size_of(values[0]) * (1 + sum(_weight(o) for o in options)))
        result = function(*args, **kwargs)
        _count(result)
        return result

    return checked


class _Counted:
    """A loop's items, each one a step of the render's time (jinja's LoopContext sees their length)."""

    def __init__(self, items):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for item in self.items:
            _tick()
            yield item


@pass_context
def _loop_items(context, items):
    return _Counted(items)


@pass_context
def _joined(context, parts):
    """`a ~ b`, as jinja joins it, its size checked first."""
    texts = [str(p) for p in parts]
    _refuse_big_result(sum(map(len, texts)))
    _count(texts)
    return "".join(texts)


@pass_context
def _written(context, value):
    """What an output tag writes, counted (whether it goes out or into a `set` block or macro)."""
    _tick()
    _count(value, "written")
    return value


# Filters memecap's rewriting of the template calls (a template may call them too: they only check).
ITER, JOIN, WRITE = "memecap_loop_items", "memecap_joined", "memecap_written"


class _Bounded(NodeTransformer):
    """Every loop's items counted, every `~` and output checked."""

    def visit_For(self, node: nodes.For) -> nodes.For:
        node = self.generic_visit(node)
        node.iter = _filter(node.iter, ITER)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        node = self.generic_visit(node)
        return _filter(nodes.List(node.nodes, lineno=node.lineno), JOIN)

    def visit_Output(self, node: nodes.Output) -> nodes.Output:
        node = self.generic_visit(node)
        node.nodes = [n if isinstance(n, nodes.TemplateData) else _filter(n, WRITE) for n in node.nodes]
        return node


def _filter(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`, which transformers' templates may use to mark the
    assistant's part: written as it is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _TemplateNamespace(Namespace):
    """`namespace()`, refusing names that start with an underscore (as transformers' does)."""

    def __init__(*args, **kwargs):
        self, values = args[0], dict(*args[1:], **kwargs)
        for name in values:
            _TemplateNamespace._check(name)
        Namespace.__init__(self, values)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a namespace may not hold the name {name!r}")


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)`, and nothing else of the dict class."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _range(*args):
    try:
        items = range(*args)
        length = len(items)
    except OverflowError:
        length = MAX_RANGE + 1
    if length > MAX_RANGE:
        raise _Exceeded(f"asked for a range of more than {MAX_RANGE:,} items")
    return items


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja's immutable sandbox as transformers sets it up for chat templates, every step counted."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self):
        # Not `optimized`: jinja's optimizer would run filters on constants while compiling, outside any budget.
        super().__init__(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols],
                         optimized=False)
        self.filters["tojson"] = _tojson
        self.filters = {name: _checked_filter(name, f) for name, f in self.filters.items()}
        self.filters.update({ITER: _loop_items, JOIN: _joined, WRITE: _written})
        self.globals.update(range=_range, raise_exception=_raise_exception, strftime_now=_strftime_now,
                            dict=_TemplateDict(), namespace=_TemplateNamespace)

    def call_binop(self, context, operator, left, right):
        _tick()
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _count(result)
        return result

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature
        _tick()
        _refuse_big(*args, *kwargs.values())
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        if isinstance(getattr(method, "__self__", None), str):
            if method.__name__ == "join" and args:
                args = (_listed(args[0]), *args[1:])
            _check_str_method(method, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        _count(result)
        return result

    def getattr(self, obj, attribute):
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _tick()
        return super().getitem(obj, argument)


@functools.lru_cache(maxsize=16)
def _compiled(text: str) -> jinja2.Template:
    env = BoundedSandbox()
    tree = _Bounded().visit(env.parse(text))
    tree.set_environment(env)
    return env.from_string(tree)


def render_chat(template: ChatTemplate, messages: list, tokenizer, add_generation_prompt: bool = False) -> str:
    """The conversation as `tokenizer.apply_chat_template(..., tokenize=False)` renders it with this
    template, within the limits above; a failure is a ChatTemplateError naming the template's file."""
    token = _BUDGET.set(_Budget())
    try:
        variables = {**_special_tokens(tokenizer), "messages": messages, "tools": None, "documents": None,
                     "add_generation_prompt": add_generation_prompt}
        return _compiled(template.text).render(**variables)
    except _Exceeded as err:
        raise ChatTemplateError(f"{template.source}: the chat template {err} (memecap bounds a template's work); "
                                "use the model's published template") from None
    except SecurityError as err:
        raise ChatTemplateError(f"{template.source}: the chat template did what the sandbox forbids ({_line(err)}); "
                                "use the model's published template") from None
    except (TemplateError, RecursionError, MemoryError, ArithmeticError, TypeError, ValueError, LookupError,
            AttributeError) as err:  # the template's own failure (raise_exception, a bad name): one line too
        raise ChatTemplateError(f"{template.source}: the chat template failed: {type(err).__name__}: "
                                f"{_line(err)}") from None
    finally:
        _BUDGET.reset(token)


def _special_tokens(tokenizer) -> dict[str, Any]:
    """The tokenizer's special tokens, which transformers hands every template (`bos_token`, ...)."""
    tokens = getattr(tokenizer, "special_tokens_map", None) or {}
    return {k: v for k, v in tokens.items()
            if isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, str) for t in v))}


def _line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]
