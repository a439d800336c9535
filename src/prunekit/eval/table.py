"""One markdown table for evaluation results, with one column per model state (dense, pruned, ...).

Rows: perplexity per set; per zero-shot task its `acc` (and `acc_norm` where lm-eval defines it)
± standard error; the mean accuracy, naming the metric it averages. A `*` marks an accuracy within
two standard errors of chance, i.e. a task the model has not shown it can do; differences within two
standard errors between columns are ties.
"""

from __future__ import annotations


def results_table(columns: dict[str, dict]) -> str:
    """Markdown for {column name: evaluate_suite() result}; every column is expected to hold the same rows."""
    first = next(iter(columns.values()))
    names = list(columns)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name in first["ppl"]:
        lines.append(f"| perplexity {name} | " + " | ".join(f"{c['ppl'][name]:.2f}" for c in columns.values()) + " |")
    for task, score in first["zero_shot"].items():
        metrics = ["acc"] + (["acc_norm"] if score.get("acc_norm") is not None else [])
        for metric in metrics:
            cells = [_accuracy(c["zero_shot"][task], metric) for c in columns.values()]
            lines.append(f"| {task} {metric} | " + " | ".join(cells) + " |")
    mean = first.get("zero_shot_mean")
    if mean:
        label = f"mean {mean['metric']} ({len(mean['tasks'])} tasks)"
        lines.append(f"| {label} | " + " | ".join(f"{c['zero_shot_mean']['value']:.4f}" for c in columns.values())
                     + " |")
    notes = []
    if first["zero_shot"]:
        scored = {s["examples"] for c in columns.values() for s in c["zero_shot"].values()}
        whole = all(s["examples"] == s["split_examples"] for c in columns.values() for s in c["zero_shot"].values())
        if not whole:
            notes.append(f"zero-shot on the first {max(scored)} documents of each task only (--limit): "
                         "a limited run, not comparable with full-split numbers")
        notes.append("* within two standard errors of chance (a uniform guess over each question's choices)")
    return "\n".join(lines + [""] + notes if notes else lines)


def _accuracy(score: dict, metric: str) -> str:
    value, stderr = score[metric], score[f"{metric}_stderr"]
    near = abs(value - score["chance"]) <= 2 * stderr
    return f"{value:.4f} ± {stderr:.4f}{' *' if near else ''}"
