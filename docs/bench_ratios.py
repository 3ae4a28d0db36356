#!/usr/bin/env python3
"""Prints the ratios of docs/benchmarks.md from Criterion's results in target/criterion."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def mean_us(group, alg):
    path = root / group / alg / "new" / "estimates.json"
    est = json.loads(path.read_text())
    return est["mean"]["point_estimate"] / 1000.0, est["median"]["point_estimate"] / 1000.0


print("| alg | raw verify | raw verify, key parsed per call | validate | validate / raw | raw sign | issue | issue / raw |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for alg in ["EdDSA", "ES256", "RS256", "PS256"]:
    rv, _ = mean_us("raw_verify", alg)
    ru, _ = mean_us("raw_verify_unparsed", alg)
    va, _ = mean_us("validate", alg)
    rs, _ = mean_us("raw_sign", alg)
    iss, _ = mean_us("issue", alg)
    print(f"| {alg} | {rv:.1f} µs | {ru:.1f} µs | {va:.1f} µs | {va / rv:.3f}x | {rs:.1f} µs | {iss:.1f} µs | {iss / rs:.3f}x |")
