"""Pictures of pruning runs, drawn from report.json alone (matplotlib, no display needed): `layers.png` beside
every saved model (per decoder layer: sparsity and each operator's reconstruction error; for methods that
train, the loss per step), and `prunekit report`'s comparison of several runs."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError

_LAYER = re.compile(r"\.(\d+)\.")


def per_layer(report: dict) -> tuple[list[int], list[float], dict[str, list[float]]]:
    """(layer indices, sparsity of each layer's pruned weights, {operator name: reconstruction error per layer})
    from report.json's operator records."""
    zeros, sizes, errors = {}, {}, {}
    for op in report.get("layers", []):
        found = _LAYER.search(op["name"])
        if found is None:
            continue
        index, n = int(found.group(1)), op["shape"][0] * op["shape"][1]
        zeros[index] = zeros.get(index, 0.0) + op["sparsity"] * n
        sizes[index] = sizes.get(index, 0) + n
        errors.setdefault(op["name"].rsplit(".", 1)[-1], {})[index] = op["recon_error"]
    layers = sorted(sizes)
    return layers, [zeros[i] / sizes[i] for i in layers], \
        {name: [by_layer.get(i, float("nan")) for i in layers] for name, by_layer in errors.items()}


def training_loss(report: dict) -> list[float]:
    """The loss per optimizer step of a method that trains (RotPruner, RotPruner-structured, LoSA's stages)."""
    details = report.get("details", {})
    for part in (details, *(value for value in details.values() if isinstance(value, dict))):
        training = part.get("training")  # details["rotpruner"]["training"], details["slicegpt"]["training"], ...
        if isinstance(training, dict) and training.get("loss"):
            return list(training["loss"])
    return [loss for stage in details.get("stages", []) for loss in stage.get("train", {}).get("loss", [])]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_layers(report: dict, path: str | Path) -> None:
    """layers.png: sparsity per layer, reconstruction error per operator and layer (log scale) and, if the method
    trains, its loss per step."""
    plt = _pyplot()
    layers, sparsity, errors = per_layer(report)
    loss = training_loss(report)
    panels = (2 if layers else 0) + (1 if loss else 0) or 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.8 * panels), squeeze=False)
    axes = list(axes[:, 0])
    title = f"{report.get('method', '?')} {report.get('pattern', '')}"
    if layers:
        ax = axes.pop(0)
        ax.bar(layers, sparsity, color="tab:blue")
        ax.set(ylabel="sparsity", xlabel="decoder layer", ylim=(0, 1), title=title)
        ax = axes.pop(0)
        for name, values in errors.items():
            ax.plot(layers, values, marker=".", label=name)
        ax.set(ylabel="‖WX − ŴX‖² / ‖WX‖²", xlabel="decoder layer", yscale="log")
        ax.legend(fontsize="small", ncol=4)
    if loss:
        ax = axes.pop(0)
        ax.plot(range(1, len(loss) + 1), loss)
        ax.set(ylabel="training loss", xlabel="step", title=None if layers else title)
    if not layers and not loss:
        ax = axes.pop(0)
        ax.text(0.5, 0.5, f"{title}: no per-operator records", ha="center", va="center")
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_reports(run_dirs: list[str]) -> dict[str, dict]:
    """{run folder: its report.json}; a folder without one is a UsageError naming it."""
    import json

    reports = {}
    for run in run_dirs:
        path = Path(run) / "report.json"
        if not path.is_file():
            raise UsageError(f"{run} has no report.json: pass folders written by prunekit prune")
        try:
            reports[run] = json.loads(path.read_text())
        except ValueError as err:
            raise UsageError(f"{path} is not valid JSON ({err}): rerun the prune that wrote it") from err
    return reports


def comparison_table(reports: dict[str, dict]) -> str:
    """One row per run: method, pattern, sparsity, pruning seconds, then each pruned perplexity."""
    sets = sorted({name for r in reports.values() for name in r.get("ppl", {}).get("pruned", {})})
    rows = ["| run | method | pattern | sparsity | prune s | " + " | ".join(f"ppl {s}" for s in sets) + " |",
            "|---|---|---|---:|---:|" + "---:|" * len(sets)]
    for run, r in reports.items():
        achieved = r.get("achieved_sparsity")
        ppl = r.get("ppl", {}).get("pruned", {})
        cells = [run, r.get("method", "?"), r.get("pattern", "?"), "—" if achieved is None else f"{achieved:.4f}",
                 f"{r.get('timings', {}).get('prune_total', float('nan')):.1f}"]
        cells += [f"{ppl[s]:.2f}" if s in ppl else "—" for s in sets]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def draw_comparison(reports: dict[str, dict], path: str | Path) -> None:
    """Every run on one figure: sparsity per layer and mean reconstruction error per layer."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.6))
    for run, report in reports.items():
        layers, sparsity, errors = per_layer(report)
        if not layers:
            continue
        top.plot(layers, sparsity, marker=".", label=Path(run).name)
        mean = [sum(v[i] for v in errors.values()) / len(errors) for i in range(len(layers))]
        bottom.plot(layers, mean, marker=".", label=Path(run).name)
    top.set(ylabel="sparsity", ylim=(0, 1))
    bottom.set(ylabel="mean reconstruction error", xlabel="decoder layer", yscale="log")
    top.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = ["comparison_table", "draw_comparison", "draw_layers", "per_layer", "read_reports", "training_loss"]
