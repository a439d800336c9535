"""Speed of dense vs 2:4 linear layers, timed the way they run in serving.

Each measurement captures the calls in a CUDA graph and times replays with CUDA events (median of
repeats; `prunekit.sparse.timing`). To keep the L2 cache (50 MB on H100) from serving the weights,
every per-layer measurement cycles through enough copies of the layer to exceed it several times.

End to end (`bench`), up to four variants of one 2:4 model: "dense" (as loaded), "sparse" (its 2:4 linears on the
2:4 kernels: every one with convert="all", or only the shapes that timed faster with convert="faster"), and with
fp8=True "dense_fp8" (the same weights rounded to FP8 E4M3, per-channel scales, activations FP8 per token,
torch._scaled_mm) and "sparse_fp8" (those FP8 weights packed 2:4, every one of them whatever `convert` says, on
cuSPARSELt's FP8 kernel, or for ≤ 16 rows the Triton FP8 kernel where it timed faster). Each variant is measured
with the others off the GPU, so its peak memory and `weights_mb` are its own. With `compile`, every variant runs
through eval.compiled (torch.compile, the kernel layers eager).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..models.adapters import attention_inputs
from ..patterns import keep_n_of_m
from ..quantize.linear import LinearFP8
from ..quantize.model import FP8Config, quantize
from ..sparse.linear import SparseLinear24, convertible_shapes, kernel_paths, sparsify
from ..sparse.linear_fp8 import SparseLinear24FP8, sparsify_fp8
from ..sparse.packing import is_24
from ..sparse.paths import path_counts
from ..sparse.timing import copies_past_l2, graph, median_ms, time_calls
from .compiled import compiled, restore

#: bench's `convert`: every 2:4 linear on the 2:4 kernels, or only the shapes whose 2:4 kernels timed faster
CONVERT = ("all", "faster")


def random_24_linear(out_features: int, in_features: int, dtype=torch.float16, device="cuda") -> nn.Linear:
    """A bias-free linear layer with random weights pruned to a valid 2:4 pattern."""
    linear = nn.Linear(in_features, out_features, bias=False, dtype=dtype, device=device)
    W = linear.weight.data
    W.masked_fill_(~keep_n_of_m(W.abs().float(), 2, 4), 0.0)
    return linear


def random_24_linears(out_features: int, in_features: int, dtype=torch.float16,
                      bits: int | None = None) -> list[nn.Linear]:
    """Enough copies of a random 2:4 layer that cycling through them exceeds the L2 cache four times, counting `bits`
    per weight (default: the dtype's; 8 for layers to be quantized to FP8)."""
    copies = copies_past_l2(out_features * in_features * (bits or torch.finfo(dtype).bits) // 8)
    return [random_24_linear(out_features, in_features, dtype) for _ in range(copies)]


def compare_linear(out_features: int, in_features: int, tokens: int, dtype=torch.float16,
                   graphed: bool = True, view_output: bool = False, fp8: bool = False) -> dict:
    """Dense vs SparseLinear24 milliseconds for one weight shape and token count (`view_output`: the
    layer returns its transposed result as a view, as layers not feeding attention do). With `fp8`, also the
    same weights as LinearFP8 (dense FP8, torch._scaled_mm) and SparseLinear24FP8 (2:4 + FP8), both with FP8
    inputs per token, on as many FP8 copies as exceed the L2 cache four times: "dense_fp8_ms", "sparse_fp8_ms", their
    kernel paths, and "rel_err_fp8" (2:4 + FP8 against dense FP8 on the same weights)."""
    dense = random_24_linears(out_features, in_features, dtype)
    sparse = [SparseLinear24.from_linear(layer) for layer in dense]
    for layer in sparse:
        layer.contiguous_output = not view_output
    x = torch.randn(tokens, in_features, dtype=dtype, device="cuda")
    with torch.no_grad():
        ref = dense[0](x)
        err = ((sparse[0](x).float() - ref.float()).norm() / ref.float().norm()).item()
        dense_ms = time_calls([lambda layer=layer: layer(x) for layer in dense], graphed=graphed)
        sparse_ms = time_calls([lambda layer=layer: layer(x) for layer in sparse], graphed=graphed)
        row = {"out": out_features, "in": in_features, "tokens": tokens, "dtype": str(dtype).removeprefix("torch."),
               "graphed": graphed, "view_output": view_output, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
               "speedup": dense_ms / sparse_ms, "rel_err": err, "kernel_paths": dict(sparse[0].paths)}
        if fp8:
            del sparse, dense
            copies = random_24_linears(out_features, in_features, dtype, bits=8)
            dense_fp8 = [LinearFP8.from_linear(layer) for layer in copies]
            sparse_fp8 = [SparseLinear24FP8.from_linear(layer) for layer in dense_fp8]
            for layer in sparse_fp8:
                layer.contiguous_output = not view_output
            ref = dense_fp8[0](x).float()
            row["rel_err_fp8"] = ((sparse_fp8[0](x).float() - ref).norm() / ref.norm()).item()  # same FP8 product
            row["dense_fp8_ms"] = time_calls([lambda layer=layer: layer(x) for layer in dense_fp8], graphed=graphed)
            row["sparse_fp8_ms"] = time_calls([lambda layer=layer: layer(x) for layer in sparse_fp8], graphed=graphed)
            row["kernel_paths_fp8"] = {"dense_fp8": dict(dense_fp8[0].paths), "sparse_fp8": dict(sparse_fp8[0].paths)}
    return row


@torch.no_grad()
def measure_model(model, batch: int, prompt_len: int, gen_len: int = 32, repeats: int = 10,
                  graphed: bool | None = None, compile: bool = False) -> dict:
    """Prefill and decode throughput and peak memory of `model` at one batch size.

    Prefill: one forward over [batch, prompt_len] tokens without cache. Decode: `gen_len` steps of
    one token per sequence against a static KV cache that starts with `prompt_len` tokens (the cache
    position is rewound before each timed run). On CUDA each step is replayed from a CUDA graph. With
    `compile`, both run eval.compiled's torch.compile of the model (kernel layers eager, the rest fused)."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    graphed = cuda if graphed is None else graphed
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device)
    result = {"batch": batch, "prompt_len": prompt_len, "gen_len": gen_len, "graphed": graphed, "compiled": compile}
    forward = compiled(model) if compile else model
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        prefill = lambda: forward(input_ids=ids, use_cache=False)  # noqa: E731
        run = graph(prefill) if graphed else prefill
        if compile and not graphed:  # the first call compiles (graph() warms up before capturing)
            run()
        ms = median_ms(run, repeats)
        result.update(prefill_ms=ms, prefill_tokens_per_s=batch * prompt_len / ms * 1000)
        if cuda:
            result["prefill_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20

        cache = StaticCache(config=model.config, max_cache_len=prompt_len + gen_len + 4)
        model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(prompt_len, device=device), use_cache=True)
        token = ids[:, -1:].clone()
        position = torch.tensor([prompt_len], device=device)

        def rewind():  # back to a cache holding exactly the prompt
            for layer in cache.layers:
                layer.cumulative_length.fill_(prompt_len)
            position.fill_(prompt_len)

        def step():
            forward(input_ids=token, past_key_values=cache, cache_position=position, use_cache=True)
            position.add_(1)

        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rewind()
        run = graph(step) if graphed else step

        def generate():
            rewind()
            for _ in range(gen_len):
                run()

        if compile and not graphed:
            generate()
        ms = median_ms(generate, max(2, repeats // 2)) / gen_len
        result.update(decode_ms=ms, decode_tokens_per_s=batch / ms * 1000)
        if cuda:
            result["decode_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result
    finally:
        if compile:
            restore(model)


def linear_shapes(model) -> list[tuple[int, int]]:
    """Distinct (out, in) shapes of the model's 2:4 linear weights."""
    shapes = set()
    for module in model.modules():
        if isinstance(module, SparseLinear24):
            shapes.add((module.out_features, module.in_features))
        elif isinstance(module, nn.Linear) and is_24(module.weight.data):
            shapes.add(tuple(module.weight.shape))
    return sorted(shapes)


def weight_mb(model) -> float:
    """MiB held by the model's parameters and buffers (shared storage counted once), cuSPARSELt's compressed
    buffers and CUTLASS's compressed weight and metadata (SparseLinear24FP8's cutlass_fp8 path) included."""
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        if isinstance(m, SparseLinear24) and m._compressed is not None:
            tensors.append(m._compressed)
        if getattr(m, "_cutlass", None) is not None:
            tensors += [m._cutlass.values, m._cutlass.meta]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()) / 2**20


def measure_variant(model, batch: int, prompt_len: int, gen_len: int, compile: bool = False) -> dict:
    """measure_model's figures plus the variant's weight memory."""
    return measure_model(model, batch, prompt_len, gen_len, compile=compile) | {"weights_mb": weight_mb(model)}


def fp8_variants(model, batch: int, prompt_len: int, gen_len: int, compile: bool = False) -> dict:
    """"dense_fp8" and "sparse_fp8" of the module docstring, measured on a copy of `model` (whose linears are still
    nn.Linear) while `model` itself waits in host memory; returns their figures, how many layers were packed and
    the FP8 layers' kernel paths."""
    device = next(model.parameters()).device
    model.to("cpu")  # copied on the host: the GPU never holds both
    fp8 = copy.deepcopy(model)
    try:
        quantize(fp8, FP8Config(compensate=False))  # round to nearest: exact for weights already on the FP8 grid
        fp8.to(device)
        out = {"dense_fp8": measure_variant(fp8, batch, prompt_len, gen_len, compile)}
        out["kernel_paths_dense_fp8"] = kernel_paths(fp8)  # _scaled_mm, or the reference where it was refused
        out["layers_converted_fp8"] = sparsify_fp8(fp8)
        out["sparse_fp8"] = measure_variant(fp8, batch, prompt_len, gen_len, compile)
        out["kernel_paths_fp8"] = kernel_paths(fp8)
    finally:
        del fp8
        if device.type == "cuda":
            torch.cuda.empty_cache()
        model.to(device)
    return out


def bench(model, batch: int = 1, prompt_len: int = 512, gen_len: int = 32, dtype=torch.float16,
          convert: str = "all", fp8: bool = False, compile: bool = False) -> dict:
    """Dense vs 2:4 (and with `fp8` dense FP8 and 2:4 + FP8) per linear shape and end to end, the variants of the
    module docstring; on CPU the model as given only (the 2:4 and FP8 kernels need CUDA).

    "kernel_paths" lists, per 2:4 layer of the measured model, each row count's path and why
    ({name: {label: [path, reason]}}, see prunekit.sparse.paths) and "kernel_path_counts" how many chose
    each path (likewise "kernel_paths_dense_fp8" and "kernel_paths_fp8" for the FP8 variants); a model without such
    layers (CPU, dense) reports both empty."""
    if convert not in CONVERT:
        raise ValueError(f"convert must be one of {', '.join(CONVERT)}, not {convert!r}")
    device = next(model.parameters()).device
    shapes = linear_shapes(model)
    report = {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "shapes": shapes,
              "convert": convert, "fp8": fp8, "compiled": compile}
    if device.type != "cuda":
        report["note"] = "CPU: dense model only; the 2:4 and FP8 kernels (cuSPARSELt, Triton, _scaled_mm) need a CUDA GPU"
        report["dense"] = measure_model(model, batch, prompt_len, gen_len, repeats=3, compile=compile)
    else:
        tokens = sorted({1, batch, batch * prompt_len})
        report["linear"] = [compare_linear(out, inp, n, dtype) for out, inp in shapes for n in tokens]
        report["dense"] = measure_variant(model, batch, prompt_len, gen_len, compile)
        if fp8:
            report.update(fp8_variants(model, batch, prompt_len, gen_len, compile))
        faster = convertible_shapes(report["linear"])
        report["faster_shapes"] = sorted(faster)  # where every 2:4 kernel beat dense at every measured row count
        report["converted_shapes"] = shapes if convert == "all" else sorted(faster)
        report["layers_converted"] = sparsify(model, None if convert == "all" else faster, attention_inputs(model))
        report["sparse"] = measure_variant(model, batch, prompt_len, gen_len, compile)
    report["kernel_paths"] = kernel_paths(model)
    report["kernel_path_counts"] = path_counts(report["kernel_paths"])
    for variant in ("dense_fp8", "fp8"):
        if f"kernel_paths_{variant}" in report:
            report[f"kernel_path_counts_{variant}"] = path_counts(report[f"kernel_paths_{variant}"])
    return report


def plot(report: dict, path) -> None:
    """Bar chart of the speed-ups per linear shape and token count, and end to end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels, values = [], []
    for row in report.get("linear", []):
        labels.append(f"{row['out']}×{row['in']}\n{row['tokens']} tok")
        values.append(row["speedup"])
    for variant in ("sparse", "dense_fp8", "sparse_fp8"):
        if variant in report:
            for phase in ("prefill", "decode"):
                labels.append(f"{variant}\n{phase}")
                values.append(report[variant][f"{phase}_tokens_per_s"] / report["dense"][f"{phase}_tokens_per_s"])
    if not values:
        ax.text(0.5, 0.5, report.get("note", "no sparse measurement"), ha="center", va="center", wrap=True)
    else:
        ax.bar(range(len(values)), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(values)), labels, fontsize=7)
        ax.set_ylabel("speed-up over dense (×)")
    ax.set_title(f"2:4 vs dense on {report['device']} ({report['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
