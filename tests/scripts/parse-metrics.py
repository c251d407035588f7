"""Parses a /metrics body (stdin) with the Prometheus project's own parser (the
`prometheus-client` package from PyPI): OpenMetrics when the body says so (`# EOF`), the
classic text format otherwise. A malformed body fails the parse (exit 1). Prints JSON:
{"types": {family: type}, "samples": [[name, {label: value}, value, exemplar-or-null]]}.
"""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
from prometheus_client.parser import text_string_to_metric_families as classic

text = sys.stdin.read()
parse = openmetrics if text.rstrip().endswith("# EOF") else classic
types, samples = {}, []
for family in parse(text):
    types[family.name] = family.type
    for s in family.samples:
        exemplar = None
        if s.exemplar is not None:
            exemplar = {"labels": dict(s.exemplar.labels), "value": s.exemplar.value}
        samples.append([s.name, dict(s.labels), s.value, exemplar])
print(json.dumps({"types": types, "samples": samples}))
