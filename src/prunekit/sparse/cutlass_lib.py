"""CUTLASS's Hopper 2:4 FP8 product, for the 2:4 + FP8 layer's prefill: a library the user builds, loaded by ctypes.

torch 2.11's cuSPARSELt 0.8.0 runs its FP8 sparse product slower than its own bf16 one on an H100 (BENCHMARKS.md,
issue 25). CUTLASS 4.2 has sm_90a structured-sparse kernels for E4M3; `bench/kernels/cutlass_sm90_24/build.sh` with
KIND=fp8 builds them (nvcc ≥ 12.2 and CUTLASS's headers; no GPU needed to build) into one shared library, and
PRUNEKIT_CUTLASS=<that .so> makes SparseLinear24FP8 offer it as the path `cutlass_fp8` for more than 16 rows.

One product, for W8 [m, k] E4M3 2:4 (row-major), x8 [n, k] E4M3 (row-major), sw [m] and sx [n] fp32:

    y[n, m] = sx[n] · sw[m] · Σ_k x8[n, k] W8[m, k]    (bf16; CUTLASS's D = W8 · x8ᵀ column-major: y row-major)

with both scales applied in the kernel's epilogue. The library holds several tile configurations (`pk24f8_gemm_<id>`);
`Weight24FP8.tune` times each once per (m, n, k) and keeps the fastest. The weight is compressed once by CUTLASS's own
compressor kernel (its metadata layout is the MMA's, not packing.py's).
"""

from __future__ import annotations

import ctypes
import os
import warnings
from functools import lru_cache

import torch

from . import timing
from .cusparselt_lib import _stream

P = ctypes.c_void_p
#: the scheduler mode every configuration runs with: 1 split, max swizzle 1, raster order chosen by CUTLASS
MODE = 1
#: configurations a library may hold (pk24f8_gemm_0 … ); the build script's table has 12
MAX_CONFIGS = 64
#: (m, n, k) → the configuration that timed fastest, shared by weights of that shape
TUNED: dict[tuple[int, int, int], int] = {}


class CutlassError(RuntimeError):
    pass


