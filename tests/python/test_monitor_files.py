"""The shipped monitoring files: alert rules pass `promtool test rules`; every
Grafana panel query is valid PromQL (checked by promtool as recording rules)
and uses only the documented metric families."""
import json
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FAMILIES = {"dynamoe_expert_tokens_total", "dynamoe_tokens_dropped_total", "dynamoe_load_imbalance_ratio",
            "dynamoe_dead_experts", "dynamoe_copied_experts", "dynamoe_plan_changes_total",
            "dynamoe_alltoall_bytes_total", "dynamoe_phase_duration_seconds", "dynamoe_step_duration_seconds"}
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


@needs_promtool
def test_alert_rules_unit_tests_pass():
    d = ROOT / "monitor" / "prometheus"
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        r = subprocess.run(["promtool", *args], cwd=d, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def _queries():
    dash = json.loads((ROOT / "monitor" / "grafana" / "dynamoe.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_uses_the_documented_families():
    queries = _queries()
    assert len(queries) >= 8
    used = set()
    for q in queries:
        names = set(re.findall(r"dynamoe_[a-z_]+", q))
        assert names, q
        for n in names:
            base = re.sub(r"_(bucket|sum|count)$", "", n)
            assert base in FAMILIES, f"{n} in {q}"
            used.add(base)
    assert used == FAMILIES, f"families without a panel: {FAMILIES - used}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path):
    rules = ["groups:", "  - name: dashboard", "    rules:"]
    for i, q in enumerate(_queries()):
        expr = q.replace("$__rate_interval", "1m").replace("$layer", ".*")
        rules += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "rules.yml").write_text("\n".join(rules) + "\n")
    r = subprocess.run(["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
