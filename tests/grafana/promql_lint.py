"""Which metrics and labels a PromQL query uses, checked against what soakd exports.

`promql-parser` (the Rust parser of GreptimeDB, Prometheus' grammar and function table) reads the
expression, so a query with a syntax error, an unknown function or an argument of the wrong type
(`rate()` of an instant vector) fails here already. This module walks its syntax tree to find
the label set each sub-expression carries and reports every metric name and label that the
metric catalogue (or a recording rule) does not define. Grafana's own interval variables
($__range, $__rate_interval, $__interval) stand in as 5m, as Grafana substitutes them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import promql_parser as pp

# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
# Prometheus' own series a soakd query may use, with their labels.
PROMETHEUS_SERIES: dict[str, frozenset[str]] = {"up": TARGET_LABELS}
# Aggregations that keep their input's labels (they pick series rather than combine them).
KEEP_LABEL_AGGREGATORS = frozenset({"bottomk", "topk", "limitk", "limit_ratio"})
SET_OPERATORS = frozenset({"and", "or", "unless"})
COMPARISONS = frozenset({"==", "!=", "<=", "<", ">=", ">"})
_GRAFANA_INTERVAL = re.compile(r"\$__(?:rate_interval|range|interval)\b")


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


class _Labels:
    """The label set of each node of a parsed expression, checked against the known series."""

    def __init__(self, series: Mapping[str, frozenset[str]], report: Report) -> None:
        self.series = series
        self.report = report

    def check(self, labels: Iterable[str], available: frozenset[str], where: str) -> None:
        for label in labels:
            self.report.labels.add(label)
            if label not in available:
                self.report.errors.append(f"label {label!r} in {where} is not exported "
                                          f"(available: {', '.join(sorted(available)) or 'none'})")

    def of(self, node: object) -> Value:
        if isinstance(node, pp.NumberLiteral):
            return Value("scalar")
        if isinstance(node, pp.StringLiteral):
            return Value("string", text=node.val)
        if isinstance(node, pp.ParenExpr | pp.UnaryExpr):
            return self.of(node.expr)
        if isinstance(node, pp.SubqueryExpr):
            return Value("matrix", self.of(node.expr).labels)
        if isinstance(node, pp.MatrixSelector):
            return Value("matrix", self.selector(node.vector_selector).labels)
        if isinstance(node, pp.VectorSelector):
            return self.selector(node)
        if isinstance(node, pp.Call):
            return self.call(node)
        if isinstance(node, pp.AggregateExpr):
            return self.aggregation(node)
        if isinstance(node, pp.BinaryExpr):
            return self.binary(node)
        raise TypeError(f"unexpected PromQL node {type(node).__name__}")

    def selector(self, node: pp.VectorSelector) -> Value:
        matchers = [(m.name, m.value) for m in node.matchers.matchers]
        name = node.name or next((value for label, value in matchers if label == "__name__"), None)
        if name is None:
            self.report.errors.append("a selector without a metric name")
            return Value("vector")
        self.report.metrics.add(name)
        available = self.series.get(name)
        if available is None:
            self.report.errors.append(f"metric {name!r} is not exported by soakd or recorded by a rule")
            available = frozenset(label for label, _ in matchers)
        self.check([label for label, _ in matchers if label != "__name__"], available, f"{name}{{...}}")
        return Value("vector", available)

    def call(self, node: pp.Call) -> Value:
        name = node.func.name
        args = [self.of(arg) for arg in node.args]
        vectors = [a for a in args if a.kind in ("vector", "matrix")]
        strings = [a.text for a in args if a.kind == "string"]
        if node.func.return_type != pp.ValueType.Vector:
            return Value("scalar")
        if name == "histogram_quantile":
            if "le" not in vectors[0].labels:
                self.report.errors.append("histogram_quantile over a vector without an le label")
            return Value("vector", vectors[0].labels - {"le"})
        if name in ("label_replace", "label_join"):
            # label_replace(v, dst, replacement, src, regex); label_join(v, dst, sep, src...)
            sources = strings[2:3] if name == "label_replace" else strings[2:]
            self.check([s for s in sources if s], vectors[0].labels, f"{name}()")
            return Value("vector", vectors[0].labels | {strings[0]})
        return Value("vector", vectors[-1].labels if vectors else frozenset())  # vector(), time functions

    def aggregation(self, node: pp.AggregateExpr) -> Value:
        name = str(node.op)
        inner = self.of(node.expr)
        param = self.of(node.param) if node.param is not None else None
        modifier = node.modifier
        if modifier is not None:
            kind = "by" if modifier.type == pp.AggModifierType.By else "without"
            self.check(modifier.labels, inner.labels, f"{name} {kind} (...)")
        if name in KEEP_LABEL_AGGREGATORS:
            return Value("vector", inner.labels)
        if modifier is None:
            kept: frozenset[str] = frozenset()
        elif modifier.type == pp.AggModifierType.By:
            kept = frozenset(modifier.labels)
        else:
            kept = inner.labels - set(modifier.labels)
        if name == "count_values" and param is not None:
            kept = kept | {param.text}
        return Value("vector", kept)

    def binary(self, node: pp.BinaryExpr) -> Value:
        op = str(node.op)
        left, right = self.of(node.lhs), self.of(node.rhs)
        if left.kind == "scalar" or right.kind == "scalar":
            return right if left.kind == "scalar" and right.kind != "scalar" else left
        modifier = node.modifier
        matching = modifier.matching if modifier is not None else None
        both = left.labels | right.labels
        kind = "on" if matching is not None and matching.type == pp.LabelModifierType.Include else "ignoring"
        if matching is not None:
            self.check(matching.labels, both, f"{op} {kind} (...)")
        if op in SET_OPERATORS:
            return Value("vector", both if op == "or" else left.labels)
        if matching is None:
            return Value("vector", left.labels)
        extra = list(modifier.group_labels or []) if modifier is not None else []
        if modifier is not None and modifier.card == pp.VectorMatchCardinality.ManyToOne:
            self.check(extra, right.labels, f"{op} group_left (...)")
            return Value("vector", left.labels | set(extra))
        if modifier is not None and modifier.card == pp.VectorMatchCardinality.OneToMany:
            self.check(extra, left.labels, f"{op} group_right (...)")
            return Value("vector", right.labels | set(extra))
        if op in COMPARISONS and not (modifier is not None and modifier.return_bool):
            return Value("vector", left.labels)
        kept = left.labels & set(matching.labels) if kind == "on" else left.labels - set(matching.labels)
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
            if name == metric.name and metric.kind == "summary":
                labels.add("quantile")
            series[name] = frozenset(labels)
    return series


def analyze(expr: str, series: Mapping[str, frozenset[str]]) -> Report:
    """Metrics, labels and problems of one PromQL expression against the known series."""
    report = Report()
    try:
        tree = pp.parse(_GRAFANA_INTERVAL.sub("5m", expr))
    except ValueError as exc:
        report.errors.append(f"cannot parse: {exc}")
        return report
    report.result = _Labels(series, report).of(tree)
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
