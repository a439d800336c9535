"""SparseLinear24FP8: a 2:4 weight in FP8 (E4M3) with one scale per output channel; activations FP8 per token.

It holds `values` [out, in/2] float8_e4m3fn and `meta` [out, in/8] (packing.py's 2:4 layout), `weight_scale` [out]
fp32 (powers of two, prunekit.quantize.fp8) and the bias, and computes y = x̂ Qᵀ · s_x · s + b. Paths:
- `cslt_fp8` (a CUDA GPU with FP8 tensor cores whose torch build lets cuSPARSELt take float8_e4m3fn): each token
  quantized to FP8 (quantize.per_token), then torch._cslt_sparse_mm(W, x̂ᵀ) in bf16, and the per-token scales,
  the per-channel scales s and the bias applied to its [out, rows] result (cuSPARSELt 0.8.0 refuses s as its
  per-channel alpha for FP8 on an H100). The weight is compressed for
  cuSPARSELt on the first call; as in SparseLinear24, `values` then becomes a view into that buffer when the
  buffer starts with exactly them. Rows are padded to a multiple of 16.
- `cutlass_fp8` (more than 16 rows, an sm_90 GPU, PRUNEKIT_CUTLASS naming a library built by
  bench/kernels/cutlass_sm90_24/build.sh with KIND=fp8): CUTLASS's 2:4 FP8 kernel with both scales in its epilogue
  (cutlass_lib); its tile configuration tuned per shape on the first eager call.
- `triton_fp8` (≤ 16 rows, any CUDA GPU with Triton): triton_fp8.spmm24_fp8 reads the packed E4M3 bytes and indices
  directly (decode: 0.3125× the bytes of the dense bf16 weight).
- `gemv_fp8` (1 row, compute capability ≥ 8.9, Triton): triton_fp8.gemv24_fp8, the 1-row kernel in gemv24's form
  (byte permutes pick x̂, PTX decodes E4M3 pairs: sm_89 on); its launch configuration is tuned for the shape on
  its first eager call (triton_fp8.tune_gemv). Not yet measured on a GPU.
  Where several run, the first call of each row count times them in a CUDA graph with the L2 cache flushed and the
  fastest is kept for that (shape, rows) (FP8_PLANS); a call captured before that timing takes cslt_fp8
  untimed; a path that refuses hands the call to the next.
- `reference` (CPU; a GPU, torch or cuSPARSELt that refuses FP8; activations "none"): fp8.fp8_linear on the
  unpacked weight, the exact fp32 product that every kernel is checked against.
Each choice is recorded in `paths` like SparseLinear24's (linear.kernel_paths lists both). End-to-end speed:
BENCHMARKS.md, issue 25 (on an H200 `cslt_fp8` won every row count it was timed at).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..quantize import per_token
from ..quantize.fp8 import dequantize_fp8, fp8_linear
from ..quantize.linear import KeepsFP8, LinearFP8, check_activations, fp8_tensor_cores
from . import cutlass_lib, timing, triton_decode, triton_fp8
from .linear import SparseLinear24, cusparselt_available
from .packing import is_24, pack_24, unpack_24

#: (out, in, rows) → the FP8 path that timed fastest there ("gemv_fp8", "triton_fp8", "cutlass_fp8" or "cslt_fp8"),
#: shared by layers of that shape; FP8_REASONS keeps the timings behind each choice
FP8_PLANS: dict[tuple[int, int, int], str] = {}
FP8_REASONS: dict[tuple[int, int, int], str] = {}


class SparseLinear24FP8(KeepsFP8, SparseLinear24):
    """y = x̂ Qᵀ · s_x · s + b with Q 2:4 in FP8, packed; see the module docstring for the paths."""

    quantized = ("values", "weight_scale")

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None, in_features: int, activations: str = "fp8", contiguous_output: bool = True):
        super().__init__(values, meta, bias, in_features, contiguous_output)
        self.activations = check_activations(activations)
        self.register_buffer("weight_scale", weight_scale)
        self._fp8_refused = False  # set once cuSPARSELt refused FP8 here: not retried on every call
        self._triton_refused = False  # likewise for the Triton FP8 kernel
        self._gemv_refused = False  # and for the 1-row one
        self._cutlass_refused = False  # and for CUTLASS's
        self._cutlass: cutlass_lib.Weight24FP8 | None = None  # the weight as CUTLASS compressed it

    @classmethod
    def from_linear(cls, linear: LinearFP8) -> "SparseLinear24FP8":
        """The packed form of a LinearFP8 whose weight is 2:4 (ValueError otherwise)."""
        if not isinstance(linear, LinearFP8):
            raise TypeError(f"SparseLinear24FP8 packs a LinearFP8, not a {type(linear).__name__}")
        values, meta = pack_24(linear.weight)
        return cls(values, meta, linear.weight_scale, linear.bias, linear.in_features, linear.activations)

    def writes_transposed(self, x: torch.Tensor) -> bool:
        """Never, for now: a transposed output would reach the next FP8 layer (down_proj after SiLU · up) as a
        column-major input, which the fused per-token quantizer does not take (prunekit.quantize.per_token), so its
        slow eager form would run. The FP8 layers' outputs stay contiguous under compile, as before."""
        return False

    def fp8_weight(self) -> torch.Tensor:
        """Q [out, in] float8_e4m3fn, unpacked."""
        return unpack_24(self.values, self.meta)

    def dense_weight(self) -> torch.Tensor:
        """Q·s in fp32, as LinearFP8.dense_weight."""
        return dequantize_fp8(self.fp8_weight(), self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        y = self._cuda_fp8(x2) if self.activations == "fp8" and x.is_cuda else None
        if y is None:
            label = x.device.type
            if label not in self.paths:  # every call passes here: the record is written once
                why = "CPU: no FP8 sparse kernel" if label == "cpu" else "no FP8 cuSPARSELt or Triton for this GPU or torch"
                if self.activations == "none":
                    why = "weight-only FP8 (activations none): no FP8 kernel takes unquantized inputs"
                self._note(label, "reference", f"{why}; exact fp32 product (prunekit.quantize.fp8.fp8_linear)")
            y = fp8_linear(x2, self.fp8_weight(), self.weight_scale, self.bias, self.activations)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _fp8_candidates(self, x2: torch.Tensor) -> list[str]:
        found = []
        # gemv24_fp8 decodes E4M3 with a PTX conversion of sm_89 on: the GPUs that have FP8 tensor cores
        if x2.shape[0] == 1 and not self._gemv_refused and triton_fp8.available() and fp8_tensor_cores(x2.device):
            found.append("gemv_fp8")
        if not self._triton_refused and triton_fp8.available() and x2.shape[0] <= triton_fp8.MAX_ROWS:
            found.append("triton_fp8")
        if (x2.shape[0] > triton_fp8.MAX_ROWS and not self._cutlass_refused and cutlass_lib.load() is not None
                and torch.cuda.get_device_capability(x2.device) == (9, 0)):  # the library is built for sm_90a
            found.append("cutlass_fp8")
        if not self._fp8_refused and fp8_tensor_cores(x2.device) and cusparselt_available():
            found.append("cslt_fp8")
        return found

    def _cuda_fp8(self, x2: torch.Tensor) -> torch.Tensor | None:
        """The FP8 product on the fastest FP8 path for this row count (module docstring), or None where none runs."""
        candidates = self._fp8_candidates(x2)
        if not candidates:
            return None
        key = (self.out_features, self.in_features, x2.shape[0])
        plan = FP8_PLANS.get(key)
        if plan in candidates:
            why = FP8_REASONS.get(key, "set in FP8_PLANS from outside: untimed")
        elif len(candidates) == 1 or torch.cuda.is_current_stream_capturing():
            plan = candidates[-1]
            why = "the only FP8 kernel here" if len(candidates) == 1 else \
                "captured in a CUDA graph before this row count was timed: untimed"
        else:
            plan, why = self._time_fp8(x2, candidates, key)
            if plan is None:
                return None
        if self._noted.get(key) != plan:  # once per decision: eager calls build no strings
            self._noted[key] = plan
            self._note(f"cuda, rows={key[2]}", plan, why)
        for path in (plan, *[c for c in candidates if c != plan]):  # a path that refuses hands over to the other
            y = self._run_fp8(path, x2)
            if y is not None:
                return y
        return None

    def _time_fp8(self, x2: torch.Tensor, candidates: list[str], key: tuple) -> tuple[str | None, str]:
        """The fastest FP8 path for this row count, timed in a CUDA graph with the L2 cache flushed before each call
        (timing.cold_timer: a warm cache would serve the weight), and why; (None, why) if every path refused."""
        time_cold, ms, refused = timing.cold_timer(x2.device), {}, {}
        for path in candidates:
            if self._run_fp8(path, x2) is None:  # refused (recorded in `paths`): not timed, not captured
                refused[path] = "refused"
                continue
            try:
                ms[path] = time_cold(lambda path=path: self._run_fp8(path, x2))
            except (RuntimeError, ValueError) as err:
                refused[path] = str(err).strip().splitlines()[0][:160]
        if not ms:
            return None, "every FP8 kernel refused: " + "; ".join(f"{p}: {r}" for p, r in refused.items())
        plan = FP8_PLANS[key] = min(ms, key=ms.get)
        FP8_REASONS[key] = ("timed in a CUDA graph, L2 flushed: " + ", ".join(f"{p} {t:.4f} ms" for p, t in ms.items())
                            + "".join(f"; {p} {r}" for p, r in refused.items()))
        return plan, FP8_REASONS[key]

    def _run_fp8(self, path: str, x2: torch.Tensor) -> torch.Tensor | None:
        """`path` on x2, or None for a path this layer has seen refuse."""
        if path == "cslt_fp8":
            return None if self._fp8_refused else self._cslt_fp8(x2)
        if path == "gemv_fp8":
            return None if self._gemv_refused else self._triton(x2, one_row=True)
        if path == "cutlass_fp8":
            return None if self._cutlass_refused else self._cutlass_fp8(x2)
        return None if self._triton_refused else self._triton(x2)

    def _triton(self, x2: torch.Tensor, one_row: bool = False) -> torch.Tensor | None:
        """triton_fp8.spmm24_fp8 (or, one_row, gemv24_fp8, its launch configuration tuned on its first eager call) on
        the packed FP8 weight, or None (recorded) where Triton cannot build it here."""
        try:
            xq, sx = per_token.quantize(x2)
            if not one_row:
                return triton_fp8.spmm24_fp8(xq, sx, self.values, self.meta, self.weight_scale, self.bias,
                                             out_dtype=x2.dtype)
            if triton_fp8.gemv_key(self.values) not in triton_decode.TUNED and not torch.cuda.is_current_stream_capturing():
                triton_fp8.tune_gemv(self.values, self.meta, self.weight_scale)
            return triton_fp8.gemv24_fp8(xq, sx, self.values, self.meta, self.weight_scale, self.bias,
                                         out_dtype=x2.dtype)
        except Exception as err:  # a GPU or Triton build the kernel does not compile for
            if one_row:
                self._gemv_refused = True
            else:
                self._triton_refused = True
            self._note("cuda", "reference", f"Triton FP8 kernel {'gemv_fp8' if one_row else 'triton_fp8'} refused: "
                       f"{str(err).strip().splitlines()[0][:160]}")
            return None

    def _cslt_fp8(self, x2: torch.Tensor) -> torch.Tensor | None:
        """The cuSPARSELt FP8 product, or None (recorded in `paths`) where this GPU or torch build refuses it."""
        try:
            self._prepare_fp8()
            xq, sx = per_token.quantize(x2)
            rows = x2.shape[0]
            y = torch._cslt_sparse_mm(self._compressed, self._pad(xq).t(), out_dtype=torch.bfloat16)  # [out, padded rows]
        except (RuntimeError, TypeError, NotImplementedError) as err:  # what a build without FP8 support raises
            self._fp8_refused = True
            self._note("cuda", "reference", f"cuSPARSELt refused FP8: {str(err).strip().splitlines()[0][:160]}")
            return None
        # s after the product, not as cuSPARSELt's per-channel alpha (0.8.0 refuses ALPHA_VECTOR_SCALING with FP8 on an
        # H100): s is a power of two, so scaling the rounded bf16 result equals rounding the scaled one
        y = y[:, :rows].t() * sx * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        y = y.to(x2.dtype)
        return y.contiguous() if self.contiguous_output or rows <= triton_fp8.MAX_ROWS else y

    def _cutlass_fp8(self, x2: torch.Tensor) -> torch.Tensor | None:
        """CUTLASS's FP8 product (cutlass_lib), or None (recorded in `paths`) where the library refuses."""
        fresh = self._cutlass is None or self._cutlass.values.device != x2.device
        if fresh and torch.cuda.is_current_stream_capturing():
            return None  # compressing synchronizes: it waits for an eager call (not a refusal)
        try:
            if fresh:
                self._cutlass = cutlass_lib.Weight24FP8(cutlass_lib.load(), self.fp8_weight())
                self._cutlass.share_values(self.values)  # one copy of the values where the layouts agree
            xq, sx = per_token.quantize(x2)
            key = (self.out_features, x2.shape[0], self.in_features)
            if key not in cutlass_lib.TUNED and not torch.cuda.is_current_stream_capturing():
                self._cutlass.tune(xq, sx, self.weight_scale)
            y = self._cutlass.mm(xq, sx, self.weight_scale)
        except RuntimeError as err:  # CutlassError (a shape or operand it refuses), or the tuning's own
            self._cutlass_refused = True
            self._note("cuda", "reference", f"CUTLASS refused FP8: {str(err).strip().splitlines()[0][:160]}")
            return None
        if self.bias is not None:
            y = y + self.bias
        return y.to(x2.dtype)

    def _prepare_fp8(self) -> None:
        if self._compressed is not None and self._compressed.device == self.values.device:
            return
        compressed = torch._cslt_compress(self.fp8_weight())
        head = compressed.flatten()[: self.values.numel()].view(self.values.dtype).view_as(self.values)
        if torch.equal(head.view(torch.uint8), self.values.view(torch.uint8)):
            self.values = head  # one copy of the values, shared with cuSPARSELt
        self._compressed = compressed

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, 2:4 fp8 weights, "
                f"activations={self.activations}, bias={self.bias is not None}")


def sparsify_fp8(model: nn.Module) -> int:
    """Replace every LinearFP8 whose weight is 2:4 by a SparseLinear24FP8, in place; returns how many."""
    replaced = 0
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LinearFP8) and is_24(child.weight):
                sparse = SparseLinear24FP8.from_linear(child)
                sparse.name = f"{name}.{child_name}" if name else child_name
                setattr(module, child_name, sparse)
                replaced += 1
    return replaced
