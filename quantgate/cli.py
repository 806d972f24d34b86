"""The command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import QuantgateError, require

DEFAULT_RECIPES = "dynamic,static,int8,int4-g32"


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
    from .artifact import save
    from .quantize import quantize
    from .recipes import Recipe
    model = _model(a)
    recipe = Recipe.parse(a.recipe)
    _, cal = _load_data(a, "quantize")
    train = _train_data(a) if recipe.method == "qat" else None
    q = quantize(model, recipe, cal if recipe.needs_calibration else None, train=train)
    out = save(q, model, a.out, overwrite=a.overwrite)
    print(f"{q.name}: {len(q.quantized_layers)} linear layers quantized ({q.kernel}), {len(q.float_layers)} kept in "
          f"float; weights {q.weight_bytes / 2**20:.1f} MB; {q.seconds:.1f}s\nsaved to {out}")
    return 0


def _compare(a, recipes):
    from .compare import Settings, compare
    from .recipes import Recipe
    model = _model(a)
    data, cal = _load_data(a, "evaluate")
    parsed = [Recipe.parse(r) for r in recipes]
    s = Settings(batch_sizes=_batch_sizes(a.batch_sizes), perf_budget_s=a.perf_seconds)
    train = None
    if any(r.method == "qat" for r in parsed):
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


def _finish(comp, a) -> int:
    from .report import table, write_reports
    d = comp.to_dict()
    print(table(d))
    out = Path(a.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
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
    pf = perf.measure({name: module}, model, data.texts, _batch_sizes(a.batch_sizes), budget_s=a.perf_seconds)[name]
    res = {"model": name, "n": len(data), "accuracy": metrics.accuracy(pr.labels, pr.pred),
           "macro_f1": metrics.macro_f1(pr.labels, pr.pred, len(model.labels)), "perf": pf}
    print(json.dumps(res, indent=2))
    return 0


def cmd_compare(a) -> int:
    return _finish(_compare(a, [r for r in a.recipes.split(",") if r.strip()]), a)


def cmd_demo(a) -> int:
    a.model, a.data, a.calibration = None, None, None
    a.out = a.out or "runs/demo"
    print("quantgate demo: fine-tuned all-MiniLM-L6-v2 on BBC News (cached after the first run), "
          f"compared against {a.recipes} on the BBC test split\n", file=sys.stderr)
    return _finish(_compare(a, a.recipes.split(",")), a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantgate", description="Quantize a fine-tuned model and prove the result on your task.")
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("finetune", help="fine-tune a sequence classifier (cached)")
    f.add_argument("--base", help="base model directory (default: the bundled all-MiniLM-L6-v2)")
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--precision", default="auto", help="auto, fp32, bf16 or fp16 (CUDA)")
    f.add_argument("--out", help="output directory (default: the cache)")
    f.add_argument("--max-length", type=int, default=128)
    _add_data(f)
    f.set_defaults(fn=cmd_finetune)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="fine-tuned Hugging Face classifier directory (default: the demo model)")
    common.add_argument("--max-length", type=int, default=128, help="tokens per example (default 128)")
    common.add_argument("--batch-sizes", default="1,32", help="batch sizes for latency (default 1,32)")
    common.add_argument("--perf-seconds", type=float, default=5.0, help="time budget per latency measurement")

    q = sub.add_parser("quantize", parents=[common], help="quantize a model and save the artifact")
    q.add_argument("--recipe", required=True, help="dynamic, static, int8, int4-g<N>, or a recipe .yaml/.json")
    q.add_argument("--out", required=True, help="artifact directory to create")
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--train", help="labelled training data for a QAT recipe (same columns as --data)")
    _add_data(q, calibration=True)
    q.set_defaults(fn=cmd_quantize)

    e = sub.add_parser("evaluate", parents=[common], help="evaluate one model (optionally quantized)")
    e.add_argument("--recipe", help="quantize with this recipe first")
    _add_data(e, calibration=True)
    e.set_defaults(fn=cmd_evaluate)

    for name, fn, help_ in (("compare", cmd_compare, "compare the baseline with quantized candidates"),
                            ("demo", cmd_demo, "the whole job on the bundled default")):
        c = sub.add_parser(name, parents=[common], help=help_)
        c.add_argument("--recipes", default=DEFAULT_RECIPES, help=f"comma-separated (default {DEFAULT_RECIPES})")
        c.add_argument("--out", help="report directory (default runs/<time>, or runs/demo)")
        c.add_argument("--fail-on-slower", action="store_true", help="exit 3 if a candidate is slower than fp32")
        if name == "compare":
            _add_data(c, calibration=True)
            c.add_argument("--train", help="labelled training data for QAT recipes (same columns as --data)")
        c.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except QuantgateError as e:
        print(f"quantgate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantgate: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
