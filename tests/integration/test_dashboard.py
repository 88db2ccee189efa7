"""configs/grafana/router-dashboard.json: importable as is, and every query it makes proven.

A real Prometheus (Debian's package) scrapes a real router (gunicorn, 2 gevent workers) every
second, with configs/prometheus/rules.yml loaded, while the router serves mixed traffic through
the fake vendor: whole answers and streams, a vendor failing with 500 (failover, cooldown, 5xx
answered), slow answers, a client leaving mid-stream, a config reload and a burst past the rate
limit. Then every panel's every query, with the dashboard's variables filled in, must return at
least one series through Prometheus' HTTP API, every recording rule must have evaluated to one,
and every metric the rules and their unit tests name must exist. A renamed metric or label
therefore fails here, not in a dashboard in production.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from tests.support.processes import ROOT, FakeVendorProcess, RouterProcess, router_config, wait_until
from tests.support.prometheus import JOB, PROMETHEUS, PrometheusServer, children

DASHBOARD_PATH = ROOT / "configs" / "grafana" / "router-dashboard.json"
DASHBOARD = json.loads(DASHBOARD_PATH.read_text())
RULES_PATH = ROOT / "configs" / "prometheus" / "rules.yml"
RULES = yaml.safe_load(RULES_PATH.read_text())
UNIT_TESTS = sorted((ROOT / "tests" / "integration" / "prometheus_rules").glob("*.yml"))
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
VENDORS = {"openai", "gemini"}
# Grafana's own interval variables, fixed: the whole test fits in one minute.
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included, rows themselves excluded."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


RULE_LIST = [rule for group in RULES["groups"] for rule in group["rules"]]
TARGETS = [
    (panel["title"], target["refId"], target["expr"]) for panel in panels(DASHBOARD) for target in panel["targets"]
]
# One per recording rule: its name and its own labels (the p50 and p99 rules share a name).
RECORDS = sorted(
    {(rule["record"], tuple(sorted(rule.get("labels", {}).items()))) for rule in RULE_LIST if "record" in rule}
)


def rule_metric_names() -> list[str]:
    """Metrics (not recording rules) named in rules.yml and fed by the rule unit tests."""
    texts = [rule["expr"] for rule in RULE_LIST]
    for path in UNIT_TESTS:
        tests = yaml.safe_load(path.read_text())["tests"]
        texts += [series["series"] for test in tests for series in test["input_series"]]
    names = set()
    for text in texts:
        text = re.sub(r'"[^"]*"', '""', text)  # label values are not metric names
        text = re.sub(r"\b[a-z_]+:[a-z0-9_:]+", "", text)  # nor are recording rules
        names.update(re.findall(r"\b(?:router|flask)_[a-z0-9_]+\b", text))
    return sorted(names | {"up"})


def fill_in(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$name`` / ``${name}`` / ``${name:format}`` variables replaced."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise AssertionError(f"unknown dashboard variable ${name} in {expr!r}")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


# -- importable as is --------------------------------------------------------------------------


def test_dashboard_asks_for_a_prometheus_datasource_on_import():
    assert DASHBOARD["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes the router",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    assert {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"} in DASHBOARD[
        "__requires"
    ]
    assert DASHBOARD["id"] is None  # an import creates a new dashboard, never overwrites one by id


def test_every_panel_target_and_variable_uses_the_imported_datasource():
    for panel in panels(DASHBOARD):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in DASHBOARD["templating"]["list"]:
        assert variable["datasource"] == DATASOURCE, variable["name"]


def test_dashboard_has_instance_and_vendor_variables_offering_all():
    variables = {variable["name"]: variable for variable in DASHBOARD["templating"]["list"]}
    assert set(variables) == {"instance", "vendor"}
    for variable in variables.values():
        assert variable["type"] == "query"
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["query"]["query"].startswith("label_values(")


def test_panels_have_unique_ids_and_do_not_overlap_on_the_grid():
    cells: dict[tuple[int, int], str] = {}
    ids = [panel["id"] for panel in DASHBOARD["panels"]] + [
        panel["id"] for row in DASHBOARD["panels"] for panel in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells.get((x, y))}"
                cells[(x, y)] = panel["title"]


def test_dashboard_shows_what_an_operator_looks_for():
    titles = {panel["title"] for panel in panels(DASHBOARD)}
    assert titles >= {
        "API requests by status",
        "Answered 5xx ratio",
        "Vendor error ratio",
        "Time to first byte p50 / p99",
        "Router overhead p50 / p99",
        "Streams in flight",
        "Failovers",
        "Cooling combinations",
        "Tokens by vendor / model",
        "Tokens by client",
        "Cache hit ratio",
        "Requests by client",
        "Rate-limit rejections (429)",
        "Client disconnects",
        "Hedges",
        "Config reloads",
    }


# -- every query proven against a real Prometheus scraping a real router ------------------------


class Scraped:
    """The running Prometheus and what the dashboard's variables stand for."""

    def __init__(self, prometheus: PrometheusServer, router: RouterProcess) -> None:
        self.prometheus = prometheus
        self.target = f"127.0.0.1:{router.port}"
        self.variables = {"instance": self.target, "vendor": "|".join(sorted(VENDORS)), **GRAFANA_INTERVALS}


