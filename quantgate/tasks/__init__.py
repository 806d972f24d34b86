"""How a task runs and scores a model. One protocol, one implementation per
kind of task; the comparison, the gate, the report and the terminal table read
any of them through it.

    task = tasks.for_model(model, data, settings)
    base = task.score(model.module, "fp32")            # per-example results
    task.summary(base)                                 # the baseline's metric values
    task.compare(base, task.score(candidate, name))    # metrics with paired intervals, slices, changed examples
    task.speed({"fp32": model.module, name: candidate})   # latency / throughput per batch size (raw samples kept,
    task.speed({name: candidate}, share=1 / 3)             # so a third of the timing in each of 3 rounds merges)
    call, what = task.memory_probe()                   # one representative call: each model's own memory

Every task also says what it reports (`describe()`: `kind`, `primary` metric,
`metrics` with how each is read, the columns of its changed examples, the unit
of its latency) and its default latency `batch_sizes`, so the upper layers need
no branch per task.

Kinds: `sequence-classification` (classification.py), `language-modelling` on
raw text (causal_lm.py: perplexity, KL, same top token, the generation diff),
and `prompted` tasks for fine-tuned LMs (prompted.py: exact match, choice
accuracy by log-likelihood, token F1)."""

from __future__ import annotations


def metric(name: str, label: str, kind: str = "share", lower_is_better: bool = False) -> dict:
    """How a metric is read: a `share` (0..1, shown and budgeted in points) or a
    `value` (shown as is; a lower-is-better value is budgeted as a % rise)."""
    assert kind in ("share", "value")
    return {"name": name, "label": label, "kind": kind, "lower_is_better": lower_is_better}


def description(task: dict | None) -> dict:
    """A comparison's task description (its "task" entry); a classifier comparison
    saved before tasks described themselves carries none."""
    if task:
        return task
    from .classification import Classification
    return {"kind": Classification.kind, "primary": Classification.primary, "items": Classification.items,
            "metrics": Classification.metrics, "latency_unit": "call", "token_evidence": False,
            "changed_columns": Classification.changed_columns, "changed_title": "Changed predictions",
            "about": "examples"}


def for_model(model, data, settings):
    """The task for a model and its evaluation data: a classifier and a labelled
    Dataset; a causal LM and a PromptSet (prompted task), or a Dataset or list of
    texts (language modelling on raw text)."""
    from ..errors import QuantgateError
    from ..models import CausalLM, Model
    if isinstance(model, Model):
        from .classification import Classification
        return Classification(model, data, settings)
    if isinstance(model, CausalLM):
        from .prompted import PromptSet, PromptedTask
        if isinstance(data, PromptSet):
            return PromptedTask(model, data, settings)
        from ..data import Dataset
        from .causal_lm import LanguageModelling
        if isinstance(data, Dataset):
            return LanguageModelling(model, list(data.texts), settings, source=data.source)
        return LanguageModelling(model, list(data), settings)
    raise QuantgateError("model must be a quantgate Model or CausalLM: use quantgate.models.load_classifier(DIR) "
                         "or load_causal_lm(DIR)")
