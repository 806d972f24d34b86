"""`quantgate auto`: walks the paths in order under a budget, chooses on the
Pareto front, saves to the registry, and exits non-zero when nothing passes."""

import json

import pytest

from quantgate.cli import main
from quantgate.compare import Settings
from quantgate.data import split
from quantgate.gate import Budget
from quantgate.plan import _dominates, _objectives, auto, pareto
from quantgate.registry import Registry

from browser import chromium, load


@pytest.fixture(scope="module")
def eval_data(bbc):
    return split(bbc["test"], {"a": 0.75, "b": 0.25})["b"]        # 139 stratified test articles


@pytest.fixture(scope="module")
def planned(model, bbc, eval_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    # batch 32 is the evaluation batch: the compiled int8 graphs need no second compilation for latency
    s = Settings(batch_sizes=(32,), perf_budget_s=0.2, perf_min_reps=3, n_boot=500, verbose=False)
    comp, plan = auto(model, eval_data, bbc["calibration"], Budget(max_drop=0.5, batch_sizes=(32,)), settings=s,
                      registry=Registry(root), base_name="minilm-bbc")
    return comp, plan, Registry(root)


def test_pareto_front():
    pts = {"a": [1, 5], "b": [2, 2], "c": [3, 3], "d": [5, 1], "e": [2, 2]}
    assert sorted(pareto(pts)) == ["a", "b", "d", "e"]            # c is dominated by b; ties are kept


def test_auto_walks_the_paths_in_order_and_chooses_a_passing_candidate(planned):
    comp, plan, _ = planned
    order = [st["recipe"].split("+")[0] for st in plan["steps"]]
    firsts = [r for i, r in enumerate(order) if r not in order[:i]]
    assert firsts == ["dynamic", "static", "int8", "int4-g32"]
    assert plan["chosen"] is not None and plan["chosen"] in plan["front"] and plan["chosen"] in plan["passing"]
    cands = {c.name: c for c in comp.candidates}
    chosen = cands[plan["chosen"]]
    assert -100 * chosen.metrics["accuracy"]["delta"] <= 0.5                        # within budget (estimate)
    # no passing candidate dominates the choice on latency and memory
    objectives = {v["name"]: list(v["objectives"].values()) for v in plan["candidates"]}
    assert objectives[plan["chosen"]] == _objectives(comp.to_dict()["candidates"][list(cands).index(plan["chosen"])],
                                                     plan["batch_sizes"])
    assert not any(_dominates(objectives[n], objectives[plan["chosen"]]) for n in plan["passing"])
    # every candidate that lost says why
    for v in plan["candidates"]:
        assert v["why"] and (v["name"] == plan["chosen"] or v["why"].startswith(("missed the budget", "passes")))


def test_a_miss_is_retried_with_its_most_sensitive_layers_in_float(planned):
    comp, plan, _ = planned
    for i, st in enumerate(plan["steps"]):
        if not st["accuracy_ok"] and "+" not in st["recipe"]:
            retry = plan["steps"][i + 1]
            assert retry["recipe"] == st["recipe"] + "+float3" and "most sensitive layer(s) in float" in retry["why_tried"]
            assert len(comp.candidate(retry["recipe"]).float_layers) >= 3


def test_the_choice_is_saved_with_its_evidence(planned):
    comp, plan, reg = planned
    assert [s["name"] for s in plan["saved"]] == [plan["chosen"]]
    row = reg.get(plan["saved"][0]["version"])
    assert row["version"].startswith("minilm-bbc-") and row["version"].endswith("-v1")
    assert row["evaluation"]["gate"]["passed"] is True and row["base_sha"] == comp.model["sha"]
    assert reg.check()["problems"] == []


@pytest.mark.skipif(chromium() is None, reason="Chromium is installed by `make test`")
def test_the_report_shows_the_path_and_the_pareto_chart(planned, tmp_path):
    from quantgate.report import write_reports
    comp, plan, _ = planned
    paths = write_reports(comp, tmp_path)
    dom, console = load(paths["html"])
    assert console == []
    assert f"Chosen: <b>{plan['chosen']}</b>" in dom and 'class="front"' in dom
    assert dom.count("<tr data-verdict=") == len(comp.candidates)
    saved = json.loads(paths["json"].read_text())
    assert saved["plan"]["chosen"] == plan["chosen"]
    assert main(["gate", str(tmp_path), "--max-drop", "0.5"]) == 0                   # gates auto's choice


def test_an_impossible_budget_exits_non_zero_and_still_saves_the_best(tmp_path, eval_data, bbc, capsys, finetuned_dir):
    data = tmp_path / "eval.jsonl"
    ev = eval_data.head(80)
    import pandas as pd
    pd.DataFrame({"text": ev.texts, "label": ev.labels}).to_json(data, orient="records", lines=True)
    cal = tmp_path / "cal.jsonl"
    pd.DataFrame({"text": bbc["calibration"].texts[:64], "label": bbc["calibration"].labels[:64]}).to_json(
        cal, orient="records", lines=True)
    root = tmp_path / "reg"
    code = main(["auto", "--model", str(finetuned_dir), "--data", str(data), "--calibration", str(cal),
                 "--max-drop", "0.5", "--max-latency-ms", "0.01", "--batch-sizes", "1", "--perf-seconds", "0.2",
                 "--paths", "dynamic,int8", "--keep-float", "", "--registry", str(root), "--name", "minilm-bbc",
                 "--out", str(tmp_path / "report")])
    out = capsys.readouterr().out
    assert code == 1
    assert "no candidate meets the budget; best candidates:" in out
    assert out.count("missed the budget:") == 2 and out.count("over 0.01 ms") >= 2
    assert "fp32 itself misses: p95" in out
    versions = [r["version"] for r in Registry(root).list()]
    assert versions and all(v.startswith("minilm-bbc-") for v in versions)
