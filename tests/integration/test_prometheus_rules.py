"""configs/prometheus/rules.yml checked and unit-tested by promtool (Debian's prometheus package).

The unit tests (tests/integration/prometheus_rules/*.yml) feed series just either side of each alert's
threshold; here they run, and are shown to fail when a threshold moves. That the metrics they
feed are the ones the router really exports is shown against a live router in test_dashboard.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import ROOT
from tests.support.prometheus import PROMTOOL

RULES = ROOT / "configs" / "prometheus" / "rules.yml"
UNIT_TESTS = sorted((ROOT / "tests" / "integration" / "prometheus_rules").glob("*.yml"))

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)


def alerting_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_cases() -> list[dict[str, Any]]:
    return [
        case
        for path in UNIT_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]


@needs_promtool
def test_rules_file_passes_promtool_check():
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda path: path.name)
def test_rule_unit_tests_pass(unit_test: Path):
    result = promtool("test", "rules", unit_test.name, cwd=unit_test.parent)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_rule_unit_tests_fail_when_an_alert_threshold_moves(tmp_path: Path):
    # The 5xx alert's 5% moved to 20%: the case at 10% must now miss its expected alert.
    original = "instance:router_api_5xx:ratio_rate5m > 0.05"
    assert original in RULES.read_text()
    moved = tmp_path / "rules.yml"
    moved.write_text(RULES.read_text().replace(original, "instance:router_api_5xx:ratio_rate5m > 0.2"))
    for unit_test in UNIT_TESTS:
        test = yaml.safe_load(unit_test.read_text())
        test["rule_files"] = [str(moved)]
        (tmp_path / unit_test.name).write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", *(path.name for path in UNIT_TESTS), cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: RouterHighServerErrorRatio" in result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_and_a_description():
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_every_alert_is_unit_tested_both_firing_and_silent():
    cases = alert_cases()
    for rule in alerting_rules():
        name = rule["alert"]
        assert any(case["alertname"] == name and case.get("exp_alerts") for case in cases), f"{name} never fires"
        assert any(case["alertname"] == name and not case.get("exp_alerts") for case in cases), f"{name} never silent"


def test_the_alerts_an_operator_needs_are_all_there():
    assert {rule["alert"] for rule in alerting_rules()} >= {
        "RouterDown",
        "RouterNotScraped",
        "RouterHighServerErrorRatio",
        "RouterVendorHighErrorRatio",
        "RouterVendorAllCombinationsCooling",
        "RouterVendorSlowFirstByte",
        "RouterHighOverhead",
        "RouterStreamsNearCapacity",
        "RouterRateLimitRejectionsSurging",
    }
