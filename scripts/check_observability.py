#!/usr/bin/env python3
"""Checks a real /metrics scrape against the Grafana dashboard and the alert
rules, with tools no one here wrote:

- the scrape is parsed by prometheus_client's text parser (the reference
  Python implementation of the exposition format) and linted by
  `promtool check metrics`;
- deploy/prometheus/alerts.yml is checked by `promtool check rules`;
- every dashboard query is checked for PromQL syntax by `promtool check
  rules` too (each becomes a recording rule, Grafana variables substituted);
- every warden_* metric that a query or rule uses must exist in the scrape.

Usage: check_observability.py SCRAPE_FILE [--dump]
With --dump, prints the parsed samples as JSON ([{name, labels, value}]) on
stdout, for the end-to-end test to compare counters with the requests sent.
Needs prometheus_client and PyYAML (scripts/setup.sh installs them into
.runtime/py) and promtool (Debian package `prometheus`). Exit 1 on a problem.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = pathlib.Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy/grafana/warden.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
METRIC = re.compile(r"\bwarden_[a-z0-9_]+\b")


def promtool(*args):
    out = subprocess.run(["promtool", *args], capture_output=True, text=True)
    return out.returncode, (out.stdout + out.stderr).strip()


def dashboard_queries(dashboard):
    for panel in dashboard.get("panels", []):
        if not panel.get("targets"):
            raise SystemExit(f"dashboard panel {panel.get('title')!r} has no query")
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    if shutil.which("promtool") is None:
        raise SystemExit("promtool is missing: run ./scripts/setup.sh (Debian package prometheus)")
    scrape = pathlib.Path(sys.argv[1]).read_text()
    problems = []

    samples = []
    names = set()
    for family in text_string_to_metric_families(scrape):
        names.add(family.name)
        for s in family.samples:
            names.add(s.name)
            samples.append({"name": s.name, "labels": s.labels, "value": s.value})

    with tempfile.TemporaryDirectory() as tmp:
        scrape_file = pathlib.Path(tmp) / "scrape.txt"
        scrape_file.write_text(scrape)
        out = subprocess.run(
            ["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True
        )
        if out.returncode != 0:
            problems.append(f"promtool check metrics: {(out.stdout + out.stderr).strip()}")

        code, text = promtool("check", "rules", str(ALERTS))
        if code != 0:
            problems.append(f"promtool check rules {ALERTS.name}: {text}")
        rules = yaml.safe_load(ALERTS.read_text())
        exprs = [
            (f"alert {r['alert']}", r["expr"])
            for g in rules["groups"]
            for r in g["rules"]
        ]

        dashboard = json.loads(DASHBOARD.read_text())
        queries = list(dashboard_queries(dashboard))
        as_rules = {
            "groups": [
                {
                    "name": "dashboard",
                    "rules": [
                        {
                            "record": f"dashboard:query_{i}",
                            "expr": q.replace("$__rate_interval", "5m").replace("$instance", ".*"),
                        }
                        for i, (_, q) in enumerate(queries)
                    ],
                }
            ]
        }
        dash_rules = pathlib.Path(tmp) / "dashboard.yml"
        dash_rules.write_text(yaml.safe_dump(as_rules))
        code, text = promtool("check", "rules", str(dash_rules))
        if code != 0:
            problems.append(f"dashboard queries are not valid PromQL: {text}")
        exprs += [(f"dashboard panel {t!r}", q) for t, q in queries]

    for where, expr in exprs:
        for metric in METRIC.findall(expr):
            if metric not in names:
                problems.append(f"{where} uses {metric}, which the scrape does not have")

    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    if "--dump" in sys.argv:
        json.dump(samples, sys.stdout)
    else:
        print(f"ok: {len(exprs)} queries and rules, {len(names)} metric names in the scrape")


if __name__ == "__main__":
    main()
