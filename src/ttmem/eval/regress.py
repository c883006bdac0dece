"""Regression guard for benchmark reports: compare a new run's JSON with a committed baseline.

A report is a JSON object with ``protocol``, ``config``, ``device``, ``metrics`` and ``checks`` (the format the
symplectic benchmarks write). The metrics checked are the baseline's ``checks`` (each a dotted path into
``metrics`` and a kind), compared on their means over seeds: delta % = (latest − baseline) / max(|baseline|,
1e-12) · 100. A ``loss`` fails when it rises more than the loss tolerance (default 5 %), a ``time`` when it rises
more than the time tolerance (10 %), a ``gain`` (higher is better) when it falls more than the gain tolerance
(5 %).

Design choices: runs of a different protocol or config are refused outright (a guard that compares a small CPU
run with a large GPU baseline measures nothing); a different device, torch version or thread count is refused
unless the caller allows it. Every reason to refuse is a :class:`RegressionRefused` with a one-line message,
so a command line can print it as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KINDS = ("loss", "time", "gain")
DEFAULT_TOLERANCES = {"loss": 5.0, "time": 10.0, "gain": 5.0}
_REPORT_KEYS = ("protocol", "config", "metrics", "checks", "device")
_DEVICE_KEYS = ("device", "torch", "threads")


class RegressionRefused(ValueError):
    """The two reports cannot be compared (or one is not a report); the message is one line."""


def load_report(path: str | Path) -> dict[str, Any]:
    """A benchmark report read from ``path``; RegressionRefused if it is missing, not JSON or lacks a key."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RegressionRefused(f"{path}: no such file") from None
    except IsADirectoryError:
        raise RegressionRefused(f"{path}: is a directory, expected a JSON report") from None
    except UnicodeDecodeError:
        raise RegressionRefused(f"{path}: not JSON (not UTF-8 text)") from None
    except json.JSONDecodeError as err:
        raise RegressionRefused(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise RegressionRefused(f"{path}: not a benchmark report (expected a JSON object)")
    for key in _REPORT_KEYS:
        if key not in data:
            raise RegressionRefused(f"{path}: not a benchmark report (no {key!r})")
    return data


def _lookup(metrics: dict[str, Any], path: str, source: str) -> float:
    node: Any = metrics
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise RegressionRefused(f"{source} has no metric {path!r}")
        node = node[part]
    value = node["mean"] if isinstance(node, dict) and "mean" in node else node
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RegressionRefused(f"{source}: metric {path!r} is not a number ({value!r})")
    return float(value)


def compare_reports(baseline: dict[str, Any], latest: dict[str, Any],
                    tolerances: dict[str, float] | None = None,
                    allow_device_change: bool = False) -> list[dict[str, Any]]:
    """One row per baseline check: metric, kind, baseline, latest, delta_pct, passed."""
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if baseline["protocol"] != latest["protocol"]:
        raise RegressionRefused(
            f"protocol differs: baseline {baseline['protocol']!r}, latest {latest['protocol']!r}")
    if baseline["config"] != latest["config"]:
        diff = sorted(k for k in set(baseline["config"]) | set(latest["config"])
                      if baseline["config"].get(k) != latest["config"].get(k))
        raise RegressionRefused(f"config differs in {', '.join(diff)}: rerun the baseline's config")
    base_dev = {k: baseline["device"].get(k) for k in _DEVICE_KEYS}
    new_dev = {k: latest["device"].get(k) for k in _DEVICE_KEYS}
    if base_dev != new_dev and not allow_device_change:
        raise RegressionRefused(
            f"device differs: baseline {base_dev}, latest {new_dev} (allow a device change to compare)")
    rows = []
    for check in baseline["checks"]:
        kind = check.get("kind") if isinstance(check, dict) else None
        if kind not in KINDS:
            raise RegressionRefused(f"baseline check {check!r} has kind {kind!r}; expected one of {KINDS}")
        old = _lookup(baseline["metrics"], check["path"], "baseline")
        new = _lookup(latest["metrics"], check["path"], "latest")
        delta = (new - old) / max(abs(old), 1e-12) * 100
        passed = delta >= -tolerances[kind] if kind == "gain" else delta <= tolerances[kind]
        rows.append({"metric": check["path"], "kind": kind, "baseline": old, "latest": new,
                     "delta_pct": delta, "passed": passed})
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows and a closing "N passed, M failed" line."""
    lines = ["| metric | kind | baseline | latest | delta % | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['metric']} | {r['kind']} | {r['baseline']:.6g} | {r['latest']:.6g} | "
                     f"{r['delta_pct']:+.2f} | {'PASS' if r['passed'] else 'FAIL'} |")
    failed = sum(not r["passed"] for r in rows)
    lines.append(f"{len(rows) - failed} passed, {failed} failed")
    return "\n".join(lines)
