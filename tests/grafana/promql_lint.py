"""A small PromQL reader for the dashboard and rule tests: which metrics and labels a query uses.

It parses the subset of PromQL soakd's dashboards and rules are written in (selectors, ranges,
subqueries, offsets, functions, aggregations with by/without, binary operators with
on/ignoring/group_left/group_right) into the label set each sub-expression carries, and
reports every metric name and label that the metric catalogue (or a recording rule) does not
define. Prometheus itself (`promtool check rules`) checks the full syntax; this checks names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Prometheus' own series a soakd query may use, with their labels.
PROMETHEUS_SERIES: dict[str, frozenset[str]] = {"up": TARGET_LABELS}

AGGREGATORS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                         "count_values", "bottomk", "topk", "quantile", "limitk",
                         "limit_ratio"})
PARAM_AGGREGATORS = frozenset({"count_values", "bottomk", "topk", "quantile", "limitk",
                               "limit_ratio"})
KEEP_LABEL_AGGREGATORS = frozenset({"bottomk", "topk", "limitk", "limit_ratio"})

# Functions that return their (last) vector argument's labels.
LABEL_KEEPING = frozenset({
    "abs", "ceil", "floor", "round", "exp", "ln", "log2", "log10", "sqrt", "sgn", "clamp",
    "clamp_min", "clamp_max", "rate", "irate", "increase", "delta", "idelta", "deriv",
    "predict_linear", "resets", "changes", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "present_over_time",
    "stddev_over_time", "stdvar_over_time", "quantile_over_time", "mad_over_time", "timestamp",
    "sort", "sort_desc", "holt_winters", "double_exponential_smoothing", "absent",
    "absent_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "hour",
    "minute", "month", "year", "histogram_count", "histogram_sum", "histogram_avg",
    "histogram_fraction", "histogram_stddev", "histogram_stdvar",
})
SCALAR_FUNCTIONS = frozenset({"time", "scalar", "pi"})

BINARY_PRECEDENCE = {
    "or": 1, "and": 2, "unless": 2,
    "==": 3, "!=": 3, "<=": 3, "<": 3, ">=": 3, ">": 3,
    "+": 4, "-": 4,
    "*": 5, "/": 5, "%": 5, "atan2": 5,
    "^": 6,
}
SET_OPERATORS = frozenset({"and", "or", "unless"})
COMPARISONS = frozenset({"==", "!=", "<=", "<", ">=", ">"})

_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*(?![a-zA-Z0-9_]))
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![a-zA-Z0-9_.]))
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|=~|!~|<=|>=|[-+*/%^<>=(){},@])
""", re.VERBOSE)


class PromQLError(ValueError):
    """The text is not PromQL this reader understands."""


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r}")
        pos = match.end()
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(Token(kind, match.group()))
    return tokens


@dataclass
class Value:
    """What an expression evaluates to: a scalar, a string, or a vector with these labels."""

    kind: str  # scalar | string | vector | matrix
    labels: frozenset[str] = frozenset()
    text: str = ""  # a string literal's value


