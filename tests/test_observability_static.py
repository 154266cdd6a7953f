"""The dashboard, the alert rules and the Prometheus harness, without the daemon.

promtool checks and unit-tests the rules; a lint holds the dashboard to the
conventions operators rely on (variables, filters, $__rate_interval, units);
every metric either file names must be in the contract list; and a real
Prometheus, scraping a stand-in exporter with the contract's metric shapes,
proves the harness works and evaluates every expression of both files.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from tests.support.expressions import (
    ALERTS,
    DASHBOARD,
    Expression,
    alert_expressions,
    dashboard_and_alert_expressions,
    dashboard_panels,
    names_not_in,
    raw_dashboard_expressions,
)
from tests.support.metric_names import (
    DAEMON_METRICS,
    SCRAPE_SERIES,
    daemon_sample_names,
    is_per_pool,
    metric_of_sample,
    missing_from_exposition,
)
from tests.support.prometheus import (
    Prometheus,
    PrometheusError,
    promtool,
    promtool_check_metrics,
    running_prometheus,
)
from tests.support.promql import rate_ranges, selectors
from tests.support.waiting import wait_until

PROMETHEUS_DIR = ALERTS.parent
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
EXAMPLE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
PROVISIONING = DASHBOARD.parent / "provisioning"
DATASOURCE_REF = {"type": "prometheus", "uid": "${datasource}"}
JOB_FILTER = ("job", "=~", "$job")
INSTANCE_FILTER = ("instance", "=~", "$instance")
POOL_FILTER = ("pool", "=~", "$pool")
# Label values the stand-in exporter gives where the config decides them. Two pools, so
# that an expression matching pools up wrongly (on the instance alone) errors out there.
STAND_IN_VALUES: dict[str, tuple[str, ...]] = {"pool": ("quick", "heavy")}
EXPECTED_ALERTS = {
    "DrainpoolDown",
    "DrainpoolConfigReloadFailing",
    "DrainpoolTasksAbandoned",
    "DrainpoolDrainSlowerThanGrace",
    "DrainpoolBacklogGrowing",
    "DrainpoolDeadLettersGrowing",
    "DrainpoolNoProgress",
    "DrainpoolTimeoutsGrowing",
    "DrainpoolScheduleLate",
}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def data_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard_panels(load_dashboard()) if p["type"] != "row"]


def panel_and_annotation_expressions() -> list[Expression]:
    """Queries that draw data, as opposed to the template variables' queries."""
    return [
        e
        for e in raw_dashboard_expressions(load_dashboard())
        if not e.origin.startswith("variable")
    ]


