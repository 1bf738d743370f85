"""Just enough PromQL reading to check the dashboards' queries against the metrics that exist.

Not a parser (promtool checks that the expressions parse): a scanner that finds the series
selectors (metric name + label matchers), the label lists of by/without/on/ignoring, and the
Grafana variables an expression uses. It fails loudly on anything it does not understand, so a
query it cannot read fails the tests instead of passing unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<range>\[[^\]]*\])
  | (?P<number>[0-9][0-9.]*(?:[eE][+-]?[0-9]+)?[a-zA-Z]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){},])
  | (?P<space>\s+)
  | (?P<other>.)
""", re.VERBOSE)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
BINARY_WORDS = {"and", "or", "unless", "bool", "offset"}
MATCH_OPS = {"=", "!=", "=~", "!~"}
# Grafana's own variables (https://grafana.com/docs/grafana/latest/dashboards/variables/).
VARIABLE = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]")


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)   # (label, op, value)


@dataclass
class Reading:
    selectors: list[Selector] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    grouping: list[list[str]] = field(default_factory=list)   # each by/without/on/... list
    new_labels: list[str] = field(default_factory=list)       # count_values' label


def variables(text: str) -> set[str]:
    """Grafana variables used in `text` ($x, ${x}, ${x:fmt}, [[x]]), built-ins ($__...) left out."""
    names = {next(g for g in m.groups() if g) for m in VARIABLE.finditer(text)}
    return {n for n in names if not n.startswith("__")}


def _unquote(s: str) -> str:
    return s[1:-1].encode().decode("unicode_escape")


def read(expr: str) -> Reading:
    """Selectors, functions and label lists of one PromQL expression."""
    toks = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "space"]
    bad = [t for kind, t in toks if kind == "other"]
    if bad:
        raise ValueError(f"unexpected characters {bad} in {expr!r}")
    out = Reading()
    i = 0

    def peek(k: int = 0) -> tuple[str | None, str]:
        return toks[i + k] if i + k < len(toks) else (None, "")

    while i < len(toks):
        kind, text = toks[i]
        if kind == "ident" and text in GROUPING:
            i += 1
            if peek()[1] == "(":
                labels = []
                i += 1
                while peek()[1] != ")":
                    k, t = peek()
                    if k == "ident":
                        labels.append(t)
                    elif t != ",":
                        raise ValueError(f"unexpected {t!r} in a label list of {expr!r}")
                    i += 1
                i += 1
                out.grouping.append(labels)
            continue
        if kind == "ident" and text in BINARY_WORDS:
            i += 1
            continue
        if kind == "ident" and peek(1)[1] in ("(", "by", "without"):   # sum by (x) (...)
            out.functions.append(text)
            if text == "count_values" and peek(2)[0] == "string":
                out.new_labels.append(_unquote(peek(2)[1]))
            i += 1
            continue
        if kind == "ident":
            sel = Selector(text)
            out.selectors.append(sel)
            i += 1
            if peek()[1] == "{":
                i += 1
                while peek()[1] != "}":
                    (k1, label), (_, op), (k3, value) = peek(), peek(1), peek(2)
                    if k1 != "ident" or op not in MATCH_OPS or k3 != "string":
                        raise ValueError(f"cannot read the matchers of {text} in {expr!r}")
                    sel.matchers.append((label, op, _unquote(value)))
                    i += 3
                    if peek()[1] == ",":
                        i += 1
                i += 1
            continue
        if text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        i += 1
    return out


LEGEND = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")   # {{label}} in a legend
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_][A-Za-z0-9_]*)\)$")


def label_values(query: str) -> tuple[str, str]:
    """(selector, label) of a Grafana `label_values(selector, label)` variable query."""
    m = LABEL_VALUES.match(query.strip())
    if not m:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return m["selector"], m["label"]


def for_promtool(expr: str) -> str:
    """The expression as Prometheus would receive it: Grafana's interval variables become a
    duration, the dashboard's own variables a regex that matches anything (they only appear in
    =~ matchers)."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return VARIABLE.sub(".*", expr)
