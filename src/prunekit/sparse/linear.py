"""A linear layer that keeps its 2:4 weight compressed and runs the fastest kernel for each call.

On CUDA the weight is compressed once for cuSPARSELt, whose buffer begins with exactly the kept
values in row-major order (checked at run time), so `values` becomes a view into it and the layer
holds 0.5625× + 0.0625× (our indices) of the dense bytes. Paths, chosen per (shape, rows, dtype) by
timing them once in a CUDA graph, the L2 cache flushed before each call, and caching the winner:
- `gemv`:   the 1-row kernel of triton_decode.py on values + indices (its launch configuration tuned
            for the shape on first use);
- `triton`: the ≤ 16-row kernel of triton_decode.py (its launch configuration tuned for the shape on first use);
- `cslt`:   `torch._cslt_sparse_mm(W, xᵀ)`, rows padded to a multiple of 16 (cuSPARSELt refuses a
            single column); the result [out, rows] is returned transposed, as a view or
            (contiguous_output) copied. Candidates: the searched algorithm and ids 0–3 (an id the
            library lacks is skipped). Split-K is not searched: cuSPARSELt 0.8 refused every split-K > 1
            for these shapes (`bench/speed/sparse_gpu.py` records the probe; BENCHMARKS.md);
- `cslt_c`: the same with xᵀ made contiguous first;
- `lib`:    where a newer cuSPARSELt than torch's is installed (`cusparselt_lib`: torch 2.11 is built with
            0.8.0), that library replaces torch's for every cuSPARSELt path: the weight is compressed by
            it, and D = W xᵀ is written column-major, i.e. directly as the contiguous [rows, out] output.
            Candidates: its searched algorithm and ids in LIB_ALGS (the fastest in BENCHMARKS.md's search).
cuSPARSELt writes W xᵀ as [out, rows]; asking it for [rows, out] (`transpose_result=True`) makes
the algorithm search fail (internal error) and the default algorithm 2.7× slower, so the layer
returns the transpose as a view. Consumers that only add, multiply or feed another linear layer
take the view as is; attention needs contiguous q/k/v, so those layers (and every call of ≤ 16
rows, where the copy is negligible) return a contiguous copy (`contiguous_output`).
- `dense`:  `F.linear` on the unpacked weight, always timed with the others so that the choice and its
            record say where dense would be faster. It runs only with `dense_fallback` (PRUNEKIT_DENSE_FALLBACK=1):
            the layer then keeps an unpacked copy besides its packed one for that shape (≈ 1.56× the dense
            bytes instead of 0.56×), which a sparse model is meant to avoid. Without it the fastest 2:4
            kernel runs and the record names the dense time it lost to.
An eager cuSPARSELt call also spends ≈0.6–1 ms building descriptors and a plan on the host; in a
CUDA graph that disappears, so serving runs graphed (prunekit.eval.speed). Elsewhere (CPU, fp32, or no
cuSPARSELt) the layer computes the dense product of the unpacked weight: same numbers, no speed.
Every such choice, and every candidate that could not run, is recorded with its reason in the layer's
`paths` (see paths.py: `kernel_paths(model)`, PRUNEKIT_LOG=1).

Whether a layer is worth converting at all is decided per weight shape from measured timings
(`convertible_shapes`): a shape whose sparse kernels lose to dense stays a plain nn.Linear.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import cusparselt_lib, timing, triton_decode
from .packing import is_24, pack_24, unpack_24
from .paths import note

#: (out, in, rows, dtype, input contiguous, output copied) → (path, cuSPARSELt algorithm id), shared by all
#: layers of that shape; PLAN_TIMINGS keeps every candidate's graphed milliseconds
PLANS: dict[tuple, tuple[str, int]] = {}
#: cuSPARSELt algorithm ids tried besides the searched one (an id the library lacks for a shape is skipped)
CSLT_ALGS = range(4)
PLAN_TIMINGS: dict[tuple, dict[str, float]] = {}
#: per PLANS key, why its plan won (timings and the candidates that could not be timed), for `paths`
PLAN_REASONS: dict[tuple, str] = {}
DENSE = ("dense", 0)
#: algorithm ids of the newer library tried besides its searched one (found by bench/kernels/cusparselt_prefill.py)
LIB_ALGS = (6, 27, 42)


def cusparselt_available() -> bool:
    return torch.cuda.is_available() and hasattr(torch, "_cslt_compress") and torch.backends.cusparselt.is_available()


def cusparselt_writes_transposed() -> bool:
    """Whether this process's 2:4 products on CUDA write cuSPARSELt's W xᵀ [out, rows]: torch's cuSPARSELt does, the
    newer library (cusparselt_lib, when found) writes [rows, out]. Fixed for the process."""
    return cusparselt_available() and cusparselt_lib.load() is None


class SparseLinear24(nn.Module):
    """y = x Wᵀ + b with W stored as 2:4 packed values [out, in/2] and indices [out, in/8].

    `paths` records every kernel decision as {label: (path, reason)} (see paths.py); `name` (set by
    sparsify and load_compact) only labels the log lines. `dense_fallback` (class-wide, as the plans are
    shared by shape): run dense where it timed faster than every 2:4 kernel, keeping an unpacked copy."""

    dense_fallback: bool = os.environ.get("PRUNEKIT_DENSE_FALLBACK", "") == "1"

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None, in_features: int,
                 contiguous_output: bool = True):
        super().__init__()
        self.contiguous_output = contiguous_output
        self.in_features, self.out_features = in_features, values.shape[0]
        self.register_buffer("values", values)
        self.register_buffer("meta", meta)
        self.register_buffer("bias", bias)
        self._compressed = None  # cuSPARSELt's buffer (values, then its own metadata)
        self._lib_weight = None  # the newer library's compressed weight, where one is installed
        self._dense = None  # the unpacked weight, kept only while some row count runs dense on CUDA
        self.paths: dict[str, tuple[str, str]] = {}
        self._noted: dict[tuple, tuple[str, int]] = {}  # PLANS key → the plan last recorded in `paths`
        self.name = ""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "SparseLinear24":
        values, meta = pack_24(linear.weight.data)
        bias = linear.bias.data if linear.bias is not None else None
        return cls(values, meta, bias, linear.in_features)  # contiguous_output by default

    def dense_weight(self) -> torch.Tensor:
        return unpack_24(self.values, self.meta)

    def writes_transposed(self, x: torch.Tensor) -> bool:
        """Whether, with contiguous_output off, the output on x is cuSPARSELt's W xᵀ [out, rows] seen transposed: a
        16-bit CUDA input with torch's cuSPARSELt (`cusparselt_writes_transposed`), more than 16 rows (fewer run
        the Triton kernels or are copied), a multiple of 16 (others are padded). Decided from x's shape, dtype and
        device and the process's library alone (a fake tensor has them), so that a compiled model knows the layout
        before the layer runs (eval.compiled); a path that then writes [rows, out] (the dense fallback) is copied to
        match."""
        rows = x.numel() // x.shape[-1]
        return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and rows > triton_decode.MAX_ROWS
                and rows % 16 == 0 and cusparselt_writes_transposed())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and cusparselt_available():
            y = self._cuda_forward(x2)
        else:
            self._note_dense_fallback(x2)
            y = F.linear(x2, self.dense_weight(), self.bias)
        return y.reshape(*shape[:-1], self.out_features)

    def _note(self, label: str, path: str, reason: str) -> None:
        note(self.paths, self.name or f"[{self.out_features}×{self.in_features}]", label, path, reason)

    def _note_dense_fallback(self, x2: torch.Tensor) -> None:
        dtype = str(x2.dtype).removeprefix("torch.")
        if not x2.is_cuda:
            label, why = x2.device.type, f"{x2.device.type.upper()}: no sparse kernel"
        elif x2.dtype not in (torch.float16, torch.bfloat16):
            label, why = f"cuda, {dtype}", f"{dtype}: the 2:4 kernels take float16/bfloat16 only"
        else:
            label, why = "cuda", "no cuSPARSELt in this torch build or for this GPU"
        if label not in self.paths:  # runs on every call: the string is built once
            self._note(label, "dense", f"{why}; dense product of the weight unpacked for this call")

    def _prepare_cuda(self) -> None:
        if self._compressed is not None and self._compressed.device == self.values.device:
            return
        lib = cusparselt_lib.load()
        if lib is not None:
            self._lib_weight = cusparselt_lib.Weight24(lib, self.dense_weight())
            compressed = self._lib_weight.compressed.view(self.values.dtype)
        else:
            compressed = torch._cslt_compress(self.dense_weight())
        head = compressed.flatten()[: self.values.numel()].view_as(self.values)
        if torch.equal(head, self.values):
            self.values = head  # one copy of the values, shared with cuSPARSELt
        self._compressed = compressed

    def _cuda_forward(self, x2: torch.Tensor) -> torch.Tensor:
        self._prepare_cuda()
        rows = x2.shape[0]
        key = (self.out_features, self.in_features, rows, x2.dtype, x2.is_contiguous(),
               self.contiguous_output or rows <= 16)
        if key not in PLANS:
            if torch.cuda.is_current_stream_capturing():  # timing cannot run inside a capture
                plan = self._library_default()
                self._note(f"{plan_label(key)}, graph capture", plan_name(plan), "captured in a CUDA graph before "
                           "this row count was timed: the library's default algorithm, untimed")
                return self._run(plan, x2, key)
            PLANS[key] = self._choose(x2, key)
        plan = PLANS[key]
        if self._noted.get(key) != plan:  # once per decision: eager calls build no strings
            self._noted[key] = plan
            self._note(plan_label(key), plan_name(plan), PLAN_REASONS.get(key, "set in PLANS from outside: untimed"))
        return self._run(plan, x2, key)

    def _candidates(self, x2: torch.Tensor) -> tuple[list[tuple[str, int]], dict[str, str]]:
        """(path, algorithm) to time, and {path: why it is not timed} for the kernels left out."""
        padded = self._pad(x2)
        found, left_out = [], {}
        if self._lib_weight is not None:
            searched = self._lib_weight.searched(padded.contiguous(), True)
            found += [("lib", alg) for alg in dict.fromkeys([searched, *LIB_ALGS])]
        else:
            for path, B in (("cslt", padded.t()), ("cslt_c", padded.t().contiguous())):
                searched = torch._cslt_sparse_mm_search(self._compressed, B)
                found += [(path, alg) for alg in dict.fromkeys([searched, *CSLT_ALGS])]
        rows = x2.shape[0]
        if not triton_decode.available():
            left_out["triton"] = "Triton is not installed"
        elif rows <= triton_decode.MAX_ROWS:
            tuned = (self.out_features, self.in_features, triton_decode.MAX_ROWS, self.values.dtype)
            try:
                if tuned not in triton_decode.TUNED:  # once per shape, at 16 rows: every row count ≤ 16 uses it
                    triton_decode.tune(self.values, self.meta, triton_decode.MAX_ROWS)
                found.append(("triton", 0))
            except RuntimeError as e:  # no configuration builds on this GPU: the other paths only
                left_out["triton"] = _first_line(e)
        if rows == 1 and triton_decode.available():
            if not triton_decode.permute_ok(x2, self.values):
                left_out["gemv"] = "input or values not 8-byte aligned 16-bit words"
            else:
                tuned = (self.out_features, self.in_features, "gemv", x2.dtype)
                try:
                    if tuned not in triton_decode.TUNED:
                        triton_decode.tune(self.values, self.meta, 1, kernel="gemv")
                    found.append(("gemv", 0))
                except RuntimeError as e:  # no configuration builds on this GPU: the other paths only
                    left_out["gemv"] = _first_line(e)
                if "gemv" not in left_out and triton_decode.REJECTED.get(tuned, {}).get("count"):
                    rejected = triton_decode.REJECTED[tuned]
                    left_out["gemv configurations"] = f"{rejected['count']} rejected (last: {rejected['last']})"
        found.append(DENSE)
        return found, left_out

    def _choose(self, x2: torch.Tensor, key: tuple) -> tuple[str, int]:
        """The fastest path for this row count, dense included, timed in a CUDA graph with the L2 cache flushed
        before each call (timing.cold_timer: a warm cache would favour the larger dense weight).

        The dense product is timed on a weight unpacked for the purpose; the copy is kept only if dense
        wins here or already won for another row count of this layer (module docstring: memory)."""
        candidates, rejected = self._candidates(x2)
        time_cold = timing.cold_timer(x2.device)
        had_dense = self._dense is not None
        if not had_dense:
            self._dense = self.dense_weight()
        timings = {}
        for plan in candidates:
            try:
                timings[plan] = time_cold(lambda plan=plan: self._run(plan, x2))
            except (RuntimeError, ValueError) as e:  # e.g. an algorithm id cuSPARSELt lacks for this shape
                rejected[plan_name(plan)] = _first_line(e)
        PLAN_TIMINGS[key] = {"/".join(map(str, plan)): ms for plan, ms in timings.items()}
        allowed = timings if self.dense_fallback else {p: ms for p, ms in timings.items() if p != DENSE}
        best = min(allowed, key=allowed.get)
        PLAN_REASONS[key] = plan_reason({plan_name(p): ms for p, ms in timings.items()}, plan_name(best), rejected)
        if best != DENSE and not had_dense:
            self._dense = None
        return best

    def _library_default(self) -> tuple[str, int]:
        return ("lib", 0) if self._lib_weight is not None else ("cslt", 0)

    @staticmethod
    def _pad(x2: torch.Tensor) -> torch.Tensor:
        pad = -x2.shape[0] % 16
        return F.pad(x2, (0, 0, 0, pad)) if pad else x2

    def _run(self, plan: tuple[str, int], x2: torch.Tensor, key: tuple | None = None) -> torch.Tensor:
        """`plan` on x2; `key` (the PLANS key, None while timing) labels a fallback in `paths`."""
        path, alg = plan
        if path == "dense":
            if self._dense is None:  # dense was timed on another layer of this shape: unpack this one once
                self._dense = self.dense_weight()
            return F.linear(x2, self._dense, self.bias)
        if path == "triton":
            return triton_decode.spmm24(x2, self.values, self.meta, self.bias)
        if path == "gemv":
            if triton_decode.permute_ok(x2, self.values):
                return triton_decode.gemv24(x2, self.values, self.meta, self.bias)
            path, alg = self._library_default()
            if key is not None:
                self._note(f"{plan_label(key)}, unaligned input", plan_name((path, alg)), "gemv won the timing but "
                           "this input is not 8-byte aligned (gemv24 reads 64-bit words): the library's default")
        rows = x2.shape[0]
        if path == "lib":  # [padded rows, out], contiguous: no transpose
            y = self._lib_weight.mm(self._pad(x2).contiguous(), True, alg)[:rows]
            return y if self.bias is None else y + self.bias
        xt = self._pad(x2).t()
        if path == "cslt_c":
            xt = xt.contiguous()
        y = torch._cslt_sparse_mm(self._compressed, xt, self.bias, alg_id=alg)  # [out, padded rows]
        y = y[:, :rows].t()
        return y.contiguous() if self.contiguous_output or rows <= 16 else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 2:4, bias={self.bias is not None}"


def plan_name(plan: tuple[str, int]) -> str:
    """"gemv", "triton", "dense", or path/algorithm id for the cuSPARSELt paths ("cslt/2", "lib/6")."""
    path, alg = plan
    return path if path in ("gemv", "triton", "dense") else f"{path}/{alg}"


def plan_label(key: tuple) -> str:
    """The label a PLANS key is recorded under in a layer's `paths`, e.g. "rows=1, float16"."""
    _, _, rows, dtype, contiguous, _ = key
    return f"rows={rows}, {str(dtype).removeprefix('torch.')}" + ("" if contiguous else ", strided input")


