"""The operators' monitoring files (docs/operations.md): the alert rules and the Grafana dashboard in
helm/stepstream/files/. The rules pass promtool's checks and their unit tests
(tests/unit/monitoring/alerts.test.yaml); every alert has a severity and a runbook that exists; and
every metric the rules and the dashboard name is one the engine exposes, so renaming a metric breaks
this test rather than an operator's dashboard."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from tests.prometheus import binary

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "stepstream" / "files" / "alerts.yaml"
RULES_TESTS = ROOT / "tests" / "unit" / "monitoring" / "alerts.test.yaml"
DASHBOARD = ROOT / "helm" / "stepstream" / "files" / "grafana-dashboard.json"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOKS = "https://github.com/stepstream/stepstream/blob/main/docs/operations.md"

# The modules that define or set the engine's metrics: importing them registers every metric in
# prometheus-client's default registry, as a service's process does.
MODULES = ("stepstream.metrics", "stepstream.kafka.lag", "stepstream.projector.metrics", "stepstream.scheduler.metrics")

METRIC_NAME = re.compile(r"(?<![\w:])((?:stepstream|process|python)_[A-Za-z0-9_]+)")
RECORDED_NAME = re.compile(r"(?<![\w:])(stepstream:[A-Za-z0-9_:]+)")

# What a family of each type exposes: a counter "x_total" is the family "x" (prometheus-client drops
# the suffix), and a histogram is only its buckets, sum and count, never the bare name.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *arguments], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def families() -> list[Metric]:
    """The metric families a service's process registers (the engine's, and prometheus-client's own)."""
    for module in MODULES:
        importlib.import_module(module)
    return list(REGISTRY.collect())


def exposed_names() -> set[str]:
    """Every series name the engine's registry can expose, by the type of each family."""
    return {family.name + suffix for family in families() for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))}


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def test_promtool_checks_the_rules_file() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_alerts_fire_and_stay_quiet_as_their_promtool_tests_say() -> None:
    done = promtool("test", "rules", str(RULES_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_firing_case_and_the_main_ones_a_quiet_case_too() -> None:
    cases = [case for test in yaml.safe_load(RULES_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert {alert["alert"] for alert in alerts()} - firing == set()
    main = {
        "StepstreamRunFailureBurnRateFast",
        "StepstreamServiceDown",
        "StepstreamConsumerStopped",
        "StepstreamRecordsDeadLettered",
    }
    assert main - quiet == set()


def test_every_alert_pages_or_tickets_and_links_its_runbook_in_docs_operations() -> None:
    headings = anchors(OPERATIONS.read_text())
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("page", "ticket"), name
        assert alert["annotations"]["summary"], name
        assert alert["annotations"]["description"], name
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOKS}#{name.lower()}", name
        assert name.lower() in headings, f"docs/operations.md has no heading {name} for {url}"


def test_every_metric_the_rules_and_the_dashboard_name_is_exposed() -> None:
    exposed = exposed_names()
    assert {"stepstream_runs_ended_total", "stepstream_run_duration_seconds_bucket"} <= exposed
    assert "stepstream_run_duration_seconds" not in exposed  # a histogram's bare name is no series
    rule_expressions = [str(rule["expr"]) for rule in rules()]
    used_by_rules = {name for expression in rule_expressions for name in METRIC_NAME.findall(expression)}
    used_by_dashboard = {name for expression in dashboard_expressions() for name in METRIC_NAME.findall(expression)}
    # the pattern finds what is there
    assert {"stepstream_runs_ended_total", "stepstream_records_consumed_total"} <= used_by_rules
    assert {"stepstream_step_duration_seconds_bucket", "process_resident_memory_bytes"} <= used_by_dashboard
    assert used_by_rules - exposed == set()
    assert used_by_dashboard - exposed == set()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used_recorded = {name for expression in rule_expressions for name in RECORDED_NAME.findall(expression)}
    assert used_recorded - recorded == set()


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, with Grafana's variables as Grafana fills them in."""
    filled = {"$namespace": ".*", "$workflow": ".*", "$__rate_interval": "2m", "$__range": "6h"}
    records = []
    for index, expression in enumerate(dashboard_expressions()):
        for variable, value in filled.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, expression
        records.append({"record": f"dashboard:query:{index}", "expr": expression})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_has_three_rows_and_asks_for_its_data_source_and_workflow() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    rows = [panel["title"] for panel in dashboard["panels"] if panel["type"] == "row"]
    assert rows == ["Overview", "On call", "Debug"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["workflow"]["definition"] == "label_values(stepstream_runs_started_total, workflow)"
    every = list(panels(dashboard))
    assert len({panel["id"] for panel in every}) == len(every)
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_the_dashboard_uses_only_grafanas_built_in_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert {panel["type"] for panel in panels(dashboard)} == {"row", "timeseries", "stat"}


def test_docs_operations_lists_every_metric_of_the_engine() -> None:
    documented = OPERATIONS.read_text()
    # As an operator writes them: counters with _total, histograms by their bare name.
    shown = {"counter": "_total", "info": "_info"}
    names = {family.name + shown.get(family.type, "") for family in families() if family.name.startswith("stepstream_")}
    assert "stepstream_runs_started_total" in names
    assert {name for name in names if f"`{name}`" not in documented} == set()
