"""Just enough PromQL reading for the deployment tests: metric names, vector selectors, an alert's signal,
and every query of a Grafana dashboard with its variables filled in."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "inf", "nan", "atan2",
}  # fmt: skip
_STRING = r'"(?:\\.|[^"\\])*"'
_LABEL_LISTS = r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels left out)."""
    return {name for name, _ in _selectors(expr)}


def selectors(expr: str) -> set[str]:
    """The vector selectors of an expression, each with its label matchers (``up{job="x"}``)."""
    return {name + matchers for name, matchers in _selectors(expr)}


def _selectors(expr: str) -> list[tuple[str, str]]:
    matchers: list[str] = []

    def keep_matchers(m: re.Match[str]) -> str:
        matchers.append(m.group(0))
        return f" __M{len(matchers) - 1}__ "

    s = re.sub(r"\{(?:" + _STRING + r"|[^}\"])*\}", keep_matchers, expr)  # label matchers
    s = re.sub(_STRING, '""', s)  # string literals
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery selectors
    s = re.sub(_LABEL_LISTS, " ", s)  # label lists
    found = []
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?(\s*__M(\d+)__)?", s):
        name, is_call, index = m.group(1), m.group(2), m.group(4)
        if is_call or name.lower() in _KEYWORDS or name.startswith("__M"):
            continue
        found.append((name, matchers[int(index)] if index is not None else ""))
    return found


def signal(expr: str) -> str:
    """The left operand of the expression's first top-level comparison: what an alert measures before it
    compares it with a threshold (``max by (run_id) (x) == 2 unless y`` → ``max by (run_id) (x)``)."""
    depth, i = 0, 0
    while i < len(expr):
        char = expr[i]
        if char == '"':
            i = re.match(_STRING, expr[i:]).end() + i  # type: ignore[union-attr]
            continue
        depth += (char in "([{") - (char in ")]}")
        if depth == 0:
            for op in _COMPARISONS:
                if expr.startswith(op, i) and not expr.startswith("=~", i) and not expr.startswith("!~", i):
                    return expr[:i].strip()
        i += 1
    raise ValueError(f"no top-level comparison in {expr!r}: write alerts as SIGNAL <comparison> THRESHOLD")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """The expression with Grafana's ``$var`` / ``${var}`` / ``${var:fmt}`` replaced from ``variables``."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in variables, f"unknown Grafana variable ${name} in {expr!r}"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def dashboard_queries(dash: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(where, expr)`` for every PromQL expression of a dashboard: panel targets (rows' nested panels
    included) and annotation queries. Variable queries are in :func:`variable_queries`."""
    found = []
    for panel in dash["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []):
                found.append((f"panel {sub['title']!r}", target["expr"]))
    for annotation in dash.get("annotations", {}).get("list", []):
        if annotation.get("datasource", {}).get("type") == "prometheus":
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def variable_queries(dash: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(variable, metric selector, label)`` of each ``label_values(selector, label)`` variable."""
    found = []
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            assert m, f"variable {var['name']} is not label_values(...): {var['definition']!r}"
            found.append((var["name"], m.group(1), m.group(2)))
    return found
