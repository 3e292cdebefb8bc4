"""Parses Prometheus text from stdin with prometheus_client's parser (the
reference Python implementation) and prints the families as JSON; exits
non-zero on text the parser refuses."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "samples": [
            {"name": s.name, "labels": s.labels, "value": s.value}
            for s in family.samples
        ],
    })
json.dump(families, sys.stdout)