def plan_reason(timings: dict[str, float], winner: str, left_out: dict[str, str]) -> str:
    """Why `winner` was chosen: every candidate's graphed milliseconds {plan name: ms} and those left out."""
    ranked = ", ".join(f"{name} {ms:.4f} ms" for name, ms in sorted(timings.items(), key=lambda t: t[1]))
    if winner == "dense":
        why = f"every sparse kernel was slower than dense (F.linear on the unpacked weight, kept): {ranked}"
    elif timings.get("dense", float("inf")) < timings[winner]:
        why = (f"fastest 2:4 kernel, {timings[winner] / timings['dense']:.2f}× dense's time (dense not run: "
               f"PRUNEKIT_DENSE_FALLBACK=1 would, keeping an unpacked copy); timed in a CUDA graph, L2 flushed: {ranked}")
    else:
        why = f"fastest of {len(timings)} timed in a CUDA graph, L2 flushed: {ranked}"
    if left_out:
        why += "; not timed: " + "; ".join(f"{name}: {reason}" for name, reason in left_out.items())
    return why


def _first_line(e: Exception) -> str:
    """`Type: first line of the message`, at most 200 characters (compiler errors run to pages)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def kernel_paths(model: nn.Module) -> dict[str, dict[str, tuple[str, str]]]:
    """{module name: {label: (path, reason)}} for every layer that records its kernel choices (`paths`): the
    SparseLinear24 and FP8 layers of `model` ({} for one not yet run)."""
    return {name: dict(m.paths) for name, m in model.named_modules()
            if isinstance(m, SparseLinear24) or isinstance(getattr(m, "paths", None), dict)}


def convertible_shapes(timings: list[dict], tolerance: float = 0.03) -> set[tuple[int, int]]:
    """Weight shapes (out, in) to run sparse: those whose sparse time is never above dense × (1 + tolerance)
    at any measured token count. `timings`: rows with keys out, in, tokens, dense_ms, sparse_ms.
    Deterministic for a given table; a shape with no measurement is not converted."""
    verdict: dict[tuple[int, int], bool] = {}
    for row in sorted(timings, key=lambda r: (r["out"], r["in"], r["tokens"])):
        shape = (row["out"], row["in"])
        ok = row["sparse_ms"] <= row["dense_ms"] * (1 + tolerance)
        verdict[shape] = verdict.get(shape, True) and ok
    return {shape for shape, ok in verdict.items() if ok}


def sparsify(model: nn.Module, shapes: set[tuple[int, int]] | None = None,
             attention_inputs: set[str] | None = None) -> int:
    """Replace every nn.Linear whose weight is 2:4 (and, if given, whose shape is in `shapes`) by a
    SparseLinear24, in place; returns how many were replaced.

    With `attention_inputs` (module names: the layers that feed attention, prunekit.models.attention_inputs),
    those layers return contiguous outputs and every other layer, whose output only feeds elementwise ops or
    another linear layer, the transposed view; without it every output is contiguous."""
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear) or not is_24(child.weight.data):
                continue
            if shapes is not None and tuple(child.weight.shape) not in shapes:
                continue
            full = f"{name}.{child_name}" if name else child_name
            sparse = SparseLinear24.from_linear(child)
            sparse.name = full
            sparse.contiguous_output = attention_inputs is None or full in attention_inputs
            setattr(module, child_name, sparse)
            replaced += 1
    return replaced
