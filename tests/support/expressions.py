"""Every PromQL expression of the Grafana dashboard and the alert rules.

The static suite lints and evaluates them; the end-to-end test runs them
against a Prometheus that scrapes the real daemon, so a query Prometheus rejects
or a panel that would stay empty fails a test instead of a dashboard. Grafana variables are
replaced by values that suit the test harness's one-second scrape interval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.promql import selectors

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "config" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "config" / "grafana" / "drainpool.json"

# The harness scrapes every second; Grafana's $__rate_interval is then four scrapes.
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "4s"


@dataclass(frozen=True)
class Expression:
    """One PromQL expression and where it comes from (for failure messages)."""

    origin: str
    expr: str


# Grafana's built-in interval variables, as they would be for a 1 s scrape interval.
_BUILTINS = {
    "__interval": SCRAPE_INTERVAL,
    "__interval_ms": "1000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*(?P<label>\w+)\s*\)\s*$", re.S)


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables; an unknown one is an error, not a silent hole."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"no test value for Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def _variable_values(
    dashboard: dict[str, Any], job: str, instance: str, pool: str, rate_interval: str
) -> dict[str, str]:
    """Test values for every variable the dashboard may use."""
    values = {
        **_BUILTINS,
        "__rate_interval": rate_interval,
        "job": job,
        "instance": instance,
        "pool": pool,
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "custom":  # a regex of all its options, as "All" would be
            options = [option.strip() for option in variable["query"].split(",")]
            values[variable["name"]] = "|".join(options)
        elif variable["type"] == "datasource":
            values[variable["name"]] = ""
    return values


def dashboard_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those folded into collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def raw_dashboard_expressions(dashboard: dict[str, Any]) -> list[Expression]:
    """Panel targets, annotation queries and variable queries, variables left in."""
    found = []
    for panel in dashboard_panels(dashboard):
        for target in panel.get("targets", []):
            found.append(Expression(f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for annotation in dashboard["annotations"]["list"]:
        if "expr" in annotation:
            found.append(Expression(f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        label_values = _LABEL_VALUES.match(text)
        found.append(
            Expression(
                f"variable ${variable['name']}",
                label_values.group("selector") if label_values else text,
            )
        )
    return found


def alert_expressions(path: Path = ALERTS) -> list[Expression]:
    """The expression of every alerting and recording rule in a rule file."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return [
        Expression(f"rule {rule.get('alert') or rule.get('record')}", rule["expr"].strip())
        for group in groups
        for rule in group["rules"]
    ]


def dashboard_and_alert_expressions(
    job: str = "drainpool",
    instance: str = ".+",
    pool: str = ".+",
    rate_interval: str = RATE_INTERVAL,
    dashboard_path: Path = DASHBOARD,
    alerts_path: Path = ALERTS,
) -> list[Expression]:
    """Every PromQL expression of the dashboard and the alert rules, ready to query.

    Grafana variables are replaced by test values: $job, $instance and $pool by
    the given regexes (".+" is what the dashboard's "All" selects for $pool),
    $__rate_interval by `rate_interval` (four scrapes), a custom variable by
    all of its options.
    """
    dashboard = json.loads(dashboard_path.read_text())
    values = _variable_values(dashboard, job, instance, pool, rate_interval)
    found = [
        Expression(e.origin, substitute(e.expr, values))
        for e in raw_dashboard_expressions(dashboard)
    ]
    return found + alert_expressions(alerts_path)


def names_not_in(known: set[str] | frozenset[str]) -> list[tuple[str, str | None]]:
    """(origin, metric name) of every selector of the dashboard and the alerts not in `known`."""
    return sorted(
        {
            (expression.origin, selector.name)
            for expression in dashboard_and_alert_expressions()
            for selector in selectors(expression.expr)
            if selector.name not in known
        },
        key=str,
    )
