"""Regression guard for the symplectic benchmarks: compare a new run's JSON with a committed baseline.

    PYTHONPATH=src python benchmarks/symplectic/regress.py --baseline A.json --latest B.json

The metrics checked are the baseline's ``checks`` (each a dotted path into ``metrics`` and a kind), compared on
their means over seeds: delta % = (latest − baseline) / max(|baseline|, 1e-12) · 100. A ``loss`` fails when it
rises more than ``--max-loss-regression-pct`` (5), a ``time`` when it rises more than
``--max-time-regression-pct`` (10), a ``gain`` (higher is better) when it falls more than
``--min-gain-regression-pct`` (5). Runs of a different protocol or config are refused outright (a guard that
compares a small CPU run with a large GPU baseline measures nothing); a different device only with
``--allow-device-change``. Prints a table; exits 1 on any failure or refusal, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

KINDS = ("loss", "time", "gain")


class Refused(Exception):
    """The two runs cannot be compared."""


def _load(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise Refused(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise Refused(f"{path}: not JSON ({err})") from None
    for key in ("protocol", "config", "metrics", "checks", "device"):
        if key not in data:
            raise Refused(f"{path}: not a symplectic benchmark report (no {key!r})")
    return data


def _lookup(metrics: dict[str, Any], path: str, source: str) -> float:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise Refused(f"{source} has no metric {path!r}")
        node = node[part]
    value = node["mean"] if isinstance(node, dict) and "mean" in node else node
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Refused(f"{source}: metric {path!r} is not a number ({value!r})")
    return float(value)


def compare(baseline: dict[str, Any], latest: dict[str, Any], tolerances: dict[str, float],
            allow_device_change: bool = False) -> list[dict[str, Any]]:
    """One row per check: metric, kind, baseline, latest, delta %, passed."""
    if baseline["protocol"] != latest["protocol"]:
        raise Refused(f"protocol differs: baseline {baseline['protocol']!r}, latest {latest['protocol']!r}")
    if baseline["config"] != latest["config"]:
        diff = sorted(k for k in set(baseline["config"]) | set(latest["config"])
                      if baseline["config"].get(k) != latest["config"].get(k))
        raise Refused(f"config differs in {', '.join(diff)}: rerun the baseline's config")
    base_dev = {k: baseline["device"].get(k) for k in ("device", "torch", "threads")}
    new_dev = {k: latest["device"].get(k) for k in ("device", "torch", "threads")}
    if base_dev != new_dev and not allow_device_change:
        raise Refused(f"device differs: baseline {base_dev}, latest {new_dev} (--allow-device-change to compare)")
    rows = []
    for check in baseline["checks"]:
        kind = check.get("kind")
        if kind not in KINDS:
            raise Refused(f"baseline check {check!r} has kind {kind!r}; expected one of {KINDS}")
        old = _lookup(baseline["metrics"], check["path"], "baseline")
        new = _lookup(latest["metrics"], check["path"], "latest")
        delta = (new - old) / max(abs(old), 1e-12) * 100
        passed = delta >= -tolerances[kind] if kind == "gain" else delta <= tolerances[kind]
        rows.append({"metric": check["path"], "kind": kind, "baseline": old, "latest": new, "delta_pct": delta,
                     "passed": passed})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True)
    p.add_argument("--latest", required=True)
    p.add_argument("--max-loss-regression-pct", type=float, default=5.0)
    p.add_argument("--max-time-regression-pct", type=float, default=10.0)
    p.add_argument("--min-gain-regression-pct", type=float, default=5.0)
    p.add_argument("--allow-device-change", action="store_true")
    args = p.parse_args(argv)
    tolerances = {"loss": args.max_loss_regression_pct, "time": args.max_time_regression_pct,
                  "gain": args.min_gain_regression_pct}
    try:
        rows = compare(_load(args.baseline), _load(args.latest), tolerances, args.allow_device_change)
    except Refused as err:
        print(f"regress: error: {err}", file=sys.stderr)
        return 1
    print("| metric | kind | baseline | latest | delta % | result |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['kind']} | {r['baseline']:.6g} | {r['latest']:.6g} | {r['delta_pct']:+.2f} | "
              f"{'PASS' if r['passed'] else 'FAIL'} |")
    failed = sum(not r["passed"] for r in rows)
    print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
