"""Just enough PromQL lexing to lint the dashboard and the alert rules.

No PromQL parser exists for Python, and the tests need only two facts about an
expression: which series selectors it holds (metric name and label matchers)
and which range each rate-like call uses. Syntax itself is checked by a real
Prometheus (tests/test_observability_static.py queries every expression), so
this lexer may be lenient about everything else.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d|\.\d)[\w.]*)      # numbers and durations such as 5m or 1e3
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>,(){}@])
  | (?P<other>\S)                      # e.g. a Grafana $variable left in the text
    """,
    re.VERBOSE,
)

# Words that are never metric names where they stand in our expressions.
_AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
        "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_OPERATOR_WORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2"})
RATE_FUNCTIONS = frozenset({"rate", "irate", "increase"})


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    """One instant or range vector selector: `name{label op "value", ...}`."""

    name: str | None
    matchers: tuple[Matcher, ...]

    def matches(self, label: str, op: str, value: str) -> bool:
        return Matcher(label, op, value) in self.matchers


def tokenize(expr: str) -> list[Token]:
    """Split an expression into tokens, dropping white space."""
    tokens = []
    for match in _TOKEN.finditer(expr):
        kind = match.lastgroup or "other"
        if kind != "space":
            tokens.append(Token(kind, match.group()))
    return tokens


def _closing(tokens: list[Token], start: int, open_: str, close: str) -> int:
    """Index of the token that closes the bracket opened at tokens[start]."""
    depth = 0
    for index in range(start, len(tokens)):
        if tokens[index].text == open_:
            depth += 1
        elif tokens[index].text == close:
            depth -= 1
            if depth == 0:
                return index
    raise ValueError(f"unbalanced {open_!r} in {' '.join(t.text for t in tokens)}")


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return str(ast.literal_eval(text))


def _matchers(tokens: list[Token]) -> tuple[Matcher, ...]:
    """Matchers from the tokens between `{` and `}`."""
    found = []
    parts = [t for t in tokens if t.text != ","]
    for index in range(0, len(parts) - 2, 3):
        label, op, value = parts[index : index + 3]
        if label.kind != "ident" or value.kind != "string":
            raise ValueError(f"cannot read matcher {label.text}{op.text}{value.text}")
        found.append(Matcher(label.text, op.text, _unquote(value.text)))
    return tuple(found)


def selectors(expr: str) -> list[Selector]:
    """Every series selector in `expr`, in order of appearance."""
    tokens = tokenize(expr)
    found: list[Selector] = []
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1].text if index + 1 < len(tokens) else ""
        if token.kind == "ident" and token.text in _GROUPING and following == "(":
            index = _closing(tokens, index + 1, "(", ")") + 1  # a label list, not series
            continue
        if token.kind == "ident" and not (
            following == "("
            or token.text in _AGGREGATIONS
            or token.text in _GROUPING
            or token.text in _OPERATOR_WORDS
        ):
            matchers: tuple[Matcher, ...] = ()
            if following == "{":
                end = _closing(tokens, index + 1, "{", "}")
                matchers = _matchers(tokens[index + 2 : end])
                index = end
            found.append(Selector(token.text, matchers))
        elif token.text == "{":  # a selector by matchers alone, e.g. {__name__="x"}
            end = _closing(tokens, index, "{", "}")
            matchers = _matchers(tokens[index + 1 : end])
            name = next((m.value for m in matchers if m.label == "__name__" and m.op == "="), None)
            found.append(Selector(name, matchers))
            index = end
        index += 1
    return found


def rate_ranges(expr: str) -> list[tuple[str, list[str]]]:
    """For each rate, irate or increase call: its name and the ranges inside it."""
    tokens = tokenize(expr)
    calls = []
    for index, token in enumerate(tokens[:-1]):
        if token.text in RATE_FUNCTIONS and tokens[index + 1].text == "(":
            end = _closing(tokens, index + 1, "(", ")")
            ranges = [t.text for t in tokens[index + 1 : end] if t.kind == "range"]
            calls.append((token.text, ranges))
    return calls