def assert_promtool_ok(*args: str) -> str:
    done = promtool(*args, cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


# --- alert rules ---------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check() -> None:
    out = assert_promtool_ok("check", "rules", ALERTS.name)
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out


def test_alert_rule_unit_tests_pass() -> None:
    assert_promtool_ok("test", "rules", ALERT_TESTS.name)


def test_alert_set_is_the_agreed_one() -> None:
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_summary_description_runbook_and_severity(rule: dict[str, Any]) -> None:
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook"):
        assert annotations.get(key, "").strip(), f"{rule['alert']} has no {key}"
    assert rule.get("labels", {}).get("severity") in {"critical", "warning"}


def test_every_alert_is_tested_firing_and_silent() -> None:
    """Each alert has a unit test where it fires and one where it must stay silent."""
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    checks = [check for case in cases for check in case.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in checks if c.get("exp_alerts")}
    silent = {c["alertname"] for c in checks if not c.get("exp_alerts")}
    assert fired == EXPECTED_ALERTS
    assert silent == EXPECTED_ALERTS


def test_example_prometheus_config_is_valid_and_scrapes_the_daemon() -> None:
    assert_promtool_ok("check", "config", EXAMPLE_CONFIG.name)
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert config["rule_files"] == [ALERTS.name]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "drainpool"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:9468"]}]


# --- dashboard lint ------------------------------------------------------------------------


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    for name in ("job", "instance", "pool"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE_REF
        assert variable["query"].startswith("label_values(")
        assert variable["query"].endswith(f", {name})")
    queries = {e.origin: e.expr for e in raw_dashboard_expressions(load_dashboard())}
    [instances] = selectors(queries["variable $instance"])
    assert instances.matches(*JOB_FILTER), "the instance list must follow the chosen job"
    [pools] = selectors(queries["variable $pool"])
    assert is_per_pool(metric_of_sample(pools.name or "")), "the pool list needs a pool label"
    assert pools.matches(*JOB_FILTER) and pools.matches(*INSTANCE_FILTER), (
        "the pool list must follow the chosen job and instances"
    )
    assert variables["pool"]["multi"] and variables["pool"]["includeAll"]


def test_dashboard_identity() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "drainpool"
    assert dashboard["schemaVersion"] >= 39
    ids = [panel["id"] for panel in dashboard_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("panel", data_panels(), ids=lambda panel: panel["title"])
def test_panel_has_title_description_unit_and_datasource(panel: dict[str, Any]) -> None:
    assert panel["title"].strip()
    assert panel.get("description", "").strip(), "every panel needs a description"
    assert panel["fieldConfig"]["defaults"].get("unit"), "every panel needs a unit"
    assert panel["datasource"] == DATASOURCE_REF
    assert panel["targets"], "a panel without a query shows nothing"
    for target in panel["targets"]:
        assert target["datasource"] == DATASOURCE_REF
        assert target["expr"].strip()


def test_panels_do_not_overlap() -> None:
    """Overlapping gridPos boxes are rearranged by Grafana into a layout nobody chose."""
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard_panels(load_dashboard()):
        box = panel["gridPos"]
        for x, y in itertools.product(
            range(box["x"], box["x"] + box["w"]), range(box["y"], box["y"] + box["h"])
        ):
            assert x < 24, f"{panel['title']!r} is wider than the grid"
            assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
            cells[(x, y)] = panel["title"]


def missing_filters(expr: str) -> list[str]:
    """The variable filters a dashboard query's selectors lack, e.g. 'x lacks pool=~"$pool"'.

    Every selector follows $job and $instance; one of a per-pool metric follows
    $pool as well, or picking a pool would leave part of a panel showing all pools.
    """
    found = selectors(expr)
    if not found:
        return [f"no series selector found in {expr}"]
    problems = []
    for selector in found:
        wanted = [JOB_FILTER, INSTANCE_FILTER]
        if is_per_pool(metric_of_sample(selector.name or "")):
            wanted.append(POOL_FILTER)
        problems += [
            f'{selector.name} lacks {label}{op}"{value}"'
            for label, op, value in wanted
            if not selector.matches(label, op, value)
        ]
    return problems


@pytest.mark.parametrize("expression", panel_and_annotation_expressions(), ids=lambda e: e.origin)
def test_query_filters_every_selector_by_job_instance_and_pool(expression: Expression) -> None:
    assert missing_filters(expression.expr) == []


def test_filter_lint_catches_a_missing_pool_filter() -> None:
    """The lint above passes only if it can fail: a per-pool selector without $pool must."""
    scoped = 'job=~"$job", instance=~"$instance"'
    expr = (
        f'sum(drainpool_pool_workers{{{scoped}, pool=~"$pool"}})'
        f" - sum(drainpool_tasks_in_flight{{{scoped}}}) + drainpool_stray_threads{{{scoped}}}"
    )
    assert missing_filters(expr) == ['drainpool_tasks_in_flight lacks pool=~"$pool"']
    assert missing_filters("sum(drainpool_queue_jobs)") == [
        'drainpool_queue_jobs lacks job=~"$job"',
        'drainpool_queue_jobs lacks instance=~"$instance"',
    ]


@pytest.mark.parametrize("expression", panel_and_annotation_expressions(), ids=lambda e: e.origin)
def test_rates_use_rate_interval(expression: Expression) -> None:
    for function, ranges in rate_ranges(expression.expr):
        assert ranges == ["[$__rate_interval]"], f"{function}() uses {ranges}"


def test_dashboard_has_reload_annotations() -> None:
    annotations = load_dashboard()["annotations"]["list"]
    queries = [a["expr"] for a in annotations if "expr" in a]
    for result in ("applied", "rejected"):
        assert any(
            s.name == "drainpool_config_reloads_total" and s.matches("result", "=", result)
            for query in queries
            for s in selectors(query)
        ), f"no annotation for {result} reloads"


def test_provisioning_points_at_the_dashboard_directory() -> None:
    [provider] = yaml.safe_load((PROVISIONING / "dashboards" / "drainpool.yaml").read_text())[
        "providers"
    ]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http://")


# --- the metric contract -------------------------------------------------------------------


def test_every_referenced_metric_is_in_the_contract() -> None:
    unknown = names_not_in(daemon_sample_names() | SCRAPE_SERIES)
    assert not unknown, f"names not in tests/support/metric_names.py: {unknown}"


def test_every_contract_metric_is_on_the_dashboard() -> None:
    """A metric nobody can see is a metric nobody will look at."""
    shown = {
        selector.name
        for expression in raw_dashboard_expressions(load_dashboard())
        for selector in selectors(expression.expr)
    }
    unseen = [m.name for m in DAEMON_METRICS if not shown & set(m.sample_names())]
    assert not unseen


def test_label_filters_use_contract_values() -> None:
    """A typo such as outcome="complete" would give an empty panel, not an error."""
    for expression in dashboard_and_alert_expressions():
        for selector in selectors(expression.expr):
            metric = metric_of_sample(selector.name or "")
            for matcher in selector.matchers if metric else ():
                allowed = metric.labels.get(matcher.label) if metric else None
                if matcher.label in ("job", "instance") or (
                    matcher.label == "le" and metric and metric.kind == "histogram"
                ):
                    continue
                assert matcher.label in metric.labels, (
                    f"{expression.origin}: {selector.name} has no label {matcher.label}"
                )
                if allowed is None or matcher.op not in ("=", "=~"):
                    continue
                values = matcher.value.split("|") if matcher.op == "=~" else [matcher.value]
                assert set(values) <= set(allowed), f"{expression.origin}: {matcher}"


# --- the Prometheus harness against a real exporter ------------------------------------------


def contract_registry() -> tuple[CollectorRegistry, Gauge]:
    """A registry with every contract family and one child per label value.

    Not the daemon: a stand-in with the same metric shapes, so that every
    dashboard query can be shown to return series from a real scrape. Labels
    the config decides take STAND_IN_VALUES, else "example". The returned probe
    gauge lets a test change a value and watch it arrive.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    for metric in DAEMON_METRICS:
        if metric.name.startswith("process_"):
            continue
        help_text = f"Stand-in for {metric.name}."
        if metric.kind == "enum":
            [states] = metric.labels.values()
            Enum(metric.name, help_text, states=list(states or ()), registry=registry).state(
                "running"
            )
            continue
        if metric.kind == "info":
            info = {label: "test" for label in metric.labels}
            Info(metric.name, help_text, registry=registry).info(info)
            continue
        kind = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}[metric.kind]
        family = kind(metric.name, help_text, list(metric.labels), registry=registry)
        combos = itertools.product(
            *[
                values or STAND_IN_VALUES.get(label, ("example",))
                for label, values in metric.labels.items()
            ]
        )
        for combo in combos:
            child = family.labels(*combo) if combo else family
            if isinstance(child, Histogram):
                child.observe(0.1)
            elif isinstance(child, Counter):
                child.inc()
            else:
                child.set(1)
    probe = Gauge("harness_probe", "Set by the harness self-test.", registry=registry)
    return registry, probe


@pytest.fixture(scope="module")
def exporter() -> Iterator[tuple[str, CollectorRegistry, Gauge]]:
    registry, probe = contract_registry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}", registry, probe
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def prometheus(
    exporter: tuple[str, CollectorRegistry, Gauge], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    target = exporter[0]
    with running_prometheus(target, tmp_path_factory.mktemp("prometheus")) as server:
        server.wait_for_targets_up()
        yield server


def test_harness_scrapes_and_queries_a_live_target(
    prometheus: Prometheus, exporter: tuple[str, CollectorRegistry, Gauge]
) -> None:
    target, _registry, probe = exporter
    [scraped] = prometheus.targets()
    assert scraped["labels"] == {"job": "drainpool", "instance": target}
    assert scraped["health"] == "up"
    for value in (7, 11):  # a changed value must arrive: the scrape is live, not a snapshot
        probe.set(value)
        prometheus.wait_for(
            'harness_probe{job="drainpool"}',
            lambda result, want=value: [float(s["value"][1]) for s in result] == [want],
        )
    assert prometheus.query_value('up{job="drainpool"}') == 1.0


def test_harness_loads_and_evaluates_the_alert_rules(prometheus: Prometheus) -> None:
    def evaluated() -> bool:
        rules = prometheus.rules()
        return {r["name"] for r in rules} == EXPECTED_ALERTS and all(
            r["health"] == "ok" for r in rules
        )

    wait_until(evaluated, 30, "every alert rule to be loaded and evaluated")


def test_harness_reports_promql_errors(prometheus: Prometheus) -> None:
    """The expression test below means something only if errors are not swallowed."""
    with pytest.raises(PrometheusError, match="bad_data"):
        prometheus.query("sum(rate(drainpool_tasks_started_total[$__rate_interval]))")


def test_every_dashboard_and_alert_expression_evaluates(prometheus: Prometheus) -> None:
    """Real Prometheus parses every expression; every panel query returns series."""
    for expression in dashboard_and_alert_expressions():
        try:
            prometheus.query(expression.expr)
        except PrometheusError as error:
            pytest.fail(f"{expression.origin}: {error}\n{expression.expr}")
        if not expression.origin.startswith(("rule", "annotation")):
            # Rules and annotations are conditions, quiet by design; panels must draw.
            prometheus.wait_for(expression.expr, timeout=20)


def test_lifecycle_state_panel_decodes_the_enum(prometheus: Prometheus) -> None:
    """The stand-in reports "running"; the panel's number must map back to that word."""
    panel = next(p for p in data_panels() if p["title"] == "Lifecycle state")
    [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
    codes = {option["text"]: float(code) for code, option in mapping["options"].items()}
    [expression] = [
        e for e in dashboard_and_alert_expressions() if e.origin == "panel 'Lifecycle state' A"
    ]
    [sample] = prometheus.wait_for(expression.expr)
    assert float(sample["value"][1]) == codes["running"]


def test_promtool_check_metrics_reports_findings(
    exporter: tuple[str, CollectorRegistry, Gauge],
) -> None:
    _target, registry, _probe = exporter
    assert promtool_check_metrics(generate_latest(registry).decode()) == []
    bad = "# HELP jobs Jobs.\n# TYPE jobs counter\njobs 1\n"
    findings = promtool_check_metrics(bad)
    assert any(re.search(r'jobs .*"_total" suffix', line) for line in findings), findings
    assert promtool_check_metrics("not an exposition {{\n")


def test_missing_from_exposition_names_absent_families(
    exporter: tuple[str, CollectorRegistry, Gauge],
) -> None:
    _target, registry, _probe = exporter
    text = generate_latest(registry).decode()
    assert missing_from_exposition(text) == []
    without_queue = "\n".join(
        line for line in text.splitlines() if "drainpool_queue_jobs" not in line
    )
    assert missing_from_exposition(without_queue + "\n") == ["drainpool_queue_jobs"]


def test_support_modules_name_real_paths() -> None:
    for path in (ALERTS, DASHBOARD, ALERT_TESTS, EXAMPLE_CONFIG):
        assert Path(path).is_file(), path
    assert alert_expressions(), "the alert file has no rules"