@dataclass
class Report:
    """Metric names and labels found in one expression, and what the catalogue lacks."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    result: Value = field(default_factory=lambda: Value("scalar"))


class _Parser:
    def __init__(self, expr: str, series: Mapping[str, frozenset[str]], report: Report) -> None:
        self.tokens = tokenize(expr)
        self.pos = 0
        self.series = series
        self.report = report

    # -- token helpers
    def peek(self, offset: int = 0) -> Token | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def peek_text(self) -> str | None:
        token = self.peek()
        return None if token is None else token.text

    def next(self) -> Token:
        token = self.peek()
        if token is None:
            raise PromQLError("unexpected end of expression")
        self.pos += 1
        return token

    def accept(self, text: str) -> bool:
        token = self.peek()
        if token is not None and token.text == text and token.kind in ("op", "ident"):
            self.pos += 1
            return True
        return False

    def expect(self, text: str) -> None:
        token = self.next()
        if token.text != text:
            raise PromQLError(f"expected {text!r}, got {token.text!r}")

    def error(self, message: str) -> None:
        self.report.errors.append(message)

    def check_labels(self, labels: Iterable[str], available: frozenset[str], where: str) -> None:
        for label in labels:
            self.report.labels.add(label)
            if label not in available:
                self.error(f"label {label!r} in {where} is not exported "
                           f"(available: {', '.join(sorted(available)) or 'none'})")

    # -- grammar
    def parse(self) -> Value:
        value = self.expression(0)
        if self.peek() is not None:
            raise PromQLError(f"unexpected {self.peek()!r}")
        return value

    def expression(self, min_precedence: int) -> Value:
        left = self.unary()
        while True:
            token = self.peek()
            if token is None or token.kind not in ("op", "ident") \
                    or token.text not in BINARY_PRECEDENCE:
                return left
            precedence = BINARY_PRECEDENCE[token.text]
            if precedence < min_precedence:
                return left
            self.pos += 1
            is_bool = self.accept("bool")
            matching = self.vector_matching()
            # ^ is right-associative, the others left-associative.
            right = self.expression(precedence if token.text == "^" else precedence + 1)
            left = self.binary(token.text, left, right, matching, is_bool)

    def vector_matching(self) -> tuple[str, list[str], str, list[str]] | None:
        """on/ignoring (labels) [group_left/group_right [(labels)]] after a binary operator."""
        kind = self.peek_text()
        if kind not in ("on", "ignoring"):
            return None
        self.pos += 1
        labels = self.label_list()
        group, extra = "", []
        if self.peek_text() in ("group_left", "group_right"):
            group = self.next().text
            if self.peek_text() == "(":
                extra = self.label_list()
        return kind, labels, group, extra

    def unary(self) -> Value:
        if self.accept("-") or self.accept("+"):
            return self.unary()
        return self.postfix(self.primary())

    def postfix(self, value: Value) -> Value:
        while True:
            token = self.peek()
            if token is None:
                return value
            if token.kind == "range":
                self.pos += 1
                value = Value("matrix", value.labels)
            elif token.kind == "ident" and token.text == "offset":
                self.pos += 1
                self.accept("-")
                self.next()  # a duration
            elif token.text == "@":
                self.pos += 1
                start = self.next()
                if start.text in ("start", "end"):
                    self.expect("(")
                    self.expect(")")
            else:
                return value

    def primary(self) -> Value:
        token = self.next()
        if token.kind == "number" or (token.kind == "ident"
                                      and token.text.lower() in ("inf", "nan")):
            return Value("scalar")
        if token.kind == "string":
            return Value("string", text=token.text[1:-1])
        if token.text == "(":
            value = self.expression(0)
            self.expect(")")
            return value
        if token.text == "{":
            return self.selector(None)
        if token.kind != "ident":
            raise PromQLError(f"unexpected {token.text!r}")
        name = token.text
        following = self.peek()
        if name in AGGREGATORS and following is not None and following.text in (
                "(", "by", "without"):
            return self.aggregation(name)
        if following is not None and following.text == "(":
            return self.function(name)
        return self.selector(name)

    def label_list(self) -> list[str]:
        self.expect("(")
        labels: list[str] = []
        while not self.accept(")"):
            token = self.next()
            if token.kind not in ("ident", "string"):
                raise PromQLError(f"expected a label name, got {token.text!r}")
            labels.append(token.text.strip("\"'"))
            if not self.accept(","):
                self.expect(")")
                break
        return labels

    def selector(self, name: str | None) -> Value:
        matchers: list[tuple[str, str, str]] = []
        if self.accept("{"):
            while not self.accept("}"):
                label = self.next()
                op = self.next()
                value = self.next()
                if op.text not in ("=", "!=", "=~", "!~") or value.kind != "string":
                    raise PromQLError(f"bad matcher {label.text}{op.text}{value.text}")
                matchers.append((label.text.strip("\"'"), op.text, value.text[1:-1]))
                if not self.accept(","):
                    self.expect("}")
                    break
        if name is None:
            names = [v for label, op, v in matchers if label == "__name__" and op == "="]
            if not names:
                self.error("a selector without a metric name")
                return Value("vector", frozenset())
            name = names[0]
        self.report.metrics.add(name)
        available = self.series.get(name)
        if available is None:
            self.error(f"metric {name!r} is not exported by soakd or recorded by a rule")
            available = frozenset(label for label, _, _ in matchers)
        available = available | {"__name__"}
        self.check_labels([label for label, _, _ in matchers], available, f"{name}{{...}}")
        return Value("vector", available - {"__name__"})

    def arguments(self) -> list[Value]:
        self.expect("(")
        args: list[Value] = []
        while not self.accept(")"):
            args.append(self.expression(0))
            if not self.accept(","):
                self.expect(")")
                break
        return args

    def function(self, name: str) -> Value:
        args = self.arguments()
        vectors = [a for a in args if a.kind in ("vector", "matrix")]
        strings = [a.text for a in args if a.kind == "string"]
        if name in SCALAR_FUNCTIONS:
            return Value("scalar")
        if name == "vector":
            return Value("vector", frozenset())
        if name == "histogram_quantile":
            if len(vectors) != 1:
                raise PromQLError("histogram_quantile needs one vector")
            if "le" not in vectors[0].labels:
                self.error("histogram_quantile over a vector without an le label")
            return Value("vector", vectors[0].labels - {"le"})
        if name in ("label_replace", "label_join"):
            if len(vectors) != 1 or len(strings) < 2:
                raise PromQLError(f"bad {name} call")
            # label_replace(v, dst, replacement, src, regex); label_join(v, dst, sep, src...)
            sources = strings[2:3] if name == "label_replace" else strings[2:]
            self.check_labels([s for s in sources if s], vectors[0].labels, f"{name}()")
            return Value("vector", vectors[0].labels | {strings[0]})
        if name in LABEL_KEEPING:
            if not vectors:
                raise PromQLError(f"{name} needs a vector argument")
            return Value("vector", vectors[-1].labels)
        raise PromQLError(f"unknown function {name!r}")

    def aggregation(self, name: str) -> Value:
        grouping: tuple[str, list[str]] | None = None
        if self.peek_text() in ("by", "without"):
            grouping = (self.next().text, self.label_list())
        args = self.arguments()
        if self.peek_text() in ("by", "without"):
            grouping = (self.next().text, self.label_list())
        inner = args[-1]
        if inner.kind != "vector":
            raise PromQLError(f"{name} needs an instant vector")
        if grouping is not None:
            self.check_labels(grouping[1], inner.labels, f"{name} {grouping[0]} (...)")
        if name in KEEP_LABEL_AGGREGATORS:
            return Value("vector", inner.labels)
        kept: frozenset[str]
        if grouping is None:
            kept = frozenset()
        elif grouping[0] == "by":
            kept = frozenset(grouping[1])
        else:
            kept = inner.labels - set(grouping[1])
        if name == "count_values" and args[0].kind == "string":
            kept = kept | {args[0].text}
        return Value("vector", kept)

    def binary(self, op: str, left: Value, right: Value,
               matching: tuple[str, list[str], str, list[str]] | None, is_bool: bool) -> Value:
        if left.kind == "scalar" and right.kind == "scalar":
            return Value("scalar")
        if left.kind == "scalar":
            return right
        if right.kind == "scalar":
            return left
        both = left.labels | right.labels
        if op in SET_OPERATORS:
            if matching is not None:
                self.check_labels(matching[1], both, f"{op} {matching[0]} (...)")
            return Value("vector", both if op == "or" else left.labels)
        if matching is None:
            return Value("vector", left.labels)
        kind, labels, group, extra = matching
        self.check_labels(labels, both, f"{op} {kind} (...)")
        if group == "group_left":
            self.check_labels(extra, right.labels, f"{op} group_left (...)")
            return Value("vector", left.labels | set(extra))
        if group == "group_right":
            self.check_labels(extra, left.labels, f"{op} group_right (...)")
            return Value("vector", right.labels | set(extra))
        if op in COMPARISONS and not is_bool:
            return Value("vector", left.labels)
        kept = left.labels & set(labels) if kind == "on" else left.labels - set(labels)
        return Value("vector", kept)


def catalogue_series() -> dict[str, frozenset[str]]:
    """Every sample name soakd exports, with the labels a scraped sample of it carries."""
    from daemon.metric_catalog import METRICS, exposed_names

    series: dict[str, frozenset[str]] = dict(PROMETHEUS_SERIES)
    for metric in METRICS:
        for name in exposed_names(metric):
            labels = set(metric.labels) | TARGET_LABELS
            if name.endswith("_bucket") and metric.kind == "histogram":
                labels.add("le")
            series[name] = frozenset(labels)
    return series


def analyze(expr: str, series: Mapping[str, frozenset[str]]) -> Report:
    """Metrics, labels and problems of one PromQL expression against the known series."""
    report = Report()
    try:
        report.result = _Parser(expr, series, report).parse()
    except PromQLError as exc:
        report.errors.append(f"cannot parse: {exc}")
    return report


def recorded_series(rules: Iterable[tuple[str, str]],
                    series: Mapping[str, frozenset[str]]) -> tuple[dict[str, frozenset[str]],
                                                                    dict[str, list[str]]]:
    """Add each recording rule's output, in file order, to the known series.

    Returns the extended series map and each rule's problems.
    """
    known = dict(series)
    problems: dict[str, list[str]] = {}
    for record, expr in rules:
        report = analyze(expr, known)
        problems[record] = report.errors
        known[record] = report.result.labels
    return known, problems
