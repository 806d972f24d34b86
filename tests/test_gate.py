"""The deployment gate: pass, fail and uncertain on paired intervals, how many
examples would settle an uncertain drop, and the command's exit codes."""

import json
import math

import pytest

from quantgate.cli import main
from quantgate.errors import QuantgateError
from quantgate.gate import Budget, drop_verdict, gate


def metric(delta, lo, hi):
    return {"baseline": 0.98, "candidate": 0.98 + delta, "delta": delta, "ci_low": lo, "ci_high": hi}


def comparison(delta=-0.0036, lo=-0.0108, hi=0.0036, p95=20.0, slice_delta=(-0.05, -0.08, -0.025)):
    cand = {"name": "static", "weight_bytes": 23 * 2**20,
            "metrics": {"accuracy": metric(delta, lo, hi), "macro_f1": metric(delta, lo, hi)},
            "slices": {"topic": [{"value": "sport", "n": 100, "accuracy": metric(*slice_delta),
                                  "macro_f1": metric(*slice_delta)}]},
            "perf": {"batch_sizes": {"1": {"p50_ms": 5.0, "p95_ms": 6.0}, "32": {"p50_ms": 15.0, "p95_ms": p95}}}}
    return {"data": {"n": 556}, "baseline": {"name": "fp32"}, "candidates": [cand]}


def test_verdicts_follow_the_interval():
    assert drop_verdict("x", metric(-0.0036, -0.0108, 0.0036), 2.0, 556)["verdict"] == "pass"
    assert drop_verdict("x", metric(-0.03, -0.04, -0.02), 1.0, 556)["verdict"] == "fail"
    r = drop_verdict("x", metric(-0.0036, -0.0108, 0.0036), 1.0, 556)
    assert r["verdict"] == "uncertain" and r["leans"] == "pass"
    assert drop_verdict("x", metric(-0.012, -0.02, -0.004), 1.0, 556)["leans"] == "fail"


def test_n_needed_shrinks_the_interval_off_the_budget():
    n, limit = 556, 1.0
    r = drop_verdict("x", metric(-0.0036, -0.0108, 0.0036), limit, n)
    half = (1.08 - (-0.36)) / 2
    # an interval of the same centre, shrunk by sqrt(n / n_needed), just stops crossing the budget
    shrunk = half * math.sqrt(n / r["n_needed"])
    assert 0.36 + shrunk <= limit + 1e-9 and 0.36 + half * math.sqrt(n / (r["n_needed"] - 5)) > limit
    assert "would settle it" in r["detail"]
    on_budget = drop_verdict("x", metric(-0.01, -0.02, 0.0), 1.0, n)
    assert on_budget["n_needed"] is None and "will not settle it" in on_budget["detail"]


def test_uncertain_decides_by_the_estimate_unless_strict():
    comp = comparison()
    assert gate(comp, Budget(max_drop=1.0)).results[0]["passed"] is True
    r = gate(comp, Budget(max_drop=1.0, strict=True)).results[0]
    assert r["passed"] is False and r["verdict"] == "uncertain" and "crosses 1" in r["missed"][0]


def test_slice_latency_and_memory_constraints():
    r = gate(comparison(), Budget(max_drop=2.0, max_slice_drop=2.0, max_latency_ms=10.0, max_memory_mb=10)).results[0]
    assert not r["passed"]
    missed = " | ".join(r["missed"])
    assert "drop 5.00 points, at least 2.50 at 95%, over 2" in missed                  # the sport slice
    assert "p95 20.0 ms over 10 ms" in missed and "p95 6.0 ms" not in missed           # batch 32 only
    assert "23.0 MB of weights over 10 MB" in missed
    with pytest.raises(QuantgateError, match="no latency at batch size 8 .* re-run with --batch-sizes 8"):
        gate(comparison(), Budget(max_latency_ms=10.0, batch_sizes=(8,)))
    with pytest.raises(QuantgateError, match="max_drop must be a number >= 0"):
        Budget(max_drop=-1)


def test_gate_command_exit_codes(tmp_path, capsys):
    p = tmp_path / "comparison.json"
    p.write_text(json.dumps(comparison()))
    assert main(["gate", str(tmp_path), "--max-drop", "2"]) == 0
    assert "static: PASS" in capsys.readouterr().out
    assert main(["gate", str(p), "--max-drop", "1", "--strict"]) == 1
    out = capsys.readouterr().out
    assert "FAIL (uncertain)" in out and "about 704 evaluation examples (now 556) would settle it" in out
    assert main(["gate", str(p), "--max-drop", "1", "--max-latency-ms", "10", "--gate-batch-sizes", "32"]) == 1
    assert "p95 20.0 ms over 10 ms" in capsys.readouterr().out
    assert main(["gate", str(tmp_path / "missing.json")]) == 2
    assert "no comparison at" in capsys.readouterr().err