class Library:
    """The loaded .so and the configurations it holds."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        self.lib.pk24f8_compress_workspace.restype = ctypes.c_size_t
        self.configs = [i for i in range(MAX_CONFIGS) if hasattr(self.lib, f"pk24f8_gemm_{i}")]
        if not self.configs:
            raise CutlassError(f"{path} holds no pk24f8_gemm_<id>: build it with KIND=fp8")
        for i in self.configs:
            getattr(self.lib, f"pk24f8_workspace_{i}").restype = ctypes.c_size_t


@lru_cache(maxsize=1)
def load() -> Library | None:
    """The library named by PRUNEKIT_CUTLASS, or None (unset, or not loadable: then a warning says why)."""
    path = os.environ.get("PRUNEKIT_CUTLASS", "").strip()
    if not path or path.lower() == "off":
        return None
    try:
        return Library(path)
    except (OSError, AttributeError, CutlassError) as err:
        warnings.warn(f"PRUNEKIT_CUTLASS={path} is not a CUTLASS FP8 2:4 library built by "
                      f"bench/kernels/cutlass_sm90_24/build.sh with KIND=fp8 ({err}); not used")
        return None


def _check(status: int, what: str) -> None:
    if status:
        raise CutlassError(f"{what}: status {status} (1 shape not supported, 2 initialize, 3 launch, 4 workspace)")


class Weight24FP8:
    """A 2:4 E4M3 weight compressed by CUTLASS, with a workspace per (configuration, rows, mode) kept for CUDA
    graphs. Shapes the kernels cannot take (out % 8, in % 32) are refused before compressing."""

    def __init__(self, lib: Library, weight: torch.Tensor):
        if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2:
            raise CutlassError("Weight24FP8 takes a 2-D float8_e4m3fn weight")
        self.lib, (self.m, self.k) = lib, weight.shape
        # the kernels' own limits (TMA alignment of the compressed A and of D): checked here, since the compressor
        # itself would read a misaligned K with 16-byte loads and fault, which no fallback survives
        if self.m % 8 or self.k % 32:
            raise CutlassError(f"CUTLASS's FP8 2:4 kernels need out % 8 == 0 and in % 32 == 0, "
                               f"not {self.m} × {self.k}")
        if (weight.view(torch.uint8).reshape(self.m, -1, 4) != 0).sum(-1).max() > 2:
            raise CutlassError("Weight24FP8 takes a 2:4 weight: a group of four holds more than two non-zeros")
        if not weight.is_cuda:
            raise CutlassError("Weight24FP8 takes a CUDA weight")
        kc, e_bytes = ctypes.c_longlong(), ctypes.c_longlong()
        lib.lib.pk24f8_sizes(self.m, self.k, ctypes.byref(kc), ctypes.byref(e_bytes))
        self.values = torch.empty(self.m, kc.value, dtype=weight.dtype, device=weight.device)
        self.meta = torch.zeros(e_bytes.value, dtype=torch.uint8, device=weight.device)
        size = lib.lib.pk24f8_compress_workspace(self.m, self.k)
        scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=weight.device)
        with torch.cuda.device(weight.device):  # the library runs on the current device
            _check(lib.lib.pk24f8_compress(P(weight.contiguous().data_ptr()), P(self.values.data_ptr()),
                                           P(self.meta.data_ptr()), self.m, self.k, P(scratch.data_ptr()),
                                           ctypes.c_size_t(size), _stream(weight.device)), "pk24f8_compress")
        torch.cuda.current_stream(weight.device).synchronize()
        self._workspaces: dict[tuple[int, int, int], torch.Tensor | None] = {}

    def share_values(self, values: torch.Tensor) -> bool:
        """Read the kept values from `values` (a layer's own packed [out, in/2] copy, prunekit.sparse.pack_24) where
        they are the same bytes as CUTLASS's compressed values, so that the weight is held once beside CUTLASS's
        metadata (as SparseLinear24FP8 shares cuSPARSELt's); returns whether they are."""
        same = (values.shape == self.values.shape and values.dtype == self.values.dtype and values.is_contiguous()
                and values.device == self.values.device
                and torch.equal(values.view(torch.uint8), self.values.view(torch.uint8)))
        if same:
            self.values = values
        return same

    def mm(self, x8: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor, config: int | None = None,
           mode: int = MODE) -> torch.Tensor:
        """y [n, m] bf16 (module docstring) for x8 [n, k] E4M3 and scales sx [n] (or [n, 1]), sw [m] fp32; `config`
        defaults to the tuned one, `mode` = splits | log2(max swizzle) << 8 | raster << 16 (common.cuh)."""
        n = x8.shape[0]
        # CUTLASS does not refuse a misaligned operand (its TMA descriptor fails, the kernel still launches), and the
        # scales are read 16 bytes at a time: checked here
        if (x8.dtype != torch.float8_e4m3fn or x8.dim() != 2 or x8.shape[1] != self.k or not x8.is_contiguous()
                or sx.dtype != torch.float32 or sx.numel() != n or not sx.is_contiguous()
                or sw.dtype != torch.float32 or sw.numel() != self.m or not sw.is_contiguous()
                or x8.data_ptr() % 16 or sw.data_ptr() % 16 or x8.device != self.values.device):
            raise CutlassError(f"mm takes x8 [n, {self.k}] float8_e4m3fn and fp32 scales sx [n], sw [{self.m}], "
                               "contiguous, on the weight's GPU, x8 and sw 16-byte aligned")
        config = TUNED.get((self.m, n, self.k), self.lib.configs[0]) if config is None else config
        key = (config, n, mode)
        if key not in self._workspaces:  # every configuration built so far needs none; kept general
            size = getattr(self.lib.lib, f"pk24f8_workspace_{config}")(self.m, n, self.k, mode)
            self._workspaces[key] = torch.zeros(size, dtype=torch.uint8, device=x8.device) if size else None
        workspace = self._workspaces[key]
        y = torch.empty(n, self.m, dtype=torch.bfloat16, device=x8.device)
        with torch.cuda.device(x8.device):
            _check(getattr(self.lib.lib, f"pk24f8_gemm_{config}")(
                P(self.values.data_ptr()), P(self.meta.data_ptr()), P(x8.data_ptr()), P(sw.data_ptr()),
                P(sx.data_ptr()), P(y.data_ptr()), self.m, n, self.k, mode,
                P(workspace.data_ptr() if workspace is not None else None), _stream(x8.device)),
                f"pk24f8_gemm_{config}")
        return y

    def tune(self, x8: torch.Tensor, sx: torch.Tensor, sw: torch.Tensor) -> dict[int, float | str]:
        """Time every configuration on these operands (CUDA graph, L2 flushed) and keep the fastest in TUNED for
        (m, n, k); returns {config: ms, or why it refused}."""
        time_cold, found = timing.cold_timer(x8.device), {}
        for config in self.lib.configs:
            try:
                self.mm(x8, sx, sw, config)
                found[config] = time_cold(lambda config=config: self.mm(x8, sx, sw, config))
            except RuntimeError as err:  # CutlassError, or the timing's own (e.g. out of memory)
                found[config] = str(err).strip().splitlines()[0][:160]
        timed = {c: ms for c, ms in found.items() if isinstance(ms, float)}
        if not timed:
            raise CutlassError("every CUTLASS configuration refused: " + "; ".join(map(str, found.values())))
        TUNED[(self.m, x8.shape[0], self.k)] = min(timed, key=timed.get)
        return found