def chat(router: RouterProcess, body: dict[str, Any] | None = None, **params: str) -> requests.Response:
    payload = {"model": "any-model", "messages": [{"role": "user", "content": "Hello"}], **(body or {})}
    return requests.post(router.url("/v1/chat/completions"), json=payload, params=params, timeout=30)


def stream(router: RouterProcess, x_fake: dict[str, Any], read_events: int | None = None) -> None:
    """Open a stream asking for usage; read it whole, or only ``read_events`` lines and then hang up."""
    body = {
        "model": "any-model",
        "messages": [{"role": "user", "content": "Stream, please"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "x_fake": x_fake,
    }
    with requests.post(router.url("/v1/chat/completions"), json=body, stream=True, timeout=30) as response:
        assert response.status_code == 200
        for number, _ in enumerate(response.iter_lines(), start=1):
            if read_events is not None and number >= read_events:
                return


def reload_workers(router: RouterProcess) -> None:
    """SIGHUP: gunicorn reloads its config and replaces both workers."""
    before = children(router.process.pid)
    router.signal(signal.SIGHUP)
    wait_until(
        lambda: len(now := children(router.process.pid)) == 2 and not now & before,
        timeout=30,
        message="both workers replaced after SIGHUP",
    )
    wait_until(lambda: requests.get(router.url("/health"), timeout=2).status_code == 200, timeout=10)


def serve_mixed_traffic(router: RouterProcess, fake: FakeVendorProcess) -> threading.Thread:
    """Everything a dashboard panel shows, happening; returns a stream still running."""
    reload_workers(router)

    fake.behave("openai", status=500)
    statuses = [chat(router).status_code for _ in range(8)]  # openai's answers fail over to gemini
    statuses += [chat(router, vendor="openai").status_code for _ in range(2)]  # nowhere to go: 5xx
    assert 200 in statuses and 500 in statuses, statuses
    fake.behave("openai")

    for _ in range(3):
        assert chat(router).status_code == 200
        assert chat(router, vendor="openai").status_code == 200  # it cools down, yet is the only choice

    # One conversation twice on one key and model: the fake's prompt cache answers the second.
    prompt = {"model": "gpt-4o", "messages": [{"role": "user", "content": "A long shared prefix. " * 20}]}
    for _ in range(2):
        assert chat(router, {**prompt, "x_fake": {"prefix_cache": 4}}, vendor="openai").status_code == 200

    slow = [
        threading.Thread(target=chat, args=(router, {"x_fake": {"delay": 1.0}}), kwargs={"vendor": "openai"})
        for _ in range(2)
    ]  # slower than HEDGE_AFTER_SECONDS: a second attempt is started
    for thread in slow:
        thread.start()

    stream(router, {"chunks": 3})
    stream(router, {"chunks": 20, "interval": 0.2}, read_events=2)  # the client hangs up mid-stream
    running = threading.Thread(target=stream, args=(router, {"chunks": 15, "interval": 0.4}))
    running.start()  # open while Prometheus scrapes: streams in flight
    for thread in slow:
        thread.join()

    with requests.Session() as session:  # one connection: one worker's budget runs out
        refused = 0
        for _ in range(400):
            refused += session.get(router.url("/v1/models"), timeout=10).status_code == 429
            if refused >= 3:
                break
    assert refused >= 3
    return running


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    directory = tmp_path_factory.mktemp("dashboard")
    fake = FakeVendorProcess()
    router = prometheus = None
    try:
        models = [
            {"vendor": "openai", "model": "gpt-4o"},
            {"vendor": "openai", "model": "gpt-4o-mini"},
            {"vendor": "gemini", "model": "gemini-2.0-flash"},
        ]
        env = {
            **router_config(directory / "config", fake, models=models),
            "RATE_LIMIT": "100/minute",
            "HEDGE_AFTER_SECONDS": "0.3",
            # Budget series exist once a budgeted client calls (far from spent here).
            "BUDGET": "1000000000 tokens per day",
        }
        router = RouterProcess(env, directory / "router.log", workers=2)
        prometheus = PrometheusServer(directory / "prometheus", [f"127.0.0.1:{router.port}"], [RULES_PATH])
        running = serve_mixed_traffic(router, fake)
        # Two scrapes (1 s apart) after the last request, then the rules: every series made by the
        # traffic has the two samples a rate needs, in the raw data and in the recording rules.
        prometheus.wait_for_data_after(time.time() + 2.5)
        yield Scraped(prometheus, router)
        running.join(timeout=10)
    finally:
        for process in (prometheus, router, fake):
            if process is not None:
                process.stop()


@pytest.mark.parametrize(("title", "ref", "expr"), TARGETS, ids=[f"{title} {ref}" for title, ref, _ in TARGETS])
def test_panel_query_returns_series_from_the_scraped_router(scraped: Scraped, title: str, ref: str, expr: str):
    query = fill_in(expr, scraped.variables)
    assert scraped.prometheus.query(query), f"{title} ({ref}) returned nothing: {query}"


@pytest.mark.parametrize(("record", "labels"), RECORDS, ids=[f"{r}{dict(ls) or ''}" for r, ls in RECORDS])
def test_recording_rule_evaluates_to_series(scraped: Scraped, record: str, labels: tuple[tuple[str, str], ...]):
    matchers = ", ".join([f'__name__="{record}"'] + [f'{key}="{value}"' for key, value in labels])
    results = scraped.prometheus.query(f"{{{matchers}}}")
    assert results, f"{record} {dict(labels)} has no series"
    # The name's level says which labels the rule keeps (instance_vendor: instance and vendor);
    # a label renamed in the router would leave them empty.
    for label in record.split(":")[0].split("_"):
        assert all(result["metric"].get(label) for result in results), f"{record} lost its {label} label"


@pytest.mark.parametrize("name", rule_metric_names())
def test_metric_named_by_the_rules_is_scraped_from_the_router(scraped: Scraped, name: str):
    assert scraped.prometheus.series(f'{{__name__="{name}", job="{JOB}"}}'), f"the router exports no {name}"


def test_dashboard_variables_offer_the_router_and_both_vendors(scraped: Scraped):
    offered = {}
    for variable in DASHBOARD["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"]["query"])
        assert match, variable["query"]["query"]
        selector = fill_in(match.group(1), {"instance": ".*"})
        offered[variable["name"]] = {series[match.group(2)] for series in scraped.prometheus.series(selector)}
    assert offered == {"instance": {scraped.target}, "vendor": VENDORS}


def test_prometheus_loaded_every_rule_and_all_are_healthy(scraped: Scraped):
    rules = [rule for group in scraped.prometheus.rule_groups() for rule in group["rules"]]
    assert len(rules) == len(RULE_LIST)
    assert [rule["name"] for rule in rules if rule["health"] != "ok"] == []
