"""Checks what operators load into their monitoring: the alerting rules
(deploy/helm/herald/files/alerts.yaml) with `promtool check rules` and their unit tests
(tests/prometheus/alerts_test.yaml) with `promtool test rules`; and the Grafana dashboard
(deploy/helm/herald/files/herald-dashboard.json): every query parses as PromQL (promtool checks
it as a recording rule) and names only metrics Herald exposes (read from
crates/herald-core/src/metrics.rs), so neither can drift from the code.

    python3 scripts/check-observability.py PROMTOOL
"""
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = sys.argv[1] if len(sys.argv) > 1 else "promtool"
ALERTS = ROOT / "deploy/helm/herald/files/alerts.yaml"
TESTS = ROOT / "tests/prometheus/alerts_test.yaml"
DASHBOARD = ROOT / "deploy/helm/herald/files/herald-dashboard.json"


def fail(message):
    print(f"check-observability: {message}", file=sys.stderr)
    sys.exit(1)


def run(*args):
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        fail(f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}")


def exposed():
    """Series names Herald exposes, from the metric definitions."""
    source = (ROOT / "crates/herald-core/src/metrics.rs").read_text()
    names = set()
    for kind, name in re.findall(r'(Family|Histogram)::new\(\s*"(herald_[a-z_]+)"', source):
        names.add(name)
        if kind == "Histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    if len(names) < 10:
        fail(f"found only {sorted(names)} in metrics.rs")
    return names


def used(expr):
    return set(re.findall(r"\bherald_[a-z_]+\b", expr))


def main():
    known = exposed()
    run("check", "rules", str(ALERTS.relative_to(ROOT)))
    run("test", "rules", str(TESTS.relative_to(ROOT)))
    for metric in used(ALERTS.read_text()) - known:
        fail(f"alerts.yaml uses {metric}, which Herald does not expose")

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    if len(exprs) < 15:
        fail(f"the dashboard has only {len(exprs)} queries")
    for expr in exprs:
        for metric in used(expr) - known:
            fail(f"the dashboard queries {metric}, which Herald does not expose: {expr}")
    rules = "groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e.replace('$__rate_interval', '5m'))}\n"
        for i, e in enumerate(exprs)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(rules)
    run("check", "rules", f.name)
    Path(f.name).unlink()
    print(f"observability: {len(known)} series exposed; alerts checked and unit-tested; "
          f"{len(exprs)} dashboard queries parse and name only exposed series")


main()
